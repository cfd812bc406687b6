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
//!
//! Besides the sample tree, the synthetic cases in
//! tests/fixtures/golden/synthetic/ (small assembler objects for the corner
//! cases: duplicates, data exports, bad entries, init/exit exports, COMMON
//! symbols, odd `#SYMVER` lines, no `-M`, and the pre-6.5 `__ksymtab_`
//! layout) are run through the real modpost of their version (6.12, or 6.1
//! built from Debian's `linux-source-6.1`) and modpost-ir; their golden
//! outputs include modpost's stderr and exit status.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
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

/// Installs Debian packages when root on Debian, else says what to run.
fn apt_install(packages: &[&str], missing: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/etc/debian_version").exists() {
        bail!(
            "{missing} is missing; run: sudo apt-get install -y {}",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    sh(Path::new("/"), "apt-get update -qq")?;
    sh(
        Path::new("/"),
        &format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
            packages.join(" ")
        ),
    )
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
        apt_install(PACKAGES, TARBALL)?;
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

/// modpost-ir on the same inputs; returns (symvers, export.c, stderr).
fn run_ours(bins: &flow::Bins, dir: &Path) -> Result<(Vec<u8>, Vec<u8>, String)> {
    let out = Command::new(bins.path("modpost-ir"))
        .args(["symvers", "vmlinux.o", "--objects", ".vmlinux.objs"])
        .args(["-o", "ours.symvers", "--export-c", "ours.export.c"])
        .current_dir(dir)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("modpost-ir failed in {}:\n{err}", dir.display());
    }
    Ok((
        std::fs::read(dir.join("ours.symvers"))?,
        std::fs::read(dir.join("ours.export.c"))?,
        err,
    ))
}

#[derive(Debug, Clone)]
pub struct OracleCase {
    pub name: &'static str,
    pub identical: bool,
    pub golden_identical: bool,
    /// The golden files that differed from the real modpost's output
    /// (compared before `--update` rewrote them).
    pub golden_diff: Vec<String>,
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
    crate::sample::fe::build(
        &crate::sample::fe::FeOptions {
            tree: tree.clone(),
            objects: 0,
            jobs: crate::default_jobs(),
            saved_c_flags: true,
            quiet: true,
        },
        tc,
    )?;
    let ldflags = crate::sample::tree::Tree::load(&tree)?.top.ldflags;
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
        let (symvers, export_c, real_err) = run_modpost(&modpost, &scratch)?;
        // modpost-ir reads the real front-end records: restore them.
        flow::copy_fe_tree(&tree, &scratch)?;
        std::fs::create_dir_all(scratch.join("out"))?;
        std::fs::copy(&vmlinux_o, scratch.join("vmlinux.o"))?;
        std::fs::write(scratch.join(".vmlinux.objs"), objects.join("\n") + "\n")?;
        let (ours_s, ours_c, ours_err) = run_ours(&bins, &scratch)?;
        let gdir = golden_dir().join(name);
        // Compared with the committed files first, so that `--update`
        // reports what it changes instead of comparing with its own write.
        let golden_diff = golden_differences(
            &gdir,
            &[
                ("vmlinux.symvers", Some(&symvers[..])),
                (".vmlinux.export.c", Some(&export_c[..])),
            ],
        );
        if update {
            std::fs::create_dir_all(&gdir)?;
            thinlto_index::fsutil::write_atomic(&gdir.join("vmlinux.symvers"), &symvers)?;
            thinlto_index::fsutil::write_atomic(&gdir.join(".vmlinux.export.c"), &export_c)?;
        }
        cases.push(OracleCase {
            name: if name == "inprocess" {
                "in-process vmlinux.o"
            } else {
                "distributed vmlinux.o"
            },
            identical: ours_s == symvers && ours_c == export_c && ours_err == real_err,
            golden_identical: golden_diff.is_empty(),
            golden_diff,
            exports: String::from_utf8_lossy(&symvers).lines().count(),
            zero_crcs_unpatched: zero,
        });
    }
    cases.extend(synthetic_oracle(tc, &bins, update)?);
    Ok(cases)
}

