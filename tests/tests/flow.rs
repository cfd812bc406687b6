//! The whole flow on the bundled sample tree — `cargo xtask flow`, the
//! Makefile example and the shell-pipeline example — and the benchmark
//! harness in its quick form (run for its plumbing, no timing asserted).

use std::path::Path;
use std::process::Command;

use thinlto_dist_tests::*;

fn use_test_binaries() {
    // The flow chains the binaries; use this test run's build of them.
    std::env::set_var("THINLTO_DIST_BIN_DIR", bin_dir());
}

fn example(tree: &Path, cmd: &mut Command) {
    let tc = toolchain();
    run_ok(
        cmd.current_dir(tree)
            .env("PATH", path_with_bins())
            .env("CC", &tc.cc.spelled)
            .env("LD", &tc.ld.spelled)
            .env("AR", &tc.ar.spelled)
            .env("KBUILD_LDFLAGS", ldflags(tree))
            .env("JOBS", "2")
            .env_remove("MAKEFLAGS"),
    );
}

#[test]
fn flow_is_all_green_and_the_examples_link_the_same_bytes() {
    use_test_binaries();
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("sample tree");
    let report = xtask::flow::run_flow(
        &xtask::flow::FlowOptions {
            tree: tree.clone(),
            objects: 0,
            jobs: 2,
            quiet: true,
        },
        toolchain(),
    )
    .unwrap();
    let table = xtask::flow::table(&report.stages, &report.checks);
    assert!(report.ok(), "{table}");
    assert_eq!(report.checks.len(), 7, "{table}");
    assert_eq!(report.second.count(JobStatus::UpToDate), 10);
    let flow_o = std::fs::read(tree.join("out/vmlinux.o")).unwrap();

    let pipe_tree = d.path().join("pipe");
    xtask::flow::copy_fe_tree(&tree, &pipe_tree).unwrap();
    let script = xtask::workspace_root().join("examples/pipeline.sh");
    example(&pipe_tree, Command::new("bash").arg(&script));
    assert_eq!(
        std::fs::read(pipe_tree.join("out-pipe/vmlinux.o")).unwrap(),
        flow_o,
        "pipeline.sh"
    );
    assert_eq!(
        std::fs::read(pipe_tree.join("out-pipe/vmlinux.symvers")).unwrap(),
        std::fs::read(tree.join("out/vmlinux.symvers")).unwrap()
    );

    let mk_tree = d.path().join("mk");
    xtask::flow::copy_fe_tree(&tree, &mk_tree).unwrap();
    let mk = xtask::workspace_root().join("examples/Makefile.thinlto-dist");
    example(&mk_tree, Command::new("make").arg("-j2").arg("-f").arg(&mk));
    assert_eq!(
        std::fs::read(mk_tree.join("out-mk/vmlinux.o")).unwrap(),
        flow_o,
        "Makefile.thinlto-dist"
    );
    // A second make: every backend job up to date, vmlinux.o not relinked.
    let before = std::fs::metadata(mk_tree.join("out-mk/vmlinux.o"))
        .unwrap()
        .modified()
        .unwrap();
    example(&mk_tree, Command::new("make").arg("-j2").arg("-f").arg(&mk));
    let jobs = job_records(&std::fs::read(mk_tree.join("out-mk/backend.jsonl")).unwrap());
    assert_eq!(jobs.len(), 10, "{jobs:?}");
    assert_eq!(
        with_status(&jobs, JobStatus::UpToDate).len(),
        10,
        "{jobs:?}"
    );
    let after = std::fs::metadata(mk_tree.join("out-mk/vmlinux.o"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "vmlinux.o was relinked with nothing changed");
}

#[test]
fn bench_quick_runs() {
    use_test_binaries();
    let d = tempfile::tempdir().unwrap();
    let results = xtask::bench::run_generated(
        &xtask::bench::BenchOptions {
            objects: 60,
            jobs: 2,
            runs: 1,
            heavy_runs: 1,
            kernel: None,
            quiet: true,
            workdir: d.path().to_path_buf(),
        },
        toolchain(),
    )
    .unwrap();
    // 1, 2, 2b, 3, 3w, 4, 4w, 5, two of 6, 7, 7w.
    assert_eq!(results.len(), 12);
    for r in &results {
        assert_eq!((r.ours.len(), r.reference.len()), (1, 1), "{}", r.title);
        assert!(r.markdown().contains("median wall ratio"));
    }
}
