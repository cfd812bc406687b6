//! The kbuild-mode benchmark: `make vmlinux` on a kernel tree built in
//! kbuild's distributed ThinLTO mode, several ways, same tree, same `-j`:
//! - stock: kbuild's rules as merged (`scripts/Makefile.thinlto`);
//! - ccache: the stock rules with ccache as the compiler (its masquerading
//!   link, `clang-19 -> ccache`, first on PATH), as many kernel developers
//!   build; Debian's ccache 4.7 caches the front end's bitcode but not a
//!   backend compile;
//! - wrap: the compiler wrapper, no kbuild change (`thinlto-backend`
//!   masquerading as the compiler through a symlink first on PATH: the
//!   same decisions as `CC="thinlto-backend wrap clang-19"`, without a
//!   `$(CC)` change that would rebuild every front-end object);
//! - wrap+ccache: both links on PATH, ccache's first (ccache -> the
//!   wrapper -> clang-19, `CCACHE_COMPILERTYPE=clang`): ccache for the
//!   front end, ours for the backend;
//! - tools: `examples/kbuild/thinlto-tools.patch` and `THINLTO_TOOLS=1`,
//!   also with `THINLTO_BACKEND_FLAGS=--warm` (the warm compiler).
//!
//! Each mode runs the same steps: stages 2–4 from scratch, a no-op, a
//! `touch` of one `.c`, a one-line edit of a leaf file and one of a widely
//! imported file; then the edits are undone. Stage 2–4 time is read off
//! make's own output, from the first line of `scripts/Makefile.vmlinux_a`
//! (`AR built-in-fixup.a` … `GEN vmlinux.a`) to the top level's
//! `LD vmlinux.o`; backend compiles are kbuild's `CC …thinlto-native.o`
//! lines (stock, ccache, tools) or the wrapper's own word (wrap modes,
//! where kbuild echoes CC before the wrapper decides).
//!
//! The ccache modes each get an empty cache of their own, then ccache sees
//! the touched file compiled once before the steps (`make lib/kstrtox.o`
//! after a touch), as it has in a developer's tree: the touch step is what
//! ccache is for, the one-line edits are new text it has never seen. Each
//! step of these modes also says ccache's hits and misses.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::flow;
use thinlto_backend::job::native_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Stock,
    /// The stock rules, ccache as the compiler.
    Ccache,
    Wrap,
    /// ccache, then the wrapper, then the compiler.
    WrapCcache,
    Tools,
    /// `THINLTO_TOOLS=1 THINLTO_BACKEND_FLAGS=--warm`: the warm compiler.
    ToolsWarm,
}

impl Mode {
    /// Stock first: every other mode's outputs are compared with its.
    pub const ALL: [Mode; 6] = [
        Mode::Stock,
        Mode::Ccache,
        Mode::Wrap,
        Mode::WrapCcache,
        Mode::Tools,
        Mode::ToolsWarm,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Stock => "stock",
            Mode::Ccache => "ccache (stock rules)",
            Mode::Wrap => "wrap",
            Mode::WrapCcache => "wrap+ccache",
            Mode::Tools => "THINLTO_TOOLS=1 THINLTO_BACKEND_FLAGS=--no-warm",
            Mode::ToolsWarm => "THINLTO_TOOLS=1 THINLTO_BACKEND_FLAGS=--warm",
        }
    }

    fn wraps(self) -> bool {
        matches!(self, Mode::Wrap | Mode::WrapCcache)
    }

    fn ccache(self) -> bool {
        matches!(self, Mode::Ccache | Mode::WrapCcache)
    }

    fn tools(self) -> bool {
        matches!(self, Mode::Tools | Mode::ToolsWarm)
    }
}

/// One `make vmlinux`.
#[derive(Debug, Clone, Default)]
pub struct MakeRun {
    pub wall: f64,
    /// From the first line of Makefile.vmlinux_a to `LD vmlinux.o` (None:
    /// make printed no such line, nothing in stages 2–4 ran).
    pub stages: Option<f64>,
    pub compiles: BTreeSet<String>,
    /// ccache's hits and misses in this make (ccache modes).
    pub ccache: Option<CcacheCounts>,
}

/// ccache's own counters (`ccache --print-stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcacheCounts {
    pub hits: u64,
    pub misses: u64,
}

