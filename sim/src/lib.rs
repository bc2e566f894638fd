//! cafe-sim: a Kubernetes-compatible local control plane.
//!
//! Each simulated cluster is an HTTPS server on loopback that speaks the Kubernetes REST API, backed
//! by an in-memory store, with a scheduler and a kubelet acting on its pods as real ones do.

// ApiError mirrors metav1.Status (code, reason, message, causes); it is the rare path, so its
// size is not worth boxing at every call site.
#![allow(clippy::result_large_err)]
// Output goes through `out!`/`outln!` (from cafe-base): `print!` panics on a closed pipe.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

// Shared with cafe through cafe-base; re-exported so `cafe_sim::quantity` and `cafe_sim::outln!`
// keep their names.
pub use cafe_base::{out, outln, output, quantity};

pub mod api;
pub mod apply;
pub mod auth;
pub mod cel_rules;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod conversion;
pub mod crd;
pub mod delete;
pub mod discovery;
pub mod faults;
pub mod gc;
pub mod jsonpath;
pub mod kinds;
pub mod kubelet;
pub mod meta;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod patch;
pub mod pods;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod route;
pub mod scheduler;
pub mod selector;
pub mod server;
pub mod sim;
pub mod status;
pub mod store;
pub mod table;
#[cfg(test)]
mod test_store;
pub mod tls;
pub mod tokens;
pub mod validation;
pub mod watch;
pub mod write;
