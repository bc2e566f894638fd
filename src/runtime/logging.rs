//! Logging to stderr through tracing; `RUST_LOG` overrides the default level.

use std::io::IsTerminal;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are for people at a terminal; in a file, a pipe or a CI log they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
