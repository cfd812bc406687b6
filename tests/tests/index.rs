//! thinlto-index against the real llvm-ar and ld.lld.

use std::path::Path;
use std::process::Command;

use thinlto_dist_tests::*;

fn llvm_ar(dir: &Path, args: &[&str]) -> Vec<u8> {
    run_ok(
        Command::new(&toolchain().ar.path)
            .current_dir(dir)
            .args(args),
    )
    .stdout
}

#[test]
fn order_equals_llvm_ar_t() {
    let t = sample_tree();
    let mut archives = vec!["vmlinux.a".to_string()];
    for a in xtask::sample::tree::Tree::load(t.path()).unwrap().archives {
        archives.push(a.path);
    }
    for a in &archives {
        let ours = run_ok(tool("thinlto-index", t.path()).args(["order", a])).stdout;
        assert_eq!(ours, llvm_ar(t.path(), &["t", a]), "{a}");
    }
    // Odd member names, thin and regular archives, nested thin archives, and
    // archives given by a path with a directory.
    let d = t.path().join("odd dir");
    std::fs::create_dir_all(d.join("sub-dir_x")).unwrap();
    for n in [
        "a b.o",
        "sub-dir_x/c-d_e.o",
        "a_very_long_member_name_beyond_sixteen.o",
    ] {
        std::fs::copy(t.path().join("lib/no_lto.o"), d.join(n)).unwrap();
    }
    llvm_ar(
        &d,
        &["cDPrS", "--thin", "inner.a", "a b.o", "sub-dir_x/c-d_e.o"],
    );
    llvm_ar(
        &d,
        &[
            "cDPrST",
            "outer.a",
            "inner.a",
            "a_very_long_member_name_beyond_sixteen.o",
            "../kernel/core.o",
        ],
    );
    llvm_ar(
        &d,
        &[
            "cDPr",
            "regular.a",
            "a b.o",
            "a_very_long_member_name_beyond_sixteen.o",
        ],
    );
    llvm_ar(&d, &["cDPrs", "withsym.a", "sub-dir_x/c-d_e.o"]);
    for a in [
        "odd dir/inner.a",
        "odd dir/outer.a",
        "odd dir/regular.a",
        "odd dir/withsym.a",
    ] {
        let ours = run_ok(tool("thinlto-index", t.path()).args(["order", a])).stdout;
        assert_eq!(ours, llvm_ar(t.path(), &["t", a]), "{a}");
    }
    let ours =
        run_ok(tool("thinlto-index", t.path()).args(["order", "odd dir/inner.a", "vmlinux.a"]))
            .stdout;
    let mut expected = llvm_ar(t.path(), &["t", "odd dir/inner.a"]);
    expected.extend(llvm_ar(t.path(), &["t", "vmlinux.a"]));
    assert_eq!(ours, expected);
}

#[test]
fn scan_matches_how_each_object_was_built() {
    let t = sample_tree();
    let order = run_ok(tool("thinlto-index", t.path()).args(["order", "vmlinux.a"])).stdout;
    std::fs::write(t.path().join("order"), &order).unwrap();
    let out = run_ok(tool("thinlto-index", t.path()).args(["scan", "order"])).stdout;
    let tree = xtask::sample::tree::Tree::load(t.path()).unwrap();
    let lines: Vec<thinlto_index::ScanRecord> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), tree.objects.len());
    for (rec, obj) in lines.iter().zip(&tree.objects) {
        let expected = if obj.flags.contains("-flto=thin") {
            thinlto_index::ObjectKind::Bitcode
        } else {
            thinlto_index::ObjectKind::Elf
        };
        assert_eq!(rec.kind, expected, "{rec:?}");
    }
    // Never by name: an ELF file named like bitcode is ELF, and a bitcode
    // wrapper is recognised.
    std::fs::copy(t.path().join("lib/no_lto.o"), t.path().join("x.bc")).unwrap();
    let mut wrapper = vec![0xDE, 0xC0, 0x17, 0x0B, 0, 0, 0, 0, 20, 0, 0, 0];
    wrapper.extend(std::fs::read(t.path().join("kernel/core.o")).unwrap());
    std::fs::write(t.path().join("wrapped.o"), wrapper).unwrap();
    let out = run_ok(
        tool("thinlto-index", t.path())
            .args(["scan", "-"])
            .stdin(std::fs::File::open(write(t.path(), "l", "x.bc\nwrapped.o\n")).unwrap()),
    )
    .stdout;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"object\":\"x.bc\",\"kind\":\"elf\"}\n{\"object\":\"wrapped.o\",\"kind\":\"bitcode-wrapper\"}\n"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn link_equals_lld_by_hand() {
    let t = sample_tree();
    let m = thin_link(t.path());
    assert_eq!(m.bitcode().count(), 10);
    assert!(m
        .objects
        .iter()
        .any(|o| o.object == "arch/x86/lib/memops.o" && o.summary.is_none()));
    let index = std::fs::read(t.path().join("out/vmlinux.thinlto-index")).unwrap();
    let summaries: Vec<(String, Vec<u8>)> = m
        .bitcode()
        .map(|o| {
            let s = o.summary.clone().unwrap();
            let b = std::fs::read(t.path().join(&s)).unwrap();
            (s, b)
        })
        .collect();
    let manifest = std::fs::read(t.path().join("out/manifest.json")).unwrap();
    run_ok(
        Command::new(&toolchain().ld.path)
            .current_dir(t.path())
            .args(ldflags(t.path()).split_whitespace())
            .args([
                "-r",
                "--thinlto-index-only=by-hand.index",
                "--thinlto-emit-imports-files",
                "@out/builtin.order",
            ]),
    );
    assert_eq!(
        index,
        std::fs::read(t.path().join("by-hand.index")).unwrap()
    );
    for (s, b) in summaries {
        assert_eq!(b, std::fs::read(t.path().join(&s)).unwrap(), "{s}");
    }
    // Deterministic manifest.
    thin_link(t.path());
    assert_eq!(
        manifest,
        std::fs::read(t.path().join("out/manifest.json")).unwrap()
    );
    let main = m
        .objects
        .iter()
        .find(|o| o.object == "init/main.o")
        .unwrap();
    assert!(main
        .imports
        .as_ref()
        .unwrap()
        .contains(&"kernel/core.o".to_string()));
}

