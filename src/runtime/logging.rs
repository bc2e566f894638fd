//! Logging to stderr through tracing, as text or JSON lines; `RUST_LOG` overrides the default
//! level.

use std::io::IsTerminal;

use super::args::LogFormat;

/// INFO, but not kube-rs' per-request tracing layer: it logs every failed request at ERROR
/// without naming the cluster (dozens of lines per outage); cafe logs each member's change of
/// health once, naming it. `RUST_LOG=info,kube_client=debug` brings those lines back.
pub const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off";

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colour codes are for people at a terminal; in a file, a pipe or a CI log they are noise.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // One object per line, fields at the top level, as log collectors expect.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
