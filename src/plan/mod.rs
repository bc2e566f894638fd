//! Pure planning: no kube::Client in reach. Unit split, revision hash, (later) rollout batches,
//! floors and loans. Every function here is deterministic and tested on plain values.

pub mod loans;
pub mod revision;
pub mod rollout;
pub mod room;
pub mod scale;
pub mod split;
pub mod unit_status;
pub mod update;

#[cfg(test)]
mod fuzz;
