//! The modules benchmark: `make modules` on a kernel tree of kbuild's
//! distributed ThinLTO mode with loadable modules, three ways, same tree,
//! same `-j`, one after the other:
//! - stock: the tree as kbuild builds it (modules linked with in-process
//!   ThinLTO: `cmd_ld_single_m`, `cmd_ld_multi_m`);
//! - plain: `examples/kbuild/modules-dist.patch` (modules in distributed
//!   mode with plain make rules);
//! - tools: the same with `THINLTO_TOOLS=1` (our tools under make).
//!
//! Each way runs the same steps: the modules from scratch (every module
//! part's object and what was made of it removed), a no-op, a `touch` of
//! one part of the composite module with the most parts. The tools way
//! runs with an empty backend cache of its own (`--cache-dir`, filled by
//! its from-scratch step) and has one more step: the modules from scratch
//! again, front ends included, with that cache warm. The patches are
//! applied for their way and taken off after it. Backend jobs are counted
//! from make's output: the `CC … .thinlto-native.o` lines of distributed
//! mode (the tools' `HIT` lines are cache hits, not jobs); a composite
//! module's bitcode parts when in-process mode relinks it (`LD [M]`); a
//! single-object module's compile (`CC [M]` of the module) where its
//! backend runs inside that compile (in-process mode and plain rules).
//!
//! Every way's modules are checked against the stock way's (`Module.symvers`,
//! `modules.order`, each `.ko`'s exports, undefined symbols, modinfo and
//! `__versions`: [`crate::kernel::modules_cmp`]), on a copy of what the
//! stock way built.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::kbuild_modes::{make_llvm_args, run_make};
use crate::flow;
use crate::kernel::modules_cmp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Stock,
    Plain,
    Tools,
}

impl Way {
    const ALL: [Way; 3] = [Way::Stock, Way::Plain, Way::Tools];

    fn name(self) -> &'static str {
        match self {
            Way::Stock => "stock (in-process)",
            Way::Plain => "modules-dist.patch",
            Way::Tools => "modules-dist.patch + THINLTO_TOOLS=1",
        }
    }

    fn patches(self) -> &'static [&'static str] {
        match self {
            Way::Stock => &[],
            Way::Plain => &["examples/kbuild/modules-dist.patch"],
            // Not thinlto-tools.patch: vmlinux is not this bench's business
            // (with it, the first run would redo vmlinux's backends under
            // the tools, which have no records of this tree yet).
            Way::Tools => &["examples/kbuild/modules-dist.patch"],
        }
    }
}

/// A module of `modules.order` and its parts (its `.mod` file).
#[derive(Debug, Clone)]
struct Module {
    object: String,
    parts: Vec<String>,
}

impl Module {
    fn is_single(&self) -> bool {
        self.parts.len() == 1 && self.parts[0] == self.object
    }
}

fn modules(tree: &Path) -> Result<Vec<Module>> {
    crate::kernel::modorder::read_modules_order(tree)?
        .into_iter()
        .map(|ko| {
            let object = ko.with_extension("o").to_string_lossy().into_owned();
            let mod_file = tree.join(ko.with_extension("mod"));
            let parts = std::fs::read_to_string(&mod_file)
                .with_context(|| format!("{}: cannot read", mod_file.display()))?
                .split_whitespace()
                .map(str::to_string)
                .collect();
            Ok(Module { object, parts })
        })
        .collect()
}

fn is_bitcode(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && (&head == b"BC\xC0\xDE" || head == [0xDE, 0xC0, 0x17, 0x0B])
}

/// Removes every module part's object and what was made of it (natives,
/// shards, indexes, the module objects and `.ko` files), so that the next
/// `make modules` compiles the modules from scratch in every way (the
/// tools' content checks find no native to keep).
fn scratch(tree: &Path, mods: &[Module]) {
    let strip = |o: &str| o.strip_suffix(".o").unwrap_or(o).to_string();
    for m in mods {
        let base = strip(&m.object);
        for f in [
            format!("{base}.o"),
            format!("{base}.ko"),
            format!("{base}.mod.o"),
            format!("{base}.lto.o"),
            format!("{base}.lto.o.thinlto.bc"),
            format!("{base}.lto.o.imports"),
            format!("{base}.thinlto-index"),
            format!("{base}.thinlto-native.o"),
            // A single-object module's native: left, the tools found it
            // up to date by content and skipped its job (M2 of the eighth
            // and ninth sessions: 498 jobs instead of 876).
            format!("{base}.lto.thinlto-native.o"),
        ] {
            let _ = std::fs::remove_file(tree.join(f));
        }
        for p in &m.parts {
            let base = strip(p);
            for f in [
                format!("{base}.o"),
                format!("{base}.o.thinlto.bc"),
                format!("{base}.o.imports"),
                format!("{base}.thinlto-native.o"),
            ] {
                let _ = std::fs::remove_file(tree.join(f));
            }
        }
    }
}

/// One `make modules`: wall time, backend jobs and backend cache hits.
struct Run {
    wall: f64,
    jobs: usize,
    hits: usize,
}

