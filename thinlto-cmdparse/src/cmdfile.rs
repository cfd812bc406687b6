//! One kbuild `.cmd` file, parsed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::make::unescape_savedcmd;
use crate::shell;

/// A malformed `.cmd` file: the file, the line, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub path: PathBuf,
    /// 1-based; 0 when the error is not about one line.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.path.display(), self.message)
        }
    }
}

impl std::error::Error for ParseError {}

/// One entry of `deps_<target>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dep {
    pub path: String,
    /// A `$(wildcard …)` entry (a config file that may not exist).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
}

/// One `#SYMVER <symbol> <crc>` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symver {
    pub symbol: String,
    #[serde(with = "crc_hex")]
    pub crc: u32,
}

/// The serde form of a CRC in every JSON contract of the workspace:
/// `"0x%08x"` as modpost prints it (`#[serde(with = "thinlto_cmdparse::crc_hex")]`
/// on a `u32`). Reading accepts any C number that fits 32 bits.
pub mod crc_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(crc: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{crc:08x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_c_number(&s)
            .filter(|(v, rest)| rest.is_empty() && *v <= u32::MAX as u64)
            .map(|(v, _)| v as u32)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a 32-bit CRC")))
    }
}

/// Where the backend flags came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagsFrom {
    /// The `saved_c_flags_` line kbuild's distributed mode writes.
    SavedCFlags,
    /// Derived from `savedcmd_` (trees without `saved_c_flags_`).
    Savedcmd,
}

/// The backend compiler flags of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFlags {
    pub argv: Vec<String>,
    pub from: FlagsFrom,
}

/// A parsed `.cmd` file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdFile {
    pub cmd_file: PathBuf,
    /// The target as the file spells it (possibly with `../`).
    pub target: String,
    pub source: Option<String>,
    /// The command, as make reads it back (`$$` → `$`, `$(pound)` → `#`).
    pub savedcmd: Option<String>,
    /// The raw text after `saved_c_flags_<target> := `.
    pub saved_c_flags: Option<String>,
    pub deps: Vec<Dep>,
    /// The CRCs, read by [`read_symvers`] with modpost's rules.
    pub symvers: Vec<Symver>,
    /// `#SYMVER` lines modpost skips (file and line named), for the tools
    /// to print: a bad CRC line is not worth failing an object over, since
    /// neither modpost nor the reference's `sed` fails on it.
    pub warnings: Vec<ParseError>,
}

/// `strtoul(s, &end, 0)` on a string that starts with a digit: the value
/// (saturated at `u64::MAX`, as strtoul saturates) and the unparsed rest.
pub fn parse_c_number(s: &str) -> Option<(u64, &str)> {
    let b = s.as_bytes();
    if !b.first()?.is_ascii_digit() {
        return None;
    }
    let (radix, start) =
        if b.len() > 2 && b[0] == b'0' && (b[1] | 0x20) == b'x' && b[2].is_ascii_hexdigit() {
            (16, 2)
        } else if b[0] == b'0' {
            (8, 0)
        } else {
            (10, 0)
        };
    let mut end = start;
    let mut v: u64 = 0;
    let mut overflow = false;
    while end < b.len() {
        let Some(d) = (b[end] as char).to_digit(radix) else {
            break;
        };
        match v
            .checked_mul(radix as u64)
            .and_then(|x| x.checked_add(d as u64))
        {
            Some(x) => v = x,
            None => overflow = true,
        }
        end += 1;
    }
    Some((if overflow { u64::MAX } else { v }, &s[end..]))
}

