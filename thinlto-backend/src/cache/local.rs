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

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use thinlto_index::fsutil::write_atomic;

use crate::digest::open_regular;
use crate::limits::{
    is_hex, MAX_BLOB_BYTES, MAX_EXTRAS, MAX_MANIFEST_BYTES, MAX_OUTPUT_TEXT, MAX_PATH_BYTES,
    MAX_VARIANTS,
};

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

impl BlobRef {
    fn check(&self) -> Result<(), String> {
        if !is_hex(&self.digest, 64) {
            return Err(format!("{:?} is not a blake3 digest", self.digest));
        }
        if self.size > MAX_BLOB_BYTES {
            return Err(format!(
                "a blob of {} bytes (at most {MAX_BLOB_BYTES})",
                self.size
            ));
        }
        Ok(())
    }
}

impl Variant {
    /// Whether the variant keeps to the bounds of [`super::limits`]: one
    /// that does not is never stored, and read back it is a miss.
    pub fn check(&self) -> Result<(), String> {
        if self.extras.len() > MAX_EXTRAS {
            return Err(format!(
                "{} extra files (at most {MAX_EXTRAS})",
                self.extras.len()
            ));
        }
        for (p, d) in &self.extras {
            if p.is_empty() || p.len() > MAX_PATH_BYTES || p.contains('\0') || !is_hex(d, 64) {
                return Err(format!("a malformed extra file {p:?} {d:?}"));
            }
        }
        if self.output.len() > MAX_OUTPUT_TEXT {
            return Err(format!(
                "{} bytes of compiler output (at most {MAX_OUTPUT_TEXT})",
                self.output.len()
            ));
        }
        self.native.check()?;
        match &self.dwo {
            Some(d) => d.check(),
            None => Ok(()),
        }
    }
}

