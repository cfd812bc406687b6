//! A writer of `newc` cpio archives (the format the kernel unpacks as an
//! initramfs: `Documentation/driver-api/early-userspace/buffer-format.rst`).
//! Written here rather than by the `cpio` tool so that the bytes are fixed
//! by the content alone: every entry is owned by root, dated 0, numbered in
//! path order, whatever the files on disk say.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A regular file; `executable` gives mode 0755, else 0644.
    File {
        data: Vec<u8>,
        executable: bool,
    },
    Symlink {
        target: String,
    },
    /// A character device node (`/dev/console` is 5:1).
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// An archive being built: paths relative to the root, without a leading
/// `/`. Parent directories are added as needed; entries come out sorted
/// by path, so a directory precedes what it holds.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds `node` at `path` (and its missing parent directories),
    /// replacing an entry already there.
    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        assert!(
            !path.is_empty() && !path.split('/').any(|c| c.is_empty() || c == ".."),
            "cpio: bad archive path {path:?}"
        );
        let mut parent = String::new();
        for component in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.entries.entry(parent.clone()).or_insert(Node::Dir);
        }
        self.entries.insert(path.to_string(), node);
    }

    /// The archive's bytes: one `070701` header per entry, then the
    /// `TRAILER!!!` entry.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, node)) in self.entries.iter().enumerate() {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040755, 2, &[], (0, 0)),
                Node::File { data, executable } => (
                    if *executable { 0o100755 } else { 0o100644 },
                    1,
                    data,
                    (0, 0),
                ),
                Node::Symlink { target } => (0o120777, 1, target.as_bytes(), (0, 0)),
                Node::CharDev { major, minor } => (0o020600, 1, &[], (*major, *minor)),
            };
            // Inode numbers from 1 (0 is the trailer's); no two entries
            // share one, so the kernel makes no hard links.
            write_entry(&mut out, path, ino as u32 + 1, mode, nlink, data, rdev);
        }
        write_entry(&mut out, "TRAILER!!!", 0, 0, 1, &[], (0, 0));
        out
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) {
    let filesize = u32::try_from(data.len()).expect("cpio newc: a file over 4 GiB");
    let namesize = name.len() as u32 + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
    // rdevminor namesize check: eight hex digits each.
    let fields = [
        ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev_major, rdev_minor, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Header+name and data each end on a 4-byte boundary.
fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Runs the real `cpio` with `args` in `dir`, the archive on stdin.
    fn cpio(dir: &std::path::Path, args: &[&str], archive: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is not installed: run cargo xtask setup (package cpio)");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add(
            "init",
            Node::File {
                data: b"#!/bin/sh\necho hi\n".to_vec(),
                executable: true,
            },
        );
        // Sizes 0..=4 mod 4 exercise the padding.
        a.add(
            "lib/modules/fs/ext2/ext2.ko",
            Node::File {
                data: b"abcde".to_vec(),
                executable: false,
            },
        );
        a.add(
            "lib/modules/a-b.ko",
            Node::File {
                data: b"abcdefgh".to_vec(),
                executable: false,
            },
        );
        a.add(
            "bin/sh",
            Node::Symlink {
                target: "busybox".into(),
            },
        );
        a
    }

    #[test]
    fn cpio_lists_every_entry_parents_first_with_fixed_owner_and_date() {
        let mut a = sample();
        a.add("dev/console", Node::CharDev { major: 5, minor: 1 });
        let bytes = a.to_bytes();
        let d = tempfile::tempdir().unwrap();
        let names = cpio(d.path(), &["-t", "--quiet"], &bytes);
        assert_eq!(
            names.lines().collect::<Vec<_>>(),
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/a-b.ko",
                "lib/modules/fs",
                "lib/modules/fs/ext2",
                "lib/modules/fs/ext2/ext2.ko",
            ]
        );
        let long = cpio(d.path(), &["-tv", "--quiet", "--numeric-uid-gid"], &bytes);
        let console = long.lines().find(|l| l.ends_with("dev/console")).unwrap();
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(
            console.contains(" 5,   1 ") || console.contains(" 5, 1 "),
            "{console}"
        );
        let init = long.lines().find(|l| l.ends_with(" init")).unwrap();
        assert!(
            init.starts_with("-rwxr-xr-x") && init.contains(" 0        0 "),
            "{init}"
        );
        assert!(init.contains("1970"), "mtime 0: {init}");
        let sh = long.lines().find(|l| l.contains("bin/sh")).unwrap();
        assert!(
            sh.starts_with("lrwxrwxrwx") && sh.ends_with("bin/sh -> busybox"),
            "{sh}"
        );
        // The same content gives the same bytes, whatever the order of add.
        let mut b = Archive::new();
        b.add("dev/console", Node::CharDev { major: 5, minor: 1 });
        for (p, n) in sample().entries.into_iter().rev() {
            b.add(&p, n);
        }
        assert_eq!(b.to_bytes(), bytes);
    }

    #[test]
    fn cpio_extracts_the_files_contents_and_links() {
        // No device node: extracting one needs root.
        let bytes = sample().to_bytes();
        let d = tempfile::tempdir().unwrap();
        cpio(d.path(), &["-i", "-d", "--quiet"], &bytes);
        let p = d.path();
        assert_eq!(
            std::fs::read(p.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(p.join("lib/modules/fs/ext2/ext2.ko")).unwrap(),
            b"abcde"
        );
        assert_eq!(
            std::fs::read(p.join("lib/modules/a-b.ko")).unwrap(),
            b"abcdefgh"
        );
        assert_eq!(
            std::fs::read_link(p.join("bin/sh")).unwrap(),
            std::path::Path::new("busybox")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(p.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("init"), 0o755);
        assert_eq!(mode("lib/modules/a-b.ko"), 0o644);
    }

    #[test]
    fn entries_are_padded_to_four_bytes_and_end_with_the_trailer() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let trailer = bytes.windows(10).rposition(|w| w == b"TRAILER!!!").unwrap();
        // The trailer's name is the last thing, then its NUL and padding.
        assert!(bytes[trailer + 10..].iter().all(|b| *b == 0));
        // A header starts at every multiple of 4 where one is expected:
        // each `070701` is 4-aligned.
        for (i, _) in bytes
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == b"070701")
        {
            assert_eq!(i % 4, 0, "header at {i}");
        }
    }
}