impl CmdFile {
    /// Reads and parses a `.cmd` file. Read into memory, never mapped:
    /// fixdep rewrites `.cmd` files in place, and a mapped file truncated
    /// meanwhile would be a SIGBUS instead of an error (they are small).
    pub fn read(path: &Path) -> Result<CmdFile, ParseError> {
        let bytes = std::fs::read(path).map_err(|e| ParseError {
            path: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        CmdFile::parse(path, &bytes)
    }

    /// Parses the bytes of a `.cmd` file. Unknown lines are ignored.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<CmdFile, ParseError> {
        let fail = |line: usize, message: String| ParseError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let symvers = read_symvers(bytes);
        let mut cmd = CmdFile {
            cmd_file: path.to_path_buf(),
            symvers: symvers.symvers,
            warnings: symvers
                .skipped
                .into_iter()
                .map(|(line, text)| {
                    fail(
                        line,
                        format!("skipping {text:?}: not `#SYMVER <symbol> <number>` (modpost skips it too)"),
                    )
                })
                .collect(),
            ..Default::default()
        };
        // UTF-8 is checked line by line, and not for comment lines (where
        // `#SYMVER` lines live: modpost reads them as bytes).
        let mut lines = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(i, l)| match std::str::from_utf8(l) {
                Ok(s) => Ok((i, s)),
                Err(_) if l.first() == Some(&b'#') => Ok((i, "#")),
                Err(_) => Err(fail(i + 1, "invalid UTF-8".to_string())),
            })
            .peekable();
        while let Some(next) = lines.next() {
            let (i, line) = next?;
            let n = i + 1;
            // `#SYMVER` lines are comments to make; their CRCs are read
            // below by modpost's own reader, which skips what it cannot
            // parse, so no CRC line can cost an object its flags.
            if line.starts_with('#') {
                continue;
            }
            let Some((lhs, rhs)) = line.split_once(" := ") else {
                continue;
            };
            let (kind, target) = if let Some(t) = lhs.strip_prefix("savedcmd_") {
                ("savedcmd", t)
            } else if let Some(t) = lhs.strip_prefix("cmd_") {
                ("savedcmd", t)
            } else if let Some(t) = lhs.strip_prefix("source_") {
                ("source", t)
            } else if let Some(t) = lhs.strip_prefix("saved_c_flags_") {
                ("saved_c_flags", t)
            } else if let Some(t) = lhs.strip_prefix("deps_") {
                ("deps", t)
            } else {
                continue;
            };
            if cmd.target.is_empty() {
                cmd.target = target.to_string();
            }
            match kind {
                "savedcmd" => cmd.savedcmd = Some(unescape_savedcmd(rhs)),
                "source" => cmd.source = Some(rhs.to_string()),
                "saved_c_flags" => cmd.saved_c_flags = Some(rhs.to_string()),
                _ => {
                    // `deps_T := \` then one entry per line, each ending in
                    // ` \`, until a line without the continuation.
                    let mut cont = rhs.trim_end().ends_with('\\');
                    let first = rhs.trim_end().trim_end_matches('\\').trim();
                    if !first.is_empty() {
                        push_dep(&mut cmd.deps, first);
                    }
                    while cont {
                        // The text after the last newline is "" at the end
                        // of the file: a continuation into it never ends.
                        let next = match lines.next() {
                            Some(r) => Some(r?),
                            None => None,
                        }
                        .filter(|(_, l)| !(l.is_empty() && lines.peek().is_none()));
                        let Some((_, l)) = next else {
                            return Err(fail(
                                n,
                                format!("deps_{target}: the continuation never ends"),
                            ));
                        };
                        cont = l.trim_end().ends_with('\\');
                        let entry = l.trim_end().trim_end_matches('\\').trim();
                        if !entry.is_empty() {
                            push_dep(&mut cmd.deps, entry);
                        }
                    }
                }
            }
        }
        if cmd.target.is_empty() && cmd.symvers.is_empty() {
            return Err(fail(
                0,
                "not a kbuild .cmd file: no savedcmd_, source_, deps_ or saved_c_flags_ line"
                    .into(),
            ));
        }
        Ok(cmd)
    }

