//! `thinlto-backend --warm` with the real compiler: the warm compiler
//! (a fork server preloaded into clang) builds the same natives as plain
//! spawns, fails the same way, steps aside for a wrapper script, survives
//! its own death, and leaves no process behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use thinlto_dist_tests::*;

/// Every native object of a tree, by path.
fn natives(tree: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    walk(tree, tree, &mut v);
    v.sort();
    v
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.to_string_lossy().ends_with(".thinlto-native.o") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&p).unwrap()));
        }
    }
}

fn remove_natives(tree: &Path) {
    for (n, _) in natives(tree) {
        std::fs::remove_file(tree.join(n)).unwrap();
    }
}

/// An environment entry that marks every process of one run (the
/// backend, the warm compiler, the compiles) so that we can look for
/// leftovers in /proc.
fn marker() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "THINLTO_WARM_TEST_MARK={}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The processes whose environment holds the marker, with their names.
fn marked(mark: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            v.push(format!("{name} {}", comm.trim()));
        }
    }
    v
}

fn assert_nothing_left(mark: &str) {
    // The backend reaps the warm compiler before it exits, and the warm
    // compiler its compiles: nothing may remain, not even for a moment.
    let left = marked(mark);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// thinlto-backend -q -B --index … ARGS with the marker (and stats).
fn run(tree: &Path, cc: Option<&Path>, mark: &str, args: &[&str]) -> Output {
    let (k, v) = mark.split_once('=').unwrap();
    let mut c = tool("thinlto-backend", tree);
    c.args(["-q", "-B", "--index", "out/vmlinux.thinlto-index"])
        .args(args)
        .env(k, v)
        .env("THINLTO_WARM_STATS", "1")
        .env("XDG_CACHE_HOME", tree.join(".cache"));
    if let Some(cc) = cc {
        c.env("CC", cc);
    }
    c.output().unwrap()
}

/// (served by the warm compiler, plain) from the THINLTO_WARM_STATS line.
fn stats(out: &Output) -> (usize, usize) {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("jobs served,"))
        .unwrap_or_else(|| panic!("no stats line in:\n{err}"));
    let nums: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn warm_natives_are_byte_identical_to_plain_ones() {
    // The sample tree and 40 generated objects.
    let t = fe_tree(40, true);
    let m = thin_link(t.path());
    let jobs = m.bitcode().count();
    let mark = marker();
    let out = run(t.path(), None, &mark, &["--no-warm"]);
    ok(&out);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("jobs served,"),
        "--no-warm started a warm compiler"
    );
    let plain = natives(t.path());
    assert_eq!(plain.len(), jobs);
    remove_natives(t.path());
    // The warm compiler is the default; THINLTO_WARM=0 turns it off.
    let out = run(t.path(), None, &mark, &[]);
    ok(&out);
    assert_eq!(stats(&out), (jobs, 0), "the default is warm");
    let mut c = tool("thinlto-backend", t.path());
    let off = c
        .args(["-q", "-B", "--index", "out/vmlinux.thinlto-index"])
        .env("THINLTO_WARM", "0")
        .env("THINLTO_WARM_STATS", "1")
        .output()
        .unwrap();
    ok(&off);
    assert!(!String::from_utf8_lossy(&off.stderr).contains("jobs served,"));
    remove_natives(t.path());
    let out = run(t.path(), None, &mark, &["--warm"]);
    ok(&out);
    assert_eq!(stats(&out), (jobs, 0), "every job served warm");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("plain spawns"));
    let warm = natives(t.path());
    assert_eq!(warm.len(), plain.len());
    for ((n, a), (_, b)) in plain.iter().zip(&warm) {
        assert!(a == b, "{n}: the warm native differs from the plain one");
    }
    assert_nothing_left(&mark);
    // Up to date: no job, no warm compiler started.
    let out = tool("thinlto-backend", t.path())
        .args(["-q", "--warm", "--index", "out/vmlinux.thinlto-index"])
        .env("THINLTO_WARM_STATS", "1")
        .output()
        .unwrap();
    ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("--warm"));
}

