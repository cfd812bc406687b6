//! Running the jobs: in parallel, within make's jobserver when there is
//! one, longest first, crash-safe.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Verbosity;
use crate::exec::{Outcome as RemoteOutcome, RemoteExec};
use crate::job::{split_dwarf_file, BackendJob, BatchRef};
use crate::record::{round3, write_record, NativeRecord};
use crate::signals::pending_signal;

/// The JSON record printed for every job (SPEC §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub object: String,
    pub native: String,
    pub status: JobStatus,
    /// Why it ran (or why it is up to date, or why it failed).
    pub reason: String,
    pub seconds: f64,
    /// For "cache-hit": the tier that had it ("local" or "remote").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::Tier>,
    /// For "cache-hit": the job's cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For "built" and "failed": where the compiler ran.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// For a remote build: the farm's worker that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// For a remote build in a batched action (`--remote-batch`): which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
}

/// Where a compile ran; in JSON "local" or "remote".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Local,
    Remote,
}

/// What became of a job; in JSON "built", "up-to-date", "cache-hit" or
/// "failed" (the contract's spelling, which scripts compare against).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    Built,
    UpToDate,
    /// The native was taken from the backend cache (`--cache`).
    CacheHit,
    Failed,
}

impl JobStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Built => "built",
            JobStatus::UpToDate => "up-to-date",
            JobStatus::CacheHit => "cache-hit",
            JobStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Jobs whose native came from the cache (not counted in `built`).
    pub cache_hits: usize,
    pub failed: usize,
    pub not_started: usize,
    /// The signal that interrupted the run, if any.
    pub signal: Option<i32>,
    /// Why `emit` failed (stdout closed or full disk), which stopped the
    /// run as a failed job would.
    pub output_error: Option<std::sync::Arc<std::io::Error>>,
    pub cpu_seconds: f64,
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
                eprintln_one_write!("thinlto-backend: warning: make's jobserver is not usable ({e}); mark the recipe with `+` to share make's job slots. One job at a time unless -j says otherwise");
                MakeJobserver::Unusable
            } else {
                MakeJobserver::Absent
            }
        }
    }
}

