//! Tests that need an LLVM besides the suite's own (LLVM 22 for DTLTO, two
//! versions for the tree's-own-toolchain tests) skip on a machine that
//! lacks it, saying so; CI, which installs every tested version, turns a
//! skip into a failure (`cargo xtask test --no-skip`).
//!
//! Such a test is named `requires_…` (`requires_llvm22_…`,
//! `requires_two_llvms_…`), so that `cargo xtask test` can say which tests
//! a missing version skips.

use std::path::Path;

use thinlto_index::{Toolchain, ToolchainArgs};

/// Set by `cargo xtask test --no-skip`: a test that would skip fails
/// instead. A skipped test passes and cargo test hides a passing test's
/// output, so in CI a skip would look like a pass.
use xtask::provision::TEST_NO_SKIP_VAR as NO_SKIP_VAR;

/// Says on stderr that `test` was skipped and why (`SKIPPED test: why`);
/// panics with the same words when [`NO_SKIP_VAR`] is set.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}; `cargo xtask setup` installs every tested LLVM");
    if std::env::var_os(NO_SKIP_VAR).is_some_and(|v| !v.is_empty()) {
        panic!("{line} ({NO_SKIP_VAR} is set: a skip is a failure)");
    }
    eprintln!("{line}");
}

/// The probed `clang-N`/`ld.lld-N`/`llvm-ar-N` of LLVM `version` (kbuild's
/// `LLVM=-N`), or None after [`skip`]ping `test`.
pub fn llvm_version(test: &str, version: u32) -> Option<Toolchain> {
    let args = ToolchainArgs {
        llvm: Some(format!("-{version}")),
        ..Default::default()
    };
    match Toolchain::resolve(&args).and_then(|mut tc| tc.probe().map(|()| tc)) {
        Ok(tc) => Some(tc),
        Err(e) => {
            skip(test, &format!("no LLVM {version} ({e:#})"));
            None
        }
    }
}

/// The installed LLVM versions with clang and ld.lld in `/usr/lib/llvm-N/bin`
/// and `clang-N` in /usr/bin, oldest first.
pub fn installed_llvms() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("llvm-")?.parse().ok())
        .filter(|n| {
            ["clang", "ld.lld"]
                .iter()
                .all(|t| Path::new(&format!("/usr/lib/llvm-{n}/bin/{t}")).is_file())
                && Path::new(&format!("/usr/bin/clang-{n}")).exists()
        })
        .collect();
    v.sort();
    v
}

/// The oldest and newest installed LLVM when they differ; else None after
/// [`skip`]ping `test`.
pub fn two_llvms(test: &str) -> Option<(u32, u32)> {
    let versions = installed_llvms();
    let (Some(&old), Some(&new)) = (versions.first(), versions.last()) else {
        skip(test, "no LLVM installed in /usr/lib/llvm-N");
        return None;
    };
    if old == new {
        skip(
            test,
            &format!(
                "only LLVM {old} is installed; it needs two versions (e.g. clang-19 and clang-22)"
            ),
        );
        return None;
    }
    Some((old, new))
}
