//! `cargo xtask bench`: ours against the make reference (and in-process
//! ThinLTO) in the same run, alternating, on a generated tree and optionally
//! a real kernel tree. Figures are ratios of medians measured in one run;
//! `--write` puts them in BENCHMARKS.md.

pub mod cache;
pub mod dtlto;
pub mod kbuild_modes;
pub mod measure;
pub mod modules;
pub mod proc_cpu;
pub mod remote;
pub mod sandbox;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use thinlto_index::Toolchain;

use crate::bench::measure::{measure, measure_sh, stats, Sample};
use crate::flow::{self, Bins, LinkPlan};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub objects: usize,
    pub jobs: usize,
    /// Runs of the cheap scenarios.
    pub runs: usize,
    /// Runs of the scenarios that compile everything with real clang.
    pub heavy_runs: usize,
    pub kernel: Option<PathBuf>,
    pub quiet: bool,
    /// Where the benchmark trees go (`target/bench`).
    pub workdir: PathBuf,
}

/// One scenario's measurements.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub title: String,
    pub ours_label: String,
    pub ref_label: String,
    pub ours: Vec<Sample>,
    pub reference: Vec<Sample>,
    pub notes: Vec<String>,
    /// Ours timed only as a whole (wall clock): its stages run as tool
    /// processes started one after another by xtask itself, which no one
    /// `wait4` covers, so its CPU and peak RSS cells are left empty.
    pub ours_wall_only: bool,
    /// The same for the reference row (both sides are stage-2–4 runs of
    /// our tools, as in the cache scenarios).
    pub reference_wall_only: bool,
}

impl ScenarioResult {
    pub(crate) fn new(title: &str, ours_label: &str, ref_label: &str) -> ScenarioResult {
        ScenarioResult {
            title: title.into(),
            ours_label: ours_label.into(),
            ref_label: ref_label.into(),
            ours: vec![],
            reference: vec![],
            notes: vec![],
            ours_wall_only: false,
            reference_wall_only: false,
        }
    }

    pub fn ratio(&self) -> f64 {
        let o = stats(&self.ours.iter().map(|s| s.wall).collect::<Vec<_>>()).1;
        let r = stats(&self.reference.iter().map(|s| s.wall).collect::<Vec<_>>()).1;
        o / r
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        s.push_str("| | runs | wall min | wall median | wall max | CPU median | peak RSS |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (label, v, wall_only) in [
            (&self.ours_label, &self.ours, self.ours_wall_only),
            (&self.ref_label, &self.reference, self.reference_wall_only),
        ] {
            let (min, med, max) = stats(&v.iter().map(|x| x.wall).collect::<Vec<_>>());
            let cpu = stats(&v.iter().map(|x| x.cpu).collect::<Vec<_>>()).1;
            let rss = v.iter().map(|x| x.rss_kib).max().unwrap_or(0);
            // Not measured is an empty cell with a footnote, never a 0.
            let (cpu, rss) = if wall_only {
                (" ¹".to_string(), " ¹".to_string())
            } else {
                (
                    format!(" {cpu:.3} s"),
                    format!(" {:.1} MiB", rss as f64 / 1024.0),
                )
            };
            writeln!(
                s,
                "| {label} | {} | {min:.3} s | {med:.3} s | {max:.3} s |{cpu} |{rss} |",
                v.len(),
            )
            .unwrap();
        }
        writeln!(
            s,
            "\n**median wall ratio ours/reference: {:.3}** ({:.1}× {})\n",
            self.ratio(),
            if self.ratio() < 1.0 {
                1.0 / self.ratio()
            } else {
                self.ratio()
            },
            if self.ratio() < 1.0 {
                "faster"
            } else {
                "slower"
            }
        )
        .unwrap();
        for n in &self.notes {
            writeln!(s, "- {n}").unwrap();
        }
        if self.ours_wall_only || self.reference_wall_only {
            writeln!(s, "- ¹ {WALL_ONLY_NOTE}").unwrap();
        }
        if !self.notes.is_empty() || self.ours_wall_only || self.reference_wall_only {
            s.push('\n');
        }
        s
    }
}

/// The footnote of an empty CPU / peak RSS cell.
const WALL_ONLY_NOTE: &str = "not measured: ours is timed as a whole, its stages being tool processes that xtask starts one after another (no single process tree for `wait4` to measure)";

/// The stub compiler of the scheduling benchmark: it is not a compiler. It
/// only writes a few bytes to its `-o` file, so that what is measured is
/// the scheduling around the jobs.
const STUB_CC: &str = r#"/* thinlto-stub-clang: a STUB, not a compiler (scheduling benchmarks only). */
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++) {
		if (strcmp(argv[i], "-o") == 0) {
			FILE *f = fopen(argv[i + 1], "w");
			if (!f || fputs("stub object\n", f) < 0)
				return 1;
			return fclose(f) != 0;
		}
	}
	return 2;
}
"#;

fn build_stub(tc: &Toolchain, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let src = dir.join("thinlto-stub-clang.c");
    let exe = dir.join("thinlto-stub-clang");
    std::fs::write(&src, STUB_CC)?;
    let st = Command::new(&tc.cc.path)
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg(format!("--ld-path={}", tc.ld.path.display()))
        .status()?;
    if !st.success() {
        bail!("building the stub compiler failed");
    }
    Ok(exe)
}

