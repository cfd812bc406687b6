//! Archive member lists, exactly as `llvm-ar t` prints them.
//!
//! For a regular archive that is each member's stored name. For a GNU thin
//! archive (`!<thin>`) members are stored relative to the archive's
//! directory, and `llvm-ar t` prints them joined to the archive path's
//! directory *as given* (`out/vmlinux.a` holding `../a/b.o` prints
//! `out/../a/b.o`), without normalising: so do we, byte for byte.

use std::path::Path;

use anyhow::{bail, Context, Result};
use object::read::archive::ArchiveFile;

/// The member names of an archive held in memory; `archive_path` is the
/// path as the user spelled it (for thin archives' relative names).
pub fn members_from_bytes(archive_path: &[u8], data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let archive =
        ArchiveFile::parse(data).map_err(|e| anyhow::anyhow!("not a valid archive: {e}"))?;
    let dir: &[u8] = match archive_path.iter().rposition(|b| *b == b'/') {
        Some(i) => &archive_path[..=i],
        None => b"",
    };
    let mut out = Vec::new();
    for (i, member) in archive.members().enumerate() {
        let member = member.map_err(|e| anyhow::anyhow!("member {}: {e}", i + 1))?;
        let name = member.name();
        if name.is_empty() {
            bail!("member {} has an empty name", i + 1);
        }
        if archive.is_thin() && !name.starts_with(b"/") {
            let mut full = dir.to_vec();
            full.extend_from_slice(name);
            out.push(full);
        } else {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Reads an archive (memory-mapped) and returns its member list.
pub fn archive_members(path: &Path) -> Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // Mapped: a kernel's vmlinux.a can be large (a regular archive holds the
    // objects) and only its headers are read.
    // SAFETY: read-only map; archives are replaced, not edited in place.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("{}: cannot map", path.display()))?;
    members_from_bytes(path.as_os_str().as_bytes(), &map)
        .with_context(|| format!("{}", path.display()))
}

/// `llvm-ar t A B …`: the member lists one after the other, one per line.
pub fn order(archives: &[impl AsRef<Path>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for a in archives {
        for m in archive_members(a.as_ref())? {
            out.extend_from_slice(&m);
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thin(names: &[&str]) -> Vec<u8> {
        // A GNU thin archive with a long-name table, as llvm-ar writes it.
        let mut table = Vec::new();
        let mut offsets = Vec::new();
        for n in names {
            offsets.push(table.len());
            table.extend_from_slice(n.as_bytes());
            table.extend_from_slice(b"/\n");
        }
        let mut a = b"!<thin>\n".to_vec();
        a.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "//",
                "",
                "",
                "",
                "",
                table.len()
            )
            .as_bytes(),
        );
        a.extend_from_slice(&table);
        if table.len() % 2 == 1 {
            a.push(b'\n');
        }
        for off in offsets {
            a.extend_from_slice(
                format!(
                    "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    format!("/{off}"),
                    "0",
                    "0",
                    "0",
                    "644",
                    "100"
                )
                .as_bytes(),
            );
        }
        a
    }

    #[test]
    fn thin_members_join_the_archive_directory() {
        let a = thin(&["kernel/core.o", "../x y/z.o"]);
        let m = members_from_bytes(b"out/vmlinux.a", &a).unwrap();
        assert_eq!(
            m,
            vec![b"out/kernel/core.o".to_vec(), b"out/../x y/z.o".to_vec()]
        );
        let m = members_from_bytes(b"vmlinux.a", &a).unwrap();
        assert_eq!(m[0], b"kernel/core.o");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(members_from_bytes(b"x.a", b"not an archive").is_err());
        let a = thin(&["kernel/core.o", "lib/x.o"]);
        let full = members_from_bytes(b"x.a", &a).unwrap();
        // A cut archive is an error, or, cut exactly between members, the
        // shorter list (llvm-ar reads it so too); never a wrong member.
        let mut errors = 0;
        for cut in 0..a.len() {
            match members_from_bytes(b"x.a", &a[..cut]) {
                Ok(m) => assert!(
                    m.len() < full.len() && full.starts_with(&m),
                    "cut {cut}: {m:?}"
                ),
                Err(e) => {
                    errors += 1;
                    let e = e.to_string();
                    assert!(
                        e.starts_with("not a valid archive") || e.starts_with("member "),
                        "cut {cut}: {e}"
                    );
                }
            }
        }
        assert!(errors > a.len() / 2, "{errors} of {} cuts failed", a.len());
        // Cut inside the second member's header: that member is named.
        let e = members_from_bytes(b"x.a", &a[..a.len() - 20])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("member 2: "), "{e}");
    }
}
