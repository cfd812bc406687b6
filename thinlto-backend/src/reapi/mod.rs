//! Remote execution over the Remote Execution API v2 (REAPI), beside the
//! cache's REAPI client (`cache::remote`, whose connection, digests and
//! CAS transfers this reuses):
//! - [`execute`]: a client that runs actions on a farm (`Execute`,
//!   `WaitExecution`) and fetches their outputs;
//! - [`bots`]: the Remote Workers API a worker speaks to BuildGrid
//!   (`crate::worker`).

pub mod bots;
pub mod execute;

/// The platform property naming the compiler an action needs: the
/// identity digest of `cache::identity::compiler_identity` for the
/// action's `argv[0]`. Workers advertise one per compiler they have, and
/// BuildGrid's scheduler matches it (`match-property-keys`).
pub const COMPILER_PROPERTY: &str = "thinlto-compiler";