fn make_modules(
    tree: &Path,
    mods: &[Module],
    jobs: usize,
    env: &[(String, String)],
    args: &[String],
    way: Way,
) -> Result<Run> {
    let tools = way == Way::Tools;
    let out = run_make(tree, "modules", jobs, env, args)?;
    let word = |l: &str, tag: &str| -> Option<String> {
        l.trim().strip_prefix(tag).map(|r| r.trim().to_string())
    };
    let compiled: BTreeSet<String> = out
        .lines
        .iter()
        .filter_map(|(_, l)| word(l, "CC [M]"))
        .collect();
    let relinked: BTreeSet<String> = out
        .lines
        .iter()
        .filter_map(|(_, l)| word(l, "LD [M]"))
        .collect();
    let natives: BTreeSet<String> = out
        .lines
        .iter()
        .filter_map(|(_, l)| word(l, "CC"))
        .filter(|n| n.ends_with(".thinlto-native.o"))
        .collect();
    let hits = out
        .lines
        .iter()
        .filter_map(|(_, l)| word(l, "HIT"))
        .filter(|n| n.ends_with(".thinlto-native.o"))
        .count();
    let mut backend = natives.len();
    for m in mods {
        if m.is_single() {
            // With the tools, its backend is a job of thinlto-backend,
            // counted by its CC line above (foo.lto.thinlto-native.o);
            // otherwise it runs inside the module's own compile.
            if !tools {
                backend += compiled.contains(&m.object) as usize;
            }
        } else if way == Way::Stock && relinked.contains(&m.object) {
            // In-process: lld ran a backend per bitcode part. (Not
            // "no native's CC line": a run of the tools' whose every job
            // was a cache hit has none either.)
            backend += m.parts.iter().filter(|p| is_bitcode(&tree.join(p))).count();
        }
    }
    Ok(Run {
        wall: out.wall,
        jobs: backend,
        hits,
    })
}

fn patch(tree: &Path, patch: &Path, reverse: bool) -> Result<()> {
    let ok = Command::new("patch")
        .args(["-p1", "-s", if reverse { "-R" } else { "-N" }, "-i"])
        .arg(patch)
        .current_dir(tree)
        .status()?;
    if !ok.success() {
        bail!(
            "{}: does not {} {}",
            patch.display(),
            if reverse { "come off" } else { "apply to" },
            tree.display()
        );
    }
    Ok(())
}

