//! A crate's import graph, module by module, for conventions.rs's "no
//! import circle inside a crate" (issue 28): the modules are found from
//! `lib.rs` through its `mod NAME;` declarations (`#[path]` followed), and
//! a module uses another where its code names a path through it
//! (`crate::…`, `super::…`, `self::…`, braces expanded). Comments, string
//! literals and `#[cfg(test)]` modules are not read.
//!
//! A module and its own ancestors or descendants are one room (a parent
//! declares its children, children use their parent's types): only uses
//! between modules on different branches are edges, so the graph says
//! which room leans on which, as docs/architecture.md draws it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A module's path inside its crate (`["engine", "scheduler"]`); the root
/// is empty.
pub type ModPath = Vec<String>;

/// Where a use was seen first: a file and its line.
pub type Site = (PathBuf, usize);

#[derive(Debug, Default)]
pub struct ModuleGraph {
    /// Every module and the files it is made of (a `#[path]` alternative
    /// under `cfg` is the same module).
    pub modules: BTreeMap<ModPath, Vec<PathBuf>>,
    /// `from` → `to` → the first use seen.
    pub edges: BTreeMap<ModPath, BTreeMap<ModPath, Site>>,
}

/// `engine::scheduler`, or `crate` for the root.
pub fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

impl ModuleGraph {
    /// The graph of the library crate whose root is `lib_rs`.
    pub fn of_crate(lib_rs: &Path) -> ModuleGraph {
        let mut g = ModuleGraph::default();
        let mut files = Vec::new();
        collect(lib_rs, Vec::new(), &mut g.modules, &mut files);
        for (module, file) in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let code = without_test_modules(&blank_strings(&blank_comments(&text)));
            for (path, offset) in used_paths(&code, &module) {
                let Some(to) = longest_module(&g.modules, &path) else {
                    continue;
                };
                if related(&module, &to) {
                    continue;
                }
                let line = text[..offset].matches('\n').count() + 1;
                g.edges
                    .entry(module.clone())
                    .or_default()
                    .entry(to)
                    .or_insert((file.clone(), line));
            }
        }
        g
    }

    /// The same graph between top-level modules only (a use from or to a
    /// submodule counts as its top-level module's; uses inside one
    /// top-level module are dropped).
    pub fn rooms(&self) -> ModuleGraph {
        let top = |m: &ModPath| m.iter().take(1).cloned().collect::<ModPath>();
        let mut g = ModuleGraph::default();
        for (m, files) in &self.modules {
            g.modules
                .entry(top(m))
                .or_default()
                .extend(files.iter().cloned());
        }
        for (from, tos) in &self.edges {
            for (to, site) in tos {
                let (f, t) = (top(from), top(to));
                if f != t {
                    g.edges
                        .entry(f)
                        .or_default()
                        .entry(t)
                        .or_insert(site.clone());
                }
            }
        }
        g
    }

    /// The import circles: every strongly connected set of two modules or
    /// more, each as its modules in order.
    pub fn circles(&self) -> Vec<Vec<ModPath>> {
        // Tarjan's algorithm; the graphs are a few dozen modules.
        struct State<'a> {
            g: &'a ModuleGraph,
            index: BTreeMap<&'a ModPath, usize>,
            low: BTreeMap<&'a ModPath, usize>,
            stack: Vec<&'a ModPath>,
            circles: Vec<Vec<ModPath>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
            let n = s.index.len();
            s.index.insert(v, n);
            s.low.insert(v, n);
            s.stack.push(v);
            for w in s.g.edges.get(v).into_iter().flat_map(|e| e.keys()) {
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.stack.contains(&w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if s.low[v] == s.index[v] {
                let mut set = Vec::new();
                while let Some(w) = s.stack.pop() {
                    set.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    s.circles.push(set);
                }
            }
        }
        let mut s = State {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            circles: Vec::new(),
        };
        for v in self.modules.keys() {
            if !s.index.contains_key(v) {
                visit(&mut s, v);
            }
        }
        s.circles
    }

    /// The edges between the modules of `circle`, one line each with where
    /// the use is.
    pub fn describe(&self, circle: &[ModPath], root: &Path) -> String {
        let mut out = String::new();
        for from in circle {
            for (to, (file, line)) in self.edges.get(from).into_iter().flatten() {
                if circle.contains(to) {
                    let file = file.strip_prefix(root).unwrap_or(file);
                    out += &format!(
                        "  {} -> {}  ({}:{line})\n",
                        show(from),
                        show(to),
                        file.display()
                    );
                }
            }
        }
        out
    }
}

