//! `thinlto-backend worker`: a Remote Workers API bot that runs a REAPI
//! farm's compile actions (BuildGrid's Bots service).
//!
//! Each of `--jobs` bot sessions (one lease at a time each) does:
//! `CreateBotSession` with its compilers' identities as properties of its
//! primary device (`thinlto-compiler=<identity>`, one per compiler: the
//! scheduler gives it only actions that ask for one of them), then
//! `UpdateBotSession` in a loop: a long poll for a lease, which BuildGrid
//! hands out ACTIVE with the whole `Action` as its payload; the bot runs
//! it ([`exec`]: input root from the local blob store, the compile under
//! the tracing shim, [`hermetic`] check, outputs uploaded) while it keeps
//! its session alive, and reports the lease COMPLETED with the
//! `ActionResult`. A bot that dies loses its session after the server's
//! keepalive timeout, and BuildGrid gives the lease to another bot.
//!
//! A lease the server cancels (CancelOperation from a client: BuildGrid
//! drops it from the session) is seen at the next keepalive: its compile
//! is killed and nothing is uploaded or reported.
//!
//! Each compile is a job of the warm compiler for its compiler when one
//! serves (`crate::warm`: a zygote per compiler, started with the worker,
//! forking a job into the action's input root with the action's
//! environment), else a plain spawn; traced the same either way. The
//! worker's log says which ran each action.

pub mod batch;
pub mod compile;
pub mod compilers;
pub mod exec;
pub mod hermetic;
pub mod policy;
pub mod sandbox;
pub mod stop;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use prost::Message;

use crate::reapi::bots::{
    self, BotSession, BotStatus, BotsClient, CreateBotSessionRequest, Device, Lease, LeaseState,
    Property, UpdateBotSessionRequest,
};
use crate::reapi::COMPILER_PROPERTY;
use crate::reapi::{RemoteCache, RemoteOptions};
use compilers::Compiler;
use store::BlobStore;

/// How long one UpdateBotSession may wait for work. BuildGrid answers
/// after 80% of the smaller of this and its bot-session keepalive timeout.
const POLL_DEADLINE: Duration = Duration::from_secs(30);
/// The deadline of a keepalive update (a bot at capacity is not held).
const KEEPALIVE_DEADLINE: Duration = Duration::from_secs(10);
/// Failed updates in a row after which the session is created anew.
const MAX_UPDATE_FAILURES: u32 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The REAPI server with the Bots service: grpc://HOST:PORT or grpcs://
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The REAPI instance name
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Leases run at once (one bot session each), and compiles at once
    /// over all of them (a batched action's compiles run in parallel)
    /// [default: this machine's cores]
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// This worker's name (bot ids are NAME-1, NAME-2 …) [default: the host name and pid]
    #[arg(long)]
    pub name: Option<String>,
    /// A compiler this worker offers, as actions spell it (repeatable) [default: every clang-N on PATH]
    #[arg(long = "compiler", value_name = "NAME")]
    pub compilers: Vec<String>,
    /// Where the blob store and the input roots go; best on a tmpfs, where each job's fresh directories cost little [default: a new directory in $TMPDIR, else in /dev/shm when it is a tmpfs, else in /tmp]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Run every compile as a fresh process, not as a job of a warm
    /// compiler (one per compiler, started with the worker, serving each
    /// action in its input root; see `thinlto-backend --help`, --warm)
    #[arg(long)]
    pub no_warm: bool,
    /// gRPC metadata sent with every call to the server, e.g.
    /// 'authorization=Bearer …' (repeatable); a token belongs in
    /// --remote-header-file, which only you can read
    #[arg(long, value_name = "NAME=VALUE", value_parser = crate::remote_headers::parse_header)]
    pub remote_header: Vec<(String, String)>,
    /// Headers from a file, one `NAME: VALUE` or `NAME=VALUE` per line
    /// (as the client's --remote-header-file; also
    /// THINLTO_REMOTE_HEADER_FILE, and $THINLTO_REMOTE_HEADERS)
    #[arg(long, value_name = "FILE", env = "THINLTO_REMOTE_HEADER_FILE")]
    pub remote_header_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for a grpcs:// server (default: the system's)
    #[arg(long, value_name = "FILE")]
    pub remote_tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: sandbox::SandboxArgs,
}

