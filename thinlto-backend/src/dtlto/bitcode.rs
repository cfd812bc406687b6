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

/// One operand of an abbreviation.
#[derive(Debug, Clone, Copy)]
enum Op {
    Literal(u64),
    Fixed(u32),
    Vbr(u32),
    Array,
    Char6,
    Blob,
}

type Abbrev = Vec<Op>;

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.data.len() * 8
    }

    fn read(&mut self, n: u32) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        if n > 64 {
            bail!("a field of {n} bits");
        }
        if self.pos + n as usize > self.data.len() * 8 {
            bail!("truncated at bit {}", self.pos);
        }
        let mut v = 0u64;
        let mut got = 0u32;
        while got < n {
            let byte = self.data[self.pos / 8] as u64;
            let off = (self.pos % 8) as u32;
            let take = (8 - off).min(n - got);
            v |= ((byte >> off) & ((1 << take) - 1)) << got;
            got += take;
            self.pos += take as usize;
        }
        Ok(v)
    }

    fn vbr(&mut self, n: u32) -> Result<u64> {
        if !(2..=32).contains(&n) {
            bail!("a VBR width of {n}");
        }
        let hi = 1u64 << (n - 1);
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let chunk = self.read(n)?;
            if shift >= 64 {
                bail!("a VBR value over 64 bits");
            }
            v |= (chunk & (hi - 1)) << shift;
            if chunk & hi == 0 {
                return Ok(v);
            }
            shift += n - 1;
        }
    }

    fn align32(&mut self) {
        self.pos = self.pos.div_ceil(32) * 32;
    }
}

/// The blake3 hex of `bytes` (a bitcode file) decoded, each string operand
/// that `role` names replaced by that role.
pub fn digest_with_roles(bytes: &[u8], role: &dyn Fn(&[u8]) -> Option<String>) -> Result<String> {
    let data = unwrap(bytes)?;
    let mut h = blake3::Hasher::new();
    h.update(b"thinlto-dist bitcode records 1\0");
    walk(&mut Bits { data, pos: 32 }, &mut h, role)?;
    Ok(h.finalize().to_hex().to_string())
}

/// The bitstream behind the magic (and behind the wrapper header some
/// targets put first).
fn unwrap(bytes: &[u8]) -> Result<&[u8]> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let data = if word(0) == Some(0x0B17_C0DE) {
        let (off, size) = (
            word(8).context("short wrapper")?,
            word(12).context("short wrapper")?,
        );
        bytes
            .get(off..off.checked_add(size).context("bad wrapper")?)
            .context("the wrapper points outside the file")?
    } else {
        bytes
    };
    if !data.starts_with(b"BC\xC0\xDE") {
        bail!("not bitcode (no BC magic)");
    }
    Ok(data)
}

struct Block {
    id: u64,
    width: u32,
    abbrevs: Vec<Abbrev>,
}

fn walk(
    bits: &mut Bits,
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
        if stack.len() == 1 && bits.data.len() * 8 - bits.pos < 32 {
            return Ok(());
        }
        let top = stack.last().expect("the top level is never popped");
        let id = bits.read(top.width)?;
        match id {
            0 => {
                // END_BLOCK
                if stack.len() == 1 {
                    bail!("END_BLOCK at the top level");
                }
                bits.align32();
                let b = stack.pop().expect("checked");
                num(h, b'E', b.id);
                if stack.len() == 1 && bits.at_end() {
                    return Ok(());
                }
            }
            1 => {
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
                if block == 0 {
                    info_target = None;
                }
            }
            2 => {
                let n = bits.vbr(5)?;
                let mut ops = Vec::new();
                let mut i = 0;
                while i < n {
                    let op = if bits.read(1)? == 1 {
                        Op::Literal(bits.vbr(8)?)
                    } else {
                        match bits.read(3)? {
                            1 => Op::Fixed(bits.vbr(5)? as u32),
                            2 => Op::Vbr(bits.vbr(5)? as u32),
                            3 => Op::Array,
                            4 => Op::Char6,
                            5 => Op::Blob,
                            e => bail!("an operand encoding {e}"),
                        }
                    };
                    ops.push(op);
                    i += 1;
                }
                let b = stack.last_mut().expect("a block");
                if b.id == 0 {
                    let target = info_target.context("DEFINE_ABBREV before SETBID")?;
                    blockinfo.entry(target).or_default().push(ops);
                } else {
                    b.abbrevs.push(ops);
                }
            }
            3 => {
                let code = bits.vbr(6)?;
                let n = bits.vbr(6)?;
                let mut ops = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    ops.push(bits.vbr(6)?);
                }
                if stack.last().expect("a block").id == 0 && code == 1 {
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
                    .get((id - 4) as usize)
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
                                v.push(scalar(bits, elt)?);
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
                            let len = bits.vbr(6)? as usize;
                            bits.align32();
                            let start = bits.pos / 8;
                            let bytes = bits
                                .data
                                .get(start..start + len)
                                .context("a blob past the end")?;
                            bits.pos += len * 8;
                            bits.align32();
                            string_or(h, Some(bytes), role, |h| {
                                num(h, b'L', len as u64);
                                h.update(bytes);
                            });
                        }
                        op => num(h, b'S', scalar(bits, op)?),
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

fn scalar(bits: &mut Bits, op: Op) -> Result<u64> {
    Ok(match op {
        Op::Literal(v) => v,
        Op::Fixed(w) => bits.read(w)?,
        Op::Vbr(w) => bits.vbr(w)?,
        Op::Char6 => {
            let c = bits.read(6)? as u8;
            (match c {
                0..=25 => b'a' + c,
                26..=51 => b'A' + c - 26,
                52..=61 => b'0' + c - 52,
                62 => b'.',
                _ => b'_',
            }) as u64
        }
        Op::Array | Op::Blob => bail!("an array or blob as an array element"),
    })
}
