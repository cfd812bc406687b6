//! The conventions of docs/tools.md's "Conventions" section, checked across
//! the four tools: toolchain flags anywhere, `-o` for what a command
//! writes, `-` for stdin, exit status 0/1/2 with `<tool>: error: <file>`
//! messages, and outputs whose mode follows the umask. And two of the
//! code's and the docs': no import circle inside a crate, and no flag in
//! the docs that the tool's `--help` lacks (issue 28).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use thinlto_dist_tests::*;
use thinlto_dist_tests::{docflags, imports};

const TOOLS: [&str; 4] = [
    "thinlto-index",
    "thinlto-backend",
    "thinlto-cmdparse",
    "modpost-ir",
];

/// Runs `cmd` with `input` on stdin.
fn with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A tool that fails early need not read it all.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Exit status 1, and stderr says `<tool>: error: ` and names `file`.
fn bad_input(name: &str, out: Output, file: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with(&format!("{name}: error: ")))
        .unwrap_or_else(|| panic!("{name}: no `{name}: error:` line in:\n{err}"));
    assert!(line.contains(file), "{name}: {file} not named in {line:?}");
}

#[test]
fn toolchain_flags_go_after_the_subcommand_too() {
    let t = sample_tree();
    thin_link(t.path());
    assert!(backend(t.path(), &[]).0.status.success());
    let tc = toolchain();
    // Accepted, and used: a linker named after `link` is the one that runs.
    let out = tool("thinlto-index", t.path())
        .args(["link", "--ld", "/bin/false", "-o", "out/x.index"])
        .arg("out/builtin.order")
        .output()
        .unwrap();
    bad_input("thinlto-index", out, "/bin/false");
    ok(
        tool("thinlto-index", t.path())
            .args(["link", "--ldflags", &ldflags(t.path())])
            .args(["--ld", &tc.ld.spelled, "-o", "out/vmlinux.thinlto-index"])
            .arg("out/builtin.order")
            .output()
            .unwrap(),
        "link --ld",
    );
    ok(
        tool("thinlto-index", t.path())
            .args(["order", "--llvm", &llvm_suffix(), "vmlinux.a"])
            .output()
            .unwrap(),
        "order --llvm",
    );
    ok(
        tool("thinlto-backend", t.path())
            .args([
                "archive",
                "--ar",
                &tc.ar.spelled,
                "--order",
                "out/builtin.order",
            ])
            .args([
                "--index",
                "out/vmlinux.thinlto-index",
                "-o",
                "out/vmlinux.a",
            ])
            .output()
            .unwrap(),
        "archive --ar",
    );
    // The compiler named after the options is the one that runs.
    let out = tool("thinlto-backend", t.path())
        .args([
            "--index",
            "out/vmlinux.thinlto-index",
            "-B",
            "--cc",
            "/bin/false",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("thinlto-backend: error: "));
    ok(
        tool("modpost-ir", t.path())
            .args(["crcs", "--llvm", &llvm_suffix(), "kernel/core.o"])
            .output()
            .unwrap(),
        "crcs --llvm",
    );
    let out = ok(
        tool("modpost-ir", t.path())
            .args(["crcs", "--print-toolchain"])
            .output()
            .unwrap(),
        "crcs --print-toolchain",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["cc"]["version"]
        .as_str()
        .unwrap()
        .contains("clang version"));
}

#[test]
fn link_writes_dash_o_and_still_takes_index() {
    let t = sample_tree();
    thin_link(t.path());
    for flag in ["-o", "--index"] {
        let idx = format!("out/{}.index", flag.trim_start_matches('-'));
        ok(
            tool("thinlto-index", t.path())
                .args(["link", "--ldflags", &ldflags(t.path()), flag, &idx])
                .arg("out/builtin.order")
                .output()
                .unwrap(),
            flag,
        );
        assert_eq!(
            std::fs::read(t.path().join(&idx)).unwrap(),
            std::fs::read(t.path().join("out/vmlinux.thinlto-index")).unwrap()
        );
    }
}

#[test]
fn dash_is_stdin_everywhere() {
    let t = sample_tree();
    thin_link(t.path());
    let p = t.path();
    let order = std::fs::read(p.join("out/builtin.order")).unwrap();
    let index = std::fs::read(p.join("out/vmlinux.thinlto-index")).unwrap();
    // thinlto-index scan -
    let from_file = ok(
        tool("thinlto-index", p)
            .args(["scan", "out/builtin.order"])
            .output()
            .unwrap(),
        "scan FILE",
    );
    let from_stdin = ok(
        with_stdin(tool("thinlto-index", p).args(["scan", "-"]), &order),
        "scan -",
    );
    assert_eq!(from_stdin.stdout, from_file.stdout);
    // thinlto-index link -: the same manifest; a second run is up to date.
    let link = || {
        with_stdin(
            tool("thinlto-index", p)
                .args(["link", "--ldflags", &ldflags(p), "--imports"])
                .args(["-o", "out/stdin.index", "-"]),
            &order,
        )
    };
    let first = ok(link(), "link -");
    let m: thinlto_index::Manifest = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(m.objects.len(), thin_link(p).objects.len());
    assert_eq!(std::fs::read(p.join("out/stdin.index")).unwrap(), index);
    let again = ok(link(), "link - again");
    assert!(String::from_utf8_lossy(&again.stderr).contains("up to date"));
    // thinlto-backend --index -
    let out = ok(
        with_stdin(
            tool("thinlto-backend", p).args(["-q", "--explain", "--index", "-"]),
            &index,
        ),
        "backend --index -",
    );
    let explained = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        explained.lines().count(),
        m.bitcode().count(),
        "{explained}"
    );
    // thinlto-backend archive --order - / --index -
    let (_, _) = backend(p, &[]);
    let archive = |args: &[&str], input: &[u8], out: &str| {
        ok(
            with_stdin(
                tool("thinlto-backend", p)
                    .arg("archive")
                    .args(args)
                    .args(["-o", out]),
                input,
            ),
            out,
        );
        std::fs::read(p.join(out)).unwrap()
    };
    let a = archive(
        &[
            "--order",
            "out/builtin.order",
            "--index",
            "out/vmlinux.thinlto-index",
        ],
        b"",
        "out/a.a",
    );
    let b = archive(
        &["--order", "-", "--index", "out/vmlinux.thinlto-index"],
        &order,
        "out/b.a",
    );
    let c = archive(
        &["--order", "out/builtin.order", "--index", "-"],
        &index,
        "out/c.a",
    );
    assert_eq!(a, b);
    assert_eq!(a, c);
    // thinlto-cmdparse -
    let direct = ok(
        tool("thinlto-cmdparse", p)
            .arg("kernel/core.o")
            .output()
            .unwrap(),
        "cmdparse FILE",
    );
    let piped = ok(
        with_stdin(tool("thinlto-cmdparse", p).arg("-"), b"kernel/core.o\n"),
        "cmdparse -",
    );
    assert_eq!(piped.stdout, direct.stdout);
    // modpost-ir --objects -
    std::fs::write(p.join("objs"), &order).unwrap();
    let direct = ok(
        tool("modpost-ir", p)
            .args(["crcs", "--objects", "objs"])
            .output()
            .unwrap(),
        "crcs --objects FILE",
    );
    assert!(!direct.stdout.is_empty());
    let piped = ok(
        with_stdin(
            tool("modpost-ir", p).args(["crcs", "--objects", "-"]),
            &order,
        ),
        "crcs --objects -",
    );
    assert_eq!(piped.stdout, direct.stdout);
}