impl CcacheCounts {
    /// The counters of the cache at `dir`.
    fn read(dir: &Path) -> Result<CcacheCounts> {
        let out = Command::new("ccache")
            .arg("--print-stats")
            .env("CCACHE_DIR", dir)
            .output()
            .context("cannot run ccache --print-stats")?;
        if !out.status.success() {
            bail!(
                "ccache --print-stats failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(parse_ccache_stats(&String::from_utf8_lossy(&out.stdout)))
    }

    fn since(self, before: CcacheCounts) -> CcacheCounts {
        CcacheCounts {
            hits: self.hits - before.hits,
            misses: self.misses - before.misses,
        }
    }
}

/// `ccache --print-stats`' lines (`name<TAB>value`): a hit is a direct or
/// a preprocessed one.
fn parse_ccache_stats(text: &str) -> CcacheCounts {
    let mut c = CcacheCounts::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('\t') else {
            continue;
        };
        let v: u64 = v.trim().parse().unwrap_or(0);
        match k {
            "direct_cache_hit" | "preprocessed_cache_hit" => c.hits += v,
            "cache_miss" => c.misses += v,
            _ => {}
        }
    }
    c
}

/// The steps, each applied to the tree before its `make vmlinux`.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    action: StepAction,
}

#[derive(Debug, Clone)]
enum StepAction {
    Scratch,
    Nothing,
    Touch(String),
    Append(String, String),
}

pub fn steps() -> Vec<Step> {
    let s = |name: &str, action| Step {
        name: name.into(),
        action,
    };
    vec![
        s("from scratch (stages 2–4)", StepAction::Scratch),
        s("no-op", StepAction::Nothing),
        s(
            "touch lib/kstrtox.c",
            StepAction::Touch("lib/kstrtox.c".into()),
        ),
        s(
            "one-line edit of a leaf (init/calibrate.c)",
            StepAction::Append(
                "init/calibrate.c".into(),
                "int thinlto_bench_leaf(void);\nint thinlto_bench_leaf(void) { return 1; }\n"
                    .into(),
            ),
        ),
        s(
            "one-line edit of a widely imported file (lib/string.c)",
            StepAction::Append(
                "lib/string.c".into(),
                "int thinlto_bench_wide(void);\nint thinlto_bench_wide(void) { return 2; }\n"
                    .into(),
            ),
        ),
    ]
}

/// kbuild's `LLVM=` for the compiler the tree was built with
/// (`clang-19` → `-19`, `/usr/lib/llvm-19/bin/clang` → that directory).
pub fn llvm_var(cc: &str) -> String {
    match cc.rsplit_once('/') {
        Some((dir, "clang")) => format!("{dir}/"),
        _ => match cc.strip_prefix("clang") {
            Some("") => "1".into(),
            Some(suffix) => suffix.to_string(),
            None => "1".into(),
        },
    }
}

/// The compiler the tree's front end ran (`init/.main.o.cmd`) and the
/// make arguments that name its LLVM (`LLVM=-19`).
pub fn make_llvm_args(tree: &Path) -> Result<(String, Vec<String>)> {
    let cc = thinlto_cmdparse::CmdFile::read(&tree.join("init/.main.o.cmd"))?
        .savedcmd
        .and_then(|c| c.split_whitespace().next().map(str::to_string))
        .context("init/.main.o.cmd: no compiler")?;
    let args = vec![format!("LLVM={}", llvm_var(&cc))];
    Ok((cc, args))
}

/// What one `make` printed, each line with its time since the start, and
/// its wall time.
pub struct MakeOutput {
    pub wall: f64,
    pub lines: Vec<(f64, String)>,
}

