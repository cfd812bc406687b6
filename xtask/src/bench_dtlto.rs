//! `cargo xtask bench --dtlto-only`: one `ld.lld -r` link of a thin
//! archive (the generated tree's `vmlinux.a`, and with `--kernel` Linux's)
//! three ways: lld's in-process ThinLTO, DTLTO with the reference
//! distributor (each job's `common.args + job.args`, one after another, as
//! LLVM's local.py) and DTLTO with `thinlto-backend dtlto` (cold and warm
//! cache). Needs LLVM ≥ 21 (DTLTO); the caller passes the toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use thinlto_index::Toolchain;

use crate::measure::{measure, Sample};

/// One link to measure: `LD <ldflags> -r -o OUT --whole-archive ARCHIVE`,
/// run in `dir`.
pub struct Link {
    pub name: String,
    pub dir: PathBuf,
    pub ldflags: Vec<String>,
    pub archive: String,
}

impl Link {
    /// Linux's front-end (bitcode) archive with the flags of its own
    /// `.vmlinux.o.cmd` (the words between the linker and `-r`): `vmlinux.a`,
    /// or `built-in-fixup.a` in a tree of kbuild's DIST mode (whose
    /// `vmlinux.a` holds the natives: nothing for ThinLTO to do). `shown`
    /// names the tree in the report, as the user typed it.
    pub fn kernel(tree: &Path, shown: &str) -> Result<Link> {
        let cmds = crate::kernel::commands_of(&tree.join(".vmlinux.o.cmd"))?;
        let link = &cmds[0];
        let r = link
            .iter()
            .position(|w| w == "-r")
            .context(".vmlinux.o.cmd: the link has no -r")?;
        let layout = crate::kernel::detect_layout(tree)?;
        Ok(Link {
            name: format!("Linux `{shown}`"),
            dir: tree.to_path_buf(),
            ldflags: link[1..r].to_vec(),
            archive: layout.fe_archive(tree).into(),
        })
    }
}

/// The generated tree of `objects` objects (front end by `tc`), built once
/// under `workdir`, as a link of its thin archive with its flags.
pub fn generated(tc: &Toolchain, objects: usize, jobs: usize, workdir: &Path) -> Result<Link> {
    let dir = workdir.join(format!("gen-{objects}"));
    crate::fe::build(
        &crate::fe::FeOptions {
            tree: dir.clone(),
            objects,
            jobs,
            saved_c_flags: false,
            quiet: true,
        },
        tc,
    )?;
    let ldflags = crate::tree::Tree::load(&dir)?.top.ldflags;
    Ok(Link {
        name: format!("the generated tree ({objects} objects + the sample tree)"),
        dir,
        ldflags: ldflags.split_whitespace().map(str::to_string).collect(),
        archive: "vmlinux.a".into(),
    })
}

/// The three ways (four rows) for `link`, as markdown rows.
/// `ours`: the `thinlto-backend` binary (release).
pub fn bench(
    tc: &Toolchain,
    ours: &Path,
    link: &Link,
    jobs: usize,
    workdir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(workdir)?;
    let workdir = std::path::absolute(workdir)?;
    let reference = workdir.join("reference-distributor.py");
    std::fs::write(
        &reference,
        "#!/usr/bin/env python3\nimport json, subprocess, sys\n\
         d = json.load(open(sys.argv[-1]))\n\
         for j in d['jobs']:\n    subprocess.run(d['common']['args'] + j['args'], check=True)\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&reference, std::fs::Permissions::from_mode(0o755))?;
    let cache = workdir.join("dtlto-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let out = |what: &str| workdir.join(format!("{what}.o"));
    let run = |what: &str, extra: Vec<String>| -> Result<Sample> {
        let mut c = Command::new(&tc.ld.path);
        c.current_dir(&link.dir)
            .env_remove("MAKEFLAGS")
            .args(&link.ldflags)
            .arg("-r")
            .arg("-o")
            .arg(out(what))
            .args(["--whole-archive", &link.archive, "--no-whole-archive"])
            .args(extra);
        let s = measure(&mut c)?;
        if !out(what).is_file() {
            bail!("{what}: the link wrote no {}", out(what).display());
        }
        Ok(s)
    };
    let remote_compiler = format!("--thinlto-remote-compiler={}", tc.cc.path.display());
    let dist = |prog: &Path, args: &[String]| -> Vec<String> {
        let mut v = vec![
            format!("--thinlto-distributor={}", prog.display()),
            remote_compiler.clone(),
        ];
        v.extend(
            args.iter()
                .map(|a| format!("--thinlto-distributor-arg={a}")),
        );
        v
    };
    let ours_args = vec![
        "dtlto".to_string(),
        format!("-j{jobs}"),
        format!("--cache-dir={}", cache.display()),
    ];
    let rows = [
        (
            "in-process ThinLTO",
            run("inprocess", vec![format!("--thinlto-jobs={jobs}")])?,
        ),
        (
            "DTLTO, reference distributor (one job at a time)",
            run("reference", dist(&reference, &[]))?,
        ),
        (
            "DTLTO, thinlto-backend dtlto, cold cache",
            run("ours-cold", dist(ours, &ours_args))?,
        ),
        (
            "DTLTO, thinlto-backend dtlto, warm cache",
            run("ours-warm", dist(ours, &ours_args))?,
        ),
    ];
    let same = ["reference", "ours-cold", "ours-warm"]
        .iter()
        .map(|w| std::fs::read(out(w)))
        .collect::<std::io::Result<Vec<_>>>()?
        .windows(2)
        .all(|w| w[0] == w[1]);
    let mut s = format!(
        "{}: `ld.lld -r` of `{}`, -j{jobs}; outputs of the three DTLTO links byte-identical: {}\n\n| way | wall | CPU |\n|---|---:|---:|\n",
        link.name,
        link.archive,
        if same { "yes" } else { "NO" }
    );
    for (what, sample) in rows {
        s.push_str(&format!(
            "| {what} | {:.2} s | {:.2} s |\n",
            sample.wall, sample.cpu
        ));
    }
    Ok(s)
}