impl Manifest {
    fn check(&self) -> Result<(), String> {
        if self.variants.len() > MAX_VARIANTS {
            return Err(format!(
                "{} variants (at most {MAX_VARIANTS})",
                self.variants.len()
            ));
        }
        self.variants.iter().try_for_each(Variant::check)
    }
}

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
        match read_own(&p, MAX_MANIFEST_BYTES) {
            Ok(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) if m.key == key && m.check().is_ok() => m,
                _ => {
                    let _ = self.remove_entry("manifests", key);
                    empty
                }
            },
            // Missing, or not a regular file of a sane size (not the
            // store's, so left alone): a miss.
            Err(_) => empty,
        }
    }

    /// Adds `v` as the newest variant of `key` (replacing one with the
    /// same extras).
    pub fn add_variant(&self, key: &str, v: Variant) -> Result<()> {
        if let Err(e) = v.check() {
            anyhow::bail!("not stored: {e}");
        }
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
        r.check().ok()?;
        let p = self.blob_path(&r.digest);
        // Its real length first: the size in the manifest is only a claim.
        let (f, len) = open_regular(&p, true).ok()?;
        if len != r.size {
            let _ = self.remove_entry("blobs", &r.digest);
            return None;
        }
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 != r.size || blake3::hash(&bytes).to_hex().as_str() != r.digest {
            let _ = self.remove_entry("blobs", &r.digest);
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
            use std::os::unix::fs::OpenOptionsExt;
            // The store's own files only: never through a link, never a FIFO.
            let opened = std::fs::File::options()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&p);
            if let Ok(f) = opened.and_then(|f| {
                f.metadata()?
                    .is_file()
                    .then_some(f)
                    .ok_or_else(|| std::io::ErrorKind::InvalidInput.into())
            }) {
                let _ = f.set_modified(now);
            }
        }
    }

    /// Every entry of the store: the regular files with the names the
    /// store writes (`SUB/ab/<64 hex>` starting with `ab`), found without
    /// following a link (a linked fan directory or file is not the
    /// store's). With `temporaries`, also the temporaries a write left
    /// (`.<64 hex>.XXXXXX.tmp`).
    fn entries(&self, temporaries: bool) -> Vec<Entry> {
        let mut out = Vec::new();
        for sub in SUBDIRS {
            let Ok(fans) = std::fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for fan in fans.flatten() {
                let fan_name = fan.file_name().to_string_lossy().into_owned();
                // DirEntry::file_type does not follow links.
                if !is_hex(&fan_name, 2) || !fan.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Ok(rd) = std::fs::read_dir(fan.path()) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let ours = (is_hex(&name, 64) && name.starts_with(&fan_name))
                        || (temporaries && is_temporary(&name, |n| is_hex(n, 64)));
                    // DirEntry::metadata is lstat: a link is not a file.
                    let Ok(m) = e.metadata() else { continue };
                    if ours && m.is_file() {
                        out.push(Entry {
                            mtime: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                            size: m.len(),
                            sub,
                            name,
                        });
                    }
                }
            }
        }
        out
    }

    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for e in self.entries(false) {
            u.bytes += e.size;
            if e.sub == "blobs" {
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
    /// removed. A manifest whose blob went first is a miss later. Only the
    /// store's own files go ([`LocalStore::entries`]), never through a
    /// link.
    pub fn prune(&self, max_bytes: u64) -> (u64, u64) {
        let mut files = self.entries(false);
        let total: u64 = files.iter().map(|f| f.size).sum();
        if total <= max_bytes {
            return (0, 0);
        }
        let goal = max_bytes / 10 * 9;
        files.sort_by(|a, b| (a.mtime, &a.name).cmp(&(b.mtime, &b.name)));
        let (mut left, mut n, mut freed) = (total, 0, 0);
        for e in files {
            if left <= goal {
                break;
            }
            if self.remove_entry(e.sub, &e.name).is_ok() {
                left -= e.size;
                n += 1;
                freed += e.size;
            }
        }
        (n, freed)
    }

    /// Removes every entry (and the counters): the store's own files and
    /// temporaries, then its directories if that left them empty. A file
    /// the store did not write, and whatever a link points to, stay.
    pub fn clear(&self) -> Result<()> {
        for e in self.entries(true) {
            self.remove_entry(e.sub, &e.name).with_context(|| {
                format!(
                    "{}: cannot remove",
                    self.entry_path(e.sub, &e.name).display()
                )
            })?;
        }
        let root = match open_dir_at(None, self.root.as_os_str()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot open", self.root.display()))
            }
        };
        for name in ["stats.json", "stats.lock"] {
            let ours = std::fs::symlink_metadata(self.root.join(name)).is_ok_and(|m| m.is_file());
            if ours {
                unlink_at(&root, OsStr::new(name), 0).with_context(|| {
                    format!("{}: cannot remove", self.root.join(name).display())
                })?;
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_temporary(&name, |n| n == "stats.json")
                    && e.file_type().is_ok_and(|t| t.is_file())
                {
                    let _ = unlink_at(&root, e.file_name().as_os_str(), 0);
                }
            }
        }
        // Directories: only the store's, only if empty now (rmdir fails on
        // a directory that still holds something, and on a link).
        for sub in SUBDIRS {
            if let Ok(sub_fd) = open_dir_at(Some(&root), OsStr::new(sub)) {
                if let Ok(rd) = std::fs::read_dir(self.root.join(sub)) {
                    for fan in rd.flatten() {
                        if is_hex(&fan.file_name().to_string_lossy(), 2) {
                            let _ =
                                unlink_at(&sub_fd, fan.file_name().as_os_str(), libc::AT_REMOVEDIR);
                        }
                    }
                }
                let _ = unlink_at(&root, OsStr::new(sub), libc::AT_REMOVEDIR);
            }
        }
        drop(root);
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }

    fn entry_path(&self, sub: &str, name: &str) -> PathBuf {
        self.root
            .join(sub)
            .join(&name[..2.min(name.len())])
            .join(name)
    }

    /// Removes the store's file `SUB/<fan>/name` (the fan of a temporary
    /// is that of the name it stands for), opening each directory on the
    /// way without following a link: a link planted in the store cannot
    /// make it delete a file elsewhere.
    fn remove_entry(&self, sub: &str, name: &str) -> std::io::Result<()> {
        let fan = fan_of(name);
        let root = open_dir_at(None, self.root.as_os_str())?;
        let sub_fd = open_dir_at(Some(&root), OsStr::new(sub))?;
        let fan_fd = open_dir_at(Some(&sub_fd), OsStr::new(fan))?;
        unlink_at(&fan_fd, OsStr::new(name), 0)
    }

    fn stats_path(&self) -> PathBuf {
        self.root.join("stats.json")
    }

    pub fn counters(&self) -> Counters {
        // Small: a few counters.
        read_own(&self.stats_path(), 1 << 20)
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

/// The store's two directories of entries.
const SUBDIRS: [&str; 2] = ["manifests", "blobs"];

/// A file of the store.
struct Entry {
    /// Modification time, ns: the last use (least recently used pruning).
    mtime: i128,
    size: u64,
    sub: &'static str,
    name: String,
}

/// Whether `name` is a temporary that [`write_atomic`] leaves behind a
/// write of a file named as `target` accepts (`.NAME.XXXXXX.tmp`).
fn is_temporary(name: &str, target: impl Fn(&str) -> bool) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(n, _)| target(n))
}

