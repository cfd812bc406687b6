//! Remote execution (`thinlto-backend --remote-exec`) on a real farm:
//! BuildGrid with PostgreSQL on 127.0.0.1 and `thinlto-backend worker`
//! bots (xtask::farm), real clang. The natives equal a local plain
//! compile's, the worker running them on its warm compiler;
//! an `.incbin`'d file the trace does not know yet makes the worker refuse
//! the action (not hermetic) and the job compiles here, traced, so the
//! next run sends the file and a change of it is rebuilt remotely with
//! the new data; a second run uploads nothing; SIGINT cancels the
//! operations in flight (their worker stops the compile); a farm that
//! stops mid-run costs nothing but time.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
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
    // The reference: every native compiled here, each a fresh process.
    let (_, recs) = run(t.path(), &["-B", "--no-cache", "--no-warm"]);
    assert_eq!(placed(&recs, Place::Local), all);
    let local = native_files(t.path(), &m);

    let bgd = buildgrid::bgd();
    // A short keepalive: a cancelled lease is seen at the worker's
    // next keepalive, a third of it (sigint_cancels_the_farms_operation).
    let mut farm = Farm::start_with_keepalive(
        &bgd,
        &bin("thinlto-backend"),
        xtask::farm::FAILOVER_TEST_KEEPALIVE_S,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &[], &[]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    // One action a job, so that the worker's log tells of each (batched
    // actions: remote_batch.rs).
    let remote = [
        "--remote-batch",
        "1",
        "--remote-exec",
        farm.url.as_str(),
        "--cache-dir",
    ];
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
    // The worker ran them as jobs of its warm compiler, each in its
    // action's input root: the same bytes as plain compiles here.
    let log = std::fs::read_to_string(farm.worker_log("w1")).unwrap();
    let ran: Vec<&str> = log.lines().filter(|l| l.contains(" -o ")).collect();
    assert!(
        ran.len() >= both.len() - here.len() && ran.iter().all(|l| l.ends_with(", warm compiler")),
        "{log}"
    );

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

    // The cancel's gate is a FIFO on this machine, which a sandboxed
    // compile cannot see (worker_sandbox.rs): a worker without the
    // sandbox takes the place of w1 for it. (A sandboxed compile is
    // killed the same way: thinlto-backend's tests/worker_sandbox.rs.)
    farm.kill_worker(0);
    farm.add_worker("open", &["--no-sandbox"], &[]).unwrap();
    sigint_cancels_the_farms_operation(&farm, "open");

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

/// A tree thin-linked as kbuild links it, without `--imports`: each job's
/// input root still holds every module it imports (its shard names them),
/// so the farm builds the jobs that import with the natives of a local
/// build. (Before, each came back exit 0 without its native: clang-19,
/// missing an imported file, exits 0 with an empty object.)
#[test]
fn a_tree_linked_without_imports_builds_on_the_farm() {
    let t = sample_tree();
    let m = thin_link_without_imports(t.path());
    let modules = |o: &str| {
        let shard = t.path().join(format!("{o}.thinlto.bc"));
        thinlto_index::shard::module_paths_of(&shard).unwrap()
    };
    let importers: Vec<String> = m
        .bitcode()
        .filter(|o| modules(&o.object).len() > 1)
        .map(|o| o.object.clone())
        .collect();
    // The jobs that read the file config_blob.o's asm .incbin's: it and
    // its importers.
    let incbin: Vec<String> = m
        .bitcode()
        .filter(|o| modules(&o.object).iter().any(|p| p == BLOB))
        .map(|o| o.object.clone())
        .collect();
    assert!(!importers.is_empty());
    assert!(m
        .bitcode()
        .all(|o| o.imports.is_none() && !t.path().join(format!("{}.imports", o.object)).exists()));
    run(t.path(), &["-B", "--no-cache", "--no-warm"]);
    let local = native_files(t.path(), &m);

    let bgd = buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &[], &[]).unwrap();
    let (err, recs) = run(
        t.path(),
        &["-B", "--no-cache", "--remote-exec", farm.url.as_str()],
    );
    assert!(!err.contains("farm fault"), "{err}");
    let remote = placed(&recs, Place::Remote);
    // Every job on the farm but those that read the .incbin'd file no
    // trace knows yet (--no-cache): it is not in their input root, they
    // fail there and compile here.
    let here = placed(&recs, Place::Local);
    assert!(here.iter().all(|o| incbin.contains(o)), "{here:?}:\n{err}");
    let on_farm: Vec<&String> = importers.iter().filter(|o| remote.contains(o)).collect();
    assert!(
        on_farm.len() + here.len() >= importers.len() && !on_farm.is_empty(),
        "importers {importers:?}, on the farm {remote:?}:\n{err}"
    );
    assert_eq!(native_files(t.path(), &m), local, "{err}");
}

