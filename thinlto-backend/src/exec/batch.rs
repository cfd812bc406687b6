//! Batched actions (`--remote-batch auto|N`): several jobs' compiles in
//! one REAPI action, so that the farm's server, whose price is per
//! operation (BuildGrid: ~50 ms of CPU an action whatever its size), pays
//! it once for several jobs. The action's format is
//! [`crate::reapi::batch`]; everything else stays per job:
//!
//! - each job is first looked up in the server's action cache under its
//!   own action (the one it would be executed as alone): a run that
//!   batches differently, or not at all, hits; on a cold farm only a
//!   probe now and then ([`super::lookups`]);
//! - the jobs still to run go in one action: the union of their input
//!   roots, their own outputs and each one's status/stdout/stderr files;
//!   a batch of one is the job's own action;
//! - each job's result is its own: a compile error fails that job only,
//!   a not-hermetic refusal or a missing output sends that job only to
//!   a local compile (`RemoteExec::interpret`, as for a lone job);
//! - each job that succeeded is recorded in the server's action cache
//!   under its own action (one `UpdateActionResult` a job, when the
//!   server allows it; its blobs are in the CAS already), and by the
//!   caller in the local cache, so the cache keeps one entry per job.
//!
//! How jobs meet: the scheduler gives each remote job a thread, which
//! calls [`Batcher::run`]. The first job of a batch leads it: it waits
//! [`LINGER`] for more jobs (the scheduler starts them in bursts: at the
//! start, and as each finished batch frees its slots), longer while the
//! farm has one of our executions queued, or until the batch is full,
//! then executes it and hands each job its result.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;

use super::{Outcome, RemoteExec};
use crate::config::BatchSize;
use crate::job::{BackendJob, BatchRef};
use crate::limits::MAX_BATCH_JOBS;
use crate::reapi::batch as format;
use crate::reapi::execute::Executed;
use crate::reapi::{ActionKey, ActionSpec, Digest, InputFile};

/// `auto`: the compile time an action aims at, in expected seconds of
/// this machine. BuildGrid 0.4.4 spends ~105 ms of CPU an action
/// whatever its size, plus ~4.4 ms a job (its own action-cache entry and
/// files): fitted on Linux's 914 jobs at 12.7 and 24.7 jobs an action
/// (BENCHMARKS.md, remote execution). 5 s (~26 jobs an action on Linux,
/// with `DEFAULT_REMOTE_JOBS` 128 and `MAX_BATCH_JOBS` 64) brought the
/// server to 7.4 ms a job and the farm run to 1.11× the local backend on
/// the same two cores; 2.5 s with at most 21 jobs an action left 12.7
/// jobs an action, 12.6 ms and 1.27×. A job expected to take this long
/// or longer goes alone: the longest jobs bound the run's critical path
/// and must start at once, on their own.
const AUTO_TARGET_SECONDS: f64 = 5.0;

/// `auto`: a batch takes at most this share of the jobs in flight
/// (`--remote-jobs`), so that several batches keep several workers busy.
const AUTO_SHARE_OF_IN_FLIGHT: usize = 3;

/// How long the first job of a batch waits for another after the last
/// that joined: jobs reach the batcher staggered by their inputs'
/// digests, which many threads compute at once. Past it, the batch goes
/// unless the farm still has one of our executions queued (then it
/// waits on, for the jobs the next finished action frees: without that,
/// a batch only ever got as many jobs as the action before it had
/// freed, and batches stayed as small as the lone jobs at the start,
/// ~2 jobs an action on the first 300 of Linux).
const LINGER: Duration = Duration::from_millis(100);

/// The longest a batch that is not full waits for jobs: one batch's time
/// (`AUTO_TARGET_SECONDS`), after which a queued execution has surely
/// started, whatever the server says.
const MAX_LINGER: Duration = Duration::from_millis(5000);

