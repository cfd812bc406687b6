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

use crate::bench::measure::{measure, Sample};

/// One link to measure: `LD <ldflags> -r -o OUT --whole-archive ARCHIVE`,
/// run in `dir`.
pub struct Link {
    pub name: String,
    pub dir: PathBuf,
    pub ldflags: Vec<String>,
    pub archive: String,
    /// Given to every distributor as `--thinlto-remote-compiler-arg=`
    /// words (lld puts them at the end of `common.args`).
    pub compiler_args: Vec<String>,
}

impl Link {
    /// Linux's front-end (bitcode) archive with the flags of its own
    /// `.vmlinux.o.cmd` (the words between the linker and `-r`): `vmlinux.a`,
    /// or `built-in-fixup.a` in a tree of kbuild's DIST mode (whose
    /// `vmlinux.a` holds the natives: nothing for ThinLTO to do). `shown`
    /// names the tree in the report, as the user typed it.
    ///
    /// The compiler arguments are the objects' relocation model
    /// ([`relocation_model_flags`]): lld's `common.args` for `-r` name
    /// none (in-process, the backend takes the modules' own, static for the
    /// kernel), so clang's default (PIE, on Debian) applied and about a
    /// quarter of the jobs failed with "invalid operand for inline asm
    /// constraint 'i'".
    pub fn kernel(tree: &Path, shown: &str) -> Result<Link> {
        let cmds = crate::kernel::commands_of(&tree.join(".vmlinux.o.cmd"))?;
        let link = &cmds[0];
        let r = link
            .iter()
            .position(|w| w == "-r")
            .context(".vmlinux.o.cmd: the link has no -r")?;
        let layout = crate::kernel::detect_layout(tree)?;
        let archive = layout.fe_archive(tree);
        Ok(Link {
            name: format!("Linux `{shown}`"),
            dir: tree.to_path_buf(),
            ldflags: link[1..r].to_vec(),
            archive: archive.into(),
            compiler_args: relocation_model_flags(&backend_flags_of(tree, archive)?)?,
        })
    }
}

/// The backend flags (kbuild's `saved_c_flags_`, or the compile command)
/// of each bitcode member of `tree/archive`, from the members' `.cmd`
/// files.
fn backend_flags_of(tree: &Path, archive: &str) -> Result<Vec<(PathBuf, Vec<String>)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for m in thinlto_index::archive_members(&tree.join(archive))? {
        let object = tree.join(std::ffi::OsStr::from_bytes(&m));
        if !thinlto_index::classify(&object)?.is_bitcode() {
            continue;
        }
        let cmd_file = thinlto_cmdparse::cmd_file_for_object(&object);
        let flags = thinlto_cmdparse::CmdFile::read(&cmd_file)
            .and_then(|c| c.backend_flags())
            .with_context(|| format!("{}: no backend flags", cmd_file.display()))?;
        out.push((cmd_file, flags.argv));
    }
    if out.is_empty() {
        bail!("{}: no bitcode member", tree.join(archive).display());
    }
    Ok(out)
}

/// The relocation-model flag the objects were compiled with (the last of
/// `-fno-PIE`, `-fpic`, … in each object's flags), as the one
/// remote-compiler argument: what lld's `common.args` lack for `-r` and
/// the bitcode cannot give a remote `clang -c`, whose own option wins.
/// The rest (code model, red zone, stack alignment, retpolines, target
/// features) travels in the bitcode: with the relocation model alone, the
/// DTLTO `vmlinux.o` of Linux 6.12 had the in-process one's sections byte
/// for byte (only the order of `.llvm_addrsig`, section names and a few
/// symbols differed). Passing more (`-falign-loops=1`, a code generator
/// option in-process lld never sees) would change the code and make the
/// comparison with in-process unfair. Objects that disagree are an error.
pub fn relocation_model_flags(per_object: &[(PathBuf, Vec<String>)]) -> Result<Vec<String>> {
    const MODELS: [&str; 8] = [
        "-fpic", "-fPIC", "-fpie", "-fPIE", "-fno-pic", "-fno-PIC", "-fno-pie", "-fno-PIE",
    ];
    let mut chosen: Option<(&Path, Option<&str>)> = None;
    for (cmd_file, flags) in per_object {
        let last = flags
            .iter()
            .rev()
            .map(String::as_str)
            .find(|w| MODELS.contains(w));
        match chosen {
            None => chosen = Some((cmd_file, last)),
            Some((first, model)) if model != last => bail!(
                "{}: relocation model {} but {}: {}; a DTLTO link gives every job the same",
                cmd_file.display(),
                last.unwrap_or("(the compiler's default)"),
                first.display(),
                model.unwrap_or("(the compiler's default)")
            ),
            Some(_) => {}
        }
    }
    Ok(chosen
        .and_then(|(_, m)| m)
        .map(|m| vec![m.to_string()])
        .unwrap_or_default())
}

