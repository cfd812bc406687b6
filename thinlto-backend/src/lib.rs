//! Stage 3 (the ThinLTO backend compiles) and the stage-4 thin archive of
//! kbuild's distributed ThinLTO flow, as a library: the `thinlto-backend`
//! binary only parses flags into a [`config::Config`] and calls
//! [`engine::run`].
//!
//! Its rooms:
//! - [`engine`]: a run: whether each job must run ([`engine::plan`], by
//!   content), looking it up in the cache, running it
//!   ([`engine::scheduler`]: parallel, inside make's jobserver, longest
//!   first, crash-safe), reporting it;
//! - the job model every room shares: [`job`] (inputs, argv, outputs),
//!   [`digest`] (blake3 of the files a job reads) and [`record`] (the
//!   kbuild-compatible records);
//! - [`config`]: what a run is asked to do, composed of the rooms' options,
//!   and every default;
//! - [`exec`]: remote execution of the jobs on a REAPI farm
//!   (`--remote-exec`);
//! - [`cache`]: the backend-job cache, local and on a REAPI server;
//! - [`warm`]: the warm compiler (a fork server preloaded into clang; its
//!   shim also traces the files a compile reads, for the cache; [`warm::shim`]
//!   keeps the shim where only the user can write);
//! - [`reapi`]: the Remote Execution API client (feature `remote`, on by
//!   default) and where a server is ([`reapi::RemoteOptions`]);
//! - [`remote_headers`]: the headers (tokens) for remote services, from
//!   flags, a file or the environment;
//! - [`worker`]: a REAPI farm worker (Remote Workers API, feature
//!   `remote`): hermetic compiles for remote execution;
//! - [`dtlto`]: a distributor for lld's DTLTO (`--thinlto-distributor`),
//!   its jobs run by [`engine::run_planned`];
//! - [`wrap`]: the compiler wrapper for kbuild's own rules
//!   (`CC="thinlto-backend wrap clang"`);
//! - [`archive`]: the final thin archive;
//! - [`signals`]: dying by the signal received, after cleaning up;
//! - [`stderr`]: each stderr line in one write (`make -j` shares the pipe);
//! - [`limits`]: the bounds on what is read from a cache or a server.
//!
//! Dependencies run one way between rooms (tests/tests/conventions.rs
//! fails on an import circle; docs/architecture.md draws them): `main` →
//! `engine` → `config` → (`cache`, `reapi`); `engine` → (`cache`, `exec`,
//! `warm`); `exec` → (`cache`, `worker`, `reapi`); `worker` → (`cache`,
//! `warm`, `reapi`); `cache` → (`warm`, `reapi`); everything → the job
//! model; `reapi` uses only `digest`, `limits` and `remote_headers`. Each
//! room owns its options and `config` only composes them into one run's
//! [`config::Config`] (the cache's `CacheOptions`, `reapi`'s
//! `RemoteOptions`): no room but `engine`, `dtlto` and `main` uses
//! `config`.

/// `eprintln!` in one `write(2)`, so lines of tools that `make -j` runs
/// side by side on one stderr do not interleave ([`stderr`]). Defined
/// before the modules so they all see it.
#[macro_export]
macro_rules! eprintln_one_write {
    ($($arg:tt)*) => {
        $crate::stderr::line(format_args!($($arg)*))
    };
}

pub mod archive;
pub mod cache;
pub mod cli;
pub mod config;
pub mod digest;
pub mod dtlto;
pub mod engine;
#[cfg(feature = "remote")]
pub mod exec;
#[cfg(not(feature = "remote"))]
#[path = "exec_off.rs"]
pub mod exec;
pub mod job;
pub mod limits;
pub mod reapi;
pub mod record;
pub mod remote_headers;
pub mod signals;
pub mod stderr;
pub mod warm;
#[cfg(feature = "remote")]
pub mod worker;
pub mod wrap;

pub use config::Verbosity;
pub use engine::plan::Decision;
pub use engine::scheduler::{JobRecord, JobStatus, RunOptions, RunSummary};
pub use job::{BackendJob, JobInput};
