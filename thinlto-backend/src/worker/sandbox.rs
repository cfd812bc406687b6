//! One validated compile run in a sandbox, within bounds.
//!
//! The sandbox: fresh user, mount, pid, ipc, uts and network namespaces
//! (no network), a real uid that is not the worker's (65534 by default,
//! when the worker runs as root: the store, the trace and the other
//! actions are the worker's, and a compile cannot even chmod them), and a
//! view of its input root (writable, at its own path, so that traced paths
//! mean what they mean outside) plus, read-only, /usr and the top-level
//! links or directories of the system libraries, the loader's cache and
//! the few /etc files the clang driver reads, and the compiler's
//! installation. The blob store, the trace, the other actions and the
//! worker's home are not in it.
//!
//! A plain spawn runs under bubblewrap (`bwrap`, Debian's `bubblewrap`,
//! which Flatpak and buildbox-run-bubblewrap use): a small, audited
//! setuid-free tool made for exactly this. The worker switches to the
//! sandbox uid BEFORE it runs bwrap: bwrap started by root with `--uid N`
//! only renames root inside a user namespace (the compile is uid 0
//! outside, owner of the worker's files, and may chmod them). A job of
//! the warm compiler cannot exec bwrap without losing its warmth, so the
//! zygote's child enters the same view itself before the compiler's main
//! (`warm/zygote.c`, `enter_sandbox`: unshare, pivot_root, setresuid,
//! then a fork into the new pid namespace); both are given the paths by
//! [`Sandbox::view`], decided here once.
//!
//! The trace reaches the worker through a descriptor, an unlinked file
//! the worker made (no path to it exists, inside the sandbox or out),
//! inherited as [`TRACE_FD`]: an action can no longer rewrite it.
//!
//! Bounds ([`Limits`]): a deadline (`Action.timeout`, else
//! [`DEFAULT_TIMEOUT`]) after which the compile is killed, stdout and
//! stderr kept up to [`OUTPUT_CAP`] each, and rlimits on address space,
//! file size, processes and core dumps.

use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::policy::ValidCompile;
use super::stop::{Stop, Target};

/// The deadline of an action that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// The longest deadline an action may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// What is kept of a compile's stdout, and of its stderr.
pub const OUTPUT_CAP: usize = 1 << 20;
/// The largest output file read back (RLIMIT_FSIZE bounds what a compile
/// can write anyway).
pub const MAX_OUTPUT_BYTES: u64 = 4 << 30;
/// The descriptor the compile's trace is written to (`THINLTO_TRACE_FD`).
pub const TRACE_FD: i32 = 200;
/// The uid and gid compiles run as when the worker is root.
pub const DEFAULT_SANDBOX_ID: u32 = 65534;

/// The sandbox's flags (`thinlto-backend worker`).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Run compiles without a sandbox (only for a farm whose every client
    /// is trusted): no namespaces, the worker's uid
    #[arg(long)]
    pub no_sandbox: bool,
    /// The uid (and gid) compiles run as when the worker runs as root
    #[arg(long, value_name = "ID", default_value_t = DEFAULT_SANDBOX_ID)]
    pub sandbox_id: u32,
    /// The address space a compile may use, in MiB
    #[arg(long, value_name = "MIB", default_value_t = 16384)]
    pub memory_limit: u64,
}

/// A compile's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub output_cap: usize,
    /// RLIMIT_AS, bytes.
    pub memory: u64,
    /// RLIMIT_FSIZE, bytes.
    pub file_size: u64,
    /// RLIMIT_NPROC (counts every process of the sandbox uid).
    pub processes: u64,
}

impl Limits {
    /// The bounds of an action asking for `timeout` (None: the default).
    pub fn new(args: &SandboxArgs, timeout: Option<Duration>) -> Limits {
        Limits {
            timeout: timeout
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT)
                .min(MAX_TIMEOUT),
            output_cap: OUTPUT_CAP,
            memory: args.memory_limit << 20,
            file_size: MAX_OUTPUT_BYTES,
            processes: 4096,
        }
    }
}

/// How this worker sandboxes its compiles.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// None: --no-sandbox.
    bwrap: Option<PathBuf>,
    /// The real uid and gid of a compile, when the worker can switch
    /// (root); else the worker's own (in its own namespaces).
    id: Option<(u32, u32)>,
    /// The read-only part of the view.
    view: Vec<PathBuf>,
}

