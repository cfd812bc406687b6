use anyhow::Result;
use clap::Parser;

/// Parses kbuild .cmd files: backend flags, deps and #SYMVER CRCs.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() -> Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