/// Runs `make -jJOBS ARGS TARGET` in `tree` with `extra` in its
/// environment (none of the caller's make variables), keeping each line's
/// time; a failure is an error with make's last lines.
pub fn run_make(
    tree: &Path,
    target: &str,
    jobs: usize,
    extra: &[(String, String)],
    args: &[String],
) -> Result<MakeOutput> {
    let mut cmd = Command::new("make");
    cmd.current_dir(tree)
        .arg(format!("-j{jobs}"))
        .args(args)
        .arg(target)
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot run make")?;
    let (tx, rx) = mpsc::channel::<(f64, String)>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send((start.elapsed().as_secs_f64(), line));
            }
        })
    })
    .collect();
    drop(tx);
    let lines: Vec<(f64, String)> = rx.iter().collect();
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait()?;
    let wall = start.elapsed().as_secs_f64();
    if !status.success() {
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(20)
            .map(|(_, l)| l.as_str())
            .collect();
        bail!(
            "make {target} failed ({status}) in {}:\n{}",
            tree.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(MakeOutput { wall, lines })
}

/// Runs `make vmlinux`, timing stages 2–4 off its output.
fn make_vmlinux(
    tree: &Path,
    mode: Mode,
    jobs: usize,
    extra: &[(String, String)],
    args: &[String],
) -> Result<MakeRun> {
    let MakeOutput { wall, lines } = run_make(tree, "vmlinux", jobs, extra, args)?;
    let is_stage = |l: &str| {
        let l = l.trim();
        l == "AR      built-in-fixup.a"
            || l == "GEN     builtin.order"
            || l == "LD      vmlinux.thinlto-index"
            || l == "GEN     vmlinux.a"
            || (l.starts_with("CC") && l.ends_with(".thinlto-native.o"))
    };
    let first = lines.iter().find(|(_, l)| is_stage(l)).map(|(t, _)| *t);
    let end = lines
        .iter()
        .find(|(_, l)| l.trim() == "LD      vmlinux.o")
        .or_else(|| lines.iter().rev().find(|(_, l)| is_stage(l)))
        .map(|(t, _)| *t);
    let compiles = lines
        .iter()
        .filter_map(|(_, l)| {
            // Under the wrapper kbuild echoes CC before the wrapper decides.
            if mode.wraps() {
                let rest = l.strip_prefix("thinlto-backend wrap: ")?;
                return rest.split_once(": runs: ").map(|(n, _)| n.to_string());
            }
            let t = l.trim();
            let n = t.strip_prefix("CC")?.trim();
            n.ends_with(".thinlto-native.o").then(|| n.to_string())
        })
        .collect();
    Ok(MakeRun {
        wall,
        stages: first.zip(end).map(|(a, b)| (b - a).max(0.0)),
        compiles,
        ccache: None,
    })
}

/// Removes what stages 2–4 made, so that the next `make vmlinux` redoes
/// them (the front end stays).
fn scratch(tree: &Path) -> Result<()> {
    let index = std::fs::read_to_string(tree.join("vmlinux.thinlto-index")).unwrap_or_default();
    for obj in index.lines().filter(|l| !l.is_empty()) {
        let n = native_of(obj);
        let (dir, base) = match n.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b.to_string()),
            None => (String::new(), n.clone()),
        };
        for f in [
            n.clone(),
            format!("{dir}.{base}.cmd"),
            format!("{dir}.{base}.digests.cmd"),
            format!("{obj}.thinlto.bc"),
            format!("{obj}.imports"),
        ] {
            let _ = std::fs::remove_file(tree.join(f));
        }
    }
    for f in [
        "vmlinux.thinlto-index",
        ".vmlinux.thinlto-index.cmd",
        ".vmlinux.thinlto-index.digests.cmd",
        "vmlinux.a",
        ".vmlinux.a.cmd",
    ] {
        let _ = std::fs::remove_file(tree.join(f));
    }
    Ok(())
}

/// What every mode must end with: natives, vmlinux.symvers, vmlinux.o's
/// global symbols.
#[derive(PartialEq, Eq)]
struct Outputs {
    natives: Vec<(String, Vec<u8>)>,
    symvers: Vec<u8>,
    globals: BTreeSet<String>,
}

fn outputs(tree: &Path) -> Result<Outputs> {
    let index = std::fs::read_to_string(tree.join("vmlinux.thinlto-index"))?;
    let mut natives = Vec::new();
    for obj in index.lines().filter(|l| !l.is_empty()) {
        let n = native_of(obj);
        natives.push((n.clone(), std::fs::read(tree.join(&n))?));
    }
    Ok(Outputs {
        natives,
        symvers: std::fs::read(tree.join("vmlinux.symvers"))?,
        globals: flow::symbols(&tree.join("vmlinux.o"))?.0,
    })
}

/// Where a mode's make finds its programs, and what it is told.
struct ModeSetup {
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// The mode's own ccache (ccache modes).
    ccache_dir: Option<PathBuf>,
}

