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
    #[error(transparent)]
    Lease(#[from] crate::runtime::args::LeaseTimingsError),
}

pub async fn run(args: HubArgs) -> Result<(), HubCliError> {
    let lease = args.runtime.lease()?;
    let identity = args.runtime.identity();
    let mut config = args.kube.config().await?;
    crate::runtime::identify(&mut config, "hub", &identity);
    let client = kube::Client::try_from(config).map_err(|e| KubeconfigError::Invalid {
        origin: "client".into(),
        message: e.to_string(),
    })?;
    let options = args.timing.options(crate::hub::HubOptions::default());
    crate::runtime::serve(&args.runtime, |telemetry, shutdown| {
        let options = crate::hub::HubOptions {
            telemetry,
            identity: identity.clone(),
            lease,
            ..options
        };
        crate::hub::run_with(client, options, shutdown)
    })
    .await??;
    Ok(())
}
