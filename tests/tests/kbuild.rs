//! thinlto-dist inside kbuild's own rules (issue: kernel builds in kbuild's
//! distributed mode), on the sample tree with real make and real clang:
//! kbuild's `scripts/Makefile.vmlinux_a` and `scripts/Makefile.thinlto`
//! (the Linux 6.12 port of CONFIG_LTO_CLANG_THIN_DIST, `tests/kbuild/`)
//! driven three ways —
//! - stock: the rules as merged;
//! - wrap: `CC="thinlto-backend wrap clang-19"`, no change to kbuild;
//! - tools: `examples/kbuild/thinlto-tools.patch` applied, `THINLTO_TOOLS=1`
//!   (and `THINLTO_BACKEND_FLAGS=--warm`: the warm compiler);
//!
//! through a from-scratch build, a no-op, a touch, an edit, an `.incbin`
//! change and an interrupted run.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use thinlto_dist_tests::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stock,
    Wrap,
    Tools,
}

const MODES: [Mode; 3] = [Mode::Stock, Mode::Wrap, Mode::Tools];

/// Lays kbuild's scripts into a front-end tree, the patch applied for
/// `Mode::Tools` (with the real `patch`, as a user would).
fn kbuild_tree(mode: Mode) -> FeTree {
    let t = sample_tree();
    let root = xtask::workspace_root();
    let scripts = t.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for f in [
        "Makefile.vmlinux_a",
        "Makefile.thinlto",
        "Kbuild.include",
        "Makefile.lib",
    ] {
        std::fs::copy(root.join("tests/kbuild/scripts").join(f), scripts.join(f)).unwrap();
    }
    // A head object that is not first, so that the fixup moves it.
    std::fs::write(scripts.join("head-object-list.txt"), "kernel/core.o\n").unwrap();
    std::fs::copy(
        root.join("tests/kbuild/Makefile"),
        t.path().join("Makefile.kbuild-like"),
    )
    .unwrap();
    std::fs::create_dir_all(t.path().join("include/config")).unwrap();
    std::fs::write(
        t.path().join("include/config/auto.conf"),
        "CONFIG_LTO_CLANG=y\nCONFIG_LTO_CLANG_THIN_DIST=y\n",
    )
    .unwrap();
    if mode == Mode::Tools {
        // The patch's diffs of the files this tree has (not the top
        // Makefile's `make clean` lines).
        let patch =
            std::fs::read_to_string(root.join("examples/kbuild/thinlto-tools.patch")).unwrap();
        let mut kept = String::new();
        let mut keep = false;
        let mut lines = patch.lines().peekable();
        while let Some(l) = lines.next() {
            if l.starts_with("--- ") {
                let next = lines.peek().copied().unwrap_or_default();
                keep = next
                    .strip_prefix("+++ b/")
                    .map(|p| p.split('\t').next().unwrap_or(p))
                    .is_some_and(|p| t.path().join(p).exists());
            }
            if keep {
                kept.push_str(l);
                kept.push('\n');
            }
        }
        assert!(kept.contains("Makefile.vmlinux_a"), "{kept}");
        let filtered = t.path().join("thinlto-tools.patch");
        std::fs::write(&filtered, kept).unwrap();
        run_ok(
            Command::new("patch")
                .args(["-p1", "-i"])
                .arg(&filtered)
                .current_dir(t.path()),
        );
        std::fs::remove_file(&filtered).unwrap();
    }
    t
}

/// The front end's per-directory archives, in link order (what kbuild
/// passes as KBUILD_VMLINUX_OBJS).
fn vmlinux_objs(tree: &Path) -> String {
    let t = xtask::sample::tree::Tree::load(tree).unwrap();
    let top = t.archives.iter().find(|a| a.path == "vmlinux.a").unwrap();
    top.members.join(" ")
}

fn kmake_cmd(tree: &Path, mode: Mode, cc: &str) -> Command {
    let tc = toolchain();
    let mut c = Command::new("make");
    c.current_dir(tree)
        .args(["-j2", "-f", "Makefile.kbuild-like"])
        .arg(format!("KBUILD_VMLINUX_OBJS={}", vmlinux_objs(tree)))
        .arg(format!("KBUILD_LDFLAGS={}", ldflags(tree)))
        .arg(format!("LD={}", tc.ld.spelled))
        .arg(format!("AR={}", tc.ar.spelled))
        .env("PATH", path_with_bins())
        .env("THINLTO_WRAP_EXPLAIN", "1")
        .env_remove("LLVM")
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("V");
    match mode {
        Mode::Stock => c.arg(format!("CC={cc}")),
        Mode::Wrap => c.arg(format!("CC={} wrap {cc}", bin("thinlto-backend").display())),
        // With the warm compiler too: the same bytes as the stock rules'.
        Mode::Tools => c
            .arg(format!("CC={cc}"))
            .arg("THINLTO_TOOLS=1")
            .arg("THINLTO_BACKEND_FLAGS=--warm"),
    };
    c.arg("vmlinux.o");
    c
}

