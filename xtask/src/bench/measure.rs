//! Measuring commands: wall time, CPU time and peak RSS of a child process
//! and its waited-for descendants (`wait4`'s rusage).

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub wall: f64,
    /// User + system seconds of the command and its children.
    pub cpu: f64,
    /// Largest resident set of any single process in the tree, in KiB.
    pub rss_kib: u64,
}

impl Sample {
    /// Two steps run one after the other.
    pub fn then(self, other: Sample) -> Sample {
        Sample {
            wall: self.wall + other.wall,
            cpu: self.cpu + other.cpu,
            rss_kib: self.rss_kib.max(other.rss_kib),
        }
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Runs `cmd` to completion (stdout discarded unless the caller set it)
/// and measures it. A non-zero exit is an error.
pub fn measure(cmd: &mut Command) -> Result<Sample> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; the pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed().as_secs_f64();
    if r != pid {
        bail!(
            "wait4 failed for {cmd:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    // The child is reaped; dropping the handle does not wait again.
    drop(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed (wait status {status})");
    }
    Ok(Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        rss_kib: usage.ru_maxrss as u64,
    })
}

/// Runs a shell command line (for pipelines) and measures it.
pub fn measure_sh(dir: &std::path::Path, script: &str) -> Result<Sample> {
    measure(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

/// min, median, max of a list.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (s[0], median, s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_real_child() {
        let s = measure_sh(
            std::path::Path::new("/"),
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
        )
        .unwrap();
        assert!(s.wall > 0.0 && s.cpu > 0.0 && s.rss_kib > 0, "{s:?}");
        assert!(measure_sh(std::path::Path::new("/"), "exit 3").is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
    }
}
