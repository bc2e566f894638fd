//! Graceful shutdown: SIGINT or SIGTERM cancels a token every task watches.

use cafe_base::signal::Signals;
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT/SIGTERM; the controllers log that they stop. The
/// handlers are installed before this returns, so a signal during start-up is not lost (nor
/// fatal).
pub fn on_signal() -> std::io::Result<CancellationToken> {
    signal_token(true)
}

/// As [`on_signal`], without the log line: for interactive commands (`cafe status -w`), where
/// Ctrl-C is the ordinary way to end and says nothing worth a line.
pub fn on_interrupt() -> std::io::Result<CancellationToken> {
    signal_token(false)
}

fn signal_token(log: bool) -> std::io::Result<CancellationToken> {
    let signals = Signals::install()?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        signals.recv().await;
        if log {
            tracing::info!("signal received; shutting down");
        }
        t.cancel();
    });
    Ok(token)
}
