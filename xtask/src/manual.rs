//! Man pages and shell completions of the four tools, rendered from their
//! own clap definitions (each crate's `cli` module: what the binary
//! parses), so that they say what `--help` says. `cargo xtask install`
//! puts them under the prefix of the binaries (`DIR/../share`, `DIR` being
//! the bin directory), where man-db (which looks beside every PATH
//! directory: `DIR/../share/man`) and bash-completion (likewise,
//! `DIR/../share/bash-completion/completions`) find them with no setup.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The four tools' command lines, by binary name (as in [`crate::install::TOOLS`]).
pub fn commands() -> Vec<Command> {
    vec![
        thinlto_cmdparse::cli::Cli::command().name("thinlto-cmdparse"),
        thinlto_index::cli::Cli::command().name("thinlto-index"),
        thinlto_backend::cli::Cli::command().name("thinlto-backend"),
        modpost_ir::cli::Cli::command().name("modpost-ir"),
    ]
}

/// Where a shell looks for the completions of `tool`, under the prefix's
/// `share` directory.
fn completion_path(share: &Path, shell: Shell, tool: &str) -> PathBuf {
    match shell {
        Shell::Bash => share.join("bash-completion/completions").join(tool),
        Shell::Zsh => share.join("zsh/site-functions").join(format!("_{tool}")),
        Shell::Fish => share
            .join("fish/vendor_completions.d")
            .join(format!("{tool}.fish")),
        other => share.join("completions").join(format!("{tool}.{other}")),
    }
}

/// The shells completions are installed for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the man pages (`share/man/man1/TOOL.1`, one more per
/// subcommand: `TOOL-SUB.1`) and the bash, zsh and fish completions of
/// every tool under `share`, each through a temporary and a rename.
/// Returns the files written.
pub fn install(share: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for cmd in commands() {
        let tool = cmd.get_name().to_string();
        let mut root = cmd.disable_help_subcommand(true);
        root.build();
        for (name, page) in man_pages(&root)? {
            let path = share.join("man/man1").join(format!("{name}.1"));
            write_atomic(&path, &page)?;
            written.push(path);
        }
        for shell in SHELLS {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut root.clone(), &tool, &mut script);
            let path = completion_path(share, shell, &tool);
            write_atomic(&path, &script)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The pages of a built command and of its visible subcommands, each with
/// its page name (`thinlto-backend-cache-stats`).
fn man_pages(cmd: &Command) -> Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    pages.push((name, man_page(cmd)?));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.extend(man_pages(sub)?);
    }
    Ok(pages)
}

/// One page: clap_mangen's sections, with the command's examples (its
/// `after_long_help`) as an EXAMPLES section printed line for line.
fn man_page(cmd: &Command) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(examples) = cmd.get_after_long_help() {
        out.extend(examples_section(&examples.to_string()).into_bytes());
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// `after_long_help` text (`Examples (where):` then one indented command a
/// line) as roff: the heading line as text, the commands unfilled.
fn examples_section(text: &str) -> String {
    let mut lines = text.lines();
    let mut roff = String::from(".SH EXAMPLES\n");
    // The heading says where the commands run ("Examples (from the tree
    // root):"); a bare "Examples:" would only repeat the section's name.
    if let Some(head) = lines.next() {
        let head = head.trim_end_matches(':');
        if head != "Examples" {
            roff.push_str(&roff_line(head));
            roff.push('\n');
        }
    }
    roff.push_str(".PP\n.nf\n.RS 4\n");
    for l in lines {
        roff.push_str(&roff_line(l.trim()));
        roff.push('\n');
    }
    roff.push_str(".RE\n.fi\n");
    roff
}

/// A line of text as roff reads it literally: backslashes and hyphens
/// escaped (a plain `-` may print as a hyphen that does not paste as a
/// minus), and a leading `.` or `'` not a request.
fn roff_line(line: &str) -> String {
    let mut s = String::new();
    if line.starts_with(['.', '\'']) {
        s.push_str("\\&");
    }
    for c in line.chars() {
        match c {
            '\\' => s.push_str("\\e"),
            '-' => s.push_str("\\-"),
            c => s.push(c),
        }
    }
    s
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file under share/");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.install-{}",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes));
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!("{}: cannot write", path.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_unfilled_and_escaped() {
        let roff = examples_section("Examples (here):\n  a --x 'b\\c'\n  .hidden");
        assert_eq!(
            roff,
            ".SH EXAMPLES\nExamples (here)\n.PP\n.nf\n.RS 4\na \\-\\-x 'b\\ec'\n\\&.hidden\n.RE\n.fi\n"
        );
        assert!(examples_section("Examples:\n  a").starts_with(".SH EXAMPLES\n.PP\n"));
    }

    /// What `cargo xtask install` writes, found by the real man-db from
    /// PATH alone (a prefix whose path has a space), with its examples.
    #[test]
    fn man_finds_the_pages_beside_the_bin_directory_on_path() {
        let prefix = tempfile::Builder::new()
            .prefix("thinlto man.")
            .tempdir()
            .unwrap();
        let bin = prefix.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let written = install(&crate::install::share_dir(&bin)).unwrap();
        let share = prefix.path().join("share");
        for f in [
            "man/man1/thinlto-backend.1",
            "man/man1/thinlto-backend-cache-stats.1",
            "man/man1/thinlto-index-link.1",
            "bash-completion/completions/modpost-ir",
            "zsh/site-functions/_thinlto-cmdparse",
            "fish/vendor_completions.d/thinlto-backend.fish",
        ] {
            assert!(written.contains(&share.join(f)), "{f} not written");
        }
        // The man-db of a fresh machine is a prerequisite: missing, the
        // test fails naming it (cargo xtask setup installs it).
        let man = |args: &[&str]| {
            std::process::Command::new("man")
                .args(args)
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env_remove("MANPATH")
                .env("MANWIDTH", "200")
                .output()
                .unwrap_or_else(|e| panic!("man: {e}: install man-db (cargo xtask setup does)"))
        };
        let out = man(&["-w", "thinlto-backend"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            share
                .join("man/man1/thinlto-backend.1")
                .display()
                .to_string(),
            "{out:?}"
        );
        let out = man(&["-P", "cat", "thinlto-backend-wrap"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            text.contains("EXAMPLES")
                && text
                    .contains("make LLVM=-19 CC=\"thinlto-backend wrap ccache clang-19\" vmlinux"),
            "{text}"
        );
    }

    #[test]
    fn every_subcommand_has_a_page_with_examples() {
        for cmd in commands() {
            let mut root = cmd.disable_help_subcommand(true);
            root.build();
            let pages = man_pages(&root).unwrap();
            let subs = root.get_subcommands().count();
            // The tool's page, then one a subcommand (and one a
            // subcommand's subcommand: `thinlto-backend-cache-stats`).
            assert!(
                pages.len() > subs,
                "{}: {} pages",
                root.get_name(),
                pages.len()
            );
            for (name, page) in &pages[1..] {
                let page = String::from_utf8_lossy(page);
                assert!(page.contains(".SH EXAMPLES"), "{name} has no EXAMPLES");
            }
        }
    }
}