fn kmake(tree: &Path, mode: Mode) -> Output {
    run_ok(&mut kmake_cmd(tree, mode, &toolchain().cc.spelled))
}

/// The backend compiles a make run did, by object: kbuild's quiet
/// `CC <native>` lines (stock; ours in tools mode), the wrapper's word
/// in wrap mode (kbuild echoes CC before the wrapper decides).
fn compiled(mode: Mode, out: &Output) -> BTreeSet<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| match mode {
            Mode::Wrap => l
                .strip_prefix("thinlto-backend wrap: ")
                .and_then(|r| r.split_once(": runs: "))
                .map(|(n, _)| n.to_string()),
            _ => l
                .trim_start()
                .strip_prefix("CC")
                .map(str::trim)
                .filter(|n| n.ends_with(".thinlto-native.o"))
                .map(str::to_string),
        })
        .map(|n| n.replace(".thinlto-native.o", ".o"))
        .collect()
}

fn index_objects(tree: &Path) -> Vec<String> {
    std::fs::read_to_string(tree.join("vmlinux.thinlto-index"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn native(object: &str) -> String {
    format!("{}.thinlto-native.o", object.trim_end_matches(".o"))
}

/// Every native of `tree` and its `vmlinux.o` are the bytes of `stock`'s.
fn assert_same_outputs(stock: &Path, tree: &Path, mode: Mode, step: &str) {
    let objs = index_objects(stock);
    assert_eq!(objs, index_objects(tree), "{mode:?} {step}: index differs");
    for o in &objs {
        let n = native(o);
        assert!(
            std::fs::read(stock.join(&n)).unwrap() == std::fs::read(tree.join(&n)).unwrap(),
            "{mode:?} {step}: {n} differs from the stock build's"
        );
    }
    assert!(
        std::fs::read(stock.join("vmlinux.o")).unwrap()
            == std::fs::read(tree.join("vmlinux.o")).unwrap(),
        "{mode:?} {step}: vmlinux.o differs from the stock build's"
    );
}

/// The objects whose shard names `object` (it and its importers).
fn with_importers(tree: &Path, object: &str) -> BTreeSet<String> {
    index_objects(tree)
        .into_iter()
        .filter(|o| {
            thinlto_index::shard::module_paths_of(&tree.join(format!("{o}.thinlto.bc")))
                .unwrap()
                .iter()
                .any(|m| m == object)
        })
        .collect()
}

fn edit(trees: &[FeTree], path: &str, f: impl Fn(&str) -> String) {
    for t in trees {
        let p = t.path().join(path);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, f(&text)).unwrap();
        rebuild_fe(t.path());
    }
}

#[test]
fn three_ways_through_kbuild_same_bytes_fewer_compiles() {
    let trees: Vec<FeTree> = MODES.iter().map(|m| kbuild_tree(*m)).collect();
    let stock = trees[0].path();

    // From scratch: every backend job, the same bytes everywhere.
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        let all: BTreeSet<String> = index_objects(t.path()).into_iter().collect();
        assert!(all.len() >= 8, "{all:?}");
        assert_eq!(compiled(mode, &out), all, "{mode:?} from scratch");
        // The warm compiler served them (no fallback line).
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("warm compiler:"), "{mode:?}: {stderr}");
        assert_same_outputs(stock, t.path(), mode, "from scratch");
    }
    let n = index_objects(stock).len();

    // No-op: nothing runs, and (tools) nothing is even relinked.
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        assert!(compiled(mode, &out).is_empty(), "{mode:?} no-op: {out:?}");
        if mode == Mode::Tools {
            assert!(
                out.stdout.is_empty(),
                "tools no-op printed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    // A touch: make rebuilds the object (same bitcode). Stock reruns
    // every job; wrap reruns the object's own job and its importers' (the
    // .incbin rule: make rebuilt it, the wrapper's compiles are not
    // traced, and an imported function may carry its asm; their shards
    // name it); tools none (each compile's trace showed it read nothing
    // the touch changed).
    std::thread::sleep(Duration::from_millis(20));
    edit(&trees, "kernel/core.c", |s| s.to_string());
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        let expect: BTreeSet<String> = match mode {
            Mode::Stock => index_objects(t.path()).into_iter().collect(),
            Mode::Wrap => with_importers(t.path(), "kernel/core.o"),
            Mode::Tools => {
                // (The mtime rule reran it and every importer.)
                assert!(with_importers(t.path(), "kernel/core.o").len() > 1);
                BTreeSet::new()
            }
        };
        assert_eq!(compiled(mode, &out), expect, "{mode:?} after a touch");
        assert_same_outputs(stock, t.path(), mode, "after a touch");
    }

    // An edit of a leaf: the same jobs in wrap and tools mode (those whose
    // object or index shard changed), far fewer than stock's.
    edit(&trees, "drivers/misc/free-standing.c", |s| {
        format!("{s}\nint free_standing_extra_for_test(int x) {{ return x * 3 + 1; }}\n")
    });
    let mut sets = Vec::new();
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        sets.push(compiled(mode, &out));
        assert_same_outputs(stock, t.path(), mode, "after an edit");
    }
    assert_eq!(sets[0].len(), n);
    assert_eq!(sets[1], sets[2], "wrap and tools ran different jobs");
    assert!(sets[1].contains("drivers/misc/free-standing.o"), "{sets:?}");
    assert!(sets[1].len() < n, "{sets:?}");

    // An .incbin'd file changes: the bitcode does not, the native must.
    let blob_native = trees[2].path().join("kernel/config_blob.thinlto-native.o");
    let before = std::fs::read(&blob_native).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    for t in &trees {
        std::fs::write(t.path().join("kernel/config_data.txt"), "CONFIG_NEW=y\n").unwrap();
        rebuild_fe(t.path());
    }
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        assert!(
            compiled(mode, &out).contains("kernel/config_blob.o"),
            "{mode:?}: the .incbin change did not rerun its job"
        );
        assert_same_outputs(stock, t.path(), mode, "after an .incbin change");
    }
    assert_ne!(before, std::fs::read(&blob_native).unwrap());
}