/// Whether one module contains the other (or they are the same).
fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The longest prefix of `path` that is a module; None for an item of the
/// root (a re-export, a macro) or a path that names no module.
fn longest_module(modules: &BTreeMap<ModPath, Vec<PathBuf>>, path: &[String]) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|p| modules.contains_key(p))
}

/// Walks `mod NAME;` declarations from `file`, the file of `module`.
fn collect(
    file: &Path,
    module: ModPath,
    modules: &mut BTreeMap<ModPath, Vec<PathBuf>>,
    files: &mut Vec<(ModPath, PathBuf)>,
) {
    modules
        .entry(module.clone())
        .or_default()
        .push(file.to_path_buf());
    files.push((module.clone(), file.to_path_buf()));
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let code = blank_comments(&text);
    let dir = file.parent().expect("a file has a directory");
    // Children of `a.rs` live in `a/`; of `mod.rs` and `lib.rs`, beside them.
    let child_dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => dir.to_path_buf(),
        _ => dir.join(file.file_stem().expect("a .rs file")),
    };
    for (name, path_attr) in mod_declarations(&code) {
        let child = match path_attr {
            Some(p) => dir.join(p),
            None if child_dir.join(format!("{name}.rs")).exists() => {
                child_dir.join(format!("{name}.rs"))
            }
            None => child_dir.join(&name).join("mod.rs"),
        };
        assert!(
            child.exists(),
            "{}: mod {name}: no file {}",
            file.display(),
            child.display()
        );
        let mut m = module.clone();
        m.push(name);
        collect(&child, m, modules, files);
    }
}

/// Every `mod NAME;` (not an inline `mod NAME { … }`), with the `#[path]`
/// given just before it.
fn mod_declarations(code: &str) -> Vec<(String, Option<String>)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.text != "mod" || i + 2 >= toks.len() || toks[i + 2].text != ";" {
            continue;
        }
        // `#[path = "x.rs"]` among the attributes before `pub mod`.
        let mut path = None;
        let mut j = i;
        while j > 0 && toks[j - 1].text != ";" && toks[j - 1].text != "}" && toks[j - 1].text != "{"
        {
            j -= 1;
            if toks[j].text == "path" && toks.get(j + 1).is_some_and(|t| t.text == "=") {
                path = toks
                    .get(j + 2)
                    .map(|t| t.text.trim_matches('"').to_string());
            }
        }
        out.push((toks[i + 1].text.clone(), path));
    }
    out
}

#[derive(Debug)]
struct Token {
    text: String,
    offset: usize,
}

/// Identifiers, `::`, string literals (kept whole) and single punctuation.
fn tokens(code: &str) -> Vec<Token> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            out.push(Token {
                text: code[s..i].to_string(),
                offset: s,
            });
        } else if c == b'"' {
            let s = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Token {
                text: code[s..i.min(b.len())].to_string(),
                offset: s,
            });
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Token {
                text: "::".into(),
                offset: i,
            });
            i += 2;
        } else {
            let n = code[i..].chars().next().map_or(1, char::len_utf8);
            out.push(Token {
                text: code[i..i + n].to_string(),
                offset: i,
            });
            i += n;
        }
    }
    out
}

/// Every path through `crate`, `super` or `self` in `code` (of `module`),
/// absolute, with the offset where it starts; `a::{b, c::{d}}` gives
/// `a::b` and `a::c::d`.
fn used_paths(code: &str, module: &[String]) -> Vec<(Vec<String>, usize)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i].text;
        let preceded_by_path = i > 0 && toks[i - 1].text == "::";
        let base: Option<Vec<String>> = match t.as_str() {
            "crate" | "$crate" if !preceded_by_path => Some(Vec::new()),
            "super" if !preceded_by_path => Some(module[..module.len().saturating_sub(1)].to_vec()),
            "self" if !preceded_by_path => Some(module.to_vec()),
            _ => None,
        };
        let (Some(mut base), true) = (base, toks.get(i + 1).is_some_and(|t| t.text == "::")) else {
            i += 1;
            continue;
        };
        let offset = toks[i].offset;
        i += 2;
        // `super::super::…`
        while toks.get(i).is_some_and(|t| t.text == "super")
            && toks.get(i + 1).is_some_and(|t| t.text == "::")
        {
            base.pop();
            i += 2;
        }
        i = path_tail(&toks, i, base, offset, &mut out);
    }
    out
}

