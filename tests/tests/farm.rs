//! Remote execution on a real farm: BuildGrid with execution and a private
//! PostgreSQL (`xtask::farm`), real `thinlto-backend worker`s, real
//! clang-19, the actions sent by `thinlto_backend::reapi::execute`.
//!
//! One test function: the farm takes seconds to start, and the checks
//! share it (and the process's working directory, the sample tree).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use thinlto_backend::reapi::execute::{Executed, Executor, RemoteAction};
use thinlto_backend::reapi::COMPILER_PROPERTY;
use thinlto_backend::reapi::{ActionSpec, Digest, InputFile, RemoteOptions};
use thinlto_backend::BackendJob;
use thinlto_dist_tests::{bin, run_ok, sample_tree, thin_link, toolchain};
use xtask::farm::Farm;

/// An action of `argv` over the files `inputs` (relative to the working
/// directory), for compiler identity `identity`.
fn execute(
    ex: &Executor,
    argv: &[String],
    inputs: &[&str],
    outputs: &[&str],
    identity: &str,
) -> Executed {
    try_execute(ex, argv, inputs, outputs, identity).unwrap_or_else(|e| panic!("{e}"))
}

/// [`execute`], the error returned (a refusal is one).
fn try_execute(
    ex: &Executor,
    argv: &[String],
    inputs: &[&str],
    outputs: &[&str],
    identity: &str,
) -> Result<Executed, String> {
    let spec = ActionSpec {
        argv: argv.to_vec(),
        env: Vec::new(),
        output_paths: outputs.iter().map(|o| o.to_string()).collect(),
        inputs: inputs
            .iter()
            .map(|p| InputFile {
                path: p.to_string(),
                digest: Digest::of_file(Path::new(p)).unwrap_or_else(|e| panic!("{p}: {e}")),
                executable: false,
            })
            .collect(),
        salt: b"farm test".to_vec(),
    };
    let key = spec.key().unwrap();
    ex.execute(&RemoteAction {
        key: &key,
        platform: vec![(COMPILER_PROPERTY.into(), identity.into())],
        local_root: Path::new("."),
    })
    .map_err(|e| format!("{e:#}"))
}

