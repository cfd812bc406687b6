//! One action on a worker, a thin composition: the Command validated
//! ([`super::policy`]), its input root materialized and checked
//! ([`super::store`]), the compile run in its sandbox within bounds
//! ([`super::sandbox`]), the trace checked (hermetic or nothing,
//! [`super::hermetic`]), the outputs read (regular files inside the root,
//! each present and non-empty) and uploaded, an ActionResult made.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use prost::Message;

use super::compile::{
    compile_job, compile_slot, finish, prepare_outputs, refused, status, JobFault, JobOutputs,
};
pub use super::compile::{LeaseCancelled, Reported, Stop, Worker};
use super::compilers::Compiler;
use super::policy::{validate_compile, ValidCompile};
use super::sandbox::Limits;
use super::store::{fetch, BadRoot, DEFAULT_ROOT_LIMITS};
use crate::reapi::Digest;
use crate::reapi::COMPILER_PROPERTY;

/// Runs `action` in `dir` (a new directory, removed by the caller) and
/// returns what to report, outputs and streams uploaded. A refused action
/// (no such compiler, another identity, a flag or variable not allowed,
/// a malformed or oversized input root) is a failed result (exit code 1)
/// whose stderr is one line saying why, never the compile's output; a
/// compile that was not hermetic likewise, with the marker the client
/// knows. Exit 0 is reported only with every declared output present and
/// non-empty. An action `stop` cancels is a [`LeaseCancelled`] error,
/// nothing uploaded.
pub fn run(ctx: &Worker, action: &re::Action, dir: &Path, stop: &Stop) -> Result<Reported> {
    let command_digest = action
        .command_digest
        .as_ref()
        .and_then(Digest::from_proto)
        .context("the Action has no valid command_digest")?;
    let root_digest = action
        .input_root_digest
        .as_ref()
        .and_then(Digest::from_proto)
        .context("the Action has no valid input_root_digest")?;
    let command = match re::Command::decode(
        fetch(ctx.cas, vec![command_digest.clone()])?[&command_digest].as_slice(),
    ) {
        Ok(c) => c,
        Err(e) => return refused(ctx, format!("Command {command_digest}: malformed: {e}")),
    };
    #[allow(deprecated)]
    let outputs: Vec<String> = if command.output_paths.is_empty() {
        command.output_files.clone()
    } else {
        command.output_paths.clone()
    };
    let env: Vec<(String, String)> = command
        .environment_variables
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    // A batch (`crate::reapi::batch`) is recognized by its exact script;
    // its compiles are run by their compiler, each validated and run as a
    // lone action's (`super::batch`), never by the shell.
    let batch = match crate::reapi::batch::parse(&command.arguments) {
        Ok(b) => b,
        Err(e) => return refused(ctx, format!("a malformed batch: {e:#}")),
    };
    let words: Vec<&String> = match &batch {
        Some(jobs) => jobs.iter().filter_map(|j| j.argv.first()).collect(),
        None => command.arguments.first().into_iter().collect(),
    };
    let Some(word) = words.first().copied() else {
        return refused(ctx, format!("Command {command_digest} has no arguments"));
    };
    if let Some(other) = words.iter().find(|w| **w != word) {
        return refused(
            ctx,
            format!("a batch of two compilers ({word}, {other}): one compiler an action"),
        );
    }
    let compiler = match choose_compiler(ctx.compilers, word, action, &command) {
        Ok(c) => c,
        Err(why) => return refused(ctx, why),
    };
    if !command.working_directory.is_empty() {
        return refused(
            ctx,
            "a working_directory other than the input root is not supported".into(),
        );
    }
    let compiles: Vec<ValidCompile> = match &batch {
        Some(jobs) => {
            let own = super::batch::job_outputs(jobs.len(), &outputs);
            let mut v = Vec::new();
            for (k, job) in jobs.iter().enumerate() {
                match validate_compile(&job.argv, &env, &own, ctx.compilers) {
                    Ok(c) => v.push(c),
                    Err(why) => return refused(ctx, format!("batch job {k}: {}", why.0)),
                }
            }
            v
        }
        None => match validate_compile(&command.arguments, &env, &outputs, ctx.compilers) {
            Ok(c) => vec![c],
            Err(why) => return refused(ctx, why.0),
        },
    };
    debug_assert!(compiles.iter().all(|c| c.compiler.word == compiler.word));
    let root = dir.join("root");
    let link = ctx.sandbox.separate_uid();
    match ctx
        .store
        .materialize(ctx.cas, &root_digest, &root, &DEFAULT_ROOT_LIMITS, link)
    {
        Ok(()) => {}
        Err(e) if e.is::<BadRoot>() => return refused(ctx, format!("{e}")),
        Err(e) => return Err(e),
    }
    let timeout = action
        .timeout
        .as_ref()
        .map(|t| std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32));
    let limits = Limits::new(ctx.sandbox_args, timeout);
    if let Some(jobs) = &batch {
        return super::batch::run(ctx, jobs, &compiles, &root, dir, &outputs, &limits, stop);
    }
    let compile = &compiles[0];
    prepare_outputs(&root, &outputs)?;
    ctx.sandbox.prepare(dir, &root)?;
    let done = {
        let _slot = compile_slot();
        compile_job(
            ctx,
            "",
            compile,
            &root,
            JobOutputs {
                required: &outputs,
                optional: &[],
            },
            &limits,
            stop,
        )?
    };
    let mut result = re::ActionResult {
        exit_code: done.exit_code,
        ..Default::default()
    };
    match done.fault {
        Some(JobFault::TimedOut(why)) => {
            let mut r = refused(ctx, why.clone())?;
            r.status = status(tonic::Code::DeadlineExceeded, &why);
            Ok(r)
        }
        Some(JobFault::NotHermetic(msg)) => {
            // Only the marker: the compile's own output may show what it
            // read.
            result.exit_code = 1;
            finish(ctx, result, &[], b"", msg.as_bytes(), RpcStatus::default())
        }
        Some(JobFault::NoOutput(why)) => {
            // Never cached: a status other than OK.
            result.exit_code = 1;
            finish(
                ctx,
                result,
                &[],
                &done.stdout,
                &done.stderr,
                status(tonic::Code::FailedPrecondition, &why),
            )
        }
        None => finish(
            ctx,
            result,
            &done.files,
            &done.stdout,
            &done.stderr,
            RpcStatus::default(),
        ),
    }
}