/// The generated tree of `objects` objects (front end by `tc`), built once
/// under `workdir`, as a link of its thin archive with its flags.
pub fn generated(tc: &Toolchain, objects: usize, jobs: usize, workdir: &Path) -> Result<Link> {
    let dir = workdir.join(format!("gen-{objects}"));
    crate::sample::fe::build(
        &crate::sample::fe::FeOptions {
            tree: dir.clone(),
            objects,
            jobs,
            saved_c_flags: false,
            quiet: true,
        },
        tc,
    )?;
    let ldflags = crate::sample::tree::Tree::load(&dir)?.top.ldflags;
    Ok(Link {
        name: format!("the generated tree ({objects} objects + the sample tree)"),
        dir,
        ldflags: ldflags.split_whitespace().map(str::to_string).collect(),
        archive: "vmlinux.a".into(),
        compiler_args: Vec::new(),
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
            link.compiler_args
                .iter()
                .map(|a| format!("--thinlto-remote-compiler-arg={a}")),
        );
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
    // The DTLTO link against the in-process one: the same global symbols.
    let globals = |w: &str| crate::flow::symbols(&out(w)).map(|(g, _)| g);
    let (inprocess, reference) = (globals("inprocess")?, globals("reference")?);
    let same_globals = if inprocess == reference {
        format!("yes ({})", inprocess.len())
    } else {
        format!(
            "NO ({} in-process only, {} DTLTO only)",
            inprocess.difference(&reference).count(),
            reference.difference(&inprocess).count()
        )
    };
    let mut s = format!(
        "{}: `ld.lld -r` of `{}`, -j{jobs}; outputs of the three DTLTO links byte-identical: {}; global symbols defined the same as in-process: {same_globals}\n\n",
        link.name,
        link.archive,
        if same { "yes" } else { "NO" }
    );
    if !link.compiler_args.is_empty() {
        s.push_str(&format!(
            "Every DTLTO link passes the objects' relocation model (from their `.cmd` files; lld's `common.args` name none for `-r`) as `--thinlto-remote-compiler-arg=`: `{}`\n\n",
            link.compiler_args.join(" ")
        ));
    }
    s.push_str("| way | wall | CPU |\n|---|---:|---:|\n");
    for (what, sample) in rows {
        s.push_str(&format!(
            "| {what} | {:.2} s | {:.2} s |\n",
            sample.wall, sample.cpu
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::relocation_model_flags;
    use std::path::PathBuf;

    fn obj(name: &str, flags: &str) -> (PathBuf, Vec<String>) {
        (name.into(), flags.split(' ').map(String::from).collect())
    }

    #[test]
    fn the_relocation_model_is_each_objects_last_and_must_agree() {
        let same = [
            obj("a", "-fPIE -mcmodel=kernel -fno-PIE -O2"),
            obj("b", "-fno-PIE -Os"),
        ];
        assert_eq!(relocation_model_flags(&same).unwrap(), ["-fno-PIE"]);
        assert!(relocation_model_flags(&[obj("a", "-O2")])
            .unwrap()
            .is_empty());
        let differ = [obj("a", "-fno-PIE"), obj("b", "-fpic")];
        let e = relocation_model_flags(&differ).unwrap_err().to_string();
        assert!(
            e.starts_with("b: relocation model -fpic but a: -fno-PIE"),
            "{e}"
        );
    }
}
