//! The format of a batched action: several backend compiles in one REAPI
//! action, so that a farm's server pays its price per operation once for
//! several jobs (`--remote-batch`, `crate::exec::batch`).
//!
//! The Command is runnable by ANY REAPI worker that has the compiler and
//! `/bin/sh` (Buildbarn, buildbox, ours):
//!
//! ```text
//! /bin/sh -c SCRIPT thinlto-batch --job N1 ARGV1… --inputs M1 PATHS1… --job N2 …
//! ```
//!
//! [`SCRIPT`] is a constant text: it runs each job's argv (its `N` words)
//! in turn in the input root, skips the job's `M` input paths (the files
//! of the input root that are the job's own: a worker that checks each
//! compile is hermetic checks it against those, not against the union of
//! the batch), and writes the job's exit status, stdout
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

/// The word before the count of each job's input paths.
pub const INPUTS: &str = "--inputs";

/// One job of a batch: its compile's argv, and the paths of the input
/// root that are its own inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchJob {
    pub argv: Vec<String>,
    pub inputs: Vec<String>,
}

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
  if [ "$#" -lt 2 ] || [ "$1" != --inputs ]; then
    echo "thinlto-batch: job $k: expected --inputs M, got: $*" >&2; exit 2
  fi
  m=$2
  case $m in ''|*[!0-9]*) echo "thinlto-batch: job $k: bad input count: $m" >&2; exit 2;; esac
  shift 2
  if [ "$#" -lt "$m" ]; then
    echo "thinlto-batch: job $k: $m input paths expected, $# left" >&2; exit 2
  fi
  shift "$m"
  k=$((k + 1))
done
exit 0
"#;

/// The argv of a batch of `jobs` (each with a non-empty argv).
pub fn build(jobs: &[BatchJob]) -> Vec<String> {
    let mut argv = vec![
        SHELL.to_string(),
        "-c".to_string(),
        SCRIPT.to_string(),
        NAME.to_string(),
    ];
    for job in jobs {
        assert!(!job.argv.is_empty(), "a batched job needs an argv");
        argv.push(JOB.to_string());
        argv.push(job.argv.len().to_string());
        argv.extend(job.argv.iter().cloned());
        argv.push(INPUTS.to_string());
        argv.push(job.inputs.len().to_string());
        argv.extend(job.inputs.iter().cloned());
    }
    argv
}

/// The jobs if `argv` is a batch; `Ok(None)` if it is not one (it does
/// not start with [`SHELL`] `-c` [`SCRIPT`]); an error if it is one but
/// malformed: `$0` other than [`NAME`], a group not `--job N ARGV…
/// --inputs M PATHS…` with N a plain positive decimal and M a plain
/// decimal, fewer words than said, an input path that is not a plain
/// relative path, no job at all.
pub fn parse(argv: &[String]) -> Result<Option<Vec<BatchJob>>> {
    if argv.len() < 3 || argv[0] != SHELL || argv[1] != "-c" || argv[2] != SCRIPT {
        return Ok(None);
    }
    match argv.get(3) {
        Some(name) if name == NAME => {}
        other => bail!("a batch's $0 must be {NAME:?}, not {other:?}"),
    }
    let mut rest = &argv[4..];
    let mut jobs = Vec::new();
    // The `WORD COUNT ITEMS…` group at the start of `rest`, moved past.
    fn group<'a>(
        rest: &mut &'a [String],
        word: &str,
        k: usize,
        zero_ok: bool,
    ) -> Result<&'a [String]> {
        if rest.len() < 2 || rest[0] != word {
            bail!(
                "batch job {k}: expected {word} N, got {:?}",
                &rest[..rest.len().min(2)]
            );
        }
        let n = plain_count(&rest[1], zero_ok)
            .with_context(|| format!("batch job {k}: the count after {word}"))?;
        let after = &rest[2..];
        if after.len() < n {
            bail!(
                "batch job {k}: {n} words expected after {word}, {} left",
                after.len()
            );
        }
        *rest = &after[n..];
        Ok(&after[..n])
    }
    while !rest.is_empty() {
        let k = jobs.len();
        let argv = group(&mut rest, JOB, k, false)?.to_vec();
        let inputs = group(&mut rest, INPUTS, k, true)?.to_vec();
        if let Some(bad) = inputs.iter().find(|p| !plain_relative(p)) {
            bail!("batch job {k}: input {bad:?} is not a plain relative path");
        }
        jobs.push(BatchJob { argv, inputs });
    }
    if jobs.is_empty() {
        bail!("a batch without jobs");
    }
    Ok(Some(jobs))
}

