//! `cargo xtask oracle modpost`: the kernel's real modpost as the oracle of
//! `modpost-ir`. It is built at run time from Debian's `linux-source-6.12`
//! package (the project carries no kernel code), run on the sample tree's
//! in-process and distributed `vmlinux.o`, and its outputs are compared
//! with `modpost-ir`'s and with the golden files in tests/fixtures/golden/
//! (`--update` rewrites those).
//!
//! The distributed case needs kbuild's modpost change (CRCs of
//! `dir/foo.thinlto-native.o` from `dir/.foo.o.cmd`); the unpatched modpost
//! is given it in a scratch copy of the tree, whose
//! `dir/.foo.thinlto-native.o.cmd` files carry the `#SYMVER` lines of
//! `dir/.foo.o.cmd`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use thinlto_index::Toolchain;

use crate::flow::{self, LinkPlan};

const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "gcc",
    "make",
];

pub fn golden_dir() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/golden")
}

fn sh(dir: &Path, script: &str) -> Result<()> {
    let st = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()?;
    if !st.success() {
        bail!("`{script}` failed in {} ({st})", dir.display());
    }
    Ok(())
}

/// Builds the real modpost (once) and returns its path.
pub fn build_modpost() -> Result<PathBuf> {
    let base = crate::target_dir().join("oracle");
    let src = base.join("linux-source-6.12");
    let modpost = src.join("scripts/mod/modpost");
    if modpost.exists() {
        return Ok(modpost);
    }
    if !Path::new(TARBALL).exists() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/etc/debian_version").exists() {
            bail!(
                "{TARBALL} is missing; run: sudo apt-get install -y {}",
                PACKAGES.join(" ")
            );
        }
        eprintln!("xtask: installing {} with apt-get", PACKAGES.join(" "));
        sh(Path::new("/"), "apt-get update -qq")?;
        sh(
            Path::new("/"),
            &format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
                PACKAGES.join(" ")
            ),
        )?;
    }
    std::fs::create_dir_all(&base)?;
    if !src.join("Makefile").exists() {
        eprintln!("xtask: extracting {TARBALL} into {}", base.display());
        sh(&base, &format!("tar xf {TARBALL}"))?;
    }
    eprintln!("xtask: building the kernel's modpost (defconfig, modules_prepare)");
    sh(
        &src,
        "make -s ARCH=x86_64 defconfig >/dev/null && make -s ARCH=x86_64 -j2 modules_prepare",
    )?;
    if !modpost.exists() {
        bail!("{} was not built", modpost.display());
    }
    Ok(modpost)
}

/// Runs modpost as kbuild does for vmlinux (`modpost -M -m -o
/// vmlinux.symvers vmlinux.o`) in `dir`; returns (symvers, export.c, stderr).
fn run_modpost(modpost: &Path, dir: &Path) -> Result<(Vec<u8>, Vec<u8>, String)> {
    let out = Command::new(modpost)
        .args(["-M", "-m", "-o", "vmlinux.symvers", "vmlinux.o"])
        .current_dir(dir)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("modpost failed in {}:\n{err}", dir.display());
    }
    Ok((
        std::fs::read(dir.join("vmlinux.symvers"))?,
        std::fs::read(dir.join(".vmlinux.export.c"))?,
        err,
    ))
}

/// modpost-ir on the same inputs.
fn run_ours(bins: &flow::Bins, dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let st = Command::new(bins.path("modpost-ir"))
        .args(["symvers", "vmlinux.o", "--objects", ".vmlinux.objs"])
        .args(["-o", "ours.symvers", "--export-c", "ours.export.c"])
        .current_dir(dir)
        .status()?;
    if !st.success() {
        bail!("modpost-ir failed in {}", dir.display());
    }
    Ok((
        std::fs::read(dir.join("ours.symvers"))?,
        std::fs::read(dir.join("ours.export.c"))?,
    ))
}

#[derive(Debug, Clone)]
pub struct OracleCase {
    pub name: &'static str,
    pub identical: bool,
    pub golden_identical: bool,
    pub exports: usize,
    pub zero_crcs_unpatched: Option<usize>,
}

