//! The `kim` command line. Thin: parses arguments and hands over to the library modules.

use clap::{Parser, Subcommand};

mod bench;

/// KIM — Knowledge and Information Manager: a regional node of a federated co-operation network.
#[derive(Debug, Parser)]
#[command(name = "kim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure and print throughput figures.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => bench::run(what),
    }
}