/// Relative, '/'-separated, no empty, `.` or `..` component.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A count as the script accepts it (digits only; 0 only if `zero_ok`).
fn plain_count(s: &str, zero_ok: bool) -> Result<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("{s:?} is not a decimal number");
    }
    match s.parse::<usize>() {
        Ok(0) if !zero_ok => bail!("{s:?} is not a word count"),
        Ok(n) => Ok(n),
        Err(_) => bail!("{s:?} is not a word count"),
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
    let text = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.strip_suffix('\n'));
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

    fn job(argv: &[&str], inputs: &[&str]) -> BatchJob {
        BatchJob {
            argv: words(argv),
            inputs: words(inputs),
        }
    }

    #[test]
    fn built_batches_parse_back() {
        let jobs = vec![
            job(
                &["clang-19", "-c", "a b.o", "-o", "--job"],
                &["a b.o", "--inputs"],
            ),
            job(&["clang-19", "-c", "$(x) \"q\" 'y'", "-o", ""], &[]),
            job(&["clang-19"], &["d/e.o"]),
        ];
        assert_eq!(parse(&build(&jobs)).unwrap(), Some(jobs));
    }

    #[test]
    fn other_commands_are_not_batches() {
        assert_eq!(parse(&words(&["clang-19", "-c", "x.o"])).unwrap(), None);
        assert_eq!(parse(&words(&["/bin/sh", "-c", "echo hi"])).unwrap(), None);
        let mut almost = build(&[job(&["cc"], &[])]);
        almost[2].push(' ');
        assert_eq!(parse(&almost).unwrap(), None);
    }

    #[test]
    fn malformed_batches_are_errors() {
        let good = build(&[job(&["cc", "-c"], &[])]);
        let with = |rest: &[&str]| {
            let mut a = good[..3].to_vec();
            a.extend(words(rest));
            a
        };
        assert!(parse(&with(&[NAME, "--job", "1", "cc", "--inputs", "0"])).is_ok());
        for bad in [
            with(&[]),
            with(&["sh"]),
            with(&[NAME]),
            with(&[NAME, "--job"]),
            with(&[NAME, "--job", "0", "--inputs", "0"]),
            with(&[NAME, "--job", "+1", "cc", "--inputs", "0"]),
            with(&[NAME, "--job", "01x", "cc", "--inputs", "0"]),
            with(&[NAME, "--job", "2", "cc", "--inputs", "0"]),
            with(&[NAME, "--jobs", "1", "cc", "--inputs", "0"]),
            with(&[NAME, "--job", "1", "cc"]),
            with(&[NAME, "--job", "1", "cc", "--inputs"]),
            with(&[NAME, "--job", "1", "cc", "--inputs", "1"]),
            with(&[NAME, "--job", "1", "cc", "--inputs", "0", "extra"]),
            with(&[NAME, "--job", "1", "cc", "--inputs", "1", "../x"]),
            with(&[NAME, "--job", "1", "cc", "--inputs", "1", "/etc/passwd"]),
            with(&[NAME, "--job", "1", "cc", "--inputs", "1", "a//b"]),
            with(&[
                NAME,
                "--job",
                "99999999999999999999999",
                "cc",
                "--inputs",
                "0",
            ]),
        ] {
            assert!(parse(&bad).is_err(), "{:?}", &bad[3..]);
        }
    }

    #[test]
    fn status_files_are_strict() {
        assert_eq!(parse_status(b"0\n").unwrap(), 0);
        assert_eq!(parse_status(status_text(137).as_bytes()).unwrap(), 137);
        for bad in [
            &b""[..],
            b"0",
            b"\n",
            b"-1\n",
            b"1 \n",
            b"256\n",
            b"0\n\n",
            b"1000\n",
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
    }
}
