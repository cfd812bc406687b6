//! Running the jobs: in parallel, within make's jobserver when there is
//! one, longest first, crash-safe.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thinlto_index::fsutil::write_atomic;

use crate::plan::BackendJob;
use crate::record::NativeRecord;

/// The JSON record printed for every job (SPEC §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub object: String,
    pub native: String,
    /// "built", "up-to-date" or "failed"
    pub status: String,
    /// Why it ran (or why it is up to date, or why it failed).
    pub reason: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Commands,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parallel jobs; with a jobserver, at most this many (when explicit).
    pub jobs: usize,
    pub jobs_explicit: bool,
    pub keep_going: bool,
    pub verbosity: Verbosity,
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub built: usize,
    pub failed: usize,
    pub not_started: usize,
    /// The signal that interrupted the run, if any.
    pub signal: Option<i32>,
    pub cpu_seconds: f64,
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers that only record the signal;
/// the run then stops its children and cleans up.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; sigaction is given a zeroed, valid struct.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn pending_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The jobserver make handed us, if any (a `+` recipe under `make -jN`).
pub fn jobserver_from_env() -> Option<jobserver::Client> {
    // SAFETY: called once, early, before any other code uses the
    // inherited descriptors named in MAKEFLAGS.
    let from_env = unsafe { jobserver::Client::from_env_ext(true) };
    match from_env.client {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("MAKEFLAGS").is_ok_and(|m| m.contains("jobserver")) {
                eprintln!("thinlto-backend: warning: make's jobserver is not usable ({e}); is the recipe marked with `+`? Using -j instead");
            }
            None
        }
    }
}

struct Shared<'a> {
    queue: Mutex<VecDeque<usize>>,
    jobs: &'a [(BackendJob, String, NativeRecord)],
    stop: AtomicBool,
    children: Mutex<HashSet<u32>>,
    summary: Mutex<RunSummary>,
    emit: &'a (dyn Fn(JobRecord, Option<String>) + Sync),
    opts: &'a RunOptions,
}

