//! Cross-cutting parts of every long-running command: logging, shutdown.

pub mod logging;
