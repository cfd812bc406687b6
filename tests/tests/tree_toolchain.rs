//! The tree's own compiler: with nothing naming a compiler (no --cc,
//! LLVM= or CC), `thinlto-backend` runs the one the front end's `.cmd`
//! records name, as kbuild would, not the newest LLVM installed; and it
//! warns when its compiler is another LLVM than the one that wrote the
//! bitcode (the IDENTIFICATION block).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;

use thinlto_dist_tests::llvm::two_llvms;
use thinlto_dist_tests::*;
use thinlto_index::toolchain::{Role, ToolEnv};
use thinlto_index::{Tool, Toolchain, ToolchainArgs};
use xtask::sample::fe::{FeOptions, FeTools};

/// A program of the installed LLVM `version` (`/usr/lib/llvm-19/bin/clang`).
fn llvm(version: u32, name: &str) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/llvm-{version}/bin/{name}"));
    assert!(
        p.exists(),
        "{}: LLVM {version} is not installed",
        p.display()
    );
    p
}

/// A program of the suite's own LLVM (`/usr/lib/llvm-N/bin/clang`): the
/// tests that need no second version run with whichever one is installed.
fn suite_llvm(name: &str) -> PathBuf {
    llvm_bin_dir().join(name)
}

/// `dir` first, then the process's PATH.
fn path_with(dir: &Path) -> OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))
        .unwrap()
}

/// A tree whose front end ran with `cc` (a name on `path`), then the thin
/// link with `ld`.
fn tree_built_by(cc: &str, ld: &Path, path: &OsString) -> FeTree {
    let env = ToolEnv {
        cc: Some(cc.into()),
        path: Some(path.clone()),
        ..Default::default()
    };
    let cc: Tool = Toolchain::resolve_one(&ToolchainArgs::default(), &env, Role::Cc).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("thinlto-dist-tree.")
        .tempdir()
        .unwrap();
    let report = xtask::sample::fe::build_with(
        &FeOptions {
            tree: dir.path().to_path_buf(),
            objects: 0,
            jobs: xtask::default_jobs(),
            saved_c_flags: true,
            quiet: true,
        },
        FeTools {
            cc: &cc,
            ar: &toolchain().ar,
        },
    )
    .unwrap_or_else(|e| panic!("front end failed: {e:#}"));
    let tree = FeTree { dir, report };
    thin_link_with(tree.path(), &["--ld", &ld.to_string_lossy()]);
    tree
}

/// `thinlto-backend -q --index out/vmlinux.thinlto-index ARGS` with no CC
/// in the environment and `path` as PATH.
fn backend_on(tree: &Path, path: &OsString, args: &[&str]) -> Output {
    tool("thinlto-backend", tree)
        .env_remove("CC")
        .env_remove("LLVM")
        .env("PATH", path)
        .args(["-q", "--index", "out/vmlinux.thinlto-index"])
        .args(args)
        .output()
        .unwrap()
}

/// The command recorded for one native, compiler first.
fn recorded_command(tree: &Path, native: &str) -> String {
    let cmd = tree.join(thinlto_cmdparse::dot_cmd_path(Path::new(native)));
    let text = std::fs::read_to_string(&cmd).unwrap();
    let line = text.lines().next().unwrap();
    line.split_once(" := ").unwrap().1.to_string()
}

/// A bin directory with `clang-tree`: the suite's clang under a name the
/// newest-set search does not take (no version suffix),
/// through a script that logs each run (so that a test sees it ran). The
/// front end runs it by its path (its commands go through `/bin/sh` with
/// this process's PATH); the two-LLVM test covers a name on PATH.
fn renamed_clang(bin: &Path) -> OsString {
    script(
        &bin.join("clang-tree"),
        &format!(
            "#!/bin/sh\necho \"$*\" >> \"$0.log\"\nexec {} \"$@\"\n",
            suite_llvm("clang").display()
        ),
    );
    path_with(bin)
}

