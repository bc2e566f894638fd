//! The hub: MemberCluster health and capacity, the membership registry, and the CafeDeployment
//! controller.

use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Startup(String),
}

/// Runs the hub controllers against the hub cluster until `shutdown` is cancelled.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> Result<(), HubError> {
    let _ = client;
    shutdown.cancelled().await;
    Ok(())
}
