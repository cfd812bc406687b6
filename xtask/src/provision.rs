//! Provisioning: a fresh machine has Rust but no clang/lld. Verbs that need
//! LLVM call [`ensure_llvm`], which installs it with apt-get when running as
//! root on Debian/Ubuntu, and otherwise stops with the exact command to run.
//! `cargo xtask setup` installs every tested LLVM version
//! ([`ensure_llvm_versions`]) and what the test suite runs besides
//! ([`ensure_host`] with [`TEST_NEEDS`]), so no test need skip in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use thinlto_index::toolchain::{
    apt_packages, llvm_packages, resolve_roles, Role, Tool, ToolEnv, Toolchain, ToolchainArgs,
    LLVM_VERSIONS,
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

/// Set (non-empty) in the test suite's environment by `cargo xtask test
/// --no-skip` (CI): a test that needs an LLVM the machine lacks fails
/// instead of skipping (`thinlto_dist_tests::llvm::skip`).
pub const TEST_NO_SKIP_VAR: &str = "THINLTO_TEST_NO_SKIP";

/// The packages of [`LLVM_VERSIONS`] this machine lacks, each with its
/// version: none of its program on PATH nor in `/usr/lib/llvm-N/bin`.
fn missing_llvm_packages() -> Vec<(u32, String)> {
    let path = std::env::var_os("PATH");
    LLVM_VERSIONS
        .iter()
        .flat_map(|v| llvm_packages(*v).map(|p| (*v, p)))
        .filter(|(version, (_, program))| {
            let name = program
                .rsplit_once('-')
                .map_or(program.as_str(), |(n, _)| n);
            thinlto_index::toolchain::find_program(program, path.as_ref()).is_err()
                && !Path::new(&format!("/usr/lib/llvm-{version}/bin/{name}")).exists()
        })
        .map(|(version, (package, _))| (version, package))
        .collect()
}

/// The versions of [`LLVM_VERSIONS`] not completely installed here
/// (`cargo xtask test` says which tests they skip).
pub fn missing_llvm_versions() -> Vec<u32> {
    let mut v: Vec<u32> = missing_llvm_packages()
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    v.dedup();
    v
}

/// Installs the packages of every version of [`LLVM_VERSIONS`] that this
/// machine lacks (`cargo xtask setup`: CI runs the suite with each).
pub fn ensure_llvm_versions() -> Result<()> {
    let missing: Vec<String> = missing_llvm_packages()
        .into_iter()
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, "LLVM")
}

/// The command a user must run when we cannot install for them.
pub fn install_command() -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y {}",
        apt_packages().join(" ")
    )
}

fn install_llvm() -> Result<()> {
    apt_install(&apt_packages(), "LLVM")
}

/// Installs `packages` with apt-get when root on Debian/Ubuntu; otherwise
/// stops with the command to run.
fn apt_install(packages: &[String], what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let debian = Path::new("/etc/debian_version").exists();
    let apt = thinlto_index::toolchain::find_program("apt-get", std::env::var_os("PATH").as_ref());
    if !(root && debian && apt.is_ok()) {
        bail!(
            "{what} is not installed ({}){}; run: sudo apt-get update && sudo apt-get install -y {}",
            packages.join(", "),
            if !debian {
                " and this is not Debian/Ubuntu"
            } else if !root {
                " and installing needs root"
            } else {
                " and apt-get is missing"
            },
            packages.join(" ")
        );
    }
    eprintln!(
        "xtask: {what} not found; installing {} with apt-get",
        packages.join(" ")
    );
    run_apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages.iter().map(String::as_str));
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

/// Something a verb runs besides LLVM, and the Debian package providing it.
pub struct HostNeed {
    pub package: &'static str,
    /// What is needed, for messages (`make`, `static libc (libc.a)`).
    pub what: &'static str,
    pub present: fn() -> bool,
}

fn on_path(name: &str) -> bool {
    thinlto_index::toolchain::find_program(name, std::env::var_os("PATH").as_ref()).is_ok()
}

/// The flows' host programs: GNU make (the reference flow, kbuild's rules)
/// and patch (examples/kbuild's patch, as a user applies it).
pub const FLOW_NEEDS: &[HostNeed] = &[
    HostNeed {
        package: "make",
        what: "make",
        present: || on_path("make"),
    },
    HostNeed {
        package: "patch",
        what: "patch",
        present: || on_path("patch"),
    },
];

/// What the test suite needs besides [`FLOW_NEEDS`]: `script` (the backend's
/// progress on a terminal), a static libc (the warm compiler's test of a
/// static compiler), `cpio` (reads back the initramfs writer's
/// archives), `ccache` (the wrapper composed with it) and `man` (the
/// installed man pages). The tests say which package to install when one
/// is missing.
pub const TEST_NEEDS: &[HostNeed] = &[
    HostNeed {
        package: "bsdutils",
        what: "script",
        present: || on_path("script"),
    },
    HostNeed {
        package: "libc6-dev",
        what: "static libc (libc.a)",
        present: static_libc_present,
    },
    HostNeed {
        package: "cpio",
        what: "cpio",
        present: || on_path("cpio"),
    },
    // The farm worker runs every action in a bubblewrap sandbox
    // (thinlto-backend's worker/sandbox.rs); the worker tests need it.
    HostNeed {
        package: "bubblewrap",
        what: "bwrap",
        present: || on_path("bwrap"),
    },
    HostNeed {
        package: "ccache",
        what: "ccache",
        present: || on_path("ccache"),
    },
    HostNeed {
        package: "man-db",
        what: "man",
        present: || on_path("man"),
    },
];

/// What `cargo xtask kernel --boot` needs: qemu, and a static busybox for
/// the initramfs (Debian's `busybox` package is dynamically linked).
/// Installed by `cargo xtask setup --boot` or by the verb itself, not by a
/// plain `setup`: qemu-system-x86 is a large install (firmware, graphics
/// libraries) that only booting a real kernel tree needs, never the suite.
pub const BOOT_NEEDS: &[HostNeed] = &[
    HostNeed {
        package: "qemu-system-x86",
        what: "qemu-system-x86_64",
        present: || on_path("qemu-system-x86_64"),
    },
    HostNeed {
        package: "busybox-static",
        what: "static busybox (/bin/busybox)",
        present: static_busybox_present,
    },
];

fn static_busybox_present() -> bool {
    std::fs::read(crate::boot::BUSYBOX)
        .ok()
        .is_some_and(|b| crate::boot::is_static_elf(&b).unwrap_or(false))
}

/// libc.a in a multiarch or plain library directory (where clang -static
/// looks on Debian).
fn static_libc_present() -> bool {
    let mut dirs = vec![PathBuf::from("/usr/lib"), PathBuf::from("/usr/lib64")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path()));
    }
    dirs.iter().any(|d| d.join("libc.a").is_file())
}

/// Installs the missing ones of `needs` (with apt-get when root on Debian),
/// or stops naming them and the command to run.
pub fn ensure_host(needs: &[HostNeed]) -> Result<()> {
    let missing: Vec<&HostNeed> = needs.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what: Vec<&str> = missing.iter().map(|n| n.what).collect();
    let packages: Vec<String> = missing.iter().map(|n| n.package.to_string()).collect();
    apt_install(&packages, &what.join(", "))
}

/// [`ensure_host`] for the flows.
pub fn ensure_make() -> Result<()> {
    ensure_host(FLOW_NEEDS)
}
