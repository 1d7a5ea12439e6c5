//! `cxone-worker`: parses the command line and runs the chosen subcommand.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local CXone API simulator.
    Sim(cxone_worker::sim::SimConfig),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(cfg) => cxone_worker::sim::run(cfg).await,
    }
}
