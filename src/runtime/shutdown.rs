//! Graceful shutdown: SIGINT or SIGTERM cancels a token every task watches.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT/SIGTERM; the controllers log that they stop.
pub fn on_signal() -> CancellationToken {
    signal_token(true)
}

/// As [`on_signal`], without the log line: for interactive commands (`cafe status -w`), where
/// Ctrl-C is the ordinary way to end and says nothing worth a line.
pub fn on_interrupt() -> CancellationToken {
    signal_token(false)
}

fn signal_token(log: bool) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let _ = cafe_base::signal::wait_for_signal().await;
        if log {
            tracing::info!("signal received; shutting down");
        }
        t.cancel();
    });
    token
}
