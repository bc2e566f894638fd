//! `cafe member`: run the InPlaceSet controller in one member cluster.

use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    /// Kubeconfig/context of the MEMBER cluster this agent runs in.
    #[command(flatten)]
    pub kube: KubeconfigArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberCliError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Member(#[from] crate::member::MemberError),
}

pub async fn run(args: MemberArgs) -> Result<(), MemberCliError> {
    let client = args.kube.client().await?;
    let shutdown = crate::runtime::shutdown::on_signal();
    crate::member::run(client, shutdown).await?;
    Ok(())
}
