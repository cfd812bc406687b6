//! A batched action on this worker (`crate::reapi::batch`): recognized
//! by its exact script, its jobs parsed strictly and each validated as a
//! lone action's compile ([`super::policy`], in `exec::run`), then each
//! run as one ([`super::exec::compile_job`]: the sandbox, the warm
//! compiler, the bounds, the hermetic check, outputs read safely), in
//! parallel within the worker's compile slots.
//!
//! Each compile runs in a root of its own holding only its job's inputs
//! (read-only links into the store where compiles run under another uid,
//! verified copies otherwise, as the batch's root holds them): hermetic
//! means hermetic on the job's own inputs, not on the union of the
//! batch's, since the client records each job under its own action, and
//! no job can see or change a batch-mate's files. Each job's exit status,
//! stdout and stderr are the result files the script would write; the
//! action itself exits 0, so that one failing (or not hermetic) compile
//! fails that job only. A job the worker cannot vouch for (past its
//! deadline, or exit 0 without its native) is reported with status 0 and
//! without its native, its reason in its stderr: the client compiles such
//! a job here, as it does any result that lacks its outputs.
//!
//! The worker's compile slots (`--jobs`, its cores by default) are shared
//! by all its leases: with as many leases as cores, one lease's inputs
//! are fetched while another's compiles run, and a batch never runs more
//! compiles at once than the worker has slots.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::rpc::Status as RpcStatus;

use super::compile::{
    compile_job, compile_slot, finish, prepare_outputs, refused, JobDone, JobFault, JobOutputs,
    LeaseCancelled, Reported, Stop, Worker,
};
use super::policy::ValidCompile;
use super::sandbox::Limits;
use crate::reapi::batch as format;

/// How often a batch looks whether its lease was cancelled, to kill its
/// compiles (each has its own [`Stop`]).
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The outputs a batch's jobs may write: the declared ones but the
/// result files of its `jobs` jobs.
pub(crate) fn job_outputs(jobs: usize, outputs: &[String]) -> Vec<String> {
    let results: Vec<String> = (0..jobs).flat_map(format::result_paths).collect();
    outputs
        .iter()
        .filter(|o| !results.contains(o))
        .cloned()
        .collect()
}

/// Runs the batch `jobs` (validated as `compiles`) whose input root is
/// `root` (materialized and checked): each job in its own root under
/// `dir`, its result files and outputs uploaded. A batch whose result
/// files are not declared outputs, or whose job names an input the root
/// lacks, is refused.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    ctx: &Worker,
    jobs: &[format::BatchJob],
    compiles: &[ValidCompile],
    root: &Path,
    dir: &Path,
    outputs: &[String],
    limits: &Limits,
    stop: &Stop,
) -> Result<Reported> {
    for (k, job) in jobs.iter().enumerate() {
        if let Some(p) = format::result_paths(k)
            .into_iter()
            .find(|p| !outputs.contains(p))
        {
            return refused(ctx, format!("batch job {k}: {p} is not a declared output"));
        }
        // A regular file of the root (the store materializes no links).
        if let Some(p) = job.inputs.iter().find(|p| {
            !super::policy::inside_root(p)
                || !std::fs::symlink_metadata(root.join(p)).is_ok_and(|m| m.is_file())
        }) {
            return refused(
                ctx,
                format!("batch job {k}: its input {p:?} is not a file of the input root"),
            );
        }
    }
    let own_outputs = job_outputs(jobs.len(), outputs);
    let link = ctx.sandbox.separate_uid();
    let stops: Vec<Stop> = jobs.iter().map(|_| Stop::default()).collect();
    let finished = AtomicBool::new(false);
    let done: Vec<Result<JobDone>> = std::thread::scope(|s| {
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
            .zip(compiles)
            .zip(&stops)
            .enumerate()
            .map(|(k, ((job, compile), job_stop))| {
                let own_outputs = &own_outputs;
                s.spawn(move || {
                    let _slot = compile_slot();
                    if job_stop.is_cancelled() {
                        return Err(LeaseCancelled.into());
                    }
                    // dir/job-K/root: the sandbox's view of it goes beside
                    // it (dir/job-K/view), one per job.
                    let job_dir = dir.join(format!("job-{k}"));
                    let own = job_dir.join("root");
                    job_root(root, &own, &job.inputs, link)?;
                    prepare_outputs(&own, own_outputs)?;
                    ctx.sandbox.prepare(&job_dir, &own)?;
                    let optional: Vec<String> = own_outputs
                        .iter()
                        .filter(|o| **o != compile.native)
                        .cloned()
                        .collect();
                    compile_job(
                        ctx,
                        &format!("batch job {k}: "),
                        compile,
                        &own,
                        JobOutputs {
                            required: std::slice::from_ref(&compile.native),
                            optional: &optional,
                        },
                        limits,
                        job_stop,
                    )
                })
            })
            .collect();
        let done = running
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a batch's compile thread panicked")))
            })
            .collect();
        finished.store(true, Ordering::Relaxed);
        done
    });
    if stop.is_cancelled() {
        return Err(LeaseCancelled.into());
    }
    let (mut failed, mut warm) = (0, 0);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, d) in done.into_iter().enumerate() {
        let d = d?;
        warm += usize::from(d.warm);
        let (code, stdout, stderr) = match d.fault {
            None => {
                files.extend(d.files);
                (d.exit_code, d.stdout, d.stderr)
            }
            // The client's own marker: it compiles this job here.
            Some(JobFault::NotHermetic(msg)) => (1, Vec::new(), msg.into_bytes()),
            // Status 0 without the native: the client compiles it here.
            Some(JobFault::TimedOut(why)) | Some(JobFault::NoOutput(why)) => {
                let mut err = d.stderr;
                err.extend_from_slice(
                    format!("thinlto-backend worker {}: {why}\n", ctx.bot).as_bytes(),
                );
                (0, d.stdout, err)
            }
        };
        failed += usize::from(code != 0);
        files.push((
            format::status_path(k),
            format::status_text(code).into_bytes(),
        ));
        files.push((format::stdout_path(k), stdout));
        files.push((format::stderr_path(k), stderr));
    }
    eprintln_one_write!(
        "thinlto-backend worker {}: a batch of {} jobs ({} …): {} failed, {} on the warm compiler",
        ctx.bot,
        jobs.len(),
        compiles.first().map_or("", |c| c.native.as_str()),
        failed,
        warm
    );
    let result = re::ActionResult {
        exit_code: 0,
        ..Default::default()
    };
    finish(ctx, result, &files, b"", b"", RpcStatus::default())
}

/// `own`: a root for one job of a batch, with its `inputs` from the
/// batch's `root`: hard links when compiles run under another uid (the
/// files are the store's, read-only and not theirs to change), else
/// copies, so that no job can change what another reads.
fn job_root(root: &Path, own: &Path, inputs: &[String], link: bool) -> Result<()> {
    std::fs::create_dir_all(own).with_context(|| format!("cannot create {}", own.display()))?;
    for p in inputs {
        let to = own.join(p);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let from = root.join(p);
        if to.symlink_metadata().is_ok() {
            continue; // named twice by the job
        }
        if !link || std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}
