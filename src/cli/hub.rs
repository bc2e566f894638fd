//! `cafe hub`: run the hub controllers.

use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

#[derive(Debug, clap::Args)]
pub struct HubArgs {
    #[command(flatten)]
    pub kube: KubeconfigArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum HubCliError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

pub async fn run(args: HubArgs) -> Result<(), HubCliError> {
    let client = args.kube.client().await?;
    let shutdown = crate::runtime::shutdown::on_signal();
    crate::hub::run(client, shutdown).await?;
    Ok(())
}
