//! The kbuild-like tree: which objects exist, in which order, and the exact
//! command lines kbuild would use to compile them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::sample::kbuild::{words, KbuildFile};

/// What kind of source an object is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    C,
    Asm,
}

/// One object of `obj-y`, with everything needed to compile it.
#[derive(Debug, Clone)]
pub struct Object {
    /// The target as kbuild spells it: `arch/x86/kvm/../../../virt/kvm/kvm_main.o`.
    pub target: String,
    /// The source, spelled the same way.
    pub source: String,
    pub lang: Lang,
    /// kbuild's `_c_flags` (or `_a_flags`): the per-object flag text.
    pub flags: String,
    /// Extra prerequisites (`$(obj)/a.o: $(obj)/file`), relative to the tree.
    pub extra_prereqs: Vec<String>,
}

impl Object {
    /// `dir/.name.o` — kbuild's `$(dot-target)`.
    pub fn dot_target(&self) -> String {
        match self.target.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.{n}"),
            None => format!(".{}", self.target),
        }
    }

    pub fn depfile(&self) -> String {
        format!("{}.d", self.dot_target()).replace(',', "_")
    }

    pub fn cmd_file(&self) -> String {
        format!("{}.cmd", self.dot_target())
    }

    fn stem(&self) -> &str {
        let name = self.target.rsplit('/').next().unwrap_or(&self.target);
        name.strip_suffix(".o").unwrap_or(name)
    }

    /// The full compile command, as kbuild's recipe expands it (double
    /// spaces where kbuild has empty variables, quoting for `/bin/sh`).
    pub fn command(&self, cc: &str, top: &TopConfig) -> String {
        let modname = self.stem().replace(['-', ','], "_");
        let dir = self.target.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
        let mut cmd = format!(
            "{cc} -Wp,-MMD,{} {} {} {} ",
            self.depfile(),
            top.nostdinc,
            top.linuxinclude,
            self.flags
        );
        // `$(modkern_cflags)` is empty for built-in code: kbuild's command
        // keeps the two spaces around it.
        match self.lang {
            Lang::C => cmd.push_str(&format!(
                " -DKBUILD_MODFILE='\"{dir}/{}\"' -DKBUILD_BASENAME='\"{modname}\"' \
                 -DKBUILD_MODNAME='\"{modname}\"' -D__KBUILD_MODNAME=kmod_{modname}",
                self.stem()
            )),
            Lang::Asm => cmd.push_str(&format!(
                " -DKBUILD_MODNAME='\"{modname}\"' -D__KBUILD_MODNAME=kmod_{modname}"
            )),
        }
        cmd.push_str(&format!(" -c -o {} {}", self.target, self.source));
        cmd
    }
}

/// The top-level settings (the tree's root `Kbuild`).
#[derive(Debug, Clone)]
pub struct TopConfig {
    pub nostdinc: String,
    pub linuxinclude: String,
    pub cflags: String,
    pub aflags: String,
    pub ldflags: String,
    pub vars: BTreeMap<String, String>,
}

/// A thin archive kbuild builds: `dir/built-in.a` or the top `vmlinux.a`.
#[derive(Debug, Clone)]
pub struct Archive {
    pub path: String,
    /// Objects and sub-archives, in `obj-y` order.
    pub members: Vec<String>,
}

/// The whole tree, in kbuild's link order.
#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    pub top: TopConfig,
    pub objects: Vec<Object>,
    /// In build order: sub-directories first, `vmlinux.a` last.
    pub archives: Vec<Archive>,
}

impl Tree {
    /// Reads `root/Kbuild` and every directory it reaches through `obj-y`.
    pub fn load(root: &Path) -> Result<Tree> {
        let top_file = KbuildFile::read(&root.join("Kbuild"), &BTreeMap::new())?;
        let top = TopConfig {
            nostdinc: top_file.get("NOSTDINC_FLAGS").to_string(),
            linuxinclude: top_file.get("LINUXINCLUDE").to_string(),
            cflags: top_file.get("KBUILD_CFLAGS").to_string(),
            aflags: top_file.get("KBUILD_AFLAGS").to_string(),
            ldflags: top_file.get("KBUILD_LDFLAGS").to_string(),
            vars: top_file.vars.clone(),
        };
        let mut tree = Tree {
            root: root.to_path_buf(),
            top,
            objects: Vec::new(),
            archives: Vec::new(),
        };
        let mut top_members = Vec::new();
        for entry in words(top_file.get("obj-y")) {
            let Some(dir) = entry.strip_suffix('/') else {
                bail!(
                    "{}: top-level obj-y entries must be directories, found {entry:?}",
                    root.join("Kbuild").display()
                );
            };
            top_members.push(tree.load_dir(dir)?);
        }
        tree.archives.push(Archive {
            path: "vmlinux.a".to_string(),
            members: top_members,
        });
        Ok(tree)
    }

