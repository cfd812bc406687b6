//! `cargo xtask reference`: runs the make reference flow
//! (`tests/reference/Makefile`, kbuild's distributed ThinLTO stages 2–4)
//! on a front-end tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use thinlto_index::Toolchain;

use crate::sample::tree::Tree;

pub fn makefile() -> PathBuf {
    crate::workspace_root().join("tests/reference/Makefile")
}

#[derive(Debug, Clone)]
pub struct ReferenceOptions {
    pub tree: PathBuf,
    pub jobs: usize,
    /// Top-level outputs, relative to the tree.
    pub out: String,
    /// Extra make arguments (e.g. `V=1`).
    pub make_args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ReferenceReport {
    /// Backend compiles make ran.
    pub backend_jobs: usize,
    pub vmlinux_o: PathBuf,
    pub log: String,
}

/// The make command line of the reference flow.
pub fn command(opts: &ReferenceOptions, tc: &Toolchain, tree: &Tree) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(&opts.tree)
        .arg("-rR")
        .arg(format!("-j{}", opts.jobs.max(1)))
        .arg("-f")
        .arg(makefile())
        .args(tc.make_vars())
        .arg(format!("KBUILD_LDFLAGS={}", tree.top.ldflags))
        .arg(format!("O={}", opts.out))
        .args(&opts.make_args)
        // make's jobserver must not leak in from an outer make.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    cmd
}

pub fn run(opts: &ReferenceOptions, tc: &Toolchain) -> Result<ReferenceReport> {
    let tree = Tree::load(&opts.tree)?;
    if !opts.tree.join("vmlinux.a").exists() {
        bail!(
            "{}: no vmlinux.a; run the front end first (cargo xtask fe --tree {})",
            opts.tree.display(),
            opts.tree.display()
        );
    }
    let out = command(opts, tc, &tree)
        .output()
        .context("cannot run make")?;
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("the reference flow failed ({}):\n{log}", out.status);
    }
    let backend_jobs = log
        .lines()
        .filter(|l| l.trim_start().starts_with("CC ") && l.contains(".thinlto-native.o"))
        .count();
    Ok(ReferenceReport {
        backend_jobs,
        vmlinux_o: opts.tree.join(&opts.out).join("vmlinux.o"),
        log,
    })
}

/// Links the user-space harness against a `vmlinux.o` and runs it; returns
/// its standard output.
pub fn run_harness(tc: &Toolchain, tree: &Path, vmlinux_o: &Path, exe: &Path) -> Result<String> {
    let main_c = crate::sample::fe::fixture_dir().join("harness/main.c");
    let link = Command::new(&tc.cc.path)
        .args(["-O2", "-no-pie", "-o"])
        .arg(exe)
        .arg(&main_c)
        .arg(vmlinux_o)
        .arg(format!("--ld-path={}", tc.ld.path.display()))
        .current_dir(tree)
        .output()
        .context("cannot run the compiler to link the harness")?;
    if !link.status.success() {
        bail!(
            "linking the harness with {} failed:\n{}",
            vmlinux_o.display(),
            String::from_utf8_lossy(&link.stderr)
        );
    }
    let out = Command::new(exe)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} exited with {}", exe.display(), out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub fn expected_harness_output() -> Result<String> {
    let p = crate::sample::fe::fixture_dir().join("harness/expected.txt");
    std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
}
