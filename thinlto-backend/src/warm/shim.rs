//! Where the preload shim (`zygote/zygote.c`, built by build.rs and
//! embedded here) is put, and why it can be trusted.
//!
//! The shim is preloaded by path (`LD_PRELOAD`) into the warm compiler
//! and into every traced compile, and clang's own subprocesses inherit
//! that path; whoever can write that file, or the directory holding it,
//! runs code as the user. So it lives in a directory only the user can
//! write: `$XDG_RUNTIME_DIR/thinlto-dist` when `$XDG_RUNTIME_DIR` is a
//! private directory of the user's (a tmpfs made for them at login), else
//! `${XDG_CACHE_HOME:-~/.cache}/thinlto-dist-shim` (never the cache
//! directory itself, which may be shared). Before a run uses it:
//! - the directory is created 0700 if missing; opened without following
//!   a symlink, it must be owned by the effective uid and not writable by
//!   group or others, and its parent must be the user's or root's and not
//!   writable by others (unless sticky), so that nobody can swap it;
//! - the file, opened without following a symlink, must be a regular file
//!   owned by the effective uid, not writable by group or others, with
//!   the embedded shim's exact bytes; otherwise it is rewritten (temp +
//!   rename, mode 0644) and checked again.
//!
//! A directory that fails its checks is not repaired (someone else may
//! have written into it): the run says so in one line and goes on with
//! plain spawns and no tracing, so the cache stores nothing.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shim, as build.rs compiled it (empty when it could not).
static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zygote.so"));

/// The checked shim file, looked up once per process. On failure the
/// reason has been printed (once): the caller runs compiles plainly and
/// untraced.
pub fn path() -> Result<PathBuf, String> {
    static FILE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FILE.get_or_init(|| {
        let r = place();
        if let Err(why) = &r {
            eprintln_one_write!(
                "thinlto-backend: zygote shim: {why}; plain spawns, no warm compiler and no \
                 tracing (the cache stores nothing)"
            );
        }
        r
    })
    .clone()
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The directory the shim goes in (not yet checked).
fn dir() -> Result<PathBuf, String> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    // $XDG_RUNTIME_DIR only when it is what the spec promises: the user's,
    // 0700 (a stale or foreign value falls through to the cache home).
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        if std::fs::metadata(&run)
            .is_ok_and(|m| m.is_dir() && m.uid() == euid() && m.mode() & 0o077 == 0)
        {
            return Ok(run.join("thinlto-dist"));
        }
    }
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("thinlto-dist-shim"))
        .ok_or_else(|| {
            "no private directory for it (neither XDG_RUNTIME_DIR, XDG_CACHE_HOME nor HOME)".into()
        })
}

/// Whether `m` (of `p`) is ours and writable by nobody else.
fn ours(p: &Path, m: &std::fs::Metadata) -> Result<(), String> {
    if m.uid() != euid() {
        return Err(format!(
            "{} is owned by uid {}, not by this user (uid {}): refused",
            p.display(),
            m.uid(),
            euid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by others (mode {:o}): refused",
            p.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

fn open_nofollow(p: &Path, flags: i32) -> std::io::Result<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | flags)
        .open(p)
}

/// Checks the directory (creating it 0700 if missing).
fn check_dir(dir: &Path) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let pm = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let sticky = pm.mode() & 0o1000 != 0;
    if (pm.uid() != euid() && pm.uid() != 0) || (pm.mode() & 0o022 != 0 && !sticky) {
        return Err(format!(
            "{} (uid {}, mode {:o}) could be changed by another user: refused",
            parent.display(),
            pm.uid(),
            pm.mode() & 0o7777
        ));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    // The descriptor's own status: a symlink is refused by O_NOFOLLOW, and
    // what is checked is what was opened.
    let d = open_nofollow(dir, libc::O_DIRECTORY)
        .map_err(|e| format!("{}: {e} (a symlink?): refused", dir.display()))?;
    let m = d
        .metadata()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    ours(dir, &m)
}

/// Whether `file` is ours, writable by nobody else, and the shim.
fn check_file(file: &Path) -> Result<(), String> {
    let mut f = open_nofollow(file, 0).map_err(|e| format!("{}: {e}", file.display()))?;
    let m = f
        .metadata()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", file.display()));
    }
    ours(file, &m)?;
    let mut bytes = Vec::with_capacity(SHIM.len());
    f.read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if bytes != SHIM {
        return Err(format!("{} is not this build's shim", file.display()));
    }
    Ok(())
}

fn place() -> Result<PathBuf, String> {
    if SHIM.is_empty() {
        return Err("this thinlto-backend was built without it (no C compiler)".into());
    }
    let dir = dir()?;
    check_dir(&dir)?;
    let hash = blake3::hash(SHIM).to_hex();
    let file = dir.join(format!("zygote-{}.so", &hash[..16]));
    if check_file(&file).is_ok() {
        return Ok(file);
    }
    // Missing, or not what we would write: replaced (the directory is
    // ours alone, so the rename is the last word), then checked again.
    thinlto_index::fsutil::write_atomic_with(&file, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        std::io::Write::write_all(f, SHIM)
    })
    .map_err(|e| format!("cannot write {}: {e:#}", file.display()))?;
    check_file(&file)?;
    Ok(file)
}
