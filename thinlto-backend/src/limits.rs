//! The bounds on what the crate reads from outside (the cache's files,
//! a REAPI server's answers): every size, count and list
//! that comes from a manifest (local or remote) or from a server is
//! checked against these before anything is allocated or opened, and an
//! entry over a bound is a miss (never an abort). The storing side keeps
//! to the same bounds, so that the cache never writes an entry it would
//! refuse to read.

/// The largest output blob (a native object, a `.dwo`, a manifest):
/// kernel natives are a few MiB, tens with full DWARF; 1 GiB is far above
/// any of them, and low enough that one forged size cannot ask a build
/// machine for more memory than it has.
pub const MAX_BLOB_BYTES: u64 = 1 << 30;

/// The largest extra file the cache digests for a variant (an `.incbin`'d
/// file, the compiler's own files): an initramfs or firmware image a
/// kernel embeds can be hundreds of MiB; the same 1 GiB ceiling as a blob.
pub const MAX_EXTRA_BYTES: u64 = 1 << 30;

/// Variants kept per key, newest first: a file that flips between a few
/// contents (a branch switch) keeps each of them.
pub const MAX_VARIANTS: usize = 8;

/// Extra files per variant: a compile reads its `.incbin`s, the driver's
/// config files and the compiler's libraries, a few dozen at most; a
/// compile that read more is not stored.
pub const MAX_EXTRAS: usize = 1024;

/// The length of one extra's path: PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;

/// What a compile printed (its warnings), replayed on a hit: a noisy
/// kernel file prints a few kB; 1 MiB is room for any real one.
pub const MAX_OUTPUT_TEXT: usize = 1 << 20;

/// A manifest file (JSON): [`MAX_VARIANTS`] variants of a few dozen extras
/// and their warnings fit in well under a MiB; 16 MiB bounds the worst
/// that parsing may allocate.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Jobs in one batched action (`--remote-batch`): bounds its argv and its
/// outputs.
pub const MAX_BATCH_JOBS: usize = 64;

/// Output files in one ActionResult: the cache's actions have three at
/// most (the manifest, the native, the `.dwo`); a batched action five a
/// job (the native, the `.dwo`, its status, stdout and stderr files).
pub const MAX_REMOTE_OUTPUTS: usize = 5 * MAX_BATCH_JOBS;

/// Whether `s` is `len` lowercase hex digits (a digest, a fan directory):
/// how names and digests from a manifest or a server are checked.
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
