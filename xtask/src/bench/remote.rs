//! `cargo xtask bench --remote-only --kernel LINUX`: remote execution
//! (`thinlto-backend --remote-exec`) on a kernel tree built in kbuild's
//! DIST mode. In one session, on the same cores: the tree's own
//! in-process link (lld runs the backends), every backend job from
//! scratch here (`-j N`), and every job from scratch on a local farm
//! (`cargo xtask farm`: BuildGrid, PostgreSQL, W release-built workers
//! sharing the N cores) twice, each time a new farm with an empty CAS and
//! action cache: one action a job (`--remote-batch 1`) and batched
//! (`--remote-batch auto`, or the size `--batch` gives). Every native of every run is compared with
//! kbuild's.
//!
//! Where the time goes: the CPU of each of the farm's components
//! (BuildGrid, PostgreSQL, the workers, their compiles: `/proc`, before
//! and after the run, `crate::bench::proc_cpu`) and of the client (`wait4`),
//! per job, and the server's per action.
//!
//! From the measured figures, a projection of the backend stage on a
//! farm of C remote cores: with S the sum of the jobs' times here, L the
//! longest, J jobs, and o the farm's cost per job on its workers (the
//! workers' and compiles' CPU of the batched run per job, less a job's
//! time here: `o = (workers + compiles − S)/J`),
//! `T(C) = max(L + o, (S + J·o) / C)`:
//! the compiles and their overhead spread over C cores, no job shorter
//! than the longest plus its overhead. The server is apart from the
//! workers there: with its measured CPU per action, the report gives the
//! BuildGrid processes (one core each at most: Python) each row needs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use thinlto_backend::engine::scheduler::Place;
use thinlto_backend::{JobRecord, JobStatus};

use crate::bench::proc_cpu::{self, FarmCpu};
use crate::farm::Farm;
use crate::kernel::{detect_layout, kernel_settings, TreeLayout};

/// One backend run: its wall time, the client's CPU (its own and its
/// local compiles'), job records and summary line; on a farm, with `-v`,
/// its calls to the farm by kind.
struct BackendRun {
    seconds: f64,
    cpu: f64,
    records: Vec<JobRecord>,
    summary: String,
    calls: FarmCalls,
}

/// What `thinlto-backend -v` says of a run's calls to the farm:
/// `thinlto-backend: farm calls: 914 GetActionResult, 177 Execute; 0
/// batched jobs not looked up first (a cold farm)`.
#[derive(Debug, Default, PartialEq)]
struct FarmCalls {
    /// Kind → calls, in the order printed.
    by_kind: Vec<(String, u64)>,
    /// Batched jobs not looked up in the action cache first.
    not_looked_up: u64,
}

impl FarmCalls {
    fn parse(stderr: &str) -> FarmCalls {
        let Some(line) = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("thinlto-backend: farm calls: "))
        else {
            return FarmCalls::default();
        };
        let (calls, rest) = line.split_once("; ").unwrap_or((line, ""));
        let by_kind = calls
            .split(", ")
            .filter_map(|c| {
                let (n, kind) = c.split_once(' ')?;
                Some((kind.to_string(), n.parse().ok()?))
            })
            .collect();
        let not_looked_up = rest
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        FarmCalls {
            by_kind,
            not_looked_up,
        }
    }

    fn of(&self, kind: &str) -> u64 {
        self.by_kind
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

fn backend(tree: &Path, exe: &Path, args: &[String]) -> Result<BackendRun> {
    // Files, not pipes: the run is waited for with wait4 (its rusage).
    let stdout = tempfile::tempfile()?;
    let stderr = tempfile::tempfile()?;
    let sample = crate::bench::measure::measure(
        Command::new(exe)
            .current_dir(tree)
            .args(["--index", "vmlinux.thinlto-index", "-B", "--no-cache"])
            .args(args)
            .stdout(stdout.try_clone()?)
            .stderr(stderr.try_clone()?),
    );
    let read = |mut f: std::fs::File| -> Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0))?;
        f.read_to_end(&mut v)?;
        Ok(v)
    };
    let out = read(stdout)?;
    let err = String::from_utf8_lossy(&read(stderr)?).into_owned();
    let sample = sample.with_context(|| format!("thinlto-backend {args:?} failed:\n{err}"))?;
    let records = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<Vec<JobRecord>, _>>()
        .context("thinlto-backend printed a line that is not a job record")?;
    let summary = err
        .lines()
        .rfind(|l| l.starts_with("thinlto-backend: ") && l.contains(" built"))
        .unwrap_or_default()
        .to_string();
    Ok(BackendRun {
        seconds: sample.wall,
        cpu: sample.cpu,
        records,
        summary,
        calls: FarmCalls::parse(&err),
    })
}