    /// Loads `dir/Kbuild`; returns the path of the directory's built-in.a.
    fn load_dir(&mut self, dir: &str) -> Result<String> {
        let kbuild_path = self.root.join(dir).join("Kbuild");
        let file = KbuildFile::read(&kbuild_path, &self.top.vars)?;
        for name in file.vars.keys() {
            let known = ["obj-y", "ccflags-y", "asflags-y"].contains(&name.as_str())
                || ["CFLAGS_", "CFLAGS_REMOVE_", "AFLAGS_"]
                    .iter()
                    .any(|p| name.starts_with(p));
            if !known {
                bail!("{}: unknown variable {name:?}", kbuild_path.display());
            }
        }
        let mut members = Vec::new();
        for entry in words(file.get("obj-y")) {
            if let Some(sub) = entry.strip_suffix('/') {
                members.push(self.load_dir(&format!("{dir}/{sub}"))?);
                continue;
            }
            let Some(stem) = entry.strip_suffix(".o") else {
                bail!(
                    "{}: obj-y entry {entry:?} is neither an object nor a directory",
                    kbuild_path.display()
                );
            };
            let target = format!("{dir}/{entry}");
            let base = entry.rsplit('/').next().unwrap();
            let (source, lang) = if self.root.join(format!("{dir}/{stem}.c")).is_file() {
                (format!("{dir}/{stem}.c"), Lang::C)
            } else if self.root.join(format!("{dir}/{stem}.S")).is_file() {
                (format!("{dir}/{stem}.S"), Lang::Asm)
            } else {
                bail!(
                    "{}: no source for {entry} ({dir}/{stem}.c or .S)",
                    kbuild_path.display()
                );
            };
            let flags = match lang {
                Lang::C => filter_out(
                    &[
                        self.top.cflags.as_str(),
                        file.get("ccflags-y"),
                        file.get(&format!("CFLAGS_{base}")),
                    ],
                    file.get(&format!("CFLAGS_REMOVE_{base}")),
                ),
                Lang::Asm => filter_out(
                    &[
                        self.top.aflags.as_str(),
                        file.get("asflags-y"),
                        file.get(&format!("AFLAGS_{base}")),
                    ],
                    "",
                ),
            };
            let extra_prereqs = file
                .extra_prereqs
                .get(entry)
                .map(|v| v.iter().map(|p| format!("{dir}/{p}")).collect())
                .unwrap_or_default();
            members.push(target.clone());
            self.objects.push(Object {
                target,
                source,
                lang,
                flags,
                extra_prereqs,
            });
        }
        let path = format!("{dir}/built-in.a");
        self.archives.push(Archive {
            path: path.clone(),
            members,
        });
        Ok(path)
    }

    pub fn object(&self, target: &str) -> Option<&Object> {
        self.objects.iter().find(|o| o.target == target)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// `$(filter-out REMOVE, A B C)`: make words, single-space joined.
fn filter_out(parts: &[&str], remove: &str) -> String {
    let remove: Vec<&str> = words(remove).collect();
    parts
        .iter()
        .flat_map(|p| words(p))
        .filter(|w| !remove.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Finds the names a source file exports with `EXPORT_SYMBOL*(name…)`.
pub fn exported_symbols(source_text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source_text;
    while let Some(pos) = rest.find("EXPORT_SYMBOL") {
        let after = &rest[pos + "EXPORT_SYMBOL".len()..];
        rest = after;
        let after = ["_NS_GPL", "_GPL", "_NS", ""]
            .iter()
            .find_map(|s| after.strip_prefix(s).and_then(|a| a.strip_prefix('(')));
        let Some(after) = after else { continue };
        let name: String = after
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// The `#SYMVER` CRC the front end records for an exported symbol. genksyms
/// hashes the symbol's expanded type; the sample tree only needs a stable,
/// distinct number per symbol, so it hashes the name and the source path.
pub fn symbol_crc(symbol: &str, source: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(symbol.as_bytes());
    h.update(b"\0");
    h.update(source.as_bytes());
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_out_is_word_based() {
        assert_eq!(
            filter_out(&["-O2  -flto=thin", "-DA='\"x\"'"], "-flto=thin"),
            "-O2 -DA='\"x\"'"
        );
    }

    #[test]
    fn finds_exports() {
        let src = "int a;\nEXPORT_SYMBOL(a);\nEXPORT_SYMBOL_GPL( b );\n\
                   EXPORT_SYMBOL_NS_GPL(c, NS);\n#define EXPORT_SYMBOL_X\n";
        assert_eq!(exported_symbols(src), vec!["a", "b", "c"]);
    }

    #[test]
    fn dot_target_and_depfile() {
        let o = Object {
            target: "arch/x/../../virt/kvm_main.o".into(),
            source: "arch/x/../../virt/kvm_main.c".into(),
            lang: Lang::C,
            flags: String::new(),
            extra_prereqs: vec![],
        };
        assert_eq!(o.cmd_file(), "arch/x/../../virt/.kvm_main.o.cmd");
        assert_eq!(o.depfile(), "arch/x/../../virt/.kvm_main.o.d");
    }
}
