//! The remote tier when the crate is built without the `remote` feature:
//! a type with no values, so that the cache's code is the same either way
//! and asking for a remote cache is a clear error.

use anyhow::{bail, Result};

use crate::job::BackendJob;
use crate::reapi::RemoteOptions;

pub struct RemoteResult {
    pub key: String,
    pub native: Vec<u8>,
    pub dwo: Option<Vec<u8>>,
    pub output: String,
    pub extras: Vec<String>,
    pub reads: Option<std::collections::BTreeMap<String, String>>,
}

pub enum RemoteTier {}

impl RemoteTier {
    pub fn connect(opts: &RemoteOptions) -> Result<RemoteTier> {
        bail!(
            "{}: this thinlto-backend was built without the `remote` feature (no REAPI client)",
            opts.url
        )
    }

    pub fn is_off(&self) -> bool {
        match *self {}
    }

    pub fn fail(&self, _: &anyhow::Error) {
        match *self {}
    }

    pub fn lookup(&self, _: &BackendJob, _: &[u8]) -> Result<Option<RemoteResult>> {
        match *self {}
    }

    pub fn store(
        &self,
        _: &BackendJob,
        _: &[u8],
        _: &[String],
        _: &[u8],
        _: Option<&[u8]>,
        _: &str,
    ) -> Result<()> {
        match *self {}
    }
}
