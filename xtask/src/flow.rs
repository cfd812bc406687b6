//! `cargo xtask flow`: the whole distributed flow, chained from the built
//! binaries exactly as a user would chain them in a shell, then verified
//! against the make reference flow and the in-process ThinLTO link.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use thinlto_backend::{JobRecord, JobStatus};
use thinlto_index::fsutil::write_atomic;
use thinlto_index::Toolchain;

/// The tool binaries, built by cargo.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command for one of our tools with the toolchain in its
    /// environment, run from the tree root.
    pub fn tool(&self, name: &str, tc: &Toolchain, tree: &Path) -> Command {
        let mut c = Command::new(self.path(name));
        c.current_dir(tree)
            .env("CC", &tc.cc.spelled)
            .env("LD", &tc.ld.spelled)
            .env("AR", &tc.ar.spelled)
            .env_remove("MAKEFLAGS");
        c
    }
}

/// Builds the four tool binaries (release) and returns where they are.
/// `THINLTO_DIST_BIN_DIR` names a directory of already built binaries
/// instead (the integration tests use their own build).
pub fn build_bins() -> Result<Bins> {
    build_bins_in("release")
}

/// [`build_bins`] with a cargo profile: `release` (debug info kept, for
/// profiling the benchmarks' runs) or `dist` (stripped: what `cargo xtask
/// install` puts on PATH).
pub fn build_bins_in(profile: &str) -> Result<Bins> {
    if let Some(dir) = std::env::var_os("THINLTO_DIST_BIN_DIR") {
        return Ok(Bins {
            dir: PathBuf::from(dir),
        });
    }
    // Not --quiet: from a fresh clone this takes minutes, and cargo's own
    // progress tells a newcomer it is working, not hung.
    eprintln!(
        "xtask: building the tools (cargo build --profile {profile}; the first time takes a few minutes)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::workspace_root())
        .args(["build", "--profile", profile])
        .args(["-p", "thinlto-cmdparse", "-p", "thinlto-index"])
        .args(["-p", "thinlto-backend", "-p", "modpost-ir"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build --profile {profile} of the tools failed");
    }
    Ok(Bins {
        dir: crate::target_dir().join(profile),
    })
}

/// One timed step of a run.
#[derive(Debug, Clone)]
pub struct StageTime {
    pub name: String,
    pub seconds: f64,
    pub detail: String,
}

/// One verification.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs `cmd`, with stdin from a file if given, stdout to `stdout_to`
/// (atomically) if given; fails with the command and its stderr.
pub fn run_tool(
    cmd: &mut Command,
    stdin_from: Option<&Path>,
    stdout_to: Option<&Path>,
) -> Result<Vec<u8>> {
    if let Some(p) = stdin_from {
        cmd.stdin(File::open(p).with_context(|| format!("{}: cannot open", p.display()))?);
    } else {
        cmd.stdin(Stdio::null());
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    if let Some(p) = stdout_to {
        write_atomic(p, &out.stdout)?;
    }
    Ok(out.stdout)
}

/// What a run of stages 2–4 (+ modpost) left.
#[derive(Debug, Clone)]
pub struct StagesRun {
    pub stages: Vec<StageTime>,
    /// The backend's JSON records.
    pub jobs: Vec<JobRecord>,
    pub manifest: thinlto_index::Manifest,
    pub vmlinux_o: PathBuf,
}

impl StagesRun {
    pub fn count(&self, status: JobStatus) -> usize {
        self.jobs.iter().filter(|j| j.status == status).count()
    }

    pub fn total_seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }
}

fn timed(
    stages: &mut Vec<StageTime>,
    name: &str,
    f: &mut dyn FnMut() -> Result<String>,
) -> Result<()> {
    let t = Instant::now();
    let detail = f()?;
    stages.push(StageTime {
        name: name.to_string(),
        seconds: t.elapsed().as_secs_f64(),
        detail,
    });
    Ok(())
}

/// Stages 2–4 and modpost with our tools; top-level outputs in `tree/out`.
/// How to link `vmlinux.o` from the final thin archive: kbuild's own
/// command for a kernel, the plain `ld.lld -r` for the sample tree.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    /// `KBUILD_LDFLAGS`, shell text.
    pub ldflags: String,
    /// The whole argv of the `vmlinux.o` link, program first.
    pub vmlinux_o: Vec<String>,
    /// A command run on `vmlinux.o` afterwards (objtool), argv.
    pub post: Option<Vec<String>>,
    /// Relink even when `thinlto-index link` finds its inputs unchanged
    /// (for from-scratch measurements).
    pub force_thin_link: bool,
    /// The front-end archive, relative to the tree: `vmlinux.a` as the
    /// front end leaves it, or kbuild's `built-in-fixup.a` in trees of
    /// Linux >= 7.2's `scripts/Makefile.vmlinux_a`.
    pub fe_archive: String,
    /// Run the backend with `--warm` (the warm compiler).
    pub warm: bool,
    /// Run every backend job, up to date or not (`-B`).
    pub force_backend: bool,
    /// More arguments for `thinlto-backend` (`--cache-dir DIR`, …).
    pub backend_args: Vec<String>,
}

impl LinkPlan {
    /// From scratch: the thin link and every backend job run whatever
    /// the records say (`--force`, `-B`).
    pub fn forced(&self) -> LinkPlan {
        LinkPlan {
            force_thin_link: true,
            force_backend: true,
            ..self.clone()
        }
    }

    /// The backend with plain spawns (`--no-warm`; the warm compiler is
    /// the default).
    pub fn plain_spawns(&self) -> LinkPlan {
        let mut p = self.clone();
        p.warm = false;
        p.backend_args.push("--no-warm".into());
        p
    }

    pub fn warmed(&self) -> LinkPlan {
        LinkPlan {
            warm: true,
            ..self.clone()
        }
    }
}

impl LinkPlan {
    /// `$(LD) $(KBUILD_LDFLAGS) -r -o OUT/vmlinux.o --whole-archive OUT/vmlinux.a …`
    pub fn plain(tc: &Toolchain, ldflags: &str, out: &str) -> LinkPlan {
        let mut argv = vec![tc.ld.spelled.clone()];
        argv.extend(ldflags.split_whitespace().map(str::to_string));
        argv.extend(
            [
                "-r",
                "-o",
                &format!("{out}/vmlinux.o"),
                "--whole-archive",
                &format!("{out}/vmlinux.a"),
                "--no-whole-archive",
                "--start-group",
                "--end-group",
            ]
            .map(str::to_string),
        );
        LinkPlan {
            ldflags: ldflags.to_string(),
            vmlinux_o: argv,
            post: None,
            force_thin_link: false,
            fe_archive: "vmlinux.a".into(),
            warm: false,
            force_backend: false,
            backend_args: Vec::new(),
        }
    }
}

pub fn run_stages(
    bins: &Bins,
    tc: &Toolchain,
    tree: &Path,
    out: &str,
    jobs: usize,
    plan: &LinkPlan,
) -> Result<StagesRun> {
    let ldflags = plan.ldflags.as_str();
    let o = tree.join(out);
    std::fs::create_dir_all(&o)?;
    let mut stages = Vec::new();
    let order = o.join("builtin.order");
    timed(&mut stages, "thinlto-index order", &mut || {
        let text = run_tool(
            bins.tool("thinlto-index", tc, tree)
                .arg("order")
                .arg(&plan.fe_archive),
            None,
            Some(&order),
        )?;
        Ok(format!(
            "{} members",
            text.split(|b| *b == b'\n').count() - 1
        ))
    })?;
    let manifest_path = o.join("manifest.json");
    let index = format!("{out}/vmlinux.thinlto-index");
    timed(&mut stages, "thinlto-index link", &mut || {
        run_tool(
            bins.tool("thinlto-index", tc, tree)
                .arg("link")
                .arg("--ldflags")
                .arg(ldflags)
                .arg("-o")
                .arg(&index)
                .arg("--imports")
                .args(plan.force_thin_link.then_some("--force"))
                .arg(format!("{out}/builtin.order")),
            None,
            Some(&manifest_path),
        )?;
        Ok(String::new())
    })?;
    let manifest: thinlto_index::Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
        .with_context(|| format!("{}: not a manifest", manifest_path.display()))?;
    let bitcode = manifest.bitcode().count();
    stages.last_mut().unwrap().detail = format!(
        "{bitcode} bitcode, {} other",
        manifest.objects.len() - bitcode
    );
    let jobs_path = o.join("backend.jsonl");
    let mut records = Vec::new();
    timed(&mut stages, "thinlto-backend", &mut || {
        let text = run_tool(
            bins.tool("thinlto-backend", tc, tree)
                .arg("-q")
                .args(plan.warm.then_some("--warm"))
                .args(plan.force_backend.then_some("-B"))
                .args(&plan.backend_args)
                .arg(format!("-j{jobs}")),
            Some(&manifest_path),
            Some(&jobs_path),
        )?;
        records = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice)
            .collect::<Result<Vec<JobRecord>, _>>()
            .context("thinlto-backend printed a line that is not a job record")?;
        let built = records
            .iter()
            .filter(|j| j.status == JobStatus::Built)
            .count();
        Ok(format!(
            "{built} built, {} up to date",
            records.len() - built
        ))
    })?;
    timed(&mut stages, "thinlto-backend archive", &mut || {
        run_tool(
            bins.tool("thinlto-backend", tc, tree)
                .arg("archive")
                .arg("--order")
                .arg(format!("{out}/builtin.order"))
                .arg("--index")
                .arg(&index)
                .arg("-o")
                .arg(format!("{out}/vmlinux.a")),
            None,
            None,
        )?;
        Ok(String::new())
    })?;
    let vmlinux_o = o.join("vmlinux.o");
    timed(&mut stages, "ld.lld -r (vmlinux.o)", &mut || {
        let mut ld = Command::new(&plan.vmlinux_o[0]);
        ld.current_dir(tree).args(&plan.vmlinux_o[1..]);
        run_tool(&mut ld, None, None)?;
        if let Some(post) = &plan.post {
            let mut p = Command::new(&post[0]);
            p.current_dir(tree).args(&post[1..]);
            run_tool(&mut p, None, None)?;
        }
        Ok(String::new())
    })?;
    timed(&mut stages, "modpost-ir symvers", &mut || {
        run_tool(
            bins.tool("thinlto-index", tc, tree)
                .arg("order")
                .arg(format!("{out}/vmlinux.a")),
            None,
            Some(&o.join(".vmlinux.objs")),
        )?;
        run_tool(
            bins.tool("modpost-ir", tc, tree)
                .arg("symvers")
                .arg(format!("{out}/vmlinux.o"))
                .arg("--objects")
                .arg(format!("{out}/.vmlinux.objs"))
                .arg("-o")
                .arg(format!("{out}/vmlinux.symvers"))
                .arg("--export-c")
                .arg(format!("{out}/.vmlinux.export.c")),
            None,
            None,
        )?;
        let n = std::fs::read_to_string(o.join("vmlinux.symvers"))?
            .lines()
            .count();
        Ok(format!("{n} exports"))
    })?;
    Ok(StagesRun {
        stages,
        jobs: records,
        manifest,
        vmlinux_o,
    })
}

