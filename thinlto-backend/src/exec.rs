//! Remote execution of backend jobs (`--remote-exec URL`): a job that is
//! neither up to date nor a cache hit runs on a REAPI farm's workers.
//!
//! Each job is one REAPI action: its argv, an input root of the object,
//! its shard, its imports (the modules the shard names,
//! [`crate::job::with_shard_imports`]) and the extra files the backend cache's trace
//! knows it reads (an `.incbin`'d file), the native (and `.dwo`) as
//! outputs, and the platform property `thinlto-compiler=<identity>` (the
//! cache key's compiler identity, [`crate::cache::identity`]) so that only
//! a worker with the same compiler takes it ([`crate::worker`]). The
//! transfer is [`crate::reapi::execute`]: only blobs the server lacks are
//! uploaded (a module imported by hundreds of jobs once), every output is
//! checked against its digest.
//!
//! What decides where a job runs, in order:
//! - a job whose output could differ on another machine's directory runs
//!   here: debug information records the working directory, a compiler
//!   plugin or an external assembler is not in the input root; so does
//!   a job whose trace knows it reads a regular file outside the tree and
//!   the compiler, which a worker would refuse ([`Placer`], which
//!   `--explain` asks too);
//! - a compile error is a compile error (the worker's stderr, as a local
//!   compile would print it), not a retry;
//! - nothing empty is a success: exit 0 with a declared output missing or
//!   empty (clang-19 exits 0 with an empty object when it cannot load an
//!   import), from a worker or from the action cache, is the farm's
//!   fault: the job compiles here, said once with the farm's output;
//! - what the server sends is printed escaped ([`printable`]);
//! - a worker that refused the action as not hermetic (the compile read a
//!   file the input root lacks; `worker/hermetic.rs`) means the trace does
//!   not know that file yet: the job compiles here, traced, so the next
//!   run sends it ([`Outcome::Fallback`]);
//! - the server unreachable, overloaded or losing the operation: retried
//!   with back-off, then every remaining job compiles here, said once.
//!   The build never fails because the farm did;
//! - a signal: every operation in flight is cancelled on the server
//!   (`reapi::execute`), its worker stops the compile, and the job is
//!   compiled nowhere.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

mod batch;
mod lookups;

use crate::config::RemoteExecOptions;
use crate::job::{split_dwarf_file, BackendJob, BatchRef};
use crate::reapi::execute::{ActionRefused, Cancelled, Executed, Executor, RemoteAction};
use crate::reapi::{is_transient, printable, ActionSpec, Digest, InputFile, COMPILER_PROPERTY};
use crate::worker::compilers::Compiler;
use crate::worker::hermetic::NOT_HERMETIC;

/// Remote jobs in flight at once without `--remote-jobs`: a farm serves
/// many more than this machine's cores, and each waiting job costs only a
/// thread blocked on the network. 128, not 64: `auto` batches take up to
/// a third of it (`exec::batch`), and ~40-job batches need room for
/// several in flight (issue 26's measurements).
pub const DEFAULT_REMOTE_JOBS: usize = 128;

/// How long one job may wait on the farm, queue included: a backend
/// compile takes seconds, so a job still not done after this means the
/// farm is not serving (no worker with this compiler, workers gone). The
/// job, and the rest of the run, compile here then.
const FARM_PATIENCE: Duration = Duration::from_secs(300);

/// Tries of one action while the server says it is unavailable or
/// overloaded, with the pause before each retry.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_millis(800),
    Duration::from_secs(2),
];

/// What became of a job sent to the farm.
pub enum Outcome {
    /// It compiled: its outputs (path → bytes, checked) and what the
    /// compiler printed.
    Built {
        outputs: BTreeMap<String, Vec<u8>>,
        output: String,
        worker: String,
        /// The batched action it was part of, if any (`--remote-batch`).
        batch: Option<BatchRef>,
    },
    /// The compiler failed on the worker (its exit code and output).
    CompileError { exit_code: i32, output: String },
    /// Compile it here instead, for this reason.
    Fallback(String),
    /// Given up on a signal, its operation cancelled on the server (or
    /// why not): compiled nowhere.
    Cancelled(String),
}

