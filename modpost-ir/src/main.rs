use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use modpost_ir::cli::{Cli, ObjectSource, Verb};
use modpost_ir::{crcs, read_exports_with, read_object_list, render, Mapping, ReadOptions};
use thinlto_index::fsutil::write_atomic;

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