/// Runs every way's steps on `tree`; returns the markdown section.
pub fn run(tree: &Path, display: &str, jobs: usize) -> Result<String> {
    let tree = tree.canonicalize()?;
    // A tree with modules has Module.symvers where a vmlinux-only build
    // has vmlinux.symvers, so kernel::detect_layout does not apply.
    for f in ["vmlinux.thinlto-index", "Module.symvers"] {
        if !tree.join(f).exists() {
            bail!(
                "{}: no {f}: not a tree of kbuild's distributed ThinLTO mode (CONFIG_LTO_CLANG_THIN_DIST) with its modules built (make LLVM=… all)",
                tree.display()
            );
        }
    }
    let mods = modules(&tree)?;
    let composite = mods
        .iter()
        .filter(|m| !m.is_single())
        .max_by_key(|m| m.parts.len())
        .context("modules.order has no composite module")?;
    let touched = composite
        .parts
        .iter()
        .map(|p| p.replace(".o", ".c"))
        .find(|c| tree.join(c).exists())
        .context("the composite module has no .c part")?;
    let bins = flow::build_bins()?;
    let (_, make_args) = make_llvm_args(&tree)?;
    let path = std::env::var("PATH").unwrap_or_default();
    let scratch_step = "modules from scratch".to_string();
    let steps = [
        scratch_step.clone(),
        "no-op".to_string(),
        format!("touch {touched}"),
        "modules from scratch again, warm backend cache (tools only)".to_string(),
    ];
    let work = crate::target_dir().join("bench/modules");
    let cache_dir = work.join("cache");
    let stock_copy = work.join("stock");
    let mut table: Vec<(Way, Vec<Option<Run>>)> = Vec::new();
    let mut checks: Vec<(Way, Vec<flow::Check>)> = Vec::new();
    for way in Way::ALL {
        let patches: Vec<PathBuf> = way
            .patches()
            .iter()
            .map(|p| crate::workspace_root().join(p))
            .collect();
        let tools = way == Way::Tools;
        let mut env = Vec::new();
        let mut args = make_args.clone();
        if tools {
            env.push(("PATH".to_string(), format!("{}:{path}", bins.dir.display())));
            // An empty cache of the bench's own: the from-scratch step
            // fills it, the last step reads it.
            let _ = std::fs::remove_dir_all(&cache_dir);
            std::fs::create_dir_all(&cache_dir)?;
            env.push((
                "THINLTO_BACKEND_FLAGS".to_string(),
                format!("--cache-dir={}", cache_dir.display()),
            ));
            args.push("THINLTO_TOOLS=1".into());
        }
        let mut applied = Vec::new();
        let result = (|| -> Result<Vec<Option<Run>>> {
            for p in &patches {
                patch(&tree, p, false)?;
                applied.push(p.clone());
            }
            let mut runs = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                if i == 3 && !tools {
                    runs.push(None);
                    continue;
                }
                eprintln!("bench (modules): {}: {step}", way.name());
                match i {
                    0 | 3 => scratch(&tree, &mods),
                    1 => {}
                    _ => std::fs::File::options()
                        .append(true)
                        .open(tree.join(&touched))?
                        .set_modified(std::time::SystemTime::now())?,
                }
                runs.push(Some(make_modules(&tree, &mods, jobs, &env, &args, way)?));
            }
            Ok(runs)
        })();
        if result.is_ok() {
            if way == Way::Stock {
                copy_modules(&tree, &stock_copy)?;
            } else {
                checks.push((way, modules_cmp::compare_modules(&stock_copy, &tree)?));
            }
        }
        for p in applied.iter().rev() {
            patch(&tree, p, true)?;
        }
        table.push((way, result?));
    }
    let mut s = String::new();
    writeln!(
        s,
        "### M1. `make modules` in kbuild's distributed mode: in-process modules, `modules-dist.patch`, `THINLTO_TOOLS=1`\n\n\
         Tree: {display} ({} modules, {} composite; the touched part belongs to `{}`, {} parts), `make {} -j{jobs} modules`, one run per cell, the ways one after the other on the same tree. \"jobs\" are backend compiles (in-process: the bitcode parts of each module lld relinked); \"hits\" are the tools' backend cache hits (`THINLTO_BACKEND_FLAGS=--cache-dir=…`, empty before the tools' first step). The last row is the tools' only; its ratio is against the stock way's from-scratch run.\n",
        mods.len(),
        mods.iter().filter(|m| !m.is_single()).count(),
        composite.object,
        composite.parts.len(),
        make_args.join(" ")
    )
    .unwrap();
    writeln!(
        s,
        "| step | stock make / jobs | plain rules make / jobs | THINLTO_TOOLS=1 make / jobs / hits | stock÷plain | stock÷tools |"
    )
    .unwrap();
    writeln!(s, "|---|---|---|---|---|---|").unwrap();
    let cell = |r: &Option<Run>| match r {
        Some(r) => format!("{:.2} s / {}", r.wall, r.jobs),
        None => "—".to_string(),
    };
    let ratio = |a: &Run, b: &Option<Run>| match b {
        Some(b) => format!("{:.2}×", a.wall / b.wall),
        None => "—".to_string(),
    };
    for (i, step) in steps.iter().enumerate() {
        let (pl, to) = (&table[1].1[i], &table[2].1[i]);
        // The warm-cache row compares with stock's from-scratch run.
        let st = table[0].1[i]
            .as_ref()
            .or(table[0].1[0].as_ref())
            .context("the stock way has no from-scratch run")?;
        let tools_cell = match to {
            Some(r) => format!("{:.2} s / {} / {}", r.wall, r.jobs, r.hits),
            None => "—".to_string(),
        };
        writeln!(
            s,
            "| {step} | {} | {} | {tools_cell} | {} | {} |",
            cell(&table[0].1[i]),
            cell(pl),
            ratio(st, pl),
            ratio(st, to)
        )
        .unwrap();
    }
    s.push('\n');
    let mut failed = false;
    for (way, way_checks) in &checks {
        for c in way_checks {
            failed |= !c.ok;
            writeln!(
                s,
                "- {} against the stock way: {}: {} ({})",
                way.name(),
                c.name,
                if c.ok { "yes" } else { "**NO**" },
                c.detail
            )
            .unwrap();
        }
    }
    // The figures before the restore (unmeasured, a quarter of an hour):
    // stopping it loses nothing.
    let saved = work.join("report.md");
    std::fs::write(&saved, &s).with_context(|| format!("{}: cannot write", saved.display()))?;
    eprintln!(
        "bench (modules): the figures (also in {}):\n{s}\nbench (modules): back to the stock build (not measured)",
        saved.display()
    );
    // Back to the stock build the tree had.
    scratch(&tree, &mods);
    run_make(&tree, "modules", jobs, &[], &make_args)?;
    if failed {
        bail!("a way's modules differ from the stock build's:\n{s}");
    }
    Ok(s)
}

/// Copies what [`modules_cmp::compare_modules`] reads of `tree` (its
/// `Module.symvers`, `modules.order` and every `.ko` of that order) to
/// `dest`, emptied first, at the same relative paths.
fn copy_modules(tree: &Path, dest: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    let mut files = vec!["Module.symvers".to_string(), "modules.order".to_string()];
    for ko in crate::kernel::modorder::read_modules_order(tree)? {
        files.push(ko.to_string_lossy().into_owned());
    }
    for f in files {
        let to = dest.join(&f);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(tree.join(&f), &to)
            .with_context(|| format!("copying {} to {}", tree.join(&f).display(), to.display()))?;
    }
    Ok(())
}