/// Counts of one run, for the summary.
#[derive(Debug, Clone, Default)]
pub struct ExecSummary {
    pub built: u64,
    pub fallbacks: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The REAPI calls of the run, by kind (`reapi::calls`).
    pub calls: Vec<(&'static str, u64)>,
    /// Batched jobs not looked up in the action cache first (a cold
    /// farm: `exec::lookups`).
    pub lookups_skipped: u64,
}

/// Where a job that compiles goes, as far as this machine can tell
/// without asking the farm: `--explain` predicts with it, and a run
/// decides with it before sending a job.
pub struct Placer {
    /// The compiler whose installation a worker's compile may read (the
    /// hermetic rule of `worker/hermetic.rs`), or why nothing can go to
    /// the farm.
    compiler: std::result::Result<Compiler, String>,
    /// The SHA-256 of each input file, taken once a run: a module is the
    /// input of every job that imports it, and each job's action is
    /// built twice (placed, then sent).
    digests: Mutex<HashMap<String, Digest>>,
}

impl Placer {
    /// For jobs compiled by `cc_argv` (the words of `$(CC)`). A compiler
    /// behind a launcher (`ccache clang-19`) cannot run remotely: a
    /// worker runs a compiler it has, by name.
    pub fn new(cc_argv: &[String]) -> Placer {
        let compiler = if cc_argv.len() != 1 {
            Err(format!(
                "remote execution needs a compiler without a launcher (CC is {:?})",
                cc_argv.join(" ")
            ))
        } else {
            Compiler::new(&cc_argv[0]).map_err(|e| format!("{e:#}"))
        };
        Placer {
            compiler,
            digests: Mutex::new(HashMap::new()),
        }
    }

    /// The SHA-256 of the tree's file `p`, taken once a run.
    fn digest(&self, p: &str) -> Result<Digest> {
        if let Some(d) = self.digests.lock().unwrap().get(p) {
            return Ok(d.clone());
        }
        let d = Digest::of_file(Path::new(p))?;
        self.digests
            .lock()
            .unwrap()
            .insert(p.to_string(), d.clone());
        Ok(d)
    }

    /// The job's action ([`action`]), its inputs digested once a run.
    fn action(&self, job: &BackendJob, extras: &[String]) -> Result<ActionSpec> {
        action(job, extras, &|p| self.digest(p))
    }

