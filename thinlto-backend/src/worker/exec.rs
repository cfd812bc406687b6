//! One action on a worker, a thin composition: the Command validated
//! ([`super::policy`]), its input root materialized and checked
//! ([`super::store`]), the compile run in its sandbox within bounds
//! ([`super::sandbox`]), the trace checked (hermetic or nothing,
//! [`super::hermetic`]), the outputs read (regular files inside the root,
//! each present and non-empty) and uploaded, an ActionResult made.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use prost::Message;

use super::compilers::Compiler;
use super::policy::{validate_compile, ValidCompile};
use super::sandbox::{run_compile, Limits, Sandbox, SandboxArgs};
use super::store::{fetch, BadRoot, BlobStore, DEFAULT_ROOT_LIMITS};
use crate::reapi::COMPILER_PROPERTY;
use crate::reapi::{Digest, RemoteCache};

/// What a worker runs actions with.
pub struct Worker<'a> {
    pub cas: &'a RemoteCache,
    pub store: &'a BlobStore,
    pub compilers: &'a [Compiler],
    pub sandbox: &'a Sandbox,
    pub sandbox_args: &'a SandboxArgs,
    /// This bot's name, for `ExecutedActionMetadata.worker`.
    pub bot: &'a str,
}

pub use super::stop::{LeaseCancelled, Stop};

/// What the bot reports for a lease: the ActionResult, and the lease's
/// status. A status other than OK makes BuildGrid mark the job
/// `do_not_cache` (0.4.4, `_complete_job`: the result never reaches its
/// action cache, whatever its `cache-failed-actions`) and hand the
/// client the result with that status; the codes used are ones it does
/// not retry on another bot (it retries INTERNAL and UNAVAILABLE).
#[derive(Debug)]
pub struct Reported {
    pub result: re::ActionResult,
    pub status: RpcStatus,
}

/// The status of a failure that must never be cached: the compiler said
/// it succeeded without its outputs (FAILED_PRECONDITION: in practice an
/// input the root lacked), the deadline passed (DEADLINE_EXCEEDED, as
/// REAPI says), the action refused (INVALID_ARGUMENT).
pub(crate) fn status(code: tonic::Code, message: &str) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.to_string(),
        ..Default::default()
    }
}

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
        let _slot = super::batch::compile_slot();
        compile_job(ctx, compile, &root, &outputs, &[], &limits, stop)?
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

