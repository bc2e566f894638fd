//! The member agent: the InPlaceSet controller.

use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Startup(String),
}

/// Runs the InPlaceSet controller against one member cluster until `shutdown` is cancelled.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> Result<(), MemberError> {
    let _ = client;
    shutdown.cancelled().await;
    Ok(())
}
