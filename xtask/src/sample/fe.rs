//! `cargo xtask fe`: the front end. Lays out the sample tree (plus generated
//! objects), compiles every object with real clang exactly as kbuild's
//! distributed ThinLTO mode does, writes kbuild's `.cmd` files, and archives
//! the objects into thin archives up to `vmlinux.a`.
//!
//! Like kbuild it is incremental: an object is recompiled only when its
//! command changed or a prerequisite is newer, and an archive is rebuilt
//! only when a member is newer or its member list changed.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use thinlto_cmdparse::make::escape_savedcmd;
use thinlto_index::fsutil::write_atomic;
use thinlto_index::{Tool, Toolchain};

use crate::sample::gen;
use crate::sample::tree::{exported_symbols, symbol_crc, Archive, Lang, Object, Tree};

/// Where the bundled sources live.
pub fn fixture_dir() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/sample-tree")
}

#[derive(Debug, Clone)]
pub struct FeOptions {
    /// The tree to build (created when missing).
    pub tree: PathBuf,
    /// Generated objects to add under `gen/` (0: the sample tree alone).
    pub objects: usize,
    pub jobs: usize,
    /// Write `saved_c_flags_` lines (kbuild's distributed mode). Without
    /// them the tree looks like any in-process ThinLTO build.
    pub saved_c_flags: bool,
    pub quiet: bool,
}

#[derive(Debug, Clone, Default)]
pub struct FeReport {
    pub objects: usize,
    pub compiled: usize,
    pub archives_written: usize,
}

/// The two programs the front end runs: the compiler and the archiver.
#[derive(Debug, Clone, Copy)]
pub struct FeTools<'a> {
    pub cc: &'a Tool,
    pub ar: &'a Tool,
}

/// Builds the front end of the tree and returns what it did.
pub fn build(opts: &FeOptions, tc: &Toolchain) -> Result<FeReport> {
    build_with(
        opts,
        FeTools {
            cc: &tc.cc,
            ar: &tc.ar,
        },
    )
}

/// [`build`] with only the compiler and the archiver resolved (what
/// `cargo xtask fe` asks for: no linker needed).
pub fn build_with(opts: &FeOptions, tc: FeTools) -> Result<FeReport> {
    prepare_dir(&opts.tree)?;
    sync_fixtures(&fixture_dir(), &opts.tree, opts.objects > 0)?;
    if opts.objects > 0 {
        gen::generate(&opts.tree, opts.objects)?;
    }
    let tree = Tree::load(&opts.tree)?;
    let compiled = compile_all(&tree, tc, opts)?;
    let mut archives_written = 0;
    for archive in &tree.archives {
        if archive_needed(&tree, archive, tc)? {
            write_archive(&tree, archive, tc, opts.quiet)?;
            archives_written += 1;
        }
    }
    Ok(FeReport {
        objects: tree.objects.len(),
        compiled,
        archives_written,
    })
}

/// Creates the tree directory and proves it is writable, with a one-line
/// error otherwise.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("tree directory {}: cannot create it: {e}", dir.display()))?;
    tempfile::tempfile_in(dir)
        .map_err(|e| anyhow::anyhow!("tree directory {} is not writable: {e}", dir.display()))?;
    Ok(())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Copies fixture files that are missing in the tree or newer than the
/// tree's copy. A file edited in the tree is newer, so it is kept: that is
/// how benchmarks and tests make incremental edits.
fn sync_fixtures(from: &Path, to: &Path, with_gen: bool) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let src_dir = from.join(&rel);
        let entries = std::fs::read_dir(&src_dir)
            .with_context(|| format!("{}: cannot read the sample tree", src_dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let src = from.join(&rel);
            let dst = to.join(&rel);
            if entry.file_type()?.is_dir() {
                std::fs::create_dir_all(&dst)
                    .with_context(|| format!("{}: cannot create", dst.display()))?;
                stack.push(rel);
                continue;
            }
            if rel == Path::new("Kbuild") {
                // The top Kbuild also lists gen/ when objects are generated.
                let mut text = std::fs::read_to_string(&src)?;
                if with_gen {
                    text.push_str("obj-y += gen/\n");
                }
                if std::fs::read_to_string(&dst).ok().as_deref() != Some(text.as_str()) {
                    write_atomic(&dst, text.as_bytes())?;
                }
                continue;
            }
            let stale = match (mtime(&src), mtime(&dst)) {
                (_, None) => true,
                (Some(s), Some(d)) => s > d,
                (None, Some(_)) => false,
            };
            if stale {
                let bytes = std::fs::read(&src)
                    .with_context(|| format!("{}: cannot read", src.display()))?;
                write_atomic(&dst, &bytes)?;
            }
        }
    }
    Ok(())
}