/// Parallel jobs without `-j`: under a usable jobserver as many as make
/// grants (capped by nothing but tokens; this is the first, implicit
/// one's share), under an unusable one one at a time (a recipe without
/// `+`: like a sub-make), else every core.
pub fn default_jobs(jobserver: &MakeJobserver) -> usize {
    match jobserver {
        MakeJobserver::Unusable => 1,
        _ => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

/// What the scheduler hears: a jobserver token, a finished job (and the
/// kind of slot it had), or a job the farm gave back to compile here.
enum Event {
    Token(std::io::Result<jobserver::Acquired>),
    Done(JobRecord, Option<String>, Slot),
    Fallback(usize),
}

/// The two kinds of job slots: a local compile takes one of make's
/// tokens (or of -j); a job sent to the farm takes one of
/// `--remote-jobs`, and a local token only if it falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Local,
    Remote,
    /// Local, after the farm gave it back: its cache lookup is done.
    LocalAfterRemote,
}

/// What the worker threads share.
struct Ctx<'a> {
    opts: &'a RunOptions,
    cache: Option<&'a crate::cache::BackendCache>,
    prefetch: Option<&'a crate::cache::Prefetch>,
    remote: Option<&'a RemoteExec>,
    /// Traces every local compile, for its record ([`crate::engine::reads`]).
    tracer: Option<crate::engine::reads::Tracer>,
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
/// `emit` receives every job's result on the calling thread, with what
/// the compiler printed (its command first for a failure). An error from
/// `emit` (the job records cannot be written) stops the run as a failure
/// does, without `keep_going`, and is kept in the summary.
#[allow(clippy::too_many_arguments)]
pub fn run_jobs(
    jobs: &[(BackendJob, String, NativeRecord)],
    order: Vec<usize>,
    opts: &RunOptions,
    jobserver: Option<jobserver::Client>,
    cache: Option<&crate::cache::BackendCache>,
    prefetch: Option<&crate::cache::Prefetch>,
    remote: Option<&RemoteExec>,
    emit: &mut dyn FnMut(JobRecord, Option<String>) -> std::io::Result<()>,
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
                eprintln_one_write!("thinlto-backend: warning: cannot wait for make's jobserver ({e}); running one job at a time");
                None
            }
        }
    });
    let limit = match (had_jobserver, helper.is_some(), opts.jobs_explicit) {
        (true, false, _) => 1,
        (true, true, false) => usize::MAX,
        _ => opts.jobs.max(1),
    };
    // Only jobs with a record keep what their trace says (a DTLTO job,
    // decided afresh by every link, has none).
    let wants_trace = jobs.iter().any(|(j, _, _)| j.record_path.is_some());
    let ctx = Ctx {
        opts,
        cache,
        prefetch,
        remote,
        tracer: wants_trace
            .then(|| crate::engine::reads::Tracer::new(cache.is_none()))
            .flatten(),
        children: Mutex::new(HashSet::new()),
    };
    let mut summary = RunSummary::default();
    let mut queue: VecDeque<usize> = order.into();
    // Jobs the farm gave back, first in line for local slots.
    let mut local_queue: VecDeque<usize> = VecDeque::new();
    let farm = |ctx: &Ctx| ctx.remote.is_some_and(|r| !r.is_off());
    let (job_tx, job_rx) = mpsc::channel::<(usize, Slot)>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let mut workers = 0usize;
        let mut tokens: Vec<jobserver::Acquired> = Vec::new();
        let mut requested = 0usize;
        let mut token_error = false;
        let mut running = 0usize;
        let mut remote_running = 0usize;
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
                let start = |i: usize, slot: Slot, workers: &mut usize, total: usize| {
                    if total > *workers {
                        *workers += 1;
                        let (ctx, job_rx, tx) = (&ctx, &job_rx, ev_tx.clone());
                        s.spawn(move || loop {
                            let next = job_rx.lock().unwrap().recv();
                            let Ok((i, slot)) = next else { return };
                            let (job, reason, record) = &jobs[i];
                            let ev = match build_one(ctx, i, job, reason, record, slot) {
                                Built::Done(rec, output) => Event::Done(rec, output, slot),
                                Built::Fallback => Event::Fallback(i),
                            };
                            if tx.send(ev).is_err() {
                                return;
                            }
                        });
                    }
                    job_tx
                        .send((i, slot))
                        .expect("workers live while the scheduler does");
                };
                // The farm first (its own slots), then this machine's.
                if let Some(r) = ctx.remote.filter(|_| farm(&ctx)) {
                    while remote_running < r.jobs() {
                        let Some(i) = queue.pop_front() else { break };
                        remote_running += 1;
                        start(i, Slot::Remote, &mut workers, running + remote_running);
                    }
                }
                while running < slots {
                    let (i, slot) = match local_queue.pop_front() {
                        Some(i) => (i, Slot::LocalAfterRemote),
                        None if !farm(&ctx) => match queue.pop_front() {
                            Some(i) => (i, Slot::Local),
                            None => break,
                        },
                        None => break,
                    };
                    running += 1;
                    start(i, slot, &mut workers, running + remote_running);
                }
                if let Some(h) = &helper {
                    let local_work = local_queue.len() + if farm(&ctx) { 0 } else { queue.len() };
                    let want = (running + local_work).min(limit).saturating_sub(1);
                    while !token_error && tokens.len() + requested < want {
                        h.request_token();
                        requested += 1;
                    }
                }
            }
            // A token no running job needs goes straight back to make.
            tokens.truncate(running.saturating_sub(1));
            if running == 0
                && remote_running == 0
                && (stop || (queue.is_empty() && local_queue.is_empty()))
            {
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
                        eprintln_one_write!("thinlto-backend: warning: make's jobserver failed ({e}); no more tokens taken from it");
                    }
                    token_error = true;
                }
                Ok(Event::Fallback(i)) => {
                    remote_running -= 1;
                    local_queue.push_back(i);
                }
                Ok(Event::Done(rec, output, slot)) => {
                    if slot == Slot::Remote {
                        remote_running -= 1;
                    } else {
                        running -= 1;
                    }
                    let failed = rec.status == JobStatus::Failed;
                    if failed {
                        summary.failed += 1;
                        if !opts.keep_going {
                            stop = true;
                        }
                    } else if rec.status == JobStatus::CacheHit {
                        summary.cache_hits += 1;
                    } else {
                        summary.built += 1;
                    }
                    if let Err(e) = emit(rec, output) {
                        stop = true;
                        summary
                            .output_error
                            .get_or_insert_with(|| std::sync::Arc::new(e));
                    }
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
    summary.not_started = queue.len() + local_queue.len();
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

/// Removes what a failed job left: its native object (as make's
/// `.DELETE_ON_ERROR`, which kbuild sets, deletes a failed target; a
/// compiler other than clang may have written it in place, half-way),
/// its split-DWARF file, and what clang leaves of its own temporary when
/// it is killed by SIGKILL (`dir/foo.thinlto-native-XXXXXXXX.o.tmp`;
/// on SIGINT/SIGTERM and on errors clang removes it, and the .dwo, itself).
fn remove_failed_outputs(native: &Path, dwo: Option<&Path>) {
    for p in std::iter::once(native).chain(dwo) {
        if std::fs::symlink_metadata(p).is_ok() {
            let _ = std::fs::remove_file(p);
        }
    }
    let (Some(stem), Some(dir)) = (native.file_stem(), native.parent()) else {
        return;
    };
    let ext = native
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}-", stem.to_string_lossy());
    let suffix = format!("{ext}.tmp");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let f = e.file_name();
            let f = f.to_string_lossy();
            // clang's unique part: 8 characters of [0-9a-f].
            let ours = f
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(&suffix))
                .is_some_and(|u| u.len() == 8 && u.bytes().all(|b| b.is_ascii_alphanumeric()));
            if ours {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// One compile, with exactly the reference's argv: whatever the compiler
/// derives from `-o` (the split-DWARF file's name, which the object
/// records as DW_AT_dwo_name; `-grecord-command-line`'s argv) comes out as
/// kbuild's command makes it, byte for byte.
///
/// Crash safety without a temporary of our own: the old record and the
/// old native go first, so that from then until the new record is
/// written last no record vouches for whatever is on disk (the next run,
/// ours or make's, reruns the job). clang writes the object through its
/// own temporary and renames it into place, and removes its temporary
/// and the split-DWARF file on an error, SIGINT or SIGTERM; the .dwo it
/// writes in place, so after a SIGKILL a half-written .dwo (or, from
/// another compiler, native) can be left — never with a record, and a
/// failed job's outputs are removed. The compiler must leave a non-empty
/// native (it was removed before, so one is this compile's).
///
/// Returns the job's record and what the compiler printed (for a
/// failure, after its command), if anything.
/// What a worker thread made of a job.
enum Built {
    /// Its record, and what the compiler printed.
    Done(JobRecord, Option<String>),
    /// The farm gave it back: to be compiled here.
    Fallback,
}

fn build_one(
    ctx: &Ctx,
    index: usize,
    job: &BackendJob,
    reason: &str,
    record: &NativeRecord,
    slot: Slot,
) -> Built {
    match prepare(ctx, index, job, reason, record, slot) {
        Some(done) => Built::Done(done.0, done.1),
        None if slot == Slot::Remote => compile_remote(ctx, job, reason, record),
        None => {
            let (rec, output) = compile_local(ctx, job, reason, record);
            Built::Done(rec, output)
        }
    }
}

/// Outputs of the context of one job: the native, its .dwo, and how a
/// job record of it is made.
struct JobOut<'a> {
    job: &'a BackendJob,
    native: &'a Path,
    dwo: Option<std::path::PathBuf>,
    start: Instant,
    place: Place,
}

