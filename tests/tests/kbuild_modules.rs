//! Loadable modules in kbuild's distributed ThinLTO mode (issue 21), on a
//! small tree with real make, clang and lld: `tests/kbuild/mods` holds a
//! composite module (`twin`: two C parts, one of them imported by the other,
//! and an assembler part) and a single-object one (`solo`), built by a
//! restated 6.12 `Makefile.build` (`tests/kbuild/Makefile.modules-like`)
//! three ways —
//! - in-process: `CONFIG_LTO_CLANG` alone, `ld -r` runs ThinLTO (stock);
//! - plain: `CONFIG_LTO_CLANG_THIN_DIST` with `examples/kbuild/modules-dist.patch`'s
//!   `scripts/Makefile.thinlto_modules` and `scripts/Makefile.thinlto`;
//! - tools: the same with `THINLTO_TOOLS=1` (`thinlto-index link`, `thinlto-backend`).
//!
//! The module objects must define the same symbols with the same bytes and
//! need the same undefined ones as in-process mode's; the jobs a touch
//! reruns are asserted; a no-op reruns nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use object::{Object, ObjectSection, ObjectSymbol};
use tempfile::TempDir;
use thinlto_dist_tests::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    InProcess,
    Plain,
    Tools,
}

const MODES: [Mode; 3] = [Mode::InProcess, Mode::Plain, Mode::Tools];
const DIR: &str = "drivers/mods";
const MODULES: [&str; 2] = ["drivers/mods/twin.o", "drivers/mods/solo.o"];
const TWIN_PARTS: [&str; 2] = ["drivers/mods/twin_a.o", "drivers/mods/twin_b.o"];
/// The single-object module's bitcode, kept beside its module object.
const SOLO_BC: &str = "drivers/mods/solo.lto.o";
/// Its native object: the engine's job in tools mode.
const SOLO_NATIVE: &str = "drivers/mods/solo.lto.thinlto-native.o";

/// The patch's diff of `file` alone (a unified diff split at its `--- `
/// headers), for a tree that holds only some of the files it patches.
fn patch_of(file: &str) -> String {
    let patch =
        std::fs::read_to_string(xtask::workspace_root().join("examples/kbuild/modules-dist.patch"))
            .unwrap();
    let mut out = String::new();
    let mut keep = false;
    let mut lines = patch.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("--- ") {
            let next = lines.peek().copied().unwrap_or_default();
            keep = next.strip_prefix("+++ b/").map(|p| p.split('\t').next()) == Some(Some(file));
        }
        if keep {
            out.push_str(l);
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "modules-dist.patch does not patch {file}");
    out
}

