//! The compiler's identity in a cache key: a path is not enough (an
//! upgrade keeps it), and neither is the executable (clang's code
//! generator lives in libLLVM.so). The identity covers, for each program
//! of `$(CC)` (`clang-19`, or `ccache clang-19`):
//! - the ELF build id (else the content digest) of the executable and of
//!   every shared library the dynamic loader resolves for it;
//! - for clang, `--version` and every `*.cfg` file beside it (clang reads
//!   default configuration files from its own directory);
//!
//! and the environment variables the compiler reads (`CCC_*`, `CLANG_*`,
//! `LLVM_*`). Build ids make this cheap: no 100 MB library is hashed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use object::Object;

/// The identity of `$(CC)` as its words: a hex digest, and the text it
/// was computed from (for `--explain`-style diagnostics and tests). The
/// programs' identity ([`program_identity`]) and the environment
/// variables the compiler reads here: what a local compile depends on.
pub fn compiler_identity(cc_argv: &[String]) -> Result<(String, String)> {
    let mut text = program_text(cc_argv)?;
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| ["CCC_", "CLANG_", "LLVM_"].iter().any(|p| k.starts_with(p)))
        .collect();
    env.sort();
    for (k, v) in env {
        text.push_str(&format!("env {k}={v}\n"));
    }
    Ok((blake3::hash(text.as_bytes()).to_hex().to_string(), text))
}

/// The identity of `$(CC)`'s programs alone, without this process's
/// environment: what a farm's worker and a client must agree on (the
/// `thinlto-compiler` platform property). A worker runs each compile with
/// an empty environment, so neither side's variables reach it; and a
/// client under make has kbuild's exported `CLANG_FLAGS`, which a worker
/// never has, so an identity with the environment matched no worker and
/// the action waited in the queue for ever.
pub fn program_identity(cc_argv: &[String]) -> Result<(String, String)> {
    let text = program_text(cc_argv)?;
    Ok((blake3::hash(text.as_bytes()).to_hex().to_string(), text))
}

fn program_text(cc_argv: &[String]) -> Result<String> {
    let mut text = String::from("thinlto-dist compiler identity 1\n");
    for word in cc_argv.iter().filter(|w| !w.starts_with('-')) {
        let Some(exe) = crate::warm::resolve(word) else {
            // Not a program (an argument of a launcher): part of the
            // command, which the key has anyway.
            continue;
        };
        text.push_str(&format!("program {word} {}\n", exe.display()));
        text.push_str(&format!("  {}\n", file_identity(&exe)?));
        for lib in shared_libraries(&exe) {
            text.push_str(&format!(
                "  lib {} {}\n",
                lib.display(),
                file_identity(&lib)?
            ));
        }
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        if name.contains("clang") {
            let v = Command::new(&exe)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run {} --version", exe.display()))?;
            text.push_str(&format!(
                "  version {}\n",
                String::from_utf8_lossy(&v.stdout).trim()
            ));
            if let Some(dir) = exe.parent() {
                let mut cfgs: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|x| x == "cfg"))
                            .collect()
                    })
                    .unwrap_or_default();
                cfgs.sort();
                for c in cfgs {
                    text.push_str(&format!("  cfg {} {}\n", c.display(), content_digest(&c)?));
                }
            }
        }
    }
    Ok(text)
}

/// `build-id <hex>` for an ELF file that has one, else `blake3 <hex>`.
fn file_identity(path: &Path) -> Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: read-only map of a file we only read; a concurrent rewrite
    // of a compiler mid-run would be noticed by the warm compiler's
    // identity check, and at worst gives a wrong build id here.
    if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
        if let Ok(obj) = object::File::parse(&*map) {
            if let Ok(Some(id)) = obj.build_id() {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                return Ok(format!("build-id {hex}"));
            }
        }
    }
    Ok(format!("blake3 {}", content_digest(path)?))
}

/// blake3 of a file's content, as `plan::DigestCache` has it.
pub(crate) fn content_digest(path: &Path) -> Result<String> {
    // The one way the cache digests a file: regular files only, never
    // blocking, bounded.
    let mut h = blake3::Hasher::new();
    crate::digest::digest_file(path, crate::limits::MAX_EXTRA_BYTES, |b| {
        h.update(b);
    })
    .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

/// The libraries the dynamic loader resolves for `exe`, as `ldd` lists
/// them (glibc's loader prints them and exits when
/// LD_TRACE_LOADED_OBJECTS is set); none for a static binary or a script
/// (whose interpreter's libraries are listed then, harmlessly).
pub(crate) fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new(exe)
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            // "\tlibLLVM.so.19.1 => /usr/lib/.../libLLVM.so.19.1 (0x…)" or
            // "\t/lib64/ld-linux-x86-64.so.2 (0x…)"
            let l = l.trim();
            let path = l.split_once(" => ").map_or(l, |(_, r)| r);
            let path = path.rsplit_once(" (").map_or(path, |(p, _)| p);
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .filter(|p| p.is_file())
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_is_identified_by_its_content() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("cc");
        std::fs::write(&s, "#!/bin/sh\nexec true\n").unwrap();
        let a = file_identity(&s).unwrap();
        std::fs::write(&s, "#!/bin/sh\nexec false\n").unwrap();
        let b = file_identity(&s).unwrap();
        assert!(a.starts_with("blake3 ") && a != b);
    }
}
