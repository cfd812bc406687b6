//! `--warm`: backend compiles without the compiler's start-up cost.
//!
//! A plain `clang -x ir … -c` spends about 20 ms loading and relocating
//! its libraries, running LLVM's static constructors and tearing down
//! (`clang --version`: 22 ms wall, 1.3 ms of it in main). With `--warm`,
//! thinlto-backend starts the compiler once with an LD_PRELOAD shim
//! (`warm/zygote.c`, built by build.rs, embedded and put where only the
//! user can write by [`shim`]) that stops it
//! just before `main` and turns it into a fork server (a zygote): each job
//! is a fork of that process which calls the compiler's real `main` with
//! the job's argv, environment, working directory and standard streams
//! (passed as file descriptors). The child starts where a fresh process
//! would enter main, so its output is the same, byte for byte.
//!
//! [`spawn_compiler`] is the one entry point of the scheduler: it returns
//! a [`ChildHandle`], a job of the warm compiler or a plain spawn. Plain
//! spawns are used, with one line on stderr saying why, when the shim
//! does not load (a static compiler, another libc), when the compiler is
//! a wrapper (a shell script: another executable loads the shim and
//! refuses; an executable not named clang, such as ccache), when the
//! compiler on disk is not the one the zygote runs (keyed on the
//! canonical path and dev/ino/size/mtime, checked for every job), when
//! the zygote refuses a job (e.g. it has more than one thread), and after
//! the zygote died (the jobs it had running are run again, plainly).
//!
//! Every job is a child of the zygote, not of thinlto-backend: the
//! scheduler's kill by pid still reaches it (same user), and the zygote
//! keeps it unreaped until the job's connection closes, after the
//! scheduler has forgotten the pid. The zygote and its children die with
//! thinlto-backend (EOF on the control socket; PDEATHSIG).

pub mod shim;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the compiler may take to load before we give up on it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);

/// An executable's identity: a zygote serves only jobs for the very file
/// it was started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
}

impl Identity {
    fn of(path: &Path) -> io::Result<Identity> {
        let m = std::fs::metadata(path)?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
        })
    }

    /// As the shim prints it for the check in the zygote.
    fn text(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.dev, self.ino, self.size, self.mtime, self.mtime_ns
        )
    }
}

/// The running warm compiler.
struct Zygote {
    /// argv[0] as the jobs spell it.
    argv0: String,
    /// The executable it resolves to.
    exe: PathBuf,
    key: Identity,
    ctl: OwnedFd,
    pid: u32,
    devnull: OwnedFd,
    /// Set when it died or refused: no more jobs go to it.
    retired: AtomicBool,
    served: AtomicUsize,
}

enum State {
    Off,
    /// Started; its hello not read yet.
    Starting {
        argv0: String,
        exe: PathBuf,
        key: Identity,
        ctl: OwnedFd,
        child: Child,
    },
    Ready(Arc<Zygote>, Child),
    /// No zygote: plain spawns (the reason was printed). The process, if
    /// any, is reaped at the end.
    Failed(Option<Child>),
}

/// The warm compilers of this process, by argv[0] as the jobs spell it
/// (the engine starts one; a worker one per compiler it offers).
static STATE: Mutex<Vec<(String, State)>> = Mutex::new(Vec::new());
static PLAIN: AtomicUsize = AtomicUsize::new(0);

/// Whether the fallback to plain spawns is said (see [`Warm::start`]).
static ANNOUNCE: AtomicBool = AtomicBool::new(true);

fn say(what: &str) {
    if ANNOUNCE.load(Ordering::Relaxed) {
        eprintln_one_write!("thinlto-backend: warm compiler: {what}; plain spawns");
    }
}

/// The guard of a warm run: [`Warm::start`] starts the zygote for the
/// compiler `cc` (its hello is read by the first job); dropping the guard
/// stops it and reaps it (so that its children's CPU time counts as ours).
/// Its zygotes die with the thread that started them (PDEATHSIG): start
/// them on a thread that lives as long as the guard.
pub struct Warm(());

impl Warm {
    /// `announce`: say on stderr why plain spawns take over, if they do.
    pub fn start(cc: &str, announce: bool) -> Warm {
        Warm::start_each(&[cc], announce)
    }

