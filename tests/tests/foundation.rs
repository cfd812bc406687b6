//! The foundation: the sample tree's `.cmd` files as GNU make reads them,
//! the make reference flow end to end, and one-line errors for bad setups.

use std::path::Path;
use std::process::Command;

use thinlto_dist_tests::{bin, fe_tree, rebuild_fe, run_ok, sample_tree, toolchain};
use xtask::sample::reference::{self, ReferenceOptions};
use xtask::sample::tree::{Lang, Tree};

/// What GNU make sees after including a `.cmd` file: each variable's value,
/// one per line, printed by make itself.
fn make_view(tree: &Path, cmd_file: &str, vars: &[String]) -> Vec<String> {
    let mut mk = format!("include {cmd_file}\n");
    for v in vars {
        mk.push_str(&format!("$(info <$(strip $({v}))>)\n"));
    }
    mk.push_str("all: ;\n");
    let out = run_ok(
        Command::new("make")
            .args(["-s", "-rR", "-f", "-", "all"])
            .current_dir(tree)
            .stdin(std::process::Stdio::piped())
            .env_remove("MAKEFLAGS")
            .spawn_with_stdin(&mk),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix('<')
                .and_then(|l| l.strip_suffix('>'))
                .unwrap_or_else(|| panic!("unexpected make output {l:?}"))
                .to_string()
        })
        .collect()
}

trait SpawnWithStdin {
    fn spawn_with_stdin(&mut self, input: &str) -> &mut Self;
}

impl SpawnWithStdin for Command {
    /// Feeds `input` on stdin through a file, keeping `run_ok`'s interface.
    fn spawn_with_stdin(&mut self, input: &str) -> &mut Self {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), input).unwrap();
        let file = std::fs::File::open(f.path()).unwrap();
        self.stdin(file)
    }
}

#[test]
fn cmd_files_round_trip_through_make() {
    let t = fe_tree(40, true);
    let tree = Tree::load(t.path()).unwrap();
    let cc = &toolchain().cc.spelled;
    assert!(tree.objects.len() > 40);
    for obj in &tree.objects {
        let target = &obj.target;
        let vars = vec![
            format!("savedcmd_{target}"),
            format!("source_{target}"),
            format!("deps_{target}"),
            format!("saved_c_flags_{target}"),
        ];
        let seen = make_view(t.path(), &obj.cmd_file(), &vars);
        // make collapses runs of spaces only through $(strip); compare the
        // same way for the command, exactly for the rest.
        let strip = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            seen[0],
            strip(&obj.command(cc, &tree.top)),
            "{target}: savedcmd_"
        );
        assert_eq!(seen[1], obj.source, "{target}: source_");
        // Every dependency make sees exists, and the headers the sources
        // include are among them ($(wildcard ...) of absent config files
        // expands to nothing, as in kbuild).
        let deps: Vec<&str> = seen[2].split_whitespace().collect();
        for d in &deps {
            assert!(
                t.path().join(d).is_file(),
                "{target}: dep {d} does not exist"
            );
        }
        if obj.lang == Lang::C && obj.target.starts_with("gen/d") {
            assert!(deps.contains(&"include/gen/core.h"), "{target}: {deps:?}");
        }
        assert!(
            deps.contains(&"include/linux/export.h"),
            "{target}: {deps:?}"
        );
        assert!(!deps
            .iter()
            .any(|d| d.ends_with("kconfig.h") || d.ends_with("autoconf.h")));
        match obj.lang {
            Lang::C => assert_eq!(seen[3], obj.flags, "{target}: saved_c_flags_"),
            Lang::Asm => assert_eq!(seen[3], "", "{target}: asm has no saved_c_flags_"),
        }
    }
}