/// Runs the worker until a signal or a fatal error.
/// `header_env`: `$THINLTO_REMOTE_HEADERS`, taken from the environment
/// before any thread (`remote_headers::take_env`).
pub fn main(args: WorkerArgs, header_env: Option<&std::ffi::OsStr>) -> Result<()> {
    // Leases at once: as many as this machine's cores unless told.
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    // Before any thread: the identities run the compilers.
    let compilers = compilers::discover(&args.compilers)?;
    let name = args.name.clone().unwrap_or_else(default_name);
    let cas = RemoteCache::connect(&RemoteOptions {
        url: args.server.clone(),
        instance: args.instance.clone(),
        headers: crate::remote_headers::gather(
            header_env,
            &args.remote_header,
            args.remote_header_file.as_slice(),
        )?,
        tls_ca: args.remote_tls_ca.clone(),
    })?;
    let temp;
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            let parent = default_work_parent();
            temp = tempfile::Builder::new()
                .prefix("thinlto-worker.")
                .tempdir_in(&parent)
                .with_context(|| format!("a work directory in {}", parent.display()))?;
            temp.path().to_path_buf()
        }
    };
    let sandbox = sandbox::Sandbox::new(&args.sandbox, &compilers)?;
    if let Some(v) = sandbox.view().iter().find(|v| work.starts_with(v)) {
        bail!(
            "the work directory {} is inside {}, which every sandbox sees: choose another --work-dir",
            work.display(),
            v.display()
        );
    }
    let store = BlobStore::new(work.join("blobs"))?;
    // The store is the worker's alone; the work directory can be walked
    // through, not listed (bwrap, running as the sandbox uid, walks to
    // an action's root to bind it).
    {
        use std::os::unix::fs::PermissionsExt;
        for (d, mode) in [(work.clone(), 0o711), (work.join("blobs"), 0o700)] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot chmod {}", d.display()))?;
        }
    }
    eprintln_one_write!(
        "thinlto-backend worker {name}: {}",
        if !sandbox.on() {
            "NO sandbox (--no-sandbox): every client can run code as this worker's user".to_string()
        } else if sandbox.separate_uid() {
            format!(
                "compiles sandboxed (bwrap), uid {}",
                args.sandbox.sandbox_id
            )
        } else {
            "compiles sandboxed (bwrap), under this worker's uid in a user namespace".to_string()
        }
    );
    if !is_tmpfs(&work) {
        // Said, not refused: a disk works, at a price (default_work_parent).
        eprintln_one_write!(
            "thinlto-backend worker {name}: the work directory {} is not on a tmpfs: each job's input root is a fresh tree of directories, which costs more CPU on a disk file system (~21 ms a Linux backend job on ext4, ~3 ms on tmpfs); --work-dir on a tmpfs (/dev/shm) is cheaper",
            work.display()
        );
    }
    for c in &compilers {
        eprintln_one_write!(
            "thinlto-backend worker {name}: {} ({}) {COMPILER_PROPERTY}={}",
            c.word,
            c.exe.display(),
            c.identity
        );
    }
    // On this thread, which outlives the bots: the zygotes die with the
    // thread that started them. A compiler that cannot run warm is said
    // once, and its actions are plain spawns.
    let words: Vec<&str> = compilers.iter().map(|c| c.word.as_str()).collect();
    compile::set_compile_slots(jobs);
    let _warm = (!args.no_warm).then(|| crate::warm::Warm::start_each(&words, true));
    let shared = Shared {
        cas,
        store,
        compilers,
        sandbox,
        sandbox_args: args.sandbox.clone(),
        work,
        instance: args.instance.clone(),
        actions: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        let bots: Vec<_> = (1..=jobs)
            .map(|i| {
                let id = format!("{name}-{i}");
                let shared = &shared;
                s.spawn(move || bot(shared, &id))
            })
            .collect();
        let mut first = Ok(());
        for b in bots {
            let r = b
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a bot thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Where a worker's work directory goes without `--work-dir`: `$TMPDIR`
/// when set, else `/dev/shm` when it is a tmpfs this user can write, else
/// `/tmp`. Each job's input root is a fresh tree of directories, made and
/// removed: on ext4 that cost the worker ~21 ms of CPU a Linux backend
/// job, most of its CPU (its inode allocator scanning the inodes freed
/// just before, `recently_deleted`, seen with perf), on tmpfs ~3 ms (issue
/// 26). The blob store goes with it, so it is held in memory there: as
/// large as the inputs the worker has fetched (~60 MB for a Linux build).
pub fn default_work_parent() -> PathBuf {
    if let Some(t) = std::env::var_os("TMPDIR").filter(|t| !t.is_empty()) {
        return PathBuf::from(t);
    }
    let shm = std::path::Path::new("/dev/shm");
    if is_writable_tmpfs(shm) {
        shm.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

fn is_writable_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads only the NUL-terminated path.
    is_tmpfs(dir) && unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Whether `dir` is on a tmpfs (false when it cannot be told).
fn is_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 };
    ok && st.f_type == libc::TMPFS_MAGIC
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

struct Shared {
    cas: RemoteCache,
    store: BlobStore,
    compilers: Vec<Compiler>,
    sandbox: sandbox::Sandbox,
    sandbox_args: sandbox::SandboxArgs,
    work: PathBuf,
    instance: String,
    /// Numbers the actions' directories.
    actions: AtomicU64,
}

/// One bot session, until a signal.
fn bot(shared: &Shared, id: &str) -> Result<()> {
    let mut client = BotsClient::new(shared.cas.svc.clone());
    let mut session = create_retrying(shared, &mut client, id)?;
    let mut failures = 0;
    while crate::signals::pending_signal().is_none() {
        let next = session.leases.iter().position(|l| {
            l.state == LeaseState::Pending as i32 || l.state == LeaseState::Active as i32
        });
        let result = match next {
            Some(i) => run_lease(shared, &mut client, &mut session, i, id),
            None => update(shared, &mut client, &session, POLL_DEADLINE),
        };
        match result {
            Ok(s) => {
                session = s;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                eprintln_one_write!("thinlto-backend worker {id}: {e:#}");
                if failures >= MAX_UPDATE_FAILURES {
                    std::thread::sleep(Duration::from_secs(1));
                    session = create_retrying(shared, &mut client, id)?;
                    failures = 0;
                } else {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
    Ok(())
}

/// [`create`], again and again while the server is busy or away (a
/// server's thread pool full of clients' Execute streams answers
/// RESOURCE_EXHAUSTED): a worker waits to join its farm, it does not quit.
fn create_retrying(shared: &Shared, client: &mut BotsClient, id: &str) -> Result<BotSession> {
    let mut pause = Duration::from_millis(200);
    loop {
        match create(shared, client, id) {
            Err(e)
                if crate::reapi::is_transient(&e) && crate::signals::pending_signal().is_none() =>
            {
                eprintln_one_write!("thinlto-backend worker {id}: {e:#}; trying again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

fn create(shared: &Shared, client: &mut BotsClient, id: &str) -> Result<BotSession> {
    let properties = shared
        .compilers
        .iter()
        .map(|c| Property {
            key: COMPILER_PROPERTY.into(),
            value: c.identity.clone(),
        })
        .collect();
    let session = BotSession {
        bot_id: id.to_string(),
        status: BotStatus::Ok as i32,
        worker: Some(bots::Worker {
            devices: vec![Device {
                handle: id.to_string(),
                properties,
            }],
        }),
        ..Default::default()
    };
    let req = CreateBotSessionRequest {
        parent: shared.instance.clone(),
        bot_session: Some(session),
    };
    shared.cas.rt.block_on(client.create(req)).with_context(|| {
        format!(
            "bot {id}: cannot create a bot session on {}",
            shared.cas.url
        )
    })
}

fn update(
    shared: &Shared,
    client: &mut BotsClient,
    session: &BotSession,
    deadline: Duration,
) -> Result<BotSession> {
    let req = UpdateBotSessionRequest {
        name: session.name.clone(),
        bot_session: Some(session.clone()),
    };
    shared.cas.rt.block_on(client.update(req, deadline))
}

/// Runs lease `i` of `session`, keeping the session alive meanwhile, and
/// reports it COMPLETED: the session the server answers with.
fn run_lease(
    shared: &Shared,
    client: &mut BotsClient,
    session: &mut BotSession,
    i: usize,
    id: &str,
) -> Result<BotSession> {
    let lease_id = session.leases[i].id.clone();
    session.leases[i].state = LeaseState::Active as i32;
    let action = session.leases[i]
        .payload
        .as_ref()
        .map(|p| re::Action::decode(p.value.as_slice()));
    let outcome: Result<exec::Reported> = match action {
        None => Err(anyhow::anyhow!("lease {lease_id} has no payload")),
        Some(Err(e)) => Err(anyhow::anyhow!(
            "lease {lease_id}: the payload is not an Action: {e}"
        )),
        Some(Ok(action)) => {
            let n = shared.actions.fetch_add(1, Ordering::Relaxed);
            let dir = exec::action_dir(&shared.work, n);
            let (tx, rx) = mpsc::channel();
            let stop = exec::Stop::default();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let ctx = exec::Worker {
                        cas: &shared.cas,
                        store: &shared.store,
                        compilers: &shared.compilers,
                        sandbox: &shared.sandbox,
                        sandbox_args: &shared.sandbox_args,
                        bot: id,
                    };
                    let r = std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))
                        .and_then(|()| exec::run(&ctx, &action, &dir, &stop));
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = tx.send(r);
                });
                loop {
                    let every = bots::keepalive_interval(session, std::time::SystemTime::now());
                    match rx.recv_timeout(every) {
                        Ok(r) => break r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // Alive: the lease stays ACTIVE (a failed
                            // keepalive is retried at the next tick).
                            if let Ok(s) = update(shared, client, session, KEEPALIVE_DEADLINE) {
                                *session = s;
                                // BuildGrid 0.4.4 drops a cancelled lease
                                // from the session (the spec also allows
                                // it to come back CANCELLED, which a bot
                                // must not send back): either way the
                                // compile stops and nothing is reported.
                                let i = session.leases.iter().position(|l| l.id == lease_id);
                                match i {
                                    Some(i)
                                        if session.leases[i].state
                                            != LeaseState::Cancelled as i32 =>
                                    {
                                        session.leases[i].state = LeaseState::Active as i32;
                                    }
                                    _ => {
                                        if let Some(i) = i {
                                            session.leases.remove(i);
                                        }
                                        if !stop.is_cancelled() {
                                            stop.cancel();
                                        }
                                    }
                                }
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            break Err(anyhow::anyhow!("the action's thread died"))
                        }
                    }
                }
            })
        }
    };
    let (result, status) = match outcome {
        Ok(r) => (Some(r.result), r.status),
        Err(e) if e.is::<exec::LeaseCancelled>() => {
            eprintln_one_write!("thinlto-backend worker {id}: lease {lease_id}: {e}");
            return update(shared, client, session, KEEPALIVE_DEADLINE);
        }
        Err(e) => {
            eprintln_one_write!("thinlto-backend worker {id}: lease {lease_id}: {e:#}");
            (
                None,
                RpcStatus {
                    code: tonic::Code::Internal as i32,
                    message: format!("{e:#}"),
                    ..Default::default()
                },
            )
        }
    };
    let Some(lease) = session.leases.iter_mut().find(|l| l.id == lease_id) else {
        // The server took the lease back meanwhile: nothing to report.
        return update(shared, client, session, KEEPALIVE_DEADLINE);
    };
    *lease = Lease {
        id: lease_id,
        state: LeaseState::Completed as i32,
        status: Some(status),
        result: result.map(|r| Any {
            type_url: bots::type_url("ActionResult"),
            value: r.encode_to_vec(),
        }),
        payload: None,
    };
    update(shared, client, session, KEEPALIVE_DEADLINE)
}
