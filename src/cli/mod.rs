//! Subcommands of `cafe`.

pub mod crds;

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
    /// Print (or write with --out) the CRD YAML generated from the API types.
    Crds(crds::CrdsArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Sim(#[from] cafe_sim::cli::CliError),
    #[error(transparent)]
    Crds(#[from] crds::CrdsError),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Sim(cmd) => Ok(cafe_sim::cli::run(cmd).await?),
        Command::Crds(args) => Ok(crds::run(args)?),
    }
}