/// Removes every backend output so the next backend run starts from
/// scratch: natives and their records.
pub(crate) fn clean_natives(tree: &Path) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else if name.ends_with(".thinlto-native.o") || name.ends_with(".thinlto-native.o.cmd")
            {
                std::fs::remove_file(e.path())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

struct Ctx<'a> {
    bins: Bins,
    tc: &'a Toolchain,
    tree: PathBuf,
    ref_tree: PathBuf,
    jobs: usize,
    plan: LinkPlan,
    objects: usize,
    quiet: bool,
}

impl Ctx<'_> {
    fn say(&self, what: &str) {
        if !self.quiet {
            eprintln!("bench: {what}");
        }
    }

    /// The backend with plain spawns (the warm compiler is the default).
    fn backend(&self, cc: &str) -> Command {
        self.backend_with(cc, &["--no-warm"])
    }

    /// The backend jobs of the current index.
    fn objects_in_index(&self) -> Result<usize> {
        Ok(
            std::fs::read_to_string(self.tree.join("out/vmlinux.thinlto-index"))?
                .lines()
                .filter(|l| !l.is_empty())
                .count(),
        )
    }

    fn backend_with(&self, cc: &str, extra: &[&str]) -> Command {
        let mut c = self.bins.tool("thinlto-backend", self.tc, &self.tree);
        c.env("CC", cc)
            .arg("--cc")
            .arg(cc)
            .args(extra)
            .arg("-q")
            .arg(format!("-j{}", self.jobs))
            .arg("--index")
            .arg("out/vmlinux.thinlto-index")
            .stdout(Stdio::null());
        c
    }

    fn make_backend(&self, cc: &str) -> Command {
        let mut c = Command::new("make");
        c.current_dir(&self.ref_tree)
            .arg("-rR")
            .arg(format!("-j{}", self.jobs))
            .arg("-f")
            .arg(crate::workspace_root().join("tests/reference/Makefile.backend"))
            .arg("INDEX=out-ref/vmlinux.thinlto-index")
            .arg(format!("CC={cc}"))
            .env_remove("MAKEFLAGS")
            .stdout(Stdio::null());
        c
    }

    fn make_all(&self) -> Command {
        let tree = crate::sample::tree::Tree::load(&self.ref_tree).expect("tree");
        let mut c = crate::sample::reference::command(
            &crate::sample::reference::ReferenceOptions {
                tree: self.ref_tree.clone(),
                jobs: self.jobs,
                out: "out-ref".into(),
                make_args: vec![],
            },
            self.tc,
            &tree,
        );
        c.stdout(Stdio::null());
        c
    }

    /// Stages 2–4 with our binaries, measured step by step.
    fn ours_stages(&self, force_thin_link: bool) -> Result<(Sample, usize)> {
        self.ours_stages_with(force_thin_link, false)
    }

    fn ours_stages_with(&self, force_thin_link: bool, warm: bool) -> Result<(Sample, usize)> {
        let tree = &self.tree;
        let b = &self.bins;
        let mut total = measure(
            b.tool("thinlto-index", self.tc, tree)
                .arg("order")
                .arg("vmlinux.a")
                .stdout(std::fs::File::create(tree.join("out/builtin.order"))?),
        )?;
        total = total.then(measure(
            b.tool("thinlto-index", self.tc, tree)
                .args(["link", "--ldflags", &self.plan.ldflags])
                .args(["-o", "out/vmlinux.thinlto-index", "--imports"])
                .args(force_thin_link.then_some("--force"))
                .arg("out/builtin.order")
                .stdout(std::fs::File::create(tree.join("out/manifest.json"))?),
        )?);
        let jobs_file = tree.join("out/backend.jsonl");
        total = total.then(measure(
            b.tool("thinlto-backend", self.tc, tree)
                .arg("-q")
                .arg(if warm { "--warm" } else { "--no-warm" })
                .arg(format!("-j{}", self.jobs))
                .stdin(std::fs::File::open(tree.join("out/manifest.json"))?)
                .stdout(std::fs::File::create(&jobs_file)?),
        )?);
        total = total.then(measure(
            b.tool("thinlto-backend", self.tc, tree)
                .args(["archive", "--order", "out/builtin.order"])
                .args([
                    "--index",
                    "out/vmlinux.thinlto-index",
                    "-o",
                    "out/vmlinux.a",
                ]),
        )?);
        total = total.then(measure(
            Command::new(&self.plan.vmlinux_o[0])
                .current_dir(tree)
                .args(&self.plan.vmlinux_o[1..]),
        )?);
        let mut built = 0;
        for l in std::fs::read_to_string(&jobs_file)?.lines() {
            let r: thinlto_backend::JobRecord = serde_json::from_str(l)
                .with_context(|| format!("{}: not a job record: {l}", jobs_file.display()))?;
            built += usize::from(r.status == thinlto_backend::JobStatus::Built);
        }
        Ok((total, built))
    }

    fn reference_backend_jobs(&self, log_from: Command) -> Result<(Sample, usize)> {
        let mut c = log_from;
        let log = self.ref_tree.join("out-ref/bench.log");
        c.stdout(std::fs::File::create(&log)?);
        let s = measure(&mut c)?;
        let n = std::fs::read_to_string(&log)?
            .lines()
            .filter(|l| l.contains(".thinlto-native.o") && l.trim_start().starts_with("CC"))
            .count();
        Ok((s, n))
    }
}

