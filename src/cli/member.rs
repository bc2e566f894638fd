//! `cafe member`: run the InPlaceSet controller in one member cluster.

use std::path::PathBuf;

use crate::runtime::admin::AdminError;
use crate::runtime::args::{MemberTimingArgs, RuntimeArgs};
use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

/// The `member` label of the agent's own writes in `cafe_api_writes_total`: the agent knows its
/// cluster only as "the one it runs in".
pub const OWN_CLUSTER: &str = "local";

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
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub timing: MemberTimingArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberCliError {
    #[error("member kubeconfig: {0}")]
    Kubeconfig(#[from] KubeconfigError),
    #[error("member kubeconfig: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Member(#[from] crate::member::MemberError),
    #[error(transparent)]
    Lease(#[from] crate::runtime::args::LeaseTimingsError),
}

pub async fn run(args: MemberArgs) -> Result<(), MemberCliError> {
    let member = KubeconfigArgs {
        kubeconfig: args.kubeconfig,
        context: args.context,
    };
    let lease = args.runtime.lease()?;
    let identity = args.runtime.identity();
    let mut config = member.config().await?;
    crate::runtime::identify(&mut config, "member", &identity);
    let options = args.timing.options(crate::member::MemberOptions::default());
    crate::runtime::serve(&args.runtime, |telemetry, shutdown| async move {
        let client = telemetry
            .metrics
            .client(config, OWN_CLUSTER)
            .map_err(MemberCliError::Client)?;
        let options = crate::member::MemberOptions {
            telemetry,
            identity: identity.clone(),
            lease,
            ..options
        };
        crate::member::run_with(client, options, shutdown).await?;
        Ok::<(), MemberCliError>(())
    })
    .await??;
    Ok(())
}
