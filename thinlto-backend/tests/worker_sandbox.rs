//! The worker's sandbox as a wall: a compile that does whatever it likes
//! (here `/bin/sh -c SCRIPT` stands for a compiler an action subverted,
//! past the policy) sees only its input root and the system's read-only
//! files, runs as another uid, cannot write outside its root, cannot see
//! the blob store or the other actions, and is killed at its deadline;
//! its output is capped. Both ways a worker runs a compile: a plain spawn
//! under bwrap, and a job of the warm compiler (a zygote of `sh` here)
//! that enters the same sandbox itself.
//!
//! Skipped (said on stderr) without bwrap or when not root: the uid
//! switch needs root, which is how the worker runs in CI.

#![cfg(feature = "remote")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinlto_backend::worker::compilers::Compiler;
use thinlto_backend::worker::policy::ValidCompile;
use thinlto_backend::worker::sandbox::{run_compile, Limits, Sandbox, SandboxArgs};
use thinlto_backend::worker::stop::Stop;

fn runnable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let bwrap = Path::new("/usr/bin/bwrap").exists();
    if !(root && bwrap) {
        eprintln!(
            "SKIPPED: the sandbox tests need root and /usr/bin/bwrap (apt-get install bubblewrap)"
        );
    }
    root && bwrap
}

/// `/bin/sh` as a "compiler": a copy named clang-sh (the warm compiler
/// serves only a program named clang), in a directory of its own that
/// the sandbox shows as the compiler's installation.
fn sh() -> (tempfile::TempDir, Compiler) {
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = bin.join("clang-sh");
    std::fs::copy(std::fs::canonicalize("/bin/sh").unwrap(), &exe).unwrap();
    let c = Compiler {
        word: exe.to_string_lossy().into_owned(),
        exe,
        identity: "test".into(),
        prefix: bin,
        libraries: Default::default(),
    };
    (t, c)
}

fn args() -> SandboxArgs {
    SandboxArgs {
        no_sandbox: false,
        sandbox_id: 65534,
        memory_limit: 4096,
    }
}

/// A worker's work directory: the store with a secret blob, a neighbour
/// action with a file, and an action directory with its root.
struct Work {
    _t: tempfile::TempDir,
    work: PathBuf,
    dir: PathBuf,
    root: PathBuf,
}

fn work() -> Work {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().to_path_buf();
    // As the worker makes its work directory (`worker::main`).
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::create_dir_all(work.join("blobs")).unwrap();
    std::fs::write(work.join("blobs/secret"), "the store").unwrap();
    std::fs::set_permissions(
        work.join("blobs/secret"),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    std::fs::create_dir_all(work.join("action-2/root")).unwrap();
    std::fs::write(work.join("action-2/root/theirs.o"), "another tenant").unwrap();
    let dir = work.join("action-1");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("kernel")).unwrap();
    std::fs::write(root.join("kernel/in.o"), "input").unwrap();
    Work {
        _t: t,
        work,
        dir,
        root,
    }
}

fn compile<'a>(c: &'a Compiler, script: &str) -> ValidCompile<'a> {
    ValidCompile {
        compiler: c,
        argv: vec![c.word.clone(), "-c".into(), script.into()],
        env: vec![],
        object: "kernel/in.o".into(),
        summary: "kernel/in.o".into(),
        native: "kernel/out.o".into(),
    }
}

fn each_way(c: &Compiler, test: impl Fn(&str)) {
    // Plain spawns under bwrap first, then jobs of a warm `sh`.
    test("plain");
    let guard = thinlto_backend::warm::Warm::start(&c.word, true);
    test("warm");
    drop(guard);
}

#[test]
fn a_subverted_compile_stays_in_its_sandbox() {
    if !runnable() {
        return;
    }
    let (_t, c) = sh();
    let c = [c];
    let sandbox = Sandbox::new(&args(), &c).unwrap();
    each_way(&c[0], |how| {
        let w = work();
        sandbox.prepare(&w.dir, &w.root).unwrap();
        let work = w.work.display();
        let script = format!(
            "PATH=/usr/bin:/bin; id -u; id -g; cat kernel/in.o; echo; \
             ls -a .. ../.. {work} 2>/dev/null | grep -e blobs -e action-2 && echo SAW-OTHERS; \
             cat {work}/blobs/secret 2>/dev/null && echo READ-STORE; \
             cat {work}/action-2/root/theirs.o 2>/dev/null && echo READ-NEIGHBOUR; \
             echo x > {work}/escape 2>/dev/null; \
             echo x > kernel/in.o 2>/dev/null && echo WROTE-INPUT; \
             chmod 666 kernel/in.o 2>/dev/null && echo CHMOD-INPUT; \
             echo x > /usr/escape 2>/dev/null && echo WROTE-USR; \
             ls /root >/dev/null 2>&1 && echo SAW-HOME; \
             echo native > kernel/out.o"
        );
        // The input is the worker's, read-only (a link into the store
        // would be the same).
        std::fs::set_permissions(
            w.root.join("kernel/in.o"),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        let limits = Limits::new(&args(), None);
        let out = run_compile(
            &compile(&c[0], &script),
            &w.root,
            &sandbox,
            &limits,
            &Stop::default(),
        )
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{how}: {stdout}{stderr}");
        assert_eq!(out.warm, how == "warm", "{how}");
        assert!(
            stdout.starts_with("65534\n65534\ninput\n"),
            "{how}: {stdout}{stderr}"
        );
        for bad in [
            "SAW-OTHERS",
            "READ-STORE",
            "READ-NEIGHBOUR",
            "WROTE-INPUT",
            "CHMOD-INPUT",
            "WROTE-USR",
            "SAW-HOME",
        ] {
            assert!(!stdout.contains(bad), "{how}: {bad}: {stdout}{stderr}");
        }
        // (The sandbox's /tmp is its own: a write there stays there.)
        assert!(!w.work.join("escape").exists(), "{how}");
        assert_eq!(
            std::fs::read_to_string(w.root.join("kernel/in.o")).unwrap(),
            "input"
        );
        assert_eq!(
            std::fs::read_to_string(w.root.join("kernel/out.o")).unwrap(),
            "native\n",
            "{how}"
        );
        // The trace came through the descriptor: the shim's header.
        assert!(
            out.trace.starts_with("thinlto-trace 2 "),
            "{how}: {:?}",
            out.trace
        );
    });
}

#[test]
fn a_compile_past_its_deadline_is_killed_and_its_output_capped() {
    if !runnable() {
        return;
    }
    let (_t, c) = sh();
    let c = [c];
    let sandbox = Sandbox::new(&args(), &c).unwrap();
    each_way(&c[0], |how| {
        let w = work();
        sandbox.prepare(&w.dir, &w.root).unwrap();
        let limits = Limits::new(&args(), Some(Duration::from_secs(1)));
        let out = run_compile(
            &compile(&c[0], "echo started; exec /bin/sleep 600"),
            &w.root,
            &sandbox,
            &limits,
            &Stop::default(),
        )
        .unwrap();
        assert!(out.timed_out, "{how}");
        assert!(!out.status.success(), "{how}");

        let limits = Limits::new(&args(), None);
        let out = run_compile(
            &compile(
                &c[0],
                "PATH=/usr/bin:/bin; head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2",
            ),
            &w.root,
            &sandbox,
            &limits,
            &Stop::default(),
        )
        .unwrap();
        assert!(out.truncated, "{how}");
        assert_eq!(out.stdout.len(), limits.output_cap, "{how}");
        assert_eq!(out.stderr.len(), limits.output_cap, "{how}");
    });
}
