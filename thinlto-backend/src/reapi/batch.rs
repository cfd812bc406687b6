//! The format of a batched action: several backend compiles in one REAPI
//! action, so that a farm's server pays its price per operation once for
//! several jobs (`--remote-batch`, `crate::exec::batch`).
//!
//! The Command is runnable by ANY REAPI worker that has the compiler and
//! `/bin/sh` (Buildbarn, buildbox, ours):
//!
//! ```text
//! /bin/sh -c SCRIPT thinlto-batch --job N1 ARGV1… --job N2 ARGV2… …
//! ```
//!
//! [`SCRIPT`] is a constant text: it runs each job's argv (its `N` words)
//! in turn in the input root, and writes the job's exit status, stdout
//! and stderr to `.thinlto-batch/K.status`, `K.stdout`, `K.stderr`
//! (K counts the jobs from 0), which are declared outputs beside each
//! job's own. It exits 0 whatever the compiles did: only a malformed
//! batch (which this module never builds) makes it fail. A job's result
//! is therefore its own, and one failing compile fails that job only.
//!
//! Our worker recognizes a batch by the exact script ([`parse`]: strict,
//! a malformed batch is an error, never a guess), and runs its compiles
//! itself, in parallel, writing the same per-job files
//! (`crate::worker::batch`). Building and parsing live here together so
//! that the client and the worker cannot disagree.

use anyhow::{bail, Context, Result};

/// The shell a batch runs under on a worker that knows nothing of us.
pub const SHELL: &str = "/bin/sh";

/// `$0` of the script: names the batch in a worker's process list.
pub const NAME: &str = "thinlto-batch";

/// The word before each job's word count.
pub const JOB: &str = "--job";

/// The directory of the per-job result files, inside the input root (no
/// kbuild tree has it: its name starts with a dot).
pub const RESULTS_DIR: &str = ".thinlto-batch";

/// The script. POSIX sh: `${N}` with braces reaches past 9, `eval` of
/// `"${1}" "${2}" …` runs exactly the words given (nothing is re-split or
/// expanded twice), and `exec` in a subshell makes each compile the
/// shell's own child with its streams redirected to its files.
pub const SCRIPT: &str = r#"k=0
while [ "$#" -gt 0 ]; do
  if [ "$#" -lt 2 ] || [ "$1" != --job ]; then
    echo "thinlto-batch: job $k: expected --job N, got: $*" >&2; exit 2
  fi
  n=$2
  case $n in ''|0|*[!0-9]*) echo "thinlto-batch: job $k: bad word count: $n" >&2; exit 2;; esac
  shift 2
  if [ "$#" -lt "$n" ]; then
    echo "thinlto-batch: job $k: $n words expected, $# left" >&2; exit 2
  fi
  cmd= i=1
  while [ "$i" -le "$n" ]; do cmd="$cmd \"\${$i}\""; i=$((i + 1)); done
  o=.thinlto-batch/$k
  (eval "exec $cmd") <"/dev/null" >"$o.stdout" 2>"$o.stderr"
  echo "$?" >"$o.status"
  shift "$n"
  k=$((k + 1))
done
exit 0
"#;

/// The argv of a batch of `jobs` (each a compile's argv, non-empty).
pub fn build(jobs: &[Vec<String>]) -> Vec<String> {
    let mut argv = vec![
        SHELL.to_string(),
        "-c".to_string(),
        SCRIPT.to_string(),
        NAME.to_string(),
    ];
    for job in jobs {
        assert!(!job.is_empty(), "a batched job needs an argv");
        argv.push(JOB.to_string());
        argv.push(job.len().to_string());
        argv.extend(job.iter().cloned());
    }
    argv
}

