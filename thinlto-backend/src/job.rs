//! One backend compile: its inputs as the thin link listed them, its
//! argv (flags from the front end's `.cmd` file), and the names of what it
//! writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use thinlto_cmdparse::{dot_cmd_path, shell, CmdFile, FlagsFrom};
use thinlto_index::Manifest;

/// One backend input, as the thin link listed it.
#[derive(Debug, Clone)]
pub struct JobInput {
    pub object: String,
    pub summary: String,
    /// The modules it imports. None until the plan reads them from the
    /// shard ([`with_shard_imports`]); a DTLTO job has lld's list.
    pub imports: Option<Vec<String>>,
}

/// The bitcode objects of a manifest (from `thinlto-index link`). Its
/// `imports` lists are not taken: the shard is the one source
/// ([`with_shard_imports`]).
pub fn inputs_from_manifest(m: &Manifest) -> Vec<JobInput> {
    m.bitcode()
        .map(|o| JobInput {
            object: o.object.clone(),
            summary: o
                .summary
                .clone()
                .unwrap_or_else(|| format!("{}.thinlto.bc", o.object)),
            imports: None,
        })
        .collect()
}

/// The objects of a plain index file (`vmlinux.thinlto-index`).
pub fn inputs_from_index(path: &Path) -> Result<Vec<JobInput>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|o| JobInput {
            object: o.to_string(),
            summary: format!("{o}.thinlto.bc"),
            imports: None,
        })
        .collect())
}

/// `input` with its imports, when not known yet, read from its shard:
/// the shard's module string table names every module the backend loads
/// ([`thinlto_index::shard`]), so the list is complete whether or not the
/// thin link wrote `.imports` files (a stale one from an older link is
/// not read either). The one place a kbuild job's imports come from: the
/// up-to-date check, the cache key and the farm's input root all use it.
pub fn with_shard_imports(mut input: JobInput) -> Result<JobInput> {
    if input.imports.is_none() {
        let modules = thinlto_index::shard::module_paths_of(Path::new(&input.summary))
            .with_context(|| format!("the imports of {}", input.object))?;
        input.imports = Some(modules.into_iter().filter(|m| *m != input.object).collect());
    }
    Ok(input)
}

/// `dir/foo.o` → `dir/foo.thinlto-native.o`.
pub fn native_of(object: &str) -> String {
    format!(
        "{}.thinlto-native.o",
        object.strip_suffix(".o").unwrap_or(object)
    )
}

/// One backend compile.
#[derive(Debug, Clone)]
pub struct BackendJob {
    pub input: JobInput,
    pub native: String,
    /// Where the job's record goes (kbuild's `dir/.foo.thinlto-native.o.cmd`,
    /// [`crate::record`]); None: no record (a DTLTO job, whose
    /// outputs are the linker's temporaries, decided afresh by every link).
    pub record_path: Option<PathBuf>,
    /// The whole argv, compiler first, `-o` naming the real target.
    pub argv: Vec<String>,
    /// The command as kbuild records it (the front end's flag text raw).
    pub command_text: String,
    /// The argv as the cache key names it, where it is not `argv`: a DTLTO
    /// job's with the linker's per-link file names replaced by their role
    /// (`crate::dtlto`), so that the next link, with new names, finds it.
    /// None: `argv` itself (kbuild's paths are the tree's, stable).
    pub key_argv: Option<Vec<String>>,
}

