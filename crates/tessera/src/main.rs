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
    /// Start a service from a language template (rust, python, js, c, go) in an app.
    New(commands::source::NewArgs),
    /// Build the app's services from their sources, skipping the unchanged ones.
    Build(commands::source::BuildArgs),
    /// Serve every service of an app behind one gateway address.
    Up(commands::up::UpArgs),
    /// Run a long-lived node that apps are deployed to.
    Serve(commands::serve::ServeArgs),
    /// Deploy an app (or one service of it) to a node: a new revision per changed service.
    Deploy(commands::control::DeployArgs),
    /// List the apps on a node with their services, routes and traffic.
    Ls(commands::control::LsArgs),
    /// Show the revision history of a service.
    Revisions(commands::control::ServiceArgs),
    /// Split a service's traffic across revisions, e.g. `traffic greeter r7=90 r8=10`.
    Traffic(commands::control::TrafficArgs),
    /// Send all of a service's traffic back to an earlier revision.
    Rollback(commands::control::RollbackArgs),
    /// Remove an app from a node (its data stays unless --purge).
    Rm(commands::control::RmArgs),
    /// Manage a service's secrets: `secret set|ls|rm SERVICE [NAME]`.
    Secret(commands::control::SecretArgs),
    /// Publish a message to a topic of an app: `publish orders.created '{"id":1}'`.
    Publish(commands::control::PublishArgs),
    /// Show every subscription's queue depth, in-flight, retried and dead-lettered counts.
    Events(commands::control::EventsArgs),
    /// List the nodes of the cluster (up, or down and since when) and what each has loaded.
    Nodes(commands::control::NodesArgs),
    /// Dead-letter queues: `dlq ls|show|redrive SUBSCRIPTION [ID...]`.
    Dlq(commands::control::DlqArgs),
    /// Show an async invocation's state and result.
    Invocation(commands::control::InvocationArgs),
    /// Show a service's recent log lines (guest output, platform events); -f follows them.
    Logs(commands::control::LogsArgs),
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
    commands::raise_open_file_limit();
    match cli.command {
        Command::New(args) => commands::source::new(args),
        Command::Build(args) => commands::source::build(&args),
        Command::Up(args) => commands::up::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Deploy(args) => commands::control::deploy(args),
        Command::Ls(args) => commands::control::ls(args),
        Command::Revisions(args) => commands::control::revisions(args),
        Command::Traffic(args) => commands::control::traffic(args),
        Command::Rollback(args) => commands::control::rollback(args),
        Command::Rm(args) => commands::control::rm(args),
        Command::Secret(args) => commands::control::secret(args),
        Command::Publish(args) => commands::control::publish(args),
        Command::Events(args) => commands::control::events(args),
        Command::Nodes(args) => commands::control::nodes(args),
        Command::Dlq(args) => commands::control::dlq(args),
        Command::Invocation(args) => commands::control::invocation(args),
        Command::Logs(args) => commands::control::logs(args),
    }
}
