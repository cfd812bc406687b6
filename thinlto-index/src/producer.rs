//! Which LLVM wrote a bitcode object: the `IDENTIFICATION_BLOCK` (id 13)
//! that LLVM ≥ 3.8 puts before each module, holding a `STRING` record
//! (`LLVM19.1.7`) and an `EPOCH` record.
//!
//! On the shared bitstream reader ([`crate::bitstream`]), enough for that
//! one block: it reads the top-level blocks of the stream (skipping others
//! by their length) and, in block 13, records either unabbreviated or by
//! the abbreviations the block itself defines (LLVM writes the string as a
//! char6 array). It is bounded by the bytes it is given and returns an
//! error, never panics, on anything it does not expect.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::bitstream::{
    self, Abbrev, BitReader, DEFINE_ABBREV, END_BLOCK, ENTER_SUBBLOCK, FIRST_APPLICATION_ABBREV,
    UNABBREV_RECORD,
};

/// What the identification block of a bitcode object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// The `STRING` record: `LLVM19.1.7`.
    pub string: String,
    /// The `EPOCH` record (0 for every LLVM so far).
    pub epoch: Option<u64>,
}

impl Producer {
    /// major.minor.patch of the producer string (`LLVM19.1.7` → 19.1.7).
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        parse_version(self.string.strip_prefix("LLVM")?)
    }
}

/// `19.1.7` at the start of `s` (anything may follow: `19.1.7git`, ` (…)`).
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.splitn(3, '.');
    let num = |p: &str| -> Option<u32> {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let major = num(parts.next()?)?;
    let minor = num(parts.next()?)?;
    let patch = num(parts.next()?)?;
    Some((major, minor, patch))
}

/// A tool's version from its `--version` line: the first word that reads
/// as major.minor.patch (`Debian clang version 19.1.7 (3~deb12u1)`,
/// `Debian LLD 19.1.7 (compatible with GNU linkers)` → 19.1.7).
pub fn tool_version(line: &str) -> Option<(u32, u32, u32)> {
    line.split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .and_then(parse_version)
}

/// The warning to print when `tool` is another LLVM than the one that
/// wrote `object` (kbuild's front end): its outputs then differ from what
/// the front end's own LLVM would make. None when they are the same, or
/// when either version cannot be read (the check is advice, not a gate).
/// Runs `tool --version` once.
pub fn mismatch(tool: &crate::Tool, object: &Path) -> Option<String> {
    let producer = producer_of(object).ok()?;
    let made_by = producer.version()?;
    let mut probed = tool.clone();
    probed.probe().ok()?;
    let line = probed.version?;
    let runs = tool_version(&line)?;
    let v = |(a, b, c): (u32, u32, u32)| format!("{a}.{b}.{c}");
    (made_by != runs).then(|| {
        format!(
            "{} was written by {} (its IDENTIFICATION block), but {}={} is {} ({:?}, from {}): \
             its outputs will differ from those of LLVM {}; name the front end's LLVM with --{} or {}=",
            object.display(),
            producer.string,
            tool.role.var(),
            tool.spelled,
            v(runs),
            line,
            tool.origin,
            v(made_by),
            tool.role.var().to_ascii_lowercase(),
            tool.role.var()
        )
    })
}

/// How much of a file [`producer_of`] reads: the identification block is
/// the first block of the stream (a few dozen bytes in), so this is plenty,
/// and it bounds the cost on any file.
pub const HEAD_BYTES: u64 = 64 * 1024;

/// Reads the producer of a bitcode object (raw or wrapped) from the first
/// [`HEAD_BYTES`] of the file.
pub fn producer_of(path: &Path) -> Result<Producer> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut head))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    read_producer(&head).with_context(|| format!("{}: no LLVM producer", path.display()))
}

/// The identification block of a bitcode stream (or of a bitcode wrapper).
pub fn read_producer(bytes: &[u8]) -> Result<Producer> {
    let mut r = BitReader::new(bitstream::unwrap(bytes)?);
    // Top level: abbreviation width 2, only blocks.
    loop {
        if r.remaining_bits() < 2 {
            bail!("end of the bitstream before an identification block");
        }
        let id = r.read(2)?;
        if id != ENTER_SUBBLOCK {
            bail!("unexpected abbreviation {id} at the top level of the bitstream");
        }
        let header = |r: &mut BitReader| -> Result<(u64, u64, u64)> {
            let block = r.vbr(8)?;
            let width = r.vbr(4)?;
            r.align32();
            Ok((block, width, r.read(32)?))
        };
        let (block, width, words) = header(&mut r).context("truncated block header")?;
        if block == IDENTIFICATION_BLOCK {
            if !(1..=32).contains(&width) {
                bail!("identification block with abbreviation width {width}");
            }
            return read_identification(&mut r, width as u32);
        }
        // Not the block we want: skip it whole.
        r.skip_words(words)?;
    }
}

const IDENTIFICATION_BLOCK: u64 = 13;
const CODE_STRING: u64 = 1;
const CODE_EPOCH: u64 = 2;
/// Longest producer string accepted (real ones are ~10 characters).
const MAX_STRING: u64 = 256;
/// Most abbreviations accepted in the block (LLVM defines 2).
const MAX_ABBREVS: usize = 64;

