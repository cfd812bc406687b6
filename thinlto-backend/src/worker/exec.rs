//! One action on a worker: its input root materialized, the command run
//! under the tracing shim, the trace checked (hermetic or nothing), the
//! outputs uploaded, an ActionResult made.

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::compilers::Compiler;
use super::store::{fetch, BlobStore};
use crate::reapi::COMPILER_PROPERTY;
use crate::reapi::{Digest, RemoteCache};

/// What a worker runs actions with.
pub struct Worker<'a> {
    pub cas: &'a RemoteCache,
    pub store: &'a BlobStore,
    pub compilers: &'a [Compiler],
    /// This bot's name, for `ExecutedActionMetadata.worker`.
    pub bot: &'a str,
}

/// How a running action is stopped when the server cancels its lease
/// (`crate::worker`'s keepalive sees it): the compile's process group is
/// killed and nothing is uploaded. Either side may come first: a cancel
/// before the spawn kills the compile as soon as it starts.
#[derive(Default)]
pub struct Stop {
    state: std::sync::Mutex<StopState>,
}

#[derive(Default)]
struct StopState {
    cancelled: bool,
    /// What a cancel kills, while the compile is not reaped (so the id
    /// cannot be another's).
    target: Option<Target>,
}

/// A running compile, as it is killed.
#[derive(Clone, Copy)]
enum Target {
    /// A plain spawn: its own process group (the compile and whatever it
    /// started).
    Group(i32),
    /// A job of the warm compiler: a child of the zygote, in the
    /// zygote's process group (the worker's), so the process alone.
    Process(i32),
}

/// The error of an action whose lease the server cancelled.
#[derive(Debug)]
pub struct LeaseCancelled;

impl std::fmt::Display for LeaseCancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cancelled by the server; its compile killed, nothing uploaded"
        )
    }
}

impl std::error::Error for LeaseCancelled {}