/// A SIGINT to make's process group in the middle of the backend, then a
/// plain rerun: no half-written native, and the same bytes as an
/// uninterrupted stock build.
#[test]
fn interrupted_kbuild_runs_resume_to_the_same_bytes() {
    let stock = kbuild_tree(Mode::Stock);
    kmake(stock.path(), Mode::Stock);
    for mode in [Mode::Wrap, Mode::Tools] {
        let t = kbuild_tree(mode);
        // The real compiler, its backend compiles held: make is
        // interrupted with one under way.
        let cc = GatedCompiler::new(t.path());
        cc.close();
        let slow_s = cc.path.to_string_lossy().into_owned();
        let mut cmd = kmake_cmd(t.path(), mode, &slow_s);
        cmd.process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        wait_for("a held backend compile", || cc.holding());
        // SAFETY: signalling the process group we just made.
        unsafe { libc_kill(-(child.id() as i32), 2) };
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "{mode:?}: make finished before the signal"
        );
        for o in index_objects(t.path()) {
            let n = t.path().join(native(&o));
            if let Ok(m) = std::fs::metadata(&n) {
                assert!(m.len() > 0, "{mode:?}: empty {}", n.display());
            }
        }
        let leftovers: Vec<_> = walk(t.path())
            .into_iter()
            .filter(|p| {
                let s = p.to_string_lossy();
                s.ends_with(".tmp") || s.contains(".thinlto-native.o-")
            })
            .collect();
        assert!(leftovers.is_empty(), "{mode:?}: {leftovers:?}");
        cc.release();
        let out = run_ok(&mut kmake_cmd(t.path(), mode, &slow_s));
        assert!(
            !compiled(mode, &out).is_empty(),
            "{mode:?}: rerun did nothing"
        );
        assert_same_outputs(stock.path(), t.path(), mode, "after an interrupted run");
    }
}