/// One job as a batch carries it.
pub(super) struct Member {
    native: String,
    spec: ActionSpec,
    /// The job's own action (the action-cache entry it is looked up and
    /// recorded under).
    key: ActionKey,
    expected: f64,
}

impl Member {
    pub(super) fn new(job: &BackendJob, spec: ActionSpec, key: ActionKey, expected: f64) -> Member {
        Member {
            native: job.native.clone(),
            spec,
            key,
            expected,
        }
    }
}

/// What a job gets back from its batch: its own execution (and the batch
/// it was in, if it shared one), or the outcome to return instead.
type JobResult = std::result::Result<(Executed, Option<BatchRef>), Outcome>;

/// Packs concurrent jobs into batches.
pub(super) struct Batcher {
    max_jobs: usize,
    /// `auto`'s target of expected seconds an action; None: by count only.
    target: Option<f64>,
    forming: Mutex<Option<Arc<Batch>>>,
    /// Set when the server refused an action-cache update: said once,
    /// not tried again.
    remember_off: AtomicBool,
    /// The input root of each batched action this run executed (by its
    /// action's hash, as [`BatchRef::action`] names it): the union of its
    /// jobs' roots, every file a job of it may have read
    /// ([`RemoteExec::reads_of_input_root`]).
    roots: Mutex<HashMap<String, Arc<InputRoot>>>,
}

/// An action's input files: path and digest.
pub(super) type InputRoot = Vec<(String, Digest)>;

struct Batch {
    state: Mutex<State>,
    cv: Condvar,
    born: Instant,
}

struct State {
    members: Vec<Member>,
    /// When the last member joined.
    last_join: Instant,
    seconds: f64,
    closed: bool,
    /// One per member, taken by its job's thread.
    results: Vec<Option<JobResult>>,
    done: bool,
}

impl Batcher {
    /// None when every job is its own action (`--remote-batch 1`, or
    /// `auto` with so few jobs in flight that batches would starve the
    /// farm).
    pub(super) fn new(size: BatchSize, remote_jobs: usize) -> Option<Batcher> {
        let (max_jobs, target) = match size {
            BatchSize::Fixed(n) => (n.min(MAX_BATCH_JOBS), None),
            BatchSize::Auto => (
                (remote_jobs / AUTO_SHARE_OF_IN_FLIGHT).min(MAX_BATCH_JOBS),
                Some(AUTO_TARGET_SECONDS),
            ),
        };
        (max_jobs >= 2).then(|| Batcher {
            max_jobs,
            target,
            forming: Mutex::new(None),
            remember_off: AtomicBool::new(false),
            roots: Mutex::new(HashMap::new()),
        })
    }

    /// The input root of the batched action `action` executed this run.
    pub(super) fn root_of(&self, action: &str) -> Option<Arc<InputRoot>> {
        self.roots.lock().unwrap().get(action).cloned()
    }

    /// Whether a job expected to take `expected` seconds is batched.
    pub(super) fn takes(&self, expected: f64) -> bool {
        self.target.is_none_or(|t| expected < t)
    }

    /// Runs `member`'s job in a batch with whichever jobs come along.
    pub(super) fn run(
        &self,
        exec: &RemoteExec,
        member: Member,
        cancelled: &dyn Fn() -> bool,
    ) -> JobResult {
        let (batch, k, leader) = self.join(member);
        if leader {
            {
                let mut st = batch.state.lock().unwrap();
                while !st.closed {
                    let cap = MAX_LINGER.saturating_sub(batch.born.elapsed());
                    if cap.is_zero() {
                        break;
                    }
                    let mut idle = LINGER.saturating_sub(st.last_join.elapsed());
                    if idle.is_zero() {
                        // No job came for a while. While the farm holds
                        // one of our executions it has not started, its
                        // workers have work: waiting for more jobs costs
                        // them nothing, and a fuller batch costs the
                        // server less a job. Otherwise it goes now.
                        if exec.executor.waiting() == 0 {
                            break;
                        }
                        idle = LINGER;
                    }
                    st = batch.cv.wait_timeout(st, idle.min(cap)).unwrap().0;
                }
            }
            self.close(&batch);
            let members = std::mem::take(&mut batch.state.lock().unwrap().members);
            let (results, writes) = self.execute(exec, &members, cancelled);
            let mine = {
                let mut st = batch.state.lock().unwrap();
                st.results = results.into_iter().map(Some).collect();
                st.done = true;
                batch.cv.notify_all();
                st.results[k].take()
            };
            // After the others have their results: nobody waits on this.
            self.remember(exec, &members, writes);
            return mine.expect("the leader's own result");
        }
        let mut st = batch.state.lock().unwrap();
        while !st.done {
            st = batch.cv.wait(st).unwrap();
        }
        st.results[k].take().expect("each result is taken once")
    }

