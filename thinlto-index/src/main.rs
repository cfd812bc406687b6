use anyhow::Result;
use clap::Parser;
use thinlto_index::{Toolchain, ToolchainArgs};

/// Archive member order, bitcode classification and the ThinLTO thin link.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    toolchain: ToolchainArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.toolchain.print_toolchain {
        let mut tc = Toolchain::resolve(&cli.toolchain)?;
        tc.probe()?;
        println!("{}", serde_json::to_string_pretty(&tc)?);
    }
    Ok(())
}
