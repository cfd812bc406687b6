//! The CPU time of a local farm's components, from `/proc/PID/stat`:
//! BuildGrid, PostgreSQL, the workers themselves and the compiles they
//! run (`cargo xtask bench --remote-only`).
//!
//! A process's figure is its own user + system time plus that of its
//! children it has reaped (`cutime`, `cstime`): a compile that ran and
//! ended between two samples is in its parent's figure at the second,
//! and one still running in its own. So the difference of two samples
//! over a group of long-lived processes is the CPU the group used in
//! between, whatever came and went.

use crate::farm::FarmProcesses;

/// CPU seconds by component.
#[derive(Debug, Clone, Copy, Default)]
pub struct FarmCpu {
    /// BuildGrid's processes (`bgd` and whatever it started).
    pub server: f64,
    /// The postmaster and its backends.
    pub postgres: f64,
    /// The `thinlto-backend worker` processes themselves.
    pub workers: f64,
    /// The compiles of the workers (their warm compilers and their jobs,
    /// plain spawns).
    pub compiles: f64,
}

impl FarmCpu {
    /// What was used from `before` to `self`.
    pub fn since(&self, before: &FarmCpu) -> FarmCpu {
        FarmCpu {
            server: self.server - before.server,
            postgres: self.postgres - before.postgres,
            workers: self.workers - before.workers,
            compiles: self.compiles - before.compiles,
        }
    }
}

/// One process as `/proc/PID/stat` has it.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    comm: String,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: the reaped children's.
    children: u64,
}

/// Parses a `/proc/PID/stat` line: `comm` is in parentheses and may hold
/// spaces and parentheses itself, so the fields count from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let comm = line[open + 1..close].to_string();
    let f: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        pid,
        ppid: n(1)? as u32,
        pgrp: n(2)? as u32,
        comm,
        own: n(11)? + n(12)?,
        children: n(13)? + n(14)?,
    })
}

fn all() -> Vec<Stat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|l| parse_stat(&l))
        .collect()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The farm's CPU so far, by component.
pub fn sample(farm: &FarmProcesses) -> FarmCpu {
    let hz = ticks_per_second();
    let mut ticks = [0u64; 4];
    for p in all() {
        if farm.server_groups.contains(&p.pgrp) {
            ticks[0] += p.own + p.children;
        } else if farm
            .postmaster
            .is_some_and(|pm| p.pid == pm || p.ppid == pm)
        {
            ticks[1] += p.own + p.children;
        } else if farm.worker_groups.contains(&p.pgrp) {
            // `comm` is cut at 15 bytes: "thinlto-backend" exactly. The
            // rest of a worker's group is its compilers; what a worker
            // reaped is its plain-spawned compiles.
            if p.comm == "thinlto-backend" {
                ticks[2] += p.own;
                ticks[3] += p.children;
            } else {
                ticks[3] += p.own + p.children;
            }
        }
    }
    let s = |t: u64| t as f64 / hz;
    FarmCpu {
        server: s(ticks[0]),
        postgres: s(ticks[1]),
        workers: s(ticks[2]),
        compiles: s(ticks[3]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 1 0 0 0 70 30 5 6 20 0 1 0 100 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pid: 4242,
                ppid: 1,
                pgrp: 4240,
                comm: "a (b) c".into(),
                own: 100,
                children: 11,
            })
        );
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id();
        assert!(all().iter().any(|p| p.pid == me));
    }
}