    /// Adds `member` to the batch being formed, or starts one: the batch,
    /// the member's place in it and whether it leads it.
    fn join(&self, member: Member) -> (Arc<Batch>, usize, bool) {
        let mut forming = self.forming.lock().unwrap();
        if let Some(b) = forming.clone() {
            let mut st = b.state.lock().unwrap();
            if !st.closed {
                st.seconds += member.expected;
                st.members.push(member);
                st.last_join = Instant::now();
                let k = st.members.len() - 1;
                if self.full(&st) {
                    st.closed = true;
                    *forming = None;
                    b.cv.notify_all();
                }
                drop(st);
                return (b, k, false);
            }
        }
        let b = Arc::new(Batch {
            state: Mutex::new(State {
                seconds: member.expected,
                members: vec![member],
                last_join: Instant::now(),
                closed: false,
                results: Vec::new(),
                done: false,
            }),
            cv: Condvar::new(),
            born: Instant::now(),
        });
        *forming = Some(b.clone());
        (b, 0, true)
    }

    fn full(&self, st: &State) -> bool {
        st.members.len() >= self.max_jobs || self.target.is_some_and(|t| st.seconds >= t)
    }

    /// No more jobs join `batch`.
    fn close(&self, batch: &Arc<Batch>) {
        let mut forming = self.forming.lock().unwrap();
        if forming.as_ref().is_some_and(|f| Arc::ptr_eq(f, batch)) {
            *forming = None;
        }
        batch.state.lock().unwrap().closed = true;
    }

