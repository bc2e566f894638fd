//! Subcommands of `cafe`.

pub mod cluster;
pub mod crds;
#[cfg(feature = "sim")]
pub mod dev;
pub mod hub;
pub mod member;
pub mod plan;
pub mod rollout;
pub mod status;

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
    /// Run simulated hub and member clusters with the controllers (the demo).
    #[cfg(feature = "sim")]
    Dev(dev::DevArgs),
    /// Run simulated Kubernetes clusters (the local control plane for tests and demos).
    #[cfg(feature = "sim")]
    Sim(cafe_sim::cli::SimCommand),
    /// Run the hub controllers.
    Hub(hub::HubArgs),
    /// Run the member agent (InPlaceSet controller) in a member cluster, with the MEMBER's kubeconfig.
    ///
    /// Here --kubeconfig/--context name the MEMBER cluster the agent runs in, not the hub: the
    /// agent talks only to its own cluster, and the hub reaches it through the kubeconfig given
    /// to `cafe cluster register`. In a pod of the member, the service account is used.
    Member(member::MemberArgs),
    /// Register, list and remove member clusters.
    Cluster(cluster::ClusterArgs),
    /// Show a CafeDeployment (or all of them) from the hub.
    Status(status::StatusArgs),
    /// Steer a CafeDeployment's rollout: confirm the next group, pause, resume, restart, undo.
    Rollout(rollout::RolloutArgs),
    /// Print the unit split and rollout groups of a CafeDeployment manifest (no cluster needed).
    Plan(plan::PlanArgs),
    /// Print (or write with --out) the CRD YAML generated from the API types.
    Crds(crds::CrdsArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[cfg(feature = "sim")]
    #[error(transparent)]
    Sim(#[from] cafe_sim::cli::CliError),
    #[error(transparent)]
    Crds(#[from] crds::CrdsError),
    #[error(transparent)]
    Hub(#[from] hub::HubCliError),
    #[error(transparent)]
    Member(#[from] member::MemberCliError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Status(#[from] status::StatusError),
    #[error(transparent)]
    Rollout(#[from] rollout::RolloutError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[cfg(feature = "sim")]
    #[error(transparent)]
    Dev(#[from] dev::DevError),
}

impl Cli {
    /// `--log-format` of the long-running commands; text for the others.
    pub fn log_format(&self) -> crate::runtime::args::LogFormat {
        match &self.command {
            Command::Hub(args) => args.runtime.log_format,
            Command::Member(args) => args.runtime.log_format,
            _ => Default::default(),
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        #[cfg(feature = "sim")]
        Command::Dev(args) => Ok(dev::run(args).await?),
        #[cfg(feature = "sim")]
        Command::Sim(cmd) => Ok(cafe_sim::cli::run(cmd).await?),
        Command::Hub(args) => Ok(hub::run(args).await?),
        Command::Member(args) => Ok(member::run(args).await?),
        Command::Cluster(args) => Ok(cluster::run(args).await?),
        Command::Status(args) => Ok(status::run(args).await?),
        Command::Rollout(args) => Ok(rollout::run(args).await?),
        Command::Plan(args) => Ok(plan::run(args)?),
        Command::Crds(args) => Ok(crds::run(args)?),
    }
}