impl JobOut<'_> {
    fn new(job: &BackendJob, place: Place) -> JobOut<'_> {
        let native = Path::new(&job.native);
        JobOut {
            job,
            native,
            dwo: split_dwarf_file(&job.argv, native),
            start: Instant::now(),
            place,
        }
    }

    fn result(
        &self,
        status: JobStatus,
        why: String,
        output: Option<String>,
    ) -> (JobRecord, Option<String>) {
        (
            JobRecord {
                object: self.job.input.object.clone(),
                native: self.job.native.clone(),
                status,
                reason: why,
                seconds: round3(self.start.elapsed().as_secs_f64()),
                cache: None,
                key: None,
                place: (status == JobStatus::Failed).then_some(self.place),
                worker: None,
                batch: None,
            },
            output,
        )
    }

    fn fail(&self, why: String, output: Option<String>) -> (JobRecord, Option<String>) {
        remove_failed_outputs(self.native, self.dwo.as_deref());
        self.result(JobStatus::Failed, why, output)
    }
}

/// Before a job compiles: its old record and native removed, then the
/// cache asked (unless the farm gave the job back: asked already). Some
/// when that finished the job (a hit, or a failure to remove).
fn prepare(
    ctx: &Ctx,
    index: usize,
    job: &BackendJob,
    reason: &str,
    record: &NativeRecord,
    slot: Slot,
) -> Option<(JobRecord, Option<String>)> {
    if slot == Slot::LocalAfterRemote {
        return None;
    }
    let start = Instant::now();
    let out = JobOut::new(job, Place::Local);
    let (native, dwo) = (out.native, out.dwo.clone());
    // (Each looked up first: an unlink takes the directory's lock even
    // when there is nothing to remove, and jobs of one directory run
    // together.)
    let old_outputs = job.record_path.as_deref().map(|r| ("record", r));
    for (what, p) in old_outputs.into_iter().chain([("native", native)]) {
        if std::fs::symlink_metadata(p).is_ok() {
            if let Err(e) = std::fs::remove_file(p) {
                // Nothing touched yet: the old outputs stay as they were.
                return Some(out.result(
                    JobStatus::Failed,
                    format!("{}: cannot remove the old {what}: {e}", p.display()),
                    None,
                ));
            }
        }
    }
    if let Some(cache) = ctx.cache {
        // Looked up ahead (--cache's prefetch), or now.
        let found = match ctx.prefetch.and_then(|p| p.take(index)) {
            Some(found) => found,
            None => cache.lookup(job, record),
        };
        if let Some(hit) = found {
            match put_in_place(job, record, &hit, dwo.as_deref()) {
                Ok(()) => {
                    if ctx.opts.verbosity != Verbosity::Quiet {
                        eprintln_one_write!("  {:<7} {}", "HIT", job.native);
                    }
                    return Some((
                        JobRecord {
                            object: job.input.object.clone(),
                            native: job.native.clone(),
                            status: JobStatus::CacheHit,
                            reason: format!("{reason}; from the {} cache", hit.tier.as_str()),
                            seconds: round3(start.elapsed().as_secs_f64()),
                            cache: Some(hit.tier),
                            key: Some(hit.key),
                            place: None,
                            worker: None,
                            batch: None,
                        },
                        (!hit.output.is_empty()).then_some(hit.output),
                    ));
                }
                Err(e) => {
                    // Compiled instead; whatever was put in place goes.
                    remove_failed_outputs(native, dwo.as_deref());
                    eprintln_one_write!(
                        "thinlto-backend: cache: {}: cannot put the cached object in place: {e:#}; compiling",
                        job.native
                    );
                }
            }
        }
    }
    None
}