/// One run on a new farm: the client's run, the farm's CPU in it, and
/// whether the natives are kbuild's.
struct FarmRun {
    run: BackendRun,
    cpu: FarmCpu,
    same: bool,
}

impl FarmRun {
    /// The actions the farm executed: each batch once, each lone job.
    fn actions(&self) -> usize {
        let mut batches = std::collections::BTreeSet::new();
        let mut alone = 0;
        for r in &self.run.records {
            if r.status == JobStatus::Built && r.place == Some(Place::Remote) {
                match &r.batch {
                    Some(b) => {
                        batches.insert(b.action.clone());
                    }
                    None => alone += 1,
                }
            }
        }
        batches.len() + alone
    }
}

/// A new farm of `workers` workers of `worker_jobs` leases each, every
/// job run on it with `--remote-batch batch`.
#[allow(clippy::too_many_arguments)]
fn on_a_farm(
    tree: &Path,
    exe: &Path,
    worker_exe: &Path,
    cc: &[String],
    workers: usize,
    worker_jobs: usize,
    batch: &str,
    objects: &[String],
    kbuild: &BTreeMap<String, Vec<u8>>,
) -> Result<FarmRun> {
    let bgd = crate::farm::buildgrid::ensure()?;
    let mut farm = Farm::start(&bgd, worker_exe)?;
    let j = worker_jobs.to_string();
    for i in 0..workers {
        farm.add_worker(&format!("w{}", i + 1), &["-j", &j], &[])?;
    }
    let procs = farm.processes();
    let mut args = cc.to_vec();
    args.extend([
        "--remote-exec".to_string(),
        farm.url.clone(),
        "--remote-batch".to_string(),
        batch.to_string(),
        // The farm calls by kind (and every command, to the stderr file).
        "-v".to_string(),
    ]);
    let before = proc_cpu::sample(&procs);
    let run = backend(tree, exe, &args)?;
    let cpu = proc_cpu::sample(&procs).since(&before);
    drop(farm);
    Ok(FarmRun {
        run,
        cpu,
        same: natives(tree, objects)? == *kbuild,
    })
}

