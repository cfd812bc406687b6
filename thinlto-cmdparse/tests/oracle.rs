//! GNU make + /bin/sh are the oracle: flags written into `.cmd` files the
//! way kbuild writes them must come out of our parser as the same argv the
//! reference recipe (`$(shell sed …)` in a make recipe) hands the compiler.

use std::path::Path;
use std::process::Command;

use thinlto_cmdparse::make::escape_savedcmd;
use thinlto_cmdparse::{CmdFile, CmdRecord};

/// Flag texts as they appear in kernel Makefiles (raw make text).
const CORPUS: &[&str] = &[
    "-O2 -DDEFAULT_SYMBOL_NAMESPACE='\"USB_STORAGE\"'",
    "-DVERSION=\\\"\\\"",
    "-DAPOSTROPHE=\"'A'\"",
    "-DGREETING='\"hello, distributed world\"'",
    "-DIT='it'\\''s'",
    "-DEMPTY='' -DE2=\"\" -DE3=",
    "-include init/utsversion-tmp.h -I arch/x86/kernel/../include/asm/trace",
    "-Wa,--noexecstack -Wl,-z,x -Dx=a=b -Werror=unused-command-line-argument",
    "-DBS=a\\\\b -DSP=a\\ b",
    "  -DTWO   -DSPACES\t-DTAB  ",
    "-DSTR=\"a\\\"b\" -D'X'=1 -D\"Y\"'Z'",
    "-DMID=a#b",
    "-DCOMMENT=1 #-DGONE=1",
    "-DTRAILING=x\\",
];

/// What make + sh make of each saved_c_flags line: one argv per file.
fn make_sh_argv(dir: &Path, n: usize) -> Vec<Vec<String>> {
    let mut mk = String::from(
        "be_flags = $(shell sed -n '/saved_c_flags_/s/.*:= //p' $(dir $@).$(notdir $@).cmd)\n",
    );
    mk.push_str("all:");
    for i in 0..n {
        mk.push_str(&format!(" d/obj{i}.o"));
    }
    mk.push_str("\n%.o: FORCE\n\t@printf '<%s>\\n' ARGV $(be_flags)\nFORCE:\n.PHONY: FORCE all\n");
    std::fs::write(dir.join("Makefile"), mk).unwrap();
    let out = Command::new("make")
        .args(["-s", "-rR", "-j1"])
        .current_dir(dir)
        .env_remove("MAKEFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    argv_blocks(&out.stdout)
}

/// The words a recipe printed with `printf '<%s>\n' ARGV …`, one argv per
/// ARGV marker.
fn argv_blocks(stdout: &[u8]) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = Vec::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        let w = line
            .strip_prefix('<')
            .and_then(|l| l.strip_suffix('>'))
            .expect("<word>")
            .to_string();
        if w == "ARGV" {
            all.push(Vec::new());
        } else {
            all.last_mut().expect("ARGV first").push(w);
        }
    }
    all
}

/// A `.cmd` file as kbuild writes it: savedcmd_ make-escaped by printf,
/// then saved_c_flags_ raw after an empty line.
fn write_cmd(dir: &Path, i: usize, flags: &str) {
    let target = format!("d/obj{i}.o");
    let cmd = format!("clang -Wp,-MMD,d/.obj{i}.o.d -nostdinc {flags} -c -o {target} d/obj{i}.c");
    let text = format!(
        "savedcmd_{target} := {}\n\nsource_{target} := d/obj{i}.c\n\ndeps_{target} := \\\n  include/x.h \\\n\n{target}: $(deps_{target})\n\n$(deps_{target}):\n\nsaved_c_flags_{target} := {flags}\n#SYMVER sym{i} 0x{i:08x}\n",
        escape_savedcmd(&cmd)
    );
    std::fs::write(dir.join(format!("d/.obj{i}.o.cmd")), text).unwrap();
}

#[test]
fn saved_flags_match_make_and_sh() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("d")).unwrap();
    for (i, f) in CORPUS.iter().enumerate() {
        write_cmd(d.path(), i, f);
    }
    let oracle = make_sh_argv(d.path(), CORPUS.len());
    for (i, flags) in CORPUS.iter().enumerate() {
        let c = CmdFile::read(&d.path().join(format!("d/.obj{i}.o.cmd"))).unwrap();
        let ours = c.backend_flags().unwrap().argv;
        assert_eq!(ours, oracle[i], "flags {flags:?}");
        // The savedcmd fallback gives the same flags, plus -nostdinc. (Not
        // for a trailing backslash: inside the full command it escapes the
        // space after it, in the compile itself as in our reading.)
        if flags.ends_with('\\') {
            continue;
        }
        let mut no_saved = c.clone();
        no_saved.saved_c_flags = None;
        let mut fb = no_saved.backend_flags().unwrap().argv;
        assert_eq!(fb.remove(0), "-nostdinc");
        assert_eq!(fb, oracle[i], "fallback for {flags:?}");
    }
}

