//! The worker's local blob store and the input roots made from it.
//!
//! Every file blob an action needs is fetched from the CAS once per worker
//! (an imported module is an input of many jobs) into `blobs/`, checked
//! against its digest (the cache client's fetch does), written temp+rename
//! and made read-only; an input root is then directories and hard links
//! to those blobs (a copy where a link cannot be made).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::reapi::{Digest, RemoteCache};

pub struct BlobStore {
    dir: PathBuf,
    /// Held while fetching, so that two leases needing one blob fetch it
    /// once.
    fetching: Mutex<()>,
}

impl BlobStore {
    pub fn new(dir: PathBuf) -> Result<BlobStore> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(BlobStore {
            dir,
            fetching: Mutex::new(()),
        })
    }

    fn path(&self, d: &Digest, executable: bool) -> PathBuf {
        let x = if executable { ".x" } else { "" };
        self.dir.join(format!("{}-{}{x}", d.hash, d.size_bytes))
    }

    /// Puts every blob of `wanted` into the store (those it lacks fetched
    /// in batches); `executable` ones with mode 0555, others 0444.
    fn ensure(&self, cas: &RemoteCache, wanted: &[(Digest, bool)]) -> Result<()> {
        let _one_fetcher = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<(Digest, bool)> = wanted
            .iter()
            .filter(|(d, x)| !self.path(d, *x).is_file())
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let digests: Vec<Digest> = missing.iter().map(|(d, _)| d.clone()).collect();
        let blobs = fetch(cas, digests)?;
        for (d, x) in &missing {
            let path = self.path(d, *x);
            thinlto_index::fsutil::write_atomic(&path, &blobs[d])?;
            let mode = if *x { 0o555 } else { 0o444 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
        Ok(())
    }

    /// Builds the input root `root` (which must not exist) of Directory
    /// `digest`: the Directory protos are fetched level by level, the
    /// files linked from the store.
    pub fn materialize(&self, cas: &RemoteCache, digest: &Digest, root: &Path) -> Result<()> {
        let mut level: Vec<(Digest, PathBuf)> = vec![(digest.clone(), root.to_path_buf())];
        while !level.is_empty() {
            let blobs = fetch(cas, level.iter().map(|(d, _)| d.clone()).collect())?;
            let mut files: Vec<(Digest, bool, PathBuf)> = Vec::new();
            let mut next = Vec::new();
            for (d, at) in &level {
                let dir = re::Directory::decode(blobs[d].as_slice())
                    .with_context(|| format!("Directory {d}: malformed"))?;
                std::fs::create_dir_all(at)
                    .with_context(|| format!("cannot create {}", at.display()))?;
                for f in &dir.files {
                    let fd = child_digest(f.digest.as_ref(), &f.name)?;
                    files.push((fd, f.is_executable, at.join(&f.name)));
                }
                for sub in &dir.directories {
                    let sd = child_digest(sub.digest.as_ref(), &sub.name)?;
                    next.push((sd, at.join(&sub.name)));
                }
                if !dir.symlinks.is_empty() {
                    bail!("Directory {d}: symlinks in an input root are not supported");
                }
            }
            let wanted: Vec<(Digest, bool)> =
                files.iter().map(|(d, x, _)| (d.clone(), *x)).collect();
            self.ensure(cas, &wanted)?;
            for (d, x, at) in files {
                let blob = self.path(&d, x);
                if std::fs::hard_link(&blob, &at).is_err() {
                    std::fs::copy(&blob, &at).with_context(|| {
                        format!("cannot link or copy {} to {}", blob.display(), at.display())
                    })?;
                }
            }
            level = next;
        }
        Ok(())
    }
}

/// A file or directory name of an input root, and its digest: one plain
/// name (a server's tree must not climb out of the root).
fn child_digest(d: Option<&re::Digest>, name: &str) -> Result<Digest> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        bail!("input root entry {name:?}: not a plain name");
    }
    d.and_then(Digest::from_proto)
        .with_context(|| format!("input root entry {name:?}: no valid digest"))
}

/// The blobs of `digests` from the CAS, every one present and verified.
pub fn fetch(cas: &RemoteCache, digests: Vec<Digest>) -> Result<BTreeMap<Digest, Vec<u8>>> {
    let unique: Vec<Digest> = digests
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let names: Vec<String> = unique.iter().take(3).map(|d| d.to_string()).collect();
    // The empty blob is never stored; it needs no fetch.
    let (empty, rest): (Vec<Digest>, Vec<Digest>) =
        unique.into_iter().partition(|d| d.size_bytes == 0);
    let got = cas
        .rt
        .block_on(cas.fetch(rest))?
        .with_context(|| format!("a blob is missing from the CAS (of {})", names.join(", ")))?;
    let mut out: BTreeMap<Digest, Vec<u8>> = got.into_iter().collect();
    for d in empty {
        out.insert(d, Vec::new());
    }
    Ok(out)
}