impl BackendJob {
    /// Builds the job: `$CC <be_flags> -x ir -fno-lto
    /// -Wno-unused-command-line-argument -fthinlto-index=<summary> -c -o
    /// <native> <object>`, exactly the reference's argv and order.
    pub fn new(input: JobInput, cmd: &CmdFile, cc: &str) -> Result<BackendJob> {
        let flags = cmd
            .backend_flags()
            .with_context(|| format!("flags for {}", input.object))?;
        let native = native_of(&input.object);
        let tail = [
            "-x".to_string(),
            "ir".into(),
            "-fno-lto".into(),
            "-Wno-unused-command-line-argument".into(),
            format!("-fthinlto-index={}", input.summary),
            "-c".into(),
            "-o".into(),
            native.clone(),
            input.object.clone(),
        ];
        let mut argv = vec![cc.to_string()];
        argv.extend(flags.argv.iter().cloned());
        argv.extend(tail.iter().cloned());
        // The reference records `$(CC) $(be_flags) -x ir …` with the flag
        // text as sed found it; keep that spelling so that make and we
        // each find the other's records up to date.
        let flag_text = match (flags.from, &cmd.saved_c_flags) {
            (FlagsFrom::SavedCFlags, Some(raw)) => raw.clone(),
            _ => shell::join(&flags.argv),
        };
        let command_text = format!("{cc} {flag_text} {}", shell::join(&tail));
        Ok(BackendJob {
            record_path: Some(dot_cmd_path(Path::new(&native))),
            native,
            input,
            argv,
            command_text,
            key_argv: None,
        })
    }

    /// The files whose contents decide the output.
    pub fn content_inputs(&self) -> Vec<&str> {
        let mut v = vec![self.input.object.as_str(), self.input.summary.as_str()];
        if let Some(imports) = &self.input.imports {
            v.extend(imports.iter().map(String::as_str));
        }
        v
    }
}

/// The temporary through which a long record is written:
/// `dir/.foo.thinlto-native.o.cmd.<pid>.tmp`, beside the target (same
/// filesystem: the rename is atomic).
pub fn temp_path(target: &Path) -> std::path::PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The split-DWARF file the compiler writes beside `native`, if its argv
/// asks for one: the last of `-gsplit-dwarf[=split|=single]` and
/// `-gno-split-dwarf` decides, and clang names the file after `-o`
/// (`dir/foo.thinlto-native.dwo`). Only used to clean up after a failure.
pub fn split_dwarf_file(argv: &[String], native: &Path) -> Option<std::path::PathBuf> {
    let split = argv.iter().fold(false, |on, a| match a.as_str() {
        "-gsplit-dwarf" | "-gsplit-dwarf=split" => true,
        "-gsplit-dwarf=single" | "-gno-split-dwarf" => false,
        _ => on,
    });
    split.then(|| native.with_extension("dwo"))
}

/// The batched action a remote job was part of: its action digest's hash,
/// the job's place in it (from 0) and how many jobs it carried.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchRef {
    pub action: String,
    pub job: usize,
    pub jobs: usize,
}

/// A compiler command recognised as a ThinLTO backend compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCommand {
    /// The bitcode object (the command's one input).
    pub object: String,
    /// The index shard (`-fthinlto-index=`).
    pub summary: String,
    /// The native object (`-o`).
    pub native: String,
}

/// Recognises kbuild's backend command: `-x ir`, `-fthinlto-index=S`, `-c`,
/// `-o N`, and one input, the last word. Anything else (or anything this
/// cannot be sure of: two `-o`, non-UTF-8 paths) is not a backend command,
/// and is run unchanged.
pub fn recognise(argv: &[std::ffi::OsString]) -> Option<BackendCommand> {
    let words: Vec<&str> = argv.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
    let (last, flags) = words.split_last()?;
    let mut summary = None;
    let mut native = None;
    let (mut x_ir, mut c) = (false, false);
    let mut it = flags.iter().skip(1).peekable();
    while let Some(w) = it.next() {
        if let Some(s) = w.strip_prefix("-fthinlto-index=") {
            if summary.replace(s).is_some() {
                return None;
            }
        } else if *w == "-o" {
            if native.replace(*it.next()?).is_some() {
                return None;
            }
        } else if *w == "-x" {
            x_ir = it.next() == Some(&"ir");
        } else if *w == "-c" {
            c = true;
        }
    }
    if !(x_ir && c) || last.starts_with('-') {
        return None;
    }
    Some(BackendCommand {
        object: last.to_string(),
        summary: summary?.to_string(),
        native: native?.to_string(),
    })
}
