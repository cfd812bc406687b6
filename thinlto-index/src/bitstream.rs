//! LLVM's bitstream container, as far as our readers need it: the magic
//! (behind the wrapper header some targets put first), bits least
//! significant first, VBR numbers, 32-bit alignment, abbreviation
//! definitions and their scalar operands. One reader for both users: the
//! producer check ([`crate::producer`]) and the DTLTO shard digest of
//! `thinlto-backend`. Every read is bounded by the bytes given and returns
//! an error, never panics, on anything it does not expect.

use anyhow::{bail, Context, Result};

/// Abbreviation ids every block understands.
pub const END_BLOCK: u64 = 0;
pub const ENTER_SUBBLOCK: u64 = 1;
pub const DEFINE_ABBREV: u64 = 2;
pub const UNABBREV_RECORD: u64 = 3;
/// The first id an abbreviation defined in a block gets.
pub const FIRST_APPLICATION_ABBREV: u64 = 4;
/// The BLOCKINFO block, whose abbreviations belong to other blocks.
pub const BLOCKINFO_BLOCK: u64 = 0;
/// BLOCKINFO's record naming the block its next abbreviations are for.
pub const BLOCKINFO_CODE_SETBID: u64 = 1;
/// Most operands in one abbreviation (LLVM's have fewer than 20); a
/// corrupt count is an error, not a large allocation.
const MAX_ABBREV_OPS: u64 = 1024;

/// The bitstream inside the bitcode wrapper header, or the bytes
/// themselves; either way it must start with `BC 0xC0DE`, which is
/// stripped (alignment is to 32 bits, so it is unaffected).
pub fn unwrap(bytes: &[u8]) -> Result<&[u8]> {
    let word = |i: usize| -> Result<usize> {
        let b = bytes
            .get(i * 4..i * 4 + 4)
            .context("truncated bitcode wrapper header")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let stream = if bytes.starts_with(&[0xDE, 0xC0, 0x17, 0x0B]) {
        let (offset, size) = (word(2)?, word(3)?);
        let end = offset.saturating_add(size).min(bytes.len());
        bytes
            .get(offset..end)
            .context("bitcode wrapper offset past the end")?
    } else {
        bytes
    };
    match stream.strip_prefix(b"BC\xC0\xDE") {
        Some(rest) => Ok(rest),
        None => bail!("not LLVM bitcode (no 'BC' 0xC0DE magic)"),
    }
}

/// One operand of an abbreviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Literal(u64),
    Fixed(u32),
    Vbr(u32),
    /// An array whose element encoding is the next (last) operand.
    Array,
    Char6,
    Blob,
}

pub type Abbrev = Vec<Op>;

