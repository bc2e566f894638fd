//! `cafe hub`: run the hub controllers.

use crate::runtime::admin::AdminError;
use crate::runtime::args::{HubTimingArgs, RuntimeArgs};
use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

#[derive(Debug, clap::Args)]
pub struct HubArgs {
    #[command(flatten)]
    pub kube: KubeconfigArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub timing: HubTimingArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum HubCliError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

pub async fn run(args: HubArgs) -> Result<(), HubCliError> {
    let client = args.kube.client().await?;
    let options = args.timing.options(crate::hub::HubOptions::default());
    let identity = args.runtime.identity();
    crate::runtime::serve(&args.runtime, |telemetry, shutdown| {
        let options = crate::hub::HubOptions {
            telemetry,
            identity: identity.clone(),
            ..options
        };
        crate::hub::run_with(client, options, shutdown)
    })
    .await??;
    Ok(())
}
