//! Hermetic or nothing: a remote compile may read its input root and its
//! compiler's installation, and nothing else. A compile that read another
//! regular file (an `.incbin` or `#include` by absolute path, a file the
//! client's tree has but did not put into the action) would give a result
//! that depends on the worker's disk, so its action fails, naming the file.
//!
//! What the compile read comes from the tracing shim (`cache::trace`).

use std::path::Path;

use super::compilers::Compiler;
use crate::cache::trace;

/// The marker a worker puts before its reason when it refuses an action
/// as not hermetic (`worker/exec.rs`): the client (`crate::exec`) compiles such a job
/// here instead of reporting a compile error.
pub const NOT_HERMETIC: &str = "thinlto-backend worker: not hermetic: ";

/// The files outside the compiler's installation that any compile may
/// read: the dynamic loader's cache and the files the clang driver reads
/// to tell the distribution (clang's `Distro.cpp`), which only sets
/// defaults of the target triple and the linker. The
/// compiler's own files (its installation prefix, its executable and the
/// shared libraries the loader resolves for it, libc included) are
/// allowed per compiler ([`Compiler`]); so is the tracing shim itself.
pub const ALLOWED_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/os-release",
    "/usr/lib/os-release",
    "/etc/lsb-release",
    "/etc/debian_version",
    "/etc/redhat-release",
    "/etc/SuSE-release",
    "/etc/alpine-release",
    "/etc/gentoo-release",
];
/// Directories whose files any compile may read (locale data).
const ALLOWED_DIRS: &[&str] = &["/usr/lib/locale/"];

/// `Err(why)` when the trace shows the compile reading a regular file
/// outside `root` and outside what [`ALLOWED_FILES`], [`ALLOWED_DIRS`]
/// and `compiler` allow, or when the trace cannot tell (no shim, or the
/// compile itself not traced). `object` is an input the compile must be
/// seen reading (proof that the compiling process was traced).
pub fn check(
    trace_text: &str,
    root: &Path,
    object: &str,
    compiler: &Compiler,
) -> Result<(), String> {
    let extras = trace::extras(trace_text, root, object, &[])
        .map_err(|e| format!("cannot check that the compile is hermetic: {e}"))?;
    match outside(&extras, compiler) {
        Some(e) => Err(format!(
            "the compile read {e}, which is outside its input root and its compiler's installation ({}); put it into the action's inputs",
            compiler.prefix.display()
        )),
        None => Ok(()),
    }
}

/// The first of `reads` (files a compile read beyond its inputs, relative
/// to its directory or absolute) that a hermetic compile must not read:
/// a regular file by absolute path outside what [`ALLOWED_FILES`],
/// [`ALLOWED_DIRS`] and `compiler` allow. A client asks this too, of
/// what its own trace knows a job reads, to keep such a job here
/// (`crate::exec`).
pub fn outside<'a>(reads: &'a [String], compiler: &Compiler) -> Option<&'a str> {
    let shim = crate::warm::shim::path().ok();
    reads.iter().map(String::as_str).find(|e| {
        let p = Path::new(e);
        // Relative: under the input root, which is all the action's.
        if !p.is_absolute() {
            return false;
        }
        let allowed = p.starts_with(&compiler.prefix)
            || p == compiler.exe
            || compiler.libraries.contains(p)
            || shim.as_deref() == Some(p)
            || ALLOWED_FILES.iter().any(|f| p == Path::new(f))
            || ALLOWED_DIRS.iter().any(|d| e.starts_with(d));
        // Only regular files make a result depend on the disk (a FIFO, a
        // device, a directory listing do not, or not as content).
        let regular = std::fs::metadata(p).is_ok_and(|m| m.is_file());
        !allowed && regular
    })
}