impl Stop {
    /// Cancels the action: its compile, if running, is killed now.
    pub fn cancel(&self) {
        let mut st = self.state.lock().unwrap();
        st.cancelled = true;
        if let Some(t) = st.target {
            kill(t);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.lock().unwrap().cancelled
    }

    fn started(&self, target: Target) {
        let mut st = self.state.lock().unwrap();
        st.target = Some(target);
        if st.cancelled {
            kill(target);
        }
    }

    fn ended(&self) {
        self.state.lock().unwrap().target = None;
    }
}

fn kill(target: Target) {
    let id = match target {
        Target::Group(g) => -g,
        Target::Process(p) => p,
    };
    // SAFETY: kill has no memory-safety preconditions; the process (the
    // group's leader) is not reaped yet: Stop::ended comes after the
    // wait, and a warm job's pid stays its own while its handle lives.
    unsafe {
        libc::kill(id, libc::SIGKILL);
    }
}

/// Runs `action` in `dir` (a new directory, removed by the caller) and
/// returns its result, outputs and streams uploaded. An action the worker
/// refuses (no such compiler, another identity, a compile that was not
/// hermetic) is a failed result (exit code 1) whose stderr says why. An
/// action `stop` cancels is a [`LeaseCancelled`] error, nothing uploaded.
pub fn run(ctx: &Worker, action: &re::Action, dir: &Path, stop: &Stop) -> Result<re::ActionResult> {
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
    let command = re::Command::decode(
        fetch(ctx.cas, vec![command_digest.clone()])?[&command_digest].as_slice(),
    )
    .with_context(|| format!("Command {command_digest}: malformed"))?;
    // A batch's compiles are run by its jobs' compiler, not the shell.
    let batch = match parse_batch(&command.arguments) {
        Some(Err(why)) => return refused(ctx, why),
        Some(Ok(jobs)) => Some(jobs),
        None => None,
    };
    let Some(word) = batch
        .as_ref()
        .map_or(command.arguments.first(), |jobs| jobs[0].argv.first())
    else {
        bail!("Command {command_digest} has no arguments");
    };
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
    let root = dir.join("root");
    ctx.store.materialize(ctx.cas, &root_digest, &root)?;
    #[allow(deprecated)]
    let outputs: Vec<String> = if command.output_paths.is_empty() {
        command.output_files.clone()
    } else {
        command.output_paths.clone()
    };
    for o in &outputs {
        if o.starts_with('/') || o.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("output path {o:?}: not a plain relative path");
        }
        if let Some(parent) = root.join(o).parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    if let Some(jobs) = &batch {
        return super::batch::run(ctx, compiler, &command, jobs, &root, dir, &outputs, stop);
    }
    let out = compile_one(ctx, compiler, &command, &root, &dir.join("trace"), stop)?;
    if stop.is_cancelled() {
        return Err(LeaseCancelled.into());
    }
    eprintln!(
        "thinlto-backend worker {}: {word} -o {}: exit status {}, {}",
        ctx.bot,
        outputs.first().map_or("", String::as_str),
        out.exit_code,
        if out.warm {
            "warm compiler"
        } else {
            "plain spawn"
        }
    );
    let result = re::ActionResult {
        exit_code: out.exit_code,
        ..Default::default()
    };
    let mut files = Vec::new();
    if result.exit_code == 0 {
        for o in &outputs {
            let p = root.join(o);
            if p.is_file() {
                let data =
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
                files.push((o.clone(), data));
            }
        }
    }
    finish(ctx, result, &files, &out.stdout, &out.stderr)
}

/// The jobs of a batched action (`crate::reapi::batch`), if `argv` is
/// one: the word its compiles are run by is then the jobs' compiler, not
/// the shell. A malformed batch is the reason to refuse it.
fn parse_batch(
    argv: &[String],
) -> Option<std::result::Result<Vec<crate::reapi::batch::BatchJob>, String>> {
    match crate::reapi::batch::parse(argv) {
        Ok(None) => None,
        Ok(Some(jobs)) => Some(Ok(jobs)),
        Err(e) => Some(Err(format!("{e:#}"))),
    }
}

/// One compile done on this worker.
pub(crate) struct Compiled {
    /// Killed by a signal: 128 + its number, as a shell says; 1 for a
    /// compile that was not hermetic.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    /// The compiler's, and for a compile that was not hermetic, the
    /// reason after the marker the client recognizes.
    pub stderr: Vec<u8>,
    pub warm: bool,
}

/// Runs `command` (one compile by `compiler`) in `root` under the tracing
/// shim, its trace in `trace`, and checks it was hermetic: the one
/// per-compile step of a lone action and of each job of a batch.
pub(crate) fn compile_one(
    ctx: &Worker,
    compiler: &Compiler,
    command: &re::Command,
    root: &Path,
    trace: &Path,
    stop: &Stop,
) -> Result<Compiled> {
    // The input the compile must be seen reading: the last argument that
    // names an input file (the object, or the source).
    let object = command.arguments[1..]
        .iter()
        .rev()
        .find(|a| root.join(a).is_file())
        .cloned()
        .unwrap_or_default();
    let (out, warm) = compile(compiler, command, root, trace, stop)?;
    let mut done = Compiled {
        exit_code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: out.stdout,
        stderr: out.stderr,
        warm,
    };
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    if let Err(why) = super::hermetic::check(&text, root, &object, compiler) {
        // The client recognizes the marker and compiles the job itself
        // (its trace then learns the missing file).
        done.stderr.extend_from_slice(
            format!("{}{why} (worker {})\n", crate::exec::NOT_HERMETIC, ctx.bot).as_bytes(),
        );
        done.exit_code = 1;
    }
    Ok(done)
}

/// The compiler for `word`; an error saying why when this worker has none
/// that the action's `thinlto-compiler` property names.
pub(crate) fn choose_compiler<'a>(
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

/// The compile, as a job of the warm compiler for it when one serves it
/// (`crate::warm`: started by the worker for each of its compilers; a job
/// lost with it runs again plainly), else a plain [`spawn`]; either way
/// in the input root, with the Command's environment only, under the
/// tracing shim. Its output, and whether it ran warm.
fn compile(
    compiler: &Compiler,
    command: &re::Command,
    root: &Path,
    trace: &Path,
    stop: &Stop,
) -> Result<(std::process::Output, bool)> {
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = command
        .environment_variables
        .iter()
        .map(|e| (e.name.clone().into(), e.value.clone().into()))
        .collect();
    let place = crate::warm::JobPlace {
        cwd: root,
        env: &env,
    };
    if let Some(mut child) = crate::warm::try_warm(&command.arguments, Some(trace), Some(&place)) {
        stop.started(Target::Process(child.id() as i32));
        let out = child.wait_with_output();
        stop.ended();
        drop(child);
        match out {
            Ok(o) => return Ok((o, true)),
            // The zygote died under the job (a worker's cancel kills the
            // job alone): run it again plainly, its trace afresh.
            Err(e) if crate::warm::is_lost(&e) => {
                let _ = std::fs::remove_file(trace);
            }
            Err(e) => return Err(e).context("waiting for the warm compiler's job"),
        }
    }
    let child = spawn(compiler, command, root, trace)?;
    stop.started(Target::Group(child.id() as i32));
    let out = child.wait_with_output();
    stop.ended();
    Ok((
        out.with_context(|| format!("running {}", command.arguments[0]))?,
        false,
    ))
}

/// A plain compile: the resolved executable with `argv[0]` as the action
/// spells it, in the input root, with the Command's environment only,
/// under the tracing shim.
fn spawn(
    compiler: &Compiler,
    command: &re::Command,
    root: &Path,
    trace: &Path,
) -> Result<std::process::Child> {
    let mut cmd = Command::new(&compiler.exe);
    cmd.arg0(&command.arguments[0])
        .args(&command.arguments[1..])
        .current_dir(root)
        .env_clear()
        .envs(
            command
                .environment_variables
                .iter()
                .map(|e| (&e.name, &e.value)),
        )
        .env("THINLTO_TRACE", trace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a cancelled lease kills the compile and
        // whatever it started (`Stop`), not the worker.
        .process_group(0);
    // Without the shim the trace has no header, and the check fails the
    // action: hermetic or nothing.
    if let Ok(shim) = crate::warm::shim::path() {
        cmd.env("LD_PRELOAD", shim);
    }
    // A worker that dies takes its compile with it: the lease goes to
    // another worker, and an orphan must not go on reading the inputs or
    // writing into a work directory nobody owns.
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot run {}", compiler.exe.display()))
}

pub(crate) fn refused(ctx: &Worker, why: String) -> Result<re::ActionResult> {
    let msg = format!("thinlto-backend worker {}: {why}\n", ctx.bot);
    let result = re::ActionResult {
        exit_code: 1,
        ..Default::default()
    };
    finish(ctx, result, &[], b"", msg.as_bytes())
}

/// Uploads the outputs and streams, and completes `result` with them.
pub(crate) fn finish(
    ctx: &Worker,
    mut result: re::ActionResult,
    files: &[(String, Vec<u8>)],
    stdout: &[u8],
    stderr: &[u8],
) -> Result<re::ActionResult> {
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
    Ok(result)
}

/// `dir/N`: a fresh directory for one action.
pub fn action_dir(base: &Path, n: u64) -> PathBuf {
    base.join(format!("action-{n}"))
}