/// The directories of `outputs` under `root`, made.
pub(crate) fn prepare_outputs(root: &Path, outputs: &[String]) -> Result<()> {
    for o in outputs {
        if let Some(parent) = root.join(o).parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    Ok(())
}

/// Why a compile that ran gives no result of its own: the worker's
/// verdict, not the compiler's.
pub(crate) enum JobFault {
    /// Killed at its deadline (the reason).
    TimedOut(String),
    /// It read a file outside its input root: the whole message, the
    /// marker the client knows first.
    NotHermetic(String),
    /// Exit 0 without a required output, or with an empty one.
    NoOutput(String),
}

/// One compile on this worker, as a lone action and each job of a batch
/// report it.
pub(crate) struct JobDone {
    /// Killed by a signal: 128 + its number, as a shell says.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    /// The compiler's (with a line saying where it was cut).
    pub stderr: Vec<u8>,
    /// With exit 0 and no fault: the outputs it wrote, read safely.
    pub files: Vec<(String, Vec<u8>)>,
    pub warm: bool,
    pub fault: Option<JobFault>,
}

/// Runs `compile` in `root` (prepared) within `limits` and judges it: the
/// deadline, the hermetic check, then with exit 0 every `required`
/// output present (a regular file inside the root, not empty) and each
/// `optional` one that is there. The one per-compile step of a lone
/// action and of each job of a batch.
pub(crate) fn compile_job(
    ctx: &Worker,
    compile: &ValidCompile,
    root: &Path,
    required: &[String],
    optional: &[String],
    limits: &Limits,
    stop: &Stop,
) -> Result<JobDone> {
    let out = run_compile(compile, root, ctx.sandbox, limits, stop)?;
    if stop.is_cancelled() {
        return Err(LeaseCancelled.into());
    }
    eprintln!(
        "thinlto-backend worker {}: {} -o {}: {}, {}{}",
        ctx.bot,
        compile.compiler.word,
        compile.native,
        out.status,
        if ctx.sandbox.on() { "sandboxed, " } else { "" },
        if out.warm {
            "warm compiler"
        } else {
            "plain spawn"
        },
    );
    let mut done = JobDone {
        exit_code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: out.stdout,
        stderr: out.stderr,
        files: Vec::new(),
        warm: out.warm,
        fault: None,
    };
    if out.timed_out {
        done.fault = Some(JobFault::TimedOut(format!(
            "the compile ran past its deadline ({} s) and was killed",
            limits.timeout.as_secs()
        )));
        return Ok(done);
    }
    if let Err(why) = super::hermetic::check(&out.trace, root, &compile.object, compile.compiler) {
        // The client recognizes the marker and compiles the job itself
        // (its trace then learns the missing file).
        done.fault = Some(JobFault::NotHermetic(format!(
            "{}{why} (worker {})\n",
            super::hermetic::NOT_HERMETIC,
            ctx.bot
        )));
        return Ok(done);
    }
    if out.truncated {
        done.stderr.extend_from_slice(
            format!(
                "\nthinlto-backend worker {}: the compile's output was cut at {} bytes\n",
                ctx.bot, limits.output_cap
            )
            .as_bytes(),
        );
    }
    if done.exit_code != 0 {
        return Ok(done);
    }
    // Exit 0: every required output must be there, a regular file inside
    // the root, not empty; else this is a failure that is never cached.
    for o in required {
        match read_output(root, o) {
            Ok(data) if !data.is_empty() => done.files.push((o.clone(), data)),
            r => {
                let why = match r {
                    Ok(_) => format!("the compiler exited 0 but its output {o} is empty"),
                    Err(e) => format!("the compiler exited 0 but wrote no output {o} ({e})"),
                };
                done.stderr.extend_from_slice(
                    format!("thinlto-backend worker {}: {why}\n", ctx.bot).as_bytes(),
                );
                done.files.clear();
                done.fault = Some(JobFault::NoOutput(why));
                return Ok(done);
            }
        }
    }
    for o in optional {
        if let Ok(data) = read_output(root, o) {
            done.files.push((o.clone(), data));
        }
    }
    Ok(done)
}

/// The output `rel` of the compile in `root`: opened beneath the root
/// with no symlink anywhere on the way (openat2 RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS, O_NOFOLLOW), and a regular file.
pub(crate) fn read_output(root: &Path, rel: &str) -> std::io::Result<Vec<u8>> {
    let dir = std::fs::File::open(root)?;
    let c_rel = std::ffi::CString::new(std::ffi::OsStr::new(rel).as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the path"))?;
    // SAFETY: a zeroed open_how is valid; its fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // O_NONBLOCK: a FIFO left at an output's path must not hang the
    // worker (it is refused below as not a regular file).
    how.flags = (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid pointers for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned here.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    f.take(super::sandbox::MAX_OUTPUT_BYTES)
        .read_to_end(&mut data)?;
    Ok(data)
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

pub(crate) fn refused(ctx: &Worker, why: String) -> Result<Reported> {
    let msg = format!("thinlto-backend worker {}: refused: {why}\n", ctx.bot);
    let result = re::ActionResult {
        exit_code: 1,
        ..Default::default()
    };
    finish(
        ctx,
        result,
        &[],
        b"",
        msg.as_bytes(),
        status(tonic::Code::InvalidArgument, &format!("refused: {why}")),
    )
}

/// Uploads the outputs and streams, and completes `result` with them.
pub(crate) fn finish(
    ctx: &Worker,
    mut result: re::ActionResult,
    files: &[(String, Vec<u8>)],
    stdout: &[u8],
    stderr: &[u8],
    status: RpcStatus,
) -> Result<Reported> {
    let mut blobs: HashMap<Digest, &[u8]> = HashMap::new();
    for (path, data) in files {
        let d = Digest::of_bytes(data);
        result.output_files.push(re::OutputFile {
            path: path.clone(),
            digest: Some(d.to_proto()),
            ..Default::default()
        });
        blobs.insert(d, data);
    }
    for (data, slot) in [
        (stdout, &mut result.stdout_digest),
        (stderr, &mut result.stderr_digest),
    ] {
        if !data.is_empty() {
            let d = Digest::of_bytes(data);
            *slot = Some(d.to_proto());
            blobs.insert(d, data);
        }
    }
    ctx.cas.rt.block_on(ctx.cas.upload_missing(&blobs))?;
    result.execution_metadata = Some(re::ExecutedActionMetadata {
        worker: ctx.bot.to_string(),
        ..Default::default()
    });
    Ok(Reported { result, status })
}

/// `dir/N`: a fresh directory for one action.
pub fn action_dir(base: &Path, n: u64) -> PathBuf {
    base.join(format!("action-{n}"))
}

#[cfg(test)]
mod tests {
    use super::read_output;

    #[test]
    fn outputs_are_regular_files_beneath_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("kernel")).unwrap();
        std::fs::write(t.path().join("secret"), "the worker's").unwrap();
        std::fs::write(root.join("kernel/a.o"), "native").unwrap();
        assert_eq!(read_output(&root, "kernel/a.o").unwrap(), b"native");
        // A symlink as the output, or on the way to it.
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("kernel/b.o")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("kernel/c.o")).unwrap();
        for p in [
            "kernel/b.o",
            "up/secret",
            "kernel/c.o",
            "../secret",
            "kernel",
        ] {
            assert!(read_output(&root, p).is_err(), "{p}");
        }
        // A FIFO: refused, not waited on.
        let fifo = std::ffi::CString::new(root.join("kernel/d.o").to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(read_output(&root, "kernel/d.o").is_err());
    }
}
