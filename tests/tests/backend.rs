//! thinlto-backend with the real toolchain: byte-identity with the make
//! reference, interoperable records, the jobserver, the incremental rules,
//! faults, and the stage-4 archive.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use thinlto_dist_tests::*;

#[test]
fn natives_equal_the_reference_and_records_interoperate() {
    let t = sample_tree();
    let ref_tree = tempfile::tempdir().unwrap();
    let ref_path = ref_tree.path().join("tree");
    xtask::flow::copy_fe_tree(t.path(), &ref_path).unwrap();
    reference(&ref_path);
    let m = thin_link(t.path());
    let (out, recs) = backend(t.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        with_status(&recs, JobStatus::Built).len(),
        m.bitcode().count()
    );
    for (n, bytes) in native_files(t.path(), &m) {
        assert_eq!(
            bytes,
            std::fs::read(ref_path.join(&n)).unwrap(),
            "{n} differs from the reference's"
        );
    }
    // make's if_changed finds our records up to date...
    let mk = Command::new("make")
        .args(["-rR", "-j2", "-f"])
        .arg(xtask::workspace_root().join("tests/reference/Makefile.backend"))
        .arg("INDEX=out/vmlinux.thinlto-index")
        .args(toolchain().make_vars())
        .current_dir(t.path())
        .env_remove("MAKEFLAGS")
        .output()
        .unwrap();
    assert!(mk.status.success());
    let log = String::from_utf8_lossy(&mk.stdout);
    assert!(
        !log.contains("thinlto-native.o"),
        "make rebuilt after us:\n{log}"
    );
    // ...and the record's first line is exactly what make wrote for it.
    let ours = std::fs::read_to_string(t.path().join("kernel/.core.thinlto-native.o.cmd")).unwrap();
    let theirs =
        std::fs::read_to_string(ref_path.join("kernel/.core.thinlto-native.o.cmd")).unwrap();
    assert_eq!(ours.lines().next(), theirs.lines().next());
    // We adopt make's records where make's own rule says up to date (the
    // native newer than its inputs), and then keep them by content.
    let adopt = |expect: &str| {
        let out = tool("thinlto-backend", &ref_path)
            .args(["-q", "--index", "out-ref/vmlinux.thinlto-index"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let recs = job_records(&out.stdout);
        assert_eq!(recs.len(), m.bitcode().count());
        for r in &recs {
            assert_eq!(r.status, JobStatus::UpToDate, "{r:?}");
            assert!(r.reason.contains(expect), "{r:?}");
        }
    };
    adopt("make's record adopted");
    adopt("unchanged");
    assert!(
        std::fs::read_to_string(ref_path.join("kernel/.core.thinlto-native.o.cmd"))
            .unwrap()
            .contains("# thinlto-dist: digest kernel/core.o ")
    );
}

#[test]
fn savedcmd_fallback_gives_identical_natives() {
    let with = sample_tree();
    let without = fe_tree(0, false);
    let text = std::fs::read_to_string(without.path().join("kernel/.core.o.cmd")).unwrap();
    assert!(!text.contains("saved_c_flags_"));
    let m1 = thin_link(with.path());
    let m2 = thin_link(without.path());
    assert!(backend(with.path(), &[]).0.status.success());
    let (out, _) = backend(without.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = native_files(with.path(), &m1);
    let b = native_files(without.path(), &m2);
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(
            x, y,
            "{n}: saved_c_flags_ and savedcmd_ flags give different code"
        );
    }
    // The flags matter: a wrong per-object flag set changes the code, so the
    // identity above is not vacuous.
    let rec = std::fs::read_to_string(
        with.path()
            .join("drivers/misc/.free-standing.thinlto-native.o.cmd"),
    )
    .unwrap();
    assert!(rec.contains("-fno-function-sections"));
}

#[test]
fn incremental_by_content() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let all = m.bitcode().count();
    assert_eq!(
        with_status(&backend(t.path(), &[]).1, JobStatus::Built).len(),
        all
    );
    // Nothing changed.
    assert_eq!(
        with_status(&backend(t.path(), &[]).1, JobStatus::UpToDate).len(),
        all
    );
    // A forced thin link rewrites every .thinlto.bc (new mtimes, same bytes).
    std::thread::sleep(Duration::from_millis(20));
    thin_link_with(t.path(), &["--force"]);
    let (_, recs) = backend(t.path(), &[]);
    assert_eq!(
        with_status(&recs, JobStatus::UpToDate).len(),
        all,
        "{recs:?}"
    );
    // An edit of a widely imported module: it and its importers run.
    let core = t.path().join("kernel/core.c");
    let text = std::fs::read_to_string(&core).unwrap();
    std::fs::write(
        &core,
        text.replace("x *= 0x5bd1e995u;", "x *= 0x5bd1e997u;"),
    )
    .unwrap();
    rebuild_fe(t.path());
    let m = thin_link(t.path());
    let (_, recs) = backend(t.path(), &[]);
    let built = with_status(&recs, JobStatus::Built);
    let importers: Vec<String> = m
        .bitcode()
        .filter(|o| {
            o.imports
                .as_ref()
                .unwrap()
                .iter()
                .any(|i| i == "kernel/core.o")
        })
        .map(|o| o.object.clone())
        .collect();
    assert!(!importers.is_empty());
    assert!(built.contains(&"kernel/core.o".to_string()), "{built:?}");
    for i in &importers {
        assert!(built.contains(i), "importer {i} not rebuilt: {built:?}");
    }
    assert!(built.len() < all, "everything rebuilt: {built:?}");
    assert!(with_status(&recs, JobStatus::UpToDate).contains(&"lib/crc_util.o".to_string()));
    // The harness sees the new code.
    let exe = t.path().join("out/h");
    let o = stage4(t.path());
    let out = xtask::sample::reference::run_harness(toolchain(), t.path(), &o, &exe).unwrap();
    assert_ne!(
        out,
        xtask::sample::reference::expected_harness_output().unwrap()
    );
}

/// `object` and the objects that import from it, sorted.
fn with_importers(m: &thinlto_index::Manifest, object: &str) -> Vec<String> {
    let mut v: Vec<String> = m
        .bitcode()
        .filter(|o| o.object == object || o.imports.as_ref().unwrap().iter().any(|i| i == object))
        .map(|o| o.object.clone())
        .collect();
    v.sort();
    v
}

/// The files a job's last (traced) compile read beyond its inputs, from
/// its record (`# thinlto-dist: read PATH DIGEST`).
fn recorded_reads(tree: &Path, native: &str) -> Vec<String> {
    let (dir, name) = native.rsplit_once('/').unwrap_or(("", native));
    let rec = std::fs::read_to_string(tree.join(dir).join(format!(".{name}.cmd"))).unwrap();
    assert!(
        rec.lines().any(|l| l == "# thinlto-dist: traced"),
        "{native}: the compile was not traced:\n{rec}"
    );
    rec.lines()
        .filter_map(|l| l.strip_prefix("# thinlto-dist: read "))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect()
}

#[test]
fn incbin_change_reruns_the_job_digests_cannot_see() {
    let t = sample_tree();
    let m = thin_link(t.path());
    assert!(backend(t.path(), &[]).0.status.success());
    // Each compile's trace named the files it read beyond its inputs: the
    // .incbin'd file for the object whose asm includes it, and for an
    // importer only if it imported that asm.
    let mut readers: Vec<String> = m
        .bitcode()
        .filter(|o| {
            recorded_reads(t.path(), &thinlto_backend::job::native_of(&o.object))
                .iter()
                .any(|r| r == "kernel/config_data.txt")
        })
        .map(|o| o.object.clone())
        .collect();
    readers.sort();
    assert!(
        readers.iter().any(|o| o == "kernel/config_blob.o"),
        "{readers:?}"
    );
    let importers = with_importers(&m, "kernel/config_blob.o");
    assert!(readers.iter().all(|o| importers.contains(o)), "{readers:?}");
    let before_bc = std::fs::read(t.path().join("kernel/config_blob.o")).unwrap();
    std::fs::write(
        t.path().join("kernel/config_data.txt"),
        "CONFIG_CHANGED=y\n",
    )
    .unwrap();
    rebuild_fe(t.path());
    // The bitcode only names the file: its bytes did not change.
    assert_eq!(
        before_bc,
        std::fs::read(t.path().join("kernel/config_blob.o")).unwrap()
    );
    thin_link(t.path());
    let (_, recs) = backend(t.path(), &[]);
    // Exactly the jobs whose compile read the file rerun.
    assert_eq!(with_status(&recs, JobStatus::Built), readers, "{recs:?}");
    let r = recs
        .iter()
        .find(|r| r.object == "kernel/config_blob.o")
        .unwrap();
    assert!(
        r.reason
            .contains("a file its last compile read changed: kernel/config_data.txt"),
        "{r:?}"
    );
    let o = stage4(t.path());
    let out =
        xtask::sample::reference::run_harness(toolchain(), t.path(), &o, &t.path().join("out/h"))
            .unwrap();
    assert!(out.contains("blob: size=17 "), "{out}");
    // make rebuilds kernel/core.o (a touched source, the same bitcode):
    // its trace and its importers' show nothing changed, nothing reruns
    // (the old rule reran it and every importer).
    let m = thin_link(t.path());
    assert!(with_importers(&m, "kernel/core.o").len() > 1);
    let core_c = t.path().join("kernel/core.c");
    let text = std::fs::read(&core_c).unwrap();
    std::fs::write(&core_c, text).unwrap();
    let before = std::fs::read(t.path().join("kernel/core.o")).unwrap();
    rebuild_fe(t.path());
    assert_eq!(
        before,
        std::fs::read(t.path().join("kernel/core.o")).unwrap()
    );
    thin_link(t.path());
    let (_, recs) = backend(t.path(), &[]);
    assert_eq!(
        with_status(&recs, JobStatus::Built),
        Vec::<String>::new(),
        "{recs:?}"
    );
    // A record without a trace (a farm's or make's native) keeps the
    // mtime rule: the rebuilt object and every importer rerun.
    for o in m.bitcode() {
        let native = thinlto_backend::job::native_of(&o.object);
        let (dir, name) = native.rsplit_once('/').unwrap();
        let rec = t.path().join(dir).join(format!(".{name}.cmd"));
        let text = std::fs::read_to_string(&rec).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| {
                !l.starts_with("# thinlto-dist: traced") && !l.starts_with("# thinlto-dist: read ")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&rec, kept).unwrap();
    }
    std::fs::write(&core_c, std::fs::read(&core_c).unwrap()).unwrap();
    rebuild_fe(t.path());
    thin_link(t.path());
    let (_, recs) = backend(t.path(), &[]);
    let expect = with_importers(&m, "kernel/core.o");
    assert_eq!(with_status(&recs, JobStatus::Built), expect, "{recs:?}");
    assert!(recs
        .iter()
        .filter(|r| r.status == JobStatus::Built)
        .all(|r| r.reason.contains("front-end object rebuilt")));
}

/// A logging wrapper around the real compiler (not a stub): records when
/// each compile starts and ends. The first compile waits until a second
/// one has started (or 60 s: a backend that runs one at a time shows a
/// maximum of 1), so that parallel compiles are seen to overlap however
/// fast the machine.
fn logging_wrapper(tree: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = tree.join("cc.log");
    let wrapper = tree.join("clang-logging-wrapper");
    script(
        &wrapper,
        &format!(
            // `--version` (the backend's producer check) is a query, not a
            // compile: not logged, not held.
            "#!/bin/sh\ncase \"$1\" in --version) exec {cc} \"$@\";; esac\necho \"start $(date +%s%N)\" >> {log}\nn=0\nwhile [ \"$(grep -c ^start {log})\" -lt 2 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\n{cc} \"$@\"; rc=$?\necho \"end $(date +%s%N)\" >> {log}\nexit $rc\n",
            cc = toolchain().cc.path.display(),
            log = log.display()
        ),
    );
    (wrapper, log)
}

/// The most compiles the wrapper's log shows running at once.
fn max_concurrent(log: &Path) -> i32 {
    let text = std::fs::read_to_string(log).unwrap();
    let mut events: Vec<(u128, i32)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (v.parse().unwrap(), if k == "start" { 1 } else { -1 })
        })
        .collect();
    // An end sorts before a start at the same instant.
    events.sort();
    assert_eq!(events.len() % 2, 0, "{text}");
    let (mut cur, mut max) = (0, 0);
    for (_, d) in &events {
        cur += d;
        max = max.max(cur);
    }
    max
}

