//! A local REAPI farm (`cargo xtask farm`, and the farm tests): a private
//! PostgreSQL cluster, BuildGrid with execution (Execution, Bots, CAS,
//! ByteStream, action cache) on 127.0.0.1, and `thinlto-backend worker`s.
//!
//! BuildGrid 0.4.4's scheduler (`!sql-scheduler`) needs PostgreSQL: a
//! private cluster (initdb into a temporary directory, a Unix socket
//! there, no TCP) starts in seconds and needs no system service. Its
//! notifier needs psycopg2 in BuildGrid's venv (`buildgrid::ensure`).
//!
//! Everything started here is stopped when its handle is dropped (workers
//! and BuildGrid killed by process group, the cluster stopped, the
//! directory removed), so every exit path of a caller cleans up.

pub mod buildgrid;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The bot-session keepalive of the farm's scheduler, in seconds: how
/// long BuildGrid waits for a silent bot before it gives the bot's lease
/// to another. A worker at work updates its session a third of this
/// apart (`thinlto_backend::reapi::bots::keepalive_interval`, at most
/// every 30 s), and each update costs BuildGrid ~25 ms of CPU: with a
/// minute, an action of a few seconds costs no keepalive, and a dead
/// worker's lease goes to another within a minute. (BuildGrid's default
/// is 600 s.)
pub const BOT_KEEPALIVE_S: u32 = 60;

/// The keepalive of the tests' farms that kill a worker and wait for its
/// lease to run elsewhere: short, so that the wait is.
pub const FAILOVER_TEST_KEEPALIVE_S: u32 = 10;