/// Regenerates and compares; with `update`, rewrites the golden files.
pub fn run_modpost_oracle(tc: &Toolchain, update: bool) -> Result<Vec<OracleCase>> {
    let modpost = build_modpost()?;
    let bins = flow::build_bins()?;
    let tree = crate::target_dir().join("oracle/sample");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    crate::fe::build(
        &crate::fe::FeOptions {
            tree: tree.clone(),
            objects: 0,
            jobs: crate::default_jobs(),
            saved_c_flags: true,
            quiet: true,
        },
        tc,
    )?;
    let ldflags = crate::tree::Tree::load(&tree)?.top.ldflags;
    let run = flow::run_stages(
        &bins,
        tc,
        &tree,
        "out",
        crate::default_jobs(),
        &LinkPlan::plain(tc, &ldflags, "out"),
    )?;
    flow::inprocess_link(
        tc,
        &tree,
        &ldflags,
        crate::default_jobs(),
        "out/vmlinux.inprocess.o",
    )?;
    let mut cases = Vec::new();
    for name in ["inprocess", "distributed"] {
        let scratch = crate::target_dir().join(format!("oracle/scratch-{name}"));
        flow::copy_fe_tree(&tree, &scratch)?;
        let (vmlinux_o, objs) = if name == "inprocess" {
            (
                tree.join("out/vmlinux.inprocess.o"),
                crate::flow::run_tool(
                    bins.tool("thinlto-index", tc, &tree)
                        .args(["order", "vmlinux.a"]),
                    None,
                    None,
                )?,
            )
        } else {
            (
                run.vmlinux_o.clone(),
                std::fs::read(tree.join("out/.vmlinux.objs"))?,
            )
        };
        std::fs::create_dir_all(scratch.join("out"))?;
        std::fs::copy(&vmlinux_o, scratch.join("vmlinux.o"))?;
        std::fs::write(scratch.join(".vmlinux.objs"), &objs)?;
        let objects: Vec<String> = String::from_utf8(objs)?
            .lines()
            .map(str::to_string)
            .collect();
        // First the unpatched modpost as is: what kbuild got before the change.
        let mut zero = None;
        if name == "distributed" {
            for o in &objects {
                if o.ends_with(".thinlto-native.o") {
                    let rec = thinlto_cmdparse::dot_cmd_path(Path::new(o));
                    std::fs::write(scratch.join(&rec), format!("savedcmd_{o} := true\n"))?;
                }
            }
            let (symvers, _, _) = run_modpost(&modpost, &scratch)?;
            zero = Some(
                String::from_utf8(symvers)?
                    .lines()
                    .filter(|l| l.starts_with("0x00000000"))
                    .count(),
            );
            // Then the change, reproduced: each native object's record
            // carries its front end's #SYMVER lines.
            for o in &objects {
                if o.ends_with(".thinlto-native.o") {
                    let fe = thinlto_cmdparse::cmd_file_for_object(Path::new(o));
                    let text = std::fs::read_to_string(scratch.join(&fe))
                        .with_context(|| fe.display().to_string())?;
                    let symvers: String = text
                        .lines()
                        .filter(|l| l.starts_with("#SYMVER "))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let rec = thinlto_cmdparse::dot_cmd_path(Path::new(o));
                    std::fs::write(
                        scratch.join(&rec),
                        format!("savedcmd_{o} := true\n{symvers}"),
                    )?;
                }
            }
        }
        let (symvers, export_c, _) = run_modpost(&modpost, &scratch)?;
        // modpost-ir reads the real front-end records: restore them.
        flow::copy_fe_tree(&tree, &scratch)?;
        std::fs::create_dir_all(scratch.join("out"))?;
        std::fs::copy(&vmlinux_o, scratch.join("vmlinux.o"))?;
        std::fs::write(scratch.join(".vmlinux.objs"), objects.join("\n") + "\n")?;
        let (ours_s, ours_c) = run_ours(&bins, &scratch)?;
        let gdir = golden_dir().join(name);
        if update {
            std::fs::create_dir_all(&gdir)?;
            std::fs::write(gdir.join("vmlinux.symvers"), &symvers)?;
            std::fs::write(gdir.join(".vmlinux.export.c"), &export_c)?;
        }
        let golden_identical = std::fs::read(gdir.join("vmlinux.symvers")).ok().as_deref()
            == Some(&symvers[..])
            && std::fs::read(gdir.join(".vmlinux.export.c"))
                .ok()
                .as_deref()
                == Some(&export_c[..]);
        cases.push(OracleCase {
            name: if name == "inprocess" {
                "in-process vmlinux.o"
            } else {
                "distributed vmlinux.o"
            },
            identical: ours_s == symvers && ours_c == export_c,
            golden_identical,
            exports: String::from_utf8_lossy(&symvers).lines().count(),
            zero_crcs_unpatched: zero,
        });
    }
    Ok(cases)
}