fn read_identification(r: &mut BitReader, width: u32) -> Result<Producer> {
    let mut abbrevs: Vec<Abbrev> = Vec::new();
    let mut string = None;
    let mut epoch = None;
    loop {
        let id = r.read(width).context("truncated identification block")?;
        match id {
            END_BLOCK => break,
            ENTER_SUBBLOCK => bail!("a block inside the identification block"),
            DEFINE_ABBREV => {
                if abbrevs.len() >= MAX_ABBREVS {
                    bail!("too many abbreviations in the identification block");
                }
                abbrevs.push(r.abbrev()?);
            }
            _ => {
                let (code, ops) = if id == UNABBREV_RECORD {
                    r.unabbreviated(MAX_STRING)?
                } else {
                    let abbrev = abbrevs
                        .get((id - FIRST_APPLICATION_ABBREV) as usize)
                        .with_context(|| format!("undefined abbreviation {id}"))?;
                    let mut values = r.abbreviated(abbrev, MAX_STRING)?;
                    if values.is_empty() {
                        bail!("an abbreviation with no record code");
                    }
                    let code = values.remove(0);
                    (code, values)
                };
                match code {
                    CODE_STRING => {
                        let s: Option<String> = ops
                            .iter()
                            .map(|&c| u8::try_from(c).ok().map(char::from))
                            .collect();
                        string = Some(s.context("a producer string that is not bytes")?);
                    }
                    CODE_EPOCH => epoch = ops.first().copied(),
                    _ => {}
                }
            }
        }
    }
    match string {
        Some(string) => Ok(Producer { string, epoch }),
        None => bail!("identification block without a STRING record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ThinLTO object compiled by the installed clang-19.
    fn clang19_object(extra: &[&str]) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let clang = Path::new("/usr/lib/llvm-19/bin/clang");
        assert!(
            clang.exists(),
            "{}: LLVM 19 is not installed",
            clang.display()
        );
        std::fs::write(d.path().join("a.c"), "int f(int x) { return x + 1; }\n").unwrap();
        let out = std::process::Command::new(clang)
            .current_dir(d.path())
            .args(["-flto=thin", "-c", "a.c", "-o", "a.o"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read(d.path().join("a.o")).unwrap()
    }

    fn clang19_version() -> (u32, u32, u32) {
        let out = std::process::Command::new("/usr/lib/llvm-19/bin/clang")
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        tool_version(text.lines().next().unwrap()).unwrap()
    }

    #[test]
    fn reads_a_clang_19_object_plain_split_and_wrapped() {
        let want = clang19_version();
        for extra in [
            &[][..],
            &["-fsplit-lto-unit"][..],
            // Darwin targets get the bitcode wrapper header.
            &["-target", "x86_64-apple-darwin"][..],
        ] {
            let bytes = clang19_object(extra);
            let p = read_producer(&bytes).unwrap_or_else(|e| panic!("{extra:?}: {e:#}"));
            assert!(p.string.starts_with("LLVM19."), "{extra:?}: {p:?}");
            assert_eq!(p.version(), Some(want), "{extra:?}: {p:?}");
            assert_eq!(p.epoch, Some(0), "{extra:?}");
        }
        let wrapped = clang19_object(&["-target", "x86_64-apple-darwin"]);
        assert_eq!(&wrapped[..4], &[0xDE, 0xC0, 0x17, 0x0B]);
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        let bytes = clang19_object(&[]);
        // Every prefix short of the whole identification block fails
        // cleanly, every longer one reads it (and it ends early).
        let whole = (0..=bytes.len())
            .find(|&n| read_producer(&bytes[..n]).is_ok())
            .unwrap();
        assert!(whole > 8 && whole <= 64, "the block ends at byte {whole}");
        for n in 0..256 {
            assert_eq!(read_producer(&bytes[..n]).is_ok(), n >= whole, "prefix {n}");
        }
        // Every single-byte corruption of the head: any answer but a panic.
        for i in 0..64 {
            for v in [0x00, 0xFF, 0x5A] {
                let mut b = bytes[..256].to_vec();
                b[i] = v;
                let _ = read_producer(&b);
            }
        }
        // A pseudo-random stream after a valid magic.
        let mut x: u32 = 0x1234_5678;
        for len in [0, 4, 17, 1000] {
            let mut b = b"BC\xC0\xDE".to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b.push(x as u8);
            }
            let _ = read_producer(&b);
        }
        let e = read_producer(b"\x7FELF\x02\x01\x01").unwrap_err();
        assert!(e.to_string().contains("not LLVM bitcode"), "{e}");
        // A wrapper whose offset points past the end.
        let mut w = vec![0xDE, 0xC0, 0x17, 0x0B, 0, 0, 0, 0];
        w.extend(u32::MAX.to_le_bytes());
        w.extend(16u32.to_le_bytes());
        assert!(read_producer(&w).is_err());
        // A block length that runs past the end.
        let mut b = b"BC\xC0\xDE".to_vec();
        // ENTER_SUBBLOCK (1), block 0, width 2, align, then 0xFFFFFFFF words.
        b.extend([0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF]);
        let e = read_producer(&b).unwrap_err();
        assert!(format!("{e:#}").contains("past the end"), "{e:#}");
    }

    #[test]
    fn versions() {
        assert_eq!(
            tool_version("Debian clang version 19.1.7 (3~deb12u1)"),
            Some((19, 1, 7))
        );
        assert_eq!(tool_version("clang version 22.1.8git"), Some((22, 1, 8)));
        assert_eq!(
            tool_version("Debian LLD 19.1.7 (compatible with GNU linkers)"),
            Some((19, 1, 7))
        );
        assert_eq!(tool_version("clang version 19"), None);
        let p = Producer {
            string: "LLVM19.1.7".into(),
            epoch: Some(0),
        };
        assert_eq!(p.version(), Some((19, 1, 7)));
        assert_eq!(parse_version("19.1"), None);
    }
}
