//! Running the jobs: in parallel, within make's jobserver when there is
//! one, longest first, crash-safe.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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

/// Make's jobserver as the environment presents it.
pub enum MakeJobserver {
    /// No jobserver in MAKEFLAGS: we decide the parallelism.
    Absent,
    /// A usable jobserver (`+` recipe under `make -jN`).
    Usable(jobserver::Client),
    /// MAKEFLAGS names one, but its descriptors are not ours (a recipe
    /// without `+`): like a sub-make then, one job at a time unless -j.
    Unusable,
}

/// The jobserver make handed us, if any, in either form:
/// `--jobserver-auth=R,W` (inherited descriptors) or `fifo:PATH` (make 4.4).
pub fn jobserver_from_env() -> MakeJobserver {
    // SAFETY: called once, early, before any other code uses the
    // inherited descriptors named in MAKEFLAGS.
    let from_env = unsafe { jobserver::Client::from_env_ext(true) };
    match from_env.client {
        Ok(c) => MakeJobserver::Usable(c),
        Err(e) => {
            if std::env::var("MAKEFLAGS").is_ok_and(|m| m.contains("jobserver")) {
                eprintln!("thinlto-backend: warning: make's jobserver is not usable ({e}); mark the recipe with `+` to share make's job slots. One job at a time unless -j says otherwise");
                MakeJobserver::Unusable
            } else {
                MakeJobserver::Absent
            }
        }
    }
}

/// What the scheduler hears: a jobserver token, or a finished job.
enum Event {
    Token(std::io::Result<jobserver::Acquired>),
    Done(JobRecord, Option<String>),
}

/// What the worker threads share.
struct Ctx<'a> {
    opts: &'a RunOptions,
    /// Children running now, by pid, so that a signal can stop them.
    children: Mutex<HashSet<u32>>,
}

