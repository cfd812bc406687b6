//! The docs' commands against the tools' `--help`, for conventions.rs's
//! "every flag the docs write exists" (issue 28): in README.md and
//! docs/*.md, every command that starts with a tool's name (`thinlto-index`,
//! `thinlto-backend`, `thinlto-cmdparse`, `modpost-ir`, `cargo xtask`), in a
//! code block or a code span, and every `--flag` it writes up to the end of
//! that command (`|`, `;`, `&`, `)`, `>`, `<`, a `#` comment, the span's
//! end). Its subcommands (`thinlto-backend cache prune`) are the words that
//! name one in the `Commands:` list of the help above them.

use std::path::{Path, PathBuf};

/// The tools whose commands the docs write, as a command starts with them.
pub const TOOLS: [&str; 5] = [
    "thinlto-index",
    "thinlto-backend",
    "thinlto-cmdparse",
    "modpost-ir",
    "cargo xtask",
];

/// One command written in a doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocCommand {
    pub file: PathBuf,
    pub line: usize,
    /// One of [`TOOLS`].
    pub tool: &'static str,
    /// The words after the tool's name, up to the end of the command.
    pub words: Vec<String>,
}

/// The documents the check reads: README.md and docs/*.md.
pub fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md")];
    if let Ok(dir) = std::fs::read_dir(root.join("docs")) {
        let mut more: Vec<PathBuf> = dir
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        more.sort();
        docs.extend(more);
    }
    docs
}

/// The code of a Markdown text: each line of a fenced block (a line ending
/// in `\` joined with the next), and each code span, with the line it
/// starts on.
pub fn code_snippets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut prose = String::new(); // the text outside fences, lines kept
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            prose.push('\n');
            continue;
        }
        if in_fence {
            prose.push('\n');
            let (start, mut joined) = pending.take().unwrap_or((n, String::new()));
            match line.strip_suffix('\\') {
                Some(head) => {
                    joined += head;
                    joined.push(' ');
                    pending = Some((start, joined));
                }
                None => {
                    joined += line;
                    out.push((start, joined));
                }
            }
        } else {
            prose += line;
            prose.push('\n');
        }
    }
    // Code spans: `…` (or ``…``), possibly across line breaks.
    let b = prose.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'`' {
            i += 1;
            continue;
        }
        let ticks = b[i..].iter().take_while(|&&c| c == b'`').count();
        let fence = "`".repeat(ticks);
        let start = i + ticks;
        match prose[start..].find(&fence) {
            Some(len) => {
                let line = prose[..i].matches('\n').count() + 1;
                out.push((line, prose[start..start + len].replace('\n', " ")));
                i = start + len + ticks;
            }
            None => i = start,
        }
    }
    out
}

/// The commands of one snippet that start with a tool's name.
pub fn commands_in(snippet: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for tool in TOOLS {
        let mut from = 0;
        while let Some(p) = snippet[from..].find(tool).map(|p| from + p) {
            from = p + tool.len();
            let before = snippet[..p].chars().next_back();
            let after = snippet[from..].chars().next();
            let starts_word = before.is_none_or(|c| c.is_whitespace() || "\"'(`".contains(c));
            let ends_word = after.is_none_or(|c| c.is_whitespace() || "\"'`".contains(c));
            if !(starts_word && ends_word) {
                continue;
            }
            // The command ends where the shell would end it; in quotes
            // (`CC="thinlto-backend wrap clang-19"`), at the closing quote.
            let rest = &snippet[from..];
            let quote = before.filter(|c| *c == '"' || *c == '\'');
            let mut end = rest.len();
            let mut prev = ' ';
            for (k, c) in rest.char_indices() {
                let stop = match c {
                    '|' => prev != '\\',
                    ';' | '&' | ')' | '>' | '<' => true,
                    '#' => prev.is_whitespace(),
                    c => Some(c) == quote,
                };
                if stop {
                    end = k;
                    break;
                }
                prev = c;
            }
            let words = rest[..end]
                .split_whitespace()
                .map(|w| w.to_string())
                .filter(|w| w != "\\|")
                .collect();
            out.push((tool, words));
        }
    }
    out
}

