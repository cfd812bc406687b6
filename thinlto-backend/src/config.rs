//! What a backend run is asked to do ([`Config`]), composed of the rooms'
//! own options (the cache's, `reapi`'s), and every default the engine
//! applies, each decided here once: the cache directory and size, the warm
//! compiler, how on/off switches in the environment are spelled, and the
//! verbosity kbuild asks for. (The parallelism without `-j` depends on
//! make's jobserver: the scheduler decides it,
//! [`crate::engine::scheduler::default_jobs`].)
//!
//! The binary's flags (main.rs) parse into a [`Config`]; the library
//! ([`crate::engine::run`]) does the work. Another front end (a DTLTO
//! distributor, a test) builds a [`Config`] the same way. Nothing here uses
//! the engine: it uses this.

use std::path::PathBuf;

use anyhow::{Context, Result};
use thinlto_index::ToolchainArgs;

/// One backend run.
#[derive(Debug, Clone)]
pub struct Config {
    /// How the compiler is found (`--cc`, `--llvm`, the environment).
    pub toolchain: ToolchainArgs,
    /// `-j N`; None: [`default_jobs`].
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub verbosity: Verbosity,
    /// The closing summary line (kbuild's rules turn it off).
    pub summary: bool,
    pub mode: Mode,
    /// Only these jobs (an object, its native, or its summary).
    pub only: Vec<String>,
    /// Run every job, up to date or not (`-B`).
    pub always_make: bool,
    pub warm: Warm,
    /// None: no cache.
    pub cache: Option<crate::cache::CacheOptions>,
    /// None: every job compiles here.
    pub remote_exec: Option<RemoteExecOptions>,
}

/// `--remote-exec`: the farm, and how many jobs it runs at once.
#[derive(Debug, Clone)]
pub struct RemoteExecOptions {
    pub remote: crate::reapi::RemoteOptions,
    /// `--remote-jobs`; the default is [`crate::exec::DEFAULT_REMOTE_JOBS`].
    pub jobs: usize,
    /// `--remote-batch`: how many jobs one action carries.
    pub batch: BatchSize,
    /// `--remote-queued-notice`.
    pub queued_notice: std::time::Duration,
}

/// `--remote-batch auto|N`: how jobs are packed into the farm's actions
/// (several compiles in one action: the server's price is per action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    /// Sized from the jobs' expected times toward a target of compile
    /// time per action; the longest jobs go alone (`crate::exec::batch`).
    #[default]
    Auto,
    /// At most this many jobs an action (1: one action per job).
    Fixed(usize),
}

impl std::str::FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<BatchSize, String> {
        if s == "auto" {
            return Ok(BatchSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=crate::limits::MAX_BATCH_JOBS).contains(&n) => Ok(BatchSize::Fixed(n)),
            _ => Err(format!(
                "{s:?}: expected auto or a number of jobs from 1 to {}",
                crate::limits::MAX_BATCH_JOBS
            )),
        }
    }
}

/// Build, or only say what a build would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Build,
    /// Print the commands that would run.
    DryRun,
    /// Say for every job why it would run or why it is up to date.
    Explain,
}

/// The warm compiler ([`crate::warm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    /// On, as the default: a fallback to plain spawns is said unless -q.
    Default,
    /// On, asked for (`--warm`): a fallback is said at every verbosity.
    Asked,
    /// Plain spawns (`--no-warm`, `THINLTO_WARM=0`).
    Off,
}

impl Warm {
    /// `--warm`, `--no-warm` (the last given wins, clap decides), else
    /// `THINLTO_WARM`, else on.
    pub fn from_flags(warm: bool, no_warm: bool) -> Result<Warm> {
        if no_warm {
            return Ok(Warm::Off);
        }
        if warm {
            return Ok(Warm::Asked);
        }
        Ok(match env_switch("THINLTO_WARM")? {
            Some(false) => Warm::Off,
            _ => Warm::Default,
        })
    }
}

/// An on/off setting (`THINLTO_CACHE`, `THINLTO_WARM`, …).
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(format!(
            "{s:?}: expected 1 or 0 (also yes/no, true/false, on/off; empty is the default)"
        )),
    }
}

/// A switch from the environment: None when unset or empty (make exports
/// a variable it knows as empty: that is not a choice), else
/// [`parse_switch`]'s answer; anything else is an error naming it.
pub fn env_switch(name: &str) -> Result<Option<bool>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => parse_switch(&v)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name}={e}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{name}: not UTF-8; expected 1 or 0")
        }
    }
}

/// How much a run prints: nothing but failures and the compilers'
/// warnings, kbuild's quiet lines, or every command (`V=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Commands,
}

/// The verbosity: `-q`, else `-v`, `V=1` in the environment or in make's
/// MAKEFLAGS (kbuild's spelling), else normal.
pub fn verbosity(quiet: bool, verbose: bool) -> Verbosity {
    if quiet {
        Verbosity::Quiet
    } else if verbose
        || std::env::var("V").is_ok_and(|v| v == "1")
        || std::env::var("MAKEFLAGS").is_ok_and(|m| m.split_whitespace().any(|w| w == "V=1"))
    {
        Verbosity::Commands
    } else {
        Verbosity::Normal
    }
}

/// The verbosity and the summary line of `thinlto-backend dtlto`: none
/// unless `-v`, as lld's in-process ThinLTO prints nothing (the
/// distributor's stderr is the link's, on the user's terminal; failures
/// and the compilers' warnings are printed at every verbosity); `-v`
/// prints the commands and the summary.
pub fn dtlto_verbosity(verbose: bool, no_summary: bool) -> (Verbosity, bool) {
    if verbose {
        (Verbosity::Commands, !no_summary)
    } else {
        (Verbosity::Quiet, false)
    }
}

/// The cache directory: `--cache-dir`, else `$THINLTO_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/thinlto-dist`, else `~/.cache/thinlto-dist`.
pub fn cache_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    explicit
        .or_else(|| env("THINLTO_CACHE_DIR").map(PathBuf::from))
        .or_else(|| {
            env("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("thinlto-dist"))
        })
        .context("no cache directory: give --cache-dir (neither THINLTO_CACHE_DIR, XDG_CACHE_HOME nor HOME is set)")
}

/// The cache's size limit without `--cache-size`/`THINLTO_CACHE_SIZE`:
/// 5 GiB, as ccache's default.
pub const DEFAULT_CACHE_SIZE: u64 = 5 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_have_one_spelling() {
        for on in ["1", "yes", "TRUE", " on "] {
            assert_eq!(parse_switch(on), Ok(true), "{on}");
        }
        for off in ["0", "no", "False", "off"] {
            assert_eq!(parse_switch(off), Ok(false), "{off}");
        }
        assert!(parse_switch("2").unwrap_err().contains("expected 1 or 0"));
        assert!(parse_switch("").is_err());
    }

    #[test]
    fn cache_dir_prefers_the_flag() {
        assert_eq!(
            cache_dir(Some(PathBuf::from("/x"))).unwrap(),
            PathBuf::from("/x")
        );
    }
}