/// The global symbols a relocatable object defines, and its exports
/// (`__export_symbol_<name>` labels), each sorted.
pub fn symbols(path: &Path) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    use object::{Object, ObjectSymbol};
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // Mapped: a real kernel's vmlinux.o is hundreds of MB, of which only the
    // symbol table is read.
    // SAFETY: read-only map of a file nobody writes during the check.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let obj = object::File::parse(&*map)
        .with_context(|| format!("{}: not an object file", path.display()))?;
    let mut globals = BTreeSet::new();
    let mut exports = BTreeSet::new();
    for sym in obj.symbols() {
        let Ok(name) = sym.name() else { continue };
        if let Some(e) = name.strip_prefix("__export_symbol_") {
            exports.insert(e.to_string());
        }
        if sym.is_global() && sym.is_definition() {
            globals.insert(name.to_string());
        }
    }
    Ok((globals, exports))
}

/// The in-process ThinLTO link of the same objects: `ld.lld -r` over the
/// bitcode archive, lld running the backends itself.
pub fn inprocess_link(
    tc: &Toolchain,
    tree: &Path,
    ldflags: &str,
    jobs: usize,
    output: &str,
) -> Result<()> {
    let mut ld = Command::new(&tc.ld.path);
    ld.current_dir(tree)
        .args(ldflags.split_whitespace())
        .arg(format!("--thinlto-jobs={jobs}"))
        .args(["-r", "-o", output, "--whole-archive", "vmlinux.a"])
        .args(["--no-whole-archive", "--start-group", "--end-group"]);
    run_tool(&mut ld, None, None)?;
    Ok(())
}

