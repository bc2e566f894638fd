//! cafe: a multi-cluster federation controller for CafeDeployment workloads.

pub mod api;
pub mod cli;
pub mod hub;
pub mod member;
pub mod plan;
pub mod runtime;
