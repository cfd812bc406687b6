//! `cargo xtask kernel`: stages 2–4 and modpost on a real kernel tree that
//! kbuild built with ThinLTO, with the kernel's own settings read from its
//! `.cmd` files, compared with the tree's own results. Two layouts:
//! - in-process (`CONFIG_LTO_CLANG_THIN`): lld ran the backends; the
//!   front-end archive is `vmlinux.a` (or `built-in-fixup.a`, of which
//!   Linux >= 7.2 makes `vmlinux.a` a copy);
//! - distributed (`CONFIG_LTO_CLANG_THIN_DIST`, SPEC §4): kbuild's own
//!   `built-in-fixup.a`, `vmlinux.thinlto-index`, natives and records. Its
//!   natives are set aside, ours are built in their place and compared
//!   byte for byte.

pub mod modorder;
pub mod modules_cmp;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use modpost_ir::{read_exports_with, Layout, ReadOptions};
use thinlto_cmdparse::{shell, CmdFile};
use thinlto_index::{Toolchain, ToolchainArgs};

use crate::flow::{self, Check, LinkPlan, StageTime};

#[derive(Debug, Clone)]
pub struct KernelOptions {
    pub tree: PathBuf,
    pub out: PathBuf,
    pub jobs: usize,
    pub time_inprocess: bool,
    /// The backend with `--warm`.
    pub warm: bool,
    /// The backend on this REAPI farm (`--remote-exec URL`).
    pub remote_exec: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KernelReport {
    pub layout: TreeLayout,
    pub stages: Vec<StageTime>,
    pub checks: Vec<Check>,
}

/// How kbuild linked the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeLayout {
    /// lld ran the backends inside the `vmlinux.o` link.
    InProcess,
    /// kbuild's distributed mode: its own index, natives and records.
    Dist,
}

impl TreeLayout {
    /// The front-end archive (what `builtin.order` lists).
    pub fn fe_archive(self, tree: &Path) -> &'static str {
        match self {
            TreeLayout::Dist => "built-in-fixup.a",
            TreeLayout::InProcess if tree.join("built-in-fixup.a").exists() => "built-in-fixup.a",
            TreeLayout::InProcess => "vmlinux.a",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TreeLayout::InProcess => "in-process ThinLTO (lld ran the backends)",
            TreeLayout::Dist => "kbuild's distributed ThinLTO (CONFIG_LTO_CLANG_THIN_DIST)",
        }
    }
}

/// Which layout a tree has; an error names what is missing.
pub fn detect_layout(tree: &Path) -> Result<TreeLayout> {
    let has = |f: &str| tree.join(f).exists();
    let missing = |fs: &[&str]| -> Vec<String> {
        fs.iter()
            .filter(|f| !has(f))
            .map(|f| f.to_string())
            .collect()
    };
    let common = ["vmlinux.o", ".vmlinux.o.cmd"];
    // kbuild writes vmlinux's exports to vmlinux.symvers, or to
    // Module.symvers when it builds modules too (kbuild_vmlinux_symvers).
    let missing = |fs: &[&str]| -> Vec<String> {
        let mut m = missing(fs);
        if !has("vmlinux.symvers") && !has("Module.symvers") {
            m.push("vmlinux.symvers (or Module.symvers)".into());
        }
        m
    };
    if has("vmlinux.thinlto-index") || has("builtin.order") {
        let mut m = missing(&common);
        m.extend(missing(&[
            "built-in-fixup.a",
            ".built-in-fixup.a.cmd",
            "builtin.order",
            "vmlinux.thinlto-index",
            "vmlinux.a",
        ]));
        if m.is_empty() {
            return Ok(TreeLayout::Dist);
        }
        bail!(
            "{}: a distributed-ThinLTO tree (it has vmlinux.thinlto-index or builtin.order) without {}; finish the build first (make LLVM=-19 vmlinux)",
            tree.display(),
            m.join(", ")
        );
    }
    let mut m = missing(&common);
    if !has("vmlinux.a") {
        m.push("vmlinux.a".into());
    }
    if !has(".vmlinux.a.cmd") && !has(".built-in-fixup.a.cmd") {
        m.push(".vmlinux.a.cmd (or .built-in-fixup.a.cmd)".into());
    }
    if m.is_empty() {
        return Ok(TreeLayout::InProcess);
    }
    bail!(
        "{}: neither an in-process nor a distributed ThinLTO kernel tree: no {}; build the kernel with CONFIG_LTO_CLANG_THIN=y or CONFIG_LTO_CLANG_THIN_DIST=y first (make LLVM=-19 vmlinux)",
        tree.display(),
        m.join(", ")
    )
}