/// Copies a front-end tree for the reference flow, leaving out everything
/// stages 2–4 produce, so that make starts from the front end's state.
pub fn copy_fe_tree(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("{}: cannot remove", to.display()))?;
    }
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    let mut stack = vec![to.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                if dir == to && name.starts_with("out") {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    stack.push(path);
                }
            } else if name.ends_with(".thinlto-native.o")
                || name.ends_with(".thinlto-native.o.cmd")
                || name.ends_with(".thinlto.bc")
                || name.ends_with(".imports")
            {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Formats the stage table and the checks.
pub fn table(stages: &[StageTime], checks: &[Check]) -> String {
    let mut s = String::new();
    writeln!(s, "{:<34} {:>9}  detail", "stage", "wall").unwrap();
    for st in stages {
        writeln!(s, "{:<34} {:>7.3} s  {}", st.name, st.seconds, st.detail).unwrap();
    }
    writeln!(s).unwrap();
    writeln!(s, "{:<60} result", "check").unwrap();
    for c in checks {
        writeln!(
            s,
            "{:<60} {}{}",
            c.name,
            if c.ok { "ok" } else { "FAILED" },
            if c.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", c.detail)
            }
        )
        .unwrap();
    }
    s
}

#[derive(Debug, Clone)]
pub struct FlowOptions {
    pub tree: PathBuf,
    pub objects: usize,
    pub jobs: usize,
    pub quiet: bool,
}

