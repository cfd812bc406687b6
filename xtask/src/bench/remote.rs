//! `cargo xtask bench --remote-only --kernel LINUX`: remote execution
//! (`thinlto-backend --remote-exec`) on a kernel tree built in kbuild's
//! DIST mode. In one session, on the same cores: the tree's own
//! in-process link (lld runs the backends), every backend job from
//! scratch here (`-j N`), and every job from scratch on a local farm
//! (`cargo xtask farm`: BuildGrid, PostgreSQL, N workers of one job each)
//! with an empty CAS. Every native of both runs is compared with kbuild's.
//!
//! From the measured figures, a projection of the backend stage on a
//! farm of C remote cores: with S the sum of the jobs' times here, L the
//! longest, J jobs, and o the farm's cost per job in worker time (the
//! farm run's wall times its W workers, per job, less a job's time here:
//! `o = T_farm·W/J − S/J`; the queueing a job sees is not in it),
//! `T(C) = max(L + o, (S + J·o) / C)`:
//! the compiles and their overhead spread over C cores, no job shorter
//! than the longest plus its overhead. It assumes the server keeps up:
//! the report gives the rate it managed here (on the same cores as the
//! workers) and the rate each projected row needs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use thinlto_backend::{JobRecord, JobStatus};

use crate::farm::Farm;
use crate::kernel::{detect_layout, kernel_settings, TreeLayout};

/// One backend run: its wall time, job records and summary line.
struct BackendRun {
    seconds: f64,
    records: Vec<JobRecord>,
    summary: String,
}

fn backend(tree: &Path, exe: &Path, args: &[String]) -> Result<BackendRun> {
    let t = Instant::now();
    let out = Command::new(exe)
        .current_dir(tree)
        .args(["--index", "vmlinux.thinlto-index", "-B", "--no-cache"])
        .args(args)
        .output()
        .context("running thinlto-backend")?;
    let seconds = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("thinlto-backend {args:?} failed:\n{err}");
    }
    let records = out
        .stdout
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
        seconds,
        records,
        summary,
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
pub fn run(linux: &Path, shown: &str, jobs: usize, workers: usize) -> Result<String> {
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

    eprintln!("bench (remote): a farm of {workers} workers, then every job on it");
    let bgd = crate::farm::buildgrid::ensure()?;
    let mut farm = Farm::start(&bgd, &exe)?;
    for i in 0..workers {
        farm.add_worker(&format!("w{}", i + 1), &["-j", "1"], &[])?;
    }
    let mut args = cc.to_vec();
    args.extend(["--remote-exec".to_string(), farm.url.clone()]);
    let remote = backend(&tree, &exe, &args)?;
    drop(farm);
    let same_remote = natives(&tree, &objects)? == kbuild;

    let built = |r: &BackendRun, place| {
        r.records
            .iter()
            .filter(|j| j.status == JobStatus::Built && j.place == Some(place))
            .map(|j| j.seconds)
            .collect::<Vec<f64>>()
    };
    use thinlto_backend::engine::scheduler::Place;
    let local_jobs = built(&local, Place::Local);
    let remote_jobs = built(&remote, Place::Remote);
    let s: f64 = local_jobs.iter().sum();
    let l = local_jobs.iter().copied().fold(0.0, f64::max);
    let j = objects.len() as f64;
    let overhead = (remote.seconds * workers as f64 / j - s / j).max(0.0);
    let project = |c: f64| (l + overhead).max((s + j * overhead) / c);
    // The inputs every action names (object, shard, imports), against
    // what went up: how much the CAS's deduplication saves.
    let mut named = 0u64;
    for o in &objects {
        let shard = format!("{o}.thinlto.bc");
        let mut files = vec![o.clone(), shard.clone()];
        // The modules the shard names: the object itself and its imports.
        if let Ok(modules) = thinlto_index::shard::module_paths_of(&tree.join(&shard)) {
            files.extend(modules.into_iter().filter(|m| m != o));
        }
        for f in files {
            named += std::fs::metadata(tree.join(&f))
                .map(|m| m.len())
                .unwrap_or(0);
        }
    }
    let up = mib(&remote.summary, "up");
    let down = mib(&remote.summary, "down");

    let mut md = String::new();
    writeln!(md, "Tree: `{shown}` (Linux 6.12, kbuild's DIST mode, {} backend jobs); {jobs} local jobs; farm: BuildGrid 0.4.4 + PostgreSQL + {workers} `thinlto-backend worker -j 1` on the same cores, empty CAS and action cache; `--no-cache -B` both ways.\n", objects.len())?;
    writeln!(md, "| run | wall (s) | vs here | natives = kbuild's |")?;
    writeln!(md, "|---|---:|---:|---|")?;
    writeln!(
        md,
        "| in-process link (`ld.lld -r`, ThinLTO inside lld) | {inproc:.2} | {:.2}× | — |",
        inproc / local.seconds
    )?;
    writeln!(
        md,
        "| backend here (`-j{jobs}`) | {:.2} | 1.00× | {} |",
        local.seconds,
        if same_local { "yes" } else { "**no**" }
    )?;
    writeln!(
        md,
        "| backend on the farm (`--remote-exec`) | {:.2} | {:.2}× | {} |\n",
        remote.seconds,
        remote.seconds / local.seconds,
        if same_remote { "yes" } else { "**no**" }
    )?;
    writeln!(
        md,
        "Farm run: `{}`\n",
        remote.summary.trim_start_matches("thinlto-backend: ")
    )?;
    writeln!(md, "| per job | value |")?;
    writeln!(md, "|---|---:|")?;
    writeln!(
        md,
        "| jobs built on the farm / here instead | {} / {} |",
        remote_jobs.len(),
        built(&remote, Place::Local).len()
    )?;
    writeln!(
        md,
        "| local job time, median (s) | {:.3} |",
        median(local_jobs.clone())
    )?;
    writeln!(md, "| remote latency (job record's seconds: upload, queue, compile, download), median (s) | {:.3} |", median(remote_jobs.clone()))?;
    writeln!(
        md,
        "| the farm's cost per job in worker time, o = T_farm·W/J − S/J (s) | {overhead:.3} |"
    )?;
    writeln!(
        md,
        "| jobs the server finished per second here (on the workers' cores) | {:.1} |",
        j / remote.seconds
    )?;
    writeln!(
        md,
        "| bytes up / down per job (KiB) | {:.1} / {:.1} |",
        up * 1024.0 / j,
        down * 1024.0 / j
    )?;
    writeln!(
        md,
        "| inputs the actions name / uploaded (MiB) | {:.1} / {up:.1} (dedup {:.1}×) |\n",
        named as f64 / (1u64 << 20) as f64,
        named as f64 / (1u64 << 20) as f64 / up
    )?;
    writeln!(md, "Projection, `T(C) = max(L + o, (S + J·o)/C)` with S = {s:.1} s (sum of the jobs' times here), L = {l:.2} s (longest), o = {overhead:.3} s, J = {}; it holds while the server finishes J/T(C) jobs a second:\n", objects.len())?;
    writeln!(md, "| remote cores C | backend stage (s) | vs in-process link ({inproc:.1} s) | server rate needed (jobs/s) |")?;
    writeln!(md, "|---:|---:|---:|---:|")?;
    for c in [8.0, 32.0, 128.0] {
        let t = project(c);
        writeln!(
            md,
            "| {c:.0} | {t:.2} | {:.2}× | {:.0} |",
            t / inproc,
            j / t
        )?;
    }
    Ok(md)
}