/// SIGINT while a job runs on the farm: the client cancels its operation
/// (CancelOperation) before it dies by the signal, the server has it
/// cancelled, the worker kills the compile (it would otherwise wait on
/// its input for ever) and reports nothing, and no output is left here.
///
/// The gate: the job's inline asm `.incbin`s a FIFO by absolute path (not
/// a regular file: hermetic), so its compile blocks reading it once this
/// test holds the FIFO open for writing, writing nothing. Events, not
/// delays: the compile is known to be there when the FIFO has a reader.
fn sigint_cancels_the_farms_operation(farm: &Farm, worker: &str) {
    let t = sample_tree();
    let gate = tempfile::tempdir().unwrap();
    let fifo = gate.path().join("config.fifo");
    let src = t.path().join("kernel/config_blob.c");
    let text = std::fs::read_to_string(&src).unwrap();
    assert!(text.contains("kernel/config_data.txt"));
    let gated = text.replace("kernel/config_data.txt", &fifo.display().to_string());
    std::fs::write(&src, gated).unwrap();
    // The front end assembles the asm too (for the bitcode's symbol
    // table): a regular file there until the backend runs.
    std::fs::write(&fifo, "front end\n").unwrap();
    rebuild_fe(t.path());
    thin_link(t.path());
    std::fs::remove_file(&fifo).unwrap();
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let child = tool("thinlto-backend", t.path())
        .args(["--index", "out/vmlinux.thinlto-index", "--no-cache", "-B"])
        .args(["--only", BLOB, "--remote-exec", farm.url.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The compile is on the worker, reading the FIFO: a non-blocking
    // open for writing succeeds once it has the FIFO open.
    let mut held = None;
    wait_for(
        "the farm's compile to open the FIFO",
        || match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => {
                held = Some(f);
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => false,
            Err(e) => panic!("{}: {e}", fifo.display()),
        },
    );
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{err}");
    // The operation the client cancelled, as it names it.
    let name = err
        .lines()
        .find_map(|l| l.split("(cancelled operation ").nth(1))
        .map(|r| r.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no cancelled operation in:\n{err}"));
    let op = get_operation(&farm.url, &name);
    assert!(op.done, "{op:?}");
    // The worker stops the compile: the FIFO loses its reader although
    // this test still holds it open (only a kill ends that read).
    wait_for(
        "the worker to kill the cancelled compile",
        || match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => true,
            Err(e) => panic!("{}: {e}", fifo.display()),
            Ok(_) => false,
        },
    );
    drop(held);
    // And says so (once the compile's thread is back, just after).
    wait_for("the worker to say the lease was cancelled", || {
        std::fs::read_to_string(farm.worker_log(worker))
            .unwrap()
            .contains("cancelled by the server")
    });
    // Nothing half-written here: no native, no record, no temporary.
    let left: Vec<String> = std::fs::read_dir(t.path().join("kernel"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("config_blob.thinlto-native"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// GetOperation on the farm's Operations service.
fn get_operation(url: &str, name: &str) -> bazel_remote_apis::google::longrunning::Operation {
    use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
    use bazel_remote_apis::google::longrunning::GetOperationRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(url.replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        OperationsClient::new(ch)
            .get_operation(GetOperationRequest {
                name: name.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("GetOperation {name}: {s}"))
            .into_inner()
    })
}

/// `--explain --remote-exec`: each job that would compile says whether it
/// goes to the farm or compiles here and why, and the summary counts them.
/// The farm is not asked (nothing listens at the URL). A job whose trace
/// knows it reads a file outside the tree (an `.incbin` by absolute path,
/// which a worker refuses as not hermetic) is predicted here.
#[test]
fn explain_predicts_remote_placement() {
    let t = sample_tree();
    let outside = tempfile::tempdir().unwrap();
    let data = outside.path().join("outside.txt");
    std::fs::write(&data, "CONFIG_OUTSIDE=y\n").unwrap();
    let src = t.path().join("kernel/config_blob.c");
    let text = std::fs::read_to_string(&src).unwrap();
    std::fs::write(
        &src,
        text.replace("kernel/config_data.txt", &data.display().to_string()),
    )
    .unwrap();
    rebuild_fe(t.path());
    let m = thin_link(t.path());
    let jobs = m.bitcode().count();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let nobody = format!(
        "grpc://127.0.0.1:{}",
        xtask::farm::buildgrid::free_port().unwrap()
    );
    let explain = |args: &[&str]| -> (String, String) {
        let out = run_ok(
            tool("thinlto-backend", t.path())
                .args(["--index", "out/vmlinux.thinlto-index", "--explain", "-B"])
                .args(["--remote-exec", nobody.as_str()])
                .args(args),
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // No trace known: every job would go to the farm.
    let (out, err) = explain(&["--no-cache"]);
    assert_eq!(
        out.matches("; on the farm (no trace of it yet").count(),
        jobs,
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "{jobs} would run ({jobs} on the farm, 0 here, 0 from the cache)"
        )),
        "{err}"
    );

    // Built here with the cache (the traces are known), then the outside
    // file changes: its job (and those that import its asm) would compile
    // here, saying why; the others are cache hits.
    run(t.path(), &["-B", "--cache-dir", cache]);
    std::fs::write(&data, "CONFIG_OUTSIDE=changed\n").unwrap();
    let (out, err) = explain(&["--cache-dir", cache]);
    let why = format!("; here: its compile reads {}", data.display());
    let blob = out
        .lines()
        .find(|l| l.starts_with("kernel/config_blob.thinlto-native.o:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        blob.contains(&why) && blob.contains("not hermetic"),
        "{blob}"
    );
    let here = out.matches(&why).count();
    let hits = out.matches("cache-hit").count();
    assert!(here < jobs && here + hits == jobs, "{out}");
    assert!(
        err.contains(&format!(
            "{jobs} would run (0 on the farm, {here} here, {hits} from the cache)"
        )),
        "{err}"
    );
}

/// The record of the job of `object`, as text.
fn record_of(tree: &Path, object: &str) -> String {
    let native = thinlto_backend::job::native_of(object);
    let (dir, name) = native.rsplit_once('/').unwrap();
    std::fs::read_to_string(tree.join(dir).join(format!(".{name}.cmd"))).unwrap()
}

/// After a run whose jobs all ran on the farm, a front-end object rebuilt
/// with the same bitcode (a touched source) costs nothing: each record
/// names the other files of the input root this client built (the only
/// files of the tree the compile could read; a batch's whole root), as a
/// traced local compile's does. (Before, the records had no reads, and the object's job and
/// every importer's ran again.) A change of the `.incbin`'d file the farm
/// compile read is still caught.
#[test]
fn a_touch_after_a_farm_run_reruns_nothing() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let mut all: Vec<String> = m.bitcode().map(|o| o.object.clone()).collect();
    all.sort();
    let bgd = buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &[], &[]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let remote = ["--remote-exec", farm.url.as_str(), "--cache-dir", c];
    let with = |extra: &[&'static str]| -> Vec<String> {
        remote.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    // The first run, batched by 4 (as remote_batch.rs), learns what
    // config_blob.o reads (compiled here, traced).
    let args = with(&["-B", "--remote-batch", "4"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, recs) = run(t.path(), &args);
    // A batch's action has the union of its jobs' roots, where a worker
    // other than ours runs every compile: each job's record names its
    // batch-mates' files too (their shards, never its own inputs).
    let action = |r: &JobRecord| r.batch.as_ref().map(|b| b.action.clone());
    let batched: Vec<&JobRecord> = recs
        .iter()
        .filter(|r| r.batch.as_ref().is_some_and(|b| b.jobs > 1))
        .collect();
    assert!(!batched.is_empty(), "{recs:?}");
    for r in &batched {
        let text = record_of(t.path(), &r.object);
        for mate in batched
            .iter()
            .filter(|o| action(o) == action(r) && o.object != r.object)
        {
            assert!(
                text.contains(&format!("# thinlto-dist: read {}.thinlto.bc ", mate.object)),
                "{}: no read of its batch-mate {}'s shard:\n{text}",
                r.object,
                mate.object
            );
        }
    }
    // Without the cache's objects, the second run sends every job (each
    // found in the farm's action cache under its own action).
    std::fs::remove_dir_all(cache.path().join("backend-v1/blobs")).unwrap();
    let (err, recs) = run(t.path(), &args);
    assert_eq!(placed(&recs, Place::Remote), all, "{err}");
    let blob = record_of(t.path(), BLOB);
    assert!(
        blob.lines().any(|l| l == "# thinlto-dist: traced")
            && blob.contains("# thinlto-dist: read kernel/config_data.txt "),
        "{blob}"
    );

    std::thread::sleep(std::time::Duration::from_millis(20));
    let core_c = t.path().join("kernel/core.c");
    let before = std::fs::read(t.path().join("kernel/core.o")).unwrap();
    std::fs::write(&core_c, std::fs::read(&core_c).unwrap()).unwrap();
    rebuild_fe(t.path());
    assert_eq!(
        before,
        std::fs::read(t.path().join("kernel/core.o")).unwrap()
    );
    thin_link(t.path());
    let args = with(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (err, recs) = run(t.path(), &args);
    assert_eq!(
        with_status(&recs, JobStatus::UpToDate).len(),
        all.len(),
        "{err}\n{recs:?}"
    );

    std::fs::write(t.path().join("kernel/config_data.txt"), "farm data 2\n").unwrap();
    rebuild_fe(t.path());
    thin_link(t.path());
    let (err, recs) = run(t.path(), &args);
    let r = recs.iter().find(|r| r.object == BLOB).unwrap();
    assert_eq!(r.place, Some(Place::Remote), "{err}\n{recs:?}");
    assert!(
        r.reason
            .contains("a file its last compile read changed: kernel/config_data.txt"),
        "{r:?}"
    );
}

/// A farm without a worker whose platform matches keeps the action
/// queued and says nothing (BuildGrid): the client says so, once, after
/// `--remote-queued-notice`, naming the platform it asked for, and waits
/// on (a worker may yet come).
#[test]
fn a_job_no_worker_takes_is_told_of() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let object = m.bitcode().map(|o| o.object.clone()).min().unwrap();
    let bgd = buildgrid::bgd();
    // No worker at all: no platform matches.
    let farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = tool("thinlto-backend", t.path())
        .args(["--index", "out/vmlinux.thinlto-index", "--no-cache", "-B"])
        .args(["--only", &object, "--remote-exec", farm.url.as_str()])
        .args(["--remote-queued-notice", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let notice = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("none started") => break l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no queued notice within 60 s ({e}); stderr so far:\n{seen:#?}"),
        }
    };
    assert!(
        notice.contains(&farm.url) && notice.contains("1 execution(s) queued"),
        "{notice}"
    );
    assert!(notice.contains("thinlto-compiler="), "{notice}");
    // It waits on: still running, the job neither failed nor moved here.
    assert!(child.try_wait().unwrap().is_none(), "{notice}");
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{rest:#?}");
    // Said once.
    assert!(
        !rest.iter().any(|l| l.contains("none started")),
        "{rest:#?}"
    );
    assert!(
        !t.path()
            .join(thinlto_backend::job::native_of(&object))
            .exists(),
        "a native without a compile"
    );
}