/// What a compile in the sandbox produced.
#[derive(Debug)]
pub struct CompileOutcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// stdout or stderr was longer than the cap (the rest dropped).
    pub truncated: bool,
    /// What the tracing shim wrote.
    pub trace: String,
    /// Ran as a job of the warm compiler.
    pub warm: bool,
    /// Killed at its deadline.
    pub timed_out: bool,
}

impl Sandbox {
    /// The sandbox for compiles of `compilers` (an error when bwrap is
    /// missing: a worker without a sandbox must be asked for).
    pub fn new(args: &SandboxArgs, compilers: &[super::compilers::Compiler]) -> Result<Sandbox> {
        let root = euid() == 0;
        let id = root.then_some((args.sandbox_id, args.sandbox_id));
        if args.no_sandbox {
            return Ok(Sandbox {
                bwrap: None,
                id: None,
                view: Vec::new(),
            });
        }
        let Some(bwrap) = crate::warm::resolve("bwrap") else {
            bail!("bwrap not found on PATH: install bubblewrap (apt-get install bubblewrap), or run with --no-sandbox on a farm whose every client is trusted");
        };
        let mut view: Vec<PathBuf> = [
            "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
        for f in super::hermetic::ALLOWED_FILES {
            let p = PathBuf::from(f);
            if p.is_file() && !view.iter().any(|v| p.starts_with(v)) {
                view.push(p);
            }
        }
        for c in compilers {
            for p in std::iter::once(&c.prefix).chain(&c.libraries) {
                if !view.iter().any(|v| p.starts_with(v)) {
                    view.push(p.clone());
                }
            }
            if let Some(on_path) = on_path(&c.word) {
                if !view.iter().any(|v| on_path.starts_with(v)) {
                    view.push(on_path);
                }
            }
        }
        Ok(Sandbox {
            bwrap: Some(bwrap),
            id,
            view,
        })
    }

    /// Whether compiles run under a uid of their own (then the store's
    /// read-only files can be linked into an input root: a compile can
    /// neither write nor chmod them).
    pub fn separate_uid(&self) -> bool {
        self.bwrap.is_some() && self.id.is_some()
    }

    /// Whether compiles are sandboxed at all.
    pub fn on(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The read-only paths of the view (as on the host; a symlink stays a
    /// symlink).
    pub fn view(&self) -> &[PathBuf] {
        &self.view
    }

    /// Makes `dir` (an action's directory) and `root` in it ready: the
    /// action's directory 0711 (bwrap, which runs as the sandbox uid,
    /// must walk to the root it binds; nobody may list it), the root and
    /// its directories the sandbox uid's, writable. The compile itself
    /// never sees these paths' parents: its view is its own.
    pub fn prepare(&self, dir: &Path, root: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot chmod {}", dir.display()))?;
        if let (true, Some((uid, gid))) = (self.on(), self.id) {
            chown_dirs(root, uid, gid)?;
        }
        Ok(())
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `word` as found on PATH, symlinks not resolved (what the sandbox's
/// execvp finds, so that argv[0] stays the action's word).
fn on_path(word: &str) -> Option<PathBuf> {
    if word.contains('/') {
        return Some(PathBuf::from(word));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(word))
        .find(|p| p.is_file())
}

/// chown of `root` and every directory under it (the files stay the
/// worker's: inputs are read-only to the compile).
fn chown_dirs(root: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {}", root.display()))?;
    for e in std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_dirs(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs `compile` in `root` (prepared by [`Sandbox::prepare`]) under
/// `sandbox` within `limits`: a job of the warm compiler for it when one
/// serves (a job lost with its zygote runs again plainly), else a plain
/// spawn under bwrap. `stop` kills it (a cancel or the deadline).
pub fn run_compile(
    compile: &ValidCompile,
    root: &Path,
    sandbox: &Sandbox,
    limits: &Limits,
    stop: &Stop,
) -> Result<CompileOutcome> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // The deadline: the compile is killed when it passes.
        s.spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limits.timeout)
            {
                stop.expire();
            }
        });
        let r = run_unbounded_in_time(compile, root, sandbox, limits, stop);
        drop(tx);
        r
    })
}

fn run_unbounded_in_time(
    compile: &ValidCompile,
    root: &Path,
    sandbox: &Sandbox,
    limits: &Limits,
    stop: &Stop,
) -> Result<CompileOutcome> {
    let view = root.with_file_name("view");
    if let Some(job) = warm_job(compile, root, &view, sandbox, limits)? {
        let (mut child, trace) = job;
        stop.started(Target::Process(child.id() as i32));
        let out = child.wait_with_output_capped(limits.output_cap);
        stop.ended();
        drop(child);
        match out {
            Ok((o, truncated)) => {
                return Ok(CompileOutcome {
                    status: o.status,
                    stdout: o.stdout,
                    stderr: o.stderr,
                    truncated,
                    trace: read_trace(trace)?,
                    warm: true,
                    timed_out: stop.is_expired(),
                })
            }
            // The zygote died under the job: run it again plainly.
            Err(e) if crate::warm::is_lost(&e) => {}
            Err(e) => return Err(e).context("waiting for the warm compiler's job"),
        }
    }
    let trace = trace_file()?;
    let mut child = spawn(compile, root, sandbox, limits, &trace)?;
    stop.started(Target::Group(child.id() as i32));
    let out = capped_output(&mut child, limits.output_cap);
    stop.ended();
    let (status, stdout, stderr, truncated) =
        out.with_context(|| format!("running {}", compile.argv[0]))?;
    Ok(CompileOutcome {
        status,
        stdout,
        stderr,
        truncated,
        trace: read_trace(trace)?,
        warm: false,
        timed_out: stop.is_expired(),
    })
}

/// An unlinked file for the trace, appended to by every traced process.
fn trace_file() -> Result<std::fs::File> {
    let f = tempfile::tempfile().context("a trace file")?;
    // O_APPEND: the compile's processes share the description.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_APPEND);
    }
    Ok(f)
}

fn read_trace(mut f: std::fs::File) -> Result<String> {
    f.rewind()?;
    let mut v = Vec::new();
    // A trace is lines of paths; a compile that wrote gigabytes into it
    // is cut (and then fails the hermetic check: no end lines).
    f.take(64 << 20).read_to_end(&mut v)?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

/// The environment of a compile: the validated variables, then the
/// tracing (the shim's descriptor).
fn compile_env(compile: &ValidCompile) -> Vec<(String, String)> {
    let mut env = compile.env.clone();
    env.push(("THINLTO_TRACE_FD".into(), TRACE_FD.to_string()));
    env
}

/// The compile as a job of the warm compiler, in the sandbox (the job
/// enters it: `zygote.c`), if one serves its compiler.
#[allow(clippy::type_complexity)]
fn warm_job(
    compile: &ValidCompile,
    root: &Path,
    view: &Path,
    sandbox: &Sandbox,
    limits: &Limits,
) -> Result<Option<(crate::warm::ChildHandle, std::fs::File)>> {
    // The zygote's child enters the sandbox itself only as root (it
    // switches uid); a worker that is not root runs plain spawns, in
    // bwrap's user namespace.
    if sandbox.on() && !sandbox.separate_uid() {
        return Ok(None);
    }
    let trace = trace_file()?;
    let mut env = compile_env(compile);
    if sandbox.on() {
        std::fs::create_dir_all(view)
            .with_context(|| format!("cannot create {}", view.display()))?;
        let (uid, gid) = sandbox.id.unwrap_or((euid(), euid()));
        let ro: Vec<String> = sandbox
            .view
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        env.extend([
            (
                "THINLTO_SANDBOX_VIEW".into(),
                view.to_string_lossy().into_owned(),
            ),
            (
                "THINLTO_SANDBOX_ROOT".into(),
                root.to_string_lossy().into_owned(),
            ),
            ("THINLTO_SANDBOX_RO".into(), ro.join("\n")),
            ("THINLTO_SANDBOX_ID".into(), format!("{uid}:{gid}")),
            (
                "THINLTO_SANDBOX_LIMITS".into(),
                format!(
                    "{}:{}:{}",
                    limits.memory, limits.file_size, limits.processes
                ),
            ),
        ]);
    }
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    let place = crate::warm::JobPlace {
        cwd: root,
        env: &env,
        trace_fd: Some((trace.as_raw_fd(), TRACE_FD)),
    };
    Ok(crate::warm::try_warm(&compile.argv, None, Some(&place)).map(|c| (c, trace)))
}

/// A plain compile under bwrap (or bare with --no-sandbox): argv[0] as
/// the action spells it, found on the sandbox's PATH.
fn spawn(
    compile: &ValidCompile,
    root: &Path,
    sandbox: &Sandbox,
    limits: &Limits,
    trace: &std::fs::File,
) -> Result<std::process::Child> {
    let shim = crate::warm::shim::path().ok();
    let mut env = compile_env(compile);
    let mut cmd;
    // Kept open until spawned, inherited by bwrap: the shim it copies in
    // (from where only the worker can read it).
    let mut keep: Vec<OwnedFd> = Vec::new();
    match &sandbox.bwrap {
        None => {
            cmd = Command::new(&compile.compiler.exe);
            cmd.arg0(&compile.argv[0])
                .args(&compile.argv[1..])
                .current_dir(root)
                .env_clear();
            if let Some(s) = &shim {
                env.push(("LD_PRELOAD".into(), s.to_string_lossy().into_owned()));
            }
            cmd.envs(env);
        }
        Some(bwrap) => {
            cmd = Command::new(bwrap);
            cmd.args([
                "--unshare-all",
                "--die-with-parent",
                "--new-session",
                "--clearenv",
            ]);
            // First: a bind below /tmp (a compiler installed there) must
            // not be covered by the tmpfs.
            cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
            for p in &sandbox.view {
                match std::fs::read_link(p) {
                    Ok(target) => {
                        cmd.arg("--symlink").arg(target).arg(p);
                    }
                    Err(_) => {
                        cmd.arg("--ro-bind").arg(p).arg(p);
                    }
                }
            }
            // The shim lives where only the worker can read it: bwrap
            // copies it in from a descriptor.
            if let Some(s) = &shim {
                let f = std::fs::File::open(s)
                    .with_context(|| format!("cannot open {}", s.display()))?;
                cmd.arg("--ro-bind-data")
                    .arg(f.as_raw_fd().to_string())
                    .arg(SANDBOX_SHIM);
                env.push(("LD_PRELOAD".into(), SANDBOX_SHIM.into()));
                keep.push(f.into());
            }
            cmd.arg("--bind").arg(root).arg(root);
            cmd.arg("--chdir").arg(root);
            let dir = on_path(&compile.argv[0])
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("/usr/bin"));
            env.push(("PATH".into(), dir.to_string_lossy().into_owned()));
            for (k, v) in &env {
                cmd.arg("--setenv").arg(k).arg(v);
            }
            cmd.arg("--").args(&compile.argv).env_clear();
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a cancel or the deadline kills the
        // compile and whatever it started (`Stop`), not the worker.
        .process_group(0);
    if let (Some(_), Some((uid, gid))) = (&sandbox.bwrap, sandbox.id) {
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(uid).gid(gid);
    }
    let trace_fd = trace.as_raw_fd();
    let inherited: Vec<i32> = keep.iter().map(|f| f.as_raw_fd()).collect();
    let rl = [
        (libc::RLIMIT_AS, limits.memory),
        (libc::RLIMIT_FSIZE, limits.file_size),
        (libc::RLIMIT_NPROC, limits.processes),
        (libc::RLIMIT_CORE, 0),
    ];
    // SAFETY: only async-signal-safe calls (prctl, dup2, fcntl,
    // setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // A worker that dies takes its compile with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(trace_fd, TRACE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &fd in &inherited {
                // Inherited by bwrap (std opens everything CLOEXEC).
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            for (res, v) in rl {
                let r = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", compile.argv[0]))?;
    drop(keep);
    Ok(child)
}

/// Where a plain spawn's sandbox has the shim.
const SANDBOX_SHIM: &str = "/run/thinlto-shim.so";

/// A child's stdout and stderr (each cut at `cap`, the rest drained and
/// dropped), then its status.
fn capped_output(
    child: &mut std::process::Child,
    cap: usize,
) -> std::io::Result<(ExitStatus, Vec<u8>, Vec<u8>, bool)> {
    let out = child.stdout.take();
    let err = child.stderr.take();
    let (o, e) = std::thread::scope(|s| {
        let o = s.spawn(move || out.map(|r| drain_capped(r, cap)).unwrap_or_default());
        let e = drain_capped_opt(err, cap);
        (o.join().unwrap_or_default(), e)
    });
    let status = child.wait()?;
    Ok((status, o.0, e.0, o.1 || e.1))
}

fn drain_capped_opt<R: Read>(r: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    r.map(|r| drain_capped(r, cap)).unwrap_or_default()
}

/// Everything `r` gives, the first `cap` bytes kept.
pub fn drain_capped<R: Read>(mut r: R, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 16384];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, cut)
}

/// The owner of `p` (tests and checks).
pub fn owner(p: &Path) -> Option<u32> {
    std::fs::symlink_metadata(p).ok().map(|m| m.uid())
}
