//! A DTLTO distributor: `ld.lld --thinlto-distributor=thinlto-backend
//! --thinlto-distributor-arg=dtlto` hands the link's backend compiles to
//! the engine (scheduler, jobserver, warm compiler, cache).
//!
//! lld writes a JSON file ([`schema`]) and runs the distributor with it
//! as the last argument; each job is `common.args + job.args`, run with
//! exactly that argv, so its outputs are byte for byte what lld's own
//! `local.py` gives. lld reads the outputs once we exit 0; a failed job
//! fails the link with the compiler's message (on stderr, which lld
//! passes through).
//!
//! What differs from kbuild's front end:
//! - no records: the outputs are lld's temporaries, gone after the link,
//!   so nothing is up to date between links and no `.cmd` file is written
//!   beside them; every job runs or comes from the cache;
//! - the cache key names the per-link files by their role. lld puts its
//!   PID in the shard's and the output's names (`a.1.22246.native.o`) and
//!   in archive members' (`libc.a(c.o at 78).3.56E6.o`), and the shard
//!   names the modules it imports by those names; a key over the literal
//!   names would never hit on the next link. So the key takes the argv
//!   with each job input, output and common input replaced by its role
//!   (`@input1`), and the shard's decoded content with the same
//!   replacement ([`bitcode`]). That is sound only where the object
//!   cannot depend on the names; see [`names_may_reach_output`]. Where
//!   they may, or the shard cannot be decoded, the key is the literal one
//!   (correct, it only never hits across links).

pub mod bitcode;
pub mod schema;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use thinlto_cmdparse::shell;
use thinlto_index::toolchain::{Role, ToolEnv};
use thinlto_index::{Toolchain, ToolchainArgs};

use crate::config::Config;
use crate::digest::DigestCache;
use crate::engine::plan::Decision;
use crate::engine::scheduler::MakeJobserver;
use crate::engine::{run_planned, Outcome, Planned};
use crate::job::{BackendJob, JobInput};
use crate::record::NativeRecord;
use schema::DistFile;

/// Runs the jobs of the DTLTO file `json` as `cfg` says (its toolchain,
/// `--only`, `-B` and mode are not used: the compiler is the file's, and
/// every job runs or comes from the cache). Records go to `records`.
pub fn run(
    cfg: &Config,
    json: &Path,
    jobserver: MakeJobserver,
    records: &mut (dyn Write + Send),
) -> Result<Outcome> {
    let start = Instant::now();
    let file = DistFile::read(json)?;
    if file.jobs.is_empty() {
        return Ok(Outcome::Success);
    }
    // Every job is checked before the compiler is looked for: a bad job
    // file is the file's error on any machine, whether or not the LLVM it
    // names is installed.
    for i in 0..file.jobs.len() {
        file.check(i).with_context(|| json.display().to_string())?;
    }
    let compiler = &file.common.args[0];
    let cc = Toolchain::resolve_one(
        &ToolchainArgs {
            cc: Some(shell::join([compiler])),
            ..Default::default()
        },
        &ToolEnv::from_process(),
        Role::Cc,
    )
    .with_context(|| format!("{}: common.args[0]", json.display()))?;
    let planned = plan(&file).with_context(|| json.display().to_string())?;
    let outcome = run_planned(cfg, &cc, planned, jobserver, records, start)?;
    if outcome == Outcome::Success {
        // lld reads every output it listed: one missing is our failure,
        // said here rather than as lld's "cannot open".
        for (i, j) in file.jobs.iter().enumerate() {
            for (k, o) in j.outputs.iter().enumerate() {
                if !std::fs::metadata(o).is_ok_and(|m| m.is_file() && m.len() > 0) {
                    bail!(
                        "{}: jobs[{i}].outputs[{k}]: {o} missing (or empty) after the run",
                        json.display()
                    );
                }
            }
        }
    }
    Ok(outcome)
}

/// The engine's jobs, every one to run.
fn plan(file: &DistFile) -> Result<Vec<Planned>> {
    use rayon::prelude::*;
    let digests = DigestCache::default();
    (0..file.jobs.len())
        .into_par_iter()
        .map(|i| plan_one(file, i, &digests))
        .collect()
}

