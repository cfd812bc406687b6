use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use thinlto_cmdparse::cli::Cli;
use thinlto_cmdparse::{cmd_path_for_input, parse_many, shell, CmdFile, CmdRecord};

const FIELDS: &[&str] = &[
    "target",
    "source",
    "savedcmd",
    "c_flags",
    "c_flags_from",
    "deps",
    "cmd_file",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(obj) = &cli.be_flags {
        let path = cmd_path_for_input(obj);
        let read = CmdFile::read(&path).and_then(|c| {
            for w in &c.warnings {
                eprintln!("thinlto-cmdparse: warning: {w}");
            }
            c.backend_flags()
        });
        return match read {
            Ok(f) => {
                println!("{}", shell::join(&f.argv));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("thinlto-cmdparse: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(f) = &cli.field {
        if !FIELDS.contains(&f.as_str()) {
            eprintln!(
                "thinlto-cmdparse: error: unknown --field {f:?}; expected one of {}",
                FIELDS.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let mut inputs = Vec::new();
    if cli.paths.is_empty() || cli.paths.iter().any(|p| p == Path::new("-")) {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if !l.is_empty() => inputs.push(PathBuf::from(l)),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("thinlto-cmdparse: error: stdin: cannot read the paths: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    inputs.extend(cli.paths.iter().filter(|p| *p != Path::new("-")).cloned());
    let records = parse_many(&inputs);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = false;
    for r in &records {
        for w in &r.warnings {
            eprintln!("thinlto-cmdparse: warning: {w}");
        }
        if let Some(e) = &r.error {
            eprintln!("thinlto-cmdparse: error: {e}");
            failed = true;
        }
        let res = if cli.symvers {
            write_symvers(&mut out, r)
        } else if let Some(f) = &cli.field {
            write_field(&mut out, r, f)
        } else {
            serde_json::to_writer(&mut out, r)
                .map_err(std::io::Error::other)
                .and_then(|_| out.write_all(b"\n"))
        };
        if let Err(e) = res {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("thinlto-cmdparse: error: stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_symvers(out: &mut impl Write, r: &CmdRecord) -> std::io::Result<()> {
    for s in r.symvers.iter().flatten() {
        writeln!(out, "{}\t0x{:08x}", s.symbol, s.crc)?;
    }
    Ok(())
}

fn write_field(out: &mut impl Write, r: &CmdRecord, field: &str) -> std::io::Result<()> {
    if r.error.is_some() {
        return Ok(());
    }
    match field {
        "target" => writeln!(out, "{}", r.target.as_deref().unwrap_or("")),
        "source" => writeln!(out, "{}", r.source.as_deref().unwrap_or("")),
        "savedcmd" => writeln!(out, "{}", r.savedcmd.as_deref().unwrap_or("")),
        "cmd_file" => writeln!(out, "{}", r.cmd_file),
        "c_flags_from" => writeln!(
            out,
            "{}",
            serde_json::to_value(r.c_flags_from)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
        "c_flags" => r
            .c_flags
            .iter()
            .flatten()
            .try_for_each(|w| writeln!(out, "{w}")),
        _ => r
            .deps
            .iter()
            .flatten()
            .try_for_each(|d| writeln!(out, "{}", d.path)),
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