/// Every command that is not a backend compile is the compiler's own:
/// output, exit status, nothing written by us.
#[test]
fn wrap_passes_other_commands_through_unchanged() {
    let cc = &toolchain().cc.spelled;
    let wrap = |args: &[&str]| {
        Command::new(bin("thinlto-backend"))
            .arg("wrap")
            .arg(cc)
            .args(args)
            .output()
            .unwrap()
    };
    let bare = |args: &[&str]| Command::new(cc).args(args).output().unwrap();
    for args in [
        &["--version"][..],
        &["-x", "c", "-E", "-", "-o", "/dev/null"],
    ] {
        let (w, b) = (wrap(args), bare(args));
        assert_eq!(w.status.code(), b.status.code(), "{args:?}");
        assert_eq!(w.stdout, b.stdout, "{args:?}");
    }
    let (w, b) = (
        wrap(&["-c", "/nonexistent/x.c", "-o", "/dev/null"]),
        bare(&["-c", "/nonexistent/x.c", "-o", "/dev/null"]),
    );
    assert_eq!(w.status.code(), b.status.code());
    assert!(!w.status.success());
    assert_eq!(w.stderr, b.stderr);
    // No compiler at all: sh's 127 and a message naming it.
    let out = Command::new(bin("thinlto-backend"))
        .args(["wrap", "/nonexistent/clang-0", "--version"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/clang-0"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Masquerading: a `clang-19 -> thinlto-backend` symlink first on PATH
/// wraps kbuild's unchanged commands (no `$(CC)` change, so no front-end
/// object is rebuilt for switching the wrapper on).
#[test]
fn masquerading_wrapper_decides_by_content() {
    let t = kbuild_tree(Mode::Stock);
    let masq = t.path().join("masq");
    std::fs::create_dir_all(&masq).unwrap();
    let cc = &toolchain().cc.spelled;
    let name = Path::new(cc).file_name().unwrap();
    std::os::unix::fs::symlink(bin("thinlto-backend"), masq.join(name)).unwrap();
    let path = format!(
        "{}:{}:{}",
        masq.display(),
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = || {
        let mut c = kmake_cmd(t.path(), Mode::Stock, cc);
        c.env("PATH", &path);
        run_ok(&mut c)
    };
    let first = run();
    let all: BTreeSet<String> = index_objects(t.path()).into_iter().collect();
    assert_eq!(
        compiled(Mode::Wrap, &first),
        all,
        "first run: every job runs"
    );
    // A thin link rewrites every shard with the same bytes: make reruns
    // every recipe, the wrapper compiles nothing.
    let bc = t.path().join("kernel/core.o.thinlto.bc");
    std::thread::sleep(Duration::from_millis(20));
    edit(std::slice::from_ref(&t), "kernel/core.c", |s| s.to_string());
    let second = run();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("LD      vmlinux.thinlto-index"), "{stdout}");
    assert!(bc.exists());
    // The wrapper's compiles are not traced: the touched object's job
    // and its importers' rerun (the .incbin rule; their shards name it).
    let touched = with_importers(t.path(), "kernel/core.o");
    assert!(touched.contains("kernel/core.o") && touched.len() < all.len());
    assert_eq!(
        compiled(Mode::Wrap, &second),
        touched,
        "after a touch only the touched object's job and its importers' run"
    );
    let skipped = String::from_utf8_lossy(&second.stderr)
        .lines()
        .filter(|l| l.ends_with(": up to date (command and inputs unchanged)"))
        .count();
    assert_eq!(skipped, all.len() - touched.len(), "{second:?}");
    // The wrapper left make nothing to redo.
    let third = run();
    assert!(compiled(Mode::Wrap, &third).is_empty());
    assert!(!String::from_utf8_lossy(&third.stdout).contains("thinlto-native.o"));
}

#[test]
fn the_backend_cache_through_kbuild_tools_mode() {
    // THINLTO_CACHE=1 in make's environment reaches thinlto-backend in its
    // recipe: after the natives and their records are gone, make's rerun
    // takes every native from the cache, with the same vmlinux.o.
    let t = kbuild_tree(Mode::Tools);
    let cache = tempfile::tempdir().unwrap();
    let kmake_cached = |t: &Path| {
        run_ok(
            kmake_cmd(t, Mode::Tools, &toolchain().cc.spelled)
                .env("THINLTO_CACHE", "1")
                .env("THINLTO_CACHE_DIR", cache.path()),
        )
    };
    let out = kmake_cached(t.path());
    let all: BTreeSet<String> = index_objects(t.path()).into_iter().collect();
    assert_eq!(compiled(Mode::Tools, &out), all, "from scratch");
    let vmlinux = std::fs::read(t.path().join("vmlinux.o")).unwrap();
    for o in &all {
        let n = native(o);
        std::fs::remove_file(t.path().join(&n)).unwrap();
        let rec = thinlto_cmdparse::dot_cmd_path(Path::new(&n));
        let _ = std::fs::remove_file(t.path().join(rec));
    }
    let out = kmake_cached(t.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        compiled(Mode::Tools, &out).is_empty(),
        "compiled again:\n{text}"
    );
    assert_eq!(text.matches("  HIT ").count(), all.len(), "{text}");
    assert_eq!(
        std::fs::read(t.path().join("vmlinux.o")).unwrap(),
        vmlinux,
        "vmlinux.o differs"
    );
}
