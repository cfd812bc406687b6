//! Provisioning: a fresh machine has Rust but no clang/lld. Verbs that need
//! LLVM call [`ensure_llvm`], which installs it with apt-get when running as
//! root on Debian/Ubuntu, and otherwise stops with the exact command to run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use thinlto_index::toolchain::{
    resolve_roles, Role, Tool, ToolEnv, Toolchain, ToolchainArgs, APT_PACKAGES,
};

/// Resolves (and probes) the toolchain, installing LLVM first if needed and
/// possible.
pub fn ensure_llvm(args: &ToolchainArgs) -> Result<Toolchain> {
    let mut t = ensure_tools(args, &Role::ALL)?.into_iter();
    let (cc, ld, ar) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
    Ok(Toolchain { cc, ld, ar })
}

/// [`ensure_llvm`] for only the tools a verb runs.
pub fn ensure_tools(args: &ToolchainArgs, roles: &[Role]) -> Result<Vec<Tool>> {
    let explicit = args.cc.is_some()
        || args.ld.is_some()
        || args.ar.is_some()
        || args.llvm.is_some()
        || ["CC", "LD", "AR", "LLVM"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    let resolve = || -> Result<Vec<Tool>> {
        let mut tools = resolve_roles(args, &ToolEnv::from_process(), roles)?;
        for t in &mut tools {
            t.probe()?;
        }
        Ok(tools)
    };
    match resolve() {
        Ok(tools) => return Ok(tools),
        // A toolchain the user named but that is broken is their error to
        // fix, not a reason to install another one.
        Err(e) if explicit => return Err(e),
        Err(_) => {}
    }
    install_llvm()?;
    resolve()
}

/// The command a user must run when we cannot install for them.
pub fn install_command() -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y {}",
        APT_PACKAGES.join(" ")
    )
}

fn install_llvm() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let debian = Path::new("/etc/debian_version").exists();
    let apt = thinlto_index::toolchain::find_program("apt-get", std::env::var_os("PATH").as_ref());
    if !(root && debian && apt.is_ok()) {
        bail!(
            "LLVM 19 (clang, ld.lld, llvm-ar) is not installed{}; run: {}",
            if !debian {
                " and this is not Debian/Ubuntu"
            } else if !root {
                " and installing needs root"
            } else {
                " and apt-get is missing"
            },
            install_command()
        );
    }
    eprintln!(
        "xtask: LLVM not found; installing {} with apt-get",
        APT_PACKAGES.join(" ")
    );
    run_apt(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(APT_PACKAGES);
    run_apt(&install)
}

pub(crate) fn run_apt(args: &[&str]) -> Result<()> {
    eprintln!("xtask: apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The host programs the flows and tests run besides LLVM: GNU make (the
/// reference flow, kbuild's rules) and patch (examples/kbuild's patch, as a
/// user applies it). Installed with apt-get when missing (root, Debian).
pub fn ensure_make() -> Result<()> {
    let path = std::env::var_os("PATH");
    let missing: Vec<&str> = ["make", "patch"]
        .into_iter()
        .filter(|p| thinlto_index::toolchain::find_program(p, path.as_ref()).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && Path::new("/etc/debian_version").exists() {
        eprintln!(
            "xtask: {} not found; installing with apt-get",
            missing.join(", ")
        );
        run_apt(&["update"])?;
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&missing);
        return run_apt(&args);
    }
    bail!(
        "{} not installed; run: sudo apt-get install -y {}",
        missing.join(", "),
        missing.join(" ")
    )
}