#[test]
fn farm_executes_backend_jobs_hermetically() {
    let tree = sample_tree();
    let manifest = thin_link(tree.path());
    std::env::set_current_dir(tree.path()).unwrap();
    let cc = toolchain().cc.spelled.clone();
    let identity = thinlto_backend::cache::identity::program_identity(std::slice::from_ref(&cc))
        .unwrap()
        .0;

    let bgd = thinlto_dist_tests::buildgrid::bgd();
    // A short keepalive: this farm loses a worker mid-job, and its
    // lease goes to another only when the session expires.
    let mut farm = Farm::start_with_keepalive(
        &bgd,
        &bin("thinlto-backend"),
        xtask::farm::FAILOVER_TEST_KEEPALIVE_S,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let w1 = farm.add_worker("w1", &[], &[]).unwrap();
    // The workers' directories are where a worker puts its own by
    // default: on a tmpfs when /dev/shm is one (and TMPDIR unset), where
    // each job's fresh directories cost little.
    let parent = thinlto_backend::worker::default_work_parent();
    assert!(
        farm.worker_dir("w1").starts_with(&parent),
        "{} not in {}",
        farm.worker_dir("w1").display(),
        parent.display()
    );
    if std::env::var_os("TMPDIR").is_none()
        && Path::new("/dev/shm").is_dir()
        && fs_type(Path::new("/dev/shm")) == "tmpfs"
    {
        assert_eq!(parent, Path::new("/dev/shm"));
    } else {
        eprintln!("farm: skipped the tmpfs default's check (TMPDIR set, or /dev/shm is no tmpfs)");
    }
    // A worker whose `cc` is another program (a wrapper script of the same
    // name): another identity, so it must get no work.
    let fake = tempfile::tempdir().unwrap();
    let wrapper = fake.path().join(&cc);
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {} \"$@\"\n", toolchain().cc.path.display()),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("+x").arg(&wrapper));
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap()
    );
    farm.add_worker("other", &["--compiler", &cc], &[("PATH", &path)])
        .unwrap();
    let ex = Executor::connect(&RemoteOptions {
        url: farm.url.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Real backend jobs, the ones that import most first: byte-identical
    // natives from the farm.
    let front_ends = thinlto_backend::engine::plan::read_front_ends(
        thinlto_backend::job::inputs_from_manifest(&manifest),
    )
    .unwrap();
    let mut jobs: Vec<BackendJob> = front_ends
        .into_iter()
        .map(|(i, cmd)| {
            let i = thinlto_backend::job::with_shard_imports(i).unwrap();
            BackendJob::new(i, &cmd, &cc).unwrap()
        })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.input.imports.as_ref().map_or(0, Vec::len)));
    assert!(jobs[0]
        .input
        .imports
        .as_ref()
        .is_some_and(|i| !i.is_empty()));
    for job in jobs.iter().take(3) {
        run_ok(Command::new(&job.argv[0]).args(&job.argv[1..]));
        let local = std::fs::read(&job.native).unwrap();
        std::fs::remove_file(&job.native).unwrap();
        // Every input root has the file config_blob.o's inline asm
        // .incbin's (which the jobs importing its asm read too).
        let mut inputs = job.content_inputs();
        inputs.push("kernel/config_data.txt");
        let r = execute(&ex, &job.argv, &inputs, &[&job.native], &identity);
        assert_eq!(
            r.exit_code,
            0,
            "{}: {}",
            job.native,
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            r.outputs.get(&job.native) == Some(&local),
            "{}: the farm's native differs from the local compile",
            job.native
        );
        assert!(
            r.worker.starts_with("w1-"),
            "{} ran on {:?}",
            job.native,
            r.worker
        );
    }

    // Backend compiles only: a front-end compile, here one that would
    // read a header outside its input root by absolute path, is refused
    // before anything runs (worker/policy.rs; the sandbox would not show
    // the header either). The hermetic check itself: remote_exec.rs.
    let outside = tempfile::tempdir().unwrap();
    let header = outside.path().join("outside.h");
    std::fs::write(&header, "#define VALUE 42\n").unwrap();
    std::fs::create_dir_all("farm").unwrap();
    std::fs::write(
        "farm/h.c",
        format!(
            "#include \"{}\"\nint value(void) {{ return VALUE; }}\n",
            header.display()
        ),
    )
    .unwrap();
    let argv: Vec<String> = [cc.as_str(), "-c", "farm/h.c", "-o", "farm/h.o"]
        .map(String::from)
        .to_vec();
    match try_execute(&ex, &argv, &["farm/h.c"], &["farm/h.o"], &identity) {
        Ok(r) => panic!("a front-end compile ran on the farm: exit {}", r.exit_code),
        Err(e) => assert!(e.contains("refused: not a backend compile"), "{e}"),
    }

    // A worker killed mid-job: BuildGrid gives the lease to another. The
    // gate: config_blob's inline asm .incbin's a FIFO by absolute path
    // (not a regular file: hermetic), so its backend compile blocks until
    // this test writes it, and is known to be running when a writer can
    // open the FIFO. A sandboxed compile cannot see the FIFO: the workers
    // of this part run with --no-sandbox (the lease handover is the
    // server's and the worker's, whatever the sandbox).
    farm.kill_worker(w1);
    let o1 = farm.add_worker("o1", &["--no-sandbox"], &[]).unwrap();
    let fifo = outside.path().join("value.fifo");
    let src = "kernel/config_blob.c";
    let text = std::fs::read_to_string(src).unwrap();
    std::fs::write(
        src,
        text.replace("kernel/config_data.txt", &fifo.display().to_string()),
    )
    .unwrap();
    // The front end assembles the asm too: a regular file until then.
    std::fs::write(&fifo, "front end\n").unwrap();
    thinlto_dist_tests::rebuild_fe(Path::new("."));
    let manifest = thin_link(Path::new("."));
    std::fs::remove_file(&fifo).unwrap();
    run_ok(Command::new("mkfifo").arg(&fifo));
    let blob = thinlto_backend::engine::plan::read_front_ends(
        thinlto_backend::job::inputs_from_manifest(&manifest),
    )
    .unwrap()
    .into_iter()
    .map(|(i, cmd)| BackendJob::new(i, &cmd, &cc).unwrap())
    .find(|j| j.input.object == "kernel/config_blob.o")
    .unwrap();
    let inputs: Vec<&str> = blob.content_inputs();
    std::thread::scope(|s| {
        let run = s.spawn(|| execute(&ex, &blob.argv, &inputs, &[&blob.native], &identity));
        let held = open_fifo_writer(&fifo, &farm);
        farm.kill_worker(o1);
        drop(held);
        // The killed worker's compile dies with it (PDEATHSIG); until it
        // has, it still holds the FIFO open, and a writer opened now would
        // feed it instead of o2's compile.
        wait_for_no_reader(&fifo);
        farm.add_worker("o2", &["--no-sandbox"], &[]).unwrap();
        let mut w = open_fifo_writer(&fifo, &farm);
        w.write_all(b"the configuration\n").unwrap();
        drop(w);
        let r = run.join().unwrap();
        assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        assert!(r.outputs.contains_key(&blob.native));
        assert!(r.worker.starts_with("o2-"), "ran on {:?}", r.worker);
    });

    // The worker with the other compiler never had an action.
    let other = std::fs::read_to_string(farm.worker_log("other")).unwrap();
    assert!(!other.contains("lease"), "{other}");
    let ran: Vec<_> = std::fs::read_dir(farm.worker_dir("other"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        ran.iter()
            .all(|n| !n.to_string_lossy().starts_with("action-")),
        "{ran:?}"
    );
}

