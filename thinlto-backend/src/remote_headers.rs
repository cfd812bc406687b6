//! The gRPC metadata (headers) sent with every call to a remote service:
//! the remote cache now, a remote executor later. A token on the command
//! line (`--remote-header`) is readable by every user in
//! `/proc/PID/cmdline`, so headers also come from a file
//! (`--remote-header-file`) or from the environment
//! ([`ENV_VAR`], readable only by the user), one `NAME: VALUE` or
//! `NAME=VALUE` per line.
//!
//! Order: the environment, then the files, then the flags; a later header
//! of the same name replaces an earlier one (the command line wins).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Headers from the environment, one per line as in a header file.
pub const ENV_VAR: &str = "THINLTO_REMOTE_HEADERS";

/// One header: `NAME=VALUE` or `NAME: VALUE` (the first `=` or `:`
/// decides; spaces around the name and after a colon are dropped).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let split = s.find(['=', ':']).map(|i| (&s[..i], &s[i..]));
    match split {
        Some((name, rest)) if !name.trim().is_empty() => {
            let value = match rest.strip_prefix(':') {
                Some(v) => v.trim_start(),
                None => &rest[1..],
            };
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{s:?}: expected NAME=VALUE or NAME: VALUE")),
    }
}

/// The headers of a text, one per line; blank lines and lines starting
/// with `#` are skipped. Errors name `origin:line`.
pub fn parse_lines(text: &str, origin: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match parse_header(line) {
            Ok(h) => out.push(h),
            // The line itself may be a secret: not repeated.
            Err(_) => bail!(
                "{origin}:{}: expected a header, NAME: VALUE or NAME=VALUE",
                i + 1
            ),
        }
    }
    Ok(out)
}

/// The headers of a file (see [`parse_lines`]).
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the header file", path.display()))?;
    parse_lines(&text, &path.display().to_string())
}

/// Takes [`ENV_VAR`] out of the process's environment, so that no
/// compiler (nor a wrapper, nor anything they run) inherits the secret.
/// Call it first in main, before any thread starts.
pub fn take_env() -> Option<OsString> {
    let v = std::env::var_os(ENV_VAR);
    std::env::remove_var(ENV_VAR);
    v
}

/// Every header for a remote service: `env` (the value of [`ENV_VAR`],
/// from [`take_env`]), then `files`, then `flags` (module docs).
pub fn gather(
    env: Option<&OsStr>,
    flags: &[(String, String)],
    files: &[PathBuf],
) -> Result<Vec<(String, String)>> {
    let mut out = match env.map(OsStr::to_str) {
        Some(Some(text)) => parse_lines(text, ENV_VAR)?,
        Some(None) => bail!("{ENV_VAR}: not UTF-8"),
        None => Vec::new(),
    };
    for f in files {
        out.extend(read_file(f)?);
    }
    out.extend(flags.iter().cloned());
    Ok(out)
}

/// Whether a header carries a credential: `authorization` and names that
/// say token, secret, key, password, cookie or auth.
pub fn is_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "token", "secret", "key", "password", "cookie"]
        .iter()
        .any(|w| n.contains(w))
}

/// The warning for credentials sent in the clear to `url` (a `grpc://`
/// URL), if any: anyone on the path can read and replay them.
pub fn plaintext_warning(url: &str, headers: &[(String, String)]) -> Option<String> {
    if !url.starts_with("grpc://") {
        return None;
    }
    let names: Vec<&str> = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| is_credential(n))
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "warning: the header {} goes to {url} over plaintext gRPC: anyone on the path can read \
             and replay it (use grpcs://)",
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_and_errors_by_line() {
        assert_eq!(
            parse_header("authorization: Bearer a=b").unwrap(),
            ("authorization".into(), "Bearer a=b".into())
        );
        assert_eq!(
            parse_header("x-a=b: c").unwrap(),
            ("x-a".into(), "b: c".into())
        );
        assert!(parse_header("=x").is_err());
        assert!(parse_header("no separator").is_err());
        let text = "# a comment\n\nauthorization: Bearer t\r\nx-team=kernel\n";
        assert_eq!(
            parse_lines(text, "h.txt").unwrap(),
            vec![
                ("authorization".into(), "Bearer t".into()),
                ("x-team".into(), "kernel".into())
            ]
        );
        let e = parse_lines("a: b\nBearer secret\n", "h.txt").unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("h.txt:2: "), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn credentials_in_the_clear_are_named() {
        let h = |n: &str| vec![(n.to_string(), "v".to_string())];
        let w = plaintext_warning("grpc://h:1", &h("Authorization")).unwrap();
        assert!(
            w.contains("Authorization") && w.contains("grpc://h:1"),
            "{w}"
        );
        assert!(plaintext_warning("grpc://h:1", &h("x-api-key")).is_some());
        assert!(plaintext_warning("grpcs://h:1", &h("authorization")).is_none());
        assert!(plaintext_warning("grpc://h:1", &h("x-team")).is_none());
    }
}