fn module_tree(mode: Mode) -> TempDir {
    let t = tempfile::Builder::new()
        .prefix("thinlto-dist-modules.")
        .tempdir()
        .unwrap();
    let root = xtask::workspace_root();
    let scripts = t.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for f in ["Kbuild.include", "Makefile.lib", "Makefile.thinlto"] {
        std::fs::copy(root.join("tests/kbuild/scripts").join(f), scripts.join(f)).unwrap();
    }
    std::fs::copy(
        root.join("tests/kbuild/Makefile.modules-like"),
        t.path().join("Makefile.modules-like"),
    )
    .unwrap();
    let dir = t.path().join(DIR);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(root.join("tests/kbuild/mods")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    std::fs::create_dir_all(t.path().join("include/config")).unwrap();
    let conf = match mode {
        Mode::InProcess => "CONFIG_LTO_CLANG=y\n",
        _ => "CONFIG_LTO_CLANG=y\nCONFIG_LTO_CLANG_THIN_DIST=y\n",
    };
    std::fs::write(t.path().join("include/config/auto.conf"), conf).unwrap();
    if mode != Mode::InProcess {
        for f in [
            "scripts/Makefile.thinlto",
            "scripts/Makefile.thinlto_modules",
        ] {
            let mut p = Command::new("patch")
                .args(["-p1", "--quiet"])
                .current_dir(t.path())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            p.stdin
                .take()
                .unwrap()
                .write_all(patch_of(f).as_bytes())
                .unwrap();
            assert!(p.wait().unwrap().success(), "patch of {f} failed");
        }
    }
    t
}

fn kmake(tree: &Path, mode: Mode) -> Output {
    kmake_with(tree, mode, &[])
}

/// `kmake` with more make arguments (`THINLTO_BACKEND_FLAGS=…`).
fn kmake_with(tree: &Path, mode: Mode, extra: &[&str]) -> Output {
    let tc = toolchain();
    // Bounded: a farm job no worker matches waits in the queue for ever
    // (as it did when the client's identity took in make's CLANG_FLAGS).
    let mut c = Command::new("timeout");
    c.current_dir(tree)
        .args(["--kill-after=10", "600", "make"])
        .args(["-j2", "-f", "Makefile.modules-like"])
        .arg(format!("obj={DIR}"))
        .arg(format!("CC={}", tc.cc.spelled))
        .arg(format!("LD={}", tc.ld.spelled))
        .arg(format!("AR={}", tc.ar.spelled))
        .env("PATH", path_with_bins())
        .env_remove("LLVM")
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("V");
    if mode == Mode::Tools {
        c.arg("THINLTO_TOOLS=1");
    }
    c.args(extra).arg("modules");
    run_ok(&mut c)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The backend compiles of a run, by part: the quiet `CC [M] <native>`
/// lines of Makefile.thinlto, or thinlto-backend's `CC <native>`.
fn compiled(out: &Output) -> BTreeSet<String> {
    text(out)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("CC"))
        .map(|r| r.trim_start().trim_start_matches("[M]").trim())
        .filter(|n| n.ends_with(".thinlto-native.o"))
        .map(|n| n.replace(".thinlto-native.o", ".o"))
        .collect()
}

/// The backend jobs of a run that did anything, by native: compiled here
/// (`CC`), on the farm (`RCC`) or taken from the cache (`HIT`).
fn backend_jobs(out: &Output) -> BTreeSet<String> {
    text(out)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            ["CC", "RCC", "HIT"]
                .iter()
                .find_map(|w| l.strip_prefix(w))
                .filter(|r| r.starts_with(' '))
        })
        .map(|r| r.trim_start().trim_start_matches("[M]").trim().to_string())
        .filter(|n| n.ends_with(".thinlto-native.o"))
        .collect()
}

/// A touch of the composite module's imported part (same bitcode) in
/// `tree`, whose natives came from the cache or the farm: no backend job
/// at all (each record keeps what its compile read; before, the part's
/// job and its importer's ran again, `what` from the cache or the farm).
fn a_touch_costs_no_job(tree: &Path, flags: &str, what: &str) {
    std::thread::sleep(Duration::from_millis(20));
    let p = tree.join("drivers/mods/twin_b.c");
    std::fs::write(&p, std::fs::read(&p).unwrap()).unwrap();
    let out = kmake_with(tree, Mode::Tools, &[flags]);
    assert_eq!(
        backend_jobs(&out),
        BTreeSet::new(),
        "a touch after {what}:\n{}",
        text(&out)
    );
}

/// What a module object defines (name → bytes of the symbol in its
/// section) and needs (undefined names): what modpost and the .ko link see
/// of it. Section layout is not compared: lld's in-process backend puts each
/// function in its own section, a backend compile does not.
#[derive(Debug, PartialEq, Eq)]
struct Symbols {
    defined: BTreeMap<String, (object::SymbolKind, Vec<u8>)>,
    undefined: BTreeSet<String>,
}

fn symbols(path: &Path) -> Symbols {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut defined = BTreeMap::new();
    let mut undefined = BTreeSet::new();
    for s in file.symbols() {
        let name = s.name().unwrap().to_string();
        if s.kind() == object::SymbolKind::Section || s.kind() == object::SymbolKind::File {
            continue;
        }
        if s.is_undefined() {
            undefined.insert(name);
            continue;
        }
        let bytes = match s.section_index().map(|i| file.section_by_index(i).unwrap()) {
            Some(sec) if sec.kind() != object::SectionKind::UninitializedData => {
                let d = sec.data().unwrap();
                d[s.address() as usize..(s.address() + s.size()) as usize].to_vec()
            }
            _ => Vec::new(),
        };
        defined.insert(name, (s.kind(), bytes));
    }
    Symbols { defined, undefined }
}

fn assert_like_in_process(in_process: &Path, tree: &Path, mode: Mode, step: &str) {
    for m in MODULES {
        let want = symbols(&in_process.join(m));
        assert!(want.defined.len() >= 2, "{m}: {want:?}");
        assert_eq!(
            symbols(&tree.join(m)),
            want,
            "{mode:?} {step}: {m} differs from in-process mode's"
        );
    }
}

fn touch(trees: &[TempDir], path: &str, f: impl Fn(&str) -> String) {
    std::thread::sleep(Duration::from_millis(20));
    for t in trees {
        let p = t.path().join(path);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, f(&text)).unwrap();
    }
}