fn edit_source(path: &Path, run: usize) -> Result<()> {
    let mut text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let stem = path
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .replace('-', "_");
    text.push_str(&format!(
        "\nint bench_edit_{stem}_{run}(int x);\nint bench_edit_{stem}_{run}(int x)\n{{\n\treturn x * {};\n}}\n",
        run + 7
    ));
    thinlto_index::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Runs every scenario on a generated tree; returns the results in order.
pub fn run_generated(opts: &BenchOptions, tc: &Toolchain) -> Result<Vec<ScenarioResult>> {
    let bins = flow::build_bins()?;
    let base = opts.workdir.clone();
    let tree = base.join(format!("gen-{}", opts.objects));
    eprintln!(
        "bench: front end of a {}-object tree in {}",
        opts.objects,
        tree.display()
    );
    // A fresh tree every time: incremental edits of earlier runs must not
    // carry over.
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    crate::sample::fe::build(
        &crate::sample::fe::FeOptions {
            tree: tree.clone(),
            objects: opts.objects,
            jobs: opts.jobs,
            saved_c_flags: true,
            quiet: true,
        },
        tc,
    )?;
    let ldflags = crate::sample::tree::Tree::load(&tree)?.top.ldflags;
    let plan = LinkPlan::plain(tc, &ldflags, "out");
    let ref_tree = tree.with_extension("ref");
    flow::copy_fe_tree(&tree, &ref_tree)?;
    let cx = Ctx {
        bins,
        tc,
        tree: tree.clone(),
        ref_tree,
        jobs: opts.jobs,
        plan,
        objects: opts.objects,
        quiet: opts.quiet,
    };
    // Warm-up: both flows once from scratch (also leaves their outputs).
    cx.say("warm-up: both flows once");
    std::fs::create_dir_all(tree.join("out"))?;
    cx.ours_stages(true)?;
    measure(&mut cx.make_all())?;

    let mut results = vec![
        scenario_cmdparse(&cx, opts.runs)?,
        scenario_order_scan(&cx, opts.runs)?,
        scenario_thin_link(&cx, opts.runs)?,
        scenario_backend_scratch(&cx, opts.heavy_runs)?,
        scenario_backend_warm(&cx, opts.heavy_runs)?,
    ];
    results.extend(scenario_stub(&cx, opts.runs, &base)?);
    results.push(scenario_noop(&cx, opts.runs)?);
    results.extend(scenario_incremental(&cx, opts.heavy_runs)?);
    results.push(scenario_inprocess(&cx, opts.heavy_runs, false)?);
    results.push(scenario_inprocess(&cx, opts.heavy_runs, true)?);
    Ok(results)
}

fn all_cmd_files(tree: &Path) -> Result<Vec<String>> {
    let order = std::fs::read_to_string(tree.join("out/builtin.order"))?;
    Ok(order
        .lines()
        .map(|o| match o.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.{n}.cmd"),
            None => format!(".{o}.cmd"),
        })
        .collect())
}

