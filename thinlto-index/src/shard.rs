//! The modules a ThinLTO index shard (`foo.o.thinlto.bc`, written by
//! `--thinlto-index-only`) names: its `MODULE_STRTAB_BLOCK` (id 19, inside
//! the `MODULE_BLOCK`) has one `ENTRY` record per module whose summaries
//! the shard holds — the module itself and every module it imports from.
//! The backend (`clang -fthinlto-index=`) loads exactly those files, so
//! they are the job's complete input list, whatever `.imports` files the
//! thin link wrote or did not write.
//!
//! On the shared bitstream reader ([`crate::bitstream`]): only the module
//! block and its string table are decoded (LLVM writes the table first,
//! so a shard is read a few hundred bytes deep), other blocks are skipped
//! by their length. Bounded by the bytes given; anything unexpected is an
//! error, never a panic.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::bitstream::{
    self, Abbrev, BitReader, BLOCKINFO_BLOCK, BLOCKINFO_CODE_SETBID, DEFINE_ABBREV, END_BLOCK,
    ENTER_SUBBLOCK, FIRST_APPLICATION_ABBREV, UNABBREV_RECORD,
};

const MODULE_BLOCK: u64 = 8;
const MODULE_STRTAB_BLOCK: u64 = 19;
/// `MST_CODE_ENTRY: [valueid, namechar x N]`.
const MST_CODE_ENTRY: u64 = 1;
/// Longest module path accepted (Linux's PATH_MAX), and so the longest
/// array or record read anywhere on the way.
const MAX_PATH: u64 = 4096;
/// Most abbreviations one block may define (LLVM's define a handful).
const MAX_ABBREVS: usize = 1024;

/// The module paths the shard at `path` names, in its order, each once.
pub fn module_paths_of(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    module_paths(&bytes).with_context(|| {
        format!(
            "{}: not a ThinLTO index shard (expected a module string table)",
            path.display()
        )
    })
}

/// The module paths of an index shard's bytes, in its order, each once.
pub fn module_paths(bytes: &[u8]) -> Result<Vec<String>> {
    let mut r = BitReader::new(bitstream::unwrap(bytes)?);
    let mut blockinfo: HashMap<u64, Vec<Abbrev>> = HashMap::new();
    // Top level: abbreviation width 2, only blocks.
    loop {
        if r.remaining_bits() < 32 {
            bail!("no module block");
        }
        let id = r.read(2)?;
        if id != ENTER_SUBBLOCK {
            bail!("unexpected abbreviation {id} at the top level of the bitstream");
        }
        let (block, width, words) = block_header(&mut r)?;
        match block {
            MODULE_BLOCK => {
                return match walk(&mut r, width, MODULE_BLOCK, &mut blockinfo)? {
                    Some(paths) => Ok(paths),
                    None => bail!("a module block without a module string table"),
                }
            }
            BLOCKINFO_BLOCK => {
                walk(&mut r, width, BLOCKINFO_BLOCK, &mut blockinfo)?;
            }
            _ => r.skip_words(words)?,
        }
    }
}

/// A block's id, abbreviation width and length in words (after
/// ENTER_SUBBLOCK).
fn block_header(r: &mut BitReader) -> Result<(u64, u32, u64)> {
    let block = r.vbr(8).context("truncated block header")?;
    let width = r.vbr(4).context("truncated block header")?;
    r.align32();
    let words = r.read(32).context("truncated block header")?;
    if !(1..=32).contains(&width) {
        bail!("block {block} with abbreviation width {width}");
    }
    Ok((block, width as u32, words))
}

