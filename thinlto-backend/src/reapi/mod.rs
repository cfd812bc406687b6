//! The Remote Execution API v2 (REAPI) client: one connection, digests and
//! CAS transfers that the backend cache, remote execution and the worker
//! share.
//! - [`client`]: the connection (TLS, headers, deadlines), the CAS and the
//!   action cache ([`RemoteCache`]: the cache's remote tier);
//! - [`execute`]: a client that runs actions on a farm (`Execute`,
//!   `WaitExecution`) and fetches their outputs;
//! - [`bots`]: the Remote Workers API a worker speaks to BuildGrid
//!   (`crate::worker`).
//!
//! Only [`RemoteOptions`] is here without the feature `remote`: the
//! cache's and remote execution's options name a server either way (and
//! connecting says the feature is off).

#[cfg(feature = "remote")]
pub mod bots;
#[cfg(feature = "remote")]
pub mod client;
#[cfg(feature = "remote")]
pub mod execute;

#[cfg(feature = "remote")]
pub use client::*;

use std::path::PathBuf;

/// The platform property naming the compiler an action needs: the
/// identity digest of `cache::identity::compiler_identity` for the
/// action's `argv[0]`. Workers advertise one per compiler they have, and
/// BuildGrid's scheduler matches it (`match-property-keys`).
pub const COMPILER_PROPERTY: &str = "thinlto-compiler";

/// Where and how to reach the REAPI server.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// grpc://host:port (plaintext) or grpcs://host:port (TLS, system roots, or tls_ca)
    pub url: String,
    /// REAPI instance name ("" by default)
    pub instance: String,
    /// Extra gRPC metadata on every call (e.g. authorization), as
    /// [`crate::remote_headers::gather`] collects them
    pub headers: Vec<(String, String)>,
    /// PEM file of a CA to trust for grpcs:// (optional)
    pub tls_ca: Option<PathBuf>,
}