/// stderr without the lines that differ by design (times, stats).
fn comparable(err: &[u8]) -> String {
    String::from_utf8_lossy(err)
        .lines()
        .filter(|l| !l.contains(" wall ") && !l.contains("warm compiler:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_failing_job_fails_the_same_way_warm() {
    let t = sample_tree();
    thin_link(t.path());
    // A flag clang does not know, in kernel/core.o's recorded flags.
    let cmd = t.path().join("kernel/.core.o.cmd");
    let text = std::fs::read_to_string(&cmd).unwrap();
    let text = text.replace(
        "saved_c_flags_kernel/core.o := ",
        "saved_c_flags_kernel/core.o := -fno-such-flag-for-warm ",
    );
    std::fs::write(&cmd, text).unwrap();
    let mark = marker();
    let plain = run(t.path(), None, &mark, &["-k", "--no-warm"]);
    let warm = run(t.path(), None, &mark, &["-k", "--warm"]);
    assert!(!plain.status.success());
    assert_eq!(plain.status.code(), warm.status.code());
    let err = comparable(&warm.stderr);
    assert!(err.contains("-fno-such-flag-for-warm"), "{err}");
    assert_eq!(comparable(&plain.stderr), err);
    let recs = |o: &Output| -> Vec<(String, JobStatus, String)> {
        let mut v: Vec<_> = job_records(&o.stdout)
            .into_iter()
            .map(|r| {
                let reason = if r.status == JobStatus::Failed {
                    r.reason
                } else {
                    String::new()
                };
                (r.object, r.status, reason)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(recs(&plain), recs(&warm));
    assert!(recs(&warm)
        .iter()
        .any(|r| r.1 == JobStatus::Failed && r.2.contains("exit status: 1")));
    // All ten were forked by the warm compiler, the failing one too.
    assert_eq!(stats(&warm), (10, 0));
    assert_nothing_left(&mark);
}

#[test]
fn a_wrapper_script_gets_plain_spawns() {
    let t = sample_tree();
    thin_link(t.path());
    let cc = t.path().join("clang-wrapper");
    script(
        &cc,
        &format!("#!/bin/sh\nexec {} \"$@\"\n", toolchain().cc.path.display()),
    );
    let mark = marker();
    let out = run(t.path(), Some(&cc), &mark, &["--no-warm"]);
    ok(&out);
    let plain = natives(t.path());
    remove_natives(t.path());
    let out = run(t.path(), Some(&cc), &mark, &["--warm"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.ends_with("plain spawns"))
        .collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(notes[0].contains("wrapper"), "{err}");
    assert_eq!(stats(&out), (0, 10));
    assert_eq!(natives(t.path()), plain);
    assert_nothing_left(&mark);
}

/// The pid of thinlto-backend's child that is the warm compiler.
fn zygote_of(backend: u32) -> Option<u32> {
    children_of(backend).into_iter().find(|p| {
        std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|e| {
            e.split(|b| *b == 0)
                .any(|v| v.starts_with(b"THINLTO_ZYGOTE_FD="))
        })
    })
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ppid: u32 = rest[1].parse().unwrap();
        if ppid == parent && rest[0] != "Z" {
            v.push(pid);
        }
    }
    v
}

/// The state letter of a process (R, S, T, Z…), None once it is gone.
fn state_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').next().map(str::to_string)
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Starts a warm run whose jobs run one at a time; returns it once the
/// first job is done, with the reader of its records.
fn start_warm(
    tree: &Path,
    mark: &str,
    args: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let (k, v) = mark.split_once('=').unwrap();
    let mut child = tool("thinlto-backend", tree)
        .args(["-q", "-B", "--warm", "--index", "out/vmlinux.thinlto-index"])
        .args(args)
        .env(k, v)
        .env("THINLTO_WARM_STATS", "1")
        .env("XDG_CACHE_HOME", tree.join(".cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("\"built\""), "{first}");
    (child, reader)
}

fn finish(
    mut child: std::process::Child,
    mut reader: BufReader<std::process::ChildStdout>,
) -> (Output, Vec<JobRecord>) {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    let recs = job_records(rest.as_bytes());
    (
        Output {
            status,
            stdout: rest.into_bytes(),
            stderr,
        },
        recs,
    )
}

#[test]
fn the_warm_compiler_killed_mid_run_leaves_the_rest_to_plain_spawns() {
    let t = fe_tree(30, true);
    let m = thin_link(t.path());
    let jobs = m.bitcode().count();
    let mark = marker();
    ok(&run(t.path(), None, &mark, &["--no-warm"]));
    let plain = natives(t.path());
    remove_natives(t.path());
    let (child, reader) = start_warm(t.path(), &mark, &["-j1"]);
    let zygote = zygote_of(child.id()).expect("a warm compiler runs");
    // SAFETY: SIGKILL to the warm compiler of the run we started.
    assert_eq!(unsafe { libc_kill(zygote as i32, 9) }, 0);
    let (out, recs) = finish(child, reader);
    ok(&out);
    assert_eq!(with_status(&recs, JobStatus::Built).len(), jobs - 1);
    let (served, plain_jobs) = stats(&out);
    assert!(
        served >= 1 && plain_jobs >= 1 && plain_jobs < jobs + 1,
        "{served} {plain_jobs}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("warm compiler (pid {zygote}) died")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(natives(t.path()), plain);
    assert_nothing_left(&mark);
}

#[test]
fn a_crashing_compile_fails_alone_and_sigterm_stops_the_run() {
    let t = fe_tree(30, true);
    thin_link(t.path());
    let mark = marker();
    // A compile that dies (SIGKILL from outside: a stand-in for a crash,
    // as LLVM's handlers survive a SIGSEGV that is sent rather than
    // raised) fails its job only; -k goes on with the others.
    let (child, reader) = start_warm(t.path(), &mark, &["-j1", "-k"]);
    // (A compile still running: the warm compiler keeps a finished one
    // unreaped only until the backend has taken its status.)
    let zygote = zygote_of(child.id()).expect("a warm compiler runs");
    // Stopped first, so that it is surely killed before it exits.
    loop {
        let Some(&c) = children_of(zygote).first() else {
            std::thread::yield_now();
            continue;
        };
        // SAFETY: a compile of the run we started (a zombie ignores it).
        unsafe { libc_kill(c as i32, 19) };
        let state = loop {
            match state_of(c).as_deref() {
                Some("T") => break "T",
                Some("Z") | None => break "Z",
                _ => std::thread::yield_now(),
            }
        };
        if state == "T" {
            // SAFETY: as above; stopped, it is still a running compile.
            unsafe { libc_kill(c as i32, 9) };
            break;
        }
    }
    let (out, recs) = finish(child, reader);
    assert!(!out.status.success());
    let failed = with_status(&recs, JobStatus::Failed);
    assert_eq!(failed.len(), 1, "{recs:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the compiler failed (signal: 9 (SIGKILL))"),
        "{err}"
    );
    assert!(with_status(&recs, JobStatus::Built).len() >= recs.len() - 1);
    let (served, plain_jobs) = stats(&out);
    assert_eq!(plain_jobs, 0, "the warm compiler kept serving");
    assert!(served >= recs.len());
    assert_nothing_left(&mark);
    // SIGTERM: the compiles stop, the warm compiler goes, the run dies by
    // the signal.
    let (child, reader) = start_warm(t.path(), &mark, &["-j2"]);
    // SAFETY: signalling the run we started.
    unsafe { libc_kill(child.id() as i32, 15) };
    let (out, _) = finish(child, reader);
    assert_eq!(out.status.signal(), Some(15), "{out:?}");
    assert_nothing_left(&mark);
    // SIGKILL: no cleanup in the backend, yet the warm compiler and its
    // compiles go with it (PDEATHSIG), unlike the orphans plain spawns
    // would leave.
    let (child, reader) = start_warm(t.path(), &mark, &["-j2"]);
    // SAFETY: signalling the run we started.
    unsafe { libc_kill(child.id() as i32, 9) };
    let (out, _) = finish(child, reader);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !marked(&mark).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_nothing_left(&mark);
}

#[test]
fn a_static_or_foreign_compiler_is_not_served() {
    // A "compiler" the shim cannot enter (a statically linked program):
    // the one line, then plain spawns of it.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("fake.c");
    std::fs::write(&src, "int main(void) { return 3; }\n").unwrap();
    let fake = t.path().join("fake-clang");
    // A prerequisite missing here fails the test, naming it: a passing
    // test's output is hidden by cargo test, so a skip would look like a pass.
    let built = Command::new(&toolchain().cc.path)
        .args(["-static", "-o"])
        .arg(&fake)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cannot link a static program (no static libc?): install libc6-dev (cargo xtask setup does)\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let tree = sample_tree();
    thin_link(tree.path());
    let mark = marker();
    let out = run(
        tree.path(),
        Some(&fake),
        &mark,
        &["--warm", "--only", "kernel/core.o"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not load the zygote shim"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert_eq!(stats(&out), (0, 1));
    assert_nothing_left(&mark);
    // An executable not named clang (ccache, say), even through a symlink
    // named like the compiler, is not made a warm compiler.
    let ccache = t.path().join("ccache");
    std::fs::rename(&fake, &ccache).unwrap();
    let link = t.path().join("clang-19");
    std::os::unix::fs::symlink(&ccache, &link).unwrap();
    let out = run(
        tree.path(),
        Some(&link),
        &mark,
        &["--warm", "--only", "kernel/core.o"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not clang"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.ends_with("plain spawns")).count(),
        1,
        "{err}"
    );
    assert_eq!(stats(&out), (0, 1));
    assert_nothing_left(&mark);
}
