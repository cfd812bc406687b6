//! Signals (SIGINT, SIGTERM, SIGHUP): every tool of the crate dies by the
//! signal it received, after the section that was running cleaned up.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The first of SIGINT/SIGTERM/SIGHUP received, 0 before any.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// How many [`Deferred`] sections are open: while any is, a signal is only
/// recorded (the section stops its children and removes its temporaries,
/// and the process dies by it afterwards, [`die_if_signalled`]); while
/// none is, it kills the process at once.
static DEFER: AtomicUsize = AtomicUsize::new(0);

/// Handles SIGINT, SIGTERM and SIGHUP with signal-hook's iterator: a
/// thread receives them, records the first, and — unless a [`Deferred`]
/// section is open — makes the process die by it at once (default
/// disposition restored, the signal raised), so that a calling shell
/// script sees a death by the signal and stops too. Reading the input,
/// planning, `--explain`, `--dry-run` and most of `archive` leave nothing
/// to clean up, and a read blocked on a pipe ends this way too.
pub fn install_signal_handlers() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                // Paired with Deferred's store-then-load of SIGNAL: one
                // of the two sides sees the other (SeqCst), so a signal
                // is never lost between "not deferred" and "deferred".
                if DEFER.load(Ordering::SeqCst) == 0 {
                    die_if_signalled();
                }
            }
        })?;
    Ok(())
}

pub fn pending_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A section that must clean up before the process dies by a signal
/// (children to stop, temporaries to remove): while it lives, signals are
/// only recorded; [`pending_signal`] tells the section, and the caller
/// calls [`die_if_signalled`] once the section is over.
pub struct Deferred(());

/// Opens a [`Deferred`] section.
pub fn defer_signals() -> Deferred {
    DEFER.fetch_add(1, Ordering::SeqCst);
    Deferred(())
}

impl Drop for Deferred {
    fn drop(&mut self) {
        DEFER.fetch_sub(1, Ordering::SeqCst);
    }
}

/// If a signal came, dies by it: the default disposition restored, the
/// signal raised (so the parent sees WIFSIGNALED, as with any Unix tool,
/// not an exit status). stdout is not flushed here: the signal thread may
/// call this while the main thread holds stdout's lock, blocked on a full
/// pipe; the job records are flushed one by one as they are printed.
pub fn die_if_signalled() {
    if let Some(sig) = pending_signal() {
        let _ = signal_hook::low_level::emulate_default_handler(sig);
        // Not reached: emulate_default_handler aborts if raising fails.
        std::process::abort();
    }
}
