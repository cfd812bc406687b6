//! Which batched jobs are looked up in the server's action cache before
//! their batch runs (`--remote-batch`, issue 26).
//!
//! Each job of a batch is looked up under its own action, so that a run
//! that batches differently (or not at all) hits what another built. On
//! a cold farm every lookup misses, and each is a call the server pays
//! for and a round trip the batch waits for. So the lookups adapt: after
//! [`COLD_AFTER`] misses in a row the farm is taken as cold, and only one
//! job in [`PROBE_EVERY`] is looked up (a probe); a hit, probed or not,
//! ends that and every job is looked up again (a warm farm is all hits,
//! and no lookup of it is ever skipped). A lone job's `Execute` tells the
//! same (the server looks it up itself: `cached_result`).
//!
//! A job not looked up is only executed with its batch: its result is
//! the same (checked as any), its entry written again. Nothing is
//! trusted that was not checked; only a compile may be spent in vain.
//!
//! Why not a cheaper oracle, e.g. a marker blob per entry asked for with
//! one FindMissingBlobs a batch: it is a write more per job, and entries
//! written by others (the server itself, for a lone job's action) would
//! have none.

use std::sync::Mutex;

/// Misses in a row after which the farm is taken as cold.
pub(super) const COLD_AFTER: usize = 8;

/// While the farm is cold, one job in this many is looked up.
pub(super) const PROBE_EVERY: usize = 16;

/// The lookups' state of one run.
#[derive(Default)]
pub(super) struct Lookups {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    misses_in_a_row: usize,
    /// Jobs not looked up since the last probe.
    since_probe: usize,
    skipped: u64,
}

impl Lookups {
    /// Whether the next job is looked up (counted as skipped if not).
    pub(super) fn wanted(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.misses_in_a_row < COLD_AFTER {
            return true;
        }
        st.since_probe += 1;
        if st.since_probe >= PROBE_EVERY {
            st.since_probe = 0;
            return true;
        }
        st.skipped += 1;
        false
    }

    /// What a lookup (or a lone job's execution) found in the action
    /// cache.
    pub(super) fn found(&self, hit: bool) {
        let mut st = self.state.lock().unwrap();
        if hit {
            st.misses_in_a_row = 0;
            st.since_probe = 0;
        } else {
            st.misses_in_a_row = st.misses_in_a_row.saturating_add(1);
        }
    }

    /// Jobs not looked up so far.
    pub(super) fn skipped(&self) -> u64 {
        self.state.lock().unwrap().skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cold_farm_is_probed_sparsely_and_a_hit_resumes_every_lookup() {
        let l = Lookups::default();
        // Warm (or unknown): every job is looked up.
        for _ in 0..COLD_AFTER {
            assert!(l.wanted());
            l.found(false);
        }
        // Cold: one in PROBE_EVERY.
        let asked = (0..PROBE_EVERY * 4).filter(|_| l.wanted()).count();
        assert_eq!(asked, 4);
        assert_eq!(l.skipped(), (PROBE_EVERY * 4 - 4) as u64);
        // A probe hits: every job again.
        l.found(true);
        assert!((0..COLD_AFTER).all(|_| l.wanted()));
        // Hits and misses mixed never make it cold.
        for k in 0..100 {
            l.found(k % COLD_AFTER != 0);
            assert!(l.wanted());
        }
    }
}
