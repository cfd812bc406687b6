//! The unused-dependency check of `cargo xtask test` (what `cargo machete`
//! does, without installing it from the network): every dependency a
//! workspace member declares must be named, as a Rust identifier (`-` read
//! as `_`), somewhere in the code that can use it.
//!
//! The manifests are read with a few line rules instead of a TOML parser:
//! they are ours, and keep one dependency a line (`name = …` or
//! `name.workspace = true`). A dependency whose library name differs from
//! its package name would need `package = …` handling; none does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A declared dependency nothing uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unused {
    /// The member's directory, relative to the workspace root.
    pub member: String,
    /// `dependencies`, `dev-dependencies` or `build-dependencies`.
    pub section: String,
    pub name: String,
}

impl std::fmt::Display for Unused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/Cargo.toml: [{}] {} is never used",
            self.member, self.section, self.name
        )
    }
}

/// The members listed in the workspace's `members = [ … ]`.
pub fn workspace_members(root: &Path) -> Result<Vec<String>> {
    let path = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let start = text
        .find("members")
        .and_then(|i| text[i..].find('[').map(|j| i + j + 1))
        .with_context(|| format!("{}: no `members = [` list", path.display()))?;
    let end = text[start..]
        .find(']')
        .with_context(|| format!("{}: `members` list never ends", path.display()))?;
    Ok(text[start..start + end]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect())
}

/// `(section, name)` of every dependency a manifest declares.
pub fn declared(manifest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if !matches!(
            section.as_str(),
            "dependencies" | "dev-dependencies" | "build-dependencies"
        ) {
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let name = key.trim().split('.').next().unwrap_or("").trim();
        if !name.is_empty() && !name.starts_with('#') {
            out.push((section.clone(), name.to_string()));
        }
    }
    out
}

/// The Rust files a dependency can be used from: `src/`, `tests/`,
/// `benches/`, `examples/` and `build.rs`.
fn rust_files(member: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for d in ["src", "tests", "benches", "examples"] {
        walk(&member.join(d), &mut out);
    }
    let build = member.join("build.rs");
    if build.is_file() {
        out.push(build);
    }
    out
}

/// The code of a Rust file without its `//` comments (a crate named only
/// in a comment is not used).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `ident` occurs in `code` as a whole identifier.
fn has_ident(code: &str, ident: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(ident).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + ident.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Every declared dependency of every workspace member that its code never
/// names, in member then manifest order.
pub fn unused_dependencies(root: &Path) -> Result<Vec<Unused>> {
    let mut out = Vec::new();
    for member in workspace_members(root)? {
        let dir = root.join(&member);
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("{}: cannot read", manifest.display()))?;
        let code: String = rust_files(&dir)
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|t| code_of(&t))
                    .with_context(|| format!("{}: cannot read", p.display()))
            })
            .collect::<Result<Vec<_>>>()?
            .join("\n");
        for (section, name) in declared(&text) {
            if !has_ident(&code, &name.replace('-', "_")) {
                out.push(Unused {
                    member: member.clone(),
                    section,
                    name,
                });
            }
        }
    }
    Ok(out)
}

/// The check as `cargo xtask test` runs it: an error listing every unused
/// dependency.
pub fn check(root: &Path) -> Result<()> {
    let unused = unused_dependencies(root)?;
    if unused.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unused.iter().map(|u| format!("  {u}")).collect();
    anyhow::bail!(
        "unused dependencies (remove them from the manifests):\n{}",
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn finds_the_unused_and_only_them() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            r,
            "Cargo.toml",
            "[workspace]\nmembers = [\n    \"a\",\n    \"b\",\n]\n\n[workspace.dependencies]\nunused-ws = \"1\"\n",
        );
        write(
            r,
            "a/Cargo.toml",
            "[package]\nname = \"a\"\n\n[dependencies]\nserde.workspace = true\nmy-lib = { path = \"../b\" }\nonly-in-comment = \"1\"\nprefix = \"1\"\n\n[dev-dependencies]\nproptest.workspace = true\n\n[build-dependencies]\ncc = \"1\"\n",
        );
        write(
            r,
            "a/src/lib.rs",
            "use serde::Serialize;\n// only_in_comment is not code\npub fn f() { my_lib::g(); prefix_longer(); }\n",
        );
        write(r, "a/tests/t.rs", "use proptest::prelude::*;\n");
        write(r, "a/build.rs", "fn main() { cc::Build::new(); }\n");
        write(
            r,
            "b/Cargo.toml",
            "[package]\nname = \"b\"\n[dependencies]\nanyhow = \"1\"\n",
        );
        write(r, "b/src/main.rs", "fn main() {}\n");
        let got: Vec<String> = unused_dependencies(r)
            .unwrap()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "a/Cargo.toml: [dependencies] only-in-comment is never used",
                "a/Cargo.toml: [dependencies] prefix is never used",
                "b/Cargo.toml: [dependencies] anyhow is never used",
            ]
        );
        let e = check(r).unwrap_err().to_string();
        assert!(e.contains("b/Cargo.toml: [dependencies] anyhow"), "{e}");
        // Used once more, the check passes.
        write(
            r,
            "a/src/more.rs",
            "fn x() { only_in_comment(); prefix(); }\n",
        );
        write(
            r,
            "b/src/main.rs",
            "fn main() -> anyhow::Result<()> { Ok(()) }\n",
        );
        check(r).unwrap();
    }

    #[test]
    fn this_workspace_has_no_unused_dependency() {
        check(&crate::workspace_root()).unwrap();
    }
}
