//! Shared helpers for the cross-tool integration tests: the real toolchain,
//! the workspace's built binaries, fresh front-end trees, and a real
//! BuildGrid for the remote cache ([`buildgrid`]).

pub mod buildgrid;
pub mod docflags;
pub mod imports;
pub mod llvm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;
pub use thinlto_backend::{JobRecord, JobStatus};
use thinlto_index::{Toolchain, ToolchainArgs};
use xtask::sample::fe::{FeOptions, FeReport};

/// The resolved and probed LLVM toolchain (installed by `cargo xtask setup`).
pub fn toolchain() -> &'static Toolchain {
    static TC: OnceLock<Toolchain> = OnceLock::new();
    TC.get_or_init(|| {
        let mut tc = Toolchain::resolve(&ToolchainArgs::default()).unwrap_or_else(|e| {
            panic!("no LLVM toolchain for the integration tests: {e:#} (cargo xtask setup installs it)")
        });
        tc.probe().expect("toolchain probe");
        tc
    })
}

/// The `LLVM=` suffix of the suite's toolchain (`-19`, `-22`): the major
/// version of its compiler, for the tests that spell names kbuild's way
/// (`LLVM=-N`, `clang-N`).
pub fn llvm_suffix() -> String {
    let version = toolchain().cc.version.as_deref().unwrap_or_default();
    let major = version
        .split_once("version ")
        .map(|(_, v)| v.split('.').next().unwrap_or_default())
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no major version in the compiler's {version:?}"));
    format!("-{major}")
}

/// The directory of the suite's real LLVM programs (`/usr/lib/llvm-N/bin`:
/// where `clang` itself lives once every symlink is resolved), which also
/// holds the tools the toolchain does not name (`llvm-dwarfdump`).
pub fn llvm_bin_dir() -> PathBuf {
    let cc = std::fs::canonicalize(&toolchain().cc.path)
        .unwrap_or_else(|e| panic!("{}: {e}", toolchain().cc.path.display()));
    cc.parent().expect("clang's directory").to_path_buf()
}

/// A binary of the workspace (`thinlto-index`, …), built by `cargo build`
/// and no older than any source it is built from: `cargo test` builds the
/// test executables, not the binaries they run, so after an edit a plain
/// `cargo test` would test the old binary.
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins; cargo xtask test does)",
        p.display()
    );
    // Failing, rather than building it here: `cargo test` holds the build
    // directory's lock while the tests run, so a cargo build from a test
    // would wait for itself.
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if checked.iter().any(|c| c == name) {
        return p;
    }
    if let Some(newer) = newer_source(&xtask::workspace_root(), &p, name) {
        panic!(
            "{} is older than {}: rebuild the binaries (cargo build --workspace --bins; cargo xtask test does)",
            p.display(),
            newer.display()
        );
    }
    checked.push(name.to_string());
    p
}

/// A source of the binary `name` newer than the built `exe`: a file of its
/// crate (the workspace directory of that name) or of a workspace crate it
/// depends on, transitively, except their own tests. Cargo.toml and
/// Cargo.lock are left out: cargo fingerprints them by content, so a mere
/// touch rebuilds nothing and would fail every test until the next edit.
fn newer_source(root: &Path, exe: &Path, name: &str) -> Option<PathBuf> {
    let built = std::fs::metadata(exe).and_then(|m| m.modified()).ok()?;
    let mut crates = vec![name.to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(krate) = crates.pop() {
        if !seen.insert(krate.clone()) {
            continue;
        }
        let manifest = std::fs::read_to_string(root.join(&krate).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{krate}/Cargo.toml: {e}"));
        // A workspace crate is a dependency `NAME.workspace = true` or
        // `NAME = { path = … }` whose NAME is a directory of the workspace
        // with a Cargo.toml.
        crates.extend(manifest.lines().filter_map(|l| {
            let dep = l.split(['.', '=', ' ']).next()?;
            (!dep.is_empty() && dep != krate && root.join(dep).join("Cargo.toml").is_file())
                .then(|| dep.to_string())
        }));
    }
    let mut stack: Vec<PathBuf> = seen.iter().map(|c| root.join(c)).collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let file_name = e.file_name();
            if p.is_dir() {
                if file_name != "tests" && file_name != "target" {
                    stack.push(p);
                }
            } else if file_name != "Cargo.toml"
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > built)
            {
                return Some(p);
            }
        }
    }
    None
}