const TARBALL_61: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Builds modpost 6.1 (once) from Debian's `linux-source-6.1`, for the
/// pre-6.5 export layout. Only `scripts/mod` and two headers are
/// extracted; `elfconfig.h` and `devicetable-offsets.h` are taken from the
/// 6.12 build (x86_64 either way; the device-table offsets only matter for
/// modules' `__mod_*_device_table` symbols, never for vmlinux).
pub fn build_modpost_61() -> Result<PathBuf> {
    let base = crate::target_dir().join("oracle");
    let src = base.join("linux-source-6.1");
    let dir = src.join("scripts/mod");
    let modpost = dir.join("modpost");
    if modpost.exists() {
        return Ok(modpost);
    }
    let m612 = build_modpost()?;
    if !Path::new(TARBALL_61).exists() {
        apt_install(&["linux-source-6.1"], TARBALL_61)?;
    }
    std::fs::create_dir_all(&base)?;
    eprintln!("xtask: extracting scripts/mod of {TARBALL_61}");
    sh(
        &base,
        &format!(
            "tar xJf {TARBALL_61} linux-source-6.1/scripts/mod \
             linux-source-6.1/include/linux/license.h \
             linux-source-6.1/include/linux/mod_devicetable.h"
        ),
    )?;
    let gen = m612.parent().expect("scripts/mod");
    for h in ["elfconfig.h", "devicetable-offsets.h"] {
        std::fs::copy(gen.join(h), dir.join(h))?;
    }
    sh(
        &dir,
        "cc -O2 -o modpost modpost.c file2alias.c sumversion.c",
    )?;
    Ok(modpost)
}

/// What one modpost run left: the two files (absent when not written),
/// stderr and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub symvers: Option<Vec<u8>>,
    pub export_c: Option<Vec<u8>>,
    pub stderr: Vec<u8>,
    pub status: i32,
}

impl Outcome {
    fn collect(dir: &Path, symvers: &str, export_c: &str, out: std::process::Output) -> Outcome {
        Outcome {
            symvers: std::fs::read(dir.join(symvers)).ok(),
            export_c: std::fs::read(dir.join(export_c)).ok(),
            stderr: out.stderr,
            status: out.status.code().unwrap_or(-1),
        }
    }

    /// Reads golden outputs from `dir`.
    pub fn read(dir: &Path) -> Result<Outcome> {
        let status = std::fs::read_to_string(dir.join("status"))
            .with_context(|| format!("{}/status", dir.display()))?;
        Ok(Outcome {
            symvers: std::fs::read(dir.join("vmlinux.symvers")).ok(),
            export_c: std::fs::read(dir.join(".vmlinux.export.c")).ok(),
            stderr: std::fs::read(dir.join("stderr")).unwrap_or_default(),
            status: status.trim().parse()?,
        })
    }

    /// The files of `dir` (golden outputs) that differ from this outcome.
    pub fn differences(&self, dir: &Path) -> Vec<String> {
        let status = format!("{}\n", self.status);
        golden_differences(
            dir,
            &[
                ("vmlinux.symvers", self.symvers.as_deref()),
                (".vmlinux.export.c", self.export_c.as_deref()),
                ("stderr", Some(&self.stderr[..])),
                ("status", Some(status.as_bytes())),
            ],
        )
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        if let Some(s) = &self.symvers {
            std::fs::write(dir.join("vmlinux.symvers"), s)?;
        }
        if let Some(c) = &self.export_c {
            std::fs::write(dir.join(".vmlinux.export.c"), c)?;
        }
        std::fs::write(dir.join("stderr"), &self.stderr)?;
        std::fs::write(dir.join("status"), format!("{}\n", self.status))?;
        Ok(())
    }
}

