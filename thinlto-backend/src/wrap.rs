//! `thinlto-backend wrap CC…`: content-incremental backends inside kbuild's
//! own rules, with no change to the kernel:
//!
//! ```text
//! make LLVM=-19 CC="thinlto-backend wrap clang-19" vmlinux
//! ```
//!
//! Every compiler command kbuild runs passes through here. A ThinLTO
//! backend command (`… -x ir … -fthinlto-index=X.o.thinlto.bc -c -o N X.o`)
//! is decided by content with the rules of [`crate::engine::plan::decide`] (the
//! digests of the object, its index shard and its imports; the `.incbin`
//! mtime rule): when the native is up to date the compile is skipped and
//! the native's mtime is set to now, so that make, which reruns the recipe
//! whenever the thin link rewrote the shard, finds the target newer than
//! its prerequisites on its next run. Any other command (`--version`,
//! `cc-option` probes, front-end compiles) is exec'd unchanged: the
//! wrapper is then not even a parent process.
//!
//! The same wrapper masquerades as the compiler when a symlink of that
//! name (`clang-19 -> thinlto-backend`) comes first on PATH: kbuild's
//! commands then stay as they were, and no front-end object is rebuilt
//! for a changed `$(CC)` when the wrapper is switched on or off.
//!
//! With ccache (which cannot cache a backend compile, `-x ir`: "unsupported
//! source language", but caches the front end's `-flto=thin -c`), the two
//! compose, ccache for the front end and the wrapper for the backend:
//! `CC="thinlto-backend wrap ccache clang-19"`, or masquerading, ccache's
//! directory of `clang-19 -> ccache` links before ours on PATH (ccache runs
//! the next `clang-19` that is not ccache: ours, which runs the next one
//! after its own directory). Ours first instead would loop (ccache would
//! find ours again); that is stopped with an error saying so.
//!
//! The record with the digests is `dir/.N.digests.cmd`, not kbuild's
//! `dir/.N.cmd`: `if_changed` truncates that one after every run of the
//! recipe (`printf … > $(dot-target).cmd`), ours survives it. The name
//! matches `make clean`'s `.*.cmd` pattern, and make includes only the
//! exact `.N.cmd` names, so it never reads ours.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use thinlto_cmdparse::shell;

use crate::digest::DigestCache;
use crate::engine::plan::{decide, Decision};
use crate::job::{recognise, with_shard_imports, BackendCommand, BackendJob, JobInput};
use crate::record::write_record;

/// `dir/N` → `dir/.N.digests.cmd`.
pub fn digests_path(native: &str) -> PathBuf {
    let p = Path::new(native);
    let name = format!(
        ".{}.digests.cmd",
        p.file_name()
            .map(OsStr::to_string_lossy)
            .unwrap_or_default()
    );
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(name),
        _ => PathBuf::from(name),
    }
}

/// The job for a recognised command: the argv as given, the record beside
/// the native, the imports its shard names (an error when the shard
/// cannot be read as one).
pub fn job_for(argv: &[OsString], cmd: &BackendCommand) -> anyhow::Result<BackendJob> {
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Ok(BackendJob {
        input: with_shard_imports(JobInput {
            object: cmd.object.clone(),
            summary: cmd.summary.clone(),
            imports: None,
        })?,
        native: cmd.native.clone(),
        record_path: Some(digests_path(&cmd.native)),
        command_text: shell::join(&argv),
        argv,
        key_argv: None,
    })
}

static CHILD: AtomicI32 = AtomicI32::new(0);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

