//! Stage 3 (the ThinLTO backend compiles) and the stage-4 thin archive of
//! kbuild's distributed ThinLTO flow.
//!
//! - [`plan`] builds each [`BackendJob`] (flags from the front end's `.cmd`
//!   file through `thinlto-cmdparse`) and decides by content whether it
//!   must run;
//! - [`run`] runs them: parallel, inside make's jobserver when given one,
//!   longest first, with the reference's exact command, records removed
//!   before and written last;
//! - [`record`] is the kbuild-compatible `.foo.thinlto-native.o.cmd`;
//! - [`archive`] writes the final thin archive;
//! - [`cache`] stores results by content, locally and in a Remote Execution API cache;
//! - [`cache`] is the backend-job cache (its remote tier: a REAPI client);
//! - [`warm`] serves the compiles from a warm compiler (`--warm`, a fork server);
//! - [`wrap`] is the compiler wrapper for kbuild's own rules (`CC="thinlto-backend wrap clang"`).

pub mod archive;
pub mod cache;
pub mod plan;
pub mod reapi;
pub mod record;
pub mod run;
pub mod warm;
pub mod worker;
pub mod wrap;

pub use plan::{BackendJob, Decision, JobInput};
pub use run::{JobRecord, JobStatus, RunOptions, RunSummary, Verbosity};
