//! POSIX `/bin/sh` word splitting and quote removal, for flag lists and
//! simple commands, and the inverse: quoting words so that `sh` gives them
//! back unchanged.
//!
//! What `sh` would *expand* — `$VAR`, `$(…)`, backticks, outside single
//! quotes — is refused with an error instead of guessed: a kernel's flags
//! never need it, and a silent difference from what make + sh would run is
//! worse than a clear stop. An unquoted `#` at the start of a word begins a
//! comment, exactly as in `sh`.

use std::borrow::Cow;
use std::fmt;

/// Why a text is not a list of words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellError {
    /// Byte offset in the text.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for ShellError {}

fn err(offset: usize, message: impl Into<String>) -> ShellError {
    ShellError {
        offset,
        message: message.into(),
    }
}

/// How a command list is separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Word,
    /// `;`, `&&`, `||`, `|`, `&` or a newline
    Separator,
}

/// Splits `text` into simple commands (at unquoted `;`, `&&`, `||`, `|`,
/// `&` and newlines), each a list of words after quote removal.
pub fn split_commands(text: &str) -> Result<Vec<Vec<String>>, ShellError> {
    let mut commands = vec![Vec::new()];
    for (tok, word) in tokens(text, true)? {
        match tok {
            Token::Word => commands.last_mut().unwrap().push(word),
            Token::Separator => {
                if !commands.last().unwrap().is_empty() {
                    commands.push(Vec::new());
                }
            }
        }
    }
    if commands.last().is_some_and(Vec::is_empty) {
        commands.pop();
    }
    Ok(commands)
}

/// Splits a flag list into words, as `sh` does for the arguments of one
/// command. Newlines count as blanks (make's `$(shell …)` turns them into
/// spaces before `sh` sees the text); a command separator is an error.
pub fn split(text: &str) -> Result<Vec<String>, ShellError> {
    let mut words = Vec::new();
    for (tok, word) in tokens(text, false)? {
        match tok {
            Token::Word => words.push(word),
            Token::Separator => {
                return Err(err(
                    0,
                    "an unquoted command separator (; & | or newline) in a word list",
                ))
            }
        }
    }
    Ok(words)
}

fn tokens(text: &str, newline_separates: bool) -> Result<Vec<(Token, String)>, ShellError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // `Some` while inside a word (possibly an empty one, as with '').
    let mut word: Option<Vec<u8>> = None;
    let finish = |word: &mut Option<Vec<u8>>, out: &mut Vec<(Token, String)>| {
        if let Some(w) = word.take() {
            // Input is &str and we only split at ASCII bytes: still UTF-8.
            out.push((Token::Word, String::from_utf8(w).expect("utf-8")));
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' => {
                finish(&mut word, &mut out);
                i += 1;
            }
            b'\n' if !newline_separates => {
                finish(&mut word, &mut out);
                i += 1;
            }
            b'\n' | b';' => {
                finish(&mut word, &mut out);
                out.push((Token::Separator, String::new()));
                i += 1;
            }
            b'&' | b'|' => {
                finish(&mut word, &mut out);
                out.push((Token::Separator, String::new()));
                i += if b.get(i + 1) == Some(&c) { 2 } else { 1 };
            }
            b'<' | b'>' | b'(' | b')' => {
                return Err(err(
                    i,
                    format!("unsupported shell operator {:?}", c as char),
                ))
            }
            b'#' if word.is_none() => {
                // A comment runs to the end of the line (to the end of the
                // text when newlines are blanks: it is all one line then).
                while i < b.len() && (b[i] != b'\n' || !newline_separates) {
                    i += 1;
                }
            }
            b'\\' => {
                i += 1;
                match b.get(i) {
                    None => {
                        // A backslash at the very end escapes nothing and
                        // disappears: what make + sh do to a recipe's
                        // trailing backslash (the oracle test proves it).
                    }
                    Some(b'\n') => i += 1, // line continuation
                    Some(&n) => {
                        word.get_or_insert_with(Vec::new).push(n);
                        i += 1;
                    }
                }
            }
            b'\'' => {
                let w = word.get_or_insert_with(Vec::new);
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated single quote")),
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&x) => {
                            w.push(x);
                            i += 1;
                        }
                    }
                }
            }
            b'"' => {
                let w = word.get_or_insert_with(Vec::new);
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated double quote")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match b.get(i + 1) {
                            Some(&n @ (b'$' | b'`' | b'"' | b'\\')) => {
                                w.push(n);
                                i += 2;
                            }
                            Some(b'\n') => i += 2,
                            _ => {
                                w.push(b'\\');
                                i += 1;
                            }
                        },
                        Some(b'$') | Some(b'`') => {
                            return Err(err(i, "a shell expansion ($ or `) inside double quotes"))
                        }
                        Some(&x) => {
                            w.push(x);
                            i += 1;
                        }
                    }
                }
            }
            b'$' | b'`' => return Err(err(i, "a shell expansion ($ or `)")),
            _ => {
                word.get_or_insert_with(Vec::new).push(c);
                i += 1;
            }
        }
    }
    finish(&mut word, &mut out);
    Ok(out)
}

