//! The frame of a long-running command: signals, the admin server, the controller, in that
//! order, and down again in reverse.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use super::Telemetry;
use super::admin::{self, AdminError};
use super::args::RuntimeArgs;

/// Runs `controller(telemetry, shutdown)` until it returns (after SIGINT/SIGTERM cancels
/// `shutdown`, or on its own), with the admin server of `args` up meanwhile. Logging is set up
/// by `main` (it needs `--log-format` before anything logs). The outer error is the admin
/// server's; the inner result is the controller's.
pub async fn serve<F, Fut>(args: &RuntimeArgs, controller: F) -> Result<Fut::Output, AdminError>
where
    F: FnOnce(Telemetry, CancellationToken) -> Fut,
    Fut: Future,
{
    let shutdown = super::shutdown::on_signal().map_err(AdminError::Signal)?;
    let telemetry = Telemetry::default();
    let admin_stop = CancellationToken::new();
    let server = match args.admin_address.0 {
        Some(address) => {
            let server = admin::start(address, telemetry.clone(), admin_stop.clone()).await?;
            tracing::info!(address = %server.address, "admin server listening (/healthz, /readyz, /metrics)");
            Some(server)
        }
        None => None,
    };
    tracing::info!(identity = %args.identity(), "starting");
    let result = controller(telemetry, shutdown).await;
    // Probes keep answering until the controller has stopped: a kubelet sees it healthy while
    // it finishes its work, then the port closes.
    admin_stop.cancel();
    if let Some(server) = server {
        let _ = server.task.await;
    }
    Ok(result)
}