/// Reads block `id` up to its END_BLOCK: the module block's subblocks are
/// entered where they matter (BLOCKINFO, the string table) and skipped
/// otherwise. Returns the string table's paths once it has been read.
fn walk(
    r: &mut BitReader,
    width: u32,
    id: u64,
    blockinfo: &mut HashMap<u64, Vec<Abbrev>>,
) -> Result<Option<Vec<String>>> {
    let mut abbrevs: Vec<Abbrev> = blockinfo.get(&id).cloned().unwrap_or_default();
    // In BLOCKINFO: the block its next abbreviations are for.
    let mut target: Option<u64> = None;
    let mut paths: Vec<String> = Vec::new();
    loop {
        let code_id = r
            .read(width)
            .with_context(|| format!("truncated block {id}"))?;
        match code_id {
            END_BLOCK => {
                r.align32();
                return Ok((id == MODULE_STRTAB_BLOCK).then_some(paths));
            }
            ENTER_SUBBLOCK => {
                let (block, w, words) = block_header(r)?;
                match block {
                    MODULE_STRTAB_BLOCK | BLOCKINFO_BLOCK if id == MODULE_BLOCK => {
                        if let Some(p) = walk(r, w, block, blockinfo)? {
                            return Ok(Some(p));
                        }
                    }
                    _ => r.skip_words(words)?,
                }
            }
            DEFINE_ABBREV => {
                let a = r.abbrev()?;
                if id == BLOCKINFO_BLOCK {
                    let t = target.context("DEFINE_ABBREV in BLOCKINFO before SETBID")?;
                    let list = blockinfo.entry(t).or_default();
                    if list.len() >= MAX_ABBREVS {
                        bail!("too many abbreviations for block {t}");
                    }
                    list.push(a);
                } else {
                    if abbrevs.len() >= MAX_ABBREVS {
                        bail!("too many abbreviations in block {id}");
                    }
                    abbrevs.push(a);
                }
            }
            _ => {
                let (code, ops) = if code_id == UNABBREV_RECORD {
                    r.unabbreviated(MAX_PATH + 1)?
                } else {
                    let a = abbrevs
                        .get((code_id - FIRST_APPLICATION_ABBREV) as usize)
                        .with_context(|| {
                            format!("abbreviation {code_id} undefined in block {id}")
                        })?;
                    let mut values = r.abbreviated(a, MAX_PATH + 1)?;
                    if values.is_empty() {
                        bail!("an abbreviation with no record code in block {id}");
                    }
                    let code = values.remove(0);
                    (code, values)
                };
                if id == BLOCKINFO_BLOCK && code == BLOCKINFO_CODE_SETBID {
                    target = Some(*ops.first().context("SETBID without a block id")?);
                }
                if id == MODULE_STRTAB_BLOCK && code == MST_CODE_ENTRY {
                    let name = ops.get(1..).context("a module entry without its id")?;
                    let bytes: Vec<u8> = name
                        .iter()
                        .map(|&c| u8::try_from(c).ok())
                        .collect::<Option<_>>()
                        .context("a module path that is not bytes")?;
                    let path = String::from_utf8(bytes)
                        .map_err(|e| anyhow::anyhow!("a module path that is not UTF-8: {e}"))?;
                    if path.is_empty() || path.len() as u64 > MAX_PATH {
                        bail!("a module path of {} bytes", path.len());
                    }
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three modules compiled and thin-linked by the installed LLVM 19
    /// (`main.c` imports from `b.c` and `c d.c`, a path with a space);
    /// returns the directory.
    fn linked() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let bin = Path::new("/usr/lib/llvm-19/bin");
        assert!(bin.exists(), "{}: LLVM 19 is not installed", bin.display());
        let w = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
        w(
            "main.c",
            "int g(int); int h(int);\nint f(int x) { return g(x) + h(x); }\n",
        );
        w("b.c", "int g(int x) { return x * 3; }\n");
        w("c d.c", "int h(int x) { return x - 7; }\n");
        w("lone.c", "int lone(int x) { return x; }\n");
        for (c, o) in [
            ("main.c", "main.o"),
            ("b.c", "sub/b.o"),
            ("c d.c", "c d.o"),
            ("lone.c", "lone.o"),
        ] {
            std::fs::create_dir_all(d.path().join("sub")).unwrap();
            let out = std::process::Command::new(bin.join("clang"))
                .current_dir(d.path())
                .args(["-O2", "-flto=thin", "-c", c, "-o", o])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let out = std::process::Command::new(bin.join("ld.lld"))
            .current_dir(d.path())
            .args(["-r", "--thinlto-index-only", "--thinlto-emit-imports-files"])
            .args(["main.o", "sub/b.o", "c d.o", "lone.o", "-o", "/dev/null"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        d
    }

    #[test]
    fn a_shard_names_its_module_and_every_module_it_imports_from() {
        let d = linked();
        let mut main = module_paths_of(&d.path().join("main.o.thinlto.bc")).unwrap();
        main.sort();
        assert_eq!(main, ["c d.o", "main.o", "sub/b.o"]);
        // What lld's own .imports file says, plus the module itself.
        let imports = std::fs::read_to_string(d.path().join("main.o.imports")).unwrap();
        let mut listed: Vec<&str> = imports.lines().collect();
        listed.push("main.o");
        listed.sort();
        assert_eq!(main, listed);
        assert_eq!(
            module_paths_of(&d.path().join("lone.o.thinlto.bc")).unwrap(),
            ["lone.o"]
        );
    }

    #[test]
    fn anything_else_is_an_error_never_a_panic() {
        let d = linked();
        let bytes = std::fs::read(d.path().join("main.o.thinlto.bc")).unwrap();
        // Every prefix short of the string table fails; none panics.
        for n in 0..bytes.len() {
            let _ = module_paths(&bytes[..n]);
        }
        assert!(module_paths(&bytes[..bytes.len() / 4]).is_err());
        // Single-byte corruptions: any answer but a panic.
        for i in 0..bytes.len().min(256) {
            for v in [0x00, 0xFF, 0x5A] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = module_paths(&b);
            }
        }
        // A bitcode object is not a shard (it has no module string table).
        let obj = std::fs::read(d.path().join("lone.o")).unwrap();
        assert!(module_paths(&obj).is_err());
        let e = module_paths_of(&d.path().join("lone.c")).unwrap_err();
        assert!(
            format!("{e:#}").contains("lone.c: not a ThinLTO index shard"),
            "{e:#}"
        );
    }
}
