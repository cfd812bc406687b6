//! Who is trusted (docs/cache.md, "Who is trusted"): the preload shim is loaded
//! only from a private directory of the user's, checked before each run —
//! a planted shim (another user's directory, a world-writable one, a
//! symlink, a foreign file) never runs; new cache directories are 0700
//! unless the cache is declared shared, which gets the umask's modes; a
//! private cache that others can write is warned about.
//!
//! The tests run as root, so hostile setups are made with modes and with
//! ownership by `nobody`.

use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use thinlto_dist_tests::*;

const NOBODY: u32 = 65534;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// `cmd` run by /bin/sh under `umask`.
fn with_umask(umask: &str, cmd: &Command) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// A shared object that writes `marker` when anything loads it.
fn planted_so(dir: &Path, marker: &Path) -> Vec<u8> {
    let c = dir.join("planted.c");
    std::fs::write(
        &c,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {{\n\
             FILE *f = fopen(\"{}\", \"a\"); if (f) {{ fputs(\"loaded\\n\", f); fclose(f); }} }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = dir.join("planted.so");
    run_ok(
        Command::new(&toolchain().cc.path)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&c),
    );
    // The marker works: what loads it, writes it.
    run_ok(Command::new("/bin/true").env("LD_PRELOAD", &so));
    assert!(marker.exists(), "the planted library does not mark");
    std::fs::remove_file(marker).unwrap();
    std::fs::read(&so).unwrap()
}

/// A run of every job with a fresh cache (so that every compile is traced
/// and the warm compiler starts), the shim's home under `runtime`.
fn build(tree: &Path, runtime: &Path) -> (Output, String) {
    let cache = tempfile::tempdir().unwrap();
    let out = tool("thinlto-backend", tree)
        .args(["-B", "--index", "out/vmlinux.thinlto-index", "--cache-dir"])
        .arg(cache.path())
        .env("XDG_RUNTIME_DIR", runtime)
        .env("THINLTO_WARM_STATS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (out, err)
}

fn served_warm(err: &str) -> usize {
    let line = err
        .lines()
        .find(|l| l.contains("jobs served,"))
        .unwrap_or_else(|| panic!("no stats line in:\n{err}"));
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap()
}

fn reset(dir: &Path) {
    let _ = std::fs::remove_file(dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_planted_shim_is_never_loaded() {
    let t = sample_tree();
    thin_link(t.path());
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("planted-ran");
    let planted = planted_so(scratch.path(), &marker);
    let runtime = tempfile::tempdir().unwrap();
    set_mode(runtime.path(), 0o700);
    let home = runtime.path().join("thinlto-dist");

    // A clean start: the shim's directory is made 0700, the file is the
    // user's and writable by no one else, and the compiles are warm.
    let (_, err) = build(t.path(), runtime.path());
    assert!(served_warm(&err) > 0, "{err}");
    assert_eq!(mode(&home), 0o700);
    let shims: Vec<PathBuf> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let shim = shims[0].clone();
    assert!(shim
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("zygote-"));
    assert_eq!(mode(&shim) & 0o022, 0);
    let good = std::fs::read(&shim).unwrap();

    // A foreign file, a file of another user, a symlink, in our own
    // directory: replaced by the shim before anything loads it.
    let foreign = |setup: &dyn Fn()| {
        setup();
        let (_, err) = build(t.path(), runtime.path());
        assert!(!marker.exists(), "the planted shim ran\n{err}");
        assert!(served_warm(&err) > 0, "{err}");
        let m = std::fs::symlink_metadata(&shim).unwrap();
        assert!(m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0);
        assert_eq!(std::fs::read(&shim).unwrap(), good);
    };
    foreign(&|| std::fs::write(&shim, &planted).unwrap());
    foreign(&|| {
        std::fs::write(&shim, &good).unwrap();
        chown(&shim, Some(NOBODY), Some(NOBODY)).unwrap();
    });
    foreign(&|| {
        std::fs::write(&shim, &good).unwrap();
        set_mode(&shim, 0o666);
    });
    foreign(&|| {
        let elsewhere = scratch.path().join("elsewhere.so");
        std::fs::write(&elsewhere, &planted).unwrap();
        std::fs::remove_file(&shim).unwrap();
        symlink(&elsewhere, &shim).unwrap();
    });

    // A directory someone else could have written: refused, in one line,
    // untouched, and the run goes on with plain, untraced compiles.
    let refused = |setup: &dyn Fn(), why: &str| {
        reset(&home);
        setup();
        let (_, err) = build(t.path(), runtime.path());
        assert!(!marker.exists(), "the planted shim ran\n{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("zygote shim")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains(why) && lines[0].contains("refused"),
            "{err}"
        );
        assert!(lines[0].contains("no tracing"), "{err}");
        assert_eq!(served_warm(&err), 0, "{err}");
        let others: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("thinlto-backend: ") && !l.contains("zygote shim"))
            .filter(|l| !l.contains("jobs served,") && !l.contains(" built, "))
            .collect();
        assert!(others.is_empty(), "more lines: {others:?}");
    };
    let plant_in = |dir: &Path| {
        std::fs::create_dir(dir).unwrap();
        set_mode(dir, 0o700);
        std::fs::write(dir.join(shim.file_name().unwrap()), &planted).unwrap();
    };
    // Another user's, even holding the very shim (it could swap it later).
    refused(
        &|| {
            plant_in(&home);
            std::fs::write(&shim, &good).unwrap();
            chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
        },
        "owned by uid 65534",
    );
    refused(
        &|| {
            plant_in(&home);
            chown(&shim, Some(NOBODY), Some(NOBODY)).unwrap();
            chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
        },
        "owned by uid 65534",
    );
    refused(
        &|| {
            plant_in(&home);
            set_mode(&home, 0o777);
        },
        "writable by others",
    );
    refused(
        &|| {
            let elsewhere = scratch.path().join("elsewhere");
            reset(&elsewhere);
            plant_in(&elsewhere);
            symlink(&elsewhere, &home).unwrap();
        },
        "symlink",
    );
}

#[test]
fn cache_directories_are_private_unless_declared_shared() {
    let t = sample_tree();
    thin_link(t.path());
    let scratch = tempfile::tempdir().unwrap();
    let run = |dir: &Path, umask: &str, args: &[&str]| -> String {
        let mut c = tool("thinlto-backend", t.path());
        c.args([
            "-B",
            "--no-warm",
            "--index",
            "out/vmlinux.thinlto-index",
            "--cache-dir",
        ])
        .arg(dir)
        .args(args);
        let out = run_ok(&mut with_umask(umask, &c));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Every directory of the store, the cache directory and those above
    // it that the run created.
    let dirs = |top: &Path, cache: &Path| -> Vec<PathBuf> {
        let mut v = vec![];
        let mut p = cache.to_path_buf();
        while p != top {
            v.push(p.clone());
            p = p.parent().unwrap().to_path_buf();
        }
        let root = cache.join("backend-v1");
        for sub in ["manifests", "blobs"] {
            v.push(root.join(sub));
            for fan in std::fs::read_dir(root.join(sub)).unwrap() {
                v.push(fan.unwrap().path());
            }
        }
        v.push(root);
        v
    };

    // Private: 0700 whatever the umask.
    let private = scratch.path().join("a/b/cache");
    let err = run(&private, "022", &[]);
    for d in dirs(scratch.path(), &private) {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert!(!err.contains("warning"), "{err}");

    // Shared: the umask's modes; in a setgid directory of a group, the
    // setgid bit (and so the group) goes on to every new directory.
    let group = scratch.path().join("group");
    std::fs::create_dir(&group).unwrap();
    set_mode(&group, 0o2775);
    let shared = group.join("cache");
    let err = run(&shared, "002", &["--cache-shared"]);
    for d in dirs(&group, &shared) {
        assert_eq!(mode(&d), 0o2775, "{}", d.display());
    }
    assert!(!err.contains("warning"), "{err}");
    // The same by the environment.
    let by_env = group.join("by-env");
    let mut c = tool("thinlto-backend", t.path());
    c.args([
        "-B",
        "--no-warm",
        "--index",
        "out/vmlinux.thinlto-index",
        "--cache-dir",
    ])
    .arg(&by_env)
    .env("THINLTO_CACHE_SHARED", "1");
    run_ok(&mut with_umask("002", &c));
    assert_eq!(mode(&by_env.join("backend-v1")), 0o2775);

    // A shared cache used without saying so, or a cache of another user's:
    // one warning line, and the build goes on.
    let err = run(&shared, "022", &[]);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("writable by others") && warnings[0].contains("--cache-shared"));
    let foreign = scratch.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    chown(&foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = run(&foreign, "022", &[]);
    assert!(err.contains("is owned by uid 65534"), "{err}");
}