    /// A zygote for each compiler of `ccs` (a job goes to the one its
    /// argv[0] names).
    pub fn start_each(ccs: &[&str], announce: bool) -> Warm {
        ANNOUNCE.store(announce, Ordering::Relaxed);
        let mut all = STATE.lock().unwrap();
        for cc in ccs {
            let st = match shim::path() {
                // shim::path said why, once, for the tracing too.
                Err(_) => State::Failed(None),
                Ok(shim) => match start(cc, shim) {
                    Ok(s) => s,
                    Err(why) => {
                        say(&why);
                        State::Failed(None)
                    }
                },
            };
            all.push((cc.to_string(), st));
        }
        Warm(())
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        let all = std::mem::take(&mut *STATE.lock().unwrap());
        let mut served = 0;
        for (_, st) in all {
            served += stop(st);
        }
        if std::env::var_os("THINLTO_WARM_STATS").is_some_and(|v| v == "1") {
            eprintln_one_write!(
                "thinlto-backend: warm compiler: {served} jobs served, {} spawned plainly",
                PLAIN.load(Ordering::Relaxed)
            );
        }
    }
}

/// Stops and reaps one zygote; the jobs it served.
fn stop(st: State) -> usize {
    match st {
        State::Off | State::Failed(None) => 0,
        State::Failed(Some(mut child)) => {
            let _ = child.wait();
            0
        }
        State::Starting { ctl, mut child, .. } => {
            drop(ctl);
            let _ = child.kill();
            let _ = child.wait();
            0
        }
        State::Ready(z, mut child) => {
            // EOF on its control socket (even while a handle to it
            // lives): the zygote ends; reaped, its children's CPU
            // time counts as ours.
            shutdown_fd(z.ctl.as_raw_fd());
            let _ = child.wait();
            z.served.load(Ordering::Relaxed)
        }
    }
}

fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutting down a socket we own; EOF for the zygote even while
    // another handle to it lives.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// argv[0] as Command would find it: a path, or the first executable of
/// that name on PATH.
pub(crate) fn resolve(argv0: &str) -> Option<PathBuf> {
    if argv0.contains('/') {
        return std::fs::canonicalize(argv0).ok();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path).find_map(|d| {
        let p = d.join(argv0);
        let m = std::fs::metadata(&p).ok()?;
        (m.is_file() && m.mode() & 0o111 != 0)
            .then(|| std::fs::canonicalize(&p).ok())
            .flatten()
    })
}

