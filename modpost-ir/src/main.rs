use anyhow::Result;
use clap::Parser;

/// modpost-ir (not yet implemented).
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() -> Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
