//! What a worker agrees to run: backend compiles only, in the shape our
//! client sends (`exec.rs`: `CC <flags> -x ir … -fthinlto-index=S -c -o N
//! OBJ`), with an environment from a short allowlist.
//!
//! This is defence in depth, not the wall: every compile runs in a
//! sandbox anyway (`sandbox.rs`). It refuses, with a short message the
//! client shows, what makes the compiler run or load another program
//! (`--ld-path`, `-fuse-ld`, `-B`, plugins, `-Xclang -load`, an external
//! assembler, a config file, a response file), and any flag that writes
//! a file outside the input root (`-o`, `-MF`, `-dumpdir` … with an
//! absolute path or `..`). The checks are per compile, so that an action
//! carrying several compiles validates each one the same way.

use super::compilers::Compiler;

/// A compile the worker will run, as validated.
#[derive(Debug, Clone)]
pub struct ValidCompile<'a> {
    pub compiler: &'a Compiler,
    /// `argv[0]` as the action spells it (the compiler's word), then its
    /// flags unchanged.
    pub argv: Vec<String>,
    /// The environment: the allowed variables the action set, nothing else.
    pub env: Vec<(String, String)>,
    /// The bitcode object (the last word), which the compile must be seen
    /// reading.
    pub object: String,
    /// The index shard (`-fthinlto-index=`).
    pub summary: String,
    /// The native object (`-o`).
    pub native: String,
}

/// Why a compile is refused: one short line for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// The variables an action may set: locale and reproducibility knobs.
/// Nothing for the loader (`LD_*`), no search paths, no temp directory.
pub const ALLOWED_ENV: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "SOURCE_DATE_EPOCH",
    "TZ",
];

/// Flags refused whatever follows (prefix match): they run or load
/// another program, or read more flags from a file.
const REFUSED_PREFIXES: &[&str] = &[
    "--ld-path",
    "-fuse-ld",
    "-B",
    "--prefix",
    "-fplugin",
    "-fpass-plugin",
    "-no-integrated-as",
    "-fno-integrated-as",
    // cc1 as a process of its own: one more program, untraced by the
    // warm job's shim.
    "-fno-integrated-cc1",
    "-Wl,",
    "-Xlinker",
    "-Xarch",
    "-Xopenmp",
    "-Xcuda",
    "-Xoffload",
    "--config",
    "--driver-mode",
    "-ccc-",
    "-cc1",
    "--output",
    "-fcrash-diagnostics",
];

/// `-Xclang` values refused (prefix match): cc1's plugin loaders and its
/// own output flags.
const REFUSED_CC1: &[&str] = &[
    "-load",
    "-plugin",
    "-add-plugin",
    "-fpass-plugin",
    "-dependency-file",
    "-o",
    "-output-file",
];

/// Flags whose value is a file the compile writes: it must be a plain
/// path inside the input root. (flag, value joined with '=' or
/// following as the next word).
const WRITES_SEPARATE: &[&str] = &["-MF", "-MJ", "-dumpdir", "-serialize-diagnostics"];
const WRITES_JOINED: &[&str] = &[
    "-MF",
    "-MJ",
    "-ftime-trace=",
    "-foptimization-record-file=",
    "-fproc-stat-report=",
    "-save-stats=",
    "-fprofile-generate=",
    "-fprofile-instr-generate=",
    "-fcs-profile-generate=",
    "-fmodules-cache-path=",
    "--serialize-diagnostics=",
];

/// Validates one compile: `argv[0]` one of `compilers`' words, the
/// backend shape (`-x ir`, `-fthinlto-index=`, `-c`, one `-o`, the object
/// last, each a plain path inside the input root, the native among the
/// declared `outputs`), no refused flag, every written file inside the
/// root, and `env` within [`ALLOWED_ENV`].
pub fn validate_compile<'a>(
    argv: &[String],
    env: &[(String, String)],
    outputs: &[String],
    compilers: &'a [Compiler],
) -> Result<ValidCompile<'a>, Refusal> {
    let refuse = |s: String| Err(Refusal(s));
    let Some(word) = argv.first() else {
        return refuse("the command is empty".into());
    };
    let Some(compiler) = compilers.iter().find(|c| &c.word == word) else {
        return refuse(format!("this worker has no compiler {word}"));
    };
    for (name, _) in env {
        if !ALLOWED_ENV.contains(&name.as_str()) {
            return refuse(format!(
                "environment variable {name} is not allowed (only {})",
                ALLOWED_ENV.join(", ")
            ));
        }
    }
    for o in outputs {
        if !inside_root(o) {
            return refuse(format!(
                "output path {o:?}: not a plain path inside the input root"
            ));
        }
    }
    let mut it = argv.iter().skip(1).peekable();
    while let Some(w) = it.next() {
        if w.starts_with('@') {
            return refuse(format!("{w}: response files are not allowed"));
        }
        if let Some(p) = REFUSED_PREFIXES.iter().find(|p| w.starts_with(*p)) {
            return refuse(format!(
                "{w}: {p} is not allowed on this farm (backend compiles only)"
            ));
        }
        if w.starts_with("-o") && w != "-o" {
            return refuse(format!("{w}: write -o and its file as two words"));
        }
        if w == "-Xclang" || w == "-mllvm" {
            let Some(v) = it.next() else {
                return refuse(format!("{w} without a value"));
            };
            if w == "-Xclang" {
                if let Some(p) = REFUSED_CC1.iter().find(|p| v.starts_with(*p)) {
                    return refuse(format!("-Xclang {v}: {p} is not allowed on this farm"));
                }
            } else if v.starts_with("-load") || v.contains("file") || v.contains("output") {
                return refuse(format!("-mllvm {v}: not allowed on this farm"));
            }
            continue;
        }
        if let Some(rest) = w.strip_prefix("-Wp,") {
            // -Wp,-MD,FILE / -Wp,-MMD,FILE write FILE.
            if let Some(f) = rest
                .strip_prefix("-MD,")
                .or_else(|| rest.strip_prefix("-MMD,"))
            {
                if !inside_root(f) {
                    return refuse(format!("{w}: writes outside the input root"));
                }
            } else {
                return refuse(format!("{w}: -Wp, is not allowed on this farm"));
            }
            continue;
        }
        if WRITES_SEPARATE.contains(&w.as_str()) || w == "-o" {
            match it.next() {
                Some(f) if inside_root(f) => {}
                Some(f) => {
                    return refuse(format!(
                        "{w} {f}: writes outside the input root (a plain relative path is needed)"
                    ))
                }
                None => return refuse(format!("{w} without a file")),
            }
            continue;
        }
        if let Some(p) = WRITES_JOINED.iter().find(|p| w.starts_with(*p)) {
            let f = &w[p.len()..];
            if !f.is_empty() && !inside_root(f) {
                return refuse(format!("{w}: writes outside the input root"));
            }
        }
    }
    let os: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    let Some(shape) = crate::job::recognise(&os) else {
        return refuse(
            "not a backend compile (needs -x ir, -fthinlto-index=, -c, one -o and the object last)"
                .into(),
        );
    };
    for (what, p) in [
        ("the object", &shape.object),
        ("-fthinlto-index=", &shape.summary),
    ] {
        if !inside_root(p) {
            return refuse(format!(
                "{what} {p}: not a plain path inside the input root"
            ));
        }
    }
    if !outputs.contains(&shape.native) {
        return refuse(format!(
            "-o {}: not one of the action's declared outputs",
            shape.native
        ));
    }
    Ok(ValidCompile {
        compiler,
        argv: argv.to_vec(),
        env: env.to_vec(),
        object: shape.object,
        summary: shape.summary,
        native: shape.native,
    })
}

