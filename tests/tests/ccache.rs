//! `thinlto-backend wrap` composed with ccache (issue 28): ccache for the
//! front end (`-flto=thin -c`, which ccache caches), the wrapper for the
//! backend (`-x ir -fthinlto-index=…`, which ccache cannot cache: it counts
//! "unsupported source language" and runs the compiler). Real ccache, real
//! clang and ld.lld, commands run through /bin/sh as kbuild's `$(CC) …`
//! recipes are: the composed forms give the natives plain clang gives;
//! after a touch ccache serves the front end and the backend compiles only
//! the touched object, after an edit the edited object and its importer; masquerading with ccache's
//! links before ours works, ours before ccache's is a loop stopped with an
//! error, not a hang.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use thinlto_dist_tests::*;

/// a.c calls b.c's g (imported into a's backend); c.c stands alone.
const SOURCES: [(&str, &str); 3] = [
    ("a.c", "int g(int);\nint f(int x) { return g(x) + 1; }\n"),
    ("b.c", "int g(int x) { return x * 2; }\n"),
    ("c.c", "int h(void) { return 3; }\n"),
];
const OBJECTS: [&str; 3] = ["a", "b", "c"];

/// ccache is a prerequisite: missing, it fails the test naming the
/// package (a skip would look like a pass; `cargo xtask setup` installs it).
fn ccache() -> PathBuf {
    thinlto_index::toolchain::find_program("ccache", std::env::var_os("PATH").as_ref())
        .unwrap_or_else(|e| {
            panic!("{e}: install ccache (apt-get install -y ccache; cargo xtask setup does)")
        })
}

/// A tree (in a directory whose name has a space) with its own ccache
/// directory and the environment of one way of running the compiler.
struct Tree {
    dir: tempfile::TempDir,
    /// `$(CC)` as kbuild's recipes spell it.
    cc: String,
    /// PATH for every command.
    path: String,
    /// Extra environment (CCACHE_PATH).
    env: Vec<(String, String)>,
}

