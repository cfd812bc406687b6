//! Provisioning of BuildGrid, the Remote Execution API server the remote
//! cache tier (`thinlto_backend::reapi`) is tested against.
//!
//! BuildGrid 0.4.4 is the last release that runs on Python 3.11, so it is
//! pinned and installed from PyPI into its own venv under the user's cache
//! directory (`$XDG_CACHE_HOME/thinlto-dist/buildgrid-0.4.4`, else
//! `~/.cache/…`), shared by every worktree and test run. [`ensure`] returns
//! its `bgd`; it installs only when that venv is missing.
//!
//! An install is built in a temporary directory beside the target and
//! renamed into place when pip is done, so a venv that exists is a complete
//! one (an interrupted install leaves only a `.tmp-PID` directory, removed
//! by the next install once that process is gone), and two concurrent
//! installers cannot mix their files: the first rename
//! wins and the loser uses the winner's venv. A venv is not relocatable —
//! pip writes the venv's absolute path into the shebang of every script in
//! `bin/` — so those files are rewritten to the final path before the
//! rename.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The pinned BuildGrid release.
pub const VERSION: &str = "0.4.4";

/// The `bgd` executable of BuildGrid [`VERSION`], installed into its venv
/// first if missing.
pub fn ensure() -> Result<PathBuf> {
    let dir = venv_dir()?;
    let bgd = dir.join("bin/bgd");
    if bgd.is_file() {
        ensure_psycopg2(&dir)?;
        return Ok(bgd);
    }
    install(&dir)?;
    ensure_psycopg2(&dir)?;
    if !bgd.is_file() {
        bail!(
            "BuildGrid {VERSION} was installed into {} but it has no bin/bgd",
            dir.display()
        );
    }
    Ok(bgd)
}

/// psycopg2 in the venv: BuildGrid's SQL scheduler (the farm,
/// `crate::farm`) needs it for PostgreSQL (its notifier calls psycopg2's
/// `poll()`); pip installs `psycopg2-binary` when it is missing.
fn ensure_psycopg2(venv: &Path) -> Result<()> {
    let python = venv.join("bin/python");
    let present = Command::new(&python)
        .args(["-c", "import psycopg2"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing psycopg2-binary into {}", venv.display());
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "psycopg2-binary",
    ]))
    .context("cannot install psycopg2-binary into BuildGrid's venv (network access to PyPI?)")
}

/// Where the venv lives: `$XDG_CACHE_HOME/thinlto-dist/buildgrid-VERSION`,
/// else `$HOME/.cache/thinlto-dist/buildgrid-VERSION`.
pub fn venv_dir() -> Result<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|x| !x.is_empty());
    let cache = match (nonempty("XDG_CACHE_HOME"), nonempty("HOME")) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => PathBuf::from(h).join(".cache"),
        (None, None) => {
            bail!("neither XDG_CACHE_HOME nor HOME is set: nowhere to install BuildGrid")
        }
    };
    Ok(cache
        .join("thinlto-dist")
        .join(format!("buildgrid-{VERSION}")))
}