/// The PostgreSQL programs (`initdb`, `pg_ctl`, `psql`): Debian's
/// `/usr/lib/postgresql/N/bin`, the newest N; installed with apt-get
/// (package `postgresql`) when missing, as root on Debian/Ubuntu.
pub fn ensure_postgres() -> Result<PathBuf> {
    if let Some(bin) = find_postgres() {
        return Ok(bin);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !(root && Path::new("/etc/debian_version").exists()) {
        bail!(
            "PostgreSQL (initdb, pg_ctl) is not installed; run: sudo apt-get install -y postgresql"
        );
    }
    eprintln!("xtask: PostgreSQL not found; installing postgresql with apt-get");
    crate::provision::run_apt(&["update"])?;
    crate::provision::run_apt(&["install", "-y", "--no-install-recommends", "postgresql"])?;
    find_postgres().context("apt-get installed postgresql, but no /usr/lib/postgresql/N/bin/initdb")
}

fn find_postgres() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((n, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A private PostgreSQL cluster with a database `bgd`, reached by its
/// Unix socket only; stopped and removed when dropped.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    /// The socket's directory.
    pub socket_dir: PathBuf,
    started: bool,
}

impl Postgres {
    /// initdb, start (waiting until it accepts connections), create `bgd`.
    /// `dir` must exist; the cluster lives in `dir/pg`.
    pub fn start(bin: &Path, dir: &Path) -> Result<Postgres> {
        let data = dir.join("pg/data");
        let socket_dir = dir.join("pg/sock");
        std::fs::create_dir_all(&data).context("creating the PostgreSQL directory")?;
        std::fs::create_dir_all(&socket_dir)?;
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            // PostgreSQL refuses to run as root: its files are postgres's,
            // and the directories above must let it through.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            let owner = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.join("pg"))
                .status()
                .context("cannot run chown")?;
            if !owner.success() {
                bail!(
                    "chown -R postgres {} failed (is there a postgres user?)",
                    dir.display()
                );
            }
        }
        let mut pg = Postgres {
            bin: bin.to_path_buf(),
            data,
            socket_dir,
            started: false,
        };
        let log = dir.join("pg/postgres.log");
        pg.run(
            Command::new(pg.bin.join("initdb"))
                .args(["-A", "trust", "-U", "bgd", "--no-sync", "-D"])
                .arg(&pg.data),
        )?;
        pg.started = true;
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off",
            pg.socket_dir.display()
        );
        pg.run(
            Command::new(pg.bin.join("pg_ctl"))
                .args(["-w", "-D"])
                .arg(&pg.data)
                .args(["-o", &opts, "-l"])
                .arg(&log)
                .arg("start"),
        )
        .with_context(|| format!("PostgreSQL did not start; see {}", log.display()))?;
        pg.run(
            Command::new(pg.bin.join("psql"))
                .args(["-q", "-h"])
                .arg(&pg.socket_dir)
                .args(["-U", "bgd", "-d", "postgres", "-c", "create database bgd"]),
        )?;
        Ok(pg)
    }

    /// The SQLAlchemy URL BuildGrid connects with.
    pub fn url(&self) -> String {
        format!(
            "postgresql+psycopg2://bgd@/bgd?host={}",
            self.socket_dir.display()
        )
    }

    /// Runs a PostgreSQL program, as the postgres user when we are root.
    fn run(&self, cmd: &mut Command) -> Result<()> {
        let mut full = if unsafe { libc::geteuid() } == 0 {
            let mut r = Command::new("runuser");
            r.args(["-u", "postgres", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            r
        } else {
            let mut c = Command::new(cmd.get_program());
            c.args(cmd.get_args());
            c
        };
        let out = full
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
        if !out.status.success() {
            bail!(
                "{:?} failed ({}): {}{}",
                cmd.get_program(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Postgres {
    /// The postmaster's pid (the first line of `postmaster.pid`): its
    /// backends are its children.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.started {
            // Immediate: the cluster is thrown away with its directory.
            let _ = self.run(
                Command::new(self.bin.join("pg_ctl"))
                    .args(["-w", "-m", "immediate", "-D"])
                    .arg(&self.data)
                    .arg("stop"),
            );
        }
    }
}

/// BuildGrid with execution, scheduling to Remote Workers API bots that
/// advertise the `thinlto-compiler` property an action asks for. Its
/// thread pool bounds the RPCs in progress: a client's Execute streams
/// (`--remote-jobs`, 64 by default) each hold a thread while the job runs,
/// and the bots' long polls need theirs beside them, so 256.
fn config(port: u16, sql_url: &str, keepalive_s: u32) -> String {
    format!(
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
connections:
  - !sql-connection &sql
    connection-string: "{sql_url}"
storages:
  - !lru-storage &cas
    size: 2048M
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &sched
    sql: *sql
    action-cache: *ac
    storage: *cas
    # A bot silent for this long is gone: its lease goes to another bot.
    bot-session-keepalive-timeout: {keepalive_s}
    session-expiry-timer-interval: 1
    property-set: !dynamic-property-set
      match-property-keys: [thinlto-compiler]
      wildcard-property-keys: []
    # false: with true, BuildGrid 0.4.4 bumps the bot's version on every
    # UpdateBotSession (`_synchronize_completed_leases`), so an idle bot's
    # long poll returns at once and the bot asks again: tens of updates a
    # second a bot, most of the server's CPU when bots wait. With false,
    # a bot completing a lease is still handed as many new jobs as it
    # completed (each worker's session has capacity 1), and an idle bot
    # waits in its long poll.
    proactive-fetch-to-capacity: false
    # Without an assigner no job is ever given to an idle bot (a busy one
    # is handed the next job as it completes a lease, above). Its pause
    # between passes is interval x (1 + jitter-factor x random): the
    # default jitter 1.0 let an isolated job wait up to 0.87 s for an idle
    # bot; 0 and 0.2 s bound that wait to ~0.2 s. Each pass is a query
    # (~3 ms of bgd, whether it finds a job or not): two assigners every
    # 0.05 s cost ~0.1 core all the time, one every 0.2 s an eighth of
    # that (at 0.1 s the assigner was a fifth of bgd's CPU in a batched
    # Linux run, with actions of ~2 s an idle bot's wait is little). A job no bot could take waits failure-backoff before the
    # assigner tries it again: 0.2 s had it rescan every queued job five
    # times a second (bgd 50 s, PostgreSQL 16 s for Linux's first 300
    # jobs; 31 s and 5.5 s with the default 5 s), and a completing bot
    # takes a queued job at once anyway.
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.2
        jitter-factor: 0
        failure-backoff: 5
instances:
  - name: ''
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *sched
      - !bots
        scheduler: *sched
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 256
"#
    )
}

/// A process in its own process group, killed with the group when
/// dropped (a worker's compiles die with it).
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(cmd: &mut Command) -> Result<Process> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
        Ok(Process { child })
    }

    /// SIGKILL to the whole group, then reaped.
    pub fn kill(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the group is the
        // one spawn created, its id the leader's pid, which is not reused
        // before the leader is reaped (below).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The process groups (by their leader's pid) and the postmaster of a
/// farm.
#[derive(Debug, Clone, Default)]
pub struct FarmProcesses {
    pub server_groups: Vec<u32>,
    pub worker_groups: Vec<u32>,
    pub postmaster: Option<u32>,
}

/// A running farm: PostgreSQL, BuildGrid, workers. Dropping it stops
/// everything (workers first) and removes its directory.
pub struct Farm {
    /// `grpc://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    /// `thinlto-backend`, whose `worker` verb the workers run.
    worker_exe: PathBuf,
    workers: Vec<Process>,
    bgd: Option<Process>,
    postgres: Option<Postgres>,
    dir: tempfile::TempDir,
    /// The workers' work directories (blob stores, input roots), where a
    /// worker puts its own by default (`thinlto_backend::worker::
    /// default_work_parent`: a tmpfs when there is one, where the fresh
    /// directories of each job cost little).
    work: tempfile::TempDir,
}

impl Farm {
    /// Starts PostgreSQL and BuildGrid (waiting until it listens), no
    /// worker yet; bot sessions kept [`BOT_KEEPALIVE_S`].
    pub fn start(bgd: &Path, worker_exe: &Path) -> Result<Farm> {
        Farm::start_with_keepalive(bgd, worker_exe, BOT_KEEPALIVE_S)
    }

    /// [`Farm::start`] with BuildGrid's bot-session keepalive timeout set
    /// to `keepalive_s` seconds.
    pub fn start_with_keepalive(bgd: &Path, worker_exe: &Path, keepalive_s: u32) -> Result<Farm> {
        let pg_bin = ensure_postgres()?;
        let dir = tempfile::Builder::new()
            .prefix("thinlto-farm.")
            .tempdir()
            .context("a directory for the farm")?;
        let work_parent = thinlto_backend::worker::default_work_parent();
        let work = tempfile::Builder::new()
            .prefix("thinlto-farm-work.")
            .tempdir_in(&work_parent)
            .with_context(|| format!("a directory for the workers in {}", work_parent.display()))?;
        let mut farm = Farm {
            url: String::new(),
            port: 0,
            worker_exe: worker_exe.to_path_buf(),
            workers: Vec::new(),
            bgd: None,
            postgres: None,
            dir,
            work,
        };
        let pg = Postgres::start(&pg_bin, farm.dir.path())?;
        let sql = pg.url();
        farm.postgres = Some(pg);
        let migrate = Command::new(bgd)
            .args(["migrate", "apply", &sql])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", bgd.display()))?;
        if !migrate.status.success() {
            bail!(
                "bgd migrate apply failed: {}",
                String::from_utf8_lossy(&migrate.stderr)
            );
        }
        let port = crate::farm::buildgrid::free_port()?;
        let cfg = farm.dir.path().join("farm.yml");
        std::fs::write(&cfg, config(port, &sql, keepalive_s))
            .context("writing the BuildGrid config")?;
        let log = std::fs::File::create(farm.dir.path().join("bgd.log"))?;
        farm.bgd = Some(Process::spawn(
            Command::new(bgd)
                .args(["server", "start"])
                .arg(&cfg)
                .current_dir(farm.dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?);
        farm.port = port;
        farm.url = format!("grpc://127.0.0.1:{port}");
        let child = &mut farm.bgd.as_mut().expect("just started").child;
        crate::farm::buildgrid::wait_listening(port, child, &farm.dir.path().join("bgd.log"))?;
        Ok(farm)
    }

    /// Starts a worker `name` with `extra` arguments (`--compiler`, `-j`)
    /// and `env` (PATH, say); its output goes to `DIR/NAME.log`. Stopped
    /// with the farm, or by [`Farm::kill_worker`].
    pub fn add_worker(
        &mut self,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<usize> {
        let log = std::fs::File::create(self.worker_log(name))?;
        let work = self.worker_dir(name);
        let p = Process::spawn(
            Command::new(&self.worker_exe)
                .args([
                    "worker",
                    "--server",
                    &self.url,
                    "--name",
                    name,
                    "--work-dir",
                ])
                .arg(&work)
                .args(extra)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        self.workers.push(p);
        Ok(self.workers.len() - 1)
    }

    /// SIGKILL to worker `i` (as [`Farm::add_worker`] numbered it) and
    /// the compiles it runs.
    pub fn kill_worker(&mut self, i: usize) {
        self.workers[i].kill();
    }

    pub fn worker_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The work directory of worker `name` (its blob store, its actions).
    pub fn worker_dir(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.work"))
    }

    /// The processes of the farm, by component, for measuring their CPU
    /// (`crate::bench::proc_cpu`): BuildGrid's and each worker's process group
    /// (a worker's compiles among it), PostgreSQL's postmaster.
    pub fn processes(&self) -> FarmProcesses {
        FarmProcesses {
            server_groups: self.bgd.iter().map(|p| p.child.id()).collect(),
            worker_groups: self.workers.iter().map(|p| p.child.id()).collect(),
            postmaster: self.postgres.as_ref().and_then(Postgres::postmaster_pid),
        }
    }

    /// The last lines of BuildGrid's log and of every worker's.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for p in names
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
        {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("== {}\n", p.display());
            out += &lines[lines.len().saturating_sub(30)..].join("\n");
            out.push('\n');
        }
        out
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        // Workers first (they would only retry against a gone server),
        // then BuildGrid, then its database.
        self.workers.clear();
        self.bgd = None;
        self.postgres = None;
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct FarmArgs {
    /// How many workers
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Leases each worker runs at once [default: the worker's, its cores]
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// The thinlto-backend the workers run [default: built now, release]
    #[arg(long, value_name = "PATH")]
    pub worker_exe: Option<PathBuf>,
}

/// `cargo xtask farm`: the farm until SIGINT or SIGTERM, then stopped.
pub fn main(args: &FarmArgs) -> Result<()> {
    let exe = match &args.worker_exe {
        Some(p) => p.clone(),
        // Release-built: a worker's own CPU per action is part of the
        // farm's price.
        None => crate::flow::build_bins()?.path("thinlto-backend"),
    };
    let bgd = crate::farm::buildgrid::ensure()?;
    let mut farm = Farm::start(&bgd, &exe)?;
    let jobs = args.jobs.map(|j| j.to_string());
    let extra: Vec<&str> = jobs.iter().flat_map(|j| ["-j", j.as_str()]).collect();
    for i in 1..=args.workers {
        farm.add_worker(&format!("worker{i}"), &extra, &[])?;
    }
    println!("{}", farm.url);
    eprintln!(
        "xtask: farm with {} worker(s) at {}; logs in {}; SIGINT/SIGTERM stops it",
        args.workers,
        farm.url,
        farm.dir.path().display()
    );
    wait_for_stop_signal()?;
    eprintln!("xtask: stopping the farm");
    drop(farm);
    Ok(())
}

/// Blocks SIGINT and SIGTERM (after the children started: they would
/// inherit the mask) and waits for one.
fn wait_for_stop_signal() -> Result<()> {
    // SAFETY: plain signal-set calls on a local set; blocking the signals
    // in this thread (the only one) turns them into sigwait's.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block SIGINT/SIGTERM");
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
    Ok(())
}