/// Runs the given jobs (each with the reason it runs and the record to
/// write on success). `emit` receives every job's result and, for
/// failures, the compiler's output.
pub fn run_jobs(
    jobs: &[(BackendJob, String, NativeRecord)],
    order: Vec<usize>,
    opts: &RunOptions,
    jobserver: Option<&jobserver::Client>,
    emit: &(dyn Fn(JobRecord, Option<String>) + Sync),
) -> RunSummary {
    let shared = Shared {
        queue: Mutex::new(order.into()),
        jobs,
        stop: AtomicBool::new(false),
        children: Mutex::new(HashSet::new()),
        summary: Mutex::new(RunSummary::default()),
        emit,
        opts,
    };
    let workers = match (jobserver.is_some(), opts.jobs_explicit) {
        (true, false) => 256,
        _ => opts.jobs.max(1),
    }
    .min(jobs.len().max(1));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Watches for signals: stops the children and the scheduling.
        s.spawn(|| {
            let mut killed = false;
            while !done.load(Ordering::SeqCst) {
                if let Some(sig) = pending_signal() {
                    shared.stop.store(true, Ordering::SeqCst);
                    if !killed {
                        for pid in shared.children.lock().unwrap().iter() {
                            // SAFETY: signalling our own child by pid.
                            unsafe { libc::kill(*pid as i32, sig) };
                        }
                        killed = true;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let shared = &shared;
                s.spawn(move || worker(shared, if w == 0 { None } else { jobserver }))
            })
            .collect();
        for h in handles {
            h.join().expect("worker thread");
        }
        done.store(true, Ordering::SeqCst);
    });
    let mut summary = shared.summary.into_inner().unwrap();
    summary.not_started = shared.queue.into_inner().unwrap().len();
    summary.signal = pending_signal();
    summary
}

fn worker(shared: &Shared, jobserver: Option<&jobserver::Client>) {
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.queue.lock().unwrap().is_empty() {
            return;
        }
        // Every worker but the first needs a token from make's jobserver.
        let _token = match jobserver {
            Some(c) => match c.acquire() {
                Ok(t) => Some(t),
                Err(_) => return,
            },
            None => None,
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(i) = shared.queue.lock().unwrap().pop_front() else {
            return;
        };
        let (job, reason, record) = &shared.jobs[i];
        let (rec, output) = build_one(shared, job, reason, record);
        let failed = rec.status == "failed";
        {
            let mut s = shared.summary.lock().unwrap();
            if failed {
                s.failed += 1;
            } else {
                s.built += 1;
            }
        }
        (shared.emit)(rec, output);
        if failed && !shared.opts.keep_going {
            shared.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn child_cpu() -> f64 {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub fn children_cpu_seconds() -> f64 {
    child_cpu()
}

/// One compile: into a temporary beside the target, renamed on success,
/// then the record. Returns the job's record and, on failure, the output.
fn build_one(
    shared: &Shared,
    job: &BackendJob,
    reason: &str,
    record: &NativeRecord,
) -> (JobRecord, Option<String>) {
    let start = Instant::now();
    let fail = |why: String, output: Option<String>, start: Instant| {
        (
            JobRecord {
                object: job.input.object.clone(),
                native: job.native.clone(),
                status: "failed".into(),
                reason: why,
                seconds: round3(start.elapsed().as_secs_f64()),
            },
            output,
        )
    };
    let native = Path::new(&job.native);
    let dir = match native.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = native
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = match tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
    {
        Ok(t) => t.into_temp_path(),
        Err(e) => {
            return fail(
                format!("cannot create a temporary file in {}: {e}", dir.display()),
                None,
                start,
            )
        }
    };
    let mut argv = job.argv.clone();
    // The compiler writes the temporary; the record names the target.
    if let Some(o) = argv.iter().rposition(|a| a == "-o") {
        argv[o + 1] = tmp.to_string_lossy().into_owned();
    }
    match shared.opts.verbosity {
        Verbosity::Quiet => {}
        Verbosity::Normal => eprintln!("  {:<7} {}", "CC", job.native),
        Verbosity::Commands => eprintln!("{}", job.command_text),
    }
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return fail(
                format!("cannot run {}: {e}", argv[0]),
                Some(job.command_text.clone()),
                start,
            )
        }
    };
    let pid = child.id();
    shared.children.lock().unwrap().insert(pid);
    let out = child.wait_with_output();
    shared.children.lock().unwrap().remove(&pid);
    let out = match out {
        Ok(o) => o,
        Err(e) => return fail(format!("waiting for the compiler: {e}"), None, start),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Some(sig) = pending_signal() {
        return fail(format!("interrupted by signal {sig}"), None, start);
    }
    if !out.status.success() {
        return fail(
            format!("the compiler failed ({})", out.status),
            Some(format!("{}\n{text}", job.command_text)),
            start,
        );
    }
    if !text.is_empty() && shared.opts.verbosity != Verbosity::Quiet {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
    match std::fs::metadata(&tmp) {
        Ok(m) if m.len() > 0 => {}
        _ => {
            return fail(
                "the compiler exited 0 but wrote no output".into(),
                Some(job.command_text.clone()),
                start,
            )
        }
    }
    if let Err(e) = tmp.persist(native) {
        return fail(
            format!("cannot move the output into place: {e}"),
            None,
            start,
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut rec = record.clone();
    rec.seconds = Some(seconds);
    if let Err(e) = write_atomic(&job.record_path, rec.render(&job.native).as_bytes()) {
        return fail(format!("{e:#}"), None, start);
    }
    (
        JobRecord {
            object: job.input.object.clone(),
            native: job.native.clone(),
            status: "built".into(),
            reason: reason.to_string(),
            seconds: round3(seconds),
        },
        None,
    )
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