fn natives(tree: &Path, objects: &[String]) -> Result<BTreeMap<String, Vec<u8>>> {
    objects
        .iter()
        .map(|o| {
            let n = thinlto_backend::job::native_of(o);
            let b = std::fs::read(tree.join(&n)).with_context(|| format!("{n}: cannot read"))?;
            Ok((n, b))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The farm's bytes up and down, as the summary line says them (MiB).
fn mib(summary: &str, what: &str) -> f64 {
    summary
        .split(&format!(" MiB {what}"))
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Runs the scenarios; the markdown of the report.
/// `batch`: the batched run's `--remote-batch` (`auto` or a number).
pub fn run(linux: &Path, shown: &str, jobs: usize, workers: usize, batch: &str) -> Result<String> {
    if let Err(e) = batch.parse::<thinlto_backend::config::BatchSize>() {
        bail!("--batch {e}");
    }
    let tree = linux
        .canonicalize()
        .with_context(|| format!("{}: no such tree", linux.display()))?;
    if detect_layout(&tree)? != TreeLayout::Dist {
        bail!(
            "{}: not a tree built in kbuild's distributed mode (CONFIG_LTO_CLANG_THIN_DIST)",
            linux.display()
        );
    }
    let out = crate::target_dir().join("bench/remote-out");
    std::fs::create_dir_all(&out)?;
    let (tc, plan, tree_link) = kernel_settings(&tree, &out, TreeLayout::Dist)?;
    let bins = crate::flow::build_bins()?;
    let exe = bins.path("thinlto-backend");
    let objects: Vec<String> = std::fs::read_to_string(tree.join("vmlinux.thinlto-index"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let kbuild = natives(&tree, &objects)?;
    // How busy the machine was (others share it): said with the figures.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: String = load.split(' ').take(3).collect::<Vec<_>>().join(" ");

    // The tree's own link, lld running every backend in-process.
    let inproc_out = format!("{}/vmlinux.inprocess.o", out.display());
    let argv: Vec<String> = tree_link
        .iter()
        .map(|w| match w.as_str() {
            "vmlinux.a" => plan.fe_archive.clone(),
            "vmlinux.o" => inproc_out.clone(),
            _ => w.clone(),
        })
        .collect();
    eprintln!("bench (remote): the in-process link");
    let t = Instant::now();
    crate::flow::run_tool(
        Command::new(&argv[0]).current_dir(&tree).args(&argv[1..]),
        None,
        None,
    )?;
    let inproc = t.elapsed().as_secs_f64();

    let cc = ["--cc".to_string(), tc.cc.spelled.clone()];
    eprintln!("bench (remote): every backend job here, -j{jobs}");
    let mut args = cc.to_vec();
    args.push(format!("-j{jobs}"));
    let local = backend(&tree, &exe, &args)?;
    let same_local = natives(&tree, &objects)? == kbuild;

    // The workers share this machine's N cores: N compile slots in all.
    let worker_jobs = (jobs / workers.max(1)).max(1);
    let worker_exe = exe.clone();
    let mut farm_runs = Vec::new();
    for batch in ["1", batch] {
        eprintln!(
            "bench (remote): a new farm of {workers} workers (-j {worker_jobs}), every job on it, --remote-batch {batch}"
        );
        farm_runs.push(on_a_farm(
            &tree,
            &exe,
            &worker_exe,
            &cc,
            workers,
            worker_jobs,
            batch,
            &objects,
            &kbuild,
        )?);
    }
    report(&Report {
        shown,
        load: &load,
        objects: &objects,
        jobs,
        workers,
        worker_jobs,
        inproc,
        local: &local,
        same_local,
        farm: &farm_runs,
        batch,
    })
}

struct Report<'a> {
    shown: &'a str,
    /// /proc/loadavg's three figures before the runs.
    load: &'a str,
    objects: &'a [String],
    jobs: usize,
    workers: usize,
    worker_jobs: usize,
    inproc: f64,
    local: &'a BackendRun,
    same_local: bool,
    /// One action a job, then batched.
    farm: &'a [FarmRun],
    /// The batched run's `--remote-batch`.
    batch: &'a str,
}

/// How much of a core one BuildGrid process can use: it is Python, its
/// request handling bound by one interpreter lock.
const SERVER_PROCESS_CORES: f64 = 1.0;

fn report(r: &Report) -> Result<String> {
    let built = |run: &BackendRun, place| {
        run.records
            .iter()
            .filter(|j| j.status == JobStatus::Built && j.place == Some(place))
            .map(|j| j.seconds)
            .collect::<Vec<f64>>()
    };
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    let local_jobs = built(r.local, Place::Local);
    let s: f64 = local_jobs.iter().sum();
    let l = local_jobs.iter().copied().fold(0.0, f64::max);
    let j = r.objects.len() as f64;
    let (one, batched) = (&r.farm[0], &r.farm[1]);
    let ms = |cpu: f64| cpu * 1000.0 / j;

    let mut md = String::new();
    writeln!(md, "Tree: `{}` (Linux 6.12, kbuild's DIST mode, {} backend jobs); {} local jobs; farm: BuildGrid 0.4.4 + PostgreSQL + {} release-built `thinlto-backend worker -j {}` on the same cores (work directories in `{}`), a new farm (empty CAS and action cache) for each farm run; `--no-cache -B` every run. Load average before the runs: {} (every runnable process of the machine counts, idle-priority ones too).\n", r.shown, r.objects.len(), r.jobs, r.workers, r.worker_jobs, thinlto_backend::worker::default_work_parent().display(), r.load)?;
    writeln!(
        md,
        "| run | wall (s) | vs here | actions | natives = kbuild's |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---|")?;
    writeln!(
        md,
        "| in-process link (`ld.lld -r`, ThinLTO inside lld) | {:.2} | {:.2}× | — | — |",
        r.inproc,
        r.inproc / r.local.seconds
    )?;
    writeln!(
        md,
        "| backend here (`-j{}`) | {:.2} | 1.00× | — | {} |",
        r.jobs,
        r.local.seconds,
        yes(r.same_local)
    )?;
    let batched_name = format!("batched (`--remote-batch {}`)", r.batch);
    for (name, f) in [
        ("one action a job (`--remote-batch 1`)", one),
        (batched_name.as_str(), batched),
    ] {
        writeln!(
            md,
            "| farm, {name} | {:.2} | {:.2}× | {} | {} |",
            f.run.seconds,
            f.run.seconds / r.local.seconds,
            f.actions(),
            yes(f.same)
        )?;
    }
    writeln!(md)?;
    for (name, f) in [("one action a job", one), ("batched", batched)] {
        writeln!(
            md,
            "Farm run, {name}: `{}`\n",
            f.run.summary.trim_start_matches("thinlto-backend: ")
        )?;
    }
    writeln!(md, "| per job | one action a job | batched |")?;
    writeln!(md, "|---|---:|---:|")?;
    let latency = |f: &FarmRun| median(built(&f.run, Place::Remote));
    writeln!(
        md,
        "| jobs built on the farm / here instead | {} / {} | {} / {} |",
        built(&one.run, Place::Remote).len(),
        built(&one.run, Place::Local).len(),
        built(&batched.run, Place::Remote).len(),
        built(&batched.run, Place::Local).len()
    )?;
    writeln!(
        md,
        "| remote latency, median (s; the job record's seconds: upload, queue, compile, download) | {:.3} | {:.3} |",
        latency(one),
        latency(batched)
    )?;
    writeln!(
        md,
        "| local job time, median (s) | {:.3} | |",
        median(local_jobs.clone())
    )?;
    let kib = |f: &FarmRun, what| mib(&f.run.summary, what) * 1024.0 / j;
    writeln!(
        md,
        "| bytes up / down (KiB) | {:.1} / {:.1} | {:.1} / {:.1} |\n",
        kib(one, "up"),
        kib(one, "down"),
        kib(batched, "up"),
        kib(batched, "down")
    )?;
    // The calls of the batched run first: it makes every kind the other
    // makes, and the lookups.
    let mut kinds: Vec<&str> = batched
        .run
        .calls
        .by_kind
        .iter()
        .chain(&one.run.calls.by_kind)
        .map(|(k, _)| k.as_str())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    kinds.retain(|k| seen.insert(*k));
    writeln!(md, "The client's calls to the farm per job, by kind (`thinlto-backend -v`; the workers' calls, lease updates among them, are not counted here):\n")?;
    writeln!(md, "| calls per job | one action a job | batched |")?;
    writeln!(md, "|---|---:|---:|")?;
    for k in &kinds {
        writeln!(
            md,
            "| {k} | {:.2} | {:.2} |",
            one.run.calls.of(k) as f64 / j,
            batched.run.calls.of(k) as f64 / j
        )?;
    }
    let all = |c: &FarmCalls| c.by_kind.iter().map(|(_, n)| *n).sum::<u64>() as f64 / j;
    writeln!(
        md,
        "| all | {:.2} | {:.2} |",
        all(&one.run.calls),
        all(&batched.run.calls)
    )?;
    writeln!(
        md,
        "| batched jobs not looked up in the action cache first (a cold farm) | — | {:.2} |\n",
        batched.run.calls.not_looked_up as f64 / j
    )?;
    writeln!(md, "CPU per job (ms; `/proc` of the farm's processes before and after each run, `wait4` of the client; a job compiled here after the farm gave it back counts as the client's):\n")?;
    writeln!(md, "| run | BuildGrid | PostgreSQL | workers | compiles | client | all | BuildGrid per action |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    writeln!(
        md,
        "| here (`-j{}`) | — | — | — | — | {:.1} | {:.1} | — |",
        r.jobs,
        ms(r.local.cpu),
        ms(r.local.cpu)
    )?;
    for (name, f) in [("farm, one action a job", one), ("farm, batched", batched)] {
        let c = &f.cpu;
        let all = c.server + c.postgres + c.workers + c.compiles + f.run.cpu;
        writeln!(
            md,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ms(c.server),
            ms(c.postgres),
            ms(c.workers),
            ms(c.compiles),
            ms(f.run.cpu),
            ms(all),
            c.server * 1000.0 / f.actions().max(1) as f64
        )?;
    }
    writeln!(md)?;
    let target = |ok: bool| if ok { "met" } else { "**missed**" };
    let ratio = batched.run.seconds / r.local.seconds;
    let server_ms = ms(batched.cpu.server);
    writeln!(
        md,
        "Targets (issue 26), batched: farm / here = {ratio:.2}× (≤ 1.15×: {}); BuildGrid CPU per job {server_ms:.1} ms (≤ 8 ms: {}).\n",
        target(ratio <= 1.15),
        target(server_ms <= 8.0)
    )?;

    // The projection, from the batched run.
    let c = &batched.cpu;
    let overhead = ((c.workers + c.compiles - s) / j).max(0.0);
    let actions = batched.actions().max(1) as f64;
    let server_per_action = c.server / actions;
    let jobs_per_action = j / actions;
    let project = |cores: f64| (l + overhead).max((s + j * overhead) / cores);
    writeln!(md, "Projection, `T(C) = max(L + o, (S + J·o)/C)` with S = {s:.1} s (sum of the jobs' times here), L = {l:.2} s (longest), J = {}, o = {overhead:.3} s (the batched run's worker and compile CPU per job less S/J); the server apart, at {:.1} ms of BuildGrid CPU an action ({jobs_per_action:.1} jobs an action), one BuildGrid process using at most {SERVER_PROCESS_CORES} core:\n", r.objects.len(), server_per_action * 1000.0)?;
    writeln!(md, "| remote cores C | backend stage (s) | vs in-process link ({:.1} s) | actions/s needed | BuildGrid processes needed |", r.inproc)?;
    writeln!(md, "|---:|---:|---:|---:|---:|")?;
    for cores in [8.0, 32.0, 128.0] {
        let t = project(cores);
        let rate = actions / t;
        let servers = (rate * server_per_action / SERVER_PROCESS_CORES)
            .ceil()
            .max(1.0);
        writeln!(
            md,
            "| {cores:.0} | {t:.2} | {:.2}× | {rate:.1} | {servers:.0} |",
            t / r.inproc
        )?;
    }
    let t32 = project(32.0) / r.inproc;
    writeln!(
        md,
        "\nTarget (issue 26): ≤ 0.25× the in-process link at 32 remote cores: {t32:.2}× ({}).",
        target(t32 <= 0.25)
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::FarmCalls;

    #[test]
    fn farm_calls_are_read_from_the_verbose_line() {
        let err = "clang-19 -c …\nthinlto-backend: 3 built (…)\nthinlto-backend: farm calls: 1 GetCapabilities, 12 GetActionResult, 3 ByteStream.Write; 40 batched jobs not looked up first (a cold farm)\n";
        let c = FarmCalls::parse(err);
        assert_eq!(c.of("GetActionResult"), 12);
        assert_eq!(c.of("ByteStream.Write"), 3);
        assert_eq!(c.of("Execute"), 0);
        assert_eq!(c.not_looked_up, 40);
        assert_eq!(FarmCalls::parse("no such line"), FarmCalls::default());
    }
}