/// Runs every mode's steps; returns the markdown section.
pub fn run(tree: &Path, display: &str, jobs: usize, quiet: bool) -> Result<String> {
    let tree = tree.canonicalize()?;
    if crate::kernel::detect_layout(&tree)? != crate::kernel::TreeLayout::Dist {
        bail!(
            "{}: not a tree of kbuild's distributed ThinLTO mode (CONFIG_LTO_CLANG_THIN_DIST)",
            tree.display()
        );
    }
    let say = |s: &str| {
        if !quiet {
            eprintln!("bench (kbuild modes): {s}");
        }
    };
    let bins = flow::build_bins()?;
    let (cc, make_args) = make_llvm_args(&tree)?;
    let patch = crate::workspace_root().join("examples/kbuild/thinlto-tools.patch");
    let cc_name = Path::new(&cc).file_name().unwrap().to_owned();
    // One directory of links each: the wrapper's, ccache's.
    let link_dir = |name: &str, to: &Path| -> Result<PathBuf> {
        let dir = crate::target_dir().join("bench").join(name);
        std::fs::create_dir_all(&dir)?;
        let link = dir.join(&cc_name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(to, &link)?;
        Ok(dir)
    };
    let masq = link_dir("masquerade", &bins.path("thinlto-backend"))?;
    let ccache = which("ccache");
    let ccache_links = match &ccache {
        Some(c) => Some(link_dir("ccache-links", c)?),
        None => {
            say("ccache is not on PATH (`cargo xtask setup` installs it): its modes are skipped");
            None
        }
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let steps = steps();
    let mut table: Vec<(Mode, Vec<MakeRun>)> = Vec::new();
    let mut reference: Option<Outputs> = None;
    let mut same = Vec::new();
    for mode in Mode::ALL {
        if mode.ccache() && ccache_links.is_none() {
            continue;
        }
        let mut setup = ModeSetup {
            env: Vec::new(),
            args: make_args.clone(),
            ccache_dir: None,
        };
        let mut front: Vec<String> = Vec::new();
        if mode.ccache() {
            front.push(ccache_links.as_ref().unwrap().display().to_string());
            let dir = crate::target_dir()
                .join("bench/ccache")
                .join(format!("{mode:?}").to_lowercase());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            setup
                .env
                .push(("CCACHE_DIR".into(), dir.display().to_string()));
            setup.ccache_dir = Some(dir);
        }
        if mode == Mode::WrapCcache {
            // ccache names the compiler by what its link points at
            // (`thinlto-backend`: "other") and caches no compile with
            // kbuild's `-Wp,-MMD,…` from an "other" compiler.
            setup
                .env
                .push(("CCACHE_COMPILERTYPE".into(), "clang".into()));
        }
        if mode.wraps() {
            front.push(masq.display().to_string());
            setup.env.push(("THINLTO_WRAP_EXPLAIN".into(), "1".into()));
        }
        if mode.tools() {
            front.push(bins.dir.display().to_string());
            setup.args.push("THINLTO_TOOLS=1".into());
            // The warm compiler is the default; "tools" is plain spawns.
            setup.args.push(if mode == Mode::ToolsWarm {
                "THINLTO_BACKEND_FLAGS=--warm".into()
            } else {
                "THINLTO_BACKEND_FLAGS=--no-warm".into()
            });
            let ok = Command::new("patch")
                .args(["-p1", "-N", "-i"])
                .arg(&patch)
                .current_dir(&tree)
                .status()?;
            if !ok.success() {
                bail!("{}: does not apply to {}", patch.display(), tree.display());
            }
        }
        if !front.is_empty() {
            front.push(path.clone());
            setup.env.push(("PATH".into(), front.join(":")));
        }
        let mut runs = Vec::new();
        let mut originals: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        let result = (|| -> Result<()> {
            if setup.ccache_dir.is_some() {
                prime_ccache(&tree, &steps, jobs, &setup, &say, mode)?;
            }
            for step in &steps {
                say(&format!("{}: {}", mode.name(), step.name));
                match &step.action {
                    StepAction::Scratch => scratch(&tree)?,
                    StepAction::Nothing => {}
                    StepAction::Touch(f) => touch(&tree.join(f))?,
                    StepAction::Append(f, text) => {
                        let p = tree.join(f);
                        let old = std::fs::read(&p)?;
                        let mut new = old.clone();
                        new.extend_from_slice(text.as_bytes());
                        originals.push((p.clone(), old));
                        std::fs::write(&p, new)?;
                    }
                }
                let before = setup
                    .ccache_dir
                    .as_deref()
                    .map(CcacheCounts::read)
                    .transpose()?;
                let mut run = make_vmlinux(&tree, mode, jobs, &setup.env, &setup.args)?;
                if let (Some(dir), Some(before)) = (&setup.ccache_dir, before) {
                    run.ccache = Some(CcacheCounts::read(dir)?.since(before));
                }
                runs.push(run);
            }
            let o = outputs(&tree)?;
            match &reference {
                None => reference = Some(o),
                Some(r) => same.push((mode, *r == o)),
            }
            Ok(())
        })();
        // Back to the tree as it was, whatever happened.
        for (p, old) in originals.iter().rev() {
            std::fs::write(p, old)?;
        }
        say(&format!("{}: undoing the edits", mode.name()));
        let undo = make_vmlinux(&tree, mode, jobs, &setup.env, &setup.args);
        if mode.tools() {
            Command::new("patch")
                .args(["-p1", "-R", "-i"])
                .arg(&patch)
                .current_dir(&tree)
                .status()?;
        }
        result?;
        undo?;
        table.push((mode, runs));
    }
    let text = report(
        display,
        jobs,
        &cc_name.to_string_lossy(),
        &make_args,
        &steps,
        &table,
        &same,
    );
    if same.iter().any(|(_, ok)| !ok) {
        bail!("a mode's outputs differ from the stock build's:\n{text}");
    }
    Ok(text)
}

/// The first program called `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Sets `p`'s modification time to now, as `touch` does.
fn touch(p: &Path) -> Result<()> {
    std::fs::File::options()
        .append(true)
        .open(p)
        .with_context(|| format!("cannot open {}", p.display()))?
        .set_modified(std::time::SystemTime::now())?;
    Ok(())
}

/// Lets a ccache mode's empty cache see each file the steps `touch`
/// compiled once, as a developer's cache has: touch it, `make` its object
/// alone (the front end only), not measured.
fn prime_ccache(
    tree: &Path,
    steps: &[Step],
    jobs: usize,
    setup: &ModeSetup,
    say: &dyn Fn(&str),
    mode: Mode,
) -> Result<()> {
    for step in steps {
        if let StepAction::Touch(f) = &step.action {
            let Some(obj) = f.strip_suffix(".c").map(|b| format!("{b}.o")) else {
                continue;
            };
            say(&format!("{}: ccache sees {f} once ({obj})", mode.name()));
            touch(&tree.join(f))?;
            run_make(tree, &obj, jobs, &setup.env, &setup.args)?;
        }
    }
    Ok(())
}

/// The section: the wrapper and the tools beside stock, then ccache, the
/// wrapper and the two composed beside stock, all from the same run.
fn report(
    display: &str,
    jobs: usize,
    cc: &str,
    make_args: &[String],
    steps: &[Step],
    table: &[(Mode, Vec<MakeRun>)],
    same: &[(Mode, bool)],
) -> String {
    let runs_of = |m: Mode| table.iter().find(|(x, _)| *x == m).map(|(_, r)| r);
    let stock = runs_of(Mode::Stock).expect("stock runs first");
    let mut s = String::new();
    writeln!(
        s,
        "### K7. `make vmlinux` in kbuild's distributed mode: stock rules, ccache, the wrapper, the wrapper with ccache, `THINLTO_TOOLS=1`\n\n\
         Tree: {display} (`CONFIG_LTO_CLANG_THIN_DIST`, {} backend jobs), `make {} -j{jobs} vmlinux`, one run per cell, the modes one after the other on the same tree. \
         \"2–4\" is stages 2–4 as make's own output times them (first line of `scripts/Makefile.vmlinux_a` to `LD vmlinux.o`); \"make\" is the whole `make vmlinux` (front-end descent, vmlinux.o, modpost, the final link); \"jobs\" are backend compiles run.\n",
        stock[0].compiles.len(),
        make_args.join(" ")
    )
    .unwrap();
    let cell = |r: &MakeRun| {
        format!(
            "{} / {:.2} s / {}",
            r.stages
                .map(|x| format!("{x:.2} s"))
                .unwrap_or_else(|| "—".into()),
            r.wall,
            r.compiles.len()
        )
    };
    let ratio = |a: &MakeRun, b: &MakeRun| match (a.stages, b.stages) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.1}×", x / y),
        (Some(_), None) => "∞ (nothing ran)".into(),
        _ => "—".into(),
    };
    // The wrapper and the tools ("tools+warm": THINLTO_BACKEND_FLAGS=--warm).
    let kinds: Vec<(Mode, &str)> = [
        (Mode::Wrap, "wrap"),
        (Mode::Tools, "tools"),
        (Mode::ToolsWarm, "tools+warm"),
    ]
    .into_iter()
    .filter(|(m, _)| runs_of(*m).is_some())
    .collect();
    let mut head = String::from("| step | stock 2–4 / make / jobs |");
    let mut rule = String::from("|---|---|");
    for (_, k) in &kinds {
        write!(head, " {k} 2–4 / make / jobs |").unwrap();
        rule.push_str("---|");
    }
    for (_, k) in &kinds {
        write!(head, " stock÷{k} (2–4) |").unwrap();
        rule.push_str("---|");
    }
    writeln!(s, "{head}\n{rule}").unwrap();
    for (i, step) in steps.iter().enumerate() {
        let mut row = format!("| {} | {} |", step.name, cell(&stock[i]));
        for (m, _) in &kinds {
            write!(row, " {} |", cell(&runs_of(*m).unwrap()[i])).unwrap();
        }
        for (m, _) in &kinds {
            write!(row, " {} |", ratio(&stock[i], &runs_of(*m).unwrap()[i])).unwrap();
        }
        writeln!(s, "{row}").unwrap();
    }
    s.push('\n');
    // ccache alone, the wrapper alone, the two composed: whole `make`.
    match (
        runs_of(Mode::Ccache),
        runs_of(Mode::Wrap),
        runs_of(Mode::WrapCcache),
    ) {
        (Some(alone), Some(wr), Some(both)) => {
            writeln!(
                s,
                "**With ccache** (same run): ccache as the compiler through its masquerading link, stock rules (\"ccache\"); the wrapper alone (\"wrap\"); both links on PATH, ccache's first (\"wrap+ccache\": ccache → the wrapper → {}, `CCACHE_COMPILERTYPE=clang`). Each ccache mode starts with an empty cache of its own that has seen the touched file compiled once (`make lib/kstrtox.o` after a touch, not timed); the one-line edits are text it has never seen. Cells: whole `make vmlinux` / backend jobs / ccache hits+misses.\n",
                cc
            )
            .unwrap();
            writeln!(s, "| step | stock | ccache | wrap | wrap+ccache | ccache÷wrap+ccache (make) | wrap+ccache ≤ ccache |").unwrap();
            writeln!(s, "|---|---|---|---|---|---|---|").unwrap();
            let whole = |r: &MakeRun| {
                let c = r
                    .ccache
                    .map(|c| format!(" / {}+{}", c.hits, c.misses))
                    .unwrap_or_default();
                format!("{:.2} s / {}{c}", r.wall, r.compiles.len())
            };
            for (i, step) in steps.iter().enumerate() {
                let (a, b) = (&alone[i], &both[i]);
                writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.1}× | {} |",
                    step.name,
                    whole(&stock[i]),
                    whole(a),
                    whole(&wr[i]),
                    whole(b),
                    a.wall / b.wall,
                    if b.wall <= a.wall { "yes" } else { "**no**" }
                )
                .unwrap();
            }
            s.push('\n');
        }
        _ => writeln!(
            s,
            "With ccache: not measured (ccache is not on PATH; `cargo xtask setup` installs it).\n"
        )
        .unwrap(),
    }
    for (mode, ok) in same {
        writeln!(
            s,
            "- {}: natives, `vmlinux.symvers` and `vmlinux.o`'s global symbols after the last step identical to the stock build's: {}",
            mode.name(),
            if *ok { "yes" } else { "**NO**" }
        )
        .unwrap();
    }
    if let (Some(wr), Some(to)) = (runs_of(Mode::Wrap), runs_of(Mode::Tools)) {
        for (i, step) in steps.iter().enumerate().skip(2) {
            let (wr, to) = (&wr[i].compiles, &to[i].compiles);
            if wr != to {
                let only_tools: Vec<&String> = to.difference(wr).take(5).collect();
                writeln!(
                    s,
                    "- {}: wrap ran {} jobs, tools {}; tools only (first 5): {:?}",
                    step.name,
                    wr.len(),
                    to.len(),
                    only_tools
                )
                .unwrap();
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_variable_from_the_compiler() {
        assert_eq!(super::llvm_var("clang-19"), "-19");
        assert_eq!(super::llvm_var("clang"), "1");
        assert_eq!(
            super::llvm_var("/usr/lib/llvm-19/bin/clang"),
            "/usr/lib/llvm-19/bin/"
        );
    }

    #[test]
    fn ccache_hits_are_direct_and_preprocessed() {
        let c = super::parse_ccache_stats(
            "autoconf_test\t0\ncache_miss\t3\ndirect_cache_hit\t2\npreprocessed_cache_hit\t1\nstats_zeroed_timestamp\t0\n",
        );
        assert_eq!(c, super::CcacheCounts { hits: 3, misses: 3 });
    }
}
