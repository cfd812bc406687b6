//! The backend engine's entry point: [`run`] takes a [`Config`] and the
//! jobs' inputs, plans them ([`crate::engine::plan`]), looks them up in the cache,
//! runs what must run ([`crate::engine::scheduler`]) and reports every job.
//!
//! Job records (one JSON object per line, the contract of SPEC §3) go to
//! the writer the caller gives; kbuild-style lines, the progress bar, the
//! compilers' warnings and the summary go to stderr, as the tool's users
//! read them.

pub mod plan;
pub mod reads;
pub mod scheduler;

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Result};
use thinlto_index::toolchain::{Role, ToolEnv};
use thinlto_index::{Tool, Toolchain};

use crate::cache::BackendCache;
use crate::config::{Config, Mode, Verbosity, Warm};
use crate::engine::plan::{plan, read_front_ends, recorded_cc, Decision, FrontEnd};
use crate::engine::scheduler::{JobRecord, JobStatus, MakeJobserver, RunOptions};
use crate::job::{native_of, BackendJob, JobInput};
use crate::record::{round3, write_record, NativeRecord};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every job up to date, taken from the cache or built.
    Success,
    /// A job failed or did not start (its error was printed).
    Failed,
    /// A signal stopped it; the caller dies by the signal once it has
    /// cleaned up ([`crate::signals::die_if_signalled`]).
    Interrupted(i32),
}

/// Runs the backend jobs of `inputs` as `cfg` says, writing one JSON
/// record per job to `records`. `jobserver` is make's, as
/// [`scheduler::jobserver_from_env`] found it (taken once, early, by the
/// binary: the descriptors it names must not be reused before).
///
/// An error is a problem with the run itself (no input, an unreadable
/// `.cmd` file, a closed stdout); a failed compile is
/// [`Outcome::Failed`].
pub fn run(
    cfg: &Config,
    inputs: Vec<JobInput>,
    jobserver: MakeJobserver,
    records: &mut (dyn Write + Send),
) -> Result<Outcome> {
    let start = Instant::now();
    let mut inputs = inputs;
    if !cfg.only.is_empty() {
        inputs.retain(|i| {
            let native = native_of(&i.object);
            cfg.only
                .iter()
                .any(|o| *o == i.object || *o == native || *o == i.summary)
        });
        if inputs.is_empty() {
            bail!("--only {:?}: no such job", cfg.only);
        }
    }
    let front_ends = read_front_ends(inputs)?;
    let cc = Toolchain::resolve_one(
        &cfg.toolchain,
        &cc_env(&cfg.toolchain, &front_ends),
        Role::Cc,
    )?;
    let mut planned = plan(front_ends, &cc.spelled)?;
    // The plan spells `$(CC)` as one word; a CC with a launcher
    // (`ccache clang-19`) runs as its words.
    if cc.argv.len() > 1 {
        for (job, _, _) in &mut planned {
            job.argv.splice(0..1, cc.argv.iter().cloned());
        }
    }
    // Was the bitcode written by this compiler's LLVM? One object (the
    // first to compile) answers for the tree: the records name one
    // compiler for all (or the resolution failed above). The check (one
    // `--version`, a few bytes of one file) runs beside the jobs, so that
    // it adds no wall time, and says its warning once they are done. Only
    // here, for kbuild's jobs: a DTLTO link's compiler is the linker's
    // choice, of its own LLVM, as its in-process backend would be.
    let producer_check = planned
        .iter()
        .find(|(_, d, _)| cfg.always_make || matches!(d, Decision::Run(_)))
        .map(|(job, _, _)| {
            let (cc, object) = (cc.clone(), job.input.object.clone());
            std::thread::spawn(move || {
                thinlto_index::producer::mismatch(&cc, std::path::Path::new(&object))
            })
        });
    let outcome = run_planned(cfg, &cc, planned, jobserver, records, start);
    if let Some(w) = producer_check.and_then(|t| t.join().ok().flatten()) {
        eprintln_one_write!("thinlto-backend: warning: {w}");
    }
    outcome
}

/// A job, whether it must run, and the record a build of it writes.
pub type Planned = (BackendJob, Decision, NativeRecord);