/// The jobs' argvs if `argv` is a batch; `Ok(None)` if it is not one (it
/// does not start with [`SHELL`] `-c` [`SCRIPT`]); an error if it is one
/// but malformed: `$0` other than [`NAME`], a group not `--job N` with N
/// a plain positive decimal, fewer words than N, no job at all.
pub fn parse(argv: &[String]) -> Result<Option<Vec<Vec<String>>>> {
    if argv.len() < 3 || argv[0] != SHELL || argv[1] != "-c" || argv[2] != SCRIPT {
        return Ok(None);
    }
    match argv.get(3) {
        Some(name) if name == NAME => {}
        other => bail!("a batch's $0 must be {NAME:?}, not {other:?}"),
    }
    let mut rest = &argv[4..];
    let mut jobs = Vec::new();
    while !rest.is_empty() {
        let k = jobs.len();
        if rest[0] != JOB || rest.len() < 2 {
            bail!("batch job {k}: expected {JOB} N, got {:?}", &rest[..rest.len().min(2)]);
        }
        let n = plain_count(&rest[1]).with_context(|| format!("batch job {k}: word count"))?;
        rest = &rest[2..];
        if rest.len() < n {
            bail!("batch job {k}: {n} words expected, {} left", rest.len());
        }
        jobs.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    if jobs.is_empty() {
        bail!("a batch without jobs");
    }
    Ok(Some(jobs))
}

/// A positive decimal as the script accepts it (digits only, not 0).
fn plain_count(s: &str) -> Result<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("{s:?} is not a decimal number");
    }
    match s.parse::<usize>() {
        Ok(0) | Err(_) => bail!("{s:?} is not a word count"),
        Ok(n) => Ok(n),
    }
}

/// Job `k`'s exit status file.
pub fn status_path(k: usize) -> String {
    format!("{RESULTS_DIR}/{k}.status")
}

/// Job `k`'s stdout file.
pub fn stdout_path(k: usize) -> String {
    format!("{RESULTS_DIR}/{k}.stdout")
}

/// Job `k`'s stderr file.
pub fn stderr_path(k: usize) -> String {
    format!("{RESULTS_DIR}/{k}.stderr")
}

/// The three result files of job `k`, as declared outputs.
pub fn result_paths(k: usize) -> [String; 3] {
    [status_path(k), stdout_path(k), stderr_path(k)]
}

/// The content of a status file for `code`.
pub fn status_text(code: i32) -> String {
    format!("{code}\n")
}

/// A status file's exit code: a decimal (as `echo "$?"` writes it, so
/// 0–255), one newline. Anything else is an error.
pub fn parse_status(bytes: &[u8]) -> Result<i32> {
    let text = std::str::from_utf8(bytes).ok().and_then(|t| t.strip_suffix('\n'));
    match text {
        Some(t) if !t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit()) => {
            let code: i32 = t.parse().expect("three digits");
            if code > 255 {
                bail!("exit status {code} is out of range");
            }
            Ok(code)
        }
        _ => bail!(
            "a status file must hold an exit status and a newline, not {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn built_batches_parse_back() {
        let jobs = vec![
            words(&["clang-19", "-c", "a b.o", "-o", "--job"]),
            words(&["clang-19", "-c", "$(x) \"q\" 'y'", "-o", ""]),
            words(&["clang-19"]),
        ];
        assert_eq!(parse(&build(&jobs)).unwrap(), Some(jobs));
    }

    #[test]
    fn other_commands_are_not_batches() {
        assert_eq!(parse(&words(&["clang-19", "-c", "x.o"])).unwrap(), None);
        assert_eq!(parse(&words(&["/bin/sh", "-c", "echo hi"])).unwrap(), None);
        let mut almost = build(&[words(&["cc"])]);
        almost[2].push(' ');
        assert_eq!(parse(&almost).unwrap(), None);
    }

    #[test]
    fn malformed_batches_are_errors() {
        let good = build(&[words(&["cc", "-c"])]);
        let with = |rest: &[&str]| {
            let mut a = good[..3].to_vec();
            a.extend(words(rest));
            a
        };
        for bad in [
            with(&[]),
            with(&["sh"]),
            with(&[NAME]),
            with(&[NAME, "--job"]),
            with(&[NAME, "--job", "0"]),
            with(&[NAME, "--job", "+1", "cc"]),
            with(&[NAME, "--job", "01x", "cc"]),
            with(&[NAME, "--job", "2", "cc"]),
            with(&[NAME, "--jobs", "1", "cc"]),
            with(&[NAME, "--job", "1", "cc", "extra"]),
            with(&[NAME, "--job", "99999999999999999999999", "cc"]),
        ] {
            assert!(parse(&bad).is_err(), "{:?}", &bad[3..]);
        }
    }

    #[test]
    fn status_files_are_strict() {
        assert_eq!(parse_status(b"0\n").unwrap(), 0);
        assert_eq!(parse_status(status_text(137).as_bytes()).unwrap(), 137);
        for bad in [&b""[..], b"0", b"\n", b"-1\n", b"1 \n", b"256\n", b"0\n\n", b"1000\n"] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
    }
}
