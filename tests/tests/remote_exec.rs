//! Remote execution (`thinlto-backend --remote-exec`) on a real farm:
//! BuildGrid with PostgreSQL on 127.0.0.1 and `thinlto-backend worker`
//! bots (xtask::farm), real clang. The natives equal a local compile's;
//! an `.incbin`'d file the trace does not know yet makes the worker refuse
//! the action (not hermetic) and the job compiles here, traced, so the
//! next run sends the file and a change of it is rebuilt remotely with
//! the new data; a second run uploads nothing; a farm that stops mid-run
//! costs nothing but time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use thinlto_backend::engine::scheduler::Place;
use thinlto_dist_tests::*;
use xtask::farm::Farm;

/// thinlto-backend on `tree` with `args`; asserts success; (stderr, records).
fn run(tree: &Path, args: &[&str]) -> (String, Vec<JobRecord>) {
    let out = run_ok(
        tool("thinlto-backend", tree)
            .args(["--index", "out/vmlinux.thinlto-index"])
            .args(args),
    );
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        job_records(&out.stdout),
    )
}

fn placed(recs: &[JobRecord], place: Place) -> Vec<String> {
    let mut v: Vec<String> = recs
        .iter()
        .filter(|r| r.status == JobStatus::Built && r.place == Some(place))
        .map(|r| r.object.clone())
        .collect();
    v.sort();
    v
}

/// The "N MiB up" of the summary line.
fn mib_up(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(" on the farm,"))
        .unwrap_or_else(|| panic!("no farm summary in:\n{stderr}"));
    let up = line.split(" MiB up").next().unwrap();
    up.rsplit(' ').next().unwrap().parse().unwrap()
}

const BLOB: &str = "kernel/config_blob.o";

#[test]
fn remote_execution_builds_what_a_local_compile_builds() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let all: Vec<String> = {
        let mut v: Vec<String> = m.bitcode().map(|o| o.object.clone()).collect();
        v.sort();
        v
    };
    // The reference: every native compiled here.
    let (_, recs) = run(t.path(), &["-B", "--no-cache"]);
    assert_eq!(placed(&recs, Place::Local), all);
    let local = native_files(t.path(), &m);

    let bgd = buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &[], &[]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let remote = ["--remote-exec", farm.url.as_str(), "--cache-dir"];
    let remote_args = |extra: &[&str]| -> Vec<String> {
        remote
            .iter()
            .map(|s| s.to_string())
            .chain([cache.path().to_str().unwrap().to_string()])
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let args = remote_args(&["-B"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // From scratch on the farm: every job but the one that .incbin's a
    // file no trace knows yet; that one the worker refuses (not hermetic)
    // and it compiles here, traced. Same bytes either way.
    let (err, recs) = run(t.path(), &args);
    // (config_blob.o, and the jobs that import its asm.)
    let here = placed(&recs, Place::Local);
    assert!(here.contains(&BLOB.to_string()), "{err}");
    let mut both: Vec<String> = placed(&recs, Place::Remote);
    assert!(both.len() > here.len(), "{err}");
    both.extend(here.iter().cloned());
    both.sort();
    assert_eq!(both, all, "{err}");
    assert!(
        recs.iter()
            .filter(|r| r.place == Some(Place::Remote))
            .all(|r| r.worker.as_deref().is_some_and(|w| w.contains("w1"))),
        "{recs:?}"
    );
    assert_eq!(native_files(t.path(), &m), local);

    // Again, without the local cache: every input is on the server
    // already (nothing uploaded), and the trace now knows config_data.txt,
    // so config_blob.o runs remotely too.
    std::fs::remove_dir_all(cache.path().join("backend-v1/blobs")).unwrap();
    let args = remote_args(&["-B"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (err, recs) = run(t.path(), &args);
    assert_eq!(placed(&recs, Place::Remote), all, "{err}");
    assert_eq!(mib_up(&err), 0.0, "{err}");
    assert_eq!(native_files(t.path(), &m), local);

    // The .incbin'd file changes: its job runs on the farm with the new
    // data, and gives what a local compile of it gives.
    std::fs::write(t.path().join("kernel/config_data.txt"), "remote data 2\n").unwrap();
    rebuild_fe(t.path());
    thin_link(t.path());
    let args = remote_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (err, recs) = run(t.path(), &args);
    assert!(
        placed(&recs, Place::Remote).contains(&BLOB.to_string()),
        "{err}\n{recs:?}"
    );
    let from_farm = native_files(t.path(), &m);
    run(t.path(), &["-B", "--no-cache"]);
    assert_eq!(native_files(t.path(), &m), from_farm);

    // The farm stops while jobs are on it: the rest compiles here, the
    // build succeeds with the same bytes, and it is said once.
    let mut child = tool("thinlto-backend", t.path())
        .args(["--index", "out/vmlinux.thinlto-index", "--no-cache", "-B"])
        .args(["--remote-exec", farm.url.as_str(), "--remote-jobs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first job done (a record on stdout): then the farm goes.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(farm);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("compiling here for the rest of this run")
            .count(),
        1,
        "{err}"
    );
    let recs = job_records(format!("{first}{rest}").as_bytes());
    assert_eq!(with_status(&recs, JobStatus::Built).len(), all.len());
    assert_eq!(native_files(t.path(), &m), from_farm);
}