/// A front-end tree built in a new temporary directory.
pub struct FeTree {
    pub dir: TempDir,
    pub report: FeReport,
}

impl FeTree {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Builds a fresh sample tree (plus `objects` generated objects).
pub fn fe_tree(objects: usize, saved_c_flags: bool) -> FeTree {
    let dir = tempfile::Builder::new()
        .prefix("thinlto-dist-tree.")
        .tempdir()
        .expect("tempdir");
    let report = xtask::sample::fe::build(
        &FeOptions {
            tree: dir.path().to_path_buf(),
            objects,
            jobs: xtask::default_jobs(),
            saved_c_flags,
            quiet: true,
        },
        toolchain(),
    )
    .unwrap_or_else(|e| panic!("front end failed: {e:#}"));
    FeTree { dir, report }
}

/// The bundled sample tree, front end done, with `saved_c_flags_` lines.
pub fn sample_tree() -> FeTree {
    fe_tree(0, true)
}

/// The tree's top-level `KBUILD_LDFLAGS`.
pub fn ldflags(tree: &Path) -> String {
    xtask::sample::tree::Tree::load(tree)
        .expect("tree loads")
        .top
        .ldflags
}

/// Runs a command, panicking with its output on failure.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The directory of the workspace's binaries this test run uses.
pub fn bin_dir() -> PathBuf {
    bin("thinlto-index").parent().unwrap().to_path_buf()
}

/// `$PATH` with the workspace's binaries first (as `cargo xtask install`
/// would put them on it).
pub fn path_with_bins() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// One of our tools, run from `tree` with the toolchain in its environment.
pub fn tool(name: &str, tree: &Path) -> Command {
    let tc = toolchain();
    let mut c = Command::new(bin(name));
    c.current_dir(tree)
        .env("CC", &tc.cc.spelled)
        .env("LD", &tc.ld.spelled)
        .env("AR", &tc.ar.spelled)
        // LLVM= beats CC/LD/AR (as in kbuild): the suite's own selection
        // (`LLVM=-19 cargo test`) must not override what a test names.
        .env_remove("LLVM")
        .env_remove("MAKEFLAGS")
        .env_remove("V")
        // The backend cache is opt-in; a developer's own settings must not
        // turn it on (or point it elsewhere) in tests that do not ask.
        .env_remove("THINLTO_CACHE")
        .env_remove("THINLTO_CACHE_DIR")
        .env_remove("THINLTO_CACHE_SIZE")
        .env_remove("THINLTO_REMOTE_CACHE");
    c
}

/// Stage 2 with our tools: `out/builtin.order`, `out/vmlinux.thinlto-index`
/// and `out/manifest.json` (with imports); returns the manifest.
pub fn thin_link(tree: &Path) -> thinlto_index::Manifest {
    thin_link_with(tree, &[])
}

/// `thin_link` with more `thinlto-index link` arguments (e.g. `--force`).
pub fn thin_link_with(tree: &Path, extra: &[&str]) -> thinlto_index::Manifest {
    let mut args = vec!["--imports"];
    args.extend_from_slice(extra);
    thin_link_args(tree, &args)
}

/// Stage 2 as kbuild runs it: no `--imports` (lld writes no `.imports`
/// files, the manifest lists none).
pub fn thin_link_without_imports(tree: &Path) -> thinlto_index::Manifest {
    thin_link_args(tree, &[])
}

fn thin_link_args(tree: &Path, extra: &[&str]) -> thinlto_index::Manifest {
    std::fs::create_dir_all(tree.join("out")).unwrap();
    let order = run_ok(tool("thinlto-index", tree).args(["order", "vmlinux.a"]));
    std::fs::write(tree.join("out/builtin.order"), &order.stdout).unwrap();
    let m = run_ok(
        tool("thinlto-index", tree)
            .args(["link", "--ldflags", &ldflags(tree)])
            .args(["-o", "out/vmlinux.thinlto-index"])
            .args(extra)
            .arg("out/builtin.order"),
    );
    std::fs::write(tree.join("out/manifest.json"), &m.stdout).unwrap();
    serde_json::from_slice(&m.stdout).expect("manifest")
}

/// Runs `thinlto-backend --index out/vmlinux.thinlto-index ARGS…`; returns
/// the output and the parsed job records.
pub fn backend(tree: &Path, args: &[&str]) -> (Output, Vec<JobRecord>) {
    let out = tool("thinlto-backend", tree)
        .args(["-q", "--index", "out/vmlinux.thinlto-index"])
        .args(args)
        .output()
        .expect("thinlto-backend runs");
    let records = job_records(&out.stdout);
    (out, records)
}

/// thinlto-backend's stdout as typed job records (a line that is not one
/// fails the test).
pub fn job_records(stdout: &[u8]) -> Vec<JobRecord> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The records with a given status, by object.
pub fn with_status(records: &[JobRecord], status: JobStatus) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .filter(|r| r.status == status)
        .map(|r| r.object.clone())
        .collect();
    v.sort();
    v
}