    /// Each member's result, and the action-cache entries to write (the
    /// member's index and its result) for the jobs the batch built.
    fn execute(
        &self,
        exec: &RemoteExec,
        members: &[Member],
        cancelled: &dyn Fn() -> bool,
    ) -> (Vec<JobResult>, Vec<(usize, re::ActionResult)>) {
        let mut results: Vec<Option<JobResult>> = members.iter().map(|_| None).collect();
        // Each job under its own action first: a run that batched
        // differently may have built it. A failed lookup is a miss.
        // On a cold farm, only a probe now and then (`exec::lookups`).
        let mut to_run = Vec::new();
        for (k, m) in members.iter().enumerate() {
            if !exec.lookups.wanted() {
                to_run.push(k);
                continue;
            }
            match exec.executor.cached(&exec.remote_action(&m.key)) {
                Ok(Some(hit)) => {
                    exec.lookups.found(true);
                    results[k] = Some(Ok((hit, None)));
                }
                _ => {
                    exec.lookups.found(false);
                    to_run.push(k);
                }
            }
        }
        let mut writes = Vec::new();
        match to_run[..] {
            [] => {}
            // Alone, a job is its own action.
            [k] => {
                let m = &members[k];
                results[k] = Some(
                    exec.execute(&m.key, &m.native, cancelled)
                        .map(|x| (x, None)),
                );
            }
            _ => {
                let batch: Vec<&Member> = to_run.iter().map(|k| &members[*k]).collect();
                let got = self.execute_batch(exec, &batch, cancelled);
                for (i, (r, w)) in to_run.iter().zip(got) {
                    if let Some(w) = w {
                        writes.push((*i, w));
                    }
                    results[*i] = Some(r);
                }
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.expect("every member has a result"))
            .collect();
        (results, writes)
    }

    /// One action for `batch` (two jobs or more): each job's result, and
    /// the action-cache entry of each job it built.
    fn execute_batch(
        &self,
        exec: &RemoteExec,
        batch: &[&Member],
        cancelled: &dyn Fn() -> bool,
    ) -> Vec<(JobResult, Option<re::ActionResult>)> {
        let n = batch.len();
        let what = format!("a batch of {n} jobs ({} …)", batch[0].native);
        let key = match batch_spec(batch).and_then(|s| s.key()) {
            Ok(k) => k,
            Err(e) => {
                let why = format!("{e:#}");
                return batch
                    .iter()
                    .map(|_| (Err(exec.fallback(why.clone())), None))
                    .collect();
            }
        };
        let x = match exec.execute(&key, &what, cancelled) {
            Ok(x) => x,
            Err(first) => {
                // The same outcome for every job of the batch.
                let (why, cancel) = match &first {
                    Outcome::Cancelled(w) => (w.clone(), true),
                    Outcome::Fallback(w) => (w.clone(), false),
                    _ => unreachable!("execute gives up with a fallback or a cancel"),
                };
                let mut out = vec![(Err(first), None)];
                for _ in 1..n {
                    let o = if cancel {
                        Outcome::Cancelled(why.clone())
                    } else {
                        exec.fallback(why.clone())
                    };
                    out.push((Err(o), None));
                }
                return out;
            }
        };
        if x.exit_code != 0 {
            // Not a job's failure: the batch itself (a worker that refused
            // it, a shell that found it malformed). Each job compiles here.
            let said = String::from_utf8_lossy(&x.stderr);
            let why = format!(
                "the batch failed on {} (exit status {}): {}",
                x.worker,
                x.exit_code,
                said.lines().next().unwrap_or("")
            );
            eprintln_one_write!(
                "thinlto-backend: remote execution: {why}; its {n} jobs compile here"
            );
            return batch
                .iter()
                .map(|_| (Err(exec.fallback(why.clone())), None))
                .collect();
        }
        let action = x.action.hash.clone();
        // A worker other than ours runs every compile of the batch in
        // this root: each may have read any of its files.
        let root: BTreeMap<&str, &Digest> = batch
            .iter()
            .flat_map(|m| &m.spec.inputs)
            .map(|f| (f.path.as_str(), &f.digest))
            .collect();
        let root = root
            .into_iter()
            .map(|(p, d)| (p.to_string(), d.clone()))
            .collect();
        self.roots
            .lock()
            .unwrap()
            .insert(action.clone(), Arc::new(root));
        batch
            .iter()
            .enumerate()
            .map(|(k, m)| match job_result(&x, k, m) {
                Ok((executed, write)) => {
                    let at = BatchRef {
                        action: action.clone(),
                        job: k,
                        jobs: n,
                    };
                    let mut executed = executed;
                    // The upload is the batch's: counted once.
                    executed.uploaded = if k == 0 { x.uploaded } else { 0 };
                    (Ok((executed, Some(at))), write)
                }
                Err(why) => {
                    eprintln_one_write!(
                        "thinlto-backend: remote execution: {}: {why}; compiling it here",
                        m.native
                    );
                    (Err(exec.fallback(why)), None)
                }
            })
            .collect()
    }

    /// Records each built job under its own action in the server's action
    /// cache, when the server allows it; a refusal is said once and ends
    /// the writes of this run.
    fn remember(
        &self,
        exec: &RemoteExec,
        members: &[Member],
        writes: Vec<(usize, re::ActionResult)>,
    ) {
        if !exec.executor.may_remember() {
            return;
        }
        for (k, result) in writes {
            if self.remember_off.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = exec
                .executor
                .remember(&exec.remote_action(&members[k].key), result)
            {
                if !self.remember_off.swap(true, Ordering::Relaxed) {
                    eprintln_one_write!(
                        "thinlto-backend: remote execution: recording {} in the action cache: {e:#}; batched jobs are not recorded there for the rest of this run",
                        members[k].native
                    );
                }
            }
        }
    }
}

/// The batch's action: the jobs' argvs and own inputs in
/// [`format::build`]'s command, the union of their inputs (a path twice
/// must be one file), their outputs and each job's result files.
fn batch_spec(batch: &[&Member]) -> anyhow::Result<ActionSpec> {
    let mut inputs: std::collections::BTreeMap<&str, &InputFile> = Default::default();
    let mut outputs = Vec::new();
    let mut argvs = Vec::new();
    for (k, m) in batch.iter().enumerate() {
        for f in &m.spec.inputs {
            match inputs.get(f.path.as_str()) {
                Some(g) if g.digest != f.digest || g.executable != f.executable => {
                    anyhow::bail!("{}: two contents for one input of a batch", f.path)
                }
                Some(_) => {}
                None => {
                    inputs.insert(&f.path, f);
                }
            }
        }
        outputs.extend(m.spec.output_paths.iter().cloned());
        outputs.extend(format::result_paths(k));
        argvs.push(format::BatchJob {
            argv: m.spec.argv.clone(),
            inputs: m.spec.inputs.iter().map(|f| f.path.clone()).collect(),
        });
    }
    Ok(ActionSpec {
        argv: format::build(&argvs),
        env: Vec::new(),
        output_paths: outputs,
        inputs: inputs
            .into_values()
            .map(|f| InputFile {
                path: f.path.clone(),
                digest: f.digest.clone(),
                executable: f.executable,
            })
            .collect(),
        salt: batch[0].spec.salt.clone(),
    })
}

/// Job `k`'s own result out of the batch's `x`: its exit status, streams
/// and outputs; the action-cache entry of its own action when it built
/// (exit 0 and every output there). An error (compile it here) for a
/// status file missing or malformed, or a build without its outputs.
fn job_result(
    x: &Executed,
    k: usize,
    m: &Member,
) -> std::result::Result<(Executed, Option<re::ActionResult>), String> {
    let file = |p: String| {
        x.outputs
            .get(&p)
            .ok_or_else(|| format!("the batch's result has no {p}"))
    };
    let code = format::parse_status(file(format::status_path(k))?)
        .map_err(|e| format!("{}: {e:#}", format::status_path(k)))?;
    let stdout = file(format::stdout_path(k))?.clone();
    let stderr = file(format::stderr_path(k))?.clone();
    let mut outputs = std::collections::BTreeMap::new();
    for p in &m.spec.output_paths {
        if let Some(b) = x.outputs.get(p) {
            outputs.insert(p.clone(), b.clone());
        }
    }
    let mut write = None;
    if code == 0 {
        let complete = m.spec.output_paths.iter().all(|p| outputs.contains_key(p))
            && outputs.get(&m.native).is_some_and(|b| !b.is_empty());
        if !complete {
            return Err("it compiled on the farm, but the batch's result lacks its outputs".into());
        }
        let digest = |b: &[u8]| (!b.is_empty()).then(|| Digest::of_bytes(b).to_proto());
        write = Some(re::ActionResult {
            output_files: outputs
                .iter()
                .map(|(p, b)| re::OutputFile {
                    path: p.clone(),
                    digest: Some(Digest::of_bytes(b).to_proto()),
                    ..Default::default()
                })
                .collect(),
            exit_code: 0,
            stdout_digest: digest(&stdout),
            stderr_digest: digest(&stderr),
            execution_metadata: Some(re::ExecutedActionMetadata {
                worker: x.worker.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Ok((
        Executed {
            exit_code: code,
            outputs,
            stdout,
            stderr,
            cached: x.cached,
            worker: x.worker.clone(),
            action: x.action.clone(),
            uploaded: 0,
        },
        write,
    ))
}