    /// The backend compiler flags: the `saved_c_flags_` text split as `sh`
    /// splits it, or, without that line, the first command of `savedcmd_`
    /// minus the compiler, `-Wp,-MMD,…`, `-c`, `-o <target>` and the source.
    pub fn backend_flags(&self) -> Result<BackendFlags, ParseError> {
        let fail = |message: String| ParseError {
            path: self.cmd_file.clone(),
            line: 0,
            message,
        };
        if let Some(text) = &self.saved_c_flags {
            let argv = shell::split(text).map_err(|e| fail(format!("saved_c_flags_: {e}")))?;
            return Ok(BackendFlags {
                argv,
                from: FlagsFrom::SavedCFlags,
            });
        }
        let Some(text) = &self.savedcmd else {
            return Err(fail(
                "neither saved_c_flags_ nor savedcmd_: no flags for the backend".into(),
            ));
        };
        let commands = shell::split_commands(text).map_err(|e| fail(format!("savedcmd_: {e}")))?;
        let first = commands
            .into_iter()
            .next()
            .ok_or_else(|| fail("savedcmd_ is empty".into()))?;
        let mut argv = Vec::with_capacity(first.len());
        let mut words = first.into_iter().skip(1).peekable();
        let mut dropped_source = false;
        while let Some(w) = words.next() {
            if w == "-c" || w.starts_with("-Wp,-MMD,") || w.starts_with("-Wp,-MD,") {
                continue;
            }
            if w == "-o" {
                words.next();
                continue;
            }
            if !dropped_source && self.source.as_deref() == Some(w.as_str()) {
                dropped_source = true;
                continue;
            }
            argv.push(w);
        }
        if !dropped_source && self.source.is_none() {
            // No source_ line: the source is the last operand.
            if argv.last().is_some_and(|w| !w.starts_with('-')) {
                argv.pop();
            }
        }
        Ok(BackendFlags {
            argv,
            from: FlagsFrom::Savedcmd,
        })
    }
}

fn push_dep(deps: &mut Vec<Dep>, entry: &str) {
    if let Some(inner) = entry
        .strip_prefix("$(wildcard ")
        .and_then(|e| e.strip_suffix(')'))
    {
        deps.push(Dep {
            path: inner.to_string(),
            wildcard: true,
        });
    } else {
        deps.push(Dep {
            path: entry.to_string(),
            wildcard: false,
        });
    }
}

/// The `#SYMVER` lines of a `.cmd` file as [`read_symvers`] reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Symvers {
    pub symvers: Vec<Symver>,
    /// Lines that start with `#SYMVER ` but gave no CRC: (1-based line,
    /// the line's text).
    pub skipped: Vec<(usize, String)>,
}

/// The one `#SYMVER` reader of the workspace, with modpost's own rules
/// (`extract_crcs_for_object` in scripts/mod/modpost.c): a match is
/// `\n#SYMVER ` (so never on the first line), the name runs to the next
/// space (which may be on a later line), the CRC must start with a digit,
/// is read like `strtoul(…, 0)` and truncated to 32 bits, and must be
/// followed by `\n`; anything else is skipped. A missing space ends the
/// scan. Text after a NUL byte is not seen. modpost skips silently;
/// `skipped` lists the lines for tools that want to warn.
pub fn read_symvers(bytes: &[u8]) -> Symvers {
    let seen = match bytes.iter().position(|b| *b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    };
    const PAT: &[u8] = b"\n#SYMVER ";
    let finder = memchr::memmem::Finder::new(PAT);
    let mut out = Symvers::default();
    // The byte offsets of the lines that gave a CRC.
    let mut used = Vec::new();
    let mut p = 0;
    while let Some(found) = finder.find(&seen[p..]) {
        let line_start = p + found + 1;
        let name_start = p + found + PAT.len();
        let Some(sp) = seen[name_start..].iter().position(|b| *b == b' ') else {
            break;
        };
        let name = &seen[name_start..name_start + sp];
        p = name_start + sp + 1;
        if !seen.get(p).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        let digits_end = p + seen[p..]
            .iter()
            .position(|b| !b.is_ascii_alphanumeric())
            .unwrap_or(seen.len() - p);
        let Ok(num) = std::str::from_utf8(&seen[p..digits_end]) else {
            continue;
        };
        let Some((v, rest)) = parse_c_number(num) else {
            continue;
        };
        p += num.len() - rest.len();
        if seen.get(p) != Some(&b'\n') {
            continue;
        }
        used.push(line_start);
        out.symvers.push(Symver {
            symbol: String::from_utf8_lossy(name).into_owned(),
            crc: v as u32,
        });
    }
    let mut offset = 0;
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.starts_with(b"#SYMVER ") && used.binary_search(&offset).is_err() {
            out.skipped
                .push((i + 1, String::from_utf8_lossy(line).into_owned()));
        }
        offset += line.len() + 1;
    }
    out
}

/// kbuild's `$(dot-target).cmd`: `dir/foo.o` → `dir/.foo.o.cmd`.
pub fn dot_cmd_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dot = format!(".{name}.cmd");
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(dot),
        _ => PathBuf::from(dot),
    }
}

