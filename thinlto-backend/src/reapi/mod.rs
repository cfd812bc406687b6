//! The Remote Execution API v2 (REAPI) client: one connection, digests and
//! CAS transfers that the backend cache, remote execution and the worker
//! share.
//! - [`client`]: the connection (TLS, headers, deadlines), the CAS and the
//!   action cache ([`RemoteCache`]: the cache's remote tier);
//! - [`execute`]: a client that runs actions on a farm (`Execute`,
//!   `WaitExecution`) and fetches their outputs;
//! - [`calls`]: the calls this process made, by kind (what a server
//!   charges for);
//! - [`bots`]: the Remote Workers API a worker speaks to BuildGrid
//!   (`crate::worker`).
//!
//! Only [`RemoteOptions`] is here without the feature `remote`: the
//! cache's and remote execution's options name a server either way (and
//! connecting says the feature is off).

pub mod batch;
#[cfg(feature = "remote")]
pub mod bots;
#[cfg(feature = "remote")]
pub mod calls;
#[cfg(feature = "remote")]
pub mod client;
#[cfg(feature = "remote")]
pub mod execute;

#[cfg(feature = "remote")]
pub use client::*;

use std::path::PathBuf;

/// The platform property naming the compiler an action needs: the
/// identity digest of `cache::identity::program_identity` for the
/// action's `argv[0]` (the programs, not the client's environment). Workers advertise one per compiler they have, and
/// BuildGrid's scheduler matches it (`match-property-keys`).
pub const COMPILER_PROPERTY: &str = "thinlto-compiler";

/// How long this client's queued executions may all wait, none of them
/// started, before it says so, once a run (`--remote-queued-notice`).
/// BuildGrid keeps an action whose platform no worker advertises queued
/// for good and says nothing of it; from here that looks like a farm
/// that never answers. A minute is long beside a batch (~2.5 s) and
/// short beside a user's patience.
pub const DEFAULT_QUEUED_NOTICE_SECONDS: u64 = 60;

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

/// Text a server sent (a result's stdout and stderr, an error message, a
/// worker's name) as it may be printed: every control character but
/// newline and tab, and the Unicode controls that reorder text, escaped
/// (`\x1b`, `\u{202e}`), so that a server cannot move the cursor, rewrite
/// what the terminal shows or hide text in it.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn server_text_is_printed_with_its_control_characters_escaped() {
        let plain = "a.c:1: warning: x\n\tnote: é\n";
        assert!(matches!(printable(plain), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            printable("\x1b[2J\x1b]0;title\x07ok\r\x7f\u{9b}"),
            "\\x1b[2J\\x1b]0;title\\x07ok\\x0d\\x7f\\u{9b}"
        );
        assert_eq!(printable("a\u{202e}b\u{2066}"), "a\\u{202e}b\\u{2066}");
    }
}
