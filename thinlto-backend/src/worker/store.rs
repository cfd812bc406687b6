//! The worker's local blob store and the input roots made from it.
//!
//! Every file blob an action needs is fetched from the CAS once per worker
//! (an imported module is an input of many jobs) into `blobs/`, checked
//! against its digest (the cache client's fetch does), written temp+rename
//! and made read-only (0444, the worker's).
//!
//! An input root is directories and, when compiles run under a uid of
//! their own (`sandbox::Sandbox::separate_uid`), hard links to those
//! blobs: a compile can neither write nor chmod a file of the worker's.
//! Otherwise (a worker that is not root, or --no-sandbox) a compile could
//! write through a link into the store, so every input is a copy, its
//! bytes checked against their digest as they are copied.
//!
//! What a server sends as an input root is checked as REAPI requires
//! (every Directory's entries sorted by name and unique, plain names, no
//! symlinks) and bounded ([`RootLimits`]): a DAG of a few blobs naming
//! one Directory many times would otherwise expand into a huge tree.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::reapi::{Digest, RemoteCache};

/// The bounds of one input root.
#[derive(Debug, Clone, Copy)]
pub struct RootLimits {
    /// Files and directories, all levels.
    pub entries: usize,
    /// Directory levels below the root.
    pub depth: usize,
    /// The files' bytes.
    pub bytes: u64,
}

/// Far above a backend compile's (an object, its shard and the modules it
/// imports: a few hundred files, tens of MB).
pub const DEFAULT_ROOT_LIMITS: RootLimits = RootLimits {
    entries: 20_000,
    depth: 64,
    bytes: 4 << 30,
};

/// An input root the worker refuses (malformed or too large): the action
/// fails with this message, nothing run.
#[derive(Debug)]
pub struct BadRoot(pub String);

impl std::fmt::Display for BadRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRoot {}

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
    /// `digest`: the Directory protos are fetched level by level and
    /// checked (a [`BadRoot`] error when malformed or past `limits`), the
    /// files linked from the store (`link`) or copied and verified.
    pub fn materialize(
        &self,
        cas: &RemoteCache,
        digest: &Digest,
        root: &Path,
        limits: &RootLimits,
        link: bool,
    ) -> Result<()> {
        let mut level: Vec<(Digest, PathBuf)> = vec![(digest.clone(), root.to_path_buf())];
        let (mut entries, mut bytes, mut depth) = (0usize, 0u64, 0usize);
        while !level.is_empty() {
            if depth > limits.depth {
                return Err(BadRoot(format!(
                    "the input root is more than {} directories deep",
                    limits.depth
                ))
                .into());
            }
            depth += 1;
            let blobs = fetch(cas, level.iter().map(|(d, _)| d.clone()).collect())?;
            let mut files: Vec<(Digest, bool, PathBuf)> = Vec::new();
            let mut next = Vec::new();
            for (d, at) in &level {
                let dir = re::Directory::decode(blobs[d].as_slice())
                    .map_err(|e| BadRoot(format!("Directory {d}: malformed: {e}")))?;
                check_directory(&dir).map_err(|e| BadRoot(format!("Directory {d}: {e}")))?;
                entries += dir.files.len() + dir.directories.len();
                if entries > limits.entries {
                    return Err(BadRoot(format!(
                        "the input root has more than {} files and directories",
                        limits.entries
                    ))
                    .into());
                }
                for f in &dir.files {
                    let fd = child_digest(f.digest.as_ref(), &f.name)?;
                    bytes += fd.size_bytes as u64;
                    files.push((fd, f.is_executable, at.join(&f.name)));
                }
                for sub in &dir.directories {
                    let sd = child_digest(sub.digest.as_ref(), &sub.name)?;
                    next.push((sd, at.join(&sub.name)));
                }
            }
            if bytes > limits.bytes {
                return Err(BadRoot(format!(
                    "the input root's files are more than {} bytes",
                    limits.bytes
                ))
                .into());
            }
            for (_, at) in &level {
                std::fs::create_dir(at)
                    .with_context(|| format!("cannot create {}", at.display()))?;
            }
            let wanted: Vec<(Digest, bool)> =
                files.iter().map(|(d, x, _)| (d.clone(), *x)).collect();
            self.ensure(cas, &wanted)?;
            for (d, x, at) in files {
                let blob = self.path(&d, x);
                if link && std::fs::hard_link(&blob, &at).is_ok() {
                    continue;
                }
                copy_verified(&blob, &d, x, &at)?;
            }
            level = next;
        }
        Ok(())
    }
}

/// A copy of the store's `blob` at `at` (new), its bytes checked against
/// `d` first, read-only.
fn copy_verified(blob: &Path, d: &Digest, executable: bool, at: &Path) -> Result<()> {
    let data = std::fs::read(blob).with_context(|| format!("cannot read {}", blob.display()))?;
    if !d.matches(&data) {
        // Someone changed the store: drop the blob (the next action
        // fetches it again) and fail this one.
        let _ = std::fs::remove_file(blob);
        bail!(
            "{}: does not match its digest {d} (removed from the store)",
            blob.display()
        );
    }
    let mode = if executable { 0o555 } else { 0o444 };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(at)
        .with_context(|| format!("cannot create {}", at.display()))?;
    f.write_all(&data)
        .with_context(|| format!("cannot write {}", at.display()))?;
    Ok(())
}

/// REAPI's rules for a Directory: every name plain, files, directories
/// and symlinks each sorted by name, no name twice (across the three), no
/// symlinks (this worker takes none).
fn check_directory(dir: &re::Directory) -> std::result::Result<(), String> {
    if !dir.symlinks.is_empty() {
        return Err("symlinks in an input root are not supported".into());
    }
    for names in [
        dir.files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        dir.directories.iter().map(|d| d.name.as_str()).collect(),
    ] {
        if let Some(w) = names.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "entries not sorted and unique ({:?} before {:?})",
                w[0], w[1]
            ));
        }
    }
    let files: HashSet<&str> = dir.files.iter().map(|f| f.name.as_str()).collect();
    if let Some(d) = dir
        .directories
        .iter()
        .find(|d| files.contains(d.name.as_str()))
    {
        return Err(format!("{:?} is both a file and a directory", d.name));
    }
    Ok(())
}

/// A file or directory name of an input root, and its digest: one plain
/// name (a server's tree must not climb out of the root).
fn child_digest(d: Option<&re::Digest>, name: &str) -> Result<Digest> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(BadRoot(format!("input root entry {name:?}: not a plain name")).into());
    }
    d.and_then(Digest::from_proto)
        .ok_or_else(|| BadRoot(format!("input root entry {name:?}: no valid digest")).into())
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
