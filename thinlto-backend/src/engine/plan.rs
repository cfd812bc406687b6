//! Which backend jobs exist and which of them must run.
//!
//! A job is up to date when all of these hold, whatever the mtimes of the
//! `.thinlto.bc` files (the thin link may rewrite them with the same bytes):
//! - its native object exists and is not empty;
//! - its record's command equals the command we would run now (compared
//!   as make's `if_changed` compares: whitespace runs collapsed);
//! - the recorded blake3 digests of `foo.o`, `foo.o.thinlto.bc` and every
//!   module `foo.o` imports equal their current contents;
//! - `foo.o` and every module it imports have the mtimes recorded when the
//!   native was built.
//!
//! The last rule is for inputs no digest can see. The backend assembles
//! inline asm, so a file that asm `.incbin`s is read by the backend though
//! it is in no input list (and an imported function may carry such asm
//! into its importers). kbuild rebuilds `foo.o` when such a file changes
//! (it is a make prerequisite of `foo.o`, and the kernel's `.incbin`
//! users all declare it), so a front-end object that make rebuilt — a new
//! mtime — reruns its backend job and its importers' even when its bitcode
//! bytes are unchanged. The thin link never touches `foo.o` (only
//! `foo.o.thinlto.bc`), so this costs nothing on a relink; a front-end
//! rebuild that changed nothing costs the jobs that read that object.
//! A job's imports are the modules its shard names
//! ([`crate::job::with_shard_imports`], read here once per job),
//! with or without the thin link's `.imports` lists.
//! A record whose compile was traced whole (`engine/reads.rs`, every
//! local compile where the preload shim can be placed) names every file
//! the compile read beyond its inputs, with its digest: then those digests
//! decide instead of the mtimes, and a front-end object rebuilt with the
//! same bitcode costs nothing — neither its job nor its importers' (an
//! importer reads an imported object's `.incbin`'d file only if it imports
//! that asm, and then its own trace names the file). A native from the
//! cache or the farm has a record of the same kind (`cache::Hit::reads`,
//! `exec::RemoteExec::reads_of_input_root`: what its compile could read,
//! as far as this machine can check it); one built by make, or whose
//! reads could not be established, has none: the mtime rule.
//!
//! A record written by make's `if_changed` (a command, no digests) is
//! adopted as make itself would judge it: if the command is equal and the
//! native is newer than `foo.o`, `foo.o.thinlto.bc` and every import, the
//! job is up to date and the record gains the digests and mtimes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use thinlto_cmdparse::{cmd_file_for_object, CmdFile};
use thinlto_index::tree_tools::{self, TreeRecord};

use crate::digest::{mtime_ns, DigestCache};
use crate::job::{with_shard_imports, BackendJob, JobInput};
use crate::record::NativeRecord;

/// Whether a job must run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    UpToDate,
    /// Up to date by make's own rule (a record of make's `if_changed`,
    /// the native newer than every input): nothing runs, but the record
    /// is rewritten with the digests.
    Adopt,
    Run(String),
}

/// The front-end objects of a job: the object and its imports (the
/// files whose mtimes the record keeps).
fn fe_objects(job: &BackendJob) -> impl Iterator<Item = &str> {
    std::iter::once(job.input.object.as_str())
        .chain(job.input.imports.iter().flatten().map(String::as_str))
}

