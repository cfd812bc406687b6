//! A digest of a bitcode file's content with given strings named by role:
//! what the cache key takes of a DTLTO job's shard. The shard
//! (`a.1.<pid>.native.o.thinlto.bc`) names the modules it imports by the
//! linker's per-link file names (`libc.a(c.o at 78).3.<pid hex>.o`), so
//! its bytes change with every link though what it says does not.
//!
//! The digest is over the decoded records (block ids, record codes,
//! operands), not their encoding: a string operand (an array of bytes or
//! a blob) equal to one of the names is replaced by its role. Two shards
//! with the same digest say the same thing up to those names. Anything
//! this reader does not understand is an error, and the caller keys the
//! job on its literal names instead (correct, never hits across links).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use thinlto_index::bitstream::{
    self, Abbrev, BitReader, Op, BLOCKINFO_BLOCK, BLOCKINFO_CODE_SETBID, DEFINE_ABBREV, END_BLOCK,
    ENTER_SUBBLOCK, FIRST_APPLICATION_ABBREV, UNABBREV_RECORD,
};

/// The blake3 hex of `bytes` (a bitcode file) decoded, each string operand
/// that `role` names replaced by that role.
pub fn digest_with_roles(bytes: &[u8], role: &dyn Fn(&[u8]) -> Option<String>) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(b"thinlto-dist bitcode records 1\0");
    walk(&mut BitReader::new(bitstream::unwrap(bytes)?), &mut h, role)?;
    Ok(h.finalize().to_hex().to_string())
}

struct Block {
    id: u64,
    width: u32,
    abbrevs: Vec<Abbrev>,
}

fn walk(
    bits: &mut BitReader,
    h: &mut blake3::Hasher,
    role: &dyn Fn(&[u8]) -> Option<String>,
) -> Result<()> {
    let mut blockinfo: HashMap<u64, Vec<Abbrev>> = HashMap::new();
    let mut stack = vec![Block {
        id: u64::MAX,
        width: 2,
        abbrevs: Vec::new(),
    }];
    // The block a BLOCKINFO block's SETBID names.
    let mut info_target: Option<u64> = None;
    let num = |h: &mut blake3::Hasher, tag: u8, v: u64| {
        h.update(&[tag]);
        h.update(&v.to_le_bytes());
    };
    loop {
        if stack.len() == 1 && bits.remaining_bits() < 32 {
            return Ok(());
        }
        let top = stack.last().expect("the top level is never popped");
        let id = bits.read(top.width)?;
        match id {
            END_BLOCK => {
                if stack.len() == 1 {
                    bail!("END_BLOCK at the top level");
                }
                bits.align32();
                let b = stack.pop().expect("checked");
                num(h, b'E', b.id);
                if stack.len() == 1 && bits.remaining_bits() == 0 {
                    return Ok(());
                }
            }
            ENTER_SUBBLOCK => {
                let block = bits.vbr(8)?;
                let width = bits.vbr(4)? as u32;
                bits.align32();
                let _words = bits.read(32)?;
                if width == 0 || width > 32 {
                    bail!("an abbreviation width of {width}");
                }
                num(h, b'B', block);
                stack.push(Block {
                    id: block,
                    width,
                    abbrevs: blockinfo.get(&block).cloned().unwrap_or_default(),
                });
                if block == BLOCKINFO_BLOCK {
                    info_target = None;
                }
            }
            DEFINE_ABBREV => {
                let ops = bits.abbrev()?;
                let b = stack.last_mut().expect("a block");
                if b.id == BLOCKINFO_BLOCK {
                    let target = info_target.context("DEFINE_ABBREV before SETBID")?;
                    blockinfo.entry(target).or_default().push(ops);
                } else {
                    b.abbrevs.push(ops);
                }
            }
            UNABBREV_RECORD => {
                let code = bits.vbr(6)?;
                let n = bits.vbr(6)?;
                let mut ops = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    ops.push(bits.vbr(6)?);
                }
                if stack.last().expect("a block").id == BLOCKINFO_BLOCK
                    && code == BLOCKINFO_CODE_SETBID
                {
                    info_target = Some(*ops.first().context("SETBID without a block id")?);
                }
                num(h, b'R', code);
                for v in ops {
                    num(h, b'S', v);
                }
            }
            _ => {
                let b = stack.last().expect("a block");
                let abbrev = b
                    .abbrevs
                    .get((id - FIRST_APPLICATION_ABBREV) as usize)
                    .with_context(|| format!("abbreviation {id} undefined in block {}", b.id))?
                    .clone();
                h.update(b"R");
                let mut k = 0;
                while k < abbrev.len() {
                    match abbrev[k] {
                        Op::Array => {
                            let elt = *abbrev.get(k + 1).context("an array without its element")?;
                            let len = bits.vbr(6)?;
                            let mut v = Vec::with_capacity(len.min(1 << 16) as usize);
                            for _ in 0..len {
                                v.push(bits.scalar(elt)?);
                            }
                            let as_bytes: Option<Vec<u8>> =
                                v.iter().map(|x| u8::try_from(*x).ok()).collect();
                            string_or(h, as_bytes.as_deref(), role, |h| {
                                num(h, b'A', len);
                                for x in &v {
                                    h.update(&x.to_le_bytes());
                                }
                            });
                            k += 2;
                            continue;
                        }
                        Op::Blob => {
                            let len = bits.vbr(6)?;
                            bits.align32();
                            let bytes = bits.bytes(len)?;
                            bits.align32();
                            string_or(h, Some(bytes), role, |h| {
                                num(h, b'L', len);
                                h.update(bytes);
                            });
                        }
                        op => num(h, b'S', bits.scalar(op)?),
                    }
                    k += 1;
                }
            }
        }
    }
}

/// A string operand: its role where `role` names it, else `raw`.
fn string_or(
    h: &mut blake3::Hasher,
    bytes: Option<&[u8]>,
    role: &dyn Fn(&[u8]) -> Option<String>,
    raw: impl FnOnce(&mut blake3::Hasher),
) {
    match bytes.and_then(role) {
        Some(r) => {
            h.update(b"N");
            h.update(r.as_bytes());
            h.update(b"\0");
        }
        None => raw(h),
    }
}
