//! How a running compile is stopped: a cancelled lease (the worker's
//! keepalive sees it) or a deadline passed (`Action.timeout`).

/// How a running action is stopped when the server cancels its lease
/// (`crate::worker`'s keepalive sees it): the compile's process group is
/// killed and nothing is uploaded. Either side may come first: a cancel
/// before the spawn kills the compile as soon as it starts.
#[derive(Default)]
pub struct Stop {
    state: std::sync::Mutex<StopState>,
}

#[derive(Default)]
struct StopState {
    cancelled: bool,
    /// Killed at its deadline.
    expired: bool,
    /// What a cancel kills, while the compile is not reaped (so the id
    /// cannot be another's).
    target: Option<Target>,
}

/// A running compile, as it is killed.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// A plain spawn: its own process group (the compile and whatever it
    /// started).
    Group(i32),
    /// A job of the warm compiler: a child of the zygote, in the
    /// zygote's process group (the worker's), so the process alone.
    Process(i32),
}

/// The error of an action whose lease the server cancelled.
#[derive(Debug)]
pub struct LeaseCancelled;

impl std::fmt::Display for LeaseCancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cancelled by the server; its compile killed, nothing uploaded"
        )
    }
}

impl std::error::Error for LeaseCancelled {}

impl Stop {
    /// Cancels the action: its compile, if running, is killed now.
    pub fn cancel(&self) {
        let mut st = self.state.lock().unwrap();
        st.cancelled = true;
        if let Some(t) = st.target {
            kill(t);
        }
    }

    /// The compile ran past its deadline: killed now (a later start is
    /// killed at once too).
    pub fn expire(&self) {
        let mut st = self.state.lock().unwrap();
        st.expired = true;
        if let Some(t) = st.target {
            kill(t);
        }
    }

    pub fn is_expired(&self) -> bool {
        self.state.lock().unwrap().expired
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.lock().unwrap().cancelled
    }

    pub(crate) fn started(&self, target: Target) {
        let mut st = self.state.lock().unwrap();
        st.target = Some(target);
        if st.cancelled || st.expired {
            kill(target);
        }
    }

    pub(crate) fn ended(&self) {
        self.state.lock().unwrap().target = None;
    }
}

fn kill(target: Target) {
    let id = match target {
        Target::Group(g) => -g,
        Target::Process(p) => p,
    };
    // SAFETY: kill has no memory-safety preconditions; the process (the
    // group's leader) is not reaped yet: Stop::ended comes after the
    // wait, and a warm job's pid stays its own while its handle lives.
    unsafe {
        libc::kill(id, libc::SIGKILL);
    }
}