#[test]
fn the_compiler_the_records_name_runs_when_nothing_names_one() {
    let bin = tempfile::tempdir().unwrap();
    let path = renamed_clang(bin.path());
    let clang_tree = bin.path().join("clang-tree").to_string_lossy().into_owned();
    let tree = tree_built_by(&clang_tree, &suite_llvm("ld.lld"), &path);
    std::fs::remove_file(bin.path().join("clang-tree.log")).unwrap();

    let out = backend_on(tree.path(), &path, &[]);
    assert!(out.status.success(), "{out:?}");
    let records = job_records(&out.stdout);
    assert!(!records.is_empty());
    for r in &records {
        assert_eq!(r.status, JobStatus::Built, "{r:?}");
        let cmd = recorded_command(tree.path(), &r.native);
        assert!(
            cmd.starts_with(&format!("{clang_tree} ")),
            "{}: {cmd}",
            r.native
        );
    }
    // The recorded compiler is the one that ran, once a job.
    let log = std::fs::read_to_string(bin.path().join("clang-tree.log")).unwrap();
    let compiles = log
        .lines()
        .filter(|l| l.contains("-fthinlto-index="))
        .count();
    assert_eq!(compiles, records.len(), "{log}");
    // Same compiler, same LLVM as the bitcode: no warning.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --print-toolchain with --index says where CC came from.
    let out = backend_on(tree.path(), &path, &["--print-toolchain"]);
    assert!(out.status.success(), "{out:?}");
    let tc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tc["cc"]["spelled"], clang_tree.as_str(), "{tc}");
    let record = tc["cc"]["origin"]["tree-cmd-records"]
        .as_str()
        .unwrap_or_else(|| panic!("{tc}"));
    assert!(record.ends_with(".o.cmd"), "{tc}");

    // An explicit compiler still wins, as `make CC=` does.
    let clang = suite_llvm("clang");
    let out = backend_on(tree.path(), &path, &["--cc", &clang.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    for r in job_records(&out.stdout) {
        let cmd = recorded_command(tree.path(), &r.native);
        assert!(cmd.starts_with(&format!("{} ", clang.display())), "{cmd}");
    }
}

#[test]
fn records_naming_two_compilers_are_an_error_naming_both_files() {
    let bin = tempfile::tempdir().unwrap();
    let path = renamed_clang(bin.path());
    let clang_tree = bin.path().join("clang-tree").to_string_lossy().into_owned();
    let tree = tree_built_by(&clang_tree, &suite_llvm("ld.lld"), &path);
    // One object's record says another compiler built it.
    let objects = std::fs::read_to_string(tree.path().join("out/vmlinux.thinlto-index")).unwrap();
    let last = objects.lines().last().unwrap();
    let cmd_file = thinlto_cmdparse::cmd_file_for_object(Path::new(last));
    let text = std::fs::read_to_string(tree.path().join(&cmd_file)).unwrap();
    let spelled = format!(" := {clang_tree} ");
    let at = text.find(&spelled).unwrap();
    let edited = format!(
        "{} := ccache clang-19 {}",
        &text[..at],
        &text[at + spelled.len()..]
    );
    std::fs::write(tree.path().join(&cmd_file), edited).unwrap();

    let out = backend_on(tree.path(), &path, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the tree's records name two different programs")
            && err.contains(&format!("{} runs `ccache clang-19`", cmd_file.display()))
            && err.contains(&format!("runs `{clang_tree}`"))
            && err.contains("--cc or CC="),
        "{err}"
    );
    assert!(job_records(&out.stdout).is_empty());
    // Naming the compiler settles it.
    let out = backend_on(tree.path(), &path, &["--cc", &clang_tree]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_compiler_of_another_llvm_than_the_bitcode_is_warned_about_once() {
    let bin = tempfile::tempdir().unwrap();
    let path = renamed_clang(bin.path());
    // clang-88 compiles with the suite's LLVM but says it is 88.1.2 (only the
    // version check is fooled; the compiles are real).
    script(
        &bin.path().join("clang-88"),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'clang version 88.1.2 (test)'; exit 0; fi\nexec {} \"$@\"\n",
            suite_llvm("clang").display()
        ),
    );
    let clang_tree = bin.path().join("clang-tree").to_string_lossy().into_owned();
    let tree = tree_built_by(&clang_tree, &suite_llvm("ld.lld"), &path);
    let out = backend_on(tree.path(), &path, &["--cc", "clang-88"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    let w = warnings[0];
    let first = std::fs::read_to_string(tree.path().join("out/vmlinux.thinlto-index")).unwrap();
    let first = first.lines().next().unwrap();
    let v_suite = xtask_version(&suite_llvm("clang"));
    assert!(
        w.starts_with(&format!(
            "thinlto-backend: warning: {first} was written by LLVM{v_suite}"
        )) && w.contains("CC=clang-88 is 88.1.2")
            && w.contains(&format!("differ from those of LLVM {v_suite}")),
        "{w}"
    );
    // Nothing to compile: nothing read, nothing said.
    let out = backend_on(tree.path(), &path, &["--cc", "clang-88"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
}

/// `19.1.7` from a clang's `--version`.
fn xtask_version(clang: &Path) -> String {
    let out = run_ok(std::process::Command::new(clang).arg("--version"));
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let (a, b, c) = thinlto_index::producer::tool_version(&line).unwrap();
    format!("{a}.{b}.{c}")
}

#[test]
fn requires_two_llvms_the_front_ends_llvm_wins_over_a_newer_installed_one() {
    let Some((old, new)) =
        two_llvms("requires_two_llvms_the_front_ends_llvm_wins_over_a_newer_installed_one")
    else {
        return;
    };
    let path: OsString = "/usr/bin:/bin".into();
    let cc_old = format!("clang-{old}");
    let tree = tree_built_by(&cc_old, &llvm(old, "ld.lld"), &path);
    // Nothing names a compiler: the search would take clang-{new}; the
    // records say clang-{old}.
    let out = backend_on(tree.path(), &path, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
    let records = job_records(&out.stdout);
    let natives: Vec<(String, Vec<u8>)> = records
        .iter()
        .map(|r| {
            let cmd = recorded_command(tree.path(), &r.native);
            assert!(cmd.starts_with(&format!("{cc_old} ")), "{cmd}");
            (
                r.native.clone(),
                std::fs::read(tree.path().join(&r.native)).unwrap(),
            )
        })
        .collect();
    // The newer LLVM, asked for: a warning naming both versions.
    let cc_new = format!("clang-{new}");
    let out = backend_on(tree.path(), &path, &["--cc", &cc_new]);
    let err = String::from_utf8_lossy(&out.stderr);
    let (v_old, v_new) = (
        xtask_version(&llvm(old, "clang")),
        xtask_version(&llvm(new, "clang")),
    );
    assert!(
        err.contains(&format!("was written by LLVM{v_old}"))
            && err.contains(&format!("CC={cc_new} is {v_new}")),
        "{err}"
    );
    // Back to the tree's compiler: the same natives as the first run.
    let out = backend_on(tree.path(), &path, &[]);
    assert!(out.status.success(), "{out:?}");
    for (native, bytes) in natives {
        assert_eq!(
            std::fs::read(tree.path().join(&native)).unwrap(),
            bytes,
            "{native}"
        );
    }
}

/// The thin link with nothing naming a linker takes the lld of the LLVM
/// that compiled the tree (its records' clang), not the newest installed:
/// a newer lld writes shards the tree's clang cannot read.
#[test]
fn requires_two_llvms_the_thin_link_takes_the_front_ends_lld() {
    let Some((old, new)) = two_llvms("requires_two_llvms_the_thin_link_takes_the_front_ends_lld")
    else {
        return;
    };
    let path: OsString = "/usr/bin:/bin".into();
    let tree = tree_built_by(&format!("clang-{old}"), &llvm(old, "ld.lld"), &path);
    let t = tree.path();
    let link = |extra: &[&str]| {
        tool("thinlto-index", t)
            .env_remove("LD")
            .env_remove("LLVM")
            .env("PATH", &path)
            .args(["link", "--force", "--ldflags", &ldflags(t)])
            .args(["-o", "out/vmlinux.thinlto-index", "--imports"])
            .args(extra)
            .arg("out/builtin.order")
            .output()
            .unwrap()
    };
    let recorded =
        || std::fs::read_to_string(t.join("out/.vmlinux.thinlto-index.digests.cmd")).unwrap();
    let out = link(&[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        recorded().contains(&format!("ld.lld-{old} ")),
        "{}",
        recorded()
    );
    // The backend (the tree's clang, from the records) reads the shards.
    let out = backend_on(t, &path, &["-B"]);
    assert!(out.status.success(), "{out:?}");
    // Named, the newer one runs.
    let out = link(&["--ld", &format!("ld.lld-{new}")]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        recorded().contains(&format!("ld.lld-{new} ")),
        "{}",
        recorded()
    );
}