/// LD_PRELOAD with the shim first (and whatever the user preloads after).
pub(crate) fn preload_with(shim: PathBuf) -> OsString {
    let mut preload = shim.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    preload
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn start(cc: &str, shim: PathBuf) -> Result<State, String> {
    let exe = resolve(cc).ok_or_else(|| format!("cannot find the compiler {cc}"))?;
    // A wrapper that is an ELF program (ccache, sccache, distcc) would load
    // the shim and serve jobs correctly but uselessly (each one execs the
    // real compiler): the warm compiler is clang itself, by its file name
    // once every symlink is resolved (clang-19 -> …/llvm-19/bin/clang).
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    if !name.contains("clang") {
        return Err(format!(
            "{} is not clang (a wrapper such as ccache?)",
            exe.display()
        ));
    }
    let key = Identity::of(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let (ctl, theirs) = socketpair().map_err(|e| format!("socketpair: {e}"))?;
    let preload = preload_with(shim);
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(cc);
    cmd.env("LD_PRELOAD", preload)
        .env("THINLTO_ZYGOTE_FD", fd.to_string())
        .env("THINLTO_ZYGOTE_EXE", key.text())
        .env("THINLTO_ZYGOTE_PARENT", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, prctl) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            // The control socket is the one descriptor the zygote inherits.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Dies with this thread (the caller's: main's).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot run {cc}: {e}"))?;
    drop(theirs);
    Ok(State::Starting {
        argv0: cc.to_string(),
        exe,
        key,
        ctl,
        child,
    })
}

/// One received message and at most one descriptor; None on EOF.
fn recv(
    fd: RawFd,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    if let Some(t) = timeout {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, t.as_millis() as i32) };
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
    }
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; its pointers name live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: msg is set up as above.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut passed = None;
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let k = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(c) as *const i32;
                for i in 0..k {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if passed.is_none() {
                        passed = Some(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((n, passed)))
}

/// Sends one message with descriptors.
fn send(fd: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; its pointers name live buffers,
    // the control buffer is large enough for 5 descriptors.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    unsafe {
        let len = libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize;
        assert!(len <= std::mem::size_of_val(&cbuf));
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = len as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut i32, fds.len());
    }
    loop {
        // SAFETY: msg is set up as above.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads the zygote's hello: Ready, or Failed with the reason printed.
fn finish_start(st: State) -> State {
    let State::Starting {
        argv0,
        exe,
        key,
        ctl,
        mut child,
    } = st
    else {
        return st;
    };
    let mut buf = [0u8; 1024];
    let why = match recv(ctl.as_raw_fd(), &mut buf, Some(HELLO_TIMEOUT)) {
        Ok(Some((n, _))) if buf[0] == b'H' && n == 45 => {
            let w = |i: usize| u64::from_ne_bytes(buf[1 + 8 * i..9 + 8 * i].try_into().unwrap());
            let have = Identity {
                dev: w(0),
                ino: w(1),
                size: w(2),
                mtime: w(3) as i64,
                mtime_ns: w(4) as i64,
            };
            if have == key {
                let devnull = match std::fs::File::open("/dev/null") {
                    Ok(f) => OwnedFd::from(f),
                    Err(e) => {
                        say(&format!("/dev/null: {e}"));
                        return State::Failed(Some(child));
                    }
                };
                let pid = child.id();
                return State::Ready(
                    Arc::new(Zygote {
                        argv0,
                        exe,
                        key,
                        ctl,
                        pid,
                        devnull,
                        retired: AtomicBool::new(false),
                        served: AtomicUsize::new(0),
                    }),
                    child,
                );
            }
            format!("{} changed while it started", exe.display())
        }
        Ok(Some((n, _))) if buf[0] == b'R' => String::from_utf8_lossy(&buf[1..n]).into_owned(),
        Ok(_) => {
            // It closed the socket: it ran without the shim (and is
            // exiting, or is still at work: then it is stopped).
            let mut status = None;
            for _ in 0..200 {
                status = child.try_wait().ok().flatten();
                if status.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let status = match status {
                Some(s) => s.to_string(),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    "still running".into()
                }
            };
            format!(
                "{argv0} did not load the zygote shim ({status}: a static binary or another libc?)"
            )
        }
        Err(e) => {
            let _ = child.kill();
            format!("{argv0} did not start as a warm compiler: {e}")
        }
    };
    drop(ctl);
    say(&why);
    State::Failed(Some(child))
}

/// The zygote for a job whose compiler is `argv0`, if one serves it.
fn zygote_for(argv0: &str) -> Option<Arc<Zygote>> {
    let mut all = STATE.lock().unwrap();
    let (_, st) = all.iter_mut().find(|(cc, _)| cc == argv0)?;
    if matches!(*st, State::Starting { .. }) {
        let s = std::mem::replace(st, State::Off);
        *st = finish_start(s);
    }
    let State::Ready(z, _) = &*st else {
        return None;
    };
    if z.retired.load(Ordering::Relaxed) || z.argv0 != argv0 {
        return None;
    }
    // The file on disk must still be the one the zygote runs (an upgrade
    // of the compiler mid-run goes to plain spawns).
    if Identity::of(&z.exe).ok() != Some(z.key) {
        z.retired.store(true, Ordering::Relaxed);
        say(&format!(
            "{} changed since the warm compiler started",
            z.exe.display()
        ));
        return None;
    }
    Some(z.clone())
}

/// The error of a job lost with its zygote: run it again (plainly).
#[derive(Debug)]
struct Lost;
impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the warm compiler died")
    }
}
impl std::error::Error for Lost {}

/// Whether a job's error means that the warm compiler died under it (the
/// job's compile is gone too): the caller runs the job again.
pub fn is_lost(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<Lost>())
}

fn lost(z: &Zygote) -> io::Error {
    if !z.retired.swap(true, Ordering::Relaxed) {
        say(&format!("the warm compiler (pid {}) died", z.pid));
    }
    io::Error::other(Lost)
}

/// A compile: a plain child, or a job of the warm compiler.
pub enum ChildHandle {
    Plain(Option<Child>),
    Warm(WarmChild),
}

/// A job of the warm compiler: the zygote's child `pid`.
pub struct WarmChild {
    pid: u32,
    /// Kept open until the handle is dropped: the zygote reaps the child
    /// only then (so its pid is not recycled while the caller may still
    /// signal it).
    conn: OwnedFd,
    pidfd: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    zygote: Arc<Zygote>,
}

/// Starts the compile `argv` (stdin /dev/null, stdout and stderr piped),
/// in the warm compiler when `--warm` started one for `argv[0]`. With
/// `trace`, the shim appends to that file what the compile reads (the
/// backend cache's extras, `cache/trace.rs`): a warm job and a plain
/// spawn alike get THINLTO_TRACE and the shim in LD_PRELOAD (the warm
/// job has it loaded already; its subprocesses need it).
pub fn spawn_compiler(argv: &[String], trace: Option<&Path>) -> io::Result<ChildHandle> {
    if let Some(c) = try_warm(argv, trace, None) {
        return Ok(c);
    }
    PLAIN.fetch_add(1, Ordering::Relaxed);
    let mut cmd = Command::new(&argv[0]);
    if let Some(t) = trace {
        cmd.env("THINLTO_TRACE", t);
        // Without the shim the trace has no header, and the result is
        // simply not stored (cache/trace.rs).
        if let Ok(shim) = shim::path() {
            cmd.env("LD_PRELOAD", preload_with(shim));
        }
    }
    let c = cmd
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(ChildHandle::Plain(Some(c)))
}