/// The names of the files in `dir` whose content is not the expected one
/// (`None`: the file must not exist), each with what differs.
pub fn golden_differences(dir: &Path, expected: &[(&str, Option<&[u8]>)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in expected {
        let have = std::fs::read(dir.join(name)).ok();
        let what = match (have.as_deref(), *want) {
            (a, b) if a == b => continue,
            (None, Some(_)) => "missing",
            (Some(_), None) => "should not exist",
            (Some(a), Some(b)) => {
                let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
                match a.lines().zip(b.lines()).position(|(x, y)| x != y) {
                    Some(i) => {
                        out.push(format!("{name} (first difference at line {})", i + 1));
                        continue;
                    }
                    None => "differs in length",
                }
            }
            (None, None) => continue,
        };
        out.push(format!("{name} ({what})"));
    }
    out
}

/// One synthetic case: `case` names the modpost version and the arguments
/// of both programs, `in/` holds the assembler sources, `.cmd` files and
/// `.vmlinux.objs`, `out/` the real modpost's outputs.
#[derive(Debug, Clone)]
pub struct SyntheticCase {
    pub name: String,
    pub dir: PathBuf,
    /// `6.12` or `6.1`
    pub version: String,
    pub modpost_args: Vec<String>,
    pub modpost_ir_args: Vec<String>,
}

/// The cases under tests/fixtures/golden/synthetic, by name.
pub fn synthetic_cases() -> Result<Vec<SyntheticCase>> {
    let root = golden_dir().join("synthetic");
    let mut cases = Vec::new();
    for e in std::fs::read_dir(&root).with_context(|| root.display().to_string())? {
        let dir = e?.path();
        let Ok(text) = std::fs::read_to_string(dir.join("case")) else {
            continue;
        };
        let field = |k: &str| -> Result<Vec<String>> {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .ok_or_else(|| anyhow!("{}/case: no `{k}:` line", dir.display()))?;
            Ok(line.split_whitespace().map(str::to_string).collect())
        };
        cases.push(SyntheticCase {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            version: field("version")?.join(""),
            modpost_args: field("modpost")?,
            modpost_ir_args: field("modpost-ir")?,
            dir,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

/// Copies the case's inputs into `work`, assembles every `*.S` into its
/// `.o` and links the objects of `.vmlinux.objs`, in order, into
/// `vmlinux.o` (`ld.lld -r`), as kbuild would.
pub fn prepare_case(case: &SyntheticCase, work: &Path, tc: &Toolchain) -> Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    for e in std::fs::read_dir(case.dir.join("in"))? {
        let e = e?;
        std::fs::copy(e.path(), work.join(e.file_name()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".S") {
            let st = Command::new(&tc.cc.path)
                .current_dir(work)
                .args(["--target=x86_64-linux-gnu", "-c", "-o"])
                .arg(format!("{stem}.o"))
                .arg(&name)
                .status()?;
            if !st.success() {
                bail!("{}: cannot assemble {name}", case.name);
            }
        }
    }
    let objs = std::fs::read_to_string(work.join(".vmlinux.objs"))?;
    let st = Command::new(&tc.ld.path)
        .current_dir(work)
        .args(["-m", "elf_x86_64", "-r", "-o", "vmlinux.o"])
        .args(objs.lines().filter(|l| !l.is_empty()))
        .status()?;
    if !st.success() {
        bail!("{}: ld -r failed", case.name);
    }
    Ok(())
}

/// The real modpost on a prepared case (`modpost ARGS -o vmlinux.symvers vmlinux.o`).
pub fn run_real_case(modpost: &Path, case: &SyntheticCase, work: &Path) -> Result<Outcome> {
    for f in ["vmlinux.symvers", ".vmlinux.export.c"] {
        let _ = std::fs::remove_file(work.join(f));
    }
    let out = Command::new(modpost)
        .args(&case.modpost_args)
        .args(["-o", "vmlinux.symvers", "vmlinux.o"])
        .current_dir(work)
        .output()?;
    Ok(Outcome::collect(
        work,
        "vmlinux.symvers",
        ".vmlinux.export.c",
        out,
    ))
}

/// modpost-ir on a prepared case.
pub fn run_ours_case(modpost_ir: &Path, case: &SyntheticCase, work: &Path) -> Result<Outcome> {
    for f in ["ours.symvers", "ours.export.c"] {
        let _ = std::fs::remove_file(work.join(f));
    }
    let out = Command::new(modpost_ir)
        .args(["symvers", "vmlinux.o", "--objects", ".vmlinux.objs"])
        .args(["-o", "ours.symvers", "--export-c", "ours.export.c"])
        .args(&case.modpost_ir_args)
        .current_dir(work)
        .output()?;
    Ok(Outcome::collect(work, "ours.symvers", "ours.export.c", out))
}

fn synthetic_oracle(tc: &Toolchain, bins: &flow::Bins, update: bool) -> Result<Vec<OracleCase>> {
    let mut cases = Vec::new();
    for case in synthetic_cases()? {
        let modpost = match case.version.as_str() {
            "6.12" => build_modpost()?,
            "6.1" => build_modpost_61()?,
            v => bail!("{}: no modpost {v}", case.name),
        };
        let work = crate::target_dir()
            .join("oracle/synthetic")
            .join(&case.name);
        prepare_case(&case, &work, tc)?;
        let real = run_real_case(&modpost, &case, &work)?;
        let ours = run_ours_case(&bins.path("modpost-ir"), &case, &work)?;
        let gdir = case.dir.join("out");
        // Before `--update` overwrites them (see run_modpost_oracle).
        let golden_diff = real.differences(&gdir);
        if update {
            real.write(&gdir)?;
        }
        if ours != real {
            eprintln!(
                "xtask: {}: modpost-ir differs from modpost {}; outputs in {}",
                case.name,
                case.version,
                work.display()
            );
            eprintln!(
                "--- modpost stderr (status {})\n{}--- modpost-ir stderr (status {})\n{}",
                real.status,
                String::from_utf8_lossy(&real.stderr),
                ours.status,
                String::from_utf8_lossy(&ours.stderr)
            );
        }
        cases.push(OracleCase {
            name: Box::leak(format!("synthetic/{}", case.name).into_boxed_str()),
            identical: ours == real,
            golden_identical: golden_diff.is_empty(),
            golden_diff,
            exports: real
                .symvers
                .as_deref()
                .map(|s| s.iter().filter(|b| **b == b'\n').count())
                .unwrap_or(0),
            zero_crcs_unpatched: None,
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_differences_are_found_before_an_update_rewrites_them() {
        let d = tempfile::tempdir().unwrap();
        let old = Outcome {
            symvers: Some(b"0x1\ta\n".to_vec()),
            export_c: None,
            stderr: b"".to_vec(),
            status: 0,
        };
        old.write(d.path()).unwrap();
        assert_eq!(old.differences(d.path()), Vec::<String>::new());
        let new = Outcome {
            symvers: Some(b"0x2\ta\n".to_vec()),
            export_c: Some(b"x\n".to_vec()),
            stderr: b"WARNING\n".to_vec(),
            status: 1,
        };
        assert_eq!(
            new.differences(d.path()),
            vec![
                "vmlinux.symvers (first difference at line 1)",
                ".vmlinux.export.c (missing)",
                "stderr (differs in length)",
                "status (first difference at line 1)",
            ]
        );
        new.write(d.path()).unwrap();
        assert!(new.differences(d.path()).is_empty());
        assert_eq!(old.differences(d.path()).len(), 4);
        assert_eq!(
            old.differences(d.path())[1],
            ".vmlinux.export.c (should not exist)"
        );
    }
}
