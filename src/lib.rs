//! cafe: a multi-cluster federation controller for CafeDeployment workloads.

// Output goes through `cafe_base::out!`/`outln!`: `print!` panics on a closed pipe.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod api;
pub mod cli;
pub mod hub;
pub mod member;
pub mod plan;
pub mod runtime;