/// Decides one job, and returns the record a successful build will write
/// (minus its duration).
pub fn decide(job: &BackendJob, cache: &DigestCache) -> Result<(Decision, NativeRecord)> {
    let mut fresh = NativeRecord {
        command: Some(job.command_text.clone()),
        ..Default::default()
    };
    for p in job.content_inputs() {
        let d = cache
            .digest(p)
            .with_context(|| format!("{p}: missing or unreadable (input of {})", job.native))?;
        fresh.digests.insert(p.to_string(), d);
    }
    for p in fe_objects(job) {
        let t = mtime_ns(Path::new(p))
            .with_context(|| format!("{p}: cannot stat (input of {})", job.native))?;
        fresh.mtimes.insert(p.to_string(), t);
    }
    let native_mtime = std::fs::metadata(&job.native)
        .ok()
        .filter(|m| m.is_file() && m.len() > 0)
        .and_then(|m| m.modified().ok());
    let old = job
        .record_path
        .as_deref()
        .map(NativeRecord::read)
        .unwrap_or_default();
    // The last duration orders the jobs (longest first).
    fresh.seconds = old.seconds;
    let decision = if native_mtime.is_none() {
        Decision::Run("new: no native object yet".into())
    } else if old.command.is_none() {
        Decision::Run("no record of the last build".into())
    } else if old.command.as_deref().map(normalize) != Some(normalize(&job.command_text)) {
        Decision::Run("command changed".into())
    } else if old.digests.is_empty() {
        // make's record: make's rule (no input newer than the target).
        let newer = job.content_inputs().into_iter().find(|p| {
            match (
                std::fs::metadata(p).and_then(|m| m.modified()),
                native_mtime,
            ) {
                (Ok(t), Some(n)) => t > n,
                _ => true,
            }
        });
        match newer {
            Some(p) => Decision::Run(format!("built by make, and {p} is newer")),
            None => Decision::Adopt,
        }
    } else if let Some(p) = fresh
        .digests
        .iter()
        .find(|(p, d)| old.digests.get(*p) != Some(*d))
        .map(|(p, _)| p)
    {
        Decision::Run(format!("input changed: {p}"))
    } else if old.digests.len() != fresh.digests.len() {
        Decision::Run("the import list changed".into())
    } else if old.traced {
        // The last compile's trace named every file it read beyond its
        // inputs (reads.rs): those decide, not the mtimes.
        match old
            .reads
            .iter()
            .find(|(p, d)| cache.digest(p).as_deref() != Some(d.as_str()))
        {
            Some((p, _)) => Decision::Run(format!("a file its last compile read changed: {p}")),
            None => Decision::UpToDate,
        }
    } else if let Some(p) = fresh
        .mtimes
        .iter()
        .find(|(p, t)| old.mtimes.get(*p) != Some(*t))
        .map(|(p, _)| p)
    {
        Decision::Run(format!(
            "front-end object rebuilt: {p} (same bitcode; it may .incbin a changed file)"
        ))
    } else {
        Decision::UpToDate
    };
    Ok((decision, fresh))
}

/// Commands compare as make's `if_changed` compares them: whitespace runs
/// collapsed.
fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A backend input with its front end's `.cmd` record, read.
pub type FrontEnd = (JobInput, CmdFile);

/// Reads the `.cmd` record of every input (in parallel, kept in input
/// order; the first error in input order is reported, so that the same
/// bad tree always gives the same message).
pub fn read_front_ends(inputs: Vec<JobInput>) -> Result<Vec<FrontEnd>> {
    if inputs.is_empty() {
        bail!("no bitcode objects to compile (is the manifest or index empty?)");
    }
    use rayon::prelude::*;
    let results: Vec<Result<FrontEnd>> = inputs
        .into_par_iter()
        .map(|input| {
            let cmd_path = cmd_file_for_object(Path::new(&input.object));
            let cmd =
                CmdFile::read(&cmd_path).with_context(|| format!("flags for {}", input.object))?;
            Ok((input, cmd))
        })
        .collect();
    results.into_iter().collect()
}

/// The compiler the front ends' records name (their `savedcmd_`), as
/// kbuild would run it again; records without a command are not asked.
pub fn recorded_cc(front_ends: &[FrontEnd]) -> Option<TreeRecord> {
    tree_tools::agree(front_ends.iter().filter_map(|(_, cmd)| {
        let spelled = tree_tools::recorded_tool(cmd.savedcmd.as_deref()?)?;
        Some((cmd.cmd_file.as_path(), spelled))
    }))
}

/// Builds and decides every job; a missing input is an error naming it.
pub fn plan(
    front_ends: Vec<FrontEnd>,
    cc: &str,
) -> Result<Vec<(BackendJob, Decision, NativeRecord)>> {
    use rayon::prelude::*;
    let cache = DigestCache::default();
    // Each job hashes its inputs and reads its record: rayon spreads them
    // over the cores, and an indexed collect keeps the input order (the
    // order of the records and of `--explain`); the first error in input
    // order is reported.
    let results: Vec<Result<(BackendJob, Decision, NativeRecord)>> = front_ends
        .into_par_iter()
        .map(|(i, cmd)| {
            let job = BackendJob::new(with_shard_imports(i)?, &cmd, cc)?;
            let (d, r) = decide(&job, &cache)?;
            Ok((job, d, r))
        })
        .collect();
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::native_of;

    #[test]
    fn native_names() {
        assert_eq!(native_of("a/b-c.o"), "a/b-c.thinlto-native.o");
        assert_eq!(normalize("a  b\tc "), "a b c");
    }
}
