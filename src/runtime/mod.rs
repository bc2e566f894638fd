//! Cross-cutting parts of every long-running command: logging, kubeconfigs, shutdown.

pub mod kubeconfig;
pub mod logging;
pub mod shutdown;