/// Bits of a byte slice, least significant first, in 32-bit little-endian
/// words as LLVM writes them (which, bit by bit, is byte order).
pub struct BitReader<'a> {
    bytes: &'a [u8],
    bit: u64,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, bit: 0 }
    }

    fn len_bits(&self) -> u64 {
        self.bytes.len() as u64 * 8
    }

    /// Bits left after the position.
    pub fn remaining_bits(&self) -> u64 {
        self.len_bits().saturating_sub(self.bit)
    }

    /// `n` ≤ 64 bits.
    pub fn read(&mut self, n: u32) -> Result<u64> {
        if n > 64 {
            bail!("a field of {n} bits");
        }
        if self.bit + n as u64 > self.len_bits() {
            bail!("truncated at bit {}", self.bit);
        }
        let (mut v, mut got) = (0u64, 0u32);
        while got < n {
            let byte = self.bytes[(self.bit / 8) as usize] as u64;
            let off = (self.bit % 8) as u32;
            let take = (8 - off).min(n - got);
            v |= ((byte >> off) & ((1 << take) - 1)) << got;
            got += take;
            self.bit += take as u64;
        }
        Ok(v)
    }

    /// A VBR-`n` value (2 ≤ n ≤ 32) of at most 64 bits.
    pub fn vbr(&mut self, n: u32) -> Result<u64> {
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

    pub fn align32(&mut self) {
        self.bit = self.bit.div_ceil(32) * 32;
    }

    /// Skips `words` 32-bit words (a block by its length).
    pub fn skip_words(&mut self, words: u64) -> Result<()> {
        let end = words
            .checked_mul(32)
            .and_then(|b| self.bit.checked_add(b))
            .filter(|&end| end <= self.len_bits())
            .context("a block runs past the end")?;
        self.bit = end;
        Ok(())
    }

    /// The next `len` bytes (a blob's, after [`Self::align32`]).
    pub fn bytes(&mut self, len: u64) -> Result<&'a [u8]> {
        if !self.bit.is_multiple_of(8) {
            bail!("bytes read at bit {}, not a byte boundary", self.bit);
        }
        let start = (self.bit / 8) as usize;
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|len| self.bytes.get(start..start.checked_add(len)?))
            .context("a blob past the end")?;
        self.bit += len * 8;
        Ok(bytes)
    }

    /// A DEFINE_ABBREV's operands (the abbreviation id already read).
    pub fn abbrev(&mut self) -> Result<Abbrev> {
        let n = self.vbr(5).context("truncated abbreviation")?;
        if n > MAX_ABBREV_OPS {
            bail!("an abbreviation of {n} operands");
        }
        let width = |w: u64| -> Result<u32> {
            match w {
                0..=32 => Ok(w as u32),
                _ => bail!("an operand width of {w} bits"),
            }
        };
        (0..n)
            .map(|_| {
                Ok(if self.read(1)? == 1 {
                    Op::Literal(self.vbr(8)?)
                } else {
                    match self.read(3)? {
                        1 => Op::Fixed(width(self.vbr(5)?)?),
                        2 => Op::Vbr(width(self.vbr(5)?)?),
                        3 => Op::Array,
                        4 => Op::Char6,
                        5 => Op::Blob,
                        e => bail!("unknown abbreviation operand encoding {e}"),
                    }
                })
            })
            .collect::<Result<_>>()
            .context("truncated abbreviation")
    }

    /// The values of one record written with `abbrev`, record code first
    /// (the abbreviation id already read). An array or blob of more than
    /// `max_len` elements is an error, not a large allocation.
    pub fn abbreviated(&mut self, abbrev: &[Op], max_len: u64) -> Result<Vec<u64>> {
        let mut values = Vec::new();
        let mut i = 0;
        while i < abbrev.len() {
            match abbrev[i] {
                Op::Array => {
                    let elt = *abbrev
                        .get(i + 1)
                        .context("an array without an element type")?;
                    let n = self.vbr(6).context("truncated array")?;
                    if n > max_len {
                        bail!("an array of {n} elements (at most {max_len} expected)");
                    }
                    for _ in 0..n {
                        values.push(self.scalar(elt).context("truncated record")?);
                    }
                    i += 2;
                }
                Op::Blob => {
                    let n = self.vbr(6).context("truncated blob")?;
                    if n > max_len {
                        bail!("a blob of {n} bytes (at most {max_len} expected)");
                    }
                    self.align32();
                    values.extend(self.bytes(n)?.iter().map(|&b| b as u64));
                    self.align32();
                    i += 1;
                }
                op => {
                    values.push(self.scalar(op).context("truncated record")?);
                    i += 1;
                }
            }
        }
        Ok(values)
    }

    /// The code and operands of one unabbreviated record (the
    /// abbreviation id already read); more than `max_len` operands is an
    /// error.
    pub fn unabbreviated(&mut self, max_len: u64) -> Result<(u64, Vec<u64>)> {
        let code = self.vbr(6).context("truncated record")?;
        let n = self.vbr(6).context("truncated record")?;
        if n > max_len {
            bail!("a record of {n} operands (at most {max_len} expected)");
        }
        let ops = (0..n)
            .map(|_| self.vbr(6).context("truncated record"))
            .collect::<Result<Vec<_>>>()?;
        Ok((code, ops))
    }

    /// One scalar operand (an array element or a plain operand).
    pub fn scalar(&mut self, op: Op) -> Result<u64> {
        const CHAR6: &[u8; 64] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._";
        Ok(match op {
            Op::Literal(v) => v,
            Op::Fixed(w) => self.read(w)?,
            Op::Vbr(w) => self.vbr(w)?,
            Op::Char6 => CHAR6[self.read(6)? as usize] as u64,
            Op::Array | Op::Blob => bail!("an array or blob as an array element"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_vbrs_and_alignment_as_llvm_packs_them() {
        // Bits, least significant first: 101 (a 3-bit 5), then VBR-4
        // chunks 1001 (value 001, more follows) and 1000 (value 001):
        // 1 | 1 << 3 = 9.
        let bytes = [0b1100_1101u8, 0b0000_0000, 0, 0, 0xAB, 0, 0, 0];
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read(3).unwrap(), 5);
        assert_eq!(r.vbr(4).unwrap(), 9);
        r.align32();
        assert_eq!(r.remaining_bits(), 32);
        assert_eq!(r.bytes(1).unwrap(), &[0xAB]);
        assert!(r.read(25).is_err());
        assert!(r.skip_words(1).is_err());
        assert!(BitReader::new(&[0xFF; 16]).vbr(2).is_err(), "over 64 bits");
        assert!(BitReader::new(&[0; 4]).vbr(1).is_err());
    }

    #[test]
    fn unwrap_takes_the_magic_and_the_wrapper() {
        assert_eq!(unwrap(b"BC\xC0\xDExyz").unwrap(), b"xyz");
        let mut w = vec![0xDE, 0xC0, 0x17, 0x0B, 0, 0, 0, 0];
        w.extend(20u32.to_le_bytes());
        w.extend(5u32.to_le_bytes());
        w.extend([0; 4]);
        w.extend(b"BC\xC0\xDEq");
        assert_eq!(unwrap(&w).unwrap(), b"q");
        assert!(unwrap(b"\x7FELF").is_err());
    }
}
