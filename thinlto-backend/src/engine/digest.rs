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

fn hash_file(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().to_hex().to_string())
}

pub fn mtime_ns(path: &Path) -> Option<i128> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_nanos() as i128)
}
