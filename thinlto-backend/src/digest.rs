//! Content digests (blake3) of the files a job reads.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

/// Digests of files, each file hashed once per run.
#[derive(Default)]
pub struct DigestCache {
    map: Mutex<HashMap<String, Option<String>>>,
}

impl DigestCache {
    /// blake3 of a file's content, or None if it cannot be read.
    pub fn digest(&self, path: &str) -> Option<String> {
        if let Some(d) = self.map.lock().unwrap().get(path) {
            return d.clone();
        }
        let d = hash_file(Path::new(path));
        self.map.lock().unwrap().insert(path.to_string(), d.clone());
        d
    }
}

/// blake3 of a regular file's content (see [`digest_file`]).
pub(crate) fn hash_file(path: &Path) -> Option<String> {
    let mut h = blake3::Hasher::new();
    digest_file(path, u64::MAX, |b| {
        h.update(b);
    })
    .ok()?;
    Some(h.finalize().to_hex().to_string())
}

/// Opens `path` for reading as the cache reads the files it does not own
/// (extras, inputs) and, with `no_follow`, its own entries: without
/// blocking (O_NONBLOCK: a FIFO or a device that a manifest names cannot
/// hang the build), closed on exec, and only if it is a regular file
/// (`/dev/zero` would never end). Returns the file and its length.
pub fn open_regular(path: &Path, no_follow: bool) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if no_follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok((f, m.len()))
}

/// Feeds the content of the regular file `path` to `update` (the one way
/// the cache digests a file: blake3 here, SHA-256 for the remote tier);
/// an error if it is not a regular file ([`open_regular`]) or holds more
/// than `max_bytes`. Returns the number of bytes read.
pub fn digest_file(
    path: &Path,
    max_bytes: u64,
    mut update: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: larger than {max_bytes} bytes", path.display()),
        )
    };
    let (f, len) = open_regular(path, false)?;
    if len > max_bytes {
        return Err(too_big());
    }
    // A file that grows while it is read stops at the bound all the same.
    let mut r = f.take(max_bytes.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max_bytes {
            return Err(too_big());
        }
        update(&buf[..n]);
    }
    Ok(total)
}

pub fn mtime_ns(path: &Path) -> Option<i128> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_nanos() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_digested() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(
            hash_file(&file).as_deref(),
            Some(blake3::hash(b"abc").to_hex().as_str())
        );
        // A FIFO nobody writes: refused at once (it used to block forever
        // in open), and so is a device that never ends, and a directory.
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(hash_file(&fifo), None);
        assert_eq!(hash_file(Path::new("/dev/zero")), None);
        assert_eq!(hash_file(d.path()), None);
        // Bounded: a file over the limit is an error, not read to the end.
        assert!(digest_file(&file, 2, |_| {}).is_err());
        assert_eq!(digest_file(&file, 3, |_| {}).unwrap(), 3);
        // A link to a regular file is followed unless asked not to be.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link, false).is_ok());
        assert!(open_regular(&link, true).is_err());
    }
}