#[test]
fn cmd_file_has_kbuild_layout() {
    let t = sample_tree();
    let text = std::fs::read_to_string(t.path().join("kernel/.core.o.cmd")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("savedcmd_kernel/core.o := "));
    assert!(lines[0].contains("  -DKBUILD_MODFILE"), "double space kept");
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], "source_kernel/core.o := kernel/core.c");
    assert_eq!(lines[4], "deps_kernel/core.o := \\");
    assert!(text.contains("    $(wildcard include/config/SAMPLE_CORE) \\\n"));
    assert!(text.contains("\nkernel/core.o: $(deps_kernel/core.o)\n\n$(deps_kernel/core.o):\n\nsaved_c_flags_kernel/core.o := "));
    let symvers: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("#SYMVER "))
        .copied()
        .collect();
    assert_eq!(symvers.len(), 4, "{symvers:?}");
    assert!(symvers[0].starts_with("#SYMVER core_counter 0x"));
    // The ../ spelling survives in the .cmd file of the kvm object.
    let kvm = std::fs::read_to_string(t.path().join("virt/kvm/.kvm_main.o.cmd")).unwrap();
    assert!(kvm.starts_with("savedcmd_arch/x86/kvm/../../../virt/kvm/kvm_main.o := "));
    // Assembler objects export too, and have no saved_c_flags_.
    let asm = std::fs::read_to_string(t.path().join("arch/x86/lib/.memops.o.cmd")).unwrap();
    assert!(asm.contains("#SYMVER sample_memcpy 0x"));
    assert!(!asm.contains("saved_c_flags_"));
}

#[test]
fn reference_flow_runs_harness_and_is_incremental() {
    let t = sample_tree();
    let tc = toolchain();
    let opts = ReferenceOptions {
        tree: t.path().to_path_buf(),
        jobs: 2,
        out: "out-ref".into(),
        make_args: vec![],
    };
    let first = reference::run(&opts, tc).unwrap();
    let bitcode = Tree::load(t.path())
        .unwrap()
        .objects
        .iter()
        .filter(|o| o.flags.contains("-flto=thin"))
        .count();
    assert_eq!(first.backend_jobs, bitcode, "{}", first.log);
    let exe = t.path().join("out-ref/vmlinux-harness");
    let output = reference::run_harness(tc, t.path(), &first.vmlinux_o, &exe).unwrap();
    assert_eq!(output, reference::expected_harness_output().unwrap());
    let second = reference::run(&opts, tc).unwrap();
    assert_eq!(second.backend_jobs, 0, "{}", second.log);
}

#[test]
fn front_end_is_incremental() {
    let t = sample_tree();
    let again = rebuild_fe(t.path());
    assert_eq!((again.compiled, again.archives_written), (0, 0));
    // A header edit recompiles exactly its includers.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let hdr = t.path().join("include/sample/api.h");
    let text = std::fs::read_to_string(&hdr).unwrap();
    std::fs::write(&hdr, text + "\n").unwrap();
    let third = rebuild_fe(t.path());
    assert_eq!(
        third.compiled, 11,
        "all C objects include api.h, the .S does not"
    );
}

fn xtask_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin("xtask"));
    // The suite's own LLVM= selection would beat a CC given here.
    cmd.args(args).env_remove("LLVM");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} {env:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.lines().count(),
        1,
        "one-line error expected, got:\n{err}"
    );
    err
}

#[test]
fn bad_setups_are_one_line_errors() {
    let e = xtask_error(&["setup"], &[("LLVM", "yes-please")]);
    assert!(e.contains("unknown LLVM=\"yes-please\""), "{e}");
    let gcc = ["gcc", "cc", "/bin/true"]
        .into_iter()
        .find(|g| which(g))
        .unwrap();
    let e = xtask_error(&["setup"], &[("CC", gcc)]);
    assert!(e.contains(&format!("CC={gcc} is not clang")), "{e}");
    let e = xtask_error(&["fe", "--tree", "/proc/thinlto-dist-no-such-dir"], &[]);
    assert!(
        e.contains("tree directory /proc/thinlto-dist-no-such-dir"),
        "{e}"
    );
    // A tree without a kernel image is said before qemu is looked for
    // (and installed): on a PATH without qemu or apt-get, the error is
    // the tree's.
    let empty = tempfile::tempdir().unwrap();
    let tree = empty.path().join("linux");
    std::fs::create_dir(&tree).unwrap();
    let e = xtask_error(
        &["kernel", "--tree", tree.to_str().unwrap(), "--boot-only"],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    assert!(e.contains("arch/x86/boot/bzImage: no kernel image"), "{e}");
}

fn which(p: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {p}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
