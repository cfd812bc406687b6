//! Stage 4's thin archive, written byte for byte as
//! `llvm-ar cDPrS --thin ARCHIVE MEMBERS…` writes it: `!<thin>\n`, a GNU
//! long-name table holding every member path (a relative one made relative
//! to the archive's directory, lexically; an absolute one as given; no
//! duplicate removed), then one header per member (deterministic: date, uid, gid 0,
//! mode 644) with the member's size and no content.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use thinlto_index::fsutil::write_atomic;

use crate::job::native_of;

/// The member list of the final archive: `builtin.order` with every object
/// listed in the index replaced by its native object — by exact path match.
pub fn final_members(order: &[String], index: &[String]) -> Vec<String> {
    let indexed: HashSet<&str> = index.iter().map(String::as_str).collect();
    order
        .iter()
        .map(|m| {
            if indexed.contains(m.as_str()) {
                native_of(m)
            } else {
                m.clone()
            }
        })
        .collect()
}

fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    // Lexical clean-up of `.` and `..`, as llvm's path handling does.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// `to` relative to the directory `from_dir`, both absolute and clean.
fn relative(from_dir: &Path, to: &Path) -> PathBuf {
    let a: Vec<_> = from_dir.components().collect();
    let b: Vec<_> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// The bytes of the thin archive at `archive` holding `members` (paths
/// relative to `cwd`, as on the command line).
pub fn thin_archive_bytes(archive: &Path, members: &[String], cwd: &Path) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let arch_abs = absolute(archive, cwd);
    let arch_dir = arch_abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut table = Vec::new();
    let mut entries = Vec::with_capacity(members.len());
    for m in members {
        let abs = absolute(Path::new(m), cwd);
        let size = std::fs::metadata(cwd.join(m))
            .with_context(|| format!("{m}: cannot add to {}", archive.display()))?
            .len();
        entries.push((table.len(), size));
        if Path::new(m).is_absolute() {
            // llvm-ar keeps an absolute member path as given, dots and all.
            table.extend_from_slice(m.as_bytes());
        } else {
            // A relative one becomes relative to the archive's directory,
            // lexically (no symlinks resolved).
            table.extend_from_slice(relative(&arch_dir, &abs).as_os_str().as_bytes());
        }
        table.extend_from_slice(b"/\n");
    }
    // The table is padded to an even length, and its size counts the pad.
    if table.len() % 2 == 1 {
        table.push(b'\n');
    }
    let mut out = b"!<thin>\n".to_vec();
    if members.is_empty() {
        // No members, no name table: the magic alone.
        return Ok(out);
    }
    out.extend_from_slice(header("//", "", "", "", "", table.len() as u64)?.as_bytes());
    out.extend_from_slice(&table);
    for (offset, size) in entries {
        out.extend_from_slice(
            header(&format!("/{offset}"), "0", "0", "0", "644", size)?.as_bytes(),
        );
    }
    Ok(out)
}

fn header(name: &str, date: &str, uid: &str, gid: &str, mode: &str, size: u64) -> Result<String> {
    let size = size.to_string();
    if name.len() > 16 || size.len() > 10 {
        bail!("archive member too large for the ar format");
    }
    Ok(format!(
        "{name:<16}{date:<12}{uid:<6}{gid:<6}{mode:<8}{size:<10}`\n"
    ))
}

/// Writes the stage-4 archive (atomically).
pub fn write_final_archive(
    archive: &Path,
    order: &[String],
    index: &[String],
    cwd: &Path,
) -> Result<Vec<String>> {
    let members = final_members(order, index);
    let bytes = thin_archive_bytes(archive, &members, cwd)?;
    write_atomic(archive, &bytes)?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_only() {
        let order = vec![
            "a/x.o".to_string(),
            "a/x_o".to_string(),
            "b/y.o".to_string(),
        ];
        let index = vec!["a/x.o".to_string()];
        assert_eq!(
            final_members(&order, &index),
            vec!["a/x.thinlto-native.o", "a/x_o", "b/y.o"]
        );
    }

    #[test]
    fn relative_paths() {
        let cwd = Path::new("/t/tree");
        let a = absolute(Path::new("out/vmlinux.a"), cwd);
        let m = absolute(Path::new("kernel/../kernel/core.o"), cwd);
        assert_eq!(
            relative(a.parent().unwrap(), &m),
            PathBuf::from("../kernel/core.o")
        );
        assert_eq!(
            relative(Path::new("/t/tree"), &absolute(Path::new("k/c.o"), cwd)),
            PathBuf::from("k/c.o")
        );
    }
}
