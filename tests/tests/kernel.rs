//! `cargo xtask kernel`'s export check on the pre-6.5 layout (Linux 6.1:
//! `__ksymtab_<name>`, no `.export_symbol`), with the golden fixture the
//! real modpost 6.1 ran on.

use std::path::Path;

use thinlto_dist_tests::*;

fn ksymtab_case(name: &str, work: &Path) -> xtask::oracle::SyntheticCase {
    let case = xtask::oracle::synthetic_cases()
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no golden case {name}"));
    assert_eq!(case.version, "6.1");
    xtask::oracle::prepare_case(&case, work, toolchain()).unwrap();
    case
}

#[test]
fn the_export_check_reads_the_pre_6_5_layout() {
    let d = tempfile::tempdir().unwrap();
    let case = ksymtab_case("ksymtab-6.1", d.path());
    let symvers = case.dir.join("out/vmlinux.symvers");
    let listed = std::fs::read_to_string(&symvers).unwrap().lines().count();
    assert!(listed > 0);
    let vmlinux = d.path().join("vmlinux.o");
    let (layout, names) = xtask::kernel::exports_of(&vmlinux).unwrap();
    assert_eq!(layout, modpost_ir::Layout::Ksymtab);
    assert_eq!(names.len(), listed, "{names:?}");
    let check = xtask::kernel::export_check(&vmlinux, &vmlinux, &symvers).unwrap();
    assert!(check.ok, "{check:?}");
    assert_eq!(
        check.name,
        format!("exports same as the tree's vmlinux.o ({listed}, __ksymtab_)")
    );
}

#[test]
fn no_exports_where_the_tree_lists_some_fails() {
    let d = tempfile::tempdir().unwrap();
    let case = ksymtab_case("ksymtab-6.1", d.path());
    // An object with no export marks of either layout, twice: both sides
    // agree on nothing, which is still a failure for a kernel that exports.
    std::fs::write(d.path().join("plain.S"), "\t.text\n\t.globl g\ng: ret\n").unwrap();
    run_ok(
        std::process::Command::new(&toolchain().cc.path)
            .current_dir(d.path())
            .args(["-c", "plain.S", "-o", "plain.o"]),
    );
    let plain = d.path().join("plain.o");
    let symvers = case.dir.join("out/vmlinux.symvers");
    let check = xtask::kernel::export_check(&plain, &plain, &symvers).unwrap();
    assert!(!check.ok, "{check:?}");
    assert!(check.name.contains("(0, "), "{check:?}");
    assert!(
        check.detail.starts_with("no exports found, but ")
            && check.detail.ends_with("vmlinux.symvers lists 3"),
        "{check:?}"
    );
    // Ours missing what the tree exports is named.
    let check = xtask::kernel::export_check(&plain, &d.path().join("vmlinux.o"), &symvers).unwrap();
    assert!(!check.ok);
}
