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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_dollar_and_pound() {
        assert_eq!(escape_savedcmd("a $b #c 'd'"), "a $$b $(pound)c 'd'");
    }
}
