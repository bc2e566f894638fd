//! Graceful shutdown: SIGINT or SIGTERM cancels a token every task watches.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT/SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let _ = cafe_sim::cli::wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        t.cancel();
    });
    token
}