fn scenario_cmdparse(cx: &Ctx, runs: usize) -> Result<ScenarioResult> {
    cx.say("1. .cmd parsing");
    let files = all_cmd_files(&cx.tree)?;
    let list = cx.tree.join("out/cmd-files.txt");
    std::fs::write(&list, files.join("\n") + "\n")?;
    let bytes: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(cx.tree.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let mut r = ScenarioResult::new(
        &format!(
            "1. `.cmd` parsing: {} files, {:.1} MB",
            files.len(),
            bytes as f64 / 1e6
        ),
        "ours: `thinlto-cmdparse - < list` (JSON Lines)",
        "reference: one `sed -n '/saved_c_flags_/s/.*:= //p'` per file",
    );
    for _ in 0..runs {
        r.ours.push(measure(
            cx.bins
                .tool("thinlto-cmdparse", cx.tc, &cx.tree)
                .arg("-")
                .stdin(std::fs::File::open(&list)?)
                .stdout(Stdio::null()),
        )?);
        r.reference.push(measure_sh(
            &cx.tree,
            "xargs -n1 sed -n '/saved_c_flags_/s/.*:= //p' < out/cmd-files.txt",
        )?);
    }
    let med = stats(&r.ours.iter().map(|s| s.wall).collect::<Vec<_>>()).1;
    r.notes.push(format!(
        "ours parses {:.0} MB/s of `.cmd` text (whole files, every field)",
        bytes as f64 / 1e6 / med
    ));
    Ok(r)
}

fn scenario_order_scan(cx: &Ctx, runs: usize) -> Result<ScenarioResult> {
    cx.say("2. archive order + classification");
    let ar = &cx.tc.ar.spelled;
    let mut r = ScenarioResult::new(
        "2. Archive order + classification",
        "ours: `thinlto-index order vmlinux.a | thinlto-index scan -`",
        &format!("reference: `{ar} t vmlinux.a` + `od -N4` per member"),
    );
    let idx = cx.bins.path("thinlto-index");
    for _ in 0..runs {
        r.ours.push(measure_sh(
            &cx.tree,
            &format!("{0} order vmlinux.a | {0} scan -", idx.display()),
        )?);
        r.reference.push(measure_sh(
            &cx.tree,
            &format!("{ar} t vmlinux.a | xargs -n1 od -An -tx1 -N4"),
        )?);
    }
    Ok(r)
}

fn scenario_thin_link(cx: &Ctx, runs: usize) -> Result<ScenarioResult> {
    cx.say("2b. thin link overhead");
    let mut r = ScenarioResult::new(
        "2b. Thin link: `thinlto-index link` (lld + checks + manifest) vs bare `ld.lld`",
        "ours: `thinlto-index link --force --imports`",
        "reference: `ld.lld -r --thinlto-index-only`",
    );
    for _ in 0..runs {
        r.ours.push(measure(
            cx.bins
                .tool("thinlto-index", cx.tc, &cx.tree)
                .args(["link", "--force", "--ldflags", &cx.plan.ldflags])
                .args(["-o", "out/vmlinux.thinlto-index", "--imports"])
                .arg("out/builtin.order")
                .stdout(Stdio::null()),
        )?);
        let mut ld = Command::new(&cx.tc.ld.path);
        ld.current_dir(&cx.tree)
            .args(cx.plan.ldflags.split_whitespace())
            .args(["-r", "--thinlto-index-only=out/bare.thinlto-index"])
            .arg("--thinlto-emit-imports-files")
            .arg("@out/builtin.order");
        r.reference.push(measure(&mut ld)?);
    }
    let o = stats(&r.ours.iter().map(|s| s.wall).collect::<Vec<_>>()).1;
    let b = stats(&r.reference.iter().map(|s| s.wall).collect::<Vec<_>>()).1;
    r.notes.push(format!(
        "overhead of `link` over lld: {:.1} ms (median)",
        (o - b) * 1000.0
    ));
    Ok(r)
}

fn scenario_backend_scratch(cx: &Ctx, runs: usize) -> Result<ScenarioResult> {
    cx.say("3. backend from scratch (real clang)");
    let cc = &cx.tc.cc.spelled;
    let mut r = ScenarioResult::new(
        &format!("3. Backend from scratch, real clang, -j{}", cx.jobs),
        &format!("ours: `thinlto-backend -j{}`", cx.jobs),
        &format!("reference: `make -rR -j{} -f Makefile.backend`", cx.jobs),
    );
    for _ in 0..runs {
        clean_natives(&cx.tree)?;
        r.ours.push(measure(&mut cx.backend(cc))?);
        clean_natives(&cx.ref_tree)?;
        r.reference.push(measure(&mut cx.make_backend(cc))?);
    }
    Ok(r)
}

/// CPU seconds per job of a backend run's median sample.
fn cpu_per_job_ms(samples: &[Sample], jobs: usize) -> f64 {
    stats(&samples.iter().map(|s| s.cpu).collect::<Vec<_>>()).1 / jobs.max(1) as f64 * 1000.0
}

fn scenario_backend_warm(cx: &Ctx, runs: usize) -> Result<ScenarioResult> {
    cx.say("3w. backend from scratch, --warm vs plain spawns (real clang)");
    let cc = &cx.tc.cc.spelled;
    let mut r = ScenarioResult::new(
        &format!(
            "3w. Backend from scratch, real clang, -j{}: the warm compiler vs plain spawns",
            cx.jobs
        ),
        &format!("ours: `thinlto-backend --warm -j{}`", cx.jobs),
        &format!("plain: `thinlto-backend -j{}`", cx.jobs),
    );
    for _ in 0..runs {
        clean_natives(&cx.tree)?;
        r.ours.push(measure(&mut cx.backend_with(cc, &["--warm"]))?);
        clean_natives(&cx.tree)?;
        r.reference.push(measure(&mut cx.backend(cc))?);
    }
    let jobs = cx.objects_in_index()?;
    r.notes.push(format!(
        "backend CPU per job ({jobs} jobs): warm {:.1} ms, plain {:.1} ms; peak RSS is the largest single process (a compile; with --warm the zygote's children)",
        cpu_per_job_ms(&r.ours, jobs),
        cpu_per_job_ms(&r.reference, jobs)
    ));
    Ok(r)
}

fn scenario_stub(cx: &Ctx, runs: usize, base: &Path) -> Result<Vec<ScenarioResult>> {
    cx.say("4. scheduling overhead with the stub compiler");
    // Named like a clang so that --warm serves it (it serves only clang).
    let stub = build_stub(cx.tc, &base.join("stub"))?;
    let stub_s = stub.to_string_lossy().into_owned();
    let mut r = ScenarioResult::new(
        &format!("4. Scheduling overhead: STUB compiler (`thinlto-stub-clang`, writes its -o file only), -j{}", cx.jobs),
        "ours: `thinlto-backend` with CC=stub",
        "reference: `make -f Makefile.backend` with CC=stub",
    );
    for _ in 0..runs {
        clean_natives(&cx.tree)?;
        r.ours.push(measure(&mut cx.backend(&stub_s))?);
        clean_natives(&cx.ref_tree)?;
        r.reference.push(measure(&mut cx.make_backend(&stub_s))?);
    }
    r.notes.push(
        "peak RSS here is the largest process of the run: with the stub, that is the scheduler itself (our thinlto-backend, or make)".into(),
    );
    let mut w = ScenarioResult::new(
        &format!(
            "4w. Scheduling overhead: the STUB served by the warm compiler (`--warm`), -j{}",
            cx.jobs
        ),
        "ours: `thinlto-backend --warm` with CC=stub",
        "reference: `make -f Makefile.backend` with CC=stub",
    );
    for _ in 0..runs {
        clean_natives(&cx.tree)?;
        w.ours
            .push(measure(&mut cx.backend_with(&stub_s, &["--warm"]))?);
        clean_natives(&cx.ref_tree)?;
        w.reference.push(measure(&mut cx.make_backend(&stub_s))?);
    }
    w.notes.push(
        "the stub is named `thinlto-stub-clang` because --warm serves only compilers named clang (an executable of another name, such as ccache, gets plain spawns)".into(),
    );
    // Put real natives back for the scenarios that follow.
    clean_natives(&cx.tree)?;
    clean_natives(&cx.ref_tree)?;
    measure(&mut cx.backend(&cx.tc.cc.spelled))?;
    measure(&mut cx.make_all())?;
    Ok(vec![r, w])
}

fn scenario_noop(cx: &Ctx, runs: usize) -> Result<ScenarioResult> {
    cx.say("5. no-op re-run of stages 2-4");
    let mut r = ScenarioResult::new(
        "5. No-op re-run of stages 2–4 (everything up to date; ours skips the unchanged thin link)",
        "ours: order + link + backend + archive + ld.lld -r",
        "reference: `make -rR -f Makefile` (if_changed everywhere)",
    );
    let mut built = 0;
    for _ in 0..runs {
        let (s, b) = cx.ours_stages(false)?;
        built += b;
        r.ours.push(s);
        r.reference.push(measure(&mut cx.make_all())?);
    }
    r.notes
        .push(format!("backend jobs run by ours over all runs: {built}"));
    // The backend alone, for the issue's no-op target.
    let mut alone = Vec::new();
    for _ in 0..runs {
        alone.push(measure(&mut cx.backend(&cx.tc.cc.spelled))?.wall);
    }
    r.notes.push(format!(
        "`thinlto-backend` alone, all jobs up to date: median {:.3} s",
        stats(&alone).1
    ));
    Ok(r)
}

fn scenario_incremental(cx: &Ctx, runs: usize) -> Result<Vec<ScenarioResult>> {
    let mut out = Vec::new();
    for (label, file) in [
        ("a leaf `.c` edit", "gen/d00/leaf_0001.c"),
        ("an edit of the most imported module", "gen/core/core_0.c"),
    ] {
        cx.say(&format!("6. incremental: {label}"));
        let mut r = ScenarioResult::new(
            &format!("6. Incremental: {label} (`{file}`), front end, then stages 2–4"),
            "ours: stages 2–4",
            "reference: `make -rR -f Makefile`",
        );
        let (mut ours_jobs, mut ref_jobs) = (Vec::new(), Vec::new());
        for run in 0..runs {
            for t in [&cx.tree, &cx.ref_tree] {
                edit_source(&t.join(file), run)?;
                crate::sample::fe::build(
                    &crate::sample::fe::FeOptions {
                        tree: t.clone(),
                        objects: cx.objects,
                        jobs: cx.jobs,
                        saved_c_flags: true,
                        quiet: true,
                    },
                    cx.tc,
                )?;
            }
            let (s, b) = cx.ours_stages(false)?;
            r.ours.push(s);
            ours_jobs.push(b);
            let (s, n) = cx.reference_backend_jobs(cx.make_all())?;
            r.reference.push(s);
            ref_jobs.push(n);
        }
        r.notes.push(format!(
            "backend jobs run per edit: ours {ours_jobs:?}, reference {ref_jobs:?}"
        ));
        out.push(r);
    }
    Ok(out)
}

fn scenario_inprocess(cx: &Ctx, runs: usize, warm: bool) -> Result<ScenarioResult> {
    let (n, w) = if warm { ("7w", " --warm") } else { ("7", "") };
    cx.say(&format!("{n}. stages 2-4 vs in-process ThinLTO"));
    let mut r = ScenarioResult::new(
        &format!(
            "{n}. Stages 2–4 from scratch{w} vs in-process ThinLTO (`ld.lld -r --thinlto-jobs={}`)",
            cx.jobs
        ),
        &format!("ours: order + link + backend{w} + archive + ld.lld -r"),
        "in-process: `ld.lld -r` over the bitcode",
    );
    for _ in 0..runs {
        clean_natives(&cx.tree)?;
        r.ours.push(cx.ours_stages_with(true, warm)?.0);
        let mut ld = Command::new(&cx.tc.ld.path);
        ld.current_dir(&cx.tree)
            .args(cx.plan.ldflags.split_whitespace())
            .arg(format!("--thinlto-jobs={}", cx.jobs))
            .args([
                "-r",
                "-o",
                "out/vmlinux.inprocess.o",
                "--whole-archive",
                "vmlinux.a",
            ])
            .args(["--no-whole-archive"]);
        r.reference.push(measure(&mut ld)?);
    }
    r.notes.push("peak RSS: ours is the largest single process (a clang backend job); in-process is lld with all backends inside".into());
    Ok(r)
}

/// The machine and toolchain, for the report's header.
pub fn machine_header(tc: &Toolchain, opts: &BenchOptions, command: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let mut s = String::new();
    writeln!(s, "- machine: {} cores, {cpu}", crate::default_jobs()).unwrap();
    for t in tc.tools() {
        writeln!(
            s,
            "- {}: `{}` ({})",
            t.role.var(),
            t.spelled,
            t.version.as_deref().unwrap_or("?")
        )
        .unwrap();
    }
    writeln!(s, "- make: {}", first_line("make", &["--version"])).unwrap();
    writeln!(
        s,
        "- tree: generated, {} objects; -j{}; {} runs ({} for the scenarios that compile everything with clang), alternating ours and reference after a warm-up",
        opts.objects, opts.jobs, opts.runs, opts.heavy_runs
    )
    .unwrap();
    writeln!(s, "- command: `{command}`").unwrap();
    s
}

fn first_line(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Scenarios on a real kernel tree built by kbuild with ThinLTO (see
/// `cargo xtask kernel`): the parts that need no second copy of the tree.
/// Heavy scenarios run `heavy_runs` times; ours and the reference
/// alternate, each from scratch.
/// A path as a report shows it: under `$HOME` spelled `~/…` (what the
/// user most likely typed, and no machine's local layout in a committed
/// file); otherwise as given, never canonicalized.
pub fn report_path(p: &Path, home: Option<&Path>) -> String {
    match home.and_then(|h| p.strip_prefix(h).ok()) {
        Some(rest) if !rest.as_os_str().is_empty() => format!("~/{}", rest.display()),
        Some(_) => "~".into(),
        None => p.display().to_string(),
    }
}

/// The command line of this run for a report: the `--kernel` value (and
/// every other argument) with [`report_path`]'s `~` spelling.
pub fn report_command(args: &[String], home: Option<&Path>) -> String {
    args.iter()
        .map(|a| {
            if let Some(v) = a.strip_prefix("--kernel=") {
                format!("--kernel={}", report_path(Path::new(v), home))
            } else if a.starts_with('/') {
                report_path(Path::new(a), home)
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run_kernel(opts: &BenchOptions, linux: &Path) -> Result<Vec<ScenarioResult>> {
    let tree = linux
        .canonicalize()
        .with_context(|| format!("{}: no such kernel tree", linux.display()))?;
    let out = opts.workdir.join("kernel-out");
    let kref = opts.workdir.join("kernel-ref");
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&kref)?;
    let out = out.canonicalize()?;
    let kref = kref.canonicalize()?;
    let layout = crate::kernel::detect_layout(&tree)?;
    let (tc, plan, inprocess) = crate::kernel::kernel_settings(&tree, &out, layout)?;
    let fe = plan.fe_archive.clone();
    let bins = flow::build_bins()?;
    let out_s = out.to_string_lossy().into_owned();
    let kref_s = kref.to_string_lossy().into_owned();
    let say = |s: &str| {
        if !opts.quiet {
            eprintln!("bench (kernel): {s}");
        }
    };
    say("warm-up: stages 2-4 once");
    clean_natives(&tree)?;
    flow::run_stages(&bins, &tc, &tree, &out_s, opts.jobs, &plan)?;
    let make_all = || {
        let mut c = Command::new("make");
        c.current_dir(&tree)
            .arg("-rR")
            .arg(format!("-j{}", opts.jobs))
            .arg("-f")
            .arg(crate::workspace_root().join("tests/reference/Makefile"))
            .args(tc.make_vars())
            .arg(format!("KBUILD_LDFLAGS={}", plan.ldflags))
            .arg(format!("BUILTIN={fe}"))
            .arg(format!("O={kref_s}"))
            .env_remove("MAKEFLAGS")
            .stdout(Stdio::null());
        c
    };
    let mut results = Vec::new();

    say("1. .cmd parsing");
    let order = std::fs::read_to_string(out.join("builtin.order"))?;
    let cmds: Vec<String> = order
        .lines()
        .map(|o| match o.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.{n}.cmd"),
            None => format!(".{o}.cmd"),
        })
        .collect();
    let list = out.join("cmd-files.txt");
    std::fs::write(&list, cmds.join("\n") + "\n")?;
    let bytes: u64 = cmds
        .iter()
        .map(|f| {
            std::fs::metadata(tree.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let mut r = ScenarioResult::new(
        &format!(
            "K1. `.cmd` parsing: {} files, {:.1} MB",
            cmds.len(),
            bytes as f64 / 1e6
        ),
        "ours: `thinlto-cmdparse - < list`",
        "reference: one `sed` per file",
    );
    for _ in 0..opts.runs {
        r.ours.push(measure(
            bins.tool("thinlto-cmdparse", &tc, &tree)
                .arg("-")
                .stdin(std::fs::File::open(&list)?)
                .stdout(Stdio::null()),
        )?);
        r.reference.push(measure_sh(
            &tree,
            &format!(
                "xargs -n1 sed -n '/saved_c_flags_/s/.*:= //p' < {}",
                list.display()
            ),
        )?);
    }
    let med = stats(&r.ours.iter().map(|s| s.wall).collect::<Vec<_>>()).1;
    r.notes.push(format!(
        "ours parses {:.0} MB/s of `.cmd` text",
        bytes as f64 / 1e6 / med
    ));
    results.push(r);

    say("2. order + scan");
    let ar = &tc.ar.spelled;
    let idx = bins.path("thinlto-index");
    let mut r = ScenarioResult::new(
        "K2. Archive order + classification",
        "ours: `thinlto-index order | thinlto-index scan -`",
        &format!("reference: `{ar} t` + `od -N4` per member"),
    );
    for _ in 0..opts.runs {
        r.ours.push(measure_sh(
            &tree,
            &format!("{0} order {fe} | {0} scan -", idx.display()),
        )?);
        r.reference.push(measure_sh(
            &tree,
            &format!("{ar} t {fe} | xargs -n1 od -An -tx1 -N4"),
        )?);
    }
    results.push(r);

    say("3. stages 2-4 from scratch, ours vs make");
    let mut r = ScenarioResult::new(
        &format!("K3. Stages 2–4 from scratch, real clang, -j{}", opts.jobs),
        "ours: order + link + backend + archive + vmlinux.o link (+ objtool)",
        "reference: `make -rR -f tests/reference/Makefile`",
    );
    let mut inproc = ScenarioResult::new(
        "K4. Stages 2–4 from scratch (ours, as K3) vs the tree's in-process `vmlinux.o` link",
        "ours: order + link + backend + archive + vmlinux.o link (+ objtool)",
        "in-process: the tree's own `ld.lld -r` (ThinLTO inside lld)",
    );
    let mut inproc_warm = ScenarioResult::new(
        "K4w. Stages 2–4 from scratch with the warm compiler (`thinlto-backend --warm`) vs the tree's in-process `vmlinux.o` link",
        "ours: order + link + backend --warm + archive + vmlinux.o link (+ objtool)",
        "in-process: the tree's own `ld.lld -r` (ThinLTO inside lld), as in K4",
    );
    // Stages 2-4 from scratch, timed as a whole, modpost left out.
    let stages_from_scratch = |plan: &LinkPlan| -> Result<Sample> {
        clean_natives(&tree)?;
        let t = std::time::Instant::now();
        let run = flow::run_stages(&bins, &tc, &tree, &out_s, opts.jobs, plan)?;
        let modpost = run
            .stages
            .iter()
            .find(|s| s.name.starts_with("modpost"))
            .map(|s| s.seconds)
            .unwrap_or(0.0);
        Ok(Sample {
            wall: t.elapsed().as_secs_f64() - modpost,
            cpu: 0.0,
            rss_kib: 0,
        })
    };
    for _ in 0..opts.heavy_runs {
        let s = stages_from_scratch(&plan.forced().plain_spawns())?;
        r.ours.push(s);
        inproc.ours.push(s);
        inproc_warm
            .ours
            .push(stages_from_scratch(&plan.forced().warmed())?);
        clean_natives(&tree)?;
        std::fs::remove_dir_all(&kref)?;
        std::fs::create_dir_all(&kref)?;
        r.reference.push(measure(&mut make_all())?);
        let argv: Vec<String> = inprocess
            .iter()
            .map(|w| match w.as_str() {
                "vmlinux.o" => format!("{out_s}/vmlinux.inprocess.o"),
                // A DIST tree's vmlinux.a holds natives: link the bitcode.
                "vmlinux.a" => fe.clone(),
                _ => w.clone(),
            })
            .collect();
        let lld = measure(Command::new(&argv[0]).current_dir(&tree).args(&argv[1..]))?;
        inproc.reference.push(lld);
        inproc_warm.reference.push(lld);
    }
    r.ours_wall_only = true;
    inproc.ours_wall_only = true;
    inproc_warm.ours_wall_only = true;
    results.push(r);
    results.push(inproc);
    results.push(inproc_warm);

    say("8. backend alone, --warm vs plain spawns");
    let index = format!("{out_s}/vmlinux.thinlto-index");
    let njobs = std::fs::read_to_string(&index)?.lines().count();
    let mut k8 = ScenarioResult::new(
        &format!(
            "K8. Backend alone from scratch (`-B`, {njobs} jobs), -j{}: the warm compiler vs plain spawns",
            opts.jobs
        ),
        "ours: `thinlto-backend --warm -B`",
        "plain: `thinlto-backend -B`",
    );
    let backend = |warm: bool| {
        let mut c = bins.tool("thinlto-backend", &tc, &tree);
        c.args(["-q", "-B"])
            .arg(if warm { "--warm" } else { "--no-warm" })
            .arg(format!("-j{}", opts.jobs))
            .args(["--index", &index])
            .stdout(Stdio::null());
        c
    };
    for _ in 0..opts.heavy_runs {
        k8.ours.push(measure(&mut backend(true))?);
        k8.reference.push(measure(&mut backend(false))?);
    }
    k8.notes.push(format!(
        "backend CPU per job: warm {:.1} ms, plain {:.1} ms; peak RSS is the largest single process (a compile); in-process lld's (K4) is all backends in one process",
        cpu_per_job_ms(&k8.ours, njobs),
        cpu_per_job_ms(&k8.reference, njobs)
    ));
    results.push(k8);

    say("5. no-op");
    let mut r = ScenarioResult::new(
        "K5. No-op re-run of stages 2–4, each right after its own full build",
        "ours: order + link + backend + archive + vmlinux.o link",
        "reference: `make -rR -f tests/reference/Makefile`",
    );
    for _ in 0..opts.runs.min(2) {
        // make's no-op, right after make built everything itself.
        r.reference.push(measure(&mut make_all())?);
    }
    clean_natives(&tree)?;
    flow::run_stages(&bins, &tc, &tree, &out_s, opts.jobs, &plan)?;
    for _ in 0..opts.runs.min(2) {
        let t = std::time::Instant::now();
        flow::run_stages(&bins, &tc, &tree, &out_s, opts.jobs, &plan)?;
        r.ours.push(Sample {
            wall: t.elapsed().as_secs_f64(),
            cpu: 0.0,
            rss_kib: 0,
        });
    }
    r.ours_wall_only = true;
    results.push(r);

    let modpost = tree.join("scripts/mod/modpost");
    if modpost.exists() {
        say("6. modpost");
        let mut r = ScenarioResult::new(
            "K6. vmlinux.symvers + .vmlinux.export.c from the tree's own vmlinux.o",
            "ours: `modpost-ir symvers vmlinux.o --objects .vmlinux.objs`",
            "reference: the tree's `scripts/mod/modpost -M -m`",
        );
        for _ in 0..opts.runs {
            r.ours.push(measure(
                bins.tool("modpost-ir", &tc, &tree)
                    .args(["symvers", "vmlinux.o", "--objects", ".vmlinux.objs", "-o"])
                    .arg(out.join("k.symvers"))
                    .arg("--export-c")
                    .arg(out.join("k.export.c")),
            )?);
            r.reference.push(measure(
                Command::new(&modpost)
                    .current_dir(&tree)
                    .args(["-M", "-m", "-o"])
                    .arg(out.join("real.symvers"))
                    .arg("vmlinux.o")
                    .stderr(Stdio::null()),
            )?);
        }
        let same =
            std::fs::read(out.join("k.symvers"))? == std::fs::read(tree.join("vmlinux.symvers"))?;
        r.notes.push(format!(
            "modpost-ir's vmlinux.symvers byte-identical to the tree's: {same}"
        ));
        results.push(r);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(wall: f64, cpu: f64, rss_kib: u64) -> Sample {
        Sample { wall, cpu, rss_kib }
    }

    #[test]
    fn unmeasured_cells_are_empty_with_a_footnote() {
        let mut r = ScenarioResult::new("K3. x", "ours", "reference");
        r.ours.push(sample(2.0, 0.0, 0));
        r.reference.push(sample(4.0, 3.5, 2048));
        r.ours_wall_only = true;
        let md = r.markdown();
        assert!(
            md.contains("| ours | 1 | 2.000 s | 2.000 s | 2.000 s | ¹ | ¹ |"),
            "{md}"
        );
        assert!(
            md.contains("| reference | 1 | 4.000 s | 4.000 s | 4.000 s | 3.500 s | 2.0 MiB |"),
            "{md}"
        );
        assert!(!md.contains("0.000 s") && !md.contains("0.0 MiB"), "{md}");
        assert!(md.contains(&format!("- ¹ {WALL_ONLY_NOTE}")), "{md}");
        r.ours_wall_only = false;
        assert!(!r.markdown().contains('¹'));
        r.reference_wall_only = true;
        let md = r.markdown();
        assert!(
            md.contains("| reference | 1 | 4.000 s | 4.000 s | 4.000 s | ¹ | ¹ |"),
            "{md}"
        );
        assert!(md.contains(&format!("- ¹ {WALL_ONLY_NOTE}")), "{md}");
    }

    #[test]
    fn reports_name_no_local_path() {
        let home = Path::new("/home/dev");
        assert_eq!(
            report_path(Path::new("/home/dev/linux"), Some(home)),
            "~/linux"
        );
        assert_eq!(report_path(Path::new("/home/dev"), Some(home)), "~");
        assert_eq!(
            report_path(Path::new("/home/devx/l"), Some(home)),
            "/home/devx/l"
        );
        assert_eq!(report_path(Path::new("../linux"), Some(home)), "../linux");
        let args: Vec<String> = ["bench", "--write", "--kernel", "/home/dev/src/linux"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            report_command(&args, Some(home)),
            "bench --write --kernel ~/src/linux"
        );
        let args = vec!["bench".to_string(), "--kernel=/home/dev/linux".to_string()];
        assert_eq!(report_command(&args, Some(home)), "bench --kernel=~/linux");
        assert_eq!(
            report_command(&args, None),
            "bench --kernel=/home/dev/linux"
        );
    }
}
