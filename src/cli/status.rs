//! `cafe status` (being written).

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("not implemented yet")]
    NotImplemented,
}

pub async fn run(_args: StatusArgs) -> Result<(), StatusError> {
    Err(StatusError::NotImplemented)
}