/// Runs the make reference flow on a tree (top-level outputs in out-ref/).
pub fn reference(tree: &Path) -> xtask::sample::reference::ReferenceReport {
    xtask::sample::reference::run(
        &xtask::sample::reference::ReferenceOptions {
            tree: tree.to_path_buf(),
            jobs: 2,
            out: "out-ref".into(),
            make_args: vec![],
        },
        toolchain(),
    )
    .unwrap_or_else(|e| panic!("reference flow: {e:#}"))
}

/// Writes an executable shell script.
pub fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Polls until `event` happens, for tests that must act at a point of a
/// run rather than after a guessed delay; panics naming the event after a
/// generous deadline (a run that never gets there fails, not hangs).
pub fn wait_for(what: &str, mut event: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !event() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 120 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A wrapper around the suite's real clang whose backend compiles (`-x ir`)
/// can be held: once the gate is closed, each one it starts leaves a mark
/// and waits for [`GatedCompiler::release`] (or at most 120 s, so that a
/// wrapper nobody stops does not outlive the test). A test interrupts a run
/// when a compile is known to be under way, not after a guessed delay.
pub struct GatedCompiler {
    pub path: PathBuf,
    dir: PathBuf,
}

impl GatedCompiler {
    /// The wrapper, as `dir/clang-gated`, its marks in `dir/gate.d/`.
    pub fn new(dir: &Path) -> GatedCompiler {
        let gates = dir.join("gate.d");
        std::fs::create_dir_all(&gates).unwrap();
        let path = dir.join("clang-gated");
        script(
            &path,
            &format!(
                "#!/bin/sh
d='{}'
case \" $* \" in *' -x ir '*)
  if [ -e \"$d/closed\" ]; then
    : > \"$d/held.$$\"; n=0
    while [ ! -e \"$d/released\" ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done
  fi;;
esac
exec '{}' \"$@\"
",
                gates.display(),
                toolchain().cc.path.display()
            ),
        );
        GatedCompiler { path, dir: gates }
    }

    /// Holds every backend compile that starts from now on.
    pub fn close(&self) {
        std::fs::write(self.dir.join("closed"), "").unwrap();
    }

    /// Whether a backend compile is being held.
    pub fn holding(&self) -> bool {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("held."))
    }

    /// Lets held and later compiles run.
    pub fn release(&self) {
        std::fs::write(self.dir.join("released"), "").unwrap();
    }
}

/// The front end of a tree again, incrementally (as make would after an
/// edit); returns what it did.
pub fn rebuild_fe(tree: &Path) -> FeReport {
    // Let an edit made just before be newer than the objects.
    std::thread::sleep(std::time::Duration::from_millis(20));
    xtask::sample::fe::build(
        &FeOptions {
            tree: tree.to_path_buf(),
            objects: 0,
            jobs: 2,
            saved_c_flags: true,
            quiet: true,
        },
        toolchain(),
    )
    .unwrap_or_else(|e| panic!("front end failed: {e:#}"))
}

/// Stage 4 with our tools after `thin_link` and a backend run:
/// `out/vmlinux.a`, then `out/vmlinux.o`; returns the latter.
pub fn stage4(tree: &Path) -> PathBuf {
    run_ok(tool("thinlto-backend", tree).args([
        "archive",
        "--order",
        "out/builtin.order",
        "--index",
        "out/vmlinux.thinlto-index",
        "-o",
        "out/vmlinux.a",
    ]));
    ld_r(tree, "out/vmlinux.o", "out/vmlinux.a");
    tree.join("out/vmlinux.o")
}

/// `$(LD) $(KBUILD_LDFLAGS) -r -o OUTPUT --whole-archive ARCHIVE`.
pub fn ld_r(tree: &Path, output: &str, archive: &str) {
    run_ok(
        Command::new(&toolchain().ld.path)
            .current_dir(tree)
            .args(ldflags(tree).split_whitespace())
            .args([
                "-r",
                "-o",
                output,
                "--whole-archive",
                archive,
                "--no-whole-archive",
            ]),
    );
}

/// Every native object of a manifest's bitcode jobs, with its bytes, in
/// manifest order (a missing one fails the test, naming it).
pub fn native_files(tree: &Path, m: &thinlto_index::Manifest) -> Vec<(String, Vec<u8>)> {
    m.bitcode()
        .map(|o| {
            let n = format!("{}.thinlto-native.o", o.object.trim_end_matches(".o"));
            let bytes = std::fs::read(tree.join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, bytes)
        })
        .collect()
}

/// Appends a line to a text file of the tree (a `Kbuild` flag for one object).
pub fn append_line(path: &Path, line: &str) {
    let mut text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    /// Sets a file's modification time (no sleeping for the clock to move).
    fn set_mtime(path: &std::path::Path, t: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn a_binary_is_stale_when_a_source_of_it_or_of_a_crate_it_uses_is_newer() {
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path();
        let files = [
            (
                "tool/Cargo.toml",
                "[package]\nname = \"tool\"\n[dependencies]\nlib.workspace = true\n",
            ),
            ("tool/src/main.rs", ""),
            ("lib/Cargo.toml", "[package]\nname = \"lib\"\n"),
            ("lib/src/lib.rs", ""),
            ("lib/build.rs", ""),
            ("lib/zygote/shim.c", ""),
            ("lib/tests/t.rs", ""),
            ("other/Cargo.toml", "[package]\nname = \"other\"\n"),
            ("other/src/lib.rs", ""),
            ("target/debug/tool", ""),
        ];
        let then = SystemTime::now() - Duration::from_secs(3600);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            set_mtime(&p, then);
        }
        let exe = root.join("target/debug/tool");
        set_mtime(&exe, then + Duration::from_secs(60));
        assert_eq!(super::newer_source(root, &exe, "tool"), None);
        let later = then + Duration::from_secs(120);
        // Not sources of the binary: another crate, a crate's own tests,
        // a manifest (cargo compares those by content).
        for p in ["other/src/lib.rs", "lib/tests/t.rs", "lib/Cargo.toml"] {
            set_mtime(&root.join(p), later);
            assert_eq!(super::newer_source(root, &exe, "tool"), None, "{p}");
        }
        for p in [
            "tool/src/main.rs",
            "lib/src/lib.rs",
            "lib/build.rs",
            "lib/zygote/shim.c",
        ] {
            set_mtime(&root.join(p), later);
            assert_eq!(
                super::newer_source(root, &exe, "tool"),
                Some(root.join(p)),
                "{p}"
            );
            set_mtime(&root.join(p), then);
        }
    }
}
