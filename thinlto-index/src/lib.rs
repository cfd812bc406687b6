//! Stage 2 of the distributed ThinLTO flow: archive member order, bitcode
//! classification and the thin link; plus the pieces every tool shares
//! (toolchain discovery, atomic output, the manifest contract).

pub mod archive;
pub mod bitstream;
pub mod classify;
pub mod cli;
pub mod fsutil;
pub mod launcher;
pub mod link;
pub mod manifest;
pub mod producer;
pub mod shard;
pub mod toolchain;
pub mod tree_tools;

pub use archive::{archive_members, order};
pub use classify::{classify, classify_bytes};
pub use link::ThinLink;
pub use manifest::{Manifest, ManifestObject, ObjectKind, ScanRecord};
pub use toolchain::{Tool, Toolchain, ToolchainArgs};
