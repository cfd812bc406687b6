//! `thinlto-backend dtlto`, a distributor for lld's DTLTO, with the real
//! clang-22 and ld.lld-22 (DTLTO needs lld ≥ 21; `cargo xtask setup`
//! installs them): the link's bytes equal those a reference distributor
//! gives (each job's `common.args + job.args`, one after another, as
//! LLVM's own local.py), a warm cache serves a copy of the tree in another
//! directory (new per-link names) without compiling, a compile error fails
//! the link with the compiler's message, and a bad job file is an error
//! naming the field.
//!
//! A test that needs LLVM 22 is named `requires_llvm22_…` and says on
//! stderr that it was skipped when the tools are missing
//! (thinlto_dist_tests::llvm); the bad job file's test needs no compiler.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use thinlto_dist_tests::llvm::llvm_version;
use thinlto_dist_tests::*;
use thinlto_index::Toolchain;

/// The clang-22/ld.lld-22/llvm-ar-22 set, or None (the test skipped).
fn llvm22(test: &str) -> Option<Toolchain> {
    llvm_version(test, 22)
}

/// The sample tree plus `generated` objects, front end by clang-22; its
/// objects split into plain objects and a regular archive `lib.a` (every
/// other object, llvm-ar rcs), so that lld extracts members to files with
/// per-link names.
struct Tree {
    dir: tempfile::TempDir,
    objects: Vec<String>,
}