/// Runs jobs planned by the caller ([`run`] plans kbuild's; another front
/// end, such as a DTLTO distributor, brings its own) with the compiler
/// `cc`: `-B`, the cache, `--explain`/`--dry-run`, the scheduler, the
/// records and the summary, as [`run`] describes. `start` is when the run
/// began (the summary's wall time).
pub fn run_planned(
    cfg: &Config,
    cc: &Tool,
    mut planned: Vec<Planned>,
    jobserver: MakeJobserver,
    records: &mut (dyn Write + Send),
    start: Instant,
) -> Result<Outcome> {
    if cfg.always_make {
        for p in &mut planned {
            if matches!(p.1, Decision::UpToDate | Decision::Adopt) {
                p.1 = Decision::Run("forced (-B)".into());
            }
        }
    }
    let needs_run = planned
        .iter()
        .any(|(_, d, _)| matches!(d, Decision::Run(_)));
    // A cache that cannot be opened (one on a read-only or full file
    // system, a file where the directory should be) is said once, and the
    // build goes on without it: the cache only saves time, it never
    // decides the result.
    let cache = match &cfg.cache {
        Some(opts) if needs_run => match BackendCache::open(opts, &cc.argv) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln_one_write!("thinlto-backend: cache: {e:#}; building without the cache");
                None
            }
        },
        _ => None,
    };
    // A farm that cannot be reached is said once; the jobs compile here.
    let remote = match &cfg.remote_exec {
        Some(o) if needs_run && cfg.mode == Mode::Build => {
            match crate::exec::RemoteExec::connect(o, &cc.argv) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln_one_write!("thinlto-backend: remote execution: {e:#}; compiling here");
                    None
                }
            }
        }
        _ => None,
    };
    if cfg.mode != Mode::Build {
        // With --remote-exec, where each job would compile (the farm is
        // not asked: what this machine can tell, as a run decides it).
        let placer = (cfg.mode == Mode::Explain && cfg.remote_exec.is_some())
            .then(|| crate::exec::Placer::new(&cc.argv));
        explain(cfg.mode, &planned, cache.as_ref(), placer.as_ref(), records)?;
        return Ok(Outcome::Success);
    }
    // From here on records are written and children run: a signal is
    // recorded, the run stops its children and cleans up, and the caller
    // dies by the signal afterwards.
    let _deferred = crate::signals::defer_signals();
    let records = Mutex::new(records);
    let print = |rec: &JobRecord| -> std::io::Result<()> {
        let mut o = records.lock().unwrap();
        serde_json::to_writer(&mut **o, rec)?;
        o.write_all(b"\n")?;
        o.flush()
    };
    let mut to_run = Vec::new();
    let mut up_to_date = 0;
    for (job, d, rec) in planned {
        let reason = match d {
            Decision::UpToDate => "command and inputs unchanged",
            // The digests of today's inputs, which make's rule says the
            // native was built from.
            Decision::Adopt => match job
                .record_path
                .as_deref()
                .map(|p| write_record(p, &rec.render(&job.native)))
            {
                Some(Ok(())) => {
                    "make's record adopted: command equal, native newer than every input"
                }
                _ => "make's record: command equal, native newer than every input",
            },
            Decision::Run(why) => {
                to_run.push((job, why, rec));
                continue;
            }
        };
        up_to_date += 1;
        print(&JobRecord {
            object: job.input.object.clone(),
            native: job.native.clone(),
            status: JobStatus::UpToDate,
            reason: reason.into(),
            seconds: 0.0,
            cache: None,
            key: None,
            place: None,
            worker: None,
            batch: None,
        })
        .map_err(stdout_error)?;
    }
    let order = longest_first(&to_run);
    let progress =
        cfg.verbosity == Verbosity::Normal && std::io::stderr().is_terminal() && to_run.len() > 1;
    let bar = progress.then(|| {
        let pb = indicatif::ProgressBar::new(to_run.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "  BE      [{bar:40}] {pos}/{len} {msg} (eta {eta})",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb
    });
    let opts = RunOptions {
        jobs: cfg
            .jobs
            .unwrap_or_else(|| scheduler::default_jobs(&jobserver)),
        jobs_explicit: cfg.jobs.is_some(),
        keep_going: cfg.keep_going,
        verbosity: if progress {
            Verbosity::Quiet
        } else {
            cfg.verbosity
        },
        progress,
    };
    // Everything a job printed goes through here, on one thread: above the
    // progress bar when there is one (a worker's eprint would tear it).
    let mut emit = |rec: JobRecord, output: Option<String>| {
        let msg = match (rec.status, output) {
            (JobStatus::Failed, output) => Some(format!(
                "thinlto-backend: error: {}: {}\n{}",
                rec.native,
                rec.reason,
                output.unwrap_or_default()
            )),
            // A successful job's warnings, shown at every verbosity.
            (_, output) => output,
        };
        if let Some(msg) = msg {
            match &bar {
                Some(b) => b.println(msg.trim_end()),
                None => eprint!("{msg}"),
            }
        }
        if let Some(b) = &bar {
            b.set_message(rec.native.clone());
            b.inc(1);
        }
        print(&rec)
    };
    let client = match jobserver {
        MakeJobserver::Usable(c) => Some(c),
        _ => None,
    };
    // Asked for, the warm compiler says why it cannot serve at every
    // verbosity; as the default, -q keeps it quiet.
    let announce = cfg.warm == Warm::Asked || cfg.verbosity != Verbosity::Quiet;
    let warm = (cfg.warm != Warm::Off && !to_run.is_empty())
        .then(|| crate::warm::Warm::start(&cc.argv[0], announce));
    let summary = std::thread::scope(|scope| {
        // The cache's lookups run ahead of the jobs, in their order.
        let prefetch = cache.as_ref().map(|c| c.prefetch(scope, &to_run, &order));
        let summary = scheduler::run_jobs(
            &to_run,
            order,
            &opts,
            client,
            cache.as_ref(),
            prefetch.as_deref(),
            remote.as_ref(),
            &mut emit,
        );
        if let Some(p) = &prefetch {
            p.cancel();
        }
        summary
    });
    drop(warm);
    let cache_summary = cache.as_ref().map(|c| c.finish());
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if (cfg.verbosity != Verbosity::Quiet && cfg.summary) || summary.failed > 0 {
        let cached = match &cache_summary {
            Some(c) => format!(
                ", {} from the cache ({} local, {} remote; {} misses)",
                summary.cache_hits, c.hits_local, c.hits_remote, c.misses
            ),
            None => String::new(),
        };
        let farm = match remote.as_ref().map(|r| r.summary()) {
            Some(r) => format!(
                " ({} on the farm, {} compiled here instead; {:.1} MiB up, {:.1} MiB down)",
                r.built,
                r.fallbacks,
                r.bytes_up as f64 / (1u64 << 20) as f64,
                r.bytes_down as f64 / (1u64 << 20) as f64
            ),
            None => String::new(),
        };
        eprintln_one_write!(
            "thinlto-backend: {} built{farm}, {} up to date{cached}, {} failed{}; wall {:.2} s, CPU {:.2} s",
            summary.built,
            up_to_date,
            summary.failed,
            if summary.not_started > 0 {
                format!(", {} not started", summary.not_started)
            } else {
                String::new()
            },
            round3(start.elapsed().as_secs_f64()),
            scheduler::children_cpu_seconds(),
        );
        // What the run asked of the farm's server, whose price is per
        // call: `-v` only (the bench reads it).
        if let Some(r) = remote
            .as_ref()
            .filter(|_| cfg.verbosity == Verbosity::Commands)
        {
            let r = r.summary();
            eprintln_one_write!(
                "thinlto-backend: farm calls: {}; {} batched jobs not looked up first (a cold farm)",
                calls_line(&r.calls),
                r.lookups_skipped
            );
        }
    }
    if let Some(sig) = summary.signal {
        eprintln_one_write!("thinlto-backend: interrupted by signal {sig}; outputs in place are complete, a re-run finishes the rest");
        return Ok(Outcome::Interrupted(sig));
    }
    if let Some(e) = summary.output_error {
        bail!(
            "{:#}; no job started after it (the jobs that ran are recorded for the next run)",
            stdout_error(&*e)
        );
    }
    Ok(if summary.failed > 0 || summary.not_started > 0 {
        Outcome::Failed
    } else {
        Outcome::Success
    })
}

