//! Toolchain resolution as the tools see it: only what a command runs must
//! exist, and a CC with a launcher (`ccache clang-N`) works end to end,
//! with the suite's LLVM (`-N` is [`llvm_suffix`]).

use std::path::Path;

use thinlto_dist_tests::*;

/// A PATH directory holding only links to the suite's real LLVM tools, each
/// named `NAME-N` after the suite's version (`clang` → `clang-22`).
fn path_with(dir: &Path, names: &[&str]) {
    for name in names {
        std::os::unix::fs::symlink(
            llvm_bin_dir().join(name),
            dir.join(format!("{name}{}", llvm_suffix())),
        )
        .unwrap();
    }
}

fn natives(tree: &Path, m: &thinlto_index::Manifest) -> Vec<Vec<u8>> {
    m.bitcode()
        .map(|o| {
            let n = format!("{}.thinlto-native.o", o.object.trim_end_matches(".o"));
            std::fs::read(tree.join(n)).unwrap()
        })
        .collect()
}

#[test]
fn the_backend_needs_no_archiver_or_linker() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let bin = tempfile::tempdir().unwrap();
    path_with(bin.path(), &["clang"]);
    let out = tool("thinlto-backend", t.path())
        .env_remove("CC")
        .env_remove("LD")
        .env_remove("AR")
        .env("LLVM", llvm_suffix())
        .env("PATH", bin.path())
        .args(["-q", "--index", "out/vmlinux.thinlto-index"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        m.bitcode().count()
    );
    // And the archive needs no tool at all.
    run_ok(
        tool("thinlto-backend", t.path())
            .env("PATH", bin.path())
            .env("LLVM", llvm_suffix())
            .args(["archive", "--order", "out/builtin.order"])
            .args([
                "--index",
                "out/vmlinux.thinlto-index",
                "-o",
                "out/vmlinux.a",
            ]),
    );
}

#[test]
fn a_cc_with_a_launcher_runs_through_it() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let (out, _) = backend(t.path(), &[]);
    assert!(out.status.success());
    let plain = natives(t.path(), &m);
    let bin = tempfile::tempdir().unwrap();
    path_with(bin.path(), &["clang"]);
    // Stands in for ccache (which may not be installed): logs, then runs
    // its arguments.
    script(
        &bin.path().join("ccache"),
        "#!/bin/sh\necho \"$*\" >> \"$0.log\"\nexec \"$@\"\n",
    );
    let clang = format!("clang{}", llvm_suffix());
    let out = tool("thinlto-backend", t.path())
        .env("CC", format!("ccache {clang}"))
        .env("PATH", bin.path())
        .args(["-q", "--index", "out/vmlinux.thinlto-index"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(bin.path().join("ccache.log")).unwrap();
    assert_eq!(log.lines().count(), m.bitcode().count(), "{log}");
    assert!(
        log.lines().all(|l| l.starts_with(&format!("{clang} "))),
        "{log}"
    );
    assert_eq!(natives(t.path(), &m), plain);
    // The record spells $(CC) as given, as make's would.
    let rec = std::fs::read_to_string(t.path().join("kernel/.core.thinlto-native.o.cmd")).unwrap();
    assert!(
        rec.starts_with(&format!(
            "savedcmd_kernel/core.thinlto-native.o := ccache {clang} "
        )),
        "{rec}"
    );
}

#[test]
fn the_front_end_needs_no_linker() {
    let bin_dir = tempfile::tempdir().unwrap();
    path_with(bin_dir.path(), &["clang", "llvm-ar"]);
    let tree = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("xtask"))
        .args(["fe", "--quiet", "--tree"])
        .arg(tree.path())
        .env_remove("CC")
        .env_remove("LD")
        .env_remove("AR")
        .env("LLVM", llvm_suffix())
        .env("PATH", bin_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.path().join("vmlinux.a").is_file());
}
