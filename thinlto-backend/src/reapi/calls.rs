//! The REAPI calls this process made, by kind: what the server's price
//! is counted in (BuildGrid charges per operation, not per byte), so that
//! `-v` and `cargo xtask bench --remote-only` can say which calls a run
//! paid for, per job.

use std::sync::atomic::{AtomicU64, Ordering};

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    GetCapabilities,
    FindMissingBlobs,
    BatchUpdateBlobs,
    ByteStreamWrite,
    BatchReadBlobs,
    ByteStreamRead,
    GetActionResult,
    UpdateActionResult,
    Execute,
    WaitExecution,
    CancelOperation,
}

impl Call {
    const ALL: [Call; 11] = [
        Call::GetCapabilities,
        Call::FindMissingBlobs,
        Call::BatchUpdateBlobs,
        Call::ByteStreamWrite,
        Call::BatchReadBlobs,
        Call::ByteStreamRead,
        Call::GetActionResult,
        Call::UpdateActionResult,
        Call::Execute,
        Call::WaitExecution,
        Call::CancelOperation,
    ];

    /// The call's name as REAPI spells it (what `-v` prints and the
    /// bench parses).
    pub fn name(self) -> &'static str {
        match self {
            Call::GetCapabilities => "GetCapabilities",
            Call::FindMissingBlobs => "FindMissingBlobs",
            Call::BatchUpdateBlobs => "BatchUpdateBlobs",
            Call::ByteStreamWrite => "ByteStream.Write",
            Call::BatchReadBlobs => "BatchReadBlobs",
            Call::ByteStreamRead => "ByteStream.Read",
            Call::GetActionResult => "GetActionResult",
            Call::UpdateActionResult => "UpdateActionResult",
            Call::Execute => "Execute",
            Call::WaitExecution => "WaitExecution",
            Call::CancelOperation => "CancelOperation",
        }
    }
}

static COUNTS: [AtomicU64; Call::ALL.len()] = [const { AtomicU64::new(0) }; Call::ALL.len()];

/// Counts one call of `kind` (made, whatever its answer).
pub fn count(kind: Call) {
    COUNTS[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// The calls made so far, each kind made at least once, in [`Call`]'s
/// order.
pub fn made() -> Vec<(&'static str, u64)> {
    Call::ALL
        .iter()
        .map(|c| (c.name(), COUNTS[*c as usize].load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_kind() {
        let before = made();
        let of = |v: &[(&str, u64)], k: &str| v.iter().find(|(n, _)| *n == k).map_or(0, |x| x.1);
        count(Call::UpdateActionResult);
        count(Call::UpdateActionResult);
        let after = made();
        assert_eq!(
            of(&after, "UpdateActionResult") - of(&before, "UpdateActionResult"),
            2
        );
    }
}
