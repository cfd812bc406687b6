//! The compilers a worker has, each with the identity it advertises (the
//! `thinlto-compiler` platform property) and the files its compiles may
//! read besides their input root.
//!
//! The identity is the cache key's (`cache::identity`) for the compiler
//! word as spelled (`clang-19`): a client puts the identity of its
//! `argv[0]` into the action, so clients and workers must spell a
//! compiler the same way, a bare name on PATH being the portable choice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One compiler of this worker.
#[derive(Debug, Clone)]
pub struct Compiler {
    /// As an action's `argv[0]` spells it.
    pub word: String,
    /// What runs (symlinks resolved).
    pub exe: PathBuf,
    /// `cache::identity::program_identity` of `[word]` (what clients match).
    pub identity: String,
    /// The installation the compile may read: the directory above the
    /// executable's (`/usr/lib/llvm-19` for `/usr/lib/llvm-19/bin/clang`).
    pub prefix: PathBuf,
    /// The shared libraries the loader resolves for it (libc, libLLVM …).
    pub libraries: BTreeSet<PathBuf>,
}

impl Compiler {
    /// `word` resolved on PATH (or a path), identified.
    pub fn new(word: &str) -> Result<Compiler> {
        let exe = crate::warm::resolve(word)
            .with_context(|| format!("compiler {word}: not found (on PATH, or as a path)"))?;
        let (identity, _) = crate::cache::identity::program_identity(&[word.to_string()])
            .with_context(|| format!("compiler {word}: cannot compute its identity"))?;
        let installation = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        // A compiler installed straight into /usr/bin would allow all of
        // /usr: its files are its executable and libraries only, then.
        let prefix = if installation == Path::new("/") || installation == Path::new("/usr") {
            exe.clone()
        } else {
            installation.to_path_buf()
        };
        Ok(Compiler {
            word: word.to_string(),
            libraries: crate::cache::identity::shared_libraries(&exe)
                .into_iter()
                .collect(),
            exe,
            identity,
            prefix,
        })
    }
}

/// The compilers named by `--compiler` (each once), else every `clang-N`
/// on PATH. An error when there is none: a worker without a compiler
/// would take no work.
pub fn discover(named: &[String]) -> Result<Vec<Compiler>> {
    let mut words: Vec<String> = named.to_vec();
    if words.is_empty() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut found = BTreeSet::new();
        for dir in std::env::split_paths(&path) {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let versioned = name
                    .strip_prefix("clang-")
                    .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
                if versioned {
                    found.insert(name);
                }
            }
        }
        words = found.into_iter().collect();
    }
    words.dedup();
    if words.is_empty() {
        bail!("no compiler: no clang-N on PATH and no --compiler given");
    }
    words.iter().map(|w| Compiler::new(w)).collect()
}
