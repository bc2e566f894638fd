//! `cafe cluster` (being written).

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("not implemented yet")]
    NotImplemented,
}

pub async fn run(_args: ClusterArgs) -> Result<(), ClusterError> {
    Err(ClusterError::NotImplemented)
}
