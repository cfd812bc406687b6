//! One compile on a worker, as a lone action and each job of a batch
//! run it: in its sandbox within bounds ([`super::sandbox`]), judged
//! (the deadline, the hermetic check, every required output a regular
//! file inside the root and not empty), and what a bot reports for a
//! lease ([`Reported`]: the result, its outputs and streams uploaded, and
//! the lease's status). The worker's compile slots, which every lease's
//! compiles share, are here too.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, OnceLock};

use anyhow::{Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::rpc::Status as RpcStatus;

use super::compilers::Compiler;
use super::policy::ValidCompile;
use super::sandbox::{run_compile, Limits, Sandbox, SandboxArgs};
pub use super::stop::{LeaseCancelled, Stop};
use super::store::BlobStore;
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

/// The outputs a compile is judged by: with exit 0, every `required`
/// one present (a regular file inside the root, not empty), and each
/// `optional` one that is there taken too.
pub(crate) struct JobOutputs<'a> {
    pub required: &'a [String],
    pub optional: &'a [String],
}

/// Runs `compile` in `root` (prepared) within `limits` and judges it: the
/// deadline, the hermetic check, then its `outputs`. The one per-compile
/// step of a lone action and of each job of a batch (`label`: `batch job
/// K: `, or empty).
pub(crate) fn compile_job(
    ctx: &Worker,
    label: &str,
    compile: &ValidCompile,
    root: &Path,
    outputs: JobOutputs,
    limits: &Limits,
    stop: &Stop,
) -> Result<JobDone> {
    let JobOutputs { required, optional } = outputs;
    let out = run_compile(compile, root, ctx.sandbox, limits, stop)?;
    if stop.is_cancelled() {
        return Err(LeaseCancelled.into());
    }
    // The worker's log, a line a compile; a batch's job says which.
    eprintln_one_write!(
        "thinlto-backend worker {}: {}{} -o {}: {}, {}{}",
        ctx.bot,
        label,
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
pub(crate) struct Slot(&'static Slots);

/// Waits for a compile slot of this worker (a lone action's compile and
/// each of a batch's take one).
pub(crate) fn compile_slot() -> Slot {
    let s = slots();
    let mut free = s.free.lock().unwrap();
    while *free == 0 {
        free = s.cv.wait(free).unwrap();
    }
    *free -= 1;
    Slot(s)
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.cv.notify_one();
    }
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