fn install(dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("the venv dir has a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let prefix = format!(
        "{}.tmp-",
        dir.file_name()
            .expect("the venv dir has a name")
            .to_string_lossy()
    );
    remove_abandoned(parent, &prefix);
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove a stale {}", tmp.display()))?;
    }
    eprintln!(
        "xtask: BuildGrid {VERSION} not found; installing it into {}",
        dir.display()
    );
    let result = build_venv(&tmp, dir).and_then(|()| publish(&tmp, dir));
    if result.is_err() {
        // Best effort: the error that matters is the install's.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Removes the `PREFIX<pid>` directories of installs whose process is gone
/// (interrupted ones); a live one is a concurrent install, left alone.
fn remove_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid).exists();
        if pid.parse::<u32>().is_ok() && !alive {
            eprintln!(
                "xtask: removing an interrupted install, {}",
                e.path().display()
            );
            // Best effort: failing to tidy up is no reason not to install.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A complete venv with BuildGrid at `tmp`, its scripts pointing at `dir`.
fn build_venv(tmp: &Path, dir: &Path) -> Result<()> {
    if let Err(e) = make_venv(tmp) {
        // Debian's python3 lacks venv (and ensurepip) until python3-venv is
        // installed; do that when we can, as provision does for LLVM.
        if !can_apt() {
            return Err(e.context(
                "python3 -m venv failed; install the venv module (Debian/Ubuntu: \
                 sudo apt-get install -y python3-venv python3-pip) and retry",
            ));
        }
        eprintln!("xtask: python3 -m venv failed ({e:#}); installing python3-venv with apt-get");
        crate::provision::run_apt(&["update"])?;
        crate::provision::run_apt(&["install", "-y", "python3-venv", "python3-pip"])?;
        if tmp.exists() {
            std::fs::remove_dir_all(tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        make_venv(tmp)?;
    }
    let pip = tmp.join("bin/pip");
    let spec = format!("buildgrid=={VERSION}");
    run(Command::new(&pip).args(["install", "--quiet", "--disable-pip-version-check", &spec]))
        .with_context(|| {
            format!("cannot install {spec} from PyPI (it needs Python <= 3.11 and network access)")
        })?;
    relocate_scripts(&tmp.join("bin"), tmp, dir)
}

fn make_venv(tmp: &Path) -> Result<()> {
    // The prompt would otherwise be the temporary directory's name.
    let prompt = format!("buildgrid-{VERSION}");
    run(Command::new("python3")
        .args(["-m", "venv", "--prompt", &prompt])
        .arg(tmp))
}

/// Root on Debian/Ubuntu with apt-get: we may install system packages.
fn can_apt() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/etc/debian_version").exists()
        && thinlto_index::toolchain::find_program("apt-get", std::env::var_os("PATH").as_ref())
            .is_ok()
}

/// Rewrites the venv's path `from` to `to` in the text files of its
/// `bin/` (the shebangs pip wrote, its `/bin/sh` trampoline for long paths,
/// the activate scripts) and in `pyvenv.cfg`. Binaries and symlinks (the
/// venv's python) are left alone.
fn relocate_scripts(bin: &Path, from: &Path, to: &Path) -> Result<()> {
    let (from, to) = (from.to_string_lossy(), to.to_string_lossy());
    let mut files: Vec<PathBuf> = std::fs::read_dir(bin)
        .with_context(|| format!("cannot list {}", bin.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", bin.display()))?;
    files.extend(bin.parent().map(|venv| venv.join("pyvenv.cfg")));
    for path in files {
        if path.is_symlink() || !path.is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // not text: nothing of ours to rewrite
        };
        if text.contains(from.as_ref()) {
            std::fs::write(&path, text.replace(from.as_ref(), &to))
                .with_context(|| format!("cannot rewrite {}", path.display()))?;
        }
    }
    Ok(())
}

/// Renames the finished venv into place. Losing a race to a concurrent
/// installer is success: its venv is as complete as ours.
fn publish(tmp: &Path, dir: &Path) -> Result<()> {
    match std::fs::rename(tmp, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join("bin/bgd").is_file() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// How long BuildGrid may take to listen (it takes ~5 s; a loaded machine
/// imports Python slowly).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `bgd server start`: cache services only (CAS, ByteStream,
/// action cache) in memory, on a free localhost port, stopped when dropped.
pub struct Server {
    /// `grpc://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// A cache-only configuration listening on `port`.
fn config(port: u16) -> String {
    format!(
        r#"# gRPC threads: the default (5 per CPU) is fewer than the calls a
# backend run has in flight (16 lookups, 8 stores); more are refused with
# RESOURCE_EXHAUSTED.
thread-pool-size: 64
server:
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
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("bind 127.0.0.1:0")?
        .port())
}

impl Server {
    /// Starts `bgd` and waits until its port accepts connections; an
    /// error with the end of its log if it does not within a minute.
    pub fn start(bgd: &std::path::Path) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("thinlto-buildgrid.")
            .tempdir()
            .context("a directory for BuildGrid")?;
        let port = free_port()?;
        let cfg = dir.path().join("cache.yml");
        std::fs::write(&cfg, config(port)).context("writing the BuildGrid config")?;
        let log = std::fs::File::create(dir.path().join("bgd.log")).context("creating bgd.log")?;
        let child = Command::new(bgd)
            .args(["server", "start"])
            .arg(&cfg)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group, so Drop can kill the server and anything it
            // forked in one go.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", bgd.display()))?;
        let mut bg = Server {
            url: format!("grpc://127.0.0.1:{port}"),
            port,
            child,
            dir,
        };
        bg.wait_ready()?;
        Ok(bg)
    }

    fn wait_ready(&mut self) -> Result<()> {
        wait_listening(self.port, &mut self.child, &self.dir.path().join("bgd.log"))
    }

    /// The last lines of the server's output.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Waits until `bgd` (`child`) listens on `port`; an error with the end
/// of its `log` if it exits first or does not within a minute.
pub fn wait_listening(port: u16, child: &mut Child, log: &Path) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "BuildGrid exited ({status}) before listening on {addr}; its log ends:\n{}",
                tail()
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "BuildGrid did not listen on {addr} within {READY_TIMEOUT:?}; its log ends:\n{}",
                tail()
            );
        }
        // The readiness poll (the only sleep: nothing to wait on).
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Server {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_installs_whose_process_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let mk = |n: &str| std::fs::create_dir(d.path().join(n)).unwrap();
        // pid_max is at most 2^22: this process cannot exist.
        mk("bg.tmp-99999999");
        let me = format!("bg.tmp-{}", std::process::id());
        mk(&me);
        mk("bg");
        mk("bg.tmp-notapid");
        remove_abandoned(d.path(), "bg.tmp-");
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec!["bg".to_string(), "bg.tmp-notapid".into(), me];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn relocates_the_text_files_that_name_the_temporary_venv() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let (from, to) = (Path::new("/c/bg.tmp-1"), Path::new("/c/bg"));
        std::fs::write(bin.join("bgd"), "#!/c/bg.tmp-1/bin/python\nimport x\n").unwrap();
        std::fs::write(bin.join("activate"), "VIRTUAL_ENV=/c/bg.tmp-1\n").unwrap();
        std::fs::write(bin.join("other"), "#!/usr/bin/env python\n").unwrap();
        std::fs::write(bin.join("binary"), b"\xff\xfe/c/bg.tmp-1").unwrap();
        std::fs::write(
            d.path().join("pyvenv.cfg"),
            "command = python3 -m venv /c/bg.tmp-1\n",
        )
        .unwrap();
        relocate_scripts(&bin, from, to).unwrap();
        let read = |n: &str| std::fs::read(bin.join(n)).unwrap();
        assert_eq!(read("bgd"), b"#!/c/bg/bin/python\nimport x\n");
        assert_eq!(read("activate"), b"VIRTUAL_ENV=/c/bg\n");
        assert_eq!(read("other"), b"#!/usr/bin/env python\n");
        assert_eq!(read("binary"), b"\xff\xfe/c/bg.tmp-1");
        let cfg = std::fs::read_to_string(d.path().join("pyvenv.cfg")).unwrap();
        assert_eq!(cfg, "command = python3 -m venv /c/bg\n");
    }
}