/// The process environment plus the compiler the front ends' records name
/// (read only when no flag, LLVM= or CC names one).
pub fn cc_env(args: &thinlto_index::ToolchainArgs, front_ends: &[FrontEnd]) -> ToolEnv {
    let mut env = ToolEnv::from_process();
    if !thinlto_index::toolchain::named(args, &env, Role::Cc) {
        env.tree_cc = recorded_cc(front_ends);
    }
    env
}

/// `--explain` and `--dry-run`: what a build would do, on `out`. With
/// `placer` (`--explain --remote-exec`), each job that would compile says
/// whether it goes to the farm or compiles here and why, and a summary
/// on stderr counts them.
fn explain(
    mode: Mode,
    planned: &[(BackendJob, Decision, NativeRecord)],
    cache: Option<&BackendCache>,
    placer: Option<&crate::exec::Placer>,
    out: &mut dyn Write,
) -> Result<()> {
    let explain = mode == Mode::Explain;
    let (mut farm, mut here, mut hits, mut up_to_date) = (0, 0, 0, 0);
    for (job, d, rec) in planned {
        let cached = match (cache, d, explain) {
            (Some(c), Decision::Run(_), true) => c.probe(job, rec),
            _ => None,
        };
        match (d, &cached) {
            (Decision::Run(_), Some(_)) => hits += 1,
            (Decision::Run(_), None) => {}
            _ => up_to_date += 1,
        }
        // Where a job that compiles goes: "; on the farm…" or "; here: why".
        let place = match (placer, d, &cached) {
            (Some(p), Decision::Run(_), None) => {
                let reads = cache.and_then(|c| c.known_reads(job, rec));
                match p.local_reason(job, reads.as_deref()) {
                    Some(why) => {
                        here += 1;
                        format!("; here: {why}")
                    }
                    None if reads.is_none() => {
                        farm += 1;
                        "; on the farm (no trace of it yet: a file it reads beyond its inputs would bring it back here)".to_string()
                    }
                    None => {
                        farm += 1;
                        "; on the farm".to_string()
                    }
                }
            }
            _ => String::new(),
        };
        match (d, explain) {
            (Decision::UpToDate, true) => writeln!(out, "{}: up to date", job.native),
            (Decision::Adopt, true) => writeln!(
                out,
                "{}: up to date (make's record, the native newer than every input)",
                job.native
            ),
            (Decision::Run(why), true) => match cached {
                Some((tier, key)) => writeln!(
                    out,
                    "{}: would run: {why}; cache-hit ({}) {key}",
                    job.native,
                    tier.as_str()
                ),
                None => writeln!(out, "{}: would run: {why}{place}", job.native),
            },
            (Decision::Run(_), false) => writeln!(out, "{}", job.command_text),
            (Decision::UpToDate | Decision::Adopt, false) => Ok(()),
        }
        .map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    if placer.is_some() {
        eprintln_one_write!(
            "thinlto-backend: explain: {} would run ({farm} on the farm, {here} here, {hits} from the cache), {up_to_date} up to date",
            farm + here + hits
        );
    }
    Ok(())
}

/// The order jobs start in: longest expected first — the last recorded
/// duration, else the bitcode size scaled to seconds (only the order
/// matters, and it puts the big unknown objects first); ties in input
/// order.
fn longest_first(to_run: &[(BackendJob, String, NativeRecord)]) -> Vec<usize> {
    let cost: Vec<f64> = to_run
        .iter()
        .map(|(j, _, rec)| expected_seconds(j, rec))
        .collect();
    let mut order: Vec<usize> = (0..to_run.len()).collect();
    order.sort_by(|a, b| cost[*b].total_cmp(&cost[*a]).then(a.cmp(b)));
    order
}

/// A job's expected compile time in seconds: its last recorded duration,
/// else its bitcode's size scaled to seconds (a rough guess, ~50 KB a
/// second). It orders the jobs and sizes the farm's batches.
pub fn expected_seconds(job: &BackendJob, record: &NativeRecord) -> f64 {
    record.seconds.unwrap_or_else(|| {
        std::fs::metadata(&job.input.object)
            .map(|m| m.len() as f64 * 2e-5)
            .unwrap_or(0.0)
    })
}

/// An error writing the records (a closed pipe included: the tool exits 1
/// saying so, rather than die silently by SIGPIPE, as the records of the
/// jobs that ran are lost to the reader).
pub fn stdout_error(e: impl std::borrow::Borrow<std::io::Error>) -> anyhow::Error {
    let e = e.borrow();
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::anyhow!("writing to stdout: {e} (the reader closed it)")
    } else {
        anyhow::anyhow!("writing to stdout: {e}")
    }
}

/// The farm calls of a run as `-v` prints them: `914 GetActionResult,
/// 177 Execute` (`none` for none).
pub fn calls_line(calls: &[(&'static str, u64)]) -> String {
    if calls.is_empty() {
        return "none".into();
    }
    calls
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}
