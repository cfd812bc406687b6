//! Make's own escaping in `.cmd` files.

/// The text kbuild writes after `savedcmd_<target> := `: `$` as `$$` (so
/// make does not expand it when the file is included) and `#` as
/// `$(pound)` (so make does not take it as a comment). The shell quoting
/// kbuild adds around it (`'` as `'\''`) is removed by the shell that runs
/// `printf`, so it never reaches the file.
pub fn escape_savedcmd(cmd: &str) -> String {
    let mut out = String::with_capacity(cmd.len() + 8);
    for c in cmd.chars() {
        match c {
            '$' => out.push_str("$$"),
            '#' => out.push_str("$(pound)"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape_savedcmd`]: what make's `:=` makes of the text
/// when it includes the `.cmd` file (`$$` → `$`, `$(pound)` → `#`). Any
/// other `$` reference is kept as written: kbuild never writes one there.
pub fn unescape_savedcmd(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(pound)") {
            out.push('#');
            rest = t;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_dollar_and_pound() {
        assert_eq!(escape_savedcmd("a $b #c 'd'"), "a $$b $(pound)c 'd'");
    }

    #[test]
    fn unescape_inverts_escape() {
        for s in ["a $b #c 'd'", "$$", "$(pound)", "x$", "#$#", ""] {
            assert_eq!(unescape_savedcmd(&escape_savedcmd(s)), s);
        }
        assert_eq!(unescape_savedcmd("$(wildcard x)"), "$(wildcard x)");
    }
}
