//! A real BuildGrid (the REAPI server `cargo xtask setup` installs) for the
//! remote-cache tests: cache services only (CAS, ByteStream, action cache)
//! in memory, on a free localhost port, stopped when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long BuildGrid may take to listen (it takes ~5 s; a loaded machine
/// imports Python slowly).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `bgd server start` (see the module documentation).
pub struct BuildGrid {
    /// `grpc://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    child: Child,
    dir: TempDir,
}

/// The `bgd` executable: `THINLTO_TEST_BGD` (set by `cargo xtask test`),
/// else installed now if needed (so plain `cargo test` works too).
pub fn bgd() -> PathBuf {
    if let Some(p) = std::env::var_os("THINLTO_TEST_BGD").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    xtask::buildgrid::ensure()
        .unwrap_or_else(|e| panic!("no BuildGrid for the remote-cache tests: {e:#}"))
}

/// A cache-only configuration listening on `port`.
fn config(port: u16) -> String {
    format!(
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
storages:
  - !lru-storage &cas-storage
    size: 2048M
caches:
  - !lru-action-cache &ac
    storage: *cas-storage
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
instances:
  - name: ''
    services:
      - !cas
        storage: *cas-storage
      - !bytestream
        storage: *cas-storage
      - !action-cache
        cache: *ac
"#
    )
}

/// A port nobody listens on now (the kernel's pick; released for the
/// server to bind, a window another process could in principle use).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl BuildGrid {
    /// Starts BuildGrid and waits until its port accepts connections;
    /// panics with the end of its log if it does not within a minute.
    pub fn start() -> BuildGrid {
        let bgd = bgd();
        let dir = tempfile::Builder::new()
            .prefix("thinlto-buildgrid.")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let cfg = dir.path().join("cache.yml");
        std::fs::write(&cfg, config(port)).expect("write the BuildGrid config");
        let log = std::fs::File::create(dir.path().join("bgd.log")).expect("create bgd.log");
        let child = Command::new(&bgd)
            .args(["server", "start"])
            .arg(&cfg)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup bgd.log"))
            .stderr(log)
            // Its own group, so Drop can kill the server and anything it
            // forked in one go.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bgd.display()));
        let mut bg = BuildGrid {
            url: format!("grpc://127.0.0.1:{port}"),
            port,
            child,
            dir,
        };
        bg.wait_ready();
        bg
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "BuildGrid exited ({status}) before listening on {addr}; its log ends:\n{}",
                    self.log_tail()
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "BuildGrid did not listen on {addr} within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail()
                );
            }
            // The readiness poll (the only sleep: nothing to wait on).
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's output.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions. The group is the
        // one spawn created (its id is the server's pid); the kernel does
        // not reuse an id while a group of that id has members, and the
        // server itself is reaped only below (or after it died early).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
