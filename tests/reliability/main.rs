//! The reliability suite, one test binary (they are slow to link): the invariant checker proven
//! per kind (invariant_checker), the chaos scenarios under it (chaos), and the bad-input table
//! (bad_input). See docs/reliability.md.

#[path = "../common/mod.rs"]
mod common;
#[path = "../hub_support/mod.rs"]
mod hub_support;
#[path = "../invariants/mod.rs"]
mod invariants;

mod bad_input;
mod chaos;
mod invariant_checker;
