use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use thinlto_index::cli::{Cli, Verb};
use thinlto_index::toolchain::{Role, ToolEnv};
use thinlto_index::{classify, order, ThinLink, Toolchain};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinlto-index: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn run(cli: Cli) -> Result<()> {
    if cli.toolchain.print_toolchain {
        let mut tc = Toolchain::resolve(&cli.toolchain)?;
        tc.probe()?;
        return write_stdout(format!("{}\n", serde_json::to_string_pretty(&tc)?).as_bytes());
    }
    let Some(verb) = cli.verb else {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "no command given: use order, scan or link",
            )
            .exit();
    };
    match verb {
        Verb::Order { archives } => write_stdout(&order(&archives)?),
        Verb::Scan { order_file } => {
            let lines: Vec<String> = if order_file == "-" {
                std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<std::io::Result<_>>()?
            } else {
                thinlto_index::link::read_order(Path::new(&order_file))?
            };
            let mut out = Vec::new();
            for obj in lines.iter().filter(|l| !l.is_empty()) {
                let kind = classify(Path::new(obj))?;
                serde_json::to_writer(
                    &mut out,
                    &thinlto_index::manifest::ScanRecord {
                        object: obj.clone(),
                        kind,
                    },
                )?;
                out.push(b'\n');
            }
            write_stdout(&out)
        }
        Verb::Link {
            ldflags,
            index,
            imports,
            force,
            order_file,
        } => {
            let ldflags = thinlto_cmdparse::shell::split(&ldflags).context("--ldflags")?;
            let order_file = if order_file == Path::new("-") {
                // lld reads the list itself (@FILE) and the record names it:
                // it needs a file, and one with a stable name.
                let mut text = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut text)
                    .context("reading the order list from stdin")?;
                let kept = thinlto_cmdparse::dot_cmd_path(&index).with_extension("order");
                if std::fs::read(&kept).ok().as_deref() != Some(&text[..]) {
                    thinlto_index::fsutil::write_atomic(&kept, &text)?;
                }
                kept
            } else {
                order_file
            };
            // Nothing names a linker: the one of the LLVM that compiled
            // the tree (a newer lld would write shards its clang cannot
            // read).
            let mut env = ToolEnv::from_process();
            if !thinlto_index::toolchain::named(&cli.toolchain, &env, Role::Ld) {
                let objects = thinlto_index::link::read_order(&order_file)?;
                env.tree_ld =
                    thinlto_index::tree_tools::tree_linker(objects.iter().map(String::as_str));
            }
            let (manifest, outcome) = ThinLink {
                ld: Toolchain::resolve_one(&cli.toolchain, &env, Role::Ld)?,
                ldflags,
                index,
                imports,
                order_file,
                force,
            }
            .run_incremental()?;
            if outcome == thinlto_index::link::LinkOutcome::UpToDate {
                eprintln!("thinlto-index: thin link up to date (same command and input contents); --force relinks");
            }
            let mut text = serde_json::to_vec(&manifest)?;
            text.push(b'\n');
            write_stdout(&text)
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