#[derive(Debug, Clone)]
pub struct FlowReport {
    pub stages: Vec<StageTime>,
    pub checks: Vec<Check>,
    pub first: StagesRun,
    pub second: StagesRun,
}

impl FlowReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// The golden `vmlinux.symvers` of the sample tree's distributed link
/// (written by the real modpost; see tests/fixtures/golden/README.md).
pub fn golden_symvers() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/golden/distributed/vmlinux.symvers")
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// The whole flow with verification (the README's main job).
pub fn run_flow(opts: &FlowOptions, tc: &Toolchain) -> Result<FlowReport> {
    let bins = build_bins()?;
    let tree = opts.tree.as_path();
    let mut stages = Vec::new();

    let t = Instant::now();
    let fe = crate::sample::fe::build(
        &crate::sample::fe::FeOptions {
            tree: tree.to_path_buf(),
            objects: opts.objects,
            jobs: opts.jobs,
            saved_c_flags: true,
            quiet: opts.quiet,
        },
        tc,
    )?;
    stages.push(StageTime {
        name: "front end (cargo xtask fe)".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("{} objects, {} compiled", fe.objects, fe.compiled),
    });
    let ldflags = crate::sample::tree::Tree::load(tree)?.top.ldflags;

    // The reference runs on a copy, so that its outputs and ours never mix.
    let ref_tree = tree.with_extension("ref");
    copy_fe_tree(tree, &ref_tree)?;
    let t = Instant::now();
    let reference = crate::sample::reference::run(
        &crate::sample::reference::ReferenceOptions {
            tree: ref_tree.clone(),
            jobs: opts.jobs,
            out: "out-ref".into(),
            make_args: vec![],
        },
        tc,
    )?;
    let reference_time = StageTime {
        name: "reference: make -rR (stages 2-4)".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("{} backend jobs", reference.backend_jobs),
    };

    let plan = LinkPlan::plain(tc, &ldflags, "out");
    let first = run_stages(&bins, tc, tree, "out", opts.jobs, &plan)?;
    stages.extend(first.stages.iter().cloned());
    stages.push(StageTime {
        name: "= stages 2-4 + modpost, ours".into(),
        seconds: first.total_seconds(),
        detail: String::new(),
    });
    stages.push(reference_time);
    let t = Instant::now();
    inprocess_link(tc, tree, &ldflags, opts.jobs, "out/vmlinux.inprocess.o")?;
    stages.push(StageTime {
        name: "in-process: ld.lld -r (ThinLTO)".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("--thinlto-jobs={}", opts.jobs),
    });

    let mut checks = Vec::new();
    let mut differing = Vec::new();
    let natives: Vec<String> = first
        .manifest
        .bitcode()
        .map(|o| format!("{}.thinlto-native.o", o.object.trim_end_matches(".o")))
        .collect();
    for n in &natives {
        let ours = std::fs::read(tree.join(n)).with_context(|| format!("{n}: missing"))?;
        let theirs = std::fs::read(ref_tree.join(n))
            .with_context(|| format!("{n}: missing from the reference"))?;
        if ours != theirs {
            differing.push(n.clone());
        }
    }
    checks.push(check(
        format!(
            "native objects byte-identical to the reference ({})",
            natives.len()
        ),
        differing.is_empty() && !natives.is_empty(),
        differing.join(" "),
    ));
    let inproc = tree.join("out/vmlinux.inprocess.o");
    let (g_ours, e_ours) = symbols(&first.vmlinux_o)?;
    let (g_in, e_in) = symbols(&inproc)?;
    let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
        a.symmetric_difference(b)
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    };
    checks.push(check(
        format!(
            "global symbols same as in-process vmlinux.o ({})",
            g_ours.len()
        ),
        g_ours == g_in,
        diff(&g_ours, &g_in),
    ));
    checks.push(check(
        format!("exports same as in-process vmlinux.o ({})", e_ours.len()),
        e_ours == e_in && !e_ours.is_empty(),
        diff(&e_ours, &e_in),
    ));
    let run =
        |o: &Path, exe: &str| crate::sample::reference::run_harness(tc, tree, o, &tree.join(exe));
    let h_ours = run(&first.vmlinux_o, "out/harness-distributed")?;
    let h_in = run(&inproc, "out/harness-inprocess")?;
    let h_ref = crate::sample::reference::run_harness(
        tc,
        &ref_tree,
        &reference.vmlinux_o,
        &ref_tree.join("out-ref/harness"),
    )?;
    let expected_ok =
        opts.objects > 0 || h_ours == crate::sample::reference::expected_harness_output()?;
    checks.push(check(
        "harness output identical (distributed, in-process, reference)",
        h_ours == h_in && h_ours == h_ref && expected_ok,
        if expected_ok {
            ""
        } else {
            "differs from harness/expected.txt"
        },
    ));
    if opts.objects == 0 {
        let golden = golden_symvers();
        let ours = std::fs::read(tree.join("out/vmlinux.symvers"))?;
        let same = std::fs::read(&golden).map(|g| g == ours).unwrap_or(false);
        checks.push(check(
            "vmlinux.symvers equals the golden one (real modpost)",
            same,
            if golden.exists() {
                ""
            } else {
                "no golden file"
            },
        ));
    }
    let second = run_stages(&bins, tc, tree, "out", opts.jobs, &plan)?;
    let up = second.count(JobStatus::UpToDate);
    checks.push(check(
        format!(
            "second run: every backend job up to date ({up}/{})",
            natives.len()
        ),
        up == natives.len() && second.jobs.len() == natives.len(),
        format!("{:.3} s for stages 2-4", second.total_seconds()),
    ));
    // The backend cache (`--cache-dir`): one forced run fills it, the next
    // takes every native from it, with the reference's bytes.
    let cache_dir = tree.join("out/backend-cache");
    if cache_dir.exists() {
        std::fs::remove_dir_all(&cache_dir)?;
    }
    let mut cached = plan.forced();
    cached.backend_args = vec!["--cache-dir".into(), cache_dir.display().to_string()];
    run_stages(&bins, tc, tree, "out", opts.jobs, &cached)?;
    let hits = run_stages(&bins, tc, tree, "out", opts.jobs, &cached)?;
    let from_cache = hits.count(JobStatus::CacheHit);
    let mut differ = Vec::new();
    for n in &natives {
        if std::fs::read(tree.join(n))? != std::fs::read(ref_tree.join(n))? {
            differ.push(n.clone());
        }
    }
    checks.push(check(
        format!(
            "backend cache: a forced rebuild takes every native from it ({from_cache}/{}), reference bytes",
            natives.len()
        ),
        from_cache == natives.len() && differ.is_empty(),
        differ.join(" "),
    ));
    Ok(FlowReport {
        stages,
        checks,
        first,
        second,
    })
}
