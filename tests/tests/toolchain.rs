//! Toolchain discovery with real tools under made-up names: the search for
//! the newest complete `clang-N`/`ld.lld-N`/`llvm-ar-N` set must give the
//! same answer whether or not `/usr/lib/llvm-*` exists on the machine.

use std::ffi::OsString;
use std::path::Path;

use thinlto_dist_tests::toolchain;
use thinlto_index::toolchain::{Origin, ToolEnv};
use thinlto_index::{Toolchain, ToolchainArgs};

/// A PATH directory holding symlinks named `names` to the real tools.
fn fake_path(dir: &Path, names: &[(&str, &Path)]) -> OsString {
    for (name, target) in names {
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    }
    dir.as_os_str().to_owned()
}

#[test]
fn a_complete_set_newer_than_any_installed_wins_and_probes() {
    let real = toolchain();
    let d = tempfile::tempdir().unwrap();
    // 999 beats every /usr/lib/llvm-N; 1000 lacks llvm-ar and must not win.
    let path = fake_path(
        d.path(),
        &[
            ("clang-999", &real.cc.path),
            ("ld.lld-999", &real.ld.path),
            ("llvm-ar-999", &real.ar.path),
            ("clang-1000", &real.cc.path),
            ("ld.lld-1000", &real.ld.path),
        ],
    );
    let env = ToolEnv {
        path: Some(path),
        ..Default::default()
    };
    let mut tc = Toolchain::resolve_in(&ToolchainArgs::default(), &env).unwrap();
    assert_eq!(tc.cc.spelled, "clang-999");
    assert_eq!(tc.ld.spelled, "ld.lld-999");
    assert_eq!(tc.ar.spelled, "llvm-ar-999");
    assert_eq!(tc.cc.path, d.path().join("clang-999"));
    assert_eq!(tc.cc.origin, Origin::Search);
    tc.probe().unwrap();
    assert!(
        tc.cc.version.as_deref().unwrap().contains("clang version"),
        "{:?}",
        tc.cc.version
    );
}

#[test]
fn an_older_path_set_loses_only_to_an_installed_newer_one() {
    let real = toolchain();
    let d = tempfile::tempdir().unwrap();
    let path = fake_path(
        d.path(),
        &[
            ("clang-1", &real.cc.path),
            ("ld.lld-1", &real.ld.path),
            ("llvm-ar-1", &real.ar.path),
        ],
    );
    let env = ToolEnv {
        path: Some(path),
        ..Default::default()
    };
    let tc = Toolchain::resolve_in(&ToolchainArgs::default(), &env).unwrap();
    let installed = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e
                .file_name()
                .to_str()?
                .strip_prefix("llvm-")?
                .parse()
                .ok()?;
            ["clang", "ld.lld", "llvm-ar"]
                .iter()
                .all(|t| e.path().join("bin").join(t).is_file())
                .then_some(v)
        })
        .max();
    match installed {
        Some(n) => assert_eq!(tc.cc.spelled, format!("/usr/lib/llvm-{n}/bin/clang")),
        None => assert_eq!(tc.cc.spelled, "clang-1"),
    }
}