impl Tree {
    fn new(cc: &str) -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("thinlto-dist ccache.")
            .tempdir()
            .unwrap();
        for (name, text) in SOURCES {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Tree {
            dir,
            cc: cc.to_string(),
            path: std::env::var("PATH").unwrap_or_default(),
            env: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `sh -c SCRIPT` in the tree, `$(CC)` in it replaced by the compiler
    /// command's text, as make expands a recipe.
    fn sh(&self, script: &str) -> Output {
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(script.replace("$(CC)", &self.cc))
            .current_dir(self.path())
            .env("PATH", &self.path)
            .env("CCACHE_DIR", self.path().join(".ccache"))
            .env("THINLTO_WRAP_EXPLAIN", "1")
            .env_remove("CCACHE_PATH")
            .env_remove("CCACHE_COMPILERTYPE")
            .env_remove("CCACHE_DISABLE")
            .env_remove("CCACHE_PREFIX")
            .env_remove("THINLTO_WRAP_MASQUERADE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn sh_ok(&self, script: &str) -> Output {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The front end of the objects `changed` (what make would rebuild),
    /// the thin link (with imports files) and every backend compile (the
    /// link rewrote every shard: stock kbuild reruns them all), as kbuild's
    /// distributed mode runs them; returns the backend's stderr.
    fn build(&self, changed: &[&str]) -> String {
        let tc = toolchain();
        for o in changed {
            // kbuild's dependency flag: ccache takes it only from a compiler
            // it knows to be clang or gcc.
            self.sh_ok(&format!(
                "$(CC) -Wp,-MMD,.{o}.o.d -O2 -flto=thin -c -o {o}.o {o}.c"
            ));
        }
        run_ok(
            Command::new(&tc.ld.path)
                .current_dir(self.path())
                .args(["-m", "elf_x86_64", "-r", "-o", "thin.o"])
                .args(["--thinlto-index-only=index", "--thinlto-emit-imports-files"])
                .args(OBJECTS.map(|o| format!("{o}.o"))),
        );
        let mut err = String::new();
        for o in OBJECTS {
            let out = self.sh_ok(&format!(
                "$(CC) -O2 -x ir -fno-lto -Wno-unused-command-line-argument \
                 -fthinlto-index={o}.o.thinlto.bc -c -o {o}.native.o {o}.o"
            ));
            err.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        err
    }

    fn natives(&self) -> BTreeMap<String, Vec<u8>> {
        OBJECTS
            .iter()
            .map(|o| {
                let n = format!("{o}.native.o");
                (n.clone(), std::fs::read(self.path().join(&n)).unwrap())
            })
            .collect()
    }

    /// ccache's counters for this tree's cache directory.
    fn stats(&self) -> BTreeMap<String, u64> {
        let out = self.sh_ok("ccache --print-stats");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('\t')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    fn zero_stats(&self) {
        self.sh_ok("ccache -z >/dev/null");
    }

    fn edit_b(&self) {
        std::fs::write(self.path().join("b.c"), "int g(int x) { return x * 3; }\n").unwrap();
    }
}

/// The wrapper's verdicts in a backend run's stderr, by native.
fn verdicts(stderr: &str) -> BTreeMap<String, String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("thinlto-backend wrap: "))
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| {
            let v = if v.starts_with("runs") {
                "runs"
            } else {
                "up to date"
            };
            (n.to_string(), v.to_string())
        })
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| (format!("{n}.native.o"), v.to_string()))
        .collect()
}

/// The plain compiler's natives, before and after the edit of b.c.
fn reference() -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>) {
    let t = Tree::new(&toolchain().cc.spelled);
    t.build(&OBJECTS);
    let before = t.natives();
    t.edit_b();
    t.build(&["b"]);
    (before, t.natives())
}

/// ccache's hits, direct or (for a source written this very second, which
/// ccache will not trust in direct mode) through the preprocessor.
fn hits(s: &BTreeMap<String, u64>) -> u64 {
    s["direct_cache_hit"] + s["preprocessed_cache_hit"]
}

/// Runs the three rounds (cold, a touch, an edit) in `t`, checking the
/// natives against plain clang's and the counters of ccache and the
/// wrapper. `ccache_sees_backend`: whether every backend command passes
/// through ccache, even one the wrapper finds up to date (ccache first).
fn three_rounds(t: &Tree, ccache_sees_backend: bool) {
    let (before, after) = reference();
    // ccache counts each backend command it passes on uncached.
    let passed = |ran: u64| if ccache_sees_backend { 3 } else { ran };

    // Cold: ccache misses every front end, the wrapper runs every backend.
    let err = t.build(&OBJECTS);
    assert_eq!(
        verdicts(&err),
        expect(&[("a", "runs"), ("b", "runs"), ("c", "runs")]),
        "{err}"
    );
    let s = t.stats();
    assert_eq!(s["cache_miss"], 3, "{s:?}");
    assert_eq!(s["unsupported_source_language"], 3, "{s:?}");
    assert_eq!(t.natives(), before);

    // A touch of c.c: ccache serves its front end; the wrapper reruns only
    // c's backend (a front-end object rebuilt: the `.incbin` rule) and
    // finds a and b up to date.
    t.zero_stats();
    std::fs::write(t.path().join("c.c"), SOURCES[2].1).unwrap();
    let err = t.build(&["c"]);
    assert_eq!(
        verdicts(&err),
        expect(&[("a", "up to date"), ("b", "up to date"), ("c", "runs")]),
        "{err}"
    );
    let s = t.stats();
    assert_eq!((s["cache_miss"], hits(&s)), (0, 1), "{s:?}");
    assert_eq!(s["unsupported_source_language"], passed(1), "{s:?}");
    assert_eq!(t.natives(), before);

    // A real edit of b.c: a front-end miss; the backend runs for b and for
    // a, which imports b's g; c is up to date.
    t.zero_stats();
    t.edit_b();
    let err = t.build(&["b"]);
    assert_eq!(
        verdicts(&err),
        expect(&[("a", "runs"), ("b", "runs"), ("c", "up to date")]),
        "{err}"
    );
    let s = t.stats();
    assert_eq!((s["cache_miss"], hits(&s)), (1, 0), "{s:?}");
    assert_eq!(s["unsupported_source_language"], passed(2), "{s:?}");
    assert_eq!(t.natives(), after);
    assert_ne!(before, after, "the edit changed no native");

    // Back to the old b.c: ccache serves the old bitcode, the backend
    // reruns for b and a and gives the old natives again.
    t.zero_stats();
    std::fs::write(t.path().join("b.c"), SOURCES[1].1).unwrap();
    let err = t.build(&["b"]);
    assert_eq!(
        verdicts(&err),
        expect(&[("a", "runs"), ("b", "runs"), ("c", "up to date")]),
        "{err}"
    );
    let s = t.stats();
    assert_eq!((s["cache_miss"], hits(&s)), (0, 1), "{s:?}");
    assert_eq!(t.natives(), before);
}

#[test]
fn wrap_ccache_clang_caches_the_front_end_and_decides_the_backend() {
    ccache();
    let cc = format!(
        "'{}' wrap ccache {}",
        bin("thinlto-backend").display(),
        toolchain().cc.spelled
    );
    three_rounds(&Tree::new(&cc), false);
}

/// Links named `name` to `target` in a new directory of `t`.
fn link_dir(t: &Tree, dir: &str, name: &str, target: &Path) -> PathBuf {
    let d = t.path().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::symlink(target, d.join(name)).unwrap();
    d
}

/// The compiler's bare name (`clang-19`): what kbuild's CC says and what
/// both masquerading links are called.
fn cc_name() -> String {
    format!("clang{}", llvm_suffix())
}

#[test]
fn masquerading_with_ccaches_links_first_composes() {
    let ccache = ccache();
    let name = cc_name();
    let mut t = Tree::new(&name);
    let ccache_links = link_dir(&t, "ccache links", &name, &ccache);
    let ours = link_dir(&t, "our links", &name, &bin("thinlto-backend"));
    t.path = format!("{}:{}:{}", ccache_links.display(), ours.display(), t.path);
    // ccache names the compiler by what its link points at, `thinlto-backend`:
    // "other", for which it caches no compile with kbuild's `-Wp,-MMD,…`.
    t.env.push(("CCACHE_COMPILERTYPE".into(), "clang".into()));
    three_rounds(&t, true);
}

#[test]
fn masquerading_with_ours_first_and_ccache_path_composes() {
    let ccache = ccache();
    let name = cc_name();
    let mut t = Tree::new(&name);
    let ours = link_dir(&t, "our links", &name, &bin("thinlto-backend"));
    let ccache_links = link_dir(&t, "ccache links", &name, &ccache);
    // ccache looks for the real compiler in CCACHE_PATH only.
    t.env.push(("CCACHE_PATH".into(), t.path.clone()));
    t.path = format!("{}:{}:{}", ours.display(), ccache_links.display(), t.path);
    three_rounds(&t, false);
}

#[test]
fn masquerading_with_ours_first_and_no_ccache_path_is_a_loop_error() {
    let ccache = ccache();
    let name = cc_name();
    let mut t = Tree::new(&name);
    let ours = link_dir(&t, "our links", &name, &bin("thinlto-backend"));
    let ccache_links = link_dir(&t, "ccache links", &name, &ccache);
    t.path = format!("{}:{}:{}", ours.display(), ccache_links.display(), t.path);
    let out = t.sh("$(CC) -O2 -flto=thin -c -o a.o a.c");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{name} on PATH leads back to this wrapper"))
            && err.contains("CCACHE_PATH"),
        "{err}"
    );
}
