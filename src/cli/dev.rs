//! `cafe dev` (being written).

#[derive(Debug, clap::Args)]
pub struct DevArgs {}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("not implemented yet")]
    NotImplemented,
}

pub async fn run(_args: DevArgs) -> Result<(), DevError> {
    Err(DevError::NotImplemented)
}
