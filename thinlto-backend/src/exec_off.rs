//! Remote execution when the crate is built without the `remote`
//! feature: a type with no values, so that the scheduler is the same
//! either way and `--remote-exec` is a clear error.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::job::BackendJob;

pub enum Outcome {
    Built {
        outputs: BTreeMap<String, Vec<u8>>,
        output: String,
        worker: String,
        batch: Option<crate::job::BatchRef>,
    },
    CompileError {
        exit_code: i32,
        output: String,
    },
    Fallback(String),
    Cancelled(String),
}

#[derive(Debug, Clone, Default)]
pub struct ExecSummary {
    pub built: u64,
    pub fallbacks: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub calls: Vec<(&'static str, u64)>,
    pub lookups_skipped: u64,
}

pub const DEFAULT_REMOTE_JOBS: usize = 128;

pub struct Placer;

impl Placer {
    pub fn new(_: &[String]) -> Placer {
        Placer
    }

    pub fn local_reason(&self, _: &BackendJob, _: Option<&[String]>) -> Option<String> {
        Some("this thinlto-backend was built without the `remote` feature".into())
    }
}

pub enum RemoteExec {}

impl RemoteExec {
    pub fn reads_of_input_root(
        &self,
        _: &BackendJob,
        _: Option<&[String]>,
        _: Option<&crate::job::BatchRef>,
    ) -> Option<BTreeMap<String, String>> {
        match *self {}
    }

    pub fn connect(opts: &crate::config::RemoteExecOptions, _: &[String]) -> Result<RemoteExec> {
        bail!(
            "{}: this thinlto-backend was built without the `remote` feature (no REAPI client)",
            opts.remote.url
        )
    }

    pub fn is_off(&self) -> bool {
        match *self {}
    }

    pub fn jobs(&self) -> usize {
        match *self {}
    }

    pub fn summary(&self) -> ExecSummary {
        match *self {}
    }

    pub fn run(
        &self,
        _: &BackendJob,
        _: Option<&[String]>,
        _: f64,
        _: &dyn Fn() -> bool,
    ) -> Outcome {
        match *self {}
    }
}