/// The `.cmd` file holding an object's front-end facts (flags, CRCs):
/// `dir/foo.o` → `dir/.foo.o.cmd`, and for a backend output
/// `dir/foo.thinlto-native.o` → `dir/.foo.o.cmd` as well.
pub fn cmd_file_for_object(object: &Path) -> PathBuf {
    let s = object.to_string_lossy();
    match s.strip_suffix(".thinlto-native.o") {
        Some(stem) => dot_cmd_path(Path::new(&format!("{stem}.o"))),
        None => dot_cmd_path(object),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "savedcmd_arch/x/../../virt/kvm/kvm_main.o := clang-19 -Wp,-MMD,arch/x/../../virt/kvm/.kvm_main.o.d -nostdinc -I./include -DX='\"a b\"' -DH=$(pound)1 -DD='$$$$' -O2  -c -o arch/x/../../virt/kvm/kvm_main.o arch/x/../../virt/kvm/kvm_main.c

source_arch/x/../../virt/kvm/kvm_main.o := arch/x/../../virt/kvm/kvm_main.c

deps_arch/x/../../virt/kvm/kvm_main.o := \\
    $(wildcard include/config/KVM) \\
  include/linux/export.h \\
  include/sample/api.h \\

arch/x/../../virt/kvm/kvm_main.o: $(deps_arch/x/../../virt/kvm/kvm_main.o)

$(deps_arch/x/../../virt/kvm/kvm_main.o):

saved_c_flags_arch/x/../../virt/kvm/kvm_main.o := -O2 -DX='\"a b\"'
#SYMVER kvm_sample 0x1234abcd
#SYMVER other 42
";

    fn parse(s: &str) -> CmdFile {
        CmdFile::parse(Path::new("virt/kvm/.kvm_main.o.cmd"), s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_every_field() {
        let c = parse(SAMPLE);
        assert_eq!(c.target, "arch/x/../../virt/kvm/kvm_main.o");
        assert_eq!(
            c.source.as_deref(),
            Some("arch/x/../../virt/kvm/kvm_main.c")
        );
        assert!(c.savedcmd.as_ref().unwrap().contains("-DH=#1 -DD='$$' -O2"));
        assert_eq!(c.saved_c_flags.as_deref(), Some("-O2 -DX='\"a b\"'"));
        assert_eq!(c.deps.len(), 3);
        assert!(c.deps[0].wildcard && c.deps[0].path == "include/config/KVM");
        assert_eq!(c.deps[2].path, "include/sample/api.h");
        assert_eq!(
            c.symvers,
            vec![
                Symver {
                    symbol: "kvm_sample".into(),
                    crc: 0x1234abcd
                },
                Symver {
                    symbol: "other".into(),
                    crc: 42
                },
            ]
        );
        let f = c.backend_flags().unwrap();
        assert_eq!(f.from, FlagsFrom::SavedCFlags);
        assert_eq!(f.argv, vec!["-O2", "-DX=\"a b\""]);
    }

    #[test]
    fn savedcmd_fallback_drops_what_the_backend_must_not_see() {
        let without: String = SAMPLE
            .lines()
            .filter(|l| !l.starts_with("saved_c_flags_"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&without);
        let f = c.backend_flags().unwrap();
        assert_eq!(f.from, FlagsFrom::Savedcmd);
        assert_eq!(
            f.argv,
            vec![
                "-nostdinc",
                "-I./include",
                "-DX=\"a b\"",
                "-DH=#1",
                "-DD=$$",
                "-O2"
            ]
        );
    }

    #[test]
    fn shell_expansions_are_refused_not_guessed() {
        let c = parse("saved_c_flags_a.o := -DX=$HOME -O2\n");
        let e = c.backend_flags().unwrap_err().to_string();
        assert!(e.contains("shell expansion"), "{e}");
    }

    #[test]
    fn fallback_stops_at_the_first_command() {
        let c = parse("savedcmd_a.o := cc -O2 -c -o a.o a.c; ./objtool a.o\nsource_a.o := a.c\n");
        assert_eq!(c.backend_flags().unwrap().argv, vec!["-O2"]);
        let c = parse("cmd_a.o := cc -O1 -c -o a.o a.c\n");
        assert_eq!(c.backend_flags().unwrap().argv, vec!["-O1"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = CmdFile::parse(Path::new("d/.a.o.cmd"), b"deps_a.o := \\\n  x.h \\\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d/.a.o.cmd:1: deps_a.o: the continuation never ends"),
            "{e}"
        );
        let e = CmdFile::parse(Path::new("d/.a.o.cmd"), b"savedcmd_a.o := x\n\xff\n").unwrap_err();
        assert_eq!(e.to_string(), "d/.a.o.cmd:2: invalid UTF-8");
        let e = parse("saved_c_flags_a.o := -DX='unterminated\n")
            .backend_flags()
            .unwrap_err();
        assert!(e.to_string().contains("unterminated single quote"), "{e}");
        assert!(CmdFile::parse(Path::new("x"), b"hello\n").is_err());
    }

    #[test]
    fn a_bad_symver_line_is_a_warning_not_an_error() {
        // modpost skips such a line and the reference's sed never reads
        // it: the flags and the other CRCs must survive it.
        let c = CmdFile::parse(
            Path::new("d/.a.o.cmd"),
            b"savedcmd_a.o := x\n#SYMVER ok 0x1\n#SYMVER bogus notanumber\n#SYMVER \xff 2x\nsaved_c_flags_a.o := -O2\n",
        )
        .unwrap();
        assert_eq!(c.backend_flags().unwrap().argv, vec!["-O2"]);
        assert_eq!(
            c.symvers,
            vec![Symver {
                symbol: "ok".into(),
                crc: 1
            }]
        );
        let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("d/.a.o.cmd:3: skipping \"#SYMVER bogus notanumber\""),
            "{w:?}"
        );
        assert!(w[1].starts_with("d/.a.o.cmd:4: "), "{w:?}");
    }

    #[test]
    fn modpost_rules() {
        let text = b"#SYMVER first 0x1\nx\n#SYMVER a 0x10\n#SYMVER b 010\n#SYMVER c 12x\n#SYMVER d x1\n#SYMVER e 99999999999\n#SYMVER f 0x1 \n#SYMVER g 7\n";
        let got: Vec<(String, u32)> = read_symvers(text)
            .symvers
            .into_iter()
            .map(|s| (s.symbol, s.crc))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0x10),
                ("b".into(), 8),
                ("e".into(), 99999999999u64 as u32),
                ("g".into(), 7),
            ]
        );
        // A name line without a space swallows the next line, as in modpost.
        let got = read_symvers(b"\n#SYMVER lone\n#SYMVER next 0x2\n");
        assert!(got.symvers.is_empty(), "{got:?}");
        assert_eq!(got.skipped.len(), 2, "{got:?}");
        assert!(read_symvers(b"\n#SYMVER a 1\0\n#SYMVER b 2\n")
            .symvers
            .is_empty());
        // Every line modpost skipped is listed, by line number.
        let skipped: Vec<usize> = read_symvers(text).skipped.iter().map(|s| s.0).collect();
        assert_eq!(skipped, vec![1, 5, 6, 8]);
    }

    #[test]
    fn object_to_cmd_paths() {
        assert_eq!(
            cmd_file_for_object(Path::new("d/foo.o")),
            PathBuf::from("d/.foo.o.cmd")
        );
        assert_eq!(
            cmd_file_for_object(Path::new("d/foo.thinlto-native.o")),
            PathBuf::from("d/.foo.o.cmd")
        );
        assert_eq!(
            cmd_file_for_object(Path::new("foo.o")),
            PathBuf::from(".foo.o.cmd")
        );
        assert_eq!(
            dot_cmd_path(Path::new("d/foo.thinlto-native.o")),
            PathBuf::from("d/.foo.thinlto-native.o.cmd")
        );
    }

    #[test]
    fn c_numbers_like_strtoul() {
        assert_eq!(parse_c_number("0x1f rest"), Some((31, " rest")));
        assert_eq!(parse_c_number("017"), Some((15, "")));
        assert_eq!(parse_c_number("0x"), Some((0, "x")));
        assert_eq!(parse_c_number("09"), Some((0, "9")));
        assert_eq!(parse_c_number("x1"), None);
    }
}
