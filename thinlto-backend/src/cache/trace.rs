//! The files a compile read, from the preload shim's trace
//! (`warm/zygote.c`, `THINLTO_TRACE=FILE`; the format is described
//! there).
//!
//! The object, its shard and its imports are in every cache key already;
//! what the trace adds is what no input list names: a file that inline
//! asm `.incbin`s (the backend assembles the asm, so it reads the file
//! though the bitcode is byte-identical when the file changes), a config
//! file the driver read, the program a wrapper script execs or the driver
//! spawns (`as` under `-fno-integrated-as`). Each becomes an "extra" of
//! the cache entry, with its digest: the entry is only used while every
//! extra still has that digest (ccache's manifests, for headers, work the
//! same way). Paths are as the compiler opened them (absolute, symlinks
//! not resolved), so the digest follows the same links: a retargeted link
//! is a change.
//!
//! A trace is only trusted whole: every process of the compile must have
//! been traced (a spawned process shows its own header) and must have
//! written every line (each header is closed by an `end`, and no `!`).

use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// A process the compile spawned (a program, named) shows no trace:
    /// it did not load the shim (a static `as`?).
    Spawned(String),
    /// The trace was not written whole (a full disk, a path too long).
    Incomplete(String),
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
            Untraced::Spawned(program) => write!(
                f,
                "the compiler ran {program}, which the tracing shim did not see (a static binary?), so the files it read are unknown"
            ),
            Untraced::Incomplete(why) => write!(
                f,
                "the trace of the compile is incomplete ({why}), so the files it read are unknown"
            ),
        }
    }
}

/// The header a traced process writes first: `thinlto-trace 2 PID`.
const HEADER: &str = "thinlto-trace 2 ";

/// The extras of one compile: the files it read or ran beyond `known`
/// (its content inputs and outputs, relative to `cwd`) and beyond what it
/// wrote itself before reading it (an intermediate, such as the `.s` that
/// `as` reads), as paths relative to `cwd` when under it (so that another
/// checkout of the tree finds them at its own place), absolute otherwise.
/// Sorted, each once.
///
/// The trace must show `object` read: that proves the process that
/// compiled was traced, not only a wrapper in front of it.
pub fn extras(
    trace: &str,
    cwd: &Path,
    object: &str,
    known: &[&str],
) -> Result<Vec<String>, Untraced> {
    check_whole(trace)?;
    let object_path = cwd.join(object);
    let read_object = trace.lines().any(|l| {
        l.strip_prefix("r ")
            .is_some_and(|p| Path::new(p) == object_path || same_file(Path::new(p), &object_path))
    });
    if !read_object {
        return Err(Untraced::Blind(object.to_string()));
    }
    let known: BTreeSet<PathBuf> = known.iter().map(|k| cwd.join(k)).collect();
    let mut written: HashSet<&Path> = HashSet::new();
    let mut out = BTreeSet::new();
    for line in trace.lines() {
        if let Some(path) = line.strip_prefix("w ") {
            written.insert(Path::new(path));
            continue;
        }
        let Some(path) = line.strip_prefix("r ").or_else(|| line.strip_prefix("x ")) else {
            continue;
        };
        // As the components say it ("a/./b" is "a/b"); ".." is kept, as
        // it is only meaningful through the links the path takes.
        let p: PathBuf = Path::new(path).components().collect();
        let p = p.as_path();
        if !p.is_absolute()
            || known.contains(p)
            || written.contains(p)
            || ["/proc/", "/sys/", "/dev/"]
                .iter()
                .any(|d| path.starts_with(d))
        {
            continue;
        }
        let shown = match p.strip_prefix(cwd) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => p.to_string_lossy().into_owned(),
        };
        out.insert(shown);
    }
    Ok(out.into_iter().collect())
}

