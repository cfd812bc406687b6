//! The manifest `thinlto-index link` prints and `thinlto-backend` reads
//! (SPEC §3). This is the one definition of that contract.

use serde::{Deserialize, Serialize};

/// What an input object is, decided by its magic bytes, never its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// Raw LLVM bitcode (`BC 0xC0DE`).
    Bitcode,
    /// LLVM bitcode inside the `0x0B17C0DE` wrapper header.
    BitcodeWrapper,
    /// An ELF object.
    Elf,
    /// Anything else.
    Other,
}

impl ObjectKind {
    /// Whether the thin link treats it as bitcode (and so writes an index).
    pub fn is_bitcode(self) -> bool {
        matches!(self, ObjectKind::Bitcode | ObjectKind::BitcodeWrapper)
    }
}

/// One input of the thin link, in archive order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// The path as listed in `builtin.order`.
    pub object: String,
    pub kind: ObjectKind,
    /// `object` + `.thinlto.bc`, for bitcode objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The bitcode modules `object` imports from (with `--imports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports: Option<Vec<String>>,
}

/// The thin link's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The index file lld wrote (the list of bitcode inputs).
    pub index: String,
    pub objects: Vec<ManifestObject>,
}

impl Manifest {
    pub fn bitcode(&self) -> impl Iterator<Item = &ManifestObject> {
        self.objects.iter().filter(|o| o.kind.is_bitcode())
    }
}

/// One line of `thinlto-index scan`: `{"object","kind"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    pub object: String,
    pub kind: ObjectKind,
}
