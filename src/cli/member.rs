//! `cafe member`: run the InPlaceSet controller in one member cluster.

use std::path::PathBuf;

use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

/// The agent talks only to the member it runs in; the hub reaches the member, never the other
/// way round. So the kubeconfig here is the MEMBER's (in a pod: its service account).
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    /// Kubeconfig of the MEMBER cluster this agent runs in, not the hub's (default, as
    /// kubectl: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "MEMBER_FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the MEMBER cluster in that kubeconfig (default: its current context).
    #[arg(long, value_name = "MEMBER_CONTEXT")]
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberCliError {
    #[error("member kubeconfig: {0}")]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Member(#[from] crate::member::MemberError),
}

pub async fn run(args: MemberArgs) -> Result<(), MemberCliError> {
    let member = KubeconfigArgs {
        kubeconfig: args.kubeconfig,
        context: args.context,
    };
    let client = member.client().await?;
    let shutdown = crate::runtime::shutdown::on_signal();
    crate::member::run(client, shutdown).await?;
    Ok(())
}
