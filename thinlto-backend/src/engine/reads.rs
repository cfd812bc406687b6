//! What a local backend compile read beyond its inputs, from its own
//! trace (the preload shim's, `cache/trace.rs`), kept in the job's record
//! so that the next run can tell exactly which files decide the native.
//!
//! Without it, a front-end object that make rebuilt with the same bitcode
//! must rerun its job and every importer's (`plan.rs`: it may `.incbin` a
//! changed file, which only the backend reads). With it, the record names
//! every file the compile read that no input list names, each with its
//! digest: the job reruns when one of them changed, and a rebuilt object
//! with the same bytes costs nothing. An importer reads an imported
//! object's `.incbin`'d file only if it imports that asm; its own trace
//! then says so.
//!
//! Every local compile is traced when the shim can be placed (the cache,
//! if any, takes the same trace). Programs the compile ran (`x` lines: the
//! compiler, an assembler) are not files it read: a new compiler is a new
//! command or is the cache's business, as before. A trace that is not
//! whole, a file that changed while the compile ran or cannot be read:
//! no trace is recorded, and the old rule (mtimes) decides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::cache::trace;
use crate::digest::hash_file;
use crate::job::BackendJob;

/// Where this run's traces go when no cache hands them out.
pub struct Tracer {
    cwd: PathBuf,
    dir: Option<tempfile::TempDir>,
    seq: AtomicU64,
}

impl Tracer {
    /// None when the shim cannot be placed (shim::path says why, once) or
    /// no directory can hold traces: compiles then run untraced.
    /// `own_dir`: whether traces need a directory of ours (no cache).
    pub fn new(own_dir: bool) -> Option<Tracer> {
        crate::warm::shim::path().ok()?;
        let cwd = std::env::current_dir().ok()?;
        let dir = if own_dir {
            Some(crate::cache::trace_dir(&std::env::temp_dir()).ok()?)
        } else {
            None
        };
        Some(Tracer {
            cwd,
            dir,
            seq: AtomicU64::new(0),
        })
    }

    /// A new trace file for one compile, when no cache gives one.
    pub fn file(&self) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Some(dir.path().join(format!("{n}.trace")))
    }

    /// The files the compile of `job`, started at `started`, read beyond
    /// its inputs and outputs, with their digests; None when its trace
    /// (the file `trace`) cannot vouch for that.
    pub fn reads(
        &self,
        trace: &Path,
        job: &BackendJob,
        started: SystemTime,
    ) -> Option<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(trace).ok()?;
        reads_of(&text, &self.cwd, job, started)
    }
}

fn reads_of(
    text: &str,
    cwd: &Path,
    job: &BackendJob,
    started: SystemTime,
) -> Option<BTreeMap<String, String>> {
    let mut known = job.content_inputs();
    known.push(&job.native);
    let extras = trace::extras(text, cwd, &job.input.object, &known).ok()?;
    // Programs run, as extras() spells paths (relative under cwd).
    let ran: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("x "))
        .map(|p| {
            let p: PathBuf = Path::new(p).components().collect();
            match p.strip_prefix(cwd) {
                Ok(rel) => rel.to_string_lossy().into_owned(),
                Err(_) => p.to_string_lossy().into_owned(),
            }
        })
        .collect();
    let mut out = BTreeMap::new();
    for p in extras.into_iter().filter(|p| !ran.contains(p)) {
        if out.len() >= crate::limits::MAX_EXTRAS {
            return None;
        }
        let full = cwd.join(&p);
        // Unchanged since the compile started: its digest now is that of
        // what the compile read.
        if crate::cache::changed_since(&full, started) {
            return None;
        }
        let d = hash_file(&full)?;
        out.insert(p, d);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobInput;

    #[test]
    fn reads_are_files_read_not_programs_run() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("blob.bin"), b"data").unwrap();
        let job = BackendJob {
            input: JobInput {
                object: "a.o".into(),
                summary: "a.o.thinlto.bc".into(),
                imports: Some(vec!["b.o".into()]),
            },
            native: "a.thinlto-native.o".into(),
            record_path: None,
            argv: vec![],
            command_text: String::new(),
            key_argv: None,
        };
        let c = t.path().display();
        let trace = format!(
            "thinlto-trace 2 1\nx /usr/bin/clang\nr {c}/a.o\nr {c}/a.o.thinlto.bc\nr {c}/b.o\n\
             r {c}/blob.bin\nw {c}/a.thinlto-native.o\nend 1\n"
        );
        let past = SystemTime::now() + std::time::Duration::from_secs(1);
        let got = reads_of(&trace, t.path(), &job, past).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["blob.bin"]);
        // Changed after the compile started: cannot vouch.
        let early = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(reads_of(&trace, t.path(), &job, early), None);
        // Not whole: cannot vouch.
        assert_eq!(
            reads_of("thinlto-trace 2 1\nr x\n", t.path(), &job, past),
            None
        );
    }
}
