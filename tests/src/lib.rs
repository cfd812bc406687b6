//! Shared helpers for the cross-tool integration tests: the real toolchain,
//! the workspace's built binaries, and fresh front-end trees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;
use thinlto_index::{Toolchain, ToolchainArgs};
use xtask::fe::{FeOptions, FeReport};

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

/// A binary of the workspace (`thinlto-index`, …), built by `cargo build`.
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
    p
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
    let report = xtask::fe::build(
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
    xtask::tree::Tree::load(tree)
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
