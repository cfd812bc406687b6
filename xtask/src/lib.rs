//! The automation behind `cargo xtask`: provisioning (LLVM, BuildGrid), the bundled sample tree
//! and its front end, the make reference flow, and the test entry point.
//! Integration tests use it as a library.

pub mod bench;
pub mod bench_cache;
pub mod bench_dtlto;
pub mod bench_modules;
pub mod bench_remote;
pub mod boot;
pub mod buildgrid;
pub mod cpio;
pub mod deps;
pub mod farm;
pub mod fe;
pub mod flow;
pub mod gen;
pub mod install;
pub mod kbuild;
pub mod kbuild_modes;
pub mod kernel;
pub mod measure;
pub mod modorder;
pub mod modules_cmp;
pub mod oracle;
pub mod proc_cpu;
pub mod provision;
pub mod reference;
pub mod tree;

use std::path::PathBuf;

/// The workspace root (this crate lives in `xtask/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// The default tree for a run: `target/sample`, or `target/gen-N` with
/// generated objects.
pub fn default_tree(objects: usize) -> PathBuf {
    let target = target_dir();
    if objects == 0 {
        target.join("sample")
    } else {
        target.join(format!("gen-{objects}"))
    }
}

/// Available cores, the default for `-j`.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