/// Whether the trace is whole: written by the shim (a header), every
/// process's lines all written (no `!`, each header closed by an `end` of
/// its pid), every spawned process traced (its header is there).
fn check_whole(trace: &str) -> Result<(), Untraced> {
    // Per pid: whether its trace is open (a header not closed yet). An
    // `end` with nothing open is a vfork child's exec: ignored.
    let mut open: HashMap<&str, bool> = HashMap::new();
    let mut spawned: Vec<(&str, &str)> = Vec::new();
    let mut program = "a program";
    for line in trace.lines() {
        if let Some(pid) = line.strip_prefix(HEADER) {
            open.insert(pid, true);
        } else if let Some(pid) = line.strip_prefix("end ") {
            if let Some(o) = open.get_mut(pid) {
                *o = false;
            }
        } else if let Some(why) = line.strip_prefix("! ") {
            return Err(Untraced::Incomplete(why.to_string()));
        } else if let Some(p) = line.strip_prefix("x ") {
            program = p;
        } else if let Some(pid) = line.strip_prefix("s ") {
            spawned.push((pid, program));
        }
    }
    if open.is_empty() {
        return Err(Untraced::NoShim);
    }
    if let Some((_, program)) = spawned.iter().find(|(pid, _)| !open.contains_key(pid)) {
        return Err(Untraced::Spawned(program.to_string()));
    }
    if let Some(pid) = open.iter().find_map(|(pid, o)| o.then_some(pid)) {
        return Err(Untraced::Incomplete(format!(
            "process {pid} did not finish its trace"
        )));
    }
    Ok(())
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
        let trace = "thinlto-trace 2 10\n\
                     r /usr/lib/os-release\n\
                     r /t/kernel/a.o\n\
                     r /t/kernel/a.o.thinlto.bc\n\
                     r /proc/self/maps\n\
                     r /t/kernel/./config_data.txt\n\
                     end 10\n\
                     thinlto-trace 2 11\n\
                     x /usr/lib/llvm-19/bin/clang\n\
                     r /t/kernel/config_data.txt\n\
                     end 11\n";
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
        // The old format (resolved paths): not trusted.
        assert_eq!(
            extras("thinlto-trace 1\nr /t/x\n", Path::new("/t"), "x", &[]),
            Err(Untraced::NoShim)
        );
        // Only a wrapper was traced: not the compile.
        assert_eq!(
            extras(
                "thinlto-trace 2 5\nr /t/cc.sh\nx /usr/bin/env\nend 5\n",
                Path::new("/t"),
                "kernel/a.o",
                &[]
            ),
            Err(Untraced::Blind("kernel/a.o".into()))
        );
    }

    /// A link is kept as the compiler named it: its digest is taken
    /// through the link, so a retarget is a change.
    #[test]
    fn paths_are_kept_as_opened() {
        let trace = "thinlto-trace 2 7\nr /t/a.o\nr /t/link.bin\nend 7\n";
        assert_eq!(
            extras(trace, Path::new("/t"), "a.o", &["a.o"]).unwrap(),
            ["link.bin"]
        );
    }

    /// `as` under -fno-integrated-as: spawned, traced; the .s the compile
    /// wrote itself is an intermediate, the file `as` read an extra.
    #[test]
    fn a_spawned_assembler_is_part_of_the_compile() {
        let trace = "thinlto-trace 2 20\n\
                     r /t/a.o\n\
                     w /tmp/a-1.s\n\
                     x /usr/bin/as\n\
                     s 21\n\
                     thinlto-trace 2 21\n\
                     w /t/a.native.o\n\
                     r /tmp/a-1.s\n\
                     r /t/data.bin\n\
                     end 21\n\
                     end 20\n";
        assert_eq!(
            extras(trace, Path::new("/t"), "a.o", &["a.o", "a.native.o"]).unwrap(),
            ["/usr/bin/as", "data.bin"]
        );
        // A file read before the compile wrote it is an input all the same.
        let read_first = "thinlto-trace 2 20\nr /t/a.o\nr /t/x\nw /t/x\nend 20\n";
        assert_eq!(
            extras(read_first, Path::new("/t"), "a.o", &["a.o"]).unwrap(),
            ["x"]
        );
        // The spawned process never showed up: a static `as`.
        let untraced = "thinlto-trace 2 20\nr /t/a.o\nx /opt/static/as\ns 21\nend 20\n";
        assert_eq!(
            extras(untraced, Path::new("/t"), "a.o", &["a.o"]),
            Err(Untraced::Spawned("/opt/static/as".into()))
        );
    }

    #[test]
    fn an_incomplete_trace_is_refused() {
        let t = Path::new("/t");
        // A line the shim could not write (a path over PATH_MAX).
        let marked = "thinlto-trace 2 3\nr /t/a.o\n! a path too long to trace\nend 3\n";
        assert_eq!(
            extras(marked, t, "a.o", &["a.o"]),
            Err(Untraced::Incomplete("a path too long to trace".into()))
        );
        // A full disk: not even the mark made it, and no end.
        let cut = "thinlto-trace 2 3\nr /t/a.o\n";
        assert!(matches!(
            extras(cut, t, "a.o", &["a.o"]),
            Err(Untraced::Incomplete(_))
        ));
        // A process that exec'd another (same pid), which did not end.
        let exec_cut = "thinlto-trace 2 3\nx /usr/bin/clang\nend 3\nthinlto-trace 2 3\nr /t/a.o\n";
        assert!(matches!(
            extras(exec_cut, t, "a.o", &["a.o"]),
            Err(Untraced::Incomplete(_))
        ));
        // A vfork child's exec closes nothing of its own; the program it
        // ran must still end.
        let vfork = "thinlto-trace 2 3\nx /usr/bin/clang\nend 4\nthinlto-trace 2 4\nr /t/a.o\nend 4\nend 3\n";
        assert_eq!(
            extras(vfork, t, "a.o", &["a.o"]).unwrap(),
            ["/usr/bin/clang"]
        );
        let vfork_cut = "thinlto-trace 2 3\nend 4\nthinlto-trace 2 4\nr /t/a.o\nend 3\n";
        assert!(matches!(
            extras(vfork_cut, t, "a.o", &["a.o"]),
            Err(Untraced::Incomplete(_))
        ));
    }
}