#[test]
fn modules_in_distributed_mode_match_in_process_mode_and_rerun_only_their_jobs() {
    let trees: Vec<TempDir> = MODES.iter().map(|m| module_tree(*m)).collect();
    let in_process = trees[0].path();
    let parts: BTreeSet<String> = TWIN_PARTS.iter().map(|s| s.to_string()).collect();

    // From scratch: one backend job per bitcode part of the composite
    // module (the assembler part is linked as it is). The single-object
    // module's backend runs inside its compile, as its in-process relink
    // does: with the plain rules silently, with the tools as a job of
    // thinlto-backend, which says so.
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        let want = match mode {
            Mode::InProcess => BTreeSet::new(),
            Mode::Plain => parts.clone(),
            Mode::Tools => {
                let mut p = parts.clone();
                p.insert(SOLO_BC.to_string());
                p
            }
        };
        assert_eq!(
            compiled(&out),
            want,
            "{mode:?} from scratch:\n{}",
            text(&out)
        );
        // The single-object module's job runs in its compile's job slot,
        // without a word about make's jobserver.
        assert!(!text(&out).contains("jobserver"), "{}", text(&out));
        assert_like_in_process(in_process, t.path(), mode, "from scratch");
    }
    assert_eq!(
        std::fs::read(trees[1].path().join(MODULES[0])).unwrap(),
        std::fs::read(trees[2].path().join(MODULES[0])).unwrap(),
        "the tools' twin.o differs from the plain rules'"
    );
    assert!(
        std::fs::read_to_string(trees[1].path().join("drivers/mods/twin.thinlto-index"))
            .unwrap()
            .lines()
            .eq(TWIN_PARTS),
        "the index lists the bitcode parts, in .mod order"
    );

    // A module part's backend gets the module flags (modkern_cflags) the
    // front end had, and the part's own (CFLAGS_twin_b.o): from the saved
    // line in the plain rules and in the tools alike.
    for t in &trees[1..] {
        let rec =
            std::fs::read_to_string(t.path().join("drivers/mods/.twin_b.thinlto-native.o.cmd"))
                .unwrap();
        let savedcmd = rec.lines().find(|l| l.starts_with("savedcmd_")).unwrap();
        for flag in ["-DMODULE", "-DTWIN_SCALE=3", "-mcmodel=kernel", "-x ir"] {
            assert!(savedcmd.contains(flag), "no {flag} in {savedcmd}");
        }
    }

    // No-op: nothing runs, nothing is printed.
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        assert_eq!(text(&out), "", "{mode:?} no-op");
    }
    // With the tools, not even a process per composite module (V=1 would
    // print it): neither thinlto-backend nor the sub-make that links runs.
    let out = kmake_with(trees[2].path(), Mode::Tools, &["V=1"]);
    assert_eq!(text(&out), "", "Tools no-op, V=1");

    // A touch of the part the other imports (same bitcode): the plain
    // rules rerun every job of the module (the thin link rewrites every
    // .thinlto.bc); the tools none, neither the touched part's nor its
    // importer's, as each compile's trace showed it read nothing the touch
    // could change (the old rule reran both, in case of an .incbin).
    touch(&trees, "drivers/mods/twin_b.c", str::to_string);
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        let want: BTreeSet<String> = match mode {
            Mode::InProcess | Mode::Tools => BTreeSet::new(),
            Mode::Plain => parts.clone(),
        };
        assert_eq!(
            compiled(&out),
            want,
            "{mode:?} after a touch:\n{}",
            text(&out)
        );
        assert_like_in_process(in_process, t.path(), mode, "after a touch");
    }

    // An edit of the imported part: its job and its importer's, same
    // symbols as in-process mode's new ones.
    touch(&trees, "drivers/mods/twin_b.c", |s| {
        s.replace("{ 1, 2, 3, 5, 8, 13 }", "{ 1, 2, 3, 5, 8, 13, 21 }")
    });
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        if mode != Mode::InProcess {
            assert_eq!(
                compiled(&out),
                parts,
                "{mode:?} after an edit:\n{}",
                text(&out)
            );
        }
        assert_like_in_process(in_process, t.path(), mode, "after an edit");
    }

    // The single-object module: an edit reruns its compile (and, inside
    // it, its backend) in every mode, nothing of twin.
    touch(&trees, "drivers/mods/solo.c", |s| {
        s.replace("solo_step(7)", "solo_step(9)")
    });
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        let all = text(&out);
        assert!(
            all.contains("CC [M]  drivers/mods/solo.o"),
            "{mode:?}: {all}"
        );
        assert!(!all.contains("twin"), "{mode:?}: {all}");
        if mode == Mode::Tools {
            assert_eq!(compiled(&out), [SOLO_BC.to_string()].into(), "{all}");
        }
        assert_like_in_process(in_process, t.path(), mode, "after an edit of solo.c");
    }

    // A touch of it: the compile reruns (make sees a newer source), its
    // backend job with the tools does not (same bitcode, nothing else read).
    touch(&trees, "drivers/mods/solo.c", str::to_string);
    for (t, mode) in trees.iter().zip(MODES) {
        let out = kmake(t.path(), mode);
        let all = text(&out);
        assert!(
            all.contains("CC [M]  drivers/mods/solo.o"),
            "{mode:?}: {all}"
        );
        if mode == Mode::Tools {
            assert_eq!(compiled(&out), BTreeSet::new(), "{all}");
        }
        assert_like_in_process(in_process, t.path(), mode, "after a touch of solo.c");
    }
}

