//! A batched action on this worker (`crate::reapi::batch`): recognized
//! by its exact script, its jobs parsed strictly, and each job run as a
//! single compile ([`super::exec::compile_one`]: the warm compiler, the
//! tracing shim, the hermetic check), in parallel within the worker's
//! compile slots. Each compile runs in a root of its own holding only
//! its job's inputs (hard links into the batch's input root): hermetic
//! means hermetic on the job's own inputs, not on the union of the
//! batch's, since the client records each job under its own action;
//! its outputs are moved into the batch's root after. Each job's exit status, stdout and stderr go to the
//! files the script would write; the action itself exits 0, so that one
//! failing (or not hermetic) compile fails that job only.
//!
//! The worker's compile slots (`--jobs`, its cores by default) are shared
//! by all its leases: with as many leases as cores, one lease's inputs
//! are fetched while another's compiles run, and a batch never runs more
//! compiles at once than the worker has slots.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;

use super::compilers::Compiler;
use super::exec::{compile_one, finish, refused, Compiled, LeaseCancelled, Stop, Worker};
use crate::reapi::batch as format;

/// How often a batch looks whether its lease was cancelled, to kill its
/// compiles (each has its own [`Stop`]).
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Compiles this worker runs at once, over all its leases.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

static SLOTS: OnceLock<Slots> = OnceLock::new();

/// Sets the worker's compile slots (once, at start; 1 if never set).
pub fn set_compile_slots(n: usize) {
    let _ = SLOTS.set(Slots {
        free: Mutex::new(n.max(1)),
        cv: Condvar::new(),
    });
}

fn slots() -> &'static Slots {
    SLOTS.get_or_init(|| Slots {
        free: Mutex::new(1),
        cv: Condvar::new(),
    })
}

/// A compile slot, given back when dropped.
struct Slot(&'static Slots);

impl Slots {
    fn take(&'static self) -> Slot {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.cv.wait(free).unwrap();
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.cv.notify_one();
    }
}

/// Runs the batch `jobs` of `command` in `root` (materialized, the
/// outputs' directories made): each job's compile, its result files,
/// every declared output that exists uploaded. A job run by another
/// compiler than the batch's, or whose result files are not declared
/// outputs, refuses the batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    ctx: &Worker,
    compiler: &Compiler,
    command: &re::Command,
    jobs: &[format::BatchJob],
    root: &Path,
    dir: &Path,
    outputs: &[String],
    stop: &Stop,
) -> Result<re::ActionResult> {
    for (k, job) in jobs.iter().enumerate() {
        if job.argv[0] != compiler.word {
            return refused(
                ctx,
                format!(
                    "batch job {k}: {} is not the batch's compiler {}",
                    job.argv[0], compiler.word
                ),
            );
        }
        if let Some(p) = format::result_paths(k)
            .into_iter()
            .find(|p| !outputs.contains(p))
        {
            return refused(ctx, format!("batch job {k}: {p} is not a declared output"));
        }
        if let Some(p) = job.inputs.iter().find(|p| !root.join(p).is_file()) {
            return refused(
                ctx,
                format!("batch job {k}: its input {p} is not a file of the input root"),
            );
        }
    }
    // The job's own outputs: the declared ones but the result files.
    let results: Vec<String> = (0..jobs.len()).flat_map(format::result_paths).collect();
    let outputs_of_jobs: Vec<&String> = outputs.iter().filter(|o| !results.contains(o)).collect();
    let stops: Vec<Stop> = jobs.iter().map(|_| Stop::default()).collect();
    let finished = AtomicBool::new(false);
    let results: Vec<Result<Compiled>> = std::thread::scope(|s| {
        // The lease's cancel reaches every compile of the batch.
        s.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if stop.is_cancelled() {
                    stops.iter().for_each(Stop::cancel);
                    return;
                }
                std::thread::sleep(CANCEL_POLL);
            }
        });
        let running: Vec<_> = jobs
            .iter()
            .zip(&stops)
            .enumerate()
            .map(|(k, (job, job_stop))| {
                let outputs_of_jobs = &outputs_of_jobs;
                s.spawn(move || {
                    let _slot = slots().take();
                    if job_stop.is_cancelled() {
                        return Err(LeaseCancelled.into());
                    }
                    let one = re::Command {
                        arguments: job.argv.clone(),
                        environment_variables: command.environment_variables.clone(),
                        ..Default::default()
                    };
                    let own = dir.join(format!("job-{k}"));
                    job_root(root, &own, &job.inputs, outputs_of_jobs)?;
                    let trace = dir.join(format!("trace-{k}"));
                    let done = compile_one(ctx, compiler, &one, &own, &trace, job_stop)?;
                    for o in outputs_of_jobs {
                        let from = own.join(o);
                        if from.is_file() {
                            std::fs::rename(&from, root.join(o)).with_context(|| {
                                format!("cannot move {} into the batch's root", from.display())
                            })?;
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        let results = running
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a batch's compile thread panicked")))
            })
            .collect();
        finished.store(true, Ordering::Relaxed);
        results
    });
    if stop.is_cancelled() {
        return Err(LeaseCancelled.into());
    }
    let (mut failed, mut warm) = (0, 0);
    for (k, r) in results.into_iter().enumerate() {
        let c = r?;
        failed += usize::from(c.exit_code != 0);
        warm += usize::from(c.warm);
        for (path, data) in [
            (
                format::status_path(k),
                format::status_text(c.exit_code).into_bytes(),
            ),
            (format::stdout_path(k), c.stdout),
            (format::stderr_path(k), c.stderr),
        ] {
            let p = root.join(&path);
            std::fs::write(&p, data)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        }
    }
    eprintln!(
        "thinlto-backend worker {}: a batch of {} jobs ({} …): {} failed, {} on the warm compiler",
        ctx.bot,
        jobs.len(),
        outputs.first().map_or("", String::as_str),
        failed,
        warm
    );
    let mut files = Vec::new();
    for o in outputs {
        let p = root.join(o);
        if p.is_file() {
            files.push((o.clone(), std::fs::read(&p)?));
        }
    }
    let result = re::ActionResult {
        exit_code: 0,
        ..Default::default()
    };
    finish(ctx, result, &files, b"", b"")
}

/// `own`: a root for one job of a batch, with its `inputs` hard-linked
/// from the batch's `root` (copied where a link fails) and the
/// directories of the batch's `outputs`.
fn job_root(root: &Path, own: &Path, inputs: &[String], outputs: &[&String]) -> Result<()> {
    for p in inputs {
        let to = own.join(p);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let from = root.join(p);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    for o in outputs {
        if let Some(parent) = own.join(o).parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    Ok(())
}
