//! Batched actions (`--remote-batch`, issue 26) on a real farm: BuildGrid
//! with PostgreSQL (xtask::farm), a real `thinlto-backend worker`, real
//! clang. Several jobs share one action, and everything else stays per
//! job: one failing compile fails its job only, a not-hermetic job alone
//! compiles here, each built job is recorded in the server's action
//! cache under its own action (a run that batches differently, or not at
//! all, compiles nothing), and the natives are a local compile's. And the
//! batch's command is plain `/bin/sh`: run by hand on its input root, it
//! gives the same natives and per-job status files.

use std::path::Path;
use std::process::Command;

use thinlto_backend::engine::scheduler::Place;
use thinlto_backend::reapi::batch;
use thinlto_backend::reapi::execute::{Executor, RemoteAction};
use thinlto_backend::reapi::{ActionSpec, Digest, InputFile, RemoteOptions, COMPILER_PROPERTY};
use thinlto_backend::BackendJob;
use thinlto_dist_tests::*;
use xtask::farm::Farm;

/// The object whose inline asm `.incbin`s a file no trace knows on a
/// first run: the worker refuses it as not hermetic.
const BLOB: &str = "kernel/config_blob.o";

/// thinlto-backend on `tree` with `args`: (exit success, stderr, records).
fn run(tree: &Path, args: &[&str]) -> (bool, String, Vec<JobRecord>) {
    let out = tool("thinlto-backend", tree)
        .args(["--index", "out/vmlinux.thinlto-index"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        job_records(&out.stdout),
    )
}

/// The compiles the worker's log tells of, after its first `skip` lines:
/// (that succeeded, that failed), a batch's jobs each counted.
fn compiles(log: &str, skip: usize) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for l in log.lines().skip(skip) {
        if let Some(rest) = l.split(": a batch of ").nth(1) {
            let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
            let f: usize = rest
                .split("): ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            ok += n - f;
            failed += f;
        } else if l.contains(": batch job ") {
            // A batch's job: counted by the batch's line.
        } else if let Some(status) = l.split(": exit status: ").nth(1) {
            if status.starts_with("0,") {
                ok += 1;
            } else {
                failed += 1;
            }
        }
    }
    (ok, failed)
}

/// The backend jobs of `tree`, read as the tool reads them (from the
/// tree: the working directory, which the tests of this file share, so
/// one at a time and put back).
fn jobs_of(tree: &Path, m: &thinlto_index::Manifest) -> Vec<BackendJob> {
    static CWD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CWD.lock().unwrap_or_else(|e| e.into_inner());
    let was = std::env::current_dir().unwrap();
    std::env::set_current_dir(tree).unwrap();
    let cc = toolchain().cc.spelled.clone();
    let jobs = thinlto_backend::engine::plan::read_front_ends(
        thinlto_backend::job::inputs_from_manifest(m),
    )
    .unwrap()
    .into_iter()
    // Each job's imports are the modules its shard names, as the tool
    // reads them.
    .map(|(i, cmd)| {
        let i = thinlto_backend::job::with_shard_imports(i).unwrap();
        BackendJob::new(i, &cmd, &cc).unwrap()
    })
    .collect();
    std::env::set_current_dir(was).unwrap();
    jobs
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn log_lines(farm: &Farm) -> (String, usize) {
    let log = std::fs::read_to_string(farm.worker_log("w1")).unwrap();
    let n = log.lines().count();
    (log, n)
}

#[test]
fn batched_jobs_fail_fall_back_and_hit_the_cache_one_by_one() {
    // The sample tree and a dozen generated objects: enough jobs for
    // several batches.
    let t = fe_tree(12, true);
    let m = thin_link(t.path());
    let (ok, err, recs) = run(t.path(), &["-B", "--no-cache", "--no-warm"]);
    assert!(ok, "{err}");
    assert_eq!(
        with_status(&recs, JobStatus::Built).len(),
        m.bitcode().count()
    );
    let local = native_files(t.path(), &m);

    // A job nobody imports from (so its broken object fails it alone),
    // neither the one that .incbin's nor one importing its asm.
    let imported: Vec<&String> = m
        .bitcode()
        .flat_map(|o| o.imports.iter().flatten())
        .collect();
    let broken = m
        .bitcode()
        .find(|o| {
            o.object != BLOB
                && !imported.contains(&&o.object)
                && !o.imports.iter().flatten().any(|i| i == BLOB)
        })
        .map(|o| o.object.clone())
        .expect("an object nobody imports from");

    let bgd = buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &["-j", "2"], &[]).unwrap();
    let url = farm.url.clone();
    let remote = |batch: &'static str| -> Vec<String> {
        [
            "-B",
            "-k",
            "--no-cache",
            "--remote-exec",
            &url,
            "--remote-batch",
            batch,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // 1. One object broken: its compile fails, alone; the not-hermetic
    // job compiles here, alone; every other job is built on the farm in
    // batches, with a local compile's bytes.
    let path = t.path().join(&broken);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"not bitcode\n").unwrap();
    let a = remote("4");
    let (ok, err, recs) = run(t.path(), &strs(&a));
    assert!(!ok, "{err}");
    assert_eq!(
        with_status(&recs, JobStatus::Failed),
        vec![broken.clone()],
        "{err}"
    );
    let here: Vec<String> = recs
        .iter()
        .filter(|r| r.status == JobStatus::Built && r.place == Some(Place::Local))
        .map(|r| r.object.clone())
        .collect();
    assert!(here.contains(&BLOB.to_string()), "{err}\n{recs:?}");
    let on_farm: Vec<&JobRecord> = recs
        .iter()
        .filter(|r| r.status == JobStatus::Built && r.place == Some(Place::Remote))
        .collect();
    assert_eq!(
        on_farm.len() + here.len() + 1,
        m.bitcode().count(),
        "{err}\n{recs:?}"
    );
    // A farm job says its batch (of several jobs, at most 4); one left
    // alone (the last of the run, say) is its own action.
    let batched: Vec<&&JobRecord> = on_farm.iter().filter(|r| r.batch.is_some()).collect();
    assert!(batched.len() * 2 > on_farm.len(), "{recs:?}");
    assert!(
        batched.iter().all(|r| r
            .batch
            .as_ref()
            .is_some_and(|b| b.jobs >= 2 && b.jobs <= 4 && b.job < b.jobs)),
        "{recs:?}"
    );
    let mut actions: Vec<&str> = batched
        .iter()
        .map(|r| r.batch.as_ref().unwrap().action.as_str())
        .collect();
    actions.sort();
    actions.dedup();
    assert!(actions.len() < batched.len(), "{recs:?}");
    // The worker ran batches, in which the broken and the not-hermetic
    // jobs failed while their batch-mates were delivered.
    let (log, seen) = log_lines(&farm);
    let (built, failed) = compiles(&log, 0);
    assert!(built >= on_farm.len() && failed >= 2, "{log}");
    assert!(log.contains(": a batch of "), "{log}");
    for r in &on_farm {
        let mine = local.iter().find(|(n, _)| *n == r.native).unwrap();
        assert_eq!(
            std::fs::read(t.path().join(&r.native)).unwrap(),
            mine.1,
            "{}",
            r.native
        );
    }

    // 2. The object mended, batched by 4 again: only it is new to the
    // farm (the rest hit the action cache under their own actions).
    std::fs::write(&path, &good).unwrap();
    let (ok, err, recs) = run(t.path(), &strs(&a));
    assert!(ok, "{err}");
    assert_eq!(native_files(t.path(), &m), local);
    assert!(
        recs.iter()
            .any(|r| r.object == broken && r.place == Some(Place::Remote)),
        "{recs:?}"
    );
    let (log, seen2) = log_lines(&farm);
    assert_eq!(compiles(&log, seen).0, 1, "{log}");

    // 3. Batched by 3, then not at all: every job the farm built before
    // is a hit of its own action; nothing compiles there (the
    // not-hermetic job, still without a trace here, is refused again).
    for size in ["3", "1"] {
        let v = remote(size);
        let (ok, err, recs) = run(t.path(), &strs(&v));
        assert!(ok, "{err}");
        assert_eq!(native_files(t.path(), &m), local, "--remote-batch {size}");
        assert!(
            recs.iter()
                .filter(|r| r.place == Some(Place::Remote))
                .all(|r| r.batch.is_none()),
            "--remote-batch {size}: {recs:?}"
        );
        let (log, _) = log_lines(&farm);
        assert_eq!(compiles(&log, seen2).0, 0, "--remote-batch {size}:\n{log}");
    }

    // 4. Hermetic is per job, not per batch: a batch of the job that
    // .incbin's config_data.txt (its own input) and of one that imports
    // its asm without the file among its own inputs. The file is in the
    // batch's input root; the second job does not see it (it fails, as
    // alone: its compile cannot find the file), so nothing is recorded
    // under its own action that its own inputs would not give.
    let jobs = jobs_of(t.path(), &m);
    let blob = jobs.iter().find(|j| j.input.object == BLOB).unwrap();
    let reader = jobs
        .iter()
        .find(|j| j.input.imports.iter().flatten().any(|i| i == BLOB))
        .expect("a job importing config_blob.o's asm");
    let data = "kernel/config_data.txt";
    let own = |j: &BackendJob, extra: &[&str]| batch::BatchJob {
        argv: j.argv.clone(),
        inputs: j
            .content_inputs()
            .iter()
            .chain(extra)
            .map(|p| p.to_string())
            .collect(),
    };
    let pair = [own(blob, &[data]), own(reader, &[])];
    let mut inputs: Vec<String> = pair.iter().flat_map(|j| j.inputs.clone()).collect();
    inputs.sort();
    inputs.dedup();
    let spec = ActionSpec {
        argv: batch::build(&pair),
        env: Vec::new(),
        output_paths: [&blob.native, &reader.native]
            .into_iter()
            .cloned()
            .chain((0..2).flat_map(batch::result_paths))
            .collect(),
        inputs: inputs
            .iter()
            .map(|p| InputFile {
                path: p.clone(),
                digest: Digest::of_file(&t.path().join(p)).unwrap(),
                executable: false,
            })
            .collect(),
        salt: b"remote_batch test".to_vec(),
    };
    let key = spec.key().unwrap();
    let cc = toolchain().cc.spelled.clone();
    let identity = thinlto_backend::cache::identity::program_identity(&[cc])
        .unwrap()
        .0;
    let ex = Executor::connect(&RemoteOptions {
        url: farm.url.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let x = ex
        .execute(&RemoteAction {
            key: &key,
            platform: vec![(COMPILER_PROPERTY.into(), identity)],
            local_root: t.path(),
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = |p: String| String::from_utf8_lossy(&x.outputs[&p]).into_owned();
    assert_eq!(x.exit_code, 0, "{}", String::from_utf8_lossy(&x.stderr));
    assert_eq!(
        text(batch::status_path(0)),
        "0\n",
        "{}",
        text(batch::stderr_path(0))
    );
    let said = text(batch::stderr_path(1));
    assert_ne!(text(batch::status_path(1)), "0\n", "{said}");
    assert!(said.contains(data), "{said}");
    assert!(x.outputs.contains_key(&blob.native) && !x.outputs.contains_key(&reader.native));
}

/// A batch's command run by a plain `/bin/sh` on its input root (as a
/// worker that knows nothing of thinlto-dist would): each job's native as
/// a local compile gives it, each job's exit status, stdout and stderr in
/// its own files, and the script exits 0 although one job failed.
#[test]
fn a_plain_shell_runs_a_batch() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let (ok, err, _) = run(t.path(), &["-B", "--no-cache", "--no-warm"]);
    assert!(ok, "{err}");
    let local = native_files(t.path(), &m);

    let jobs: Vec<BackendJob> = jobs_of(t.path(), &m)
        .into_iter()
        .filter(|j| j.input.object != BLOB)
        .take(3)
        .collect();
    assert_eq!(jobs.len(), 3);

    // The input root: the jobs' inputs, the outputs' directories (as
    // REAPI has a worker make them), nothing else.
    let root = tempfile::Builder::new()
        .prefix("batch root with 'quotes' and spaces.")
        .tempdir()
        .unwrap();
    let mut batch_jobs: Vec<batch::BatchJob> = Vec::new();
    for j in &jobs {
        // (With the file config_blob.o's asm .incbin's: jobs that import
        // that asm read it too, as their trace would tell.)
        let mut inputs = j.content_inputs();
        inputs.push("kernel/config_data.txt");
        for p in &inputs {
            let to = root.path().join(p);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(t.path().join(p), &to).unwrap();
        }
        batch_jobs.push(batch::BatchJob {
            argv: j.argv.clone(),
            inputs: inputs.iter().map(|p| p.to_string()).collect(),
        });
    }
    // A fourth job that fails: its object is not there.
    let mut missing = batch_jobs[0].clone();
    let obj = missing
        .argv
        .iter()
        .position(|a| a == &jobs[0].input.object)
        .unwrap();
    missing.argv[obj] = "no such object.o".into();
    batch_jobs.push(missing);
    std::fs::create_dir_all(root.path().join(batch::RESULTS_DIR)).unwrap();
    let argv = batch::build(&batch_jobs);
    assert_eq!(batch::parse(&argv).unwrap(), Some(batch_jobs.clone()));
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(root.path())
        .env_clear()
        .env("PATH", path_with_bins())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read =
        |p: String| std::fs::read(root.path().join(&p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    for (k, j) in jobs.iter().enumerate() {
        assert_eq!(
            batch::parse_status(&read(batch::status_path(k))).unwrap(),
            0,
            "{}: {}",
            j.native,
            String::from_utf8_lossy(&read(batch::stderr_path(k)))
        );
        let mine = local.iter().find(|(n, _)| *n == j.native).unwrap();
        assert_eq!(read(j.native.clone()), mine.1, "{}", j.native);
    }
    assert_ne!(
        batch::parse_status(&read(batch::status_path(3))).unwrap(),
        0
    );
    let said = String::from_utf8_lossy(&read(batch::stderr_path(3))).into_owned();
    assert!(said.contains("no such object.o"), "{said}");
    assert!(read(batch::stdout_path(3)).is_empty());
}

/// What `-v` says of a run's action-cache lookups: (GetActionResult
/// calls, batched jobs not looked up first).
fn lookups(err: &str) -> (usize, usize) {
    let line = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("thinlto-backend: farm calls: "))
        .unwrap_or_else(|| panic!("no `farm calls` line:\n{err}"));
    let asked = line
        .split([',', ';'])
        .find_map(|c| c.trim().strip_suffix(" GetActionResult"))
        .map_or(0, |n| n.parse().unwrap());
    let skipped = line
        .split("; ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    (asked, skipped)
}

/// The action-cache lookups before a batch adapt (exec/lookups.rs): on
/// a cold farm only a probe now and then, far fewer lookups than jobs;
/// on a warm farm every job, so that a run that batches differently is
/// still all hits and compiles nothing there.
#[test]
fn a_cold_farm_is_probed_and_a_warm_one_asked_for_every_job() {
    let t = fe_tree(40, true);
    let m = thin_link(t.path());
    let (ok, err, _) = run(t.path(), &["-B", "--no-cache", "--no-warm"]);
    assert!(ok, "{err}");
    let local = native_files(t.path(), &m);

    let bgd = buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &["-j", "2"], &[]).unwrap();
    let url = farm.url.clone();
    let args = |batch: &'static str| -> Vec<String> {
        [
            "-B",
            "--no-cache",
            "-v",
            "--remote-exec",
            &url,
            "--remote-batch",
            batch,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let tail = |err: &str| -> String {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(3)..].join("\n")
    };

    // 1. A cold farm, batched by 4: after a few misses, only probes.
    let (ok, err, recs) = run(t.path(), &strs(&args("4")));
    assert!(ok, "{err}");
    assert_eq!(native_files(t.path(), &m), local);
    let batched = recs
        .iter()
        .filter(|r| r.place == Some(Place::Remote) && r.batch.is_some())
        .count();
    let (asked, skipped) = lookups(&err);
    assert!(batched >= 30, "{batched} batched jobs\n{recs:?}");
    assert!(
        asked * 2 < batched && skipped > 0,
        "a cold farm: {asked} lookups ({skipped} jobs not looked up) for {batched} batched jobs\n{}",
        tail(&err)
    );
    println!("cold farm: {asked} lookups for {batched} batched jobs, {skipped} not looked up");

    // 2. The farm warm, batched by 3: every job looked up, each a hit of
    // its own action; nothing compiles there.
    let (_, seen) = log_lines(&farm);
    let (ok, err, recs) = run(t.path(), &strs(&args("3")));
    assert!(ok, "{err}");
    assert_eq!(native_files(t.path(), &m), local);
    let (asked, skipped) = lookups(&err);
    assert_eq!(skipped, 0, "{}", tail(&err));
    let on_farm = recs
        .iter()
        .filter(|r| r.place == Some(Place::Remote))
        .collect::<Vec<_>>();
    assert!(on_farm.len() >= batched, "{recs:?}");
    assert!(on_farm.iter().all(|r| r.batch.is_none()), "{recs:?}");
    assert!(asked >= on_farm.len(), "{asked} lookups\n{}", tail(&err));
    let (log, _) = log_lines(&farm);
    assert_eq!(compiles(&log, seen).0, 0, "{log}");
    println!("warm farm: {asked} lookups, {} hits", on_farm.len());
}