fn plan_one(file: &DistFile, i: usize, digests: &DigestCache) -> Result<Planned> {
    let checked = file.check(i)?;
    let j = &file.jobs[i];
    let mut argv = file.common.args.clone();
    argv.extend(j.args.iter().cloned());
    let imports: Vec<String> = j
        .inputs
        .iter()
        .filter(|p| **p != checked.object && **p != checked.shard)
        .chain(&file.common.inputs)
        .cloned()
        .collect();
    let mut job = BackendJob {
        input: JobInput {
            object: checked.object,
            summary: checked.shard,
            imports: Some(imports),
        },
        native: checked.native,
        record_path: None,
        command_text: shell::join(&argv),
        argv,
        key_argv: None,
    };
    let digest = |p: &str| {
        digests
            .digest(p)
            .with_context(|| format!("jobs[{i}]: {p}: missing or unreadable"))
    };
    let mut record = NativeRecord::default();
    let by_role = if names_may_reach_output(&job.argv) {
        None
    } else {
        by_role(file, i, &job, &digest)?
    };
    match by_role {
        Some((key_argv, role_digests)) => {
            job.key_argv = Some(key_argv);
            record.digests = role_digests;
        }
        None => {
            for p in job.content_inputs() {
                record.digests.insert(p.to_string(), digest(p)?);
            }
        }
    }
    Ok((job, Decision::Run("DTLTO job".into()), record))
}

/// The key's view of job `i`: its argv and its inputs' digests with the
/// per-link names replaced by their role; None when the shard cannot be
/// decoded (the key is then the literal one).
#[allow(clippy::type_complexity)]
fn by_role(
    file: &DistFile,
    i: usize,
    job: &BackendJob,
    digest: &dyn Fn(&str) -> Result<String>,
) -> Result<Option<(Vec<String>, std::collections::BTreeMap<String, String>)>> {
    let j = &file.jobs[i];
    let mut roles: HashMap<&str, String> = HashMap::new();
    let named = [
        ("input", &j.inputs),
        ("output", &j.outputs),
        ("common-input", &file.common.inputs),
    ];
    for (what, names) in named {
        for (k, n) in names.iter().enumerate() {
            roles
                .entry(n.as_str())
                .or_insert_with(|| format!("@{what}{k}"));
        }
    }
    let rename = |a: &str| -> Option<String> {
        if let Some(r) = roles.get(a) {
            return Some(r.clone());
        }
        let (opt, value) = a.split_once('=')?;
        Some(format!("{opt}={}", roles.get(value)?))
    };
    let key_argv = job
        .argv
        .iter()
        .map(|a| rename(a).unwrap_or_else(|| a.clone()))
        .collect();
    let shard = &job.input.summary;
    let bytes = std::fs::read(shard).with_context(|| format!("jobs[{i}]: {shard}: cannot read"))?;
    let role_of = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| roles.get(s).cloned())
    };
    let Ok(shard_digest) = bitcode::digest_with_roles(&bytes, &role_of) else {
        return Ok(None);
    };
    let mut out = std::collections::BTreeMap::new();
    for p in job.content_inputs() {
        let d = if p == shard {
            shard_digest.clone()
        } else {
            digest(p)?
        };
        out.insert(roles[p].clone(), d);
    }
    Ok(Some((key_argv, out)))
}

/// Whether the object (or a file the compile writes) may depend on the
/// names of its inputs and outputs: then the cache key keeps the literal
/// names. By experiment with clang 22 (two links of the same objects,
/// front end with and without -g, compared natives): plain, `-g` and
/// `-grecord-command-line` give the same native under new names, and
/// `-gsplit-dwarf` does not (the object names its `.dwo`). The command
/// line recorders are kept literal anyway (what they record is the
/// argv), and so are the options that write files named after the output.
pub fn names_may_reach_output(argv: &[String]) -> bool {
    argv.iter().any(|a| {
        let a = a.as_str();
        a.starts_with("-gsplit-dwarf")
            || matches!(
                a,
                "-grecord-command-line"
                    | "-grecord-gcc-switches"
                    | "-frecord-command-line"
                    | "-frecord-gcc-switches"
            )
            || [
                "-save-temps",
                "--save-temps",
                "-ftime-trace",
                "-fsave-optimization-record",
                "-foptimization-record-file",
                "-fproc-stat-report",
            ]
            .iter()
            .any(|p| a.starts_with(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_dwarf_and_recorders_keep_the_literal_key() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(!names_may_reach_output(&w("clang -c -O2 -g a.o")));
        assert!(names_may_reach_output(&w("clang -c -gsplit-dwarf a.o")));
        assert!(names_may_reach_output(&w(
            "clang -c -frecord-command-line a.o"
        )));
        assert!(names_may_reach_output(&w("clang -c -save-temps=obj a.o")));
    }
}