fn die_by(sig: i32) -> ! {
    // SAFETY: restoring the default action and raising the signal ends
    // the process as the signal would have, which is what make (and a
    // shell script) must see.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

fn exec(argv: &[OsString]) -> ! {
    let e = Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln_one_write!(
        "thinlto-backend wrap: cannot run {}: {e}",
        argv[0].to_string_lossy()
    );
    std::process::exit(127)
}

fn explain(native: &str, what: &str) {
    if std::env::var_os("THINLTO_WRAP_EXPLAIN").is_some_and(|v| !v.is_empty()) {
        // make runs many wrappers at once on one stderr (crate::stderr).
        eprintln_one_write!("thinlto-backend wrap: {native}: {what}");
    }
}

/// Runs the wrapped command (argv: the compiler, then its arguments) and
/// returns only when the command ran here (a backend command); its exit
/// status is the process's.
pub fn main(argv: Vec<OsString>) -> ! {
    if argv.is_empty() {
        eprintln_one_write!("thinlto-backend wrap: usage: thinlto-backend wrap COMPILER [ARG]...\n  (as kbuild's CC: make CC=\"thinlto-backend wrap clang-19\" vmlinux)");
        std::process::exit(2);
    }
    let Some(cmd) = recognise(&argv) else {
        exec(&argv)
    };
    // A shard that cannot be read: the compiler says it as it would
    // without us.
    let Ok(job) = job_for(&argv, &cmd) else {
        exec(&argv)
    };
    let record_path = digests_path(&job.native);
    let (decision, mut record) = match decide(&job, &DigestCache::default()) {
        Ok(d) => d,
        // A missing input: the compiler says it as it would without us.
        Err(_) => exec(&argv),
    };
    let why = match decision {
        Decision::UpToDate => {
            let touched = std::fs::File::options()
                .write(true)
                .open(&job.native)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            if touched.is_ok() {
                explain(&job.native, "up to date (command and inputs unchanged)");
                std::process::exit(0);
            }
            "the native object cannot be touched".to_string()
        }
        Decision::Adopt => "no digests in the record".to_string(),
        Decision::Run(why) => why,
    };
    explain(&job.native, &format!("runs: {why}"));
    // An old record must never vouch for what this compile leaves.
    if std::fs::symlink_metadata(&record_path).is_ok() {
        if let Err(e) = std::fs::remove_file(&record_path) {
            eprintln_one_write!(
                "thinlto-backend wrap: {}: cannot remove: {e}",
                record_path.display()
            );
            std::process::exit(1);
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only touches atomics and calls kill.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let start = Instant::now();
    let mut child = match Command::new(&argv[0]).args(&argv[1..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln_one_write!(
                "thinlto-backend wrap: cannot run {}: {e}",
                argv[0].to_string_lossy()
            );
            std::process::exit(127);
        }
    };
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    // A signal that came before the pid was known.
    let early = SIGNAL.load(Ordering::SeqCst);
    if early != 0 {
        // SAFETY: our unreaped child.
        unsafe { libc::kill(child.id() as i32, early) };
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln_one_write!("thinlto-backend wrap: waiting for the compiler: {e}");
                std::process::exit(1);
            }
        }
    };
    CHILD.store(0, Ordering::SeqCst);
    let sig = SIGNAL.load(Ordering::SeqCst);
    if sig != 0 {
        die_by(sig);
    }
    if let Some(s) = status.signal() {
        die_by(s);
    }
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    let built = std::fs::metadata(&job.native).is_ok_and(|m| m.is_file() && m.len() > 0);
    if built {
        record.seconds = Some(start.elapsed().as_secs_f64());
        if let Err(e) = write_record(&record_path, &record.render(&job.native)) {
            // The object is fine; only the next decision is lost.
            eprintln_one_write!(
                "thinlto-backend wrap: warning: {}: cannot write the record: {e}",
                record_path.display()
            );
        }
    } else {
        eprintln_one_write!(
            "thinlto-backend wrap: {}: the compiler exited 0 but wrote no output (or an empty one)",
            job.native
        );
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// Whether the process was started as a wrapper, and the command it wraps
/// (checked before any argument parsing: every word after `wrap` is the
/// compiler's):
/// - `thinlto-backend wrap CC ARG…`;
/// - under another name, through a symlink such as `clang-19 ->
///   thinlto-backend` in a directory early on PATH (as ccache's
///   masquerading works): the compiler is the next `clang-19` on PATH that
///   is not this program, so kbuild's recorded commands do not change.
pub fn wrap_argv() -> Option<Vec<OsString>> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = Path::new(&argv0).file_name()?.to_owned();
    if name.as_bytes() != b"thinlto-backend" && !argv0.as_bytes().is_empty() {
        let real = masqueraded_compiler(&name)?;
        return Some(std::iter::once(real.into_os_string()).chain(args).collect());
    }
    match args.next() {
        Some(a) if a.as_bytes() == b"wrap" => Some(args.collect()),
        _ => None,
    }
}

/// Set in the environment of what a masquerading wrapper runs: met again
/// by a masquerading wrapper, it means a loop (ours → ccache → ours …).
const MASQUERADE_VAR: &str = "THINLTO_WRAP_MASQUERADE";

/// The program called `name` on PATH that this masquerading wrapper runs:
/// the next one after the PATH directory that holds this wrapper (or, if
/// none does, the first that is not this executable). Leaves
/// [`MASQUERADE_VAR`] in the environment for it.
fn masqueraded_compiler(name: &OsStr) -> Option<PathBuf> {
    if std::env::var_os(MASQUERADE_VAR).is_some() {
        eprintln_one_write!(
            "thinlto-backend wrap: {} on PATH leads back to this wrapper (a loop: is ccache's \
             directory of compiler links after ours on PATH? put it before ours, or set \
             CCACHE_PATH to the directories without either)",
            name.to_string_lossy()
        );
        std::process::exit(127);
    }
    let me = std::env::current_exe().ok()?.canonicalize().ok()?;
    let path = std::env::var_os("PATH")?;
    let candidates: Vec<PathBuf> = std::env::split_paths(&path).map(|d| d.join(name)).collect();
    let is_me = |p: &Path| p.canonicalize().is_ok_and(|c| c == me);
    let after_me = candidates
        .iter()
        .position(|p| is_me(p))
        .map_or(0, |i| i + 1);
    let found = candidates[after_me..]
        .iter()
        .find(|p| p.is_file() && !is_me(p))
        .cloned();
    if found.is_none() {
        eprintln_one_write!(
            "thinlto-backend wrap: no {} on PATH after this wrapper",
            name.to_string_lossy()
        );
        std::process::exit(127);
    }
    // Still single-threaded: before any parsing or thread.
    std::env::set_var(MASQUERADE_VAR, name);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_kbuilds_backend_command_only() {
        let be = os(&[
            "clang-19",
            "-O2",
            "-DX=a b",
            "-x",
            "ir",
            "-fno-lto",
            "-Wno-unused-command-line-argument",
            "-fthinlto-index=d/a b.o.thinlto.bc",
            "-c",
            "-o",
            "d/a b.thinlto-native.o",
            "d/a b.o",
        ]);
        assert_eq!(
            recognise(&be),
            Some(BackendCommand {
                object: "d/a b.o".into(),
                summary: "d/a b.o.thinlto.bc".into(),
                native: "d/a b.thinlto-native.o".into(),
            })
        );
        // The front end, probes, and anything not quite the backend's form.
        for argv in [
            vec!["clang-19", "--version"],
            vec!["clang-19", "-flto=thin", "-c", "-o", "a.o", "a.c"],
            vec![
                "clang-19",
                "-x",
                "c",
                "-fthinlto-index=a.o.thinlto.bc",
                "-c",
                "-o",
                "n.o",
                "a.o",
            ],
            vec![
                "clang-19",
                "-x",
                "ir",
                "-fthinlto-index=s",
                "-o",
                "n.o",
                "a.o",
            ],
            vec![
                "clang-19",
                "-x",
                "ir",
                "-fthinlto-index=s",
                "-c",
                "-o",
                "n.o",
                "-o",
                "m.o",
                "a.o",
            ],
            vec!["clang-19", "-x", "ir", "-c", "-o", "n.o", "a.o"],
        ] {
            assert_eq!(recognise(&os(&argv)), None, "{argv:?}");
        }
    }

    #[test]
    fn record_beside_the_native() {
        assert_eq!(
            digests_path("lib/str.thinlto-native.o"),
            Path::new("lib/.str.thinlto-native.o.digests.cmd")
        );
        assert_eq!(digests_path("n.o"), Path::new(".n.o.digests.cmd"));
    }
}
