//! Logging to stderr through tracing, as text or JSON lines; `RUST_LOG` overrides the default
//! level.

use std::io::IsTerminal;

use super::args::LogFormat;

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
