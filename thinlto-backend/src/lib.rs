//! Stage 3 (the ThinLTO backend compiles) and the stage-4 thin archive of
//! kbuild's distributed ThinLTO flow, as a library: the `thinlto-backend`
//! binary only parses flags into a [`config::Config`] and calls
//! [`engine::run`].
//!
//! Its rooms:
//! - [`engine`]: the jobs ([`engine::job`]: inputs, argv, outputs), whether
//!   each must run ([`engine::plan`], by content), running them
//!   ([`engine::scheduler`]: parallel, inside make's jobserver, longest first,
//!   crash-safe) and their kbuild-compatible records ([`engine::record`]);
//! - [`config`]: what a run is asked to do, and every default;
//! - [`exec`]: remote execution of the jobs on a REAPI farm
//!   (`--remote-exec`);
//! - [`cache`]: the backend-job cache, local and on a REAPI server;
//! - [`warm`]: the warm compiler (a fork server preloaded into clang; its
//!   shim also traces the files a compile reads, for the cache; [`warm::shim`]
//!   keeps the shim where only the user can write);
//! - [`reapi`]: the Remote Execution API client (feature `remote`, on by
//!   default);
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
//! - [`limits`]: the bounds on what is read from a cache or a server.
//!
//! Dependencies run one way: `engine` uses `cache`, `warm` and `config`;
//! `cache` uses `engine`'s job model (`job`, `digest`, `record`) and
//! `reapi`, never the scheduler; `reapi` uses only `config`, `limits` and
//! `engine::digest`; `worker` uses `reapi`, `cache` (identity, trace) and
//! `warm` (the shim); `dtlto` uses `engine` and `config`.

pub mod archive;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dtlto;
pub mod engine;
#[cfg(feature = "remote")]
pub mod exec;
#[cfg(not(feature = "remote"))]
#[path = "exec_off.rs"]
pub mod exec;
pub mod limits;
#[cfg(feature = "remote")]
pub mod reapi;
pub mod remote_headers;
pub mod signals;
pub mod warm;
#[cfg(feature = "remote")]
pub mod worker;
pub mod wrap;

pub use engine::job::{BackendJob, JobInput};
pub use engine::plan::Decision;
pub use engine::scheduler::{JobRecord, JobStatus, RunOptions, RunSummary, Verbosity};