/// The compiler for `word`; an error saying why when this worker has none
/// that the action's `thinlto-compiler` property names.
fn choose_compiler<'a>(
    compilers: &'a [Compiler],
    word: &str,
    action: &re::Action,
    command: &re::Command,
) -> std::result::Result<&'a Compiler, String> {
    // Command.platform: deprecated in v2.2, what older clients set.
    #[allow(deprecated)]
    let wanted: Vec<&str> = action
        .platform
        .iter()
        .chain(&command.platform)
        .flat_map(|p| &p.properties)
        .filter(|p| p.name == COMPILER_PROPERTY)
        .map(|p| p.value.as_str())
        .collect();
    let Some(c) = compilers.iter().find(|c| c.word == word) else {
        return Err(format!("this worker has no compiler {word}"));
    };
    if wanted.is_empty() {
        return Err(format!(
            "the action does not name its compiler's identity (platform property {COMPILER_PROPERTY})"
        ));
    }
    if let Some(w) = wanted.iter().find(|w| **w != c.identity) {
        return Err(format!(
            "the action wants {word} with identity {w}; this worker's {word} is {}",
            c.identity
        ));
    }
    Ok(c)
}

/// `dir/N`: a fresh directory for one action.
pub fn action_dir(base: &Path, n: u64) -> PathBuf {
    base.join(format!("action-{n}"))
}