/// Runs the given jobs (each with the reason it runs and the record to
/// write on success), in `order` (longest expected first).
///
/// One scheduler (the calling thread) decides what starts when; worker
/// threads, as many as jobs run at once, each run one compile at a time.
/// Without a jobserver at most `opts.jobs` run at once. With one, the
/// process's implicit token runs one job and every further job needs a
/// token from make (requested through the jobserver crate's helper
/// thread, released as soon as no job needs it), and an explicit `-j`
/// caps that too. On a failure no new job starts (unless
/// `keep_going`); on SIGINT/SIGTERM/SIGHUP the running children get the
/// same signal (SIGKILL 5 s later), nothing new starts, and the run
/// returns once they are gone.
///
/// `emit` receives every job's result on the calling thread, with the
/// compiler's output for failures.
pub fn run_jobs(
    jobs: &[(BackendJob, String, NativeRecord)],
    order: Vec<usize>,
    opts: &RunOptions,
    jobserver: Option<jobserver::Client>,
    emit: &mut dyn FnMut(JobRecord, Option<String>),
) -> RunSummary {
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let had_jobserver = jobserver.is_some();
    let helper = jobserver.and_then(|client| {
        let tx = ev_tx.clone();
        match client.into_helper_thread(move |t| {
            let _ = tx.send(Event::Token(t));
        }) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("thinlto-backend: warning: cannot wait for make's jobserver ({e}); running one job at a time");
                None
            }
        }
    });
    let limit = match (had_jobserver, helper.is_some(), opts.jobs_explicit) {
        (true, false, _) => 1,
        (true, true, false) => usize::MAX,
        _ => opts.jobs.max(1),
    };
    let ctx = Ctx {
        opts,
        children: Mutex::new(HashSet::new()),
    };
    let mut summary = RunSummary::default();
    let mut queue: VecDeque<usize> = order.into();
    let (job_tx, job_rx) = mpsc::channel::<usize>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let mut workers = 0usize;
        let mut tokens: Vec<jobserver::Acquired> = Vec::new();
        let mut requested = 0usize;
        let mut token_error = false;
        let mut running = 0usize;
        let mut stop = false;
        let mut signalled: Option<(i32, Instant)> = None;
        let mut escalated = false;
        loop {
            if let Some(sig) = pending_signal() {
                stop = true;
                match signalled {
                    None => {
                        kill_all(&ctx, sig);
                        signalled = Some((sig, Instant::now()));
                    }
                    Some((_, at)) if !escalated && at.elapsed() > Duration::from_secs(5) => {
                        kill_all(&ctx, libc::SIGKILL);
                        escalated = true;
                    }
                    _ => {}
                }
            }
            if !stop {
                let slots = if helper.is_some() {
                    (1 + tokens.len()).min(limit)
                } else {
                    limit
                };
                while running < slots {
                    let Some(i) = queue.pop_front() else { break };
                    running += 1;
                    if running > workers {
                        workers += 1;
                        let (ctx, job_rx, tx) = (&ctx, &job_rx, ev_tx.clone());
                        s.spawn(move || loop {
                            let next = job_rx.lock().unwrap().recv();
                            let Ok(i) = next else { return };
                            let (job, reason, record) = &jobs[i];
                            let (rec, output) = build_one(ctx, job, reason, record);
                            if tx.send(Event::Done(rec, output)).is_err() {
                                return;
                            }
                        });
                    }
                    job_tx
                        .send(i)
                        .expect("workers live while the scheduler does");
                }
                if let Some(h) = &helper {
                    let want = (running + queue.len()).min(limit).saturating_sub(1);
                    while !token_error && tokens.len() + requested < want {
                        h.request_token();
                        requested += 1;
                    }
                }
            }
            // A token no running job needs goes straight back to make.
            tokens.truncate(running.saturating_sub(1));
            if running == 0 && (stop || queue.is_empty()) {
                break;
            }
            let wait = Duration::from_millis(if signalled.is_some() { 10 } else { 50 });
            match ev_rx.recv_timeout(wait) {
                Ok(Event::Token(Ok(t))) => {
                    requested = requested.saturating_sub(1);
                    tokens.push(t);
                }
                Ok(Event::Token(Err(e))) => {
                    requested = requested.saturating_sub(1);
                    if !token_error {
                        eprintln!("thinlto-backend: warning: make's jobserver failed ({e}); no more tokens taken from it");
                    }
                    token_error = true;
                }
                Ok(Event::Done(rec, output)) => {
                    running -= 1;
                    let failed = rec.status == "failed";
                    if failed {
                        summary.failed += 1;
                        if !opts.keep_going {
                            stop = true;
                        }
                    } else {
                        summary.built += 1;
                    }
                    emit(rec, output);
                }
                Err(_) => {}
            }
        }
        drop(job_tx);
    });
    // Joins the helper thread (interrupting a pending acquire); tokens it
    // took meanwhile are released with the channel.
    drop(helper);
    drop(ev_rx);
    summary.not_started = queue.len();
    summary.signal = pending_signal();
    summary
}

