//! The Remote Execution API v2 (REAPI) client: one connection, digests and
//! CAS transfers that the backend cache, remote execution and the worker
//! share.
//! - [`client`]: the connection (TLS, headers, deadlines), the CAS and the
//!   action cache ([`RemoteCache`]: the cache's remote tier);
//! - [`execute`]: a client that runs actions on a farm (`Execute`,
//!   `WaitExecution`) and fetches their outputs;
//! - [`bots`]: the Remote Workers API a worker speaks to BuildGrid
//!   (`crate::worker`).

pub mod batch;
pub mod bots;
pub mod client;
pub mod execute;

pub use client::*;

/// The platform property naming the compiler an action needs: the
/// identity digest of `cache::identity::compiler_identity` for the
/// action's `argv[0]`. Workers advertise one per compiler they have, and
/// BuildGrid's scheduler matches it (`match-property-keys`).
pub const COMPILER_PROPERTY: &str = "thinlto-compiler";