/// `text` with the first cell of each row of a table of `cargo xtask`
/// verbs (a table whose first heading is `verb`) spelled as a command:
/// `` `kernel --tree LINUX` `` as `` `cargo xtask kernel --tree LINUX` ``.
pub fn verbs_as_commands(text: &str) -> String {
    let mut out = String::new();
    let mut in_verbs = false;
    for line in text.lines() {
        if !line.starts_with('|') {
            in_verbs = false;
        } else if line.replace(' ', "").starts_with("|verb|") {
            in_verbs = true;
        }
        match line.strip_prefix("| `") {
            Some(rest) if in_verbs => {
                out += "| `cargo xtask ";
                out += rest;
            }
            _ => out += line,
        }
        out.push('\n');
    }
    out
}

/// Every command of the docs under `root`.
pub fn doc_commands(root: &Path) -> Vec<DocCommand> {
    let mut out = Vec::new();
    for file in documents(root) {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (line, snippet) in code_snippets(&verbs_as_commands(&text)) {
            for (tool, words) in commands_in(&snippet) {
                out.push(DocCommand {
                    file: file.clone(),
                    line,
                    tool,
                    words,
                });
            }
        }
    }
    out
}

/// The long flag a word spells (`--cache-dir=DIR` and `[--write]` give
/// `--cache-dir` and `--write`), if any.
pub fn long_flag(word: &str) -> Option<String> {
    let w = word.trim_start_matches(['[', '(', '"', '\'']);
    let name = w.strip_prefix("--")?;
    let name: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        .then(|| format!("--{name}"))
}

/// What one `--help` says: its long flags and its subcommands.
#[derive(Debug, Default, Clone)]
pub struct Help {
    pub flags: Vec<String>,
    pub subcommands: Vec<String>,
}

impl Help {
    /// Reads clap's help text: option lines start with `-`; the
    /// `Commands:` list runs to the next blank line.
    pub fn parse(text: &str) -> Help {
        let mut h = Help::default();
        let mut in_commands = false;
        for line in text.lines() {
            let t = line.trim_start();
            if line.trim_end() == "Commands:" {
                in_commands = true;
                continue;
            }
            if in_commands {
                match t.split_whitespace().next() {
                    Some(name) if line.starts_with("  ") => {
                        if name != "help" {
                            h.subcommands.push(name.to_string());
                        }
                    }
                    _ => in_commands = false,
                }
                continue;
            }
            if t.starts_with('-') {
                // The option's own part: up to the description (two spaces).
                let head = t.split("  ").next().unwrap_or(t);
                h.flags.extend(head.split([' ', ',']).filter_map(long_flag));
            }
        }
        h
    }
}

/// Flags a command writes that its tool's `--help` does not list (the
/// help of the subcommand they follow), as
/// `(flag, the help it was looked for in)`. `help(path)` gives the help of
/// `tool path… --help`, or None when that does not print a help (a
/// subcommand whose words are another program's, as `wrap`'s are).
pub fn unknown_flags(
    words: &[String],
    mut help: impl FnMut(&[String]) -> Option<Help>,
) -> Vec<(String, String)> {
    let mut path: Vec<String> = Vec::new();
    let Some(mut current) = help(&path) else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    for w in words {
        if let Some(flag) = long_flag(w) {
            // clap takes a flag after a subcommand only if that
            // subcommand has it (a global flag is listed in its help too).
            if !current.flags.contains(&flag) {
                unknown.push((flag, path.join(" ")));
            }
            continue;
        }
        let w = w.trim_matches(['[', ']', '`']);
        if current.subcommands.iter().any(|s| s == w) {
            path.push(w.to_string());
            match help(&path) {
                Some(h) => current = h,
                // Another program's words from here on.
                None => return unknown,
            }
        }
    }
    unknown
}