/// With the tools, the single-object module's backend compile is a job of
/// thinlto-backend like a composite module's parts: recorded (and
/// explained by `--explain`), taken from the cache in a second tree, and
/// run on a real farm (BuildGrid and a `thinlto-backend worker`) with the
/// same native.
#[test]
fn a_single_object_modules_backend_is_an_engine_job() {
    let cache = tempfile::tempdir().unwrap();
    let cache_flags = format!(
        "THINLTO_BACKEND_FLAGS=--cache-dir {}",
        cache.path().display()
    );
    let first = module_tree(Mode::Tools);
    let out = kmake_with(first.path(), Mode::Tools, &[&cache_flags]);
    assert!(compiled(&out).contains(SOLO_BC), "{}", text(&out));
    // Its record, as for every engine job: the command and the digests.
    let rec = std::fs::read_to_string(
        first
            .path()
            .join("drivers/mods/.solo.lto.thinlto-native.o.cmd"),
    )
    .unwrap();
    assert!(
        rec.starts_with("savedcmd_drivers/mods/solo.lto.thinlto-native.o := "),
        "{rec}"
    );
    for flag in [
        "-DMODULE",
        "-mcmodel=kernel",
        "-x ir",
        "-fthinlto-index=drivers/mods/solo.lto.o.thinlto.bc",
    ] {
        assert!(
            rec.lines().next().unwrap().contains(flag),
            "no {flag}: {rec}"
        );
    }
    assert!(
        rec.contains("# thinlto-dist: digest drivers/mods/solo.lto.o "),
        "{rec}"
    );
    let explain = run_ok(
        tool("thinlto-backend", first.path())
            .arg("--cc")
            .arg(&toolchain().cc.spelled)
            .args(["--index", "drivers/mods/solo.thinlto-index", "--explain"]),
    );
    assert_eq!(
        String::from_utf8_lossy(&explain.stdout),
        format!("{SOLO_NATIVE}: up to date\n")
    );
    let native = std::fs::read(first.path().join(SOLO_NATIVE)).unwrap();
    let module = std::fs::read(first.path().join("drivers/mods/solo.o")).unwrap();

    // A second tree: every job from the cache, the same module object.
    let second = module_tree(Mode::Tools);
    let out = kmake_with(second.path(), Mode::Tools, &[&cache_flags]);
    let all = text(&out);
    assert_eq!(compiled(&out), BTreeSet::new(), "{all}");
    assert!(all.contains(&format!("HIT     {SOLO_NATIVE}")), "{all}");
    assert_eq!(
        std::fs::read(second.path().join(SOLO_NATIVE)).unwrap(),
        native
    );
    assert_eq!(
        std::fs::read(second.path().join("drivers/mods/solo.o")).unwrap(),
        module
    );
    a_touch_costs_no_job(second.path(), &cache_flags, "cache hits");

    // A third on a farm: the job compiles remotely, the same native.
    let bgd = thinlto_dist_tests::buildgrid::bgd();
    let mut farm =
        xtask::farm::Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &[], &[]).unwrap();
    let third = module_tree(Mode::Tools);
    let farm_flags = format!(
        "THINLTO_BACKEND_FLAGS=--no-cache --remote-exec {}",
        farm.url
    );
    let out = kmake_with(third.path(), Mode::Tools, &[&farm_flags]);
    let all = text(&out);
    assert!(all.contains(&format!("RCC     {SOLO_NATIVE}")), "{all}");
    assert_eq!(
        std::fs::read(third.path().join(SOLO_NATIVE)).unwrap(),
        native
    );
    for p in TWIN_PARTS {
        let n = p.replace(".o", ".thinlto-native.o");
        assert!(all.contains(&format!("RCC     {n}")), "{all}");
        assert_eq!(
            std::fs::read(third.path().join(&n)).unwrap(),
            std::fs::read(first.path().join(&n)).unwrap(),
            "{n}: the farm's native differs"
        );
    }
    assert_eq!(
        std::fs::read(third.path().join("drivers/mods/solo.o")).unwrap(),
        module
    );
    a_touch_costs_no_job(third.path(), &farm_flags, "a farm run");
}