#[test]
fn be_flags_output_in_a_recipe_runs_the_same_argv() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("d")).unwrap();
    for (i, f) in CORPUS.iter().enumerate() {
        write_cmd(d.path(), i, f);
    }
    let oracle = make_sh_argv(d.path(), CORPUS.len());
    let exe = env!("CARGO_BIN_EXE_thinlto-cmdparse");
    let mut mk = String::from("all:");
    for i in 0..CORPUS.len() {
        mk.push_str(&format!(" d/obj{i}.o"));
    }
    mk.push_str(&format!(
        "\n%.o: FORCE\n\t@printf '<%s>\\n' ARGV $(shell {exe} --be-flags $@)\nFORCE:\n.PHONY: FORCE all\n"
    ));
    std::fs::write(d.path().join("Makefile.ours"), mk).unwrap();
    let out = Command::new("make")
        .args(["-s", "-rR", "-f", "Makefile.ours"])
        .current_dir(d.path())
        .env_remove("MAKEFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(argv_blocks(&out.stdout), oracle);
}

/// Where make and sh would mangle a flag, we refuse rather than guess: a
/// raw `$` is expanded by sh (to the environment's value, usually empty),
/// which no kernel flag intends. The reference silently loses the text.
#[test]
fn raw_dollar_is_an_error_where_sh_would_expand_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("d")).unwrap();
    write_cmd(d.path(), 0, "-DPRICE=$HOME_not_set_anywhere -O2");
    let oracle = make_sh_argv(d.path(), 1);
    assert_eq!(
        oracle[0],
        vec!["-DPRICE=", "-O2"],
        "sh expands the unset variable to nothing"
    );
    let c = CmdFile::read(&d.path().join("d/.obj0.o.cmd")).unwrap();
    let e = c.backend_flags().unwrap_err().to_string();
    assert!(
        e.contains("d/.obj0.o.cmd") && e.contains("shell expansion"),
        "{e}"
    );
}

#[test]
fn cli_batch_reports_bad_files_and_keeps_going() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("d")).unwrap();
    write_cmd(d.path(), 0, "-O2");
    std::fs::write(
        d.path().join("d/.bad.o.cmd"),
        b"savedcmd_d/bad.o := x\nsaved_c_flags_d/bad.o := -D\xff\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
        .args(["d/obj0.o", "d/bad.o", "d/obj0.thinlto-native.o"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = records(&out.stdout);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].c_flags.as_deref(), Some(&["-O2".to_string()][..]));
    assert_eq!(lines[0].symvers.as_ref().unwrap()[0].crc, 0);
    assert!(lines[1]
        .error
        .as_deref()
        .unwrap()
        .contains("d/.bad.o.cmd:2:"));
    assert_eq!(lines[2].cmd_file, "d/.obj0.o.cmd");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("d/.bad.o.cmd:2: invalid UTF-8"), "{err}");
    let sym = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
        .args(["--symvers", "d/obj0.o"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(sym.stdout).unwrap(), "sym0\t0x00000000\n");
}

/// The JSON Lines of `thinlto-cmdparse`, read with its own record type.
fn records(stdout: &[u8]) -> Vec<CmdRecord> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A `#SYMVER` line modpost skips (and the reference's sed never reads)
/// costs the object neither its flags nor its other CRCs.
#[test]
fn a_malformed_symver_line_is_only_a_warning() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("d")).unwrap();
    write_cmd(d.path(), 0, "-O2 -DX=1");
    let p = d.path().join("d/.obj0.o.cmd");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("#SYMVER bogus notanumber\n#SYMVER good 0x2a\n");
    std::fs::write(&p, text).unwrap();
    let line = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("#SYMVER bogus"))
        .unwrap()
        + 1;
    let out = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
        .arg("d/obj0.o")
        .current_dir(d.path())
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r = records(&out.stdout);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].error, None);
    assert_eq!(
        r[0].c_flags.as_deref(),
        Some(&["-O2".to_string(), "-DX=1".to_string()][..])
    );
    let syms: Vec<(&str, u32)> = r[0]
        .symvers
        .iter()
        .flatten()
        .map(|s| (s.symbol.as_str(), s.crc))
        .collect();
    assert_eq!(syms, vec![("sym0", 0), ("good", 0x2a)]);
    assert!(
        err.contains(&format!(
            "warning: d/.obj0.o.cmd:{line}: skipping \"#SYMVER bogus notanumber\""
        )),
        "{err}"
    );
    let be = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
        .args(["--be-flags", "d/obj0.o"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(be.status.success());
    assert_eq!(String::from_utf8(be.stdout).unwrap(), "-O2 -DX=1\n");
}

#[test]
fn cli_fields_for_shell_loops() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("d")).unwrap();
    write_cmd(d.path(), 0, "-O2 -DX='\"a b\"'");
    let run = |field: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
            .args(["--field", field, "d/obj0.o"])
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run("c_flags"), "-O2\n-DX=\"a b\"\n");
    assert_eq!(run("source"), "d/obj0.c\n");
    assert_eq!(run("deps"), "include/x.h\n");
    assert_eq!(run("c_flags_from"), "saved_c_flags\n");
    let out = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
        .args(["--field", "nope", "d/obj0.o"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let be = Command::new(env!("CARGO_BIN_EXE_thinlto-cmdparse"))
        .args(["--be-flags", "d/obj0.thinlto-native.o"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(be.stdout).unwrap(), "-O2 '-DX=\"a b\"'\n");
}