/// Reads `a::b::{…}` from `toks[i]` on, appending the paths it names to
/// `out`; returns the index after it.
fn path_tail(
    toks: &[Token],
    mut i: usize,
    mut prefix: Vec<String>,
    offset: usize,
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let is_ident = |t: &Token| {
        t.text
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    };
    loop {
        match toks.get(i) {
            Some(t) if t.text == "{" => {
                i += 1;
                // A list of paths relative to `prefix`, to the matching `}`.
                loop {
                    match toks.get(i) {
                        None => return i,
                        Some(t) if t.text == "}" => return i + 1,
                        Some(t) if t.text == "," => i += 1,
                        Some(t) if t.text == "self" => {
                            out.push((prefix.clone(), offset));
                            i += 1;
                        }
                        Some(_) => i = path_tail(toks, i, prefix.clone(), offset, out),
                    }
                }
            }
            Some(t) if is_ident(t) && t.text != "as" => {
                prefix.push(t.text.clone());
                i += 1;
                if toks.get(i).is_some_and(|t| t.text == "::") {
                    i += 1;
                    continue;
                }
                // `as alias`
                if toks.get(i).is_some_and(|t| t.text == "as") {
                    i += 2;
                }
                out.push((prefix, offset));
                return i;
            }
            // `*`, or the end of the path.
            _ => {
                out.push((prefix, offset));
                return i + usize::from(toks.get(i).is_some_and(|t| t.text == "*"));
            }
        }
    }
}

/// `text` with its comments replaced by spaces (newlines kept, so offsets
/// and lines stay), string and char literals left alone.
fn blank_comments(text: &str) -> String {
    scan(text, true, false)
}

/// `code` (comments blanked) with the contents of string and char
/// literals blanked too.
fn blank_strings(code: &str) -> String {
    scan(code, false, true)
}

fn scan(text: &str, comments: bool, strings: bool) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            if comments {
                blank(&mut out, i, end);
            }
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            if comments {
                blank(&mut out, i, j);
            }
            i = j;
        } else if b[i] == b'r'
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && matches!(b.get(i + 1), Some(b'"' | b'#'))
        {
            // A raw string: r"…", r#"…"#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let start = i + 2 + hashes;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = (start..b.len())
                .find(|&j| b[j..].starts_with(&close))
                .unwrap_or(b.len());
            if strings {
                blank(&mut out, start, end);
            }
            i = end + close.len();
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            if strings {
                blank(&mut out, i + 1, j);
            }
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('"', '\'', '\u{…}') or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                (i + 2..b.len()).find(|&j| b[j] == b'\'')
            } else {
                let n = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + n) == Some(&b'\'')).then_some(i + 1 + n)
            };
            match end {
                Some(e) => {
                    if strings {
                        blank(&mut out, i + 1, e);
                    }
                    i = e + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// `code` without its `#[cfg(test)] mod NAME { … }` blocks (blanked).
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    let mut from = 0;
    while let Some(p) = out[from..].find("#[cfg(test)]").map(|p| from + p) {
        let rest = &out[p + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let open = rest.find(['{', ';']).map(|q| p + "#[cfg(test)]".len() + q);
        match open {
            Some(o) if is_mod && out.as_bytes()[o] == b'{' => {
                let mut depth = 0;
                let mut end = out.len();
                for (k, c) in out[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let blanked: String = out[p..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' })
                    .collect();
                out.replace_range(p..end, &blanked);
                from = end;
            }
            _ => from = p + 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(code: &str, module: &[&str]) -> Vec<String> {
        let m: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        used_paths(code, &m)
            .into_iter()
            .map(|(p, _)| p.join("::"))
            .collect()
    }

    #[test]
    fn paths_are_expanded_and_made_absolute() {
        assert_eq!(
            paths(
                "use crate::engine::{job::{self, B}, plan::decide as d};\nuse super::x::Y; let a = crate::cache::open();",
                &["worker", "exec"]
            ),
            [
                "engine::job",
                "engine::job::B",
                "engine::plan::decide",
                "worker::x::Y",
                "cache::open"
            ]
        );
    }

    #[test]
    fn comments_strings_and_tests_are_not_read() {
        let code = blank_strings(&blank_comments(
            "// crate::a\nlet s = \"crate::b\"; let c = '\"'; /* crate::c */ let r = r#\"crate::d\"#;\nuse crate::e;\n#[cfg(test)]\nmod tests { use crate::f; }\n",
        ));
        assert_eq!(paths(&without_test_modules(&code), &[]), ["e"]);
    }
}