impl Tree {
    fn new(tc: &Toolchain, generated: usize) -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("thinlto-dist-dtlto.")
            .tempdir()
            .unwrap();
        xtask::sample::fe::build(
            &xtask::sample::fe::FeOptions {
                tree: dir.path().to_path_buf(),
                objects: generated,
                jobs: xtask::default_jobs(),
                saved_c_flags: false,
                quiet: true,
            },
            tc,
        )
        .unwrap_or_else(|e| panic!("front end: {e:#}"));
        let mut all = Vec::new();
        collect_objects(dir.path(), dir.path(), &mut all);
        all.sort();
        let (mut objects, mut members) = (Vec::new(), Vec::new());
        for (i, o) in all.into_iter().enumerate() {
            if i % 2 == 0 {
                objects.push(o)
            } else {
                members.push(o)
            }
        }
        run_ok(
            Command::new(&tc.ar.path)
                .current_dir(dir.path())
                .arg("rcs")
                .arg("lib.a")
                .args(&members),
        );
        Tree { dir, objects }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn collect_objects(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_objects(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "o") {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// The reference distributor: every job's `common.args + job.args`.
fn reference_distributor(dir: &Path) -> PathBuf {
    let p = dir.join("reference-distributor.py");
    script(
        &p,
        "#!/usr/bin/env python3\nimport json, subprocess, sys\n\
         d = json.load(open(sys.argv[-1]))\n\
         for j in d['jobs']:\n    subprocess.run(d['common']['args'] + j['args'], check=True)\n",
    );
    p
}

#[derive(Clone, Copy)]
enum Kind {
    /// `ld.lld -r`, the whole archive (the vmlinux.o style of link).
    Relocatable,
    /// A final link, members pulled as needed.
    Final,
}

/// Links `tree`'s objects and `lib.a` into `out` with the distributor
/// `dist` (its arguments after it).
fn link(
    tc: &Toolchain,
    tree: &Tree,
    kind: Kind,
    out: &str,
    dist: &Path,
    dist_args: &[&str],
    extra: &[&str],
) -> Output {
    let mut c = Command::new(&tc.ld.path);
    c.current_dir(tree.path())
        .env_remove("MAKEFLAGS")
        .env_remove("THINLTO_CACHE")
        .env_remove("THINLTO_CACHE_DIR")
        .args(["-m", "elf_x86_64", "-z", "noexecstack"])
        .args(&tree.objects);
    match kind {
        Kind::Relocatable => c.args(["-r", "--whole-archive", "lib.a", "--no-whole-archive"]),
        Kind::Final => c.args(["lib.a", "--unresolved-symbols=ignore-all", "-e", "0"]),
    };
    c.args(["-o", out])
        .arg(format!("--thinlto-distributor={}", dist.display()))
        .arg(format!(
            "--thinlto-remote-compiler={}",
            tc.cc.path.display()
        ))
        .args(
            dist_args
                .iter()
                .map(|a| format!("--thinlto-distributor-arg={a}")),
        )
        .args(extra);
    c.output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "link failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn records(path: &Path) -> Vec<JobRecord> {
    job_records(&std::fs::read(path).unwrap())
}

#[test]
fn requires_llvm22_dtlto_links_the_reference_bytes() {
    let Some(tc) = llvm22("requires_llvm22_dtlto_links_the_reference_bytes") else {
        return;
    };
    // The sample tree and generated objects.
    let tree = Tree::new(&tc, 12);
    let scratch = tempfile::tempdir().unwrap();
    let reference = reference_distributor(scratch.path());
    let ours = bin("thinlto-backend");
    let recs = scratch.path().join("records");
    let recs_arg = format!("--records={}", recs.display());
    for kind in [Kind::Relocatable, Kind::Final] {
        ok(link(&tc, &tree, kind, "ref.out", &reference, &[], &[]));
        ok(link(
            &tc,
            &tree,
            kind,
            "ours.out",
            &ours,
            &["dtlto", "-j2", &recs_arg],
            &[],
        ));
        let (r, o) = (
            std::fs::read(tree.path().join("ref.out")).unwrap(),
            std::fs::read(tree.path().join("ours.out")).unwrap(),
        );
        assert!(
            r == o,
            "the link through dtlto differs from the reference's"
        );
        let recs = records(&recs);
        assert!(recs.len() > 1, "{recs:?}");
        assert!(
            recs.iter().all(|r| r.status == JobStatus::Built),
            "{recs:?}"
        );
        // Archive members, with lld's per-link names, were among the jobs.
        assert!(
            recs.iter().any(|r| r.object.starts_with("lib.a(")),
            "{recs:?}"
        );
    }
    // No kbuild record beside lld's temporaries.
    let cmd_files = std::fs::read_dir(tree.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".native.o.cmd"))
        .count();
    assert_eq!(cmd_files, 0);
}

#[test]
fn requires_llvm22_a_warm_cache_serves_a_copy_of_the_tree_without_compiling() {
    let Some(tc) =
        llvm22("requires_llvm22_a_warm_cache_serves_a_copy_of_the_tree_without_compiling")
    else {
        return;
    };
    let tree = Tree::new(&tc, 6);
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let ours = bin("thinlto-backend");
    let cache_arg = format!("--cache-dir={}", cache.display());
    let recs = scratch.path().join("records");
    let recs_arg = format!("--records={}", recs.display());
    let args = ["dtlto", "-j2", cache_arg.as_str(), recs_arg.as_str()];
    ok(link(
        &tc,
        &tree,
        Kind::Relocatable,
        "cold.o",
        &ours,
        &args,
        &[],
    ));
    let cold = records(&recs);
    assert!(
        cold.iter().all(|r| r.status == JobStatus::Built),
        "{cold:?}"
    );
    // A copy in another directory; lld's per-link names (its PID in the
    // shards', outputs' and members' names) differ from the first link's.
    let copy = Tree {
        dir: tempfile::Builder::new()
            .prefix("thinlto-dist-dtlto-copy.")
            .tempdir()
            .unwrap(),
        objects: tree.objects.clone(),
    };
    xtask::flow::copy_fe_tree(tree.path(), copy.path()).unwrap();
    ok(link(
        &tc,
        &copy,
        Kind::Relocatable,
        "warm.o",
        &ours,
        &args,
        &[],
    ));
    let warm = records(&recs);
    assert_eq!(warm.len(), cold.len());
    assert!(
        warm.iter().all(|r| r.status == JobStatus::CacheHit),
        "the second link compiled: {warm:?}"
    );
    assert!(warm.iter().any(|r| r.object.starts_with("lib.a(")));
    // The cache's own counters agree: nothing missed or stored the second time.
    let stats = run_ok(
        Command::new(&ours)
            .args(["cache", "stats", "--json", "--cache-dir"])
            .arg(&cache),
    );
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["counters"]["misses"], cold.len());
    assert_eq!(v["counters"]["hits_local"], cold.len());
    // The hits give the bytes a reference compile of the new names gives.
    let reference = reference_distributor(scratch.path());
    ok(link(
        &tc,
        &copy,
        Kind::Relocatable,
        "ref.o",
        &reference,
        &[],
        &[],
    ));
    assert!(
        std::fs::read(copy.path().join("warm.o")).unwrap()
            == std::fs::read(copy.path().join("ref.o")).unwrap(),
        "the warm link differs from the reference's"
    );
}

#[test]
fn requires_llvm22_a_compile_error_fails_the_link_with_the_compilers_message() {
    let Some(tc) =
        llvm22("requires_llvm22_a_compile_error_fails_the_link_with_the_compilers_message")
    else {
        return;
    };
    let tree = Tree::new(&tc, 0);
    let out = link(
        &tc,
        &tree,
        Kind::Relocatable,
        "bad.o",
        &bin("thinlto-backend"),
        &["dtlto"],
        // An option the compiler (not lld) rejects, in every job.
        &[
            "--thinlto-remote-compiler-arg=-mllvm",
            "--thinlto-remote-compiler-arg=-thinlto-dist-no-such-option",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the link succeeded:\n{err}");
    assert!(
        err.contains("Unknown command line argument '-thinlto-dist-no-such-option'"),
        "{err}"
    );
    assert!(!tree.path().join("bad.o").exists());
}

#[test]
fn a_bad_job_file_is_an_error_naming_the_field() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("out.123.dist-file.json");
    let run = |text: &str| {
        std::fs::write(&f, text).unwrap();
        let out = Command::new(bin("thinlto-backend"))
            .args(["dtlto", "-j2"])
            .arg(&f)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(
        r#"{"common":{"args":["clang-22","-c"]},"jobs":[{"args":["a.o",5],"inputs":["a.o"],"outputs":["a.native.o"]}]}"#,
    );
    assert!(err.contains("out.123.dist-file.json"), "{err}");
    assert!(err.contains("jobs[0].args[1]: expected a string"), "{err}");
    let err = run(r#"{"common":{"args":["clang-22","-c"]}}"#);
    assert!(err.contains("no field \"jobs\""), "{err}");
    let err = run(
        r#"{"common":{"args":["clang-22"]},"jobs":[{"args":["a.o","-o","x.o"],"inputs":["a.o"],"outputs":["x.o"]}]}"#,
    );
    assert!(
        err.contains("jobs[0].args: no -fthinlto-index=SHARD"),
        "{err}"
    );
}

/// lld-22 distributing the jobs of bitcode written by LLVM 19 is DTLTO's
/// normal case (the in-process backend would be LLVM 22 too): no warning
/// that the compiler is another LLVM than the front end's, which is
/// advice for kbuild's jobs only.
#[test]
fn requires_llvm19_and_22_older_bitcode_gets_no_front_end_llvm_warning() {
    let test = "requires_llvm19_and_22_older_bitcode_gets_no_front_end_llvm_warning";
    let Some(tc) = llvm22(test) else {
        return;
    };
    let Some(older) = llvm_version(test, 19) else {
        return;
    };
    let tree = Tree::new(&older, 0);
    let out = ok(link(
        &tc,
        &tree,
        Kind::Relocatable,
        "ours.out",
        &bin("thinlto-backend"),
        &["dtlto", "-j2"],
        &[],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("was written by"), "{err}");
}

/// clang (19 and 22 alike), missing a module its shard imports from, prints "Error
/// loading imported file …" and exits 0 with an empty object. A real
/// case: a job file that does not list an import, and the import gone.
/// The job fails (nothing empty is a success), and the error shows what
/// the compiler said, not only that it wrote nothing.
#[test]
fn a_compile_that_exits_0_without_output_shows_the_compilers_message() {
    let tc = toolchain();
    let d = tempfile::tempdir().unwrap();
    let run = |cmd: &mut Command| run_ok(cmd.current_dir(d.path()));
    std::fs::write(
        d.path().join("a.c"),
        "int g(int);\nint f(int x) { return g(x) + 1; }\n",
    )
    .unwrap();
    std::fs::write(d.path().join("b.c"), "int g(int x) { return x * 3; }\n").unwrap();
    for o in ["a", "b"] {
        run(Command::new(&tc.cc.path).args([
            "-flto=thin",
            "-O2",
            "-c",
            &format!("{o}.c"),
            "-o",
            &format!("{o}.o"),
        ]));
    }
    run(Command::new(&tc.ld.path).args(["-r", "--thinlto-index-only", "a.o", "b.o", "-o", "ab.o"]));
    std::fs::remove_file(d.path().join("b.o")).unwrap();
    let job = serde_json::json!({
        "common": {"args": [tc.cc.spelled, "-c", "-O2", "-x", "ir"]},
        "jobs": [{
            "args": ["a.o", "-fthinlto-index=a.o.thinlto.bc", "-o", "a.native.o"],
            "inputs": ["a.o", "a.o.thinlto.bc"],
            "outputs": ["a.native.o"],
        }],
    });
    let f = d.path().join("out.1.dist-file.json");
    std::fs::write(&f, job.to_string()).unwrap();
    // The warm compiler (the default) and plain spawns.
    for warm in ["--warm", "--no-warm"] {
        let out = Command::new(bin("thinlto-backend"))
            .args(["dtlto", "-j1", warm])
            .arg(&f)
            .current_dir(d.path())
            .env_remove("THINLTO_CACHE")
            .env_remove("THINLTO_REMOTE_EXEC")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{warm}: {err}");
        assert!(
            err.contains("a.native.o: the compiler exited 0 but wrote no output"),
            "{warm}: {err}"
        );
        assert!(err.contains("Error loading imported file"), "{warm}: {err}");
        assert!(
            !d.path().join("a.native.o").exists(),
            "{warm}: an empty native was left"
        );
    }
}