/// Where a warm job runs and with what environment, when not in this
/// process's own (a worker's action: its input root, its Command's
/// variables only).
pub struct JobPlace<'a> {
    pub cwd: &'a Path,
    pub env: &'a [(OsString, OsString)],
    /// A trace descriptor the job gets as a number of its own (the
    /// descriptor here, the number there: the worker's unlinked trace,
    /// `THINLTO_TRACE_FD` in `env`).
    pub trace_fd: Option<(RawFd, i32)>,
}

/// The compile `argv` as a job of the warm compiler for `argv[0]`, if one
/// serves it (traced as [`spawn_compiler`] says); None when none does,
/// the reason said once (the caller spawns it plainly then). `place`:
/// the job's directory and environment [default: this process's].
pub fn try_warm(
    argv: &[String],
    trace: Option<&Path>,
    place: Option<&JobPlace>,
) -> Option<ChildHandle> {
    let z = zygote_for(&argv[0])?;
    match spawn_warm(&z, argv, trace, place) {
        Ok(c) => {
            z.served.fetch_add(1, Ordering::Relaxed);
            Some(ChildHandle::Warm(c))
        }
        Err(e) if is_lost(&e) => None,
        Err(e) => {
            if !z.retired.swap(true, Ordering::Relaxed) {
                say(&e.to_string());
            }
            None
        }
    }
}

fn spawn_warm(
    z: &Arc<Zygote>,
    argv: &[String],
    trace: Option<&Path>,
    place: Option<&JobPlace>,
) -> io::Result<WarmChild> {
    // Traced as a plain spawn is: THINLTO_TRACE, and the shim preloaded
    // so that the programs the job spawns (`as`) trace themselves too.
    let mut trace_vars = Vec::new();
    if let Some(t) = trace {
        trace_vars.push((OsString::from("THINLTO_TRACE"), t.as_os_str().to_owned()));
        if let Ok(shim) = shim::path() {
            trace_vars.push((OsString::from("LD_PRELOAD"), preload_with(shim)));
        }
    }
    let base: Vec<(OsString, OsString)> = match place {
        Some(p) => p.env.to_vec(),
        None => std::env::vars_os().collect(),
    };
    let env: Vec<Vec<u8>> = base
        .into_iter()
        .filter(|(k, _)| !trace_vars.iter().any(|(t, _)| t == k))
        .chain(trace_vars.iter().cloned())
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .collect();
    let mut req = Vec::with_capacity(4096);
    req.push(b'J');
    req.extend_from_slice(&(argv.len() as u32).to_ne_bytes());
    req.extend_from_slice(&(env.len() as u32).to_ne_bytes());
    for s in argv
        .iter()
        .map(|a| a.as_bytes())
        .chain(env.iter().map(|e| &e[..]))
    {
        if s.contains(&0) {
            return Err(io::Error::other("a NUL byte in the command"));
        }
        req.extend_from_slice(s);
        req.push(0);
    }
    let cwd = OwnedFd::from(std::fs::File::open(
        place.map_or(Path::new("."), |p| p.cwd),
    )?);
    let (conn, theirs) = socketpair()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut fds = vec![
        theirs.as_raw_fd(),
        z.devnull.as_raw_fd(),
        out_w.as_raw_fd(),
        err_w.as_raw_fd(),
        cwd.as_raw_fd(),
    ];
    // The sixth: the trace, which the child puts at the number its
    // THINLTO_TRACE_FD says.
    if let Some((fd, _)) = place.and_then(|p| p.trace_fd) {
        fds.push(fd);
    }
    if let Err(e) = send(z.ctl.as_raw_fd(), &req, &fds) {
        return Err(match e.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => lost(z),
            _ => io::Error::other(format!("cannot send a job to the warm compiler: {e}")),
        });
    }
    drop((theirs, out_w, err_w, cwd));
    let mut buf = [0u8; 600];
    match recv(conn.as_raw_fd(), &mut buf, None)? {
        Some((5, pidfd)) if buf[0] == b'P' => Ok(WarmChild {
            pid: i32::from_ne_bytes(buf[1..5].try_into().unwrap()) as u32,
            conn,
            pidfd,
            stdout: Some(out_r),
            stderr: Some(err_r),
            zygote: z.clone(),
        }),
        Some((n, _)) if buf[0] == b'E' => Err(io::Error::other(format!(
            "the warm compiler refused a job: {}",
            String::from_utf8_lossy(&buf[1..n])
        ))),
        Some(_) => Err(io::Error::other("the warm compiler answered nonsense")),
        None => Err(lost(z)),
    }
}