/// The restated Makefile.build saves the flags as the patch has kbuild save
/// them (a module part's with modkern_cflags): the harness cannot drift
/// from the patch it stands in for.
#[test]
fn the_harness_saves_flags_as_the_patch_does() {
    let harness =
        std::fs::read_to_string(xtask::workspace_root().join("tests/kbuild/Makefile.modules-like"))
            .unwrap();
    let saved = |text: &str| {
        text.lines()
            .map(|l| l.trim_start_matches('+'))
            .find(|l| l.trim_start().starts_with("cmd_save_c_flags ="))
            .map(|l| l.trim().to_string())
    };
    let patched =
        saved(&patch_of("scripts/Makefile.build")).expect("no cmd_save_c_flags in the patch");
    assert!(patched.contains("$(modkern_cflags)"), "{patched}");
    assert_eq!(saved(&harness), Some(patched));
}

/// The `-name` patterns of `make clean`'s find that a patch of
/// examples/kbuild adds (its `+` lines in the top Makefile).
fn clean_patterns_added_by(patch: &str) -> Vec<String> {
    let text = std::fs::read_to_string(xtask::workspace_root().join("examples/kbuild").join(patch))
        .unwrap();
    let mut in_makefile = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if let Some(f) = l.strip_prefix("+++ b/") {
            in_makefile = f.split('\t').next() == Some("Makefile");
            continue;
        }
        if !in_makefile || !l.starts_with('+') {
            continue;
        }
        let mut words = l.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-name" {
                out.push(words.next().unwrap().trim_matches('\'').to_string());
            }
        }
    }
    out
}

/// `make clean` removes every file the patches add: the harness's clean
/// (6.12's find, restated) has the patterns both patches add to kbuild's,
/// and after a build with the plain rules and one with the tools (a
/// single-object module and a composite one, with the imports lists and
/// the thin links' records) it leaves only the sources.
#[test]
fn make_clean_removes_every_file_the_patches_add() {
    let harness =
        std::fs::read_to_string(xtask::workspace_root().join("tests/kbuild/Makefile.modules-like"))
            .unwrap();
    let mut added = clean_patterns_added_by("modules-dist.patch");
    added.extend(clean_patterns_added_by("thinlto-tools.patch"));
    assert!(added.iter().any(|p| p == "*.o.thinlto.bc"), "{added:?}");
    assert!(added.iter().any(|p| p == "*.o.imports"), "{added:?}");
    for p in &added {
        assert!(
            harness.contains(&format!("-name '{p}'")),
            "the harness's clean lacks the patches' {p}"
        );
    }
    let sources: BTreeSet<String> =
        std::fs::read_dir(xtask::workspace_root().join("tests/kbuild/mods"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    let listing = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    for mode in [Mode::Plain, Mode::Tools] {
        let t = module_tree(mode);
        kmake(t.path(), mode);
        let dir = t.path().join(DIR);
        let built = listing(&dir);
        for f in [
            "solo.lto.o.thinlto.bc",
            "twin_a.o.thinlto.bc",
            "twin.thinlto-index",
            "solo.thinlto-index",
        ] {
            assert!(built.contains(f), "{mode:?}: no {f} in {built:?}");
        }
        if mode == Mode::Tools {
            for f in ["twin_a.o.imports", ".solo.thinlto-index.order"] {
                assert!(built.contains(f), "{mode:?}: no {f} in {built:?}");
            }
        }
        let mut c = Command::new("make");
        c.current_dir(t.path())
            .args(["-f", "Makefile.modules-like"])
            .arg(format!("obj={DIR}"))
            .arg("clean")
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL");
        run_ok(&mut c);
        assert_eq!(listing(&dir), sources, "{mode:?}: left after make clean");
    }
}