fn kill_all(ctx: &Ctx, sig: i32) {
    for pid in ctx.children.lock().unwrap().iter() {
        // SAFETY: signalling our own child by pid; it is still ours (not
        // reaped) while it is in the set.
        unsafe { libc::kill(*pid as i32, sig) };
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

/// The temporary a job's compiler writes: `dir/.foo.thinlto-native.o.<pid>.tmp`,
/// beside the target (same filesystem: the rename is atomic). Not created
/// in advance: the compiler creates it (clang through its own temporary,
/// `<that>-XXXXXXXX`, renamed onto it), so a job costs no extra inode.
pub fn temp_path(native: &Path) -> std::path::PathBuf {
    let name = native
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    native.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Removes a failed job's temporary and whatever the compiler left of it
/// (clang, killed, leaves its own `.foo.thinlto-native.o.<pid>-XXXXXXXX.tmp.tmp`).
fn remove_temporaries(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
    let (Some(name), Some(dir)) = (tmp.file_name(), tmp.parent()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let stem = name.strip_suffix(".tmp").unwrap_or(&name);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let f = e.file_name();
            let f = f.to_string_lossy();
            if let Some(rest) = f.strip_prefix(stem) {
                if rest.starts_with('-') || rest.starts_with('.') {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Writes a record as make's `printf > file` would leave it (mode 0666
/// less the umask), never half-written. The caller removed the old record
/// before, so the file is new: up to a page is created and written with
/// one `write`, which no signal splits (a reader, or a run after a crash,
/// sees no file, an empty one — no command, so the job reruns — or the
/// whole record) and costs no rename; a longer record goes through a
/// temporary and a rename.
pub fn write_record(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let open_new = |p: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(p)
    };
    if text.len() <= 4096 {
        let mut f = match open_new(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Someone else wrote one meanwhile: replace it whole.
                return write_record_via_temp(path, text, open_new);
            }
            Err(e) => return Err(e),
        };
        let r = f.write(text.as_bytes());
        return match r {
            Ok(n) if n == text.len() => Ok(()),
            Ok(_) | Err(_) => {
                drop(f);
                let _ = std::fs::remove_file(path);
                Err(r
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("short write")))
            }
        };
    }
    write_record_via_temp(path, text, open_new)
}

fn write_record_via_temp(
    path: &Path,
    text: &str,
    open_new: impl Fn(&Path) -> std::io::Result<std::fs::File>,
) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let r = (|| {
        let mut f = open_new(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// One compile: into a temporary beside the target, renamed on success,
/// then the record. Returns the job's record and, on failure, the output.
fn build_one(
    ctx: &Ctx,
    job: &BackendJob,
    reason: &str,
    record: &NativeRecord,
) -> (JobRecord, Option<String>) {
    let start = Instant::now();
    let native = Path::new(&job.native);
    let tmp = temp_path(native);
    let fail = |why: String, output: Option<String>| {
        remove_temporaries(&tmp);
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
    // (A leftover of a killed run with the same pid is simply overwritten.)
    let mut argv = job.argv.clone();
    // The compiler writes the temporary; the record names the target.
    if let Some(o) = argv.iter().rposition(|a| a == "-o") {
        argv[o + 1] = tmp.to_string_lossy().into_owned();
    }
    match ctx.opts.verbosity {
        Verbosity::Quiet => {}
        Verbosity::Normal => eprintln!("  {:<7} {}", "CC", job.native),
        Verbosity::Commands => eprintln!("{}", job.command_text),
    }
    // The compiler process: a plain spawn, or a job of the warm compiler
    // (--warm, see warm.rs). A job lost with the warm compiler (it died
    // under it) runs again, plainly.
    let out = loop {
        let mut child = match crate::warm::spawn_compiler(&argv) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    format!("cannot run {}: {e}", argv[0]),
                    Some(job.command_text.clone()),
                )
            }
        };
        let pid = child.id();
        ctx.children.lock().unwrap().insert(pid);
        // A signal that came between the scheduler's kill and our insert.
        if let Some(sig) = pending_signal() {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(pid as i32, sig) };
        }
        let out = child.wait_with_output();
        ctx.children.lock().unwrap().remove(&pid);
        drop(child);
        match out {
            Err(e) if crate::warm::is_lost(&e) && pending_signal().is_none() => {
                remove_temporaries(&tmp)
            }
            out => break out,
        }
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return fail(format!("waiting for the compiler: {e}"), None),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        if let Some(sig) = pending_signal() {
            return fail(format!("interrupted by signal {sig}"), None);
        }
        return fail(
            format!("the compiler failed ({})", out.status),
            Some(format!("{}\n{text}", job.command_text)),
        );
    }
    if !text.is_empty() && ctx.opts.verbosity != Verbosity::Quiet {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
    match std::fs::metadata(&tmp) {
        Ok(m) if m.is_file() && m.len() > 0 => {}
        _ => {
            return fail(
                "the compiler exited 0 but wrote no output (or an empty one)".into(),
                Some(job.command_text.clone()),
            )
        }
    }
    // The old record goes first: were we to die between the rename and the
    // new record, an old record must not vouch for the new object.
    // (Looked up first: an unlink takes the directory's lock even when
    // there is nothing to remove, and jobs of one directory run together.)
    if std::fs::symlink_metadata(&job.record_path).is_ok() {
        if let Err(e) = std::fs::remove_file(&job.record_path) {
            return fail(format!("cannot remove the old record: {e}"), None);
        }
    }
    if let Err(e) = std::fs::rename(&tmp, native) {
        return fail(format!("cannot move the output into place: {e}"), None);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut rec = record.clone();
    rec.seconds = Some(seconds);
    // The record comes last: a crash before it leaves a native that the
    // next run does not trust (no record, or one for other inputs).
    if let Err(e) = write_record(&job.record_path, &rec.render(&job.native)) {
        return fail(
            format!(
                "{}: cannot write the record: {e}",
                job.record_path.display()
            ),
            None,
        );
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