fn is_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)
}

/// Quotes one word for `sh`: unchanged when nothing in it is special,
/// otherwise in single quotes (`'` written as `'\''`).
///
/// Not the `shlex` crate, on purpose: shlex (2.0) also quotes `=`, `,` and
/// `%`, so `-fthinlto-index=a.o.thinlto.bc` becomes
/// `'-fthinlto-index=a.o.thinlto.bc'`. The argv is the same, but the
/// command text thinlto-backend records must equal the one make's
/// `if_changed` records (`tests/tests/backend.rs`,
/// `natives_equal_the_reference_and_records_interoperate`, fails with
/// shlex: make rebuilds every native after us), and `--be-flags` should
/// read like the `.cmd` file's own flags (`-O2 -DX=1`, not `'-DX=1'`).
pub fn quote(word: &str) -> Cow<'_, str> {
    if !word.is_empty() && word.chars().all(is_safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', "'\\''")))
    }
}

/// Quotes every word and joins them with single spaces.
pub fn join<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    words
        .into_iter()
        .map(|w| quote(w.as_ref()).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Vec<String> {
        split(t).unwrap()
    }

    #[test]
    fn quotes_of_both_kinds() {
        assert_eq!(
            s(r#"-DNS='"FOO"' -DV=\"\" -DA="'A'""#),
            vec![r#"-DNS="FOO""#, r#"-DV="""#, "-DA='A'"]
        );
        assert_eq!(
            s(r#"-DG='"hello, world"'  -DE='' x"a b"c"#),
            vec![r#"-DG="hello, world""#, "-DE=", "xa bc"]
        );
        assert_eq!(s("'it'\\''s'"), vec!["it's"]);
        assert_eq!(s("a\\ b c\\\\d"), vec!["a b", "c\\d"]);
        assert_eq!(s("''"), vec![""]);
        assert_eq!(s("trailing\\"), vec!["trailing"]);
        assert_eq!(s(r#""a\b\$\"""#), vec![r#"a\b$""#]);
        assert_eq!(s("a #comment here\n"), vec!["a"]);
        assert_eq!(s("a#b"), vec!["a#b"]);
        assert_eq!(s("  \t "), Vec::<String>::new());
    }

    #[test]
    fn refuses_expansions_and_unterminated_quotes() {
        assert!(split("-DX=$HOME").is_err());
        assert!(split("\"$(pwd)\"").is_err());
        assert!(split("'$literal'").is_ok());
        assert_eq!(
            split("'abc").unwrap_err().message,
            "unterminated single quote"
        );
        assert!(split("\"abc").is_err());
        assert!(split("a; b").is_err());
    }

    #[test]
    fn commands_split_at_separators() {
        let c = split_commands("ld -r -o x.o  ; ./objtool --link 'x;y' && true | cat").unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c[0], vec!["ld", "-r", "-o", "x.o"]);
        assert_eq!(c[1], vec!["./objtool", "--link", "x;y"]);
    }

    #[test]
    fn quote_round_trips() {
        for w in [
            "plain-word_1.o",
            "",
            "a b",
            "it's",
            "\"q\"",
            "$x",
            "a\\b",
            "#c",
            "-DX=\"\"",
        ] {
            assert_eq!(s(&quote(w)), vec![w.to_string()], "{w}");
        }
        assert_eq!(quote("-O2"), "-O2");
        assert_eq!(join(["-DA=\"b c\"", "-O2"]), "'-DA=\"b c\"' -O2");
    }
}
