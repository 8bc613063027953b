//! The `tessera` command: parses arguments and hands each subcommand to `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serverless WebAssembly microservices behind one gateway.
#[derive(Parser)]
#[command(name = "tessera", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every service of an app behind one gateway address.
    Up(commands::up::UpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    commands::init_logging();
    match cli.command {
        Command::Up(args) => commands::up::run(args),
    }
}