/// Waits until no process has `fifo` open for reading (a non-blocking
/// open for writing fails with ENXIO then; one that succeeds is closed at
/// once, which a dying reader sees as the end of its input).
fn wait_for_no_reader(fifo: &Path) {
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return,
            Err(e) => panic!("{}: {e}", fifo.display()),
            Ok(_) => {}
        }
        // A bound on a wait, not a timing assertion.
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} still has a reader 2 min after its worker was killed",
            fifo.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `fifo` for writing once a compile has it open for reading (a
/// non-blocking open fails with ENXIO until then).
fn open_fifo_writer(fifo: &Path, farm: &Farm) -> std::fs::File {
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => return f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => panic!("{}: {e}", fifo.display()),
        }
        // A bound on a wait, not a timing assertion: the lease is re-run
        // after BuildGrid's keepalive timeout (10 s) of the dead worker.
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no compile opened {} within 2 min; logs:\n{}",
            fifo.display(),
            farm.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A worker whose work directory is on a disk file system says what that
/// costs (it is not refused); the farm's, on a tmpfs, say nothing.
#[test]
fn a_worker_on_a_disk_work_directory_says_its_cost() {
    let bgd = thinlto_dist_tests::buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if fs_type(disk.path()) != "tmpfs" {
        let mut w = Command::new(bin("thinlto-backend"))
            .args(["worker", "--server", farm.url.as_str(), "--name", "disk"])
            .arg("--work-dir")
            .arg(disk.path().join("work"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = std::io::BufReader::new(w.stderr.take().unwrap());
        let mut seen = Vec::new();
        for line in std::io::BufRead::lines(err).map_while(Result::ok) {
            let done = line.contains(COMPILER_PROPERTY);
            seen.push(line);
            if done {
                break;
            }
        }
        let _ = w.kill();
        let _ = w.wait();
        assert!(
            seen.iter().any(|l| l.contains("is not on a tmpfs")),
            "{seen:#?}"
        );
    } else {
        eprintln!("farm: skipped the disk work directory's note (the target directory is a tmpfs)");
    }
    farm.add_worker("t1", &[], &[]).unwrap();
    let log = farm.worker_log("t1");
    thinlto_dist_tests::wait_for("the worker to name its compilers", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(COMPILER_PROPERTY)
    });
    if fs_type(&farm.worker_dir("t1")) == "tmpfs" {
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(!log.contains("is not on a tmpfs"), "{log}");
    } else {
        eprintln!("farm: skipped the tmpfs work directory's silence (no tmpfs here)");
    }
}

/// The file system type of `path`, as `stat -f` names it (`tmpfs`,
/// `ext2/ext3`, …).
fn fs_type(path: &Path) -> String {
    let out = run_ok(Command::new("stat").args(["-f", "-c", "%T"]).arg(path));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