/// A plain relative path: not empty, not absolute, no `.`/`..`/empty
/// component, no NUL.
pub fn inside_root(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cc() -> Vec<Compiler> {
        vec![Compiler {
            word: "clang-19".into(),
            exe: PathBuf::from("/usr/lib/llvm-19/bin/clang"),
            identity: "x".into(),
            prefix: PathBuf::from("/usr/lib/llvm-19"),
            libraries: Default::default(),
        }]
    }

    fn honest(extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["clang-19", "-O2", "-nostdinc", "-Iinclude"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(
            [
                "-x",
                "ir",
                "-fno-lto",
                "-fthinlto-index=kernel/a.o.thinlto.bc",
                "-c",
                "-o",
                "kernel/a.thinlto-native.o",
                "kernel/a.o",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        v
    }

    fn check(argv: &[String], env: &[(&str, &str)]) -> Result<(), String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let compilers = cc();
        validate_compile(
            argv,
            &env,
            &["kernel/a.thinlto-native.o".to_string()],
            &compilers,
        )
        .map(|_| ())
        .map_err(|r| r.0)
    }

    #[test]
    fn our_clients_compile_passes() {
        check(&honest(&[]), &[]).unwrap();
        check(
            &honest(&["-Wp,-MMD,kernel/.a.d", "-mllvm", "-x86-asm-syntax=intel"]),
            &[("LC_ALL", "C")],
        )
        .unwrap();
    }

    #[test]
    fn programs_loaders_and_outside_writes_are_refused() {
        for bad in [
            &["--ld-path=./script"][..],
            &["-fuse-ld=./x"],
            &["-B./bin"],
            &["-B", "bin"],
            &["-fplugin=./p.so"],
            &["-fpass-plugin=./p.so"],
            &["-Xclang", "-load", "-Xclang", "./p.so"],
            &["-no-integrated-as"],
            &["-fno-integrated-as"],
            &["-fno-integrated-cc1"],
            &["@args"],
            &["-MF", "/tmp/x"],
            &["-MF../x"],
            &["-dumpdir", "/tmp/"],
            &["-Wp,-MD,/tmp/x.d"],
            &["--config=./c.cfg"],
            &["-ftime-trace=/tmp/t.json"],
            &["-mllvm", "-info-output-file=/tmp/x"],
            &["-o/tmp/x"],
        ] {
            let r = check(&honest(bad), &[]);
            assert!(r.is_err(), "{bad:?} passed");
        }
        // -o outside the root, or not a declared output.
        let mut argv = honest(&[]);
        let o = argv.iter().position(|w| w == "-o").unwrap();
        argv[o + 1] = "/some/abs/path".into();
        assert!(check(&argv, &[])
            .unwrap_err()
            .contains("outside the input root"));
        argv[o + 1] = "kernel/b.o".into();
        assert!(check(&argv, &[]).unwrap_err().contains("declared outputs"));
        // Not a backend compile at all.
        let pre = [
            "clang-19",
            "-E",
            "payload.c",
            "-o",
            "kernel/a.thinlto-native.o",
        ]
        .map(String::from);
        assert!(check(&pre, &[])
            .unwrap_err()
            .contains("not a backend compile"));
    }

    #[test]
    fn the_environment_is_an_allowlist() {
        let e = check(&honest(&[]), &[("LD_AUDIT", "./a.so")]).unwrap_err();
        assert!(e.contains("LD_AUDIT"), "{e}");
        assert!(check(&honest(&[]), &[("LD_LIBRARY_PATH", ".")]).is_err());
        assert!(check(&honest(&[]), &[("PATH", "/tmp")]).is_err());
    }
}