/// vmlinux's exports as kbuild wrote them last, and the file they came
/// from. modpost writes them to `vmlinux.symvers` when kbuild builds
/// vmlinux without modules (`make vmlinux`); when it builds modules too
/// (`make`, `make vmlinux modules`, `make modules`) it writes
/// `Module.symvers` instead, vmlinux's lines first (module `vmlinux`),
/// and leaves `vmlinux.symvers` as an earlier build left it, if any. The
/// newer of the two is what kbuild wrote last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbuildSymvers {
    /// `vmlinux.symvers`, or `Module.symvers (its vmlinux lines)`.
    pub file: &'static str,
    /// vmlinux's lines, each with its newline, in the file's order.
    pub text: Vec<u8>,
}

impl KbuildSymvers {
    pub fn read(tree: &Path) -> Result<KbuildSymvers> {
        let mtime = |f: &str| {
            std::fs::metadata(tree.join(f))
                .and_then(|m| m.modified())
                .ok()
        };
        let use_modules = match (mtime("vmlinux.symvers"), mtime("Module.symvers")) {
            (Some(v), Some(m)) => m > v,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if !use_modules {
            let text = std::fs::read(tree.join("vmlinux.symvers")).with_context(|| {
                format!(
                    "{}: cannot read (nor is there a Module.symvers)",
                    tree.join("vmlinux.symvers").display()
                )
            })?;
            return Ok(KbuildSymvers {
                file: "vmlinux.symvers",
                text,
            });
        }
        let path = tree.join("Module.symvers");
        let all =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        // CRC, symbol, module, export type, namespace: tab-separated.
        let text = all
            .split_inclusive(|b| *b == b'\n')
            .filter(|l| l.split(|b| *b == b'\t').nth(2) == Some(b"vmlinux"))
            .flatten()
            .copied()
            .collect();
        Ok(KbuildSymvers {
            file: "Module.symvers (its vmlinux lines)",
            text,
        })
    }

    fn sorted_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = String::from_utf8_lossy(&self.text)
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

/// The commands of a `savedcmd_` line: split at unquoted `;`, each split
/// into words as `/bin/sh` would.
pub(crate) fn commands_of(cmd_file: &Path) -> Result<Vec<Vec<String>>> {
    let cmd =
        CmdFile::read(cmd_file).with_context(|| format!("{}: cannot read", cmd_file.display()))?;
    let text = cmd
        .savedcmd
        .with_context(|| format!("{}: no savedcmd_ line", cmd_file.display()))?;
    let mut out = Vec::new();
    for part in shell::split_commands(&text)
        .with_context(|| format!("{}: savedcmd_ is not shell text", cmd_file.display()))?
    {
        if !part.is_empty() {
            out.push(part);
        }
    }
    Ok(out)
}

fn replace_word(argv: &[String], from: &str, to: &str) -> Vec<String> {
    argv.iter()
        .map(|w| if w == from { to.to_string() } else { w.clone() })
        .collect()
}

/// The kernel's toolchain and vmlinux.o link, from its own `.cmd` files.
pub fn kernel_settings(
    tree: &Path,
    out: &Path,
    layout: TreeLayout,
) -> Result<(Toolchain, LinkPlan, Vec<String>)> {
    let link_cmds = commands_of(&tree.join(".vmlinux.o.cmd"))?;
    let link = &link_cmds[0];
    let r = link
        .iter()
        .position(|w| w == "-r")
        .context(".vmlinux.o.cmd: the link has no -r")?;
    let ldflags = shell::join(&link[1..r]);
    let out_s = out.to_string_lossy();
    let vmlinux_o = replace_word(
        &replace_word(link, "vmlinux.o", &format!("{out_s}/vmlinux.o")),
        "vmlinux.a",
        &format!("{out_s}/vmlinux.a"),
    );
    let post = link_cmds
        .get(1)
        .map(|c| replace_word(c, "vmlinux.o", &format!("{out_s}/vmlinux.o")));
    // AR: the archiver of the front-end archive (`rm -f vmlinux.a; $(AR)
    // cDPrST …`, later commands use $(…), which we need not understand:
    // the program is the first word of the second command). In a DIST
    // tree `.vmlinux.a.cmd` is the natives' archive (a shell loop).
    let fe = layout.fe_archive(tree);
    let fe_cmd = format!(".{fe}.cmd");
    let ar_cmd = CmdFile::read(&tree.join(&fe_cmd))?;
    let ar = ar_cmd
        .savedcmd
        .as_deref()
        .and_then(|t| t.split(';').nth(1))
        .and_then(|c| c.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("{fe_cmd}: no archiver command after `rm -f {fe};`"))?;
    let cc = commands_of(&tree.join("init/.main.o.cmd"))?[0][0].clone();
    let mut tc = Toolchain::resolve(&ToolchainArgs {
        cc: Some(cc),
        ld: Some(link[0].clone()),
        ar: Some(ar),
        ..Default::default()
    })?;
    tc.probe()?;
    Ok((
        tc,
        LinkPlan {
            ldflags,
            vmlinux_o,
            post,
            force_thin_link: false,
            fe_archive: fe.to_string(),
            warm: false,
            force_backend: false,
            backend_args: Vec::new(),
        },
        link.clone(),
    ))
}

/// The names a `vmlinux.o` exports, read as modpost-ir reads them: the
/// `.export_symbol` section (Linux ≥ 6.5) or `__ksymtab_<name>` symbols
/// (before 6.5, e.g. the 6.1 LTS), whichever the object has.
pub fn exports_of(vmlinux_o: &Path) -> Result<(Layout, BTreeSet<String>)> {
    let file = std::fs::File::open(vmlinux_o)
        .with_context(|| format!("{}: cannot open", vmlinux_o.display()))?;
    // Mapped: a kernel's vmlinux.o is hundreds of MB, of which only the
    // symbols and the export entries are read.
    // SAFETY: read-only map of an object nobody rewrites during the check.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("{}: cannot map", vmlinux_o.display()))?;
    let ex = read_exports_with(
        &map,
        "vmlinux",
        ReadOptions {
            modules: true,
            section_mismatch: false,
        },
    )
    .with_context(|| format!("{}", vmlinux_o.display()))?;
    Ok((ex.layout, ex.exports.into_iter().map(|e| e.name).collect()))
}

/// `cargo xtask kernel`'s export check: our `vmlinux.o` exports what the
/// tree's does, in either layout; and no exports at all, where the tree's
/// `vmlinux.symvers` lists some, fails even when both sides agree (the
/// exports were not found, e.g. a layout not understood).
pub fn export_check(ours: &Path, tree_vmlinux_o: &Path, tree_symvers: &Path) -> Result<Check> {
    let listed = std::fs::read_to_string(tree_symvers)
        .with_context(|| format!("{}: cannot read", tree_symvers.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    export_check_listed(
        ours,
        tree_vmlinux_o,
        listed,
        &tree_symvers.display().to_string(),
    )
}

/// [`export_check`] with the number of exports kbuild listed, in `what`.
pub fn export_check_listed(
    ours: &Path,
    tree_vmlinux_o: &Path,
    listed: usize,
    what: &str,
) -> Result<Check> {
    let (layout, e_ours) = exports_of(ours)?;
    let (_, e_tree) = exports_of(tree_vmlinux_o)?;
    let layout = match layout {
        Layout::ExportSymbol => ".export_symbol",
        Layout::Ksymtab => "__ksymtab_",
    };
    let name = format!(
        "exports same as the tree's vmlinux.o ({}, {layout})",
        e_ours.len()
    );
    if e_ours.is_empty() && listed > 0 {
        return Ok(Check {
            name,
            ok: false,
            detail: format!("no exports found, but {what} lists {listed}"),
        });
    }
    Ok(Check {
        name,
        ok: e_ours == e_tree,
        detail: e_ours
            .symmetric_difference(&e_tree)
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
    })
}

pub fn run_kernel(opts: &KernelOptions) -> Result<KernelReport> {
    let tree = opts
        .tree
        .canonicalize()
        .with_context(|| format!("{}: no such tree", opts.tree.display()))?;
    let layout = detect_layout(&tree)?;
    // Read before our stages run (they write nothing into the tree's
    // symvers files, but the choice is the tree's as the user left it).
    let kbuild = KbuildSymvers::read(&tree)?;
    std::fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    let (tc, plan, tree_link) = kernel_settings(&tree, &out, layout)?;
    let plan = LinkPlan {
        warm: opts.warm,
        backend_args: opts
            .remote_exec
            .iter()
            .flat_map(|url| ["--remote-exec".to_string(), url.clone()])
            .collect(),
        ..plan
    };
    // kbuild's own natives, set aside for the comparison (ours are built
    // in their place: the same paths, as kbuild's rules name them).
    let kbuild_natives = out.join("kbuild-natives");
    let mut set_aside = Vec::new();
    if layout == TreeLayout::Dist {
        let index = std::fs::read_to_string(tree.join("vmlinux.thinlto-index"))
            .context("vmlinux.thinlto-index: cannot read")?;
        for obj in index.lines().filter(|l| !l.is_empty()) {
            let native = thinlto_backend::job::native_of(obj);
            let to = kbuild_natives.join(&native);
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(tree.join(&native), &to).with_context(|| {
                format!("{native}: kbuild's native object is missing (an unfinished build?)")
            })?;
            set_aside.push(native);
        }
    }
    let bins = flow::build_bins()?;
    let out_s = out.to_string_lossy().into_owned();
    let first = flow::run_stages(&bins, &tc, &tree, &out_s, opts.jobs, &plan.forced())?;
    let mut stages = first.stages.clone();
    stages.push(StageTime {
        name: "= stages 2-4 + modpost, ours".into(),
        seconds: first.total_seconds(),
        detail: String::new(),
    });
    if opts.time_inprocess {
        // The tree's own link over the front-end archive: lld runs the
        // backends itself (in a DIST tree, its vmlinux.a holds natives).
        let argv = replace_word(
            &replace_word(&tree_link, "vmlinux.a", &plan.fe_archive),
            "vmlinux.o",
            &format!("{out_s}/vmlinux.inprocess.o"),
        );
        let t = Instant::now();
        flow::run_tool(
            Command::new(&argv[0]).current_dir(&tree).args(&argv[1..]),
            None,
            None,
        )?;
        stages.push(StageTime {
            name: "in-process: the tree's own vmlinux.o link".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: "ld.lld -r over the bitcode (ThinLTO inside lld)".into(),
        });
    }
    let mut checks = Vec::new();
    if layout == TreeLayout::Dist {
        let differ: Vec<&String> = set_aside
            .iter()
            .filter(|n| {
                std::fs::read(tree.join(n)).ok() != std::fs::read(kbuild_natives.join(n)).ok()
            })
            .collect();
        checks.push(Check {
            name: format!(
                "natives byte-identical to kbuild's ({}/{})",
                set_aside.len() - differ.len(),
                set_aside.len()
            ),
            ok: differ.is_empty() && !set_aside.is_empty(),
            detail: differ
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        });
        let same = std::fs::read(out.join("vmlinux.symvers")).ok().as_ref() == Some(&kbuild.text);
        checks.push(Check {
            name: format!(
                "vmlinux.symvers byte-identical to kbuild's last, {}",
                kbuild.file
            ),
            ok: same,
            detail: String::new(),
        });
    }
    let (g_ours, _) = flow::symbols(&first.vmlinux_o)?;
    let (g_tree, _) = flow::symbols(&tree.join("vmlinux.o"))?;
    let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
        a.symmetric_difference(b)
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    };
    checks.push(Check {
        name: format!(
            "global symbols same as the tree's vmlinux.o ({})",
            g_ours.len()
        ),
        ok: g_ours == g_tree,
        detail: diff(&g_ours, &g_tree),
    });
    let listed = kbuild
        .sorted_lines()
        .iter()
        .filter(|l| !l.is_empty())
        .count();
    checks.push(export_check_listed(
        &first.vmlinux_o,
        &tree.join("vmlinux.o"),
        listed,
        kbuild.file,
    )?);
    let ours = KbuildSymvers {
        file: "ours",
        text: std::fs::read(out.join("vmlinux.symvers"))
            .with_context(|| format!("{}/vmlinux.symvers: cannot read", out.display()))?,
    }
    .sorted_lines();
    let theirs = kbuild.sorted_lines();
    let zero = ours.iter().filter(|l| l.starts_with("0x00000000")).count();
    checks.push(Check {
        name: format!(
            "sorted vmlinux.symvers equals the tree's ({} lines, {})",
            ours.len(),
            kbuild.file
        ),
        ok: ours == theirs,
        detail: format!("{zero} zero CRCs"),
    });
    let from_saved = first.jobs.len();
    let second = flow::run_stages(&bins, &tc, &tree, &out_s, opts.jobs, &plan)?;
    let up = second.count(thinlto_backend::JobStatus::UpToDate);
    checks.push(Check {
        name: format!("second run: every backend job up to date ({up}/{from_saved})"),
        ok: up == from_saved,
        detail: format!("{:.3} s for stages 2-4", second.total_seconds()),
    });
    Ok(KernelReport {
        layout,
        stages,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        d
    }

    const COMMON: [&str; 3] = ["vmlinux.o", ".vmlinux.o.cmd", "vmlinux.symvers"];

    /// kbuild's last word on vmlinux's exports: vmlinux.symvers after
    /// `make vmlinux`, Module.symvers' vmlinux lines after a build with
    /// modules (`make`, `make vmlinux modules`), the newer when both.
    #[test]
    fn kbuild_symvers_is_the_file_kbuild_wrote_last() {
        let d = tempfile::tempdir().unwrap();
        let vmlinux = "0x1\ta\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tb\tvmlinux\tEXPORT_SYMBOL_GPL\t\n";
        let modules = "0x1\ta\tvmlinux\tEXPORT_SYMBOL\t\n0x3\tc\tvmlinux\tEXPORT_SYMBOL\t\n\
                       0x4\td\tfs/ext2/ext2\tEXPORT_SYMBOL\t\n0x5\tvmlinux\tfs/x\tEXPORT_SYMBOL\t\n";
        let set = |f: &str, text: &str, secs: i64| {
            let p = d.path().join(f);
            std::fs::write(&p, text).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        // A plain `make` from scratch: no vmlinux.symvers at all.
        set("Module.symvers", modules, 2_000_000_000);
        let k = KbuildSymvers::read(d.path()).unwrap();
        assert_eq!(k.file, "Module.symvers (its vmlinux lines)");
        assert_eq!(
            k.text,
            b"0x1\ta\tvmlinux\tEXPORT_SYMBOL\t\n0x3\tc\tvmlinux\tEXPORT_SYMBOL\t\n"
        );
        assert!(detect_layout(d.path())
            .unwrap_err()
            .to_string()
            .contains("vmlinux.o"));
        // An older vmlinux.symvers (`make vmlinux`, then `make modules`).
        set("vmlinux.symvers", vmlinux, 1_900_000_000);
        assert_eq!(KbuildSymvers::read(d.path()).unwrap().file, k.file);
        // `make vmlinux` after that: vmlinux.symvers is the newer.
        set("vmlinux.symvers", vmlinux, 2_100_000_000);
        let k = KbuildSymvers::read(d.path()).unwrap();
        assert_eq!(
            (k.file, k.text),
            ("vmlinux.symvers", vmlinux.as_bytes().to_vec())
        );
        std::fs::remove_file(d.path().join("Module.symvers")).unwrap();
        assert_eq!(
            KbuildSymvers::read(d.path()).unwrap().file,
            "vmlinux.symvers"
        );
    }

    #[test]
    fn layouts_are_told_apart_and_a_partial_tree_names_what_it_lacks() {
        let inproc = tree_with(&[&COMMON[..], &["vmlinux.a", ".vmlinux.a.cmd"]].concat());
        assert_eq!(detect_layout(inproc.path()).unwrap(), TreeLayout::InProcess);
        assert_eq!(TreeLayout::InProcess.fe_archive(inproc.path()), "vmlinux.a");
        // Linux >= 7.2 without DIST: vmlinux.a is a copy of built-in-fixup.a.
        let copy = tree_with(
            &[
                &COMMON[..],
                &["vmlinux.a", "built-in-fixup.a", ".built-in-fixup.a.cmd"],
            ]
            .concat(),
        );
        assert_eq!(detect_layout(copy.path()).unwrap(), TreeLayout::InProcess);
        assert_eq!(
            TreeLayout::InProcess.fe_archive(copy.path()),
            "built-in-fixup.a"
        );
        let dist = [
            &COMMON[..],
            &[
                "vmlinux.a",
                "built-in-fixup.a",
                ".built-in-fixup.a.cmd",
                "builtin.order",
                "vmlinux.thinlto-index",
            ],
        ]
        .concat();
        let d = tree_with(&dist);
        assert_eq!(detect_layout(d.path()).unwrap(), TreeLayout::Dist);
        assert_eq!(TreeLayout::Dist.fe_archive(d.path()), "built-in-fixup.a");
        // An unfinished DIST build: the error names what is missing.
        let partial: Vec<&str> = dist
            .iter()
            .copied()
            .filter(|f| *f != "vmlinux.a" && *f != "vmlinux.o")
            .collect();
        let e = detect_layout(tree_with(&partial).path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("distributed") && e.contains("vmlinux.o, vmlinux.a"),
            "{e}"
        );
        // Neither kind.
        let e = detect_layout(tree_with(&["vmlinux.o"]).path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("neither") && e.contains(".vmlinux.o.cmd") && e.contains("vmlinux.a"),
            "{e}"
        );
    }
}