/// Compiles what is out of date, `opts.jobs` at a time.
fn compile_all(tree: &Tree, tc: FeTools, opts: &FeOptions) -> Result<usize> {
    let mut todo = Vec::new();
    for obj in &tree.objects {
        let cmd = obj.command(&tc.cc.spelled, &tree.top);
        if !up_to_date(tree, obj, &cmd)? {
            todo.push((obj, cmd));
        }
    }
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| loop {
                if !failures.lock().unwrap().is_empty() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((obj, cmd)) = todo.get(i) else {
                    return;
                };
                if !opts.quiet {
                    let tag = if obj.lang == Lang::C { "CC" } else { "AS" };
                    eprintln!("  {tag:<7} {}", obj.target);
                }
                if let Err(e) = compile_one(tree, obj, cmd, opts.saved_c_flags) {
                    failures.lock().unwrap().push(format!("{e:#}"));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if let Some(first) = failures.first() {
        bail!("{first}");
    }
    Ok(todo.len())
}

/// kbuild's `if_changed_rule`: same command, and no prerequisite newer
/// than the target.
fn up_to_date(tree: &Tree, obj: &Object, cmd: &str) -> Result<bool> {
    let Some(target_time) = mtime(&tree.path(&obj.target)) else {
        return Ok(false);
    };
    let Ok(text) = std::fs::read_to_string(tree.path(&obj.cmd_file())) else {
        return Ok(false);
    };
    let saved = format!("savedcmd_{} := {}", obj.target, escape_savedcmd(cmd));
    if text.lines().next() != Some(saved.as_str()) {
        return Ok(false);
    }
    let mut prereqs: Vec<String> = vec![obj.source.clone()];
    prereqs.extend(obj.extra_prereqs.iter().cloned());
    prereqs.extend(
        text.lines()
            .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("$("))
            .filter_map(|l| l.trim().strip_suffix(" \\").map(str::to_string)),
    );
    for p in prereqs {
        match mtime(&tree.path(&p)) {
            Some(t) if t <= target_time => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn compile_one(tree: &Tree, obj: &Object, cmd: &str, saved_c_flags: bool) -> Result<()> {
    if let Some(dir) = tree.path(&obj.target).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(&tree.root)
        .output()
        .with_context(|| format!("cannot run /bin/sh for {}", obj.target))?;
    if !out.status.success() {
        bail!(
            "{}: compile failed ({})\n  command: {cmd}\n{}",
            obj.target,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::io::stderr().write_all(&out.stderr).ok();
    let depfile = tree.path(&obj.depfile());
    let dep_text = std::fs::read_to_string(&depfile).with_context(|| {
        format!(
            "{}: the compiler wrote no dependency file",
            depfile.display()
        )
    })?;
    let mut text = fixdep(tree, &obj.target, cmd, &dep_text)?;
    std::fs::remove_file(&depfile).ok();
    if obj.lang == Lang::C && saved_c_flags {
        // kbuild: printf '\n%s\n' 'saved_c_flags_$@ := ...' >> $(dot-target).cmd
        text.push_str(&format!(
            "\nsaved_c_flags_{} := {}\n",
            obj.target, obj.flags
        ));
    }
    let source_text = std::fs::read_to_string(tree.path(&obj.source))?;
    for sym in exported_symbols(&source_text) {
        // genksyms' output line, appended by kbuild's gen_symversions.
        text.push_str(&format!(
            "#SYMVER {sym} 0x{:08x}\n",
            symbol_crc(&sym, &obj.source)
        ));
    }
    write_atomic(&tree.path(&obj.cmd_file()), text.as_bytes())
}

/// What kbuild's `fixdep` prints for a compiler dependency file: the saved
/// command, the source, the dependency list with one `$(wildcard …)` line
/// per CONFIG_ option first mentioned in each file, and the two rules.
fn fixdep(tree: &Tree, target: &str, cmd: &str, dep_text: &str) -> Result<String> {
    let mut out = format!("savedcmd_{target} := {}\n\n", escape_savedcmd(cmd));
    let tokens: Vec<&str> = dep_text
        .split([' ', '\\', '\n'])
        .filter(|t| !t.is_empty())
        .collect();
    let mut seen_configs = HashSet::new();
    let mut first_dep = false;
    let mut saw_source = false;
    for tok in tokens {
        if tok.ends_with(':') {
            first_dep = true;
            continue;
        }
        let ignored = ["include/generated/autoconf.h", "include/linux/kconfig.h"]
            .iter()
            .any(|s| tok.ends_with(s));
        if ignored {
            continue;
        }
        if first_dep {
            if !saw_source {
                saw_source = true;
                out.push_str(&format!("source_{target} := {tok}\n\n"));
                out.push_str(&format!("deps_{target} := \\\n"));
            }
            first_dep = false;
        } else {
            out.push_str(&format!("  {tok} \\\n"));
        }
        let text = std::fs::read(tree.path(tok))
            .with_context(|| format!("{tok}: listed in the dependency file of {target}"))?;
        for config in config_words(&text) {
            if seen_configs.insert(config.clone()) {
                out.push_str(&format!("    $(wildcard include/config/{config}) \\\n"));
            }
        }
    }
    if !saw_source {
        bail!("{target}: the dependency file names no source");
    }
    out.push_str(&format!(
        "\n{target}: $(deps_{target})\n\n$(deps_{target}):\n"
    ));
    Ok(out)
}

/// The `CONFIG_<NAME>` words of a file (a `_MODULE` suffix folded), in order.
fn config_words(text: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let pat = b"CONFIG_";
    let mut i = 0;
    while i + pat.len() <= text.len() {
        if &text[i..i + pat.len()] != pat {
            i += 1;
            continue;
        }
        let start = i + pat.len();
        let mut end = start;
        while end < text.len() && (text[end].is_ascii_alphanumeric() || text[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        if let Some(n) = name.strip_suffix(b"_MODULE") {
            name = n;
        }
        if !name.is_empty() {
            out.push(String::from_utf8_lossy(name).into_owned());
        }
        i = end.max(i + 1);
    }
    out
}

fn archive_command(ar: &str, archive: &Archive) -> String {
    format!(
        "rm -f {}; {ar} cDPrST {} {}",
        archive.path,
        archive.path,
        archive.members.join(" ")
    )
}

fn archive_cmd_file(archive: &Archive) -> String {
    match archive.path.rsplit_once('/') {
        Some((d, n)) => format!("{d}/.{n}.cmd"),
        None => format!(".{}.cmd", archive.path),
    }
}

fn archive_needed(tree: &Tree, archive: &Archive, tc: FeTools) -> Result<bool> {
    let Some(t) = mtime(&tree.path(&archive.path)) else {
        return Ok(true);
    };
    let saved = format!(
        "savedcmd_{} := {}\n",
        archive.path,
        escape_savedcmd(&archive_command(&tc.ar.spelled, archive))
    );
    if std::fs::read_to_string(tree.path(&archive_cmd_file(archive))).ok() != Some(saved) {
        return Ok(true);
    }
    Ok(archive
        .members
        .iter()
        .any(|m| mtime(&tree.path(m)).is_none_or(|mt| mt > t)))
}

fn write_archive(tree: &Tree, archive: &Archive, tc: FeTools, quiet: bool) -> Result<()> {
    if !quiet {
        eprintln!("  {:<7} {}", "AR", archive.path);
    }
    let cmd = archive_command(&tc.ar.spelled, archive);
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .current_dir(&tree.root)
        .output()?;
    if !out.status.success() {
        bail!(
            "{}: archiving failed\n  command: {cmd}\n{}",
            archive.path,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let saved = format!("savedcmd_{} := {}\n", archive.path, escape_savedcmd(&cmd));
    write_atomic(&tree.path(&archive_cmd_file(archive)), saved.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_words_fold_module_suffix() {
        assert_eq!(
            config_words(b"#if CONFIG_A_MODULE || CONFIG_B\nCONFIG_ x CONFIG_A"),
            vec!["A", "B", "A"]
        );
    }
}