/// The fan directory of a store file's name: the first two characters of
/// the digest or key (of the name a temporary stands for).
fn fan_of(name: &str) -> &str {
    let n = name.strip_prefix('.').unwrap_or(name);
    &n[..2.min(n.len())]
}

/// Opens the directory `name` (relative to `parent`, else as a path)
/// without following a link as its last component.
fn open_dir_at(parent: Option<&OwnedFd>, name: &OsStr) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes())?;
    let at = parent.map_or(libc::AT_FDCWD, |p| p.as_raw_fd());
    // SAFETY: a valid NUL-terminated path; the descriptor is checked and
    // owned from here on.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// unlinkat(2): removes `name` in `dir` (a link itself, never its target).
fn unlink_at(dir: &OwnedFd, name: &OsStr, flags: libc::c_int) -> std::io::Result<()> {
    let c = CString::new(name.as_bytes())?;
    // SAFETY: a valid descriptor and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the store's own file `p`: a regular file (not through a link,
/// never blocking) of at most `max` bytes.
fn read_own(p: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let (f, len) = open_regular(p, true)?;
    if len > max {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
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
        let v = variant;
        for i in 0..10 {
            s.add_variant(&key, v(&i.to_string())).unwrap();
        }
        s.add_variant(&key, v("9")).unwrap();
        let m = s.manifest(&key);
        assert_eq!(m.variants.len(), MAX_VARIANTS);
        assert_eq!(m.variants[0], variant("9"));
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

    /// Links and foreign files in the store: prune, clear and usage never
    /// follow a link out of it, and never remove what it did not write.
    #[test]
    fn upkeep_never_follows_links_nor_removes_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let kept = s.put_blob(&[7u8; 100]).unwrap();
        // Outside files with store-like names, reached through a linked fan
        // directory and through a linked file.
        let victim = "ee".repeat(32);
        std::fs::write(outside.path().join(&victim), [0u8; 4000]).unwrap();
        let lone = outside.path().join("lone");
        std::fs::write(&lone, [0u8; 4000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), s.root().join("blobs/ee")).unwrap();
        let ff = "ff".repeat(32);
        std::fs::create_dir_all(s.root().join("blobs/ff")).unwrap();
        std::os::unix::fs::symlink(&lone, s.root().join("blobs/ff").join(&ff)).unwrap();
        // A foreign file in a fan directory, and a foreign directory.
        let foreign = s.root().join("blobs/ff/notes.txt");
        std::fs::write(&foreign, b"mine").unwrap();
        std::fs::create_dir_all(s.root().join("mine")).unwrap();
        std::fs::write(s.root().join("mine/x"), b"mine").unwrap();

        assert_eq!(
            s.usage(),
            Usage {
                manifests: 0,
                blobs: 1,
                bytes: 100
            }
        );
        assert_eq!(s.prune(1), (1, 100));
        assert!(s.get_blob(&kept).is_none());
        s.clear().unwrap();
        assert!(outside.path().join(&victim).exists());
        assert!(lone.exists());
        assert!(foreign.exists());
        assert!(s.root().join("mine/x").exists());
        // The store's own directories and files are gone; the links stay
        // (they are not the store's to remove either).
        assert!(s.root().join("blobs/ee").is_symlink());
        assert!(!s.root().join("manifests").exists());

        // The same with the store's own files only: all of it goes.
        let s2_dir = tempfile::tempdir().unwrap();
        let s2 = LocalStore::new(s2_dir.path());
        s2.put_blob(b"x").unwrap();
        s2.add_variant(&"ab".repeat(32), variant("x")).unwrap();
        s2.add_counters(&Counters::default()).unwrap();
        s2.clear().unwrap();
        assert!(!s2.root().exists());
    }

    fn variant(extra: &str) -> Variant {
        Variant {
            extras: vec![(
                "f".into(),
                blake3::hash(extra.as_bytes()).to_hex().to_string(),
            )],
            native: BlobRef {
                digest: "00".repeat(32),
                size: 0,
            },
            dwo: None,
            output: String::new(),
            seconds: None,
        }
    }

    /// Sizes and counts read from the store are bounded: an absurd size is
    /// a miss, not an allocation that aborts the build.
    #[test]
    fn absurd_sizes_and_counts_are_misses() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let b = s.put_blob(b"native").unwrap();
        let huge = BlobRef {
            digest: b.digest.clone(),
            size: 1 << 62,
        };
        assert_eq!(s.get_blob(&huge), None);
        // Within the bound but not the file's length: a miss, unread.
        let b = s.put_blob(b"native").unwrap();
        let longer = BlobRef {
            digest: b.digest.clone(),
            size: 1 << 20,
        };
        assert_eq!(s.get_blob(&longer), None);

        // A manifest that claims such a size, too many variants, too many
        // extras or too much output: a miss.
        let key = "ab".repeat(32);
        let write = |m: &Manifest| {
            let p = s.manifest_path(&key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, serde_json::to_vec(m).unwrap()).unwrap();
        };
        let ok = Manifest {
            key: key.clone(),
            variants: vec![variant("a")],
        };
        write(&ok);
        assert_eq!(s.manifest(&key), ok);
        let mut m = ok.clone();
        m.variants[0].native.size = 1 << 62;
        write(&m);
        assert!(s.manifest(&key).variants.is_empty());
        let mut m = ok.clone();
        m.variants = vec![variant("a"); MAX_VARIANTS + 1];
        write(&m);
        assert!(s.manifest(&key).variants.is_empty());
        let mut m = ok.clone();
        m.variants[0].extras = vec![m.variants[0].extras[0].clone(); MAX_EXTRAS + 1];
        write(&m);
        assert!(s.manifest(&key).variants.is_empty());
        let mut m = ok.clone();
        m.variants[0].output = "w".repeat(MAX_OUTPUT_TEXT + 1);
        write(&m);
        assert!(s.manifest(&key).variants.is_empty());
        // And none such is stored.
        assert!(s.add_variant(&key, m.variants[0].clone()).is_err());
        // A FIFO where a manifest should be: a miss at once.
        let p = s.manifest_path(&key);
        let _ = std::fs::remove_file(&p);
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
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
