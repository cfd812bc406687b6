use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use modpost_ir::{crcs, read_exports_with, read_object_list, render, Mapping, ReadOptions};
use thinlto_index::fsutil::write_atomic;
use thinlto_index::ToolchainArgs;

/// modpost's side of kbuild's distributed ThinLTO: symbol CRCs looked up
/// with the `.thinlto-native.o` → `.o.cmd` mapping, and `vmlinux.symvers`
/// / `.vmlinux.export.c` written exactly as the kernel's modpost writes
/// them.
///
/// Examples (from the tree root):
///
///   modpost-ir crcs --objects .vmlinux.objs          # JSON Lines
///   modpost-ir crcs --archive vmlinux.a --unpatched  # what an unpatched modpost sees
///   modpost-ir symvers vmlinux.o --objects .vmlinux.objs \
///       -o vmlinux.symvers --export-c .vmlinux.export.c
#[derive(Parser)]
#[command(version, verbatim_doc_comment, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    verb: Option<Verb>,
    /// Accepted as by every tool of the family; modpost-ir runs none of them
    #[command(flatten)]
    toolchain: ToolchainArgs,
}

#[derive(Args)]
struct ObjectSource {
    /// An object list, one per line (kbuild's .vmlinux.objs); `-`: stdin
    #[arg(long, value_name = "FILE")]
    objects: Option<PathBuf>,
    /// The members of an archive (e.g. vmlinux.a)
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "objects")]
    archive: Option<PathBuf>,
    /// A module's object list (foo.mod); `-`: stdin
    #[arg(long = "mod", value_name = "FILE", conflicts_with_all = ["objects", "archive"])]
    module: Option<PathBuf>,
    /// Read CRCs as modpost did before kbuild's change (dir/.foo.thinlto-native.o.cmd)
    #[arg(long)]
    unpatched: bool,
}

#[derive(Subcommand)]
enum Verb {
    /// Print the CRC of every #SYMVER line of every object's .cmd file:
    /// JSON Lines {"object","cmd_file","symbol","crc"}
    Crcs {
        #[command(flatten)]
        source: ObjectSource,
        /// Objects (instead of a list)
        #[arg(value_name = "OBJECT")]
        paths: Vec<String>,
    },
    /// Write vmlinux.symvers (and .vmlinux.export.c) from vmlinux.o and the
    /// CRCs of its objects
    Symvers {
        vmlinux_o: PathBuf,
        #[command(flatten)]
        source: ObjectSource,
        /// vmlinux.symvers [default: stdout]
        #[arg(short, value_name = "FILE")]
        o: Option<PathBuf>,
        /// Also write .vmlinux.export.c here
        #[arg(long, value_name = "FILE")]
        export_c: Option<PathBuf>,
        /// Without CONFIG_MODVERSIONS (modpost without -m): no CRCs
        #[arg(long)]
        no_modversions: bool,
        /// Without CONFIG_MODULES (modpost without -M): .export_symbol is
        /// not read, vmlinux exports nothing
        #[arg(long)]
        no_modules: bool,
        /// Section mismatches are errors (modpost -E, i.e. without
        /// CONFIG_SECTION_MISMATCH_WARN_ONLY): the outputs are written, then
        /// the run fails
        #[arg(long)]
        section_mismatch_errors: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("modpost-ir: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn objects_of(
    source: &ObjectSource,
    explicit: &[String],
    default_list: bool,
) -> Result<Vec<String>> {
    if let Some(p) = source.objects.as_ref().or(source.module.as_ref()) {
        if p == std::path::Path::new("-") {
            // The same reader, on the same bytes.
            return read_object_list(std::path::Path::new("/dev/stdin"));
        }
        return read_object_list(p);
    }
    if let Some(a) = &source.archive {
        return thinlto_index::archive_members(a)?
            .into_iter()
            .map(|m| String::from_utf8(m).context("a member name is not UTF-8"))
            .collect();
    }
    if !explicit.is_empty() {
        return Ok(explicit.to_vec());
    }
    if default_list {
        return read_object_list(std::path::Path::new(".vmlinux.objs"));
    }
    bail!("no objects: give --objects FILE, --archive ARCHIVE, --mod FILE or object paths")
}

fn run(cli: Cli) -> Result<ExitCode> {
    if cli.toolchain.print_toolchain {
        let mut tc = thinlto_index::Toolchain::resolve(&cli.toolchain)?;
        tc.probe()?;
        let text = serde_json::to_string_pretty(&tc)? + "\n";
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(verb) = cli.verb else {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "no command given: use crcs or symvers",
            )
            .exit();
    };
    match verb {
        Verb::Crcs { source, paths } => {
            let list = objects_of(&source, &paths, false)?;
            let mapping = if source.unpatched {
                Mapping::Unpatched
            } else {
                Mapping::Patched
            };
            let mut out = Vec::new();
            for r in crcs(&list, mapping)? {
                serde_json::to_writer(&mut out, &r)?;
                out.push(b'\n');
            }
            let _ = std::io::stdout().lock().write_all(&out);
            Ok(ExitCode::SUCCESS)
        }
        Verb::Symvers {
            vmlinux_o,
            source,
            o,
            export_c,
            no_modversions,
            no_modules,
            section_mismatch_errors,
        } => {
            let mapping = if source.unpatched {
                Mapping::Unpatched
            } else {
                Mapping::Patched
            };
            let opts = ReadOptions {
                modules: !no_modules,
                section_mismatch: true,
            };
            // The object and the .cmd files are independent: read both at once.
            let (exports, crc_list) = rayon::join(
                || -> Result<_> {
                    let file = std::fs::File::open(&vmlinux_o)
                        .with_context(|| format!("{}: cannot open", vmlinux_o.display()))?;
                    // Mapped, not read: vmlinux.o is hundreds of MB on a real kernel and
                    // only its symbol and export sections are touched. (The small .cmd
                    // files, which fixdep rewrites in place, are read, never mapped.)
                    // SAFETY: read-only map of an object nobody rewrites meanwhile.
                    let map = unsafe { memmap2::Mmap::map(&file) }
                        .with_context(|| format!("{}: cannot map", vmlinux_o.display()))?;
                    read_exports_with(&map, "vmlinux", opts)
                        .with_context(|| format!("{}", vmlinux_o.display()))
                },
                || -> Result<_> {
                    if no_modversions {
                        return Ok(Vec::new());
                    }
                    crcs(&objects_of(&source, &[], true)?, mapping)
                },
            );
            // modpost reads the object first: its errors come first.
            let exports = exports?;
            let crc_list = crc_list?;
            let out = render(&exports, &crc_list, !no_modversions);
            for m in &out.messages {
                eprint!("{m}");
            }
            // Like modpost, write nothing once an error was reported.
            if out.error {
                return Ok(ExitCode::FAILURE);
            }
            if let Some(p) = &export_c {
                write_atomic(p, out.export_c.as_bytes())?;
            }
            match &o {
                Some(p) => write_atomic(p, out.symvers.as_bytes())?,
                None => {
                    let _ = std::io::stdout().lock().write_all(out.symvers.as_bytes());
                }
            }
            if section_mismatch_errors && exports.section_mismatches > 0 {
                eprint!(
                    "ERROR: modpost: Section mismatches detected.\n\
                     Set CONFIG_SECTION_MISMATCH_WARN_ONLY=y to allow them.\n"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