fn fails(cmd: &mut Command, expect: &str) {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(expect),
        "{cmd:?}: expected {expect:?} in:\n{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "output on failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let t = sample_tree();
    let bytes = std::fs::read(t.path().join("vmlinux.a")).unwrap();
    std::fs::write(t.path().join("trunc.a"), &bytes[..bytes.len() / 2 + 3]).unwrap();
    let out = tool("thinlto-index", t.path())
        .args(["order", "trunc.a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("thinlto-index: error: trunc.a: member ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(out.stdout.is_empty(), "a partial member list was printed");
    std::fs::write(t.path().join("text.a"), "hello\n").unwrap();
    fails(
        tool("thinlto-index", t.path()).args(["order", "text.a"]),
        "text.a: not a valid archive",
    );
    fails(
        tool("thinlto-index", t.path()).args(["order", "nope.a"]),
        "nope.a: cannot open",
    );
    write(t.path(), "missing.order", "kernel/core.o\nkernel/gone.o\n");
    fails(
        tool("thinlto-index", t.path()).args(["scan", "missing.order"]),
        "kernel/gone.o: cannot open",
    );
    fails(
        tool("thinlto-index", t.path()).args(["link", "missing.order"]),
        "kernel/gone.o",
    );
    let order = run_ok(tool("thinlto-index", t.path()).args(["order", "vmlinux.a"])).stdout;
    std::fs::write(t.path().join("good.order"), order).unwrap();
    fails(
        tool("thinlto-index", t.path())
            .args(["link", "--index", "idx", "good.order"])
            .env("LD", "/bin/false"),
        "the thin link failed (exit status: 1): \"/bin/false\" \"-r\" \"--thinlto-index-only=",
    );
    assert!(!t.path().join("idx").exists(), "an index was left behind");
}

#[test]
fn an_unchanged_thin_link_is_skipped_by_content() {
    let t = sample_tree();
    let first = thin_link(t.path());
    let bc = t.path().join("kernel/core.o.thinlto.bc");
    let mtime = || std::fs::metadata(&bc).unwrap().modified().unwrap();
    let before = mtime();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let link = || {
        tool("thinlto-index", t.path())
            .args(["link", "--ldflags", &ldflags(t.path())])
            .args([
                "--index",
                "out/vmlinux.thinlto-index",
                "--imports",
                "out/builtin.order",
            ])
            .output()
            .unwrap()
    };
    let out = link();
    assert!(String::from_utf8_lossy(&out.stderr).contains("thin link up to date"));
    assert_eq!(
        serde_json::from_slice::<thinlto_index::Manifest>(&out.stdout).unwrap(),
        first
    );
    assert_eq!(mtime(), before, "a skipped link rewrote a summary");
    // A touched object with the same bytes: still up to date (content, not mtime).
    let obj = t.path().join("lib/crc_util.o");
    std::fs::write(&obj, std::fs::read(&obj).unwrap()).unwrap();
    assert!(String::from_utf8_lossy(&link().stderr).contains("thin link up to date"));
    // Different content, or different flags: lld runs.
    let core = t.path().join("kernel/core.c");
    let text = std::fs::read_to_string(&core).unwrap();
    std::fs::write(&core, text + "\nint core_extra(void) { return 1; }\n").unwrap();
    rebuild_fe(t.path());
    let out = link();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("up to date"));
    assert_ne!(mtime(), before);
    let out = tool("thinlto-index", t.path())
        .args(["link", "--ldflags", "-m elf_x86_64"])
        .args(["--index", "out/vmlinux.thinlto-index", "out/builtin.order"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("up to date"));
}

#[test]
fn a_failed_link_leaves_no_record_to_skip_the_next() {
    let t = sample_tree();
    thin_link(t.path());
    let record = t.path().join("out/.vmlinux.thinlto-index.digests.cmd");
    assert!(record.is_file(), "the first link recorded nothing");
    let link = |extra: &str| {
        tool("thinlto-index", t.path())
            .args([
                "link",
                "--ldflags",
                &format!("{} {extra}", ldflags(t.path())),
            ])
            .args(["--index", "out/vmlinux.thinlto-index", "--imports"])
            .arg("out/builtin.order")
            .output()
            .unwrap()
    };
    // lld rewrites the summaries while it runs; one that fails (or is
    // killed) leaves them in an unknown state, so the record must go.
    let out = link("--no-such-lld-flag");
    assert!(!out.status.success(), "lld accepted a bad flag");
    assert!(!record.exists(), "a failed link left its record");
    let out = link("");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("up to date"),
        "the link after a failed one was skipped"
    );
    assert!(record.is_file());
}