#[test]
fn exit_status_and_error_messages() {
    let t = sample_tree();
    let p = t.path();
    // 2: usage errors, from every tool.
    for name in TOOLS {
        let out = tool(name, p).arg("--no-such-flag").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name} --no-such-flag");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    }
    for name in ["thinlto-index", "modpost-ir"] {
        let out = tool(name, p)
            .arg(format!("--llvm={}", llvm_suffix()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name} without a subcommand");
    }
    // 1: bad input, named.
    std::fs::write(p.join("bad.order"), "kernel/gone.o\n").unwrap();
    std::fs::write(p.join("garbage.a"), "hello\n").unwrap();
    std::fs::write(
        p.join("kernel/.broken.o.cmd"),
        "savedcmd_kernel/broken.o := $(\n",
    )
    .unwrap();
    let cases: [(&str, &[&str], &str); 6] = [
        ("thinlto-index", &["order", "garbage.a"], "garbage.a"),
        ("thinlto-index", &["scan", "bad.order"], "kernel/gone.o"),
        (
            "thinlto-backend",
            &["--index", "bad.order"],
            "kernel/gone.o",
        ),
        (
            "thinlto-backend",
            &[
                "archive",
                "--order",
                "nope.order",
                "--index",
                "bad.order",
                "-o",
                "x.a",
            ],
            "nope.order",
        ),
        ("thinlto-cmdparse", &["kernel/gone.o"], "kernel/.gone.o.cmd"),
        (
            "modpost-ir",
            &["crcs", "--objects", "bad.order"],
            "kernel/gone.o",
        ),
    ];
    for (name, args, file) in cases {
        bad_input(name, tool(name, p).args(args).output().unwrap(), file);
    }
    // 0: success (the other tests run every tool successfully, too).
    for name in TOOLS {
        ok(tool(name, p).arg("--version").output().unwrap(), name);
    }
}

/// A tool run under `umask MASK` (set by sh, which then execs it).
fn umasked(mask: &str, program: &Path, dir: &Path) -> Command {
    let tc = toolchain();
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("umask {mask} && exec \"$@\""))
        .arg("sh")
        .arg(program)
        .current_dir(dir)
        .env("CC", &tc.cc.spelled)
        .env("LD", &tc.ld.spelled)
        .env("AR", &tc.ar.spelled)
        .env_remove("MAKEFLAGS");
    c
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn outputs_follow_the_umask() {
    let t = sample_tree();
    let p = t.path();
    thin_link(p);
    let (out, _) = backend(p, &[]);
    assert!(out.status.success());
    stage4(p);
    // Every mismatch, not only the first: each tool is checked.
    let mut wrong = Vec::new();
    for (mask, want) in [("022", 0o644), ("077", 0o600), ("002", 0o664)] {
        let run = |name: &str, args: &[&str]| {
            ok(
                umasked(mask, &bin(name), p).args(args).output().unwrap(),
                name,
            );
        };
        let mut check = |what: &str, file: &Path| {
            let m = mode(file);
            if m != want {
                wrong.push(format!(
                    "umask {mask}: {what} {} is {m:o}, not {want:o}",
                    file.display()
                ));
            }
        };
        // (--index: the spelling every version accepts)
        run(
            "thinlto-index",
            &[
                "link",
                "--force",
                "--ldflags",
                &ldflags(p),
                "--index",
                "out/vmlinux.thinlto-index",
                "out/builtin.order",
            ],
        );
        check(
            "thinlto-index link: index",
            &p.join("out/vmlinux.thinlto-index"),
        );
        check(
            "thinlto-index link: record",
            &p.join("out/.vmlinux.thinlto-index.digests.cmd"),
        );
        run(
            "thinlto-backend",
            &[
                "archive",
                "--order",
                "out/builtin.order",
                "--index",
                "out/vmlinux.thinlto-index",
                "-o",
                "out/vmlinux.a",
            ],
        );
        check("thinlto-backend archive", &p.join("out/vmlinux.a"));
        run(
            "modpost-ir",
            &[
                "symvers",
                "out/vmlinux.o",
                "--archive",
                "out/vmlinux.a",
                "-o",
                "out/vmlinux.symvers",
                "--export-c",
                "out/export.c",
            ],
        );
        check("modpost-ir symvers -o", &p.join("out/vmlinux.symvers"));
        check("modpost-ir symvers --export-c", &p.join("out/export.c"));
        // xtask fe lays out the sample tree's sources and writes .cmd files.
        let tree = p.join(format!("fe-{mask}"));
        run("xtask", &["fe", "--tree", tree.to_str().unwrap()]);
        check("xtask fe: source", &tree.join("kernel/core.c"));
        check("xtask fe: .cmd", &tree.join("kernel/.core.o.cmd"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The workspace's library crates: each member directory with a `src/lib.rs`.
fn library_crates() -> Vec<PathBuf> {
    let root = xtask::workspace_root();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path().join("src/lib.rs"))
        .filter(|lib| lib.is_file())
        .collect();
    crates.sort();
    assert!(
        crates.len() >= 6,
        "library crates under {}: {crates:?}",
        root.display()
    );
    crates
}

/// Rooms without circles (issue 28): inside each crate, the uses between
/// its top-level modules (a submodule's counted as its top-level
/// module's), and between modules on different branches of the module
/// tree, form no circle, so docs/architecture.md's arrows run one way.
#[test]
fn no_import_circle_inside_a_crate() {
    let root = xtask::workspace_root();
    let mut report = String::new();
    for lib in library_crates() {
        let g = thinlto_dist_tests::imports::ModuleGraph::of_crate(&lib);
        let edges: usize = g.edges.values().map(|e| e.len()).sum();
        let krate = lib
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .strip_prefix(&root)
            .unwrap();
        println!(
            "{}: {} modules, {edges} uses between modules on different branches",
            krate.display(),
            g.modules.len()
        );
        // Rooms (top-level modules, a submodule's uses counted as its
        // room's), then modules on different branches inside a room.
        let rooms = g.rooms();
        for (kind, graph) in [("rooms", &rooms), ("modules", &g)] {
            for circle in graph.circles() {
                report += &format!(
                    "{}: an import circle of {kind} {}:\n{}",
                    krate.display(),
                    circle
                        .iter()
                        .map(|m| imports::show(m))
                        .collect::<Vec<_>>()
                        .join(", "),
                    graph.describe(&circle, &root)
                );
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

/// The docs do not drift from `--help` (issue 28): every `--flag` that
/// README.md and docs/*.md write in a command after a tool's name (or
/// `cargo xtask VERB`) is in that tool's (or subcommand's) `--help`.
#[test]
fn every_flag_in_the_docs_is_in_the_tools_help() {
    let root = xtask::workspace_root();
    let commands = docflags::doc_commands(&root);
    let mut helps: std::collections::HashMap<String, Option<docflags::Help>> = Default::default();
    let mut report = String::new();
    let mut flags = 0;
    for c in &commands {
        let exe = match c.tool {
            "cargo xtask" => bin("xtask"),
            tool => bin(tool),
        };
        let help = |path: &[String]| {
            helps
                .entry(format!("{} {}", c.tool, path.join(" ")))
                .or_insert_with(|| {
                    let out = Command::new(&exe)
                        .args(path)
                        .arg("--help")
                        .output()
                        .unwrap();
                    out.status
                        .success()
                        .then(|| docflags::Help::parse(&String::from_utf8_lossy(&out.stdout)))
                })
                .clone()
        };
        flags += c
            .words
            .iter()
            .filter_map(|w| docflags::long_flag(w))
            .count();
        for (flag, path) in docflags::unknown_flags(&c.words, help) {
            report += &format!(
                "{}:{}: `{} {}`: {flag} is not in `{} {path} --help`\n",
                c.file.strip_prefix(&root).unwrap_or(&c.file).display(),
                c.line,
                c.tool,
                c.words.join(" "),
                c.tool,
            );
        }
    }
    println!(
        "{} commands in the docs, {flags} flags checked",
        commands.len()
    );
    assert!(commands.len() > 50, "too few commands found: {commands:?}");
    assert!(report.is_empty(), "flags the tools do not have:\n{report}");
}

/// The architecture map names every room (issue 28): each top-level module
/// of each library crate is in docs/architecture.md, as `name`, `name/` or
/// `name.rs`, so a new room cannot go unmapped.
#[test]
fn the_architecture_map_names_every_room() {
    let root = xtask::workspace_root();
    let map = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut missing = Vec::new();
    for lib in library_crates() {
        let krate = lib
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .strip_prefix(&root)
            .unwrap();
        let g = imports::ModuleGraph::of_crate(&lib);
        for m in g.modules.keys().filter(|m| m.len() == 1) {
            let name = &m[0];
            if !["`{name}`", "`{name}/`", "`{name}.rs`"]
                .iter()
                .any(|f| map.contains(&f.replace("{name}", name)))
            {
                missing.push(format!("{}: {name}", krate.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these modules: {missing:?}"
    );
}

/// A reader can follow every link of the docs: each relative link of
/// README.md and docs/*.md names a file that exists and, with `#…`, a
/// heading that is there.
#[test]
fn every_link_in_the_docs_resolves() {
    let root = xtask::workspace_root();
    let mut report = String::new();
    for doc in docflags::documents(&root) {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (line, link) in docflags::broken_links(&text, doc.parent().unwrap()) {
            report += &format!(
                "{}:{line}: ({link}) leads nowhere\n",
                doc.strip_prefix(&root).unwrap().display()
            );
        }
    }
    assert!(report.is_empty(), "{report}");
}
