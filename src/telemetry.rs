//! Logs (tracing, text or JSON, filtered) and the process signals that end a run.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

/// Process-wide counts of resilience events, read by the demo's report and the metrics.
static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RECONCILIATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static THROTTLE_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A call is about to be sent again.
pub fn count_retry() {
    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// An upload was looked up to learn the outcome of an ambiguous call.
pub fn count_reconciliation() {
    RECONCILIATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A call waited for a rate-limit permit or a throttling pause.
pub fn count_throttle_wait(wait: std::time::Duration) {
    THROTTLE_WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(wait_ms = wait.as_millis() as u64, "waiting for a rate-limit permit");
}

/// (retries, reconciliations, throttle waits) so far in this process.
pub fn resilience_counts() -> (u64, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (RETRIES.load(Relaxed), RECONCILIATIONS.load(Relaxed), THROTTLE_WAITS.load(Relaxed))
}