/// One local compile (see [`build_one`]'s caller docs above).
fn compile_local(
    ctx: &Ctx,
    job: &BackendJob,
    reason: &str,
    record: &NativeRecord,
) -> (JobRecord, Option<String>) {
    let out_ = JobOut::new(job, Place::Local);
    let (start, native, dwo) = (out_.start, out_.native, out_.dwo.clone());
    let fail = |why: String, output: Option<String>| out_.fail(why, output);
    match ctx.opts.verbosity {
        Verbosity::Quiet => {}
        Verbosity::Normal => eprintln_one_write!("  {:<7} {}", "CC", job.native),
        Verbosity::Commands => eprintln_one_write!("{}", job.command_text),
    }
    let argv = &job.argv;
    let trace = match ctx.cache {
        Some(c) => Some(c.trace_file()),
        None => ctx.tracer.as_ref().and_then(|t| t.file()),
    };
    // What the compile read must not have changed since (cache/mod.rs).
    let started = std::time::SystemTime::now();
    // The compiler process: a plain spawn, or a job of the warm compiler
    // (--warm, see warm.rs). A job lost with the warm compiler (it died
    // under it) runs again, plainly.
    let out = loop {
        if let Some(t) = &trace {
            // The shim appends: a lost warm job's trace starts afresh.
            let _ = std::fs::remove_file(t);
        }
        let mut child = match crate::warm::spawn_compiler(argv, trace.as_deref()) {
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
                remove_failed_outputs(native, dwo.as_deref())
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
    match std::fs::metadata(native) {
        Ok(m) if m.is_file() && m.len() > 0 => {}
        _ => {
            // What the compiler said is why (clang-19 exits 0 with an
            // empty object when it cannot load an imported module:
            // "Error loading imported file …").
            return fail(
                "the compiler exited 0 but wrote no output (or an empty one)".into(),
                Some(format!("{}\n{text}", job.command_text)),
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut rec = record.clone();
    rec.seconds = Some(seconds);
    if let (Some(tracer), Some(t)) = (&ctx.tracer, &trace) {
        if let Some(reads) = tracer.reads(t, job, started) {
            rec.traced = true;
            rec.reads = reads;
        }
        if ctx.cache.is_none() {
            let _ = std::fs::remove_file(t);
        }
    }
    // The record comes last: a crash before it leaves a native that the
    // next run does not trust (no record).
    if let Some(path) = &job.record_path {
        if let Err(e) = write_record(path, &rec.render(&job.native)) {
            return fail(
                format!("{}: cannot write the record: {e}", path.display()),
                None,
            );
        }
    }
    if let (Some(cache), Some(t)) = (ctx.cache, &trace) {
        cache.store(job, record, t, &text, seconds, started);
    }
    (
        JobRecord {
            object: job.input.object.clone(),
            native: job.native.clone(),
            status: JobStatus::Built,
            reason: reason.to_string(),
            seconds: round3(seconds),
            cache: None,
            key: None,
            place: Some(Place::Local),
            worker: None,
            batch: None,
        },
        // Warnings of a job that succeeded (-Wframe-larger-than and the
        // like fire only here, in the backend): shown whatever the
        // verbosity, as kbuild shows them even under `make -s`.
        (!text.is_empty()).then_some(text),
    )
}

/// One job on the farm: its outputs put in place and its record written
/// as a local compile's would be, the result copied to the local cache;
/// [`Built::Fallback`] when it must compile here instead.
fn compile_remote(ctx: &Ctx, job: &BackendJob, reason: &str, record: &NativeRecord) -> Built {
    let remote = ctx.remote.expect("a remote slot has a farm");
    let out = JobOut::new(job, Place::Remote);
    let known = ctx.cache.and_then(|c| c.known_reads(job, record));
    match ctx.opts.verbosity {
        Verbosity::Quiet => {}
        Verbosity::Normal => eprintln_one_write!("  {:<7} {}", "RCC", job.native),
        Verbosity::Commands => eprintln_one_write!("{}", job.command_text),
    }
    let expected = crate::engine::expected_seconds(job, record);
    let (outputs, text, worker, batch) = match remote.run(job, known.as_deref(), expected, &|| {
        pending_signal().is_some()
    }) {
        RemoteOutcome::Fallback(_) => return Built::Fallback,
        RemoteOutcome::Cancelled(what) => {
            if ctx.opts.verbosity != Verbosity::Quiet {
                eprintln_one_write!("  {:<7} {} ({what})", "CANCEL", job.native);
            }
            let sig = pending_signal().unwrap_or(0);
            let (rec, text) = out.fail(format!("interrupted by signal {sig}; {what}"), None);
            return Built::Done(rec, text);
        }
        RemoteOutcome::CompileError { exit_code, output } => {
            let (rec, text) = match pending_signal() {
                Some(sig) => out.fail(format!("interrupted by signal {sig}"), None),
                None => out.fail(
                    format!("the compiler failed on the farm (exit status {exit_code})"),
                    Some(format!("{}\n{output}", job.command_text)),
                ),
            };
            return Built::Done(rec, text);
        }
        RemoteOutcome::Built {
            outputs,
            output,
            worker,
            batch,
        } => (outputs, output, worker, batch),
    };
    let native_bytes = outputs.get(&job.native).filter(|b| !b.is_empty());
    let dwo_bytes = out.dwo.as_ref().map(|d| outputs.get(&*d.to_string_lossy()));
    let put = || -> anyhow::Result<()> {
        use thinlto_index::fsutil::write_atomic;
        let native = native_bytes.ok_or_else(|| {
            anyhow::anyhow!("the farm's result has no (or an empty) {}", job.native)
        })?;
        if let (Some(p), Some(bytes)) = (&out.dwo, dwo_bytes) {
            let bytes =
                bytes.ok_or_else(|| anyhow::anyhow!("the farm's result has no {}", p.display()))?;
            write_atomic(p, bytes)?;
        }
        write_atomic(out.native, native)?;
        // The record keeps the last compile time measured here: the
        // farm's latency (upload, queue, a batch's other jobs) is not the
        // job's length, which orders the jobs and sizes the batches.
        // The compile read its input root and nothing else of the tree:
        // its reads are the root's other files, as this client sent them
        // (only for a job with a record to keep them: a DTLTO job has none).
        let reads = job
            .record_path
            .as_ref()
            .and_then(|_| remote.reads_of_input_root(job, known.as_deref(), batch.as_ref()));
        match reads {
            Some(reads) => {
                let mut rec = record.clone();
                rec.traced = true;
                rec.reads = reads;
                record_job(job, &rec)
            }
            None => record_job(job, record),
        }
    };
    if let Err(e) = put() {
        let (rec, text) = out.fail(format!("{e:#}"), None);
        return Built::Done(rec, text);
    }
    if let (Some(cache), Some(native)) = (ctx.cache, native_bytes) {
        let dwo = dwo_bytes.flatten().map(Vec::as_slice);
        // What the farm had in the input root: the tree's files it reads.
        let extras: Vec<String> = known
            .iter()
            .flatten()
            .filter(|p| !p.starts_with('/'))
            .cloned()
            .collect();
        cache.store_remote(job, record, &extras, native, dwo, &text);
    }
    let (mut rec, _) = out.result(JobStatus::Built, reason.to_string(), None);
    rec.place = Some(Place::Remote);
    rec.worker = Some(worker);
    rec.batch = batch;
    Built::Done(rec, (!text.is_empty()).then_some(text))
}

/// A cache hit's outputs, then its record last (the crash-safety order of
/// a compile: the old record and native were removed before).
fn put_in_place(
    job: &BackendJob,
    record: &NativeRecord,
    hit: &crate::cache::Hit,
    dwo: Option<&Path>,
) -> anyhow::Result<()> {
    use thinlto_index::fsutil::write_atomic;
    match (dwo, &hit.dwo) {
        (Some(p), Some(bytes)) => write_atomic(p, bytes)?,
        (None, None) => {}
        // The key holds the argv, so this is a foreign entry.
        _ => anyhow::bail!("the entry's split-DWARF file does not match the command"),
    }
    write_atomic(Path::new(&job.native), &hit.native)?;
    let mut rec = record.clone();
    rec.seconds = hit.seconds.or(record.seconds);
    // What the compile that made it read, as a local compile's trace
    // would have said (cache::Hit::reads): a touch costs nothing next time.
    if let Some(reads) = &hit.reads {
        rec.traced = true;
        rec.reads = reads.clone();
    }
    record_job(job, &rec)
}

/// Writes the job's record last, if it has one (a DTLTO job has none).
fn record_job(job: &BackendJob, rec: &NativeRecord) -> anyhow::Result<()> {
    let Some(path) = &job.record_path else {
        return Ok(());
    };
    write_record(path, &rec.render(&job.native))
        .map_err(|e| anyhow::anyhow!("{}: cannot write the record: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_status_keeps_the_json_spelling() {
        for (s, text) in [
            (JobStatus::Built, "\"built\""),
            (JobStatus::UpToDate, "\"up-to-date\""),
            (JobStatus::CacheHit, "\"cache-hit\""),
            (JobStatus::Failed, "\"failed\""),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), text);
            assert_eq!(serde_json::from_str::<JobStatus>(text).unwrap(), s);
            assert_eq!(format!("\"{s}\""), text);
        }
        assert!(serde_json::from_str::<JobStatus>("\"done\"").is_err());
    }

    #[test]
    fn split_dwarf_file_follows_the_last_flag() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let n = Path::new("d/foo.thinlto-native.o");
        let dwo = Some(std::path::PathBuf::from("d/foo.thinlto-native.dwo"));
        assert_eq!(split_dwarf_file(&argv(&["cc", "-g"]), n), None);
        assert_eq!(split_dwarf_file(&argv(&["cc", "-gsplit-dwarf"]), n), dwo);
        assert_eq!(
            split_dwarf_file(&argv(&["cc", "-gsplit-dwarf=split"]), n),
            dwo
        );
        assert_eq!(
            split_dwarf_file(&argv(&["cc", "-gsplit-dwarf", "-gsplit-dwarf=single"]), n),
            None
        );
        assert_eq!(
            split_dwarf_file(&argv(&["cc", "-gno-split-dwarf", "-gsplit-dwarf"]), n),
            dwo
        );
    }
}
