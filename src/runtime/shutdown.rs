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

/// How often a graceful shutdown that still waits says for what.
pub const STRAGGLER_REPORT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `controllers` to their end; once `shutdown` is cancelled, logs every
/// [`STRAGGLER_REPORT`] which reconciles the graceful shutdown still waits for, so a stop that
/// takes long names what holds it (an API call without an answer, say) instead of going quiet.
pub async fn naming_stragglers<T>(
    controllers: impl std::future::Future<Output = T>,
    metrics: &crate::runtime::metrics::Metrics,
    shutdown: &CancellationToken,
) -> T {
    let report = async {
        shutdown.cancelled().await;
        let stopping = std::time::Instant::now();
        loop {
            tokio::time::sleep(STRAGGLER_REPORT).await;
            let running = metrics.in_flight();
            if !running.is_empty() {
                tracing::warn!(
                    waited = ?stopping.elapsed(),
                    reconciles = ?running,
                    "shutting down: still waiting for reconciles in flight"
                );
            }
        }
    };
    tokio::pin!(controllers);
    tokio::select! {
        biased;
        done = &mut controllers => return done,
        () = report => {}
    }
    controllers.await
}
