//! The record of a built native object, `dir/.foo.thinlto-native.o.cmd`.
//!
//! Its first line is exactly what kbuild's `if_changed` writes
//! (`savedcmd_<target> := <command, make-escaped>`), so make's reference
//! flow reads our records and we read its. What else we need for
//! content-based decisions follows as make comment lines, which make
//! ignores when it includes the file:
//!
//! ```text
//! # thinlto-dist: digest <path> <blake3 hex>      (foo.o, foo.o.thinlto.bc, each import)
//! # thinlto-dist: mtime <path> <ns since epoch>   (foo.o as the front end left it)
//! # thinlto-dist: seconds <wall seconds of the last build>
//! # thinlto-dist: traced                          (the compile was traced whole)
//! # thinlto-dist: read <path> <blake3 hex>        (each file it read beyond its inputs)
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::job::temp_path;

use thinlto_cmdparse::make::{escape_savedcmd, unescape_savedcmd};

const TAG: &str = "# thinlto-dist: ";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NativeRecord {
    /// The command, as make reads it back.
    pub command: Option<String>,
    /// path → blake3 hex, for every input whose content decides the output.
    pub digests: BTreeMap<String, String>,
    /// path → mtime in ns, for the front-end object.
    pub mtimes: BTreeMap<String, i128>,
    pub seconds: Option<f64>,
    /// The compile that built the native was traced whole
    /// ([`crate::engine::reads`]), or its reads are otherwise known (a
    /// cache hit's variant extras, a farm compile's input root): `reads`
    /// is every file it read beyond its inputs, and no other file can
    /// change its output.
    pub traced: bool,
    /// path → blake3 hex, for each file the traced compile read beyond
    /// its inputs (an `.incbin`'d file).
    pub reads: BTreeMap<String, String>,
}

impl NativeRecord {
    /// Reads a record; a missing or unreadable file is an empty record
    /// (the job then simply runs).
    pub fn read(path: &Path) -> NativeRecord {
        match std::fs::read_to_string(path) {
            Ok(text) => NativeRecord::parse(&text),
            Err(_) => NativeRecord::default(),
        }
    }

    pub fn parse(text: &str) -> NativeRecord {
        let mut r = NativeRecord::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("savedcmd_") {
                if let Some((_, cmd)) = rest.split_once(" := ") {
                    r.command = Some(unescape_savedcmd(cmd));
                }
            } else if line.strip_prefix(TAG) == Some("traced") {
                r.traced = true;
            } else if let Some(rest) = line.strip_prefix(TAG) {
                // Paths may hold spaces: the value is the last field.
                let mut it = rest.splitn(2, ' ');
                let (Some(kind), Some(body)) = (it.next(), it.next()) else {
                    continue;
                };
                match kind {
                    "digest" => {
                        if let Some((p, d)) = body.rsplit_once(' ') {
                            r.digests.insert(p.to_string(), d.to_string());
                        }
                    }
                    "mtime" => {
                        if let Some((p, t)) = body.rsplit_once(' ') {
                            if let Ok(t) = t.parse() {
                                r.mtimes.insert(p.to_string(), t);
                            }
                        }
                    }
                    "seconds" => r.seconds = body.parse().ok(),
                    "read" => {
                        if let Some((p, d)) = body.rsplit_once(' ') {
                            r.reads.insert(p.to_string(), d.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        r
    }

    /// The file's text; `target` is the native object as kbuild spells it.
    pub fn render(&self, target: &str) -> String {
        let mut s = format!(
            "savedcmd_{target} := {}\n",
            escape_savedcmd(self.command.as_deref().unwrap_or(""))
        );
        for (p, d) in &self.digests {
            writeln!(s, "{TAG}digest {p} {d}").unwrap();
        }
        for (p, t) in &self.mtimes {
            writeln!(s, "{TAG}mtime {p} {t}").unwrap();
        }
        if let Some(sec) = self.seconds {
            writeln!(s, "{TAG}seconds {sec:.3}").unwrap();
        }
        if self.traced {
            writeln!(s, "{TAG}traced").unwrap();
        }
        for (p, d) in &self.reads {
            writeln!(s, "{TAG}read {p} {d}").unwrap();
        }
        s
    }
}

/// Writes a record as make's `printf > file` would leave it (mode 0666
/// less the umask), never half-written. The caller removed the old record
/// before, so the file is new: up to a page is created and written with
/// one `write`, which no signal splits (a reader, or a run after a crash,
/// sees no file, an empty one — no command, so the job reruns — or the
/// whole record) and costs no rename; a longer record goes through a
/// temporary and a rename.
pub fn write_record(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let open_new = |p: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(p)
    };
    if text.len() <= 4096 {
        let mut f = match open_new(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Someone else wrote one meanwhile: replace it whole.
                return write_record_via_temp(path, text, open_new);
            }
            Err(e) => return Err(e),
        };
        let r = f.write(text.as_bytes());
        return match r {
            Ok(n) if n == text.len() => Ok(()),
            Ok(_) | Err(_) => {
                drop(f);
                let _ = std::fs::remove_file(path);
                Err(r
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("short write")))
            }
        };
    }
    write_record_via_temp(path, text, open_new)
}

fn write_record_via_temp(
    path: &Path,
    text: &str,
    open_new: impl Fn(&Path) -> std::io::Result<std::fs::File>,
) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let r = (|| {
        let mut f = open_new(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_kbuild_records() {
        let mut r = NativeRecord {
            command: Some("clang '-DX=\"$a #b\"' -c -o a b".into()),
            ..Default::default()
        };
        r.digests.insert("dir with space/a.o".into(), "ab12".into());
        r.mtimes.insert("a.o".into(), 1_700_000_000_123_456_789);
        r.seconds = Some(0.25);
        r.traced = true;
        r.reads
            .insert("firmware/blob with space.bin".into(), "cd34".into());
        let text = r.render("a.thinlto-native.o");
        assert!(text.starts_with(
            "savedcmd_a.thinlto-native.o := clang '-DX=\"$$a $(pound)b\"' -c -o a b\n"
        ));
        assert_eq!(NativeRecord::parse(&text), r);
        // kbuild's own record: command only.
        let k = NativeRecord::parse("savedcmd_x.o := cc -c x.c\n");
        assert_eq!(k.command.as_deref(), Some("cc -c x.c"));
        assert!(k.digests.is_empty());
    }
}
