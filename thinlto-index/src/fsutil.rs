//! Output discipline shared by every tool: a file is either its old self or
//! completely new, never half-written; and it gets the mode any program
//! creating it would give it (0666 minus the umask, 0644 as a rule), as
//! kbuild's outputs have.
//!
//! This is the workspace's one way to write an output file. (thinlto-backend's
//! compile temporaries and job records are the exception: the compiler
//! creates its own output.)

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A new version of `path`, written to a temporary file beside it (same
/// file system, so the final rename is atomic) and moved over `path` by
/// [`AtomicFile::commit`]. Dropped without a commit, the temporary is
/// removed and `path` is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary `.NAME.XXXXXX.tmp` in `path`'s directory.
    pub fn new(path: &Path) -> Result<AtomicFile> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file path", path.display()))?;
        // tempfile's default is 0600; asking for 0666 passes it to open(2),
        // which applies the umask exactly as for any other new file.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .with_context(|| {
                format!(
                    "{}: cannot create a temporary file in {}",
                    path.display(),
                    dir.display()
                )
            })?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The temporary's path, for a program that writes the content itself
    /// (it must truncate and write, not replace, the file).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn file(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// Renames the temporary over the target.
    pub fn commit(mut self) -> Result<()> {
        self.tmp
            .as_file_mut()
            .flush()
            .with_context(|| format!("{}: write failed", self.path.display()))?;
        let path = self.path;
        self.tmp
            .persist(&path)
            .map_err(|e| e.error)
            .with_context(|| {
                format!(
                    "{}: cannot rename the temporary file into place",
                    path.display()
                )
            })?;
        Ok(())
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`. On any error the temporary is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by `fill`.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = AtomicFile::new(path)?;
    fill(out.file()).with_context(|| format!("{}: write failed", path.display()))?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process umask, read without changing it (Linux ≥ 4.7).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn mode_follows_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        write_atomic(&p, b"new").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask(), "mode {mode:o}");
    }

    #[test]
    fn failure_leaves_old_file_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        std::fs::write(&p, "old").unwrap();
        let r = write_atomic_with(&p, |f| {
            f.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