impl ChildHandle {
    /// The compiler's pid (a child of the zygote for a warm job).
    pub fn id(&self) -> u32 {
        match self {
            ChildHandle::Plain(c) => c.as_ref().map_or(0, |c| c.id()),
            ChildHandle::Warm(w) => w.pid,
        }
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) -> io::Result<()> {
        match self {
            ChildHandle::Plain(c) => c.as_mut().map_or(Ok(()), |c| c.kill()),
            ChildHandle::Warm(w) => {
                // SAFETY: the pid stays the job's until this handle is dropped.
                if unsafe { libc::kill(w.pid as i32, libc::SIGKILL) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    /// Collects stdout and stderr, then the exit status, as
    /// [`Child::wait_with_output`]. A warm job whose zygote died under it
    /// is an error for which [`is_lost`] holds, returned once its compile
    /// is gone too. Drop the handle after forgetting the pid.
    pub fn wait_with_output(&mut self) -> io::Result<Output> {
        match self {
            ChildHandle::Plain(c) => c.take().expect("waited once").wait_with_output(),
            ChildHandle::Warm(w) => w.wait_with_output(usize::MAX).map(|(o, _)| o),
        }
    }

    /// As [`Self::wait_with_output`] for a warm job, stdout and stderr
    /// each kept up to `cap` bytes (the rest read and dropped), and
    /// whether any was cut. (A worker's bound; a plain child is the
    /// worker's own business: `worker::sandbox`.)
    pub fn wait_with_output_capped(&mut self, cap: usize) -> io::Result<(Output, bool)> {
        match self {
            ChildHandle::Plain(c) => c
                .take()
                .expect("waited once")
                .wait_with_output()
                .map(|o| (o, false)),
            ChildHandle::Warm(w) => w.wait_with_output(cap),
        }
    }
}

impl WarmChild {
    fn wait_with_output(&mut self, cap: usize) -> io::Result<(Output, bool)> {
        let mut cut = false;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut status: Option<ExitStatus> = None;
        let mut conn_open = true;
        loop {
            let mut fds = Vec::with_capacity(3);
            for fd in [&self.stdout, &self.stderr].into_iter().flatten() {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if status.is_none() && conn_open {
                fds.push(libc::pollfd {
                    fd: self.conn.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if fds.is_empty() {
                break;
            }
            // SAFETY: a valid array of pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for p in fds.iter().filter(|p| p.revents != 0) {
                if p.fd == self.conn.as_raw_fd() {
                    let mut buf = [0u8; 64];
                    match recv(p.fd, &mut buf, None)? {
                        Some((5, _)) if buf[0] == b'S' => {
                            status = Some(ExitStatus::from_raw(i32::from_ne_bytes(
                                buf[1..5].try_into().unwrap(),
                            )))
                        }
                        Some(_) => {}
                        None => conn_open = false,
                    }
                    continue;
                }
                let (slot, sink) = if self.stdout.as_ref().is_some_and(|f| f.as_raw_fd() == p.fd) {
                    (&mut self.stdout, &mut out)
                } else {
                    (&mut self.stderr, &mut err)
                };
                let mut buf = [0u8; 16384];
                // SAFETY: reading into a live buffer of that size.
                let n = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                match n {
                    n if n > 0 => {
                        let room = cap.saturating_sub(sink.len());
                        let n = n as usize;
                        sink.extend_from_slice(&buf[..n.min(room)]);
                        cut |= n > room;
                    }
                    0 => *slot = None,
                    _ => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            *slot = None;
                        }
                    }
                }
            }
        }
        match status {
            Some(status) => Ok((
                Output {
                    status,
                    stdout: out,
                    stderr: err,
                },
                cut,
            )),
            None => {
                // The zygote died: its child has PDEATHSIG, wait until it is
                // gone (its output pipes closed above; the pidfd says when
                // the process itself has exited) before the job runs again.
                if let Some(pidfd) = &self.pidfd {
                    let mut p = libc::pollfd {
                        fd: pidfd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 10_000) };
                }
                Err(lost(&self.zygote))
            }
        }
    }
}
