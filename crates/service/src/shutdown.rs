//! Shutdown signals: SIGTERM (orchestrators) and SIGINT (Ctrl-C) cancel a token, which the
//! service's `run_until_stopped` waits on before draining.

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Cancels `shutdown` at the first SIGTERM or SIGINT. Call it inside a Tokio runtime; abort the
/// returned task once the service has stopped.
///
/// # Errors
///
/// When a signal handler cannot be installed.
pub fn cancel_on_signal(
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "signal received"),
            _ = interrupt.recv() => info!(signal = "SIGINT", "signal received"),
        }
        shutdown.cancel();
    }))
}
