//! `processor`: carbonflow's decision engine.

use std::io::Read;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "processor", version, about = "carbonflow's decision engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dry run: read one JSON document on stdin (config, forecast, ledger, policy memory,
    /// evaluation time; see the README) and print the decision the pipeline would emit.
    Decide,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Decide => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the decide document from stdin")?;
            let out = carbonflow_processor::dry_run::run(&input)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
