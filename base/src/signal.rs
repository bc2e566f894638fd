//! Waiting for the signals that ask a process to stop.

/// SIGINT and SIGTERM listeners (Kubernetes stops a pod with SIGTERM; a person with Ctrl-C).
/// They take effect when [`Signals::install`] returns, not when [`Signals::recv`] is first
/// polled: a process that announces readiness after installing them is never killed by the
/// default action of a signal sent in answer to that announcement.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the listeners; needs a running tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the first SIGINT or SIGTERM received since [`Signals::install`].
    pub async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