#[test]
fn jobserver_bounds_parallelism_under_make() {
    // GNU make 4.3 here: the fd-pair form (--jobserver-auth=R,W).
    let t = fe_tree(24, true);
    thin_link(t.path());
    let (wrapper, log) = logging_wrapper(t.path());
    std::fs::write(
        t.path().join("Makefile.js"),
        format!(
            "all:\n\t+{} -q --index out/vmlinux.thinlto-index > out/jobs.jsonl\n",
            bin("thinlto-backend").display()
        ),
    )
    .unwrap();
    run_ok(
        Command::new("make")
            .args(["-j3", "-f", "Makefile.js"])
            .current_dir(t.path())
            .env("CC", &wrapper)
            .env_remove("LLVM")
            .env_remove("MAKEFLAGS"),
    );
    let max = max_concurrent(&log);
    assert!(
        max <= 3,
        "more compiles at once than make -j3 allows: {max}"
    );
    assert!(max >= 2, "the jobserver's tokens were not used: {max}");
    let jobs = std::fs::read_to_string(t.path().join("out/jobs.jsonl")).unwrap();
    assert_eq!(jobs.lines().count(), 34);
}

#[test]
fn jobserver_fifo_form_bounds_parallelism_and_gets_its_tokens_back() {
    // make 4.4's form, --jobserver-auth=fifo:PATH, set up as make does: a
    // named pipe holding one byte per token beyond the job's own.
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let t = fe_tree(12, true);
    thin_link(t.path());
    let (wrapper, log) = logging_wrapper(t.path());
    let fifo = t.path().join("jobserver.fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc_o_nonblock())
        .open(&fifo)
        .unwrap();
    pipe.write_all(b"++").unwrap();
    let out = tool("thinlto-backend", t.path())
        .args(["-q", "--index", "out/vmlinux.thinlto-index"])
        .env("CC", &wrapper)
        .env(
            "MAKEFLAGS",
            format!(" -j3 --jobserver-auth=fifo:{}", fifo.display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max = max_concurrent(&log);
    assert!(max <= 3, "more compiles at once than 3 tokens allow: {max}");
    assert!(max >= 2, "the fifo's tokens were not used: {max}");
    // Every token taken went back.
    let mut buf = [0u8; 16];
    let n = pipe.read(&mut buf).unwrap_or(0);
    assert_eq!(&buf[..n], b"++", "tokens not returned");
}

fn libc_o_nonblock() -> i32 {
    0o4000
}

/// thinlto-backend with CC set to `cc` (a wrapper: the re-runs must use
/// the same compiler, or every command changed).
fn backend_with(
    tree: &Path,
    cc: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (std::process::Output, Vec<JobRecord>) {
    let mut c = tool("thinlto-backend", tree);
    c.args(["-q", "--index", "out/vmlinux.thinlto-index"])
        .args(args)
        .env("CC", cc);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let recs = job_records(&out.stdout);
    (out, recs)
}

#[test]
fn faults_leave_no_truncated_object_and_a_rerun_completes() {
    let t = sample_tree();
    thin_link(t.path());
    // A compiler wrapper that, when told to, writes half an object for
    // kernel/core.o and is then killed.
    let cc = t.path().join("clang-killed-on-core");
    script(
        &cc,
        &format!(
            "#!/bin/sh
if [ -n \"$KILL_CORE\" ]; then case \"$*\" in *kernel/core.o.thinlto.bc*)\n  for a; do [ \"$prev\" = -o ] && printf 'half' > \"$a\"; prev=$a; done\n  kill -9 $$;;\nesac; fi\nexec {} \"$@\"\n",
            toolchain().cc.path.display()
        ),
    );
    let (out, recs) = backend_with(t.path(), &cc, &[("KILL_CORE", "1")], &["-k"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel/core.thinlto-native.o")
            && err.contains("-fthinlto-index=kernel/core.o.thinlto.bc"),
        "{err}"
    );
    assert_eq!(
        with_status(&recs, JobStatus::Failed),
        vec!["kernel/core.o".to_string()]
    );
    assert!(
        !t.path().join("kernel/core.thinlto-native.o").exists(),
        "a truncated object was left"
    );
    assert_no_temporaries(t.path());
    // Corrupt bitcode in one object.
    let bc = t.path().join("lib/crc_util.o");
    let good = std::fs::read(&bc).unwrap();
    std::fs::write(&bc, &good[..good.len() / 2]).unwrap();
    let (out, recs) = backend_with(t.path(), &cc, &[], &["--only", "lib/crc_util.o"]);
    assert!(!out.status.success());
    assert_eq!(
        with_status(&recs, JobStatus::Failed),
        vec!["lib/crc_util.o".to_string()]
    );
    std::fs::write(&bc, &good).unwrap();
    // The re-run does only what is missing or stale: core and crc_util.
    let (out, recs) = backend_with(t.path(), &cc, &[], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        with_status(&recs, JobStatus::Built),
        vec!["kernel/core.o".to_string(), "lib/crc_util.o".to_string()],
        "{recs:?}"
    );
    assert_eq!(with_status(&recs, JobStatus::UpToDate).len(), 8, "{recs:?}");
}

fn assert_no_temporaries(tree: &Path) {
    for e in walk(tree) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp"),
            "temporary left behind: {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn sigint_mid_run_stops_cleanly_and_a_rerun_finishes() {
    let t = fe_tree(16, true);
    thin_link(t.path());
    let cc = GatedCompiler::new(t.path());
    let mut child = tool("thinlto-backend", t.path())
        .args(["-q", "-j2", "--index", "out/vmlinux.thinlto-index"])
        .env("CC", &cc.path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The signal comes when a job has finished (its record is out: a native
    // to keep) and a compile is under way (held by the gate).
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(!first.is_empty(), "the backend ended before any job");
    cc.close();
    wait_for("a held backend compile", || cc.holding());
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    std::io::copy(&mut stdout, &mut std::io::sink()).unwrap();
    let status = child.wait().unwrap();
    // It dies by the signal (after stopping its children), as a shell
    // script running it must see to stop too.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(2),
        "{status:?}"
    );
    assert_no_temporaries(t.path());
    // Every native left is whole: each one lld accepts as an object.
    for p in walk(t.path()) {
        if p.to_string_lossy().ends_with(".thinlto-native.o") {
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..4], b"\x7fELF", "{}", p.display());
        }
    }
    cc.release();
    let (out, recs) = backend_with(t.path(), &cc.path, &[], &["-j2"]);
    assert!(out.status.success());
    assert!(
        !with_status(&recs, JobStatus::UpToDate).is_empty(),
        "nothing was kept: {recs:?}"
    );
    assert!(
        !with_status(&recs, JobStatus::Built).is_empty(),
        "nothing was left to do"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    #[link_name = "pipe"]
    fn libc_pipe(fds: *mut i32) -> i32;
}

/// A pipe whose reading end is already closed: a write gets EPIPE (Rust
/// ignores SIGPIPE), as `tool | head -c1` does once head exits.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two new descriptors, each then owned once.
    assert_eq!(unsafe { libc_pipe(fds.as_mut_ptr()) }, 0);
    drop(unsafe { std::fs::File::from_raw_fd(fds[0]) });
    std::process::Stdio::from(unsafe { std::fs::File::from_raw_fd(fds[1]) })
}

#[test]
fn a_closed_stdout_is_an_error() {
    let t = sample_tree();
    thin_link(t.path());
    let index = ["--index", "out/vmlinux.thinlto-index"];
    for args in [&["-q", "-j1"][..], &["--explain"], &["--dry-run"]] {
        let out = tool("thinlto-backend", t.path())
            .args(index)
            .args(args)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {:?}\n{err}",
            out.status
        );
        assert!(
            err.contains("writing to stdout") && err.contains("the reader closed it"),
            "{args:?}: {err}"
        );
    }
    // The run stopped at the first record it could not write: one job ran.
    let (_, recs) = backend(t.path(), &[]);
    assert_eq!(with_status(&recs, JobStatus::UpToDate).len(), 1, "{recs:?}");
}

/// Whether process `pid` catches signal `sig` (its handler is installed)
/// and is asleep (state S: blocked, here in a read), from /proc.
fn blocked_with_handler(pid: u32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
    };
    let caught = u64::from_str_radix(field("SigCgt:"), 16).unwrap_or(0);
    caught & (1 << (sig - 1)) != 0 && field("State:").starts_with('S')
}

#[test]
fn a_signal_while_reading_or_planning_kills_it_by_that_signal() {
    // Input that never comes (a pipe nobody writes, a fifo nobody opens):
    // the tool waits in a read, and the signal must end it, by the signal.
    let t = sample_tree();
    thin_link(t.path());
    run_ok(Command::new("mkfifo").arg(t.path().join("never.fifo")));
    let runs: [(&[&str], i32); 4] = [
        (&["-q"], 15),
        (&["--index", "never.fifo", "--explain"], 2),
        (&["--index", "never.fifo", "--dry-run"], 1),
        (
            &[
                "archive",
                "--order",
                "never.fifo",
                "--index",
                "out/vmlinux.thinlto-index",
                "-o",
                "a.a",
            ],
            2,
        ),
    ];
    for (args, sig) in runs {
        let mut child = tool("thinlto-backend", t.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The tool has its handler for the signal and sleeps: it waits in
        // the read.
        wait_for("the tool to wait in a read", || {
            blocked_with_handler(child.id(), sig)
        });
        // SAFETY: signalling our own child.
        unsafe { libc_kill(child.id() as i32, sig) };
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(5) {
                child.kill().unwrap();
                panic!("{args:?}: still running 5 s after signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(sig),
            "{args:?}: {status:?}"
        );
    }
    assert!(!t.path().join("a.a").exists());
}

#[test]
fn final_archive_is_what_llvm_ar_writes() {
    let t = sample_tree();
    thin_link(t.path());
    assert!(backend(t.path(), &[]).0.status.success());
    for out in ["out/vmlinux.a", "vmlinux.final.a"] {
        run_ok(tool("thinlto-backend", t.path()).args([
            "archive",
            "--order",
            "out/builtin.order",
            "--index",
            "out/vmlinux.thinlto-index",
            "-o",
            out,
        ]));
        let order = std::fs::read_to_string(t.path().join("out/builtin.order")).unwrap();
        let index = std::fs::read_to_string(t.path().join("out/vmlinux.thinlto-index")).unwrap();
        let members: Vec<String> = order
            .lines()
            .map(|m| {
                if index.lines().any(|i| i == m) {
                    format!("{}.thinlto-native.o", m.trim_end_matches(".o"))
                } else {
                    m.to_string()
                }
            })
            .collect();
        let reference = format!("{out}.llvm-ar");
        run_ok(
            Command::new(&toolchain().ar.path)
                .current_dir(t.path())
                .args(["cDPrS", "--thin", &reference])
                .args(&members),
        );
        assert_eq!(
            std::fs::read(t.path().join(out)).unwrap(),
            std::fs::read(t.path().join(&reference)).unwrap(),
            "{out} differs from llvm-ar's"
        );
    }
}

#[test]
fn archive_paths_as_llvm_ar_stores_them() {
    // Member paths llvm-ar rewrites (relative to the archive's directory,
    // lexically), keeps (absolute ones, dots and all; duplicates), an odd
    // name table (padded, the pad counted), and no members at all.
    let t = sample_tree();
    let abs = t.path().join("lib/../lib/crc_util.o");
    let lists: Vec<Vec<String>> = vec![
        vec![
            "./init/main.o".into(),
            "kernel/../kernel/core.o".into(),
            abs.to_string_lossy().into_owned(),
            "lib/crc_util.o".into(),
            "lib/crc_util.o".into(),
            "arch/x86/lib/memops.o".into(),
        ],
        vec!["init/main.o".into()],
        vec!["lib/crc_util.o".into(), "arch/x86/lib/memops.o".into()],
        vec![],
    ];
    std::fs::write(t.path().join("empty.index"), "").unwrap();
    for (i, members) in lists.iter().enumerate() {
        let order = format!("order{i}");
        let text: String = members.iter().map(|m| format!("{m}\n")).collect();
        std::fs::write(t.path().join(&order), text).unwrap();
        for out in [format!("sub/dir/a{i}.a"), format!("a{i}.a")] {
            std::fs::create_dir_all(t.path().join("sub/dir")).unwrap();
            run_ok(tool("thinlto-backend", t.path()).args([
                "archive",
                "--order",
                &order,
                "--index",
                "empty.index",
                "-o",
                &out,
            ]));
            let reference = format!("{out}.llvm-ar");
            run_ok(
                Command::new(&toolchain().ar.path)
                    .current_dir(t.path())
                    .args(["cDPrS", "--thin", &reference])
                    .args(members),
            );
            assert_eq!(
                std::fs::read(t.path().join(&out)).unwrap(),
                std::fs::read(t.path().join(&reference)).unwrap(),
                "{out} of {members:?} differs from llvm-ar's"
            );
        }
    }
}

#[test]
fn explain_dry_run_and_only_run_nothing_or_one_job() {
    let t = sample_tree();
    thin_link(t.path());
    let explain = run_ok(tool("thinlto-backend", t.path()).args([
        "--index",
        "out/vmlinux.thinlto-index",
        "--explain",
    ]));
    let text = String::from_utf8(explain.stdout).unwrap();
    assert_eq!(text.lines().count(), 10, "{text}");
    assert!(
        text.contains("kernel/core.thinlto-native.o: would run: new: no native object yet"),
        "{text}"
    );
    let dry = run_ok(tool("thinlto-backend", t.path()).args([
        "--index",
        "out/vmlinux.thinlto-index",
        "--dry-run",
    ]));
    let text = String::from_utf8(dry.stdout).unwrap();
    assert!(text.contains(" -x ir -fno-lto -Wno-unused-command-line-argument -fthinlto-index=kernel/core.o.thinlto.bc -c -o kernel/core.thinlto-native.o kernel/core.o\n"), "{text}");
    assert!(
        !t.path().join("kernel/core.thinlto-native.o").exists(),
        "--dry-run ran something"
    );
    let (out, recs) = backend(t.path(), &["--only", "kernel/core.o"]);
    assert!(out.status.success());
    assert_eq!(
        with_status(&recs, JobStatus::Built),
        vec!["kernel/core.o".to_string()]
    );
    assert_eq!(recs.len(), 1);
    let explain = run_ok(tool("thinlto-backend", t.path()).args([
        "--index",
        "out/vmlinux.thinlto-index",
        "--explain",
        "--only",
        "kernel/core.thinlto-native.o",
    ]));
    assert_eq!(
        String::from_utf8(explain.stdout).unwrap(),
        "kernel/core.thinlto-native.o: up to date\n"
    );
    // -B forces it.
    let (_, recs) = backend(t.path(), &["--only", "kernel/core.o", "-B"]);
    assert_eq!(recs[0].reason, "forced (-B)");
}

#[test]
fn warnings_of_successful_jobs_are_shown_at_every_verbosity() {
    // -Wframe-larger-than is a front-end flag (it sets a function
    // attribute) whose warning only the backend's codegen can give: the
    // case kbuild's CONFIG_FRAME_WARN hits, shown even under `make -s`.
    let t = sample_tree();
    append_line(
        &t.path().join("init/Kbuild"),
        "CFLAGS_main.o += -Wframe-larger-than=16",
    );
    rebuild_fe(t.path());
    thin_link(t.path());
    let warned = |stderr: &str| {
        stderr.contains("stack frame size") && stderr.contains("[-Wframe-larger-than]")
    };
    for args in [&["-B"][..], &["-B", "-v"]] {
        // backend() passes -q.
        let (out, recs) = backend(t.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(with_status(&recs, JobStatus::Built).len(), 10);
        assert!(warned(&err), "-q {args:?}: no warning on stderr:\n{err}");
    }
    let out = tool("thinlto-backend", t.path())
        .args(["-B", "--index", "out/vmlinux.thinlto-index"])
        .output()
        .unwrap();
    assert!(warned(&String::from_utf8_lossy(&out.stderr)));
    // On a terminal (the progress bar): util-linux's script gives the
    // tool a pty as stderr.
    // Missing, it fails the test, naming the package: a passing test's
    // output is hidden by cargo test, so a skip would look like a pass.
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "script(1) is missing, so the terminal case cannot be tested: install bsdutils (cargo xtask setup does)"
    );
    let tc = toolchain();
    let out = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "'{}' -B --index out/vmlinux.thinlto-index >/dev/null",
            bin("thinlto-backend").display()
        ))
        .arg("/dev/null")
        .current_dir(t.path())
        .env("CC", &tc.cc.spelled)
        .env("LD", &tc.ld.spelled)
        .env("AR", &tc.ar.spelled)
        .env_remove("LLVM")
        .env_remove("MAKEFLAGS")
        .env_remove("V")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("  BE      ["), "no progress bar: {tty}");
    assert!(warned(&tty), "no warning with the progress bar:\n{tty}");
}

#[test]
fn split_dwarf_outputs_are_named_as_by_the_reference_command() {
    // With -gsplit-dwarf the compiler names the .dwo after -o, and the
    // object records that name (DW_AT_dwo_name); -grecord-command-line
    // records the argv. Both must come out as kbuild's command makes them.
    let t = sample_tree();
    append_line(
        &t.path().join("kernel/Kbuild"),
        "CFLAGS_core.o += -g -gsplit-dwarf -grecord-command-line",
    );
    rebuild_fe(t.path());
    let ref_tree = tempfile::tempdir().unwrap();
    let ref_path = ref_tree.path().join("tree");
    xtask::flow::copy_fe_tree(t.path(), &ref_path).unwrap();
    reference(&ref_path);
    thin_link(t.path());
    let (out, recs) = backend(t.path(), &["--only", "kernel/core.o"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(with_status(&recs, JobStatus::Built), vec!["kernel/core.o"]);
    for f in [
        "kernel/core.thinlto-native.o",
        "kernel/core.thinlto-native.dwo",
    ] {
        let ours = std::fs::read(t.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(
            ours,
            std::fs::read(ref_path.join(f)).unwrap(),
            "{f} differs from the reference's"
        );
    }
    assert_no_temporaries(t.path());
    for e in walk(t.path()) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".dwo") || name == "core.thinlto-native.dwo",
            "stray split-DWARF file: {}",
            e.display()
        );
    }
    let dwarfdump = llvm_bin_dir().join("llvm-dwarfdump");
    let dump = run_ok(
        Command::new(&dwarfdump)
            .current_dir(t.path())
            .args(["--debug-info", "kernel/core.thinlto-native.o"]),
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("DW_AT_dwo_name\t(\"kernel/core.thinlto-native.dwo\")"),
        "{dump}"
    );
}

#[test]
fn a_compiler_killed_by_sigkill_leaves_nothing_behind() {
    // clang removes its temporary and the .dwo on SIGINT/SIGTERM, not on
    // SIGKILL: then the tool removes the half-done object's leftovers (the
    // temporary clang names after -o, the .dwo it writes in place).
    let t = sample_tree();
    append_line(
        &t.path().join("kernel/Kbuild"),
        "CFLAGS_core.o += -g -gsplit-dwarf",
    );
    rebuild_fe(t.path());
    thin_link(t.path());
    let cc = t.path().join("clang-sigkilled-midway");
    script(
        &cc,
        &format!(
            "#!/bin/sh
cc={}
case \"$*\" in *kernel/core.o.thinlto.bc*) ;; *) exec $cc \"$@\";; esac
$cc \"$@\" & pid=$!
while kill -0 $pid 2>/dev/null; do
  for f in kernel/core.thinlto-native-*.o.tmp; do
    if [ -e \"$f\" ] && [ -e kernel/core.thinlto-native.dwo ]; then
      kill -9 $pid; wait $pid; exit 137
    fi
  done
done
wait $pid
",
            toolchain().cc.path.display()
        ),
    );
    let mut killed = false;
    // The compile may end before the wrapper sees its files: try again.
    for _ in 0..20 {
        let (out, recs) = backend_with(t.path(), &cc, &[], &["-B", "--only", "kernel/core.o"]);
        if out.status.success() {
            continue;
        }
        assert_eq!(
            with_status(&recs, JobStatus::Failed),
            vec!["kernel/core.o"],
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        killed = true;
        break;
    }
    assert!(killed, "the compiler was never caught mid-way");
    assert_no_temporaries(t.path());
    for f in [
        "kernel/core.thinlto-native.o",
        "kernel/core.thinlto-native.dwo",
    ] {
        assert!(!t.path().join(f).exists(), "{f} left by a killed compile");
    }
    assert!(!t.path().join("kernel/.core.thinlto-native.o.cmd").exists());
    let (out, recs) = backend_with(t.path(), toolchain().cc.path.as_ref(), &[], &[]);
    assert!(out.status.success());
    assert!(with_status(&recs, JobStatus::Built).contains(&"kernel/core.o".to_string()));
    assert!(t.path().join("kernel/core.thinlto-native.dwo").exists());
}

/// A tree thin-linked as kbuild links it (no `--imports`, so no
/// `.imports` files): each job's imports come from its shard all the
/// same. Its record keeps their digests, a stale `.imports` file (left by
/// an older link) is not read, and a front-end rebuild of an imported
/// module with the same bitcode reruns its importers too (the `.incbin`
/// rule: an imported function may carry its asm).
#[test]
fn imports_come_from_the_shard_without_imports_files() {
    let t = sample_tree();
    let m = thin_link_without_imports(t.path());
    let modules = |o: &str| {
        thinlto_index::shard::module_paths_of(&t.path().join(format!("{o}.thinlto.bc"))).unwrap()
    };
    let importers: Vec<String> = m
        .bitcode()
        .filter(|o| {
            o.object != "kernel/core.o" && modules(&o.object).iter().any(|p| p == "kernel/core.o")
        })
        .map(|o| o.object.clone())
        .collect();
    assert!(!importers.is_empty());
    // A stale list naming a module that is gone.
    let stale = &importers[0];
    std::fs::write(
        t.path().join(format!("{stale}.imports")),
        "gone/missing.o\n",
    )
    .unwrap();
    let (out, recs) = backend(t.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        with_status(&recs, JobStatus::Built).len(),
        m.bitcode().count()
    );
    let native = format!("{}.thinlto-native.o", stale.trim_end_matches(".o"));
    let (dir, base) = native.rsplit_once('/').unwrap();
    let record = std::fs::read_to_string(t.path().join(format!("{dir}/.{base}.cmd"))).unwrap();
    for p in modules(stale) {
        assert!(
            record.contains(&format!("# thinlto-dist: digest {p} ")),
            "{p} not in the record of {native}:\n{record}"
        );
    }
    assert!(!record.contains("gone/missing.o"), "{record}");

    // kernel/core.o rebuilt by the front end, same bitcode: these local
    // compiles were traced (engine/reads.rs), and no trace read a file the
    // rebuild changed, so nothing reruns — neither core.o's job nor those
    // of the importers its shard-named imports would otherwise pull in.
    std::thread::sleep(Duration::from_millis(20));
    let core = t.path().join("kernel/core.c");
    let text = std::fs::read_to_string(&core).unwrap();
    std::fs::write(&core, &text).unwrap();
    rebuild_fe(t.path());
    thin_link_without_imports(t.path());
    let (_, recs) = backend(t.path(), &[]);
    let mut built = with_status(&recs, JobStatus::Built);
    built.sort();
    assert_eq!(built, Vec::<String>::new(), "{recs:?}");
}