    /// Why `job` must compile here, if it must: the compiler cannot run
    /// remotely; its output may differ in another directory
    /// ([`stays_local`]); `reads` (what its trace knows it reads beyond
    /// its inputs, None when no trace is known) has a file outside the
    /// tree and the compiler, which a worker refuses as not hermetic;
    /// an input is not a file of the tree.
    pub fn local_reason(&self, job: &BackendJob, reads: Option<&[String]>) -> Option<String> {
        let compiler = match &self.compiler {
            Ok(c) => c,
            Err(why) => return Some(why.clone()),
        };
        if let Some(why) = stays_local(&job.argv) {
            return Some(why.to_string());
        }
        let reads = reads.unwrap_or_default();
        if let Some(file) = crate::worker::hermetic::outside(reads, compiler) {
            return Some(format!(
                "its compile reads {file}, outside the tree and the compiler (a worker refuses that: not hermetic)"
            ));
        }
        match self.action(job, &in_tree(reads)).and_then(|s| s.key()) {
            Ok(_) => None,
            Err(e) => Some(format!("{e:#}")),
        }
    }
}

/// The tree's files among `reads` (relative paths): what an input root
/// carries.
fn in_tree(reads: &[String]) -> Vec<String> {
    reads
        .iter()
        .filter(|p| !p.starts_with('/'))
        .cloned()
        .collect()
}

/// A connected remote executor.
pub struct RemoteExec {
    executor: Executor,
    placer: Placer,
    url: String,
    /// The platform property every action carries.
    compiler: (String, String),
    /// Set after the farm failed: the rest of the run compiles here.
    off: AtomicBool,
    /// Jobs on the farm at once (`--remote-jobs`).
    jobs: usize,
    /// The reasons for compiling here already said (each once a run).
    said: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// The kinds of per-action refusal already said (each once a run).
    said_refused: std::sync::Mutex<std::collections::HashSet<tonic::Code>>,
    /// A result without its outputs was said (once a run).
    said_empty: AtomicBool,
    built: AtomicU64,
    fallbacks: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Packs jobs into batched actions; None with `--remote-batch 1`.
    batcher: Option<batch::Batcher>,
    /// Which batched jobs are looked up in the action cache first.
    lookups: lookups::Lookups,
    /// The SHA-256 and blake3 of the files whose reads the records keep
    /// (a batch's root is every batched job's), each read once a run.
    read_digests: Mutex<HashMap<String, Option<(Digest, String)>>>,
}

impl RemoteExec {
    /// Connects to the farm for jobs compiled by `cc_argv` (the words of
    /// `$(CC)`). A compiler behind a launcher (`ccache clang-19`) cannot
    /// run remotely: a worker runs a compiler it has, by name.
    pub fn connect(opts: &RemoteExecOptions, cc_argv: &[String]) -> Result<RemoteExec> {
        let RemoteExecOptions {
            remote: ref opts,
            jobs,
            batch,
            queued_notice,
        } = *opts;
        let placer = Placer::new(cc_argv);
        if let Err(why) = &placer.compiler {
            bail!("{why}");
        }
        let (identity, _) = crate::cache::identity::program_identity(cc_argv)
            .context("the compiler's identity (the workers match it)")?;
        let executor = Executor::connect(opts)?.with_queued_notice(queued_notice);
        Ok(RemoteExec {
            executor,
            placer,
            url: opts.url.clone(),
            compiler: (COMPILER_PROPERTY.to_string(), identity),
            off: AtomicBool::new(false),
            jobs: jobs.max(1),
            said: Default::default(),
            said_refused: Default::default(),
            said_empty: AtomicBool::new(false),
            built: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            batcher: batch::Batcher::new(batch, jobs.max(1)),
            lookups: lookups::Lookups::default(),
            read_digests: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the farm is still used (it failed earlier in the run).
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Jobs on the farm at once.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    pub fn summary(&self) -> ExecSummary {
        ExecSummary {
            built: self.built.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            calls: crate::reapi::calls::made(),
            lookups_skipped: self.lookups.skipped(),
        }
    }

    fn fallback(&self, why: String) -> Outcome {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        Outcome::Fallback(why)
    }

    /// Runs `job` on the farm, with `reads` (the files beyond its inputs
    /// the cache's trace knows the compile reads; None when no trace of
    /// this job is known): the tree's in its input root; one outside the
    /// tree and the compiler keeps the job here ([`Placer`]). `cancelled` is polled while the
    /// job waits on the farm: a signal drops the operation's stream,
    /// cancels the operation on the server (its worker stops the compile)
    /// and the job is compiled nowhere.
    ///
    /// A compile that fails on the farm while its trace is unknown may
    /// have failed for a file its input root lacked (an `.incbin`'d file
    /// the compiler could not find reads nothing, so the worker cannot
    /// tell): it compiles here, where the error, if it is one, is the
    /// compiler's own and the trace learns what it reads.
    ///
    /// `expected` is the job's expected compile time in seconds
    /// ([`crate::engine::expected_seconds`]): with `--remote-batch` it
    /// decides whether and with whom the job shares an action.
    pub fn run(
        &self,
        job: &BackendJob,
        reads: Option<&[String]>,
        expected: f64,
        cancelled: &dyn Fn() -> bool,
    ) -> Outcome {
        let traced = reads.is_some();
        if let Some(why) = stays_local(&job.argv) {
            if self.said.lock().unwrap().insert(why) {
                eprintln_one_write!(
                    "thinlto-backend: remote execution: {why}: such jobs compile here"
                );
            }
            return self.fallback(why.to_string());
        }
        if let Some(why) = self.placer.local_reason(job, reads) {
            return self.fallback(why);
        }
        if self.is_off() {
            return self.fallback("the farm failed earlier in this run".into());
        }
        let extras = in_tree(reads.unwrap_or_default());
        let spec = match self.placer.action(job, &extras) {
            Ok(s) => s,
            Err(e) => return self.fallback(format!("{e:#}")),
        };
        let key = match spec.key() {
            Ok(k) => k,
            Err(e) => return self.fallback(format!("{e:#}")),
        };
        let outputs = spec.output_paths.clone();
        let (executed, batch) = match self.batcher.as_ref().filter(|b| b.takes(expected)) {
            Some(b) => match b.run(
                self,
                batch::Member::new(job, spec, key, expected),
                cancelled,
            ) {
                Ok(x) => x,
                Err(outcome) => return outcome,
            },
            None => match self.execute(&key, &job.native, cancelled) {
                Ok(x) => {
                    // The server looked it up: as telling as a lookup.
                    self.lookups.found(x.cached);
                    (x, None)
                }
                Err(outcome) => return outcome,
            },
        };
        self.interpret(job, traced, &outputs, executed, batch)
    }

    /// What the compile of `job` that [`RemoteExec::run`] sent with
    /// `reads` (in the batched action `batch`, if it shared one) read
    /// beyond its inputs, for the job's record (path → blake3, as
    /// [`crate::engine::reads`] records a local compile's): the other
    /// files of the input root this client built — the job's own root's
    /// extra files, or for a batch the union of its jobs' roots (a worker
    /// other than ours runs every compile there) — each read again and
    /// checked against the digest it was sent with (taken once a run, as
    /// the placer takes them). A compile on the farm reads its input root
    /// and no other file of the tree (ours refuses one that does,
    /// `worker/hermetic.rs`; another cannot see the tree), so nothing the
    /// server says is needed. None when a file changed since.
    pub fn reads_of_input_root(
        &self,
        job: &BackendJob,
        reads: Option<&[String]>,
        batch: Option<&BatchRef>,
    ) -> Option<BTreeMap<String, String>> {
        let root: Vec<(String, Digest)> = match batch {
            Some(b) => self.batcher.as_ref()?.root_of(&b.action)?.to_vec(),
            None => self
                .placer
                .action(job, &in_tree(reads.unwrap_or_default()))
                .ok()?
                .inputs
                .into_iter()
                .map(|f| (f.path, f.digest))
                .collect(),
        };
        let content = job.content_inputs();
        let others: Vec<(String, Digest)> = root
            .into_iter()
            .filter(|(p, _)| !content.contains(&p.as_str()))
            .collect();
        crate::reapi::blake3_as_sent(&others, |p| {
            if let Some(d) = self.read_digests.lock().unwrap().get(p) {
                return d.clone();
            }
            let d = Digest::of_file_with_blake3(Path::new(p)).ok();
            self.read_digests
                .lock()
                .unwrap()
                .insert(p.to_string(), d.clone());
            d
        })
    }

    /// The action of `key` as the farm runs it: with the platform
    /// property every action carries, its inputs read from the tree.
    fn remote_action<'a>(&self, key: &'a crate::reapi::ActionKey) -> RemoteAction<'a> {
        RemoteAction {
            key,
            platform: vec![self.compiler.clone()],
            local_root: Path::new("."),
        }
    }

    /// Executes the action of `key` (`what` names it in messages), with
    /// retries while the farm is unavailable; the outcome to return
    /// instead when it cannot (the farm failed, a signal).
    fn execute(
        &self,
        key: &crate::reapi::ActionKey,
        what: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> std::result::Result<Executed, Outcome> {
        let action = self.remote_action(key);
        let mut tries = BACKOFF.iter();
        let started = std::time::Instant::now();
        let late = || started.elapsed() > FARM_PATIENCE;
        loop {
            match self
                .executor
                .execute_until(&action, &|| cancelled() || late())
            {
                Ok(x) => return Ok(x),
                Err(_) if late() && !cancelled() => {
                    return Err(self.give_up(&anyhow::anyhow!(
                        "{what} not done after {} s on the farm (no worker serving it?)",
                        FARM_PATIENCE.as_secs()
                    )))
                }
                Err(e) if cancelled() => {
                    return Err(Outcome::Cancelled(match e.downcast_ref::<Cancelled>() {
                        Some(c) => c.to_string(),
                        None => format!("{e:#}"),
                    }))
                }
                // One action's own trouble (refused by the worker's
                // policy, past its deadline, an output-less success the
                // worker would not call one): this job compiles here,
                // said once per kind; the farm serves the others.
                Err(e) if e.downcast_ref::<ActionRefused>().is_some() => {
                    let r = e.downcast_ref::<ActionRefused>().unwrap();
                    if self.said_refused.lock().unwrap().insert(r.code) {
                        eprintln_one_write!(
                            "thinlto-backend: remote execution: {what}: the farm answered {r}; compiling it here (said once for {:?})",
                            r.code
                        );
                    }
                    return Err(self.fallback(format!("the farm answered {r}")));
                }
                Err(e) if is_transient(&e) => match tries.next() {
                    Some(pause) => std::thread::sleep(*pause),
                    None => return Err(self.give_up(&e)),
                },
                Err(e) => return Err(self.give_up(&e)),
            }
        }
    }

    /// What a job's execution (alone or in a batch) means: built, a
    /// compile error, or compile it here.
    fn interpret(
        &self,
        job: &BackendJob,
        traced: bool,
        outputs: &[String],
        executed: Executed,
        batch: Option<BatchRef>,
    ) -> Outcome {
        self.bytes_up
            .fetch_add(executed.uploaded, Ordering::Relaxed);
        let down: usize = executed.outputs.values().map(Vec::len).sum::<usize>()
            + executed.stdout.len()
            + executed.stderr.len();
        self.bytes_down.fetch_add(down as u64, Ordering::Relaxed);
        // What the server sent is printed escaped (`reapi::printable`).
        let mut output = String::from_utf8_lossy(&executed.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&executed.stderr));
        let output = printable(&output).into_owned();
        let worker = printable(&executed.worker).into_owned();
        if executed.exit_code != 0 {
            if let Some(why) = output.lines().find_map(|l| {
                l.find(NOT_HERMETIC)
                    .map(|at| l[at + NOT_HERMETIC.len()..].to_string())
            }) {
                eprintln_one_write!(
                    "thinlto-backend: remote execution: {}: {why}; compiling it here (its trace then knows the file)",
                    job.native
                );
                return self.fallback(format!("not hermetic on {worker}: {why}"));
            }
            if !traced {
                return self.fallback(format!(
                    "failed on {worker} before any trace of it was known"
                ));
            }
            return Outcome::CompileError {
                exit_code: executed.exit_code,
                output,
            };
        }
        // Nothing empty is a success: exit 0 without every output, or
        // with an empty one (clang-19 exits 0 with an empty object when
        // it cannot load an imported module), is the farm's fault, not
        // the job's. It compiles here; said once a run.
        if let Some(missing) = outputs
            .iter()
            .find(|p| executed.outputs.get(*p).is_none_or(Vec::is_empty))
        {
            let whence = if executed.cached {
                "from the farm's action cache"
            } else {
                "from the farm"
            };
            if !self.said_empty.swap(true, Ordering::Relaxed) {
                let said = output.trim_end();
                eprintln_one_write!(
                    "thinlto-backend: remote execution: {}: the result {whence} (worker {worker:?}) has exit status 0 but no (or an empty) {}: a farm fault; such jobs compile here{}",
                    job.native,
                    printable(missing),
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(". The compiler's output on the farm:\n{said}")
                    }
                );
            }
            return self.fallback(format!(
                "the result {whence} (worker {worker:?}) has no (or an empty) {}",
                printable(missing)
            ));
        }
        self.built.fetch_add(1, Ordering::Relaxed);
        Outcome::Built {
            outputs: executed.outputs,
            output,
            worker,
            batch,
        }
    }

