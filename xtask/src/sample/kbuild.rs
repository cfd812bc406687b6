//! A small subset of kbuild's Makefile language, enough to describe a tree:
//! `VAR := text`, `VAR += text`, `obj-y += a.o sub/`, `$(VAR)` references to
//! variables already set, and `$(obj)/a.o: $(obj)/file` extra prerequisites.
//! Values are raw make text, kept exactly as written (quotes and
//! backslashes included): they reach `/bin/sh` later, as in kbuild.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One parsed file: variables in order of first assignment, and extra
/// prerequisites per object.
#[derive(Debug, Default, Clone)]
pub struct KbuildFile {
    pub vars: BTreeMap<String, String>,
    pub extra_prereqs: BTreeMap<String, Vec<String>>,
}

impl KbuildFile {
    pub fn read(path: &Path, inherited: &BTreeMap<String, String>) -> Result<KbuildFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(path, &text, inherited)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        inherited: &BTreeMap<String, String>,
    ) -> Result<KbuildFile> {
        let mut file = KbuildFile::default();
        for (i, raw) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), i + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("$(obj)/") {
                let (target, prereqs) = rest
                    .split_once(':')
                    .with_context(|| format!("{}: expected `$(obj)/a.o: $(obj)/file`", at()))?;
                let mut list = Vec::new();
                for p in prereqs.split_whitespace() {
                    let p = p.strip_prefix("$(obj)/").with_context(|| {
                        format!("{}: prerequisite {p:?} must start with $(obj)/", at())
                    })?;
                    list.push(p.to_string());
                }
                file.extra_prereqs
                    .entry(target.trim().to_string())
                    .or_default()
                    .extend(list);
                continue;
            }
            let (name, op, value) = if let Some((n, v)) = line.split_once("+=") {
                (n, "+=", v)
            } else if let Some((n, v)) = line.split_once(":=") {
                (n, ":=", v)
            } else {
                bail!("{}: expected `NAME := value`, `NAME += value` or `$(obj)/a.o: $(obj)/file`, found {line:?}", at());
            };
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                bail!("{}: bad variable name {name:?}", at());
            }
            let value = expand(value.trim(), &file.vars, inherited).with_context(at)?;
            match op {
                "+=" => {
                    let slot = file.vars.entry(name.to_string()).or_default();
                    if !slot.is_empty() && !value.is_empty() {
                        slot.push(' ');
                    }
                    slot.push_str(&value);
                }
                _ => {
                    file.vars.insert(name.to_string(), value);
                }
            }
        }
        Ok(file)
    }

    pub fn get(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Expands `$(VAR)`; any other `$` is refused, since the subset has no
/// other use for it.
fn expand(
    value: &str,
    local: &BTreeMap<String, String>,
    inherited: &BTreeMap<String, String>,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let Some(body) = tail.strip_prefix("$(") else {
            bail!("only $(VAR) references are supported, found {tail:?}");
        };
        let end = body
            .find(')')
            .with_context(|| format!("unterminated $( in {value:?}"))?;
        let var = &body[..end];
        let v = local
            .get(var)
            .or_else(|| inherited.get(var))
            .with_context(|| format!("$({var}) is not set"))?;
        out.push_str(v);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Make's word splitting: whitespace only, quotes mean nothing to make.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_append_and_reference() {
        let mut top = BTreeMap::new();
        top.insert("CC_FLAGS_LTO".to_string(), "-flto=thin".to_string());
        let f = KbuildFile::parse(
            Path::new("Kbuild"),
            "# c\nobj-y += a.o\nobj-y += b.o sub/\nCFLAGS_REMOVE_a.o += $(CC_FLAGS_LTO)\n\
             CFLAGS_a.o := -DX='\"y z\"'\n$(obj)/a.o: $(obj)/blob.bin\n",
            &top,
        )
        .unwrap();
        assert_eq!(f.get("obj-y"), "a.o b.o sub/");
        assert_eq!(f.get("CFLAGS_REMOVE_a.o"), "-flto=thin");
        assert_eq!(f.get("CFLAGS_a.o"), "-DX='\"y z\"'");
        assert_eq!(f.extra_prereqs["a.o"], vec!["blob.bin"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = KbuildFile::parse(Path::new("d/Kbuild"), "\nobj-y = a.o\n", &BTreeMap::new())
            .unwrap_err();
        assert!(e.to_string().starts_with("d/Kbuild:2: expected"), "{e}");
        let e = KbuildFile::parse(Path::new("d/Kbuild"), "X := $(NOPE)\n", &BTreeMap::new())
            .unwrap_err();
        assert!(format!("{e:#}").contains("d/Kbuild:1"), "{e:#}");
    }
}
