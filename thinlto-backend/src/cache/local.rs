//! The local tier: a directory shared by every build on the machine.
//!
//! ```text
//! DIR/backend-v1/manifests/ab/<key>     JSON: the entry's variants (one per set of extras)
//! DIR/backend-v1/blobs/ab/<blake3>      an output (a native object, a .dwo), by content
//! DIR/backend-v1/stats.json             hit and miss counters (under flock)
//! ```
//!
//! Safe for concurrent builds: every file is written to a temporary beside
//! it and renamed into place, so a reader sees the old file or the new
//! one, never a torn one. Blobs are named by their content: two writers of
//! one blob write the same bytes. Two writers of one manifest race, and
//! the last rename wins: the loser's variant is lost, which costs a future
//! miss, never a wrong hit. Every blob is checked against its name when
//! read: a corrupt or truncated one is removed and counts as a miss.
//!
//! Least recently used pruning: a hit moves the mtimes of its manifest
//! and blobs; [`LocalStore::prune`] removes the oldest files until the
//! total is under the limit.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use thinlto_index::fsutil::write_atomic;

/// One stored output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// One result of a base key: valid while every extra has its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// (path, blake3) of each file the compile read beyond its inputs.
    pub extras: Vec<(String, String)>,
    pub native: BlobRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwo: Option<BlobRef>,
    /// What the compiler printed (warnings), replayed on a hit.
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The key it was stored under: a manifest found under another name
    /// (copied, or a foreign store's) is not used.
    #[serde(default)]
    pub key: String,
    pub variants: Vec<Variant>,
}

/// Variants kept per key (newest first): a file that flips between a few
/// contents (a branch switch) keeps each of them.
const MAX_VARIANTS: usize = 8;

/// Counters kept across runs (`thinlto-backend cache stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub hits_local: u64,
    pub hits_remote: u64,
    pub misses: u64,
    pub stored: u64,
    pub uncacheable: u64,
}

/// What the directory holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// Who may write the cache: the one place that decides the modes of its
/// directories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sharing {
    /// The user's alone: directories are created 0700 (whoever can write
    /// a cache decides what every reader of it links).
    #[default]
    Private,
    /// Declared shared (`--cache-shared`): directories get 0777 less the
    /// umask, as any program's would; with `umask 002` and a setgid
    /// directory of a group of trusted builders (Linux passes the setgid
    /// bit and the group on to new subdirectories), the group shares it,
    /// as ccache documents.
    Shared,
}

impl Sharing {
    fn dir_mode(self) -> u32 {
        match self {
            Sharing::Private => 0o700,
            Sharing::Shared => 0o777,
        }
    }

    /// Creates `dir` and its missing parents with this sharing's mode.
    pub fn create_dir_all(self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(self.dir_mode())
            .create(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))
    }
}

pub struct LocalStore {
    root: PathBuf,
    sharing: Sharing,
}

impl LocalStore {
    /// The store under `dir` (created on first write), private.
    pub fn new(dir: &Path) -> LocalStore {
        LocalStore {
            root: dir.join("backend-v1"),
            sharing: Sharing::Private,
        }
    }

    /// The same store, its new directories created for `sharing`.
    pub fn with_sharing(self, sharing: Sharing) -> LocalStore {
        LocalStore { sharing, ..self }
    }

    /// Creates the store's root directory.
    pub fn create_root(&self) -> Result<()> {
        self.sharing.create_dir_all(&self.root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifest_path(&self, key: &str) -> PathBuf {
        self.root.join("manifests").join(&key[..2]).join(key)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(&digest[..2]).join(digest)
    }

    /// The manifest of `key`; a missing one is empty, an unreadable,
    /// malformed or foreign one (stored for another key) is removed, and
    /// empty.
    pub fn manifest(&self, key: &str) -> Manifest {
        let p = self.manifest_path(key);
        let empty = Manifest {
            key: key.to_string(),
            variants: Vec::new(),
        };
        match std::fs::read(&p) {
            Ok(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) if m.key == key => m,
                _ => {
                    let _ = std::fs::remove_file(&p);
                    empty
                }
            },
            Err(_) => empty,
        }
    }

    /// Adds `v` as the newest variant of `key` (replacing one with the
    /// same extras).
    pub fn add_variant(&self, key: &str, v: Variant) -> Result<()> {
        let mut m = self.manifest(key);
        m.variants.retain(|o| o.extras != v.extras);
        m.variants.insert(0, v);
        m.variants.truncate(MAX_VARIANTS);
        let p = self.manifest_path(key);
        self.create_parent(&p)?;
        write_atomic(&p, &serde_json::to_vec(&m)?)
    }

    /// Stores `bytes` (if not there yet) and returns its reference.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobRef> {
        let digest = blake3::hash(bytes).to_hex().to_string();
        let p = self.blob_path(&digest);
        let size = bytes.len() as u64;
        if !std::fs::metadata(&p).is_ok_and(|m| m.len() == size) {
            self.create_parent(&p)?;
            write_atomic(&p, bytes)?;
        }
        Ok(BlobRef { digest, size })
    }

    /// The blob's bytes if they are what its name says; a corrupt or
    /// truncated blob is removed and None.
    pub fn get_blob(&self, r: &BlobRef) -> Option<Vec<u8>> {
        if r.digest.len() < 2 || !r.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let p = self.blob_path(&r.digest);
        let mut bytes = Vec::with_capacity(r.size as usize);
        std::fs::File::open(&p).ok()?.read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 != r.size || blake3::hash(&bytes).to_hex().as_str() != r.digest {
            let _ = std::fs::remove_file(&p);
            return None;
        }
        Some(bytes)
    }