/// GitHub's anchor of a heading: lower case, punctuation dropped (but
/// `-` and `_`), spaces as `-`.
pub fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The relative links of a Markdown text that do not resolve: `[…](path)`
/// to a file that does not exist (relative to `dir`), or `[…](path#a)` /
/// `[…](#a)` to a heading that is not there; as `(line, link)`.
pub fn broken_links(text: &str, dir: &Path) -> Vec<(usize, String)> {
    let anchors_of = |t: &str| -> Vec<String> {
        let mut in_fence = false;
        t.lines()
            .filter(|l| {
                if l.trim_start().starts_with("```") {
                    in_fence = !in_fence;
                }
                !in_fence && l.starts_with('#')
            })
            .map(|l| anchor(l.trim_start_matches('#')))
            .collect()
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let Some(end) = after.find(')') else { break };
            let link = &after[..end];
            rest = &after[end..];
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, frag) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                None
            } else {
                Some(dir.join(path))
            };
            let ok = match &target {
                Some(t) if !t.exists() => false,
                _ if frag.is_empty() => true,
                Some(t) if t.extension().is_some_and(|e| e == "md") => {
                    anchors_of(&std::fs::read_to_string(t).unwrap_or_default())
                        .iter()
                        .any(|a| a == frag)
                }
                Some(_) => true,
                None => anchors_of(text).iter().any(|a| a == frag),
            };
            if !ok {
                out.push((n + 1, link.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_in_blocks_and_spans() {
        let text = "Run `thinlto-backend --index X\n  --cache` or:\n\n```sh\nthinlto-index link -o out \\\n    --ldflags '-m x' | head # --not-this\nmake CC=\"thinlto-backend wrap clang-19\" --x\nld.lld --thinlto-distributor=thinlto-backend\n```\n";
        let found: Vec<(usize, &str, Vec<String>)> = code_snippets(text)
            .into_iter()
            .flat_map(|(n, s)| {
                commands_in(&s)
                    .into_iter()
                    .map(move |(t, w)| (n, t, w))
                    .collect::<Vec<_>>()
            })
            .collect();
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            found,
            [
                (5, "thinlto-index", words("link -o out --ldflags '-m x'")),
                (7, "thinlto-backend", words("wrap clang-19")),
                (1, "thinlto-backend", words("--index X --cache")),
            ]
        );
    }

    #[test]
    fn links_resolve_to_files_and_headings() {
        assert_eq!(anchor("Booting it: `--boot`"), "booting-it---boot");
        assert_eq!(
            anchor("What the tools decide, and why"),
            "what-the-tools-decide-and-why"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.md"), "# A title\n## Who is trusted\n").unwrap();
        let text = "# Here\n[x](a.md) [y](a.md#who-is-trusted) [z](#here)\n[bad](b.md) [bad2](a.md#nope) [bad3](#gone) [web](https://x.org/#a)\n";
        assert_eq!(
            broken_links(text, dir.path()),
            [
                (3, "b.md".to_string()),
                (3, "a.md#nope".to_string()),
                (3, "#gone".to_string())
            ]
        );
    }

    #[test]
    fn a_table_of_verbs_is_read_as_commands() {
        let text = "| verb | what |\n|---|---|\n| `fe [--tree DIR]` | x |\n\n| `other --x` |\n";
        assert_eq!(
            verbs_as_commands(text),
            "| verb | what |\n|---|---|\n| `cargo xtask fe [--tree DIR]` | x |\n\n| `other --x` |\n"
        );
    }

    #[test]
    fn unknown_flags_follow_subcommands() {
        let top = Help::parse("Commands:\n  cache  The cache\n  wrap   A wrapper\n  help  Print\n\nOptions:\n  -j, --jobs <N>  Jobs\n      --cache\n          Long help\n");
        let cache = Help::parse("Options:\n      --max-size <SIZE>  Size\n");
        let help = |p: &[String]| match p.join(" ").as_str() {
            "" => Some(top.clone()),
            "cache" => Some(cache.clone()),
            _ => None,
        };
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert!(unknown_flags(&w("--jobs 2 [--cache] cache --max-size=2G"), help).is_empty());
        assert_eq!(
            unknown_flags(&w("cache --bogus --jobs=3"), help),
            [
                ("--bogus".to_string(), "cache".to_string()),
                ("--jobs".to_string(), "cache".to_string())
            ]
        );
        assert!(unknown_flags(&w("wrap clang-19 --anything"), help).is_empty());
    }
}
