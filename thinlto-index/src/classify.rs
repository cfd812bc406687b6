//! What an object is, by its magic bytes — never by its name.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

use crate::ObjectKind;

/// Classifies the first bytes of a file.
pub fn classify_bytes(head: &[u8]) -> ObjectKind {
    match head {
        [b'B', b'C', 0xC0, 0xDE, ..] => ObjectKind::Bitcode,
        [0xDE, 0xC0, 0x17, 0x0B, ..] => ObjectKind::BitcodeWrapper,
        [0x7F, b'E', b'L', b'F', ..] => ObjectKind::Elf,
        _ => ObjectKind::Other,
    }
}

/// Reads the magic of a file and classifies it; a missing or unreadable
/// file is an error naming it.
pub fn classify(path: &Path) -> Result<ObjectKind> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .with_context(|| format!("{}: cannot read", path.display()))?
        {
            0 => break,
            k => n += k,
        }
    }
    Ok(classify_bytes(&head[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        assert_eq!(classify_bytes(b"BC\xC0\xDE\x35"), ObjectKind::Bitcode);
        assert_eq!(
            classify_bytes(&[0xDE, 0xC0, 0x17, 0x0B, 0]),
            ObjectKind::BitcodeWrapper
        );
        assert_eq!(classify_bytes(b"\x7FELF\x02"), ObjectKind::Elf);
        assert_eq!(classify_bytes(b"!<arch>\n"), ObjectKind::Other);
        assert_eq!(classify_bytes(b"BC"), ObjectKind::Other);
        assert_eq!(classify_bytes(b""), ObjectKind::Other);
    }
}