    /// Marks an entry as used now (least recently used pruning).
    pub fn touch(&self, key: &str, blobs: &[&BlobRef]) {
        let now = std::time::SystemTime::now();
        let paths = std::iter::once(self.manifest_path(key))
            .chain(blobs.iter().map(|b| self.blob_path(&b.digest)));
        for p in paths {
            if let Ok(f) = std::fs::File::options().write(true).open(&p) {
                let _ = f.set_modified(now);
            }
        }
    }

    /// Every file of the store: (mtime ns, size, path).
    fn files(&self) -> Vec<(i128, u64, PathBuf, bool)> {
        let mut out = Vec::new();
        for (sub, is_blob) in [("manifests", false), ("blobs", true)] {
            let Ok(fans) = std::fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for fan in fans.flatten() {
                let Ok(rd) = std::fs::read_dir(fan.path()) else {
                    continue;
                };
                for e in rd.flatten() {
                    if let Ok(m) = e.metadata() {
                        if m.is_file() {
                            let t = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
                            out.push((t, m.len(), e.path(), is_blob));
                        }
                    }
                }
            }
        }
        out
    }

    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for (_, size, _, is_blob) in self.files() {
            u.bytes += size;
            if is_blob {
                u.blobs += 1;
            } else {
                u.manifests += 1;
            }
        }
        u
    }

    /// Removes the least recently used files until the store holds at
    /// most `max_bytes` (down to 90 % of it, so that pruning is not
    /// needed again after the next few stores). Returns (files, bytes)
    /// removed. A manifest whose blob went first is a miss later.
    pub fn prune(&self, max_bytes: u64) -> (u64, u64) {
        let mut files = self.files();
        let total: u64 = files.iter().map(|f| f.1).sum();
        if total <= max_bytes {
            return (0, 0);
        }
        let goal = max_bytes / 10 * 9;
        files.sort();
        let (mut left, mut n, mut freed) = (total, 0, 0);
        for (_, size, path, _) in files {
            if left <= goal {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                left -= size;
                n += 1;
                freed += size;
            }
        }
        (n, freed)
    }

    /// Removes every entry (and the counters).
    pub fn clear(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("{}: cannot remove", self.root.display())),
        }
    }

    fn stats_path(&self) -> PathBuf {
        self.root.join("stats.json")
    }

    pub fn counters(&self) -> Counters {
        std::fs::read(self.stats_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Adds a run's counts, under an exclusive lock (builds of several
    /// trees end at the same time).
    pub fn add_counters(&self, c: &Counters) -> Result<()> {
        self.create_root()?;
        let lock_path = self.root.join("stats.lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("{}: cannot open", lock_path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when it closes.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        let mut now = self.counters();
        now.hits_local += c.hits_local;
        now.hits_remote += c.hits_remote;
        now.misses += c.misses;
        now.stored += c.stored;
        now.uncacheable += c.uncacheable;
        write_atomic(&self.stats_path(), &serde_json::to_vec_pretty(&now)?)
    }

    fn create_parent(&self, p: &Path) -> Result<()> {
        let dir = p.parent().expect("store paths have a parent");
        self.sharing.create_dir_all(dir)
    }
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024,
/// an optional trailing B or iB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c @ ('K' | 'k' | 'M' | 'm' | 'G' | 'g' | 'T' | 't')) => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => 1 << 40,
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 5G, 500M or 1048576"))?;
    if n.is_nan() || n < 0.0 {
        return Err(format!("{s:?}: a size cannot be negative"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_checked_and_pruned_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let a = s.put_blob(b"aaaa").unwrap();
        assert_eq!(s.get_blob(&a).as_deref(), Some(&b"aaaa"[..]));
        // A second writer of the same blob: harmless.
        assert_eq!(s.put_blob(b"aaaa").unwrap(), a);
        // Corrupt it: a miss, and gone.
        std::fs::write(s.blob_path(&a.digest), b"aaab").unwrap();
        assert_eq!(s.get_blob(&a), None);
        assert!(!s.blob_path(&a.digest).exists());
        // Truncated: a miss.
        let b = s.put_blob(b"bbbbbbbb").unwrap();
        std::fs::write(s.blob_path(&b.digest), b"bbbb").unwrap();
        assert_eq!(s.get_blob(&b), None);

        let old = s.put_blob(&[1u8; 1000]).unwrap();
        let old_t = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        std::fs::File::options()
            .write(true)
            .open(s.blob_path(&old.digest))
            .unwrap()
            .set_modified(old_t)
            .unwrap();
        let new = s.put_blob(&[2u8; 1000]).unwrap();
        assert_eq!(s.prune(1500), (1, 1000));
        assert!(s.get_blob(&old).is_none() && s.get_blob(&new).is_some());
    }

    #[test]
    fn manifests_keep_the_newest_variants() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let key = "ab".repeat(32);
        let v = |x: &str| Variant {
            extras: vec![("f".into(), x.into())],
            native: BlobRef {
                digest: "00".into(),
                size: 0,
            },
            dwo: None,
            output: String::new(),
            seconds: None,
        };
        for i in 0..10 {
            s.add_variant(&key, v(&i.to_string())).unwrap();
        }
        s.add_variant(&key, v("9")).unwrap();
        let m = s.manifest(&key);
        assert_eq!(m.variants.len(), MAX_VARIANTS);
        assert_eq!(m.variants[0].extras[0].1, "9");
        // Another key's manifest under this name: not used.
        let other = "cd".repeat(32);
        std::fs::copy(s.manifest_path(&key), {
            let p = s.manifest_path(&other);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            p
        })
        .unwrap();
        assert!(s.manifest(&other).variants.is_empty());
        std::fs::write(s.manifest_path(&key), b"{not json").unwrap();
        assert!(s.manifest(&key).variants.is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5G").unwrap(), 5 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("lots").is_err());
    }
}
