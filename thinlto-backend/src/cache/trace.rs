//! The files a compile read, from the preload shim's trace
//! (`warm/zygote.c`, `THINLTO_TRACE=FILE`).
//!
//! The object, its shard and its imports are in every cache key already;
//! what the trace adds is what no input list names: a file that inline
//! asm `.incbin`s (the backend assembles the asm, so it reads the file
//! though the bitcode is byte-identical when the file changes), a config
//! file the driver read, the program a wrapper script execs. Each becomes
//! an "extra" of the cache entry, with its digest: the entry is only used
//! while every extra still has that digest (ccache's manifests, for
//! headers, work the same way).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Why a compile's result cannot be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untraced {
    /// No trace header: the shim did not load (a static compiler, another
    /// libc), so the files it read are unknown.
    NoShim,
    /// The trace does not show the compile reading its own object: the
    /// process that compiled was not traced (a wrapper that clears
    /// LD_PRELOAD, a static compiler behind a traced wrapper script).
    Blind(String),
}

impl std::fmt::Display for Untraced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untraced::NoShim => f.write_str(
                "the compiler did not load the tracing shim (a static binary?), so the files it read are unknown",
            ),
            Untraced::Blind(object) => write!(
                f,
                "the trace does not show the compiler reading {object} (a wrapper that clears LD_PRELOAD, or a static compiler behind a script?), so the files it read are unknown"
            ),
        }
    }
}

/// The extras of one compile: the files it read or ran beyond `known`
/// (its content inputs and outputs, relative to `cwd`), as paths relative
/// to `cwd` when under it (so that another checkout of the tree finds
/// them at its own place), absolute otherwise. Sorted, each once.
///
/// The trace must show `object` read: that proves the process that
/// compiled was traced, not only a wrapper in front of it.
pub fn extras(
    trace: &str,
    cwd: &Path,
    object: &str,
    known: &[&str],
) -> Result<Vec<String>, Untraced> {
    if !trace.lines().any(|l| l == "thinlto-trace 1") {
        return Err(Untraced::NoShim);
    }
    let object_path = cwd.join(object);
    let read_object = trace.lines().any(|l| {
        l.strip_prefix("r ")
            .is_some_and(|p| Path::new(p) == object_path || same_file(Path::new(p), &object_path))
    });
    if !read_object {
        return Err(Untraced::Blind(object.to_string()));
    }
    let known: BTreeSet<PathBuf> = known.iter().map(|k| cwd.join(k)).collect();
    let mut out = BTreeSet::new();
    for line in trace.lines() {
        let Some(path) = line.strip_prefix("r ").or_else(|| line.strip_prefix("x ")) else {
            continue;
        };
        let p = Path::new(path);
        if !p.is_absolute()
            || known.contains(p)
            || ["/proc/", "/sys/", "/dev/"]
                .iter()
                .any(|d| path.starts_with(d))
        {
            continue;
        }
        let shown = match p.strip_prefix(cwd) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => path.to_string(),
        };
        out.insert(shown);
    }
    Ok(out.into_iter().collect())
}

/// The same file by device and inode (the trace resolves symlinks).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_are_what_no_input_list_names() {
        let trace = "thinlto-trace 1\n\
                     r /usr/lib/os-release\n\
                     r /t/kernel/a.o\n\
                     r /t/kernel/a.o.thinlto.bc\n\
                     r /proc/self/maps\n\
                     r /t/kernel/config_data.txt\n\
                     thinlto-trace 1\n\
                     x /usr/lib/llvm-19/bin/clang\n\
                     r /t/kernel/config_data.txt\n";
        let got = extras(
            trace,
            Path::new("/t"),
            "kernel/a.o",
            &["kernel/a.o", "kernel/a.o.thinlto.bc"],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "/usr/lib/llvm-19/bin/clang",
                "/usr/lib/os-release",
                "kernel/config_data.txt"
            ]
        );
        assert_eq!(
            extras("r /t/x\n", Path::new("/t"), "x", &[]),
            Err(Untraced::NoShim)
        );
        // Only a wrapper was traced: not the compile.
        assert_eq!(
            extras(
                "thinlto-trace 1\nr /t/cc.sh\nx /usr/bin/env\n",
                Path::new("/t"),
                "kernel/a.o",
                &[]
            ),
            Err(Untraced::Blind("kernel/a.o".into()))
        );
    }
}
