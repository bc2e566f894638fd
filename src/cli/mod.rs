//! Subcommands of `cafe`.

use clap::{Parser, Subcommand};

/// Multi-cluster federation for CafeDeployment workloads.
#[derive(Debug, Parser)]
#[command(name = "cafe", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run simulated Kubernetes clusters (the local control plane for tests and demos).
    Sim(cafe_sim::cli::SimCommand),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Sim(#[from] cafe_sim::cli::CliError),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Sim(cmd) => Ok(cafe_sim::cli::run(cmd).await?),
    }
}