    /// The farm failed past its retries: said once, and the rest of the
    /// run compiles here.
    fn give_up(&self, e: &anyhow::Error) -> Outcome {
        if !self.off.swap(true, Ordering::Relaxed) {
            eprintln_one_write!(
                "thinlto-backend: remote execution {}: {e:#}; compiling here for the rest of this run",
                self.url
            );
        }
        self.fallback("the farm failed".into())
    }
}

/// Why a command must compile here, if it must: its output may record
/// the working directory (debug information; a worker compiles in its own
/// directory), or it reads what no input root holds (a compiler plugin,
/// an external assembler found on PATH).
pub fn stays_local(argv: &[String]) -> Option<&'static str> {
    if crate::cache::records_cwd(argv) {
        Some("debug information records the working directory")
    } else if crate::cache::plugins(argv).next().is_some() {
        Some("a compiler plugin")
    } else if crate::cache::external_assembler(argv) {
        Some("an external assembler")
    } else {
        None
    }
}

/// The job's action: its argv in the tree's root, its content inputs and
/// `extras` as the input root, its native (and .dwo) as outputs. Every
/// path must be inside the tree (relative, no `..`).
fn action(
    job: &BackendJob,
    extras: &[String],
    digest_of: &dyn Fn(&str) -> Result<Digest>,
) -> Result<ActionSpec> {
    let mut inputs: Vec<InputFile> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in job
        .content_inputs()
        .into_iter()
        .chain(extras.iter().map(String::as_str))
    {
        if !seen.insert(p) {
            continue;
        }
        let path = tree_path(p)?;
        let digest =
            digest_of(p).with_context(|| format!("{p}: cannot read (input of {})", job.native))?;
        inputs.push(InputFile {
            path,
            digest,
            executable: false,
        });
    }
    let mut outputs = vec![tree_path(&job.native)?];
    if let Some(d) = split_dwarf_file(&job.argv, Path::new(&job.native)) {
        outputs.push(tree_path(&d.to_string_lossy())?);
    }
    Ok(ActionSpec {
        argv: job.argv.clone(),
        env: Vec::new(),
        output_paths: outputs,
        inputs,
        salt: b"thinlto-dist remote compile 1\0".to_vec(),
    })
}

/// `p` as a path inside the tree, or an error saying why it is not.
fn tree_path(p: &str) -> Result<String> {
    let plain = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !plain {
        bail!("{p}: not a path inside the tree (remote execution sends the tree's files only)");
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn what_stays_local() {
        assert_eq!(stays_local(&argv(&["clang", "-O2", "-c"])), None);
        assert!(stays_local(&argv(&["clang", "-g", "-c"])).is_some());
        assert!(stays_local(&argv(&["clang", "-g0", "-c"])).is_none());
        assert!(stays_local(&argv(&["clang", "-fpass-plugin=x.so"])).is_some());
        assert!(stays_local(&argv(&["clang", "-fno-integrated-as"])).is_some());
    }

    #[test]
    fn only_tree_paths_are_sent() {
        assert!(tree_path("kernel/a.o").is_ok());
        for bad in ["/etc/passwd", "../a.o", "a/../b", "./a", "a//b", ""] {
            assert!(tree_path(bad).is_err(), "{bad}");
        }
    }
}
