//! Logs (tracing, text or JSON, filtered), metrics (Prometheus text), and the process signals
//! that end a run.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicI32, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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

/// The first stop signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT) that came while `serve` or `sim` was
/// starting, before [`shutdown_signal`] listened: `main` catches them from its first moment (before
/// the configuration is read and the runtime built), storing the signal's number here and nothing
/// else (an atomic store is all a signal handler may safely do). 0: none.
pub static EARLY_STOP: AtomicI32 = AtomicI32::new(0);

/// A future that resolves on the first SIGTERM, SIGINT, SIGHUP or SIGQUIT: each starts the same
/// drain. The handlers are installed now, before the future is first polled, so a signal that
/// arrives early is not lost to the default action (which would end the process at once, with
/// uploads left open upstream). The other signals whose default is to end the process and that a
/// stray `kill` or timer may send (SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGIO) are logged and
/// otherwise ignored; SIGPIPE is ignored by the Rust runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind| signal(kind).expect("installing a signal handler");
        let mut stops = [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::quit(), "SIGQUIT"),
        ]
        .map(|(kind, name)| (install(kind), name));
        let mut ignored = [
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
            (SignalKind::alarm(), "SIGALRM"),
            (SignalKind::from_raw(libc_signal::SIGVTALRM), "SIGVTALRM"),
            (SignalKind::io(), "SIGIO"),
        ]
        .map(|(kind, name)| (install(kind), name));
        async move {
            // A signal caught while starting (see `EARLY_STOP`), even one that came as the handlers
            // below were being installed: the drain starts at once.
            let early = EARLY_STOP.load(Relaxed);
            if early != 0 {
                tracing::info!(signal = early, "shutdown signal received while starting");
                return;
            }
            let ignore = async {
                let [(a, a_name), (b, b_name), (c, c_name), (d, d_name), (e, e_name)] = &mut ignored;
                loop {
                    let name = tokio::select! {
                        _ = a.recv() => *a_name,
                        _ = b.recv() => *b_name,
                        _ = c.recv() => *c_name,
                        _ = d.recv() => *d_name,
                        _ = e.recv() => *e_name,
                    };
                    tracing::info!(signal = name, "signal ignored");
                }
            };
            let [(t, _), (i, _), (h, _), (q, _)] = &mut stops;
            let name = tokio::select! {
                _ = t.recv() => "SIGTERM",
                _ = i.recv() => "SIGINT",
                _ = h.recv() => "SIGHUP",
                _ = q.recv() => "SIGQUIT",
                _ = ignore => unreachable!("the ignoring loop never ends"),
            };
            tracing::info!(signal = name, "shutdown signal received");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}

/// Signal numbers tokio names no constructor for (Linux values).
#[cfg(unix)]
mod libc_signal {
    pub const SIGVTALRM: i32 = 26;
}

/// Process-wide counts of resilience events, read by the demo's report; the same events feed the
/// Prometheus metrics below.
static RETRIES: AtomicU64 = AtomicU64::new(0);
static RECONCILIATIONS: AtomicU64 = AtomicU64::new(0);
static THROTTLE_WAITS: AtomicU64 = AtomicU64::new(0);

/// A call is about to be sent again.
pub fn count_retry() {
    RETRIES.fetch_add(1, Relaxed);
    metrics::counter!(RETRIES_TOTAL).increment(1);
}

/// An upload was looked up to learn the outcome of an ambiguous call.
pub fn count_reconciliation() {
    RECONCILIATIONS.fetch_add(1, Relaxed);
    metrics::counter!(RECONCILIATIONS_TOTAL).increment(1);
}

/// A call waited for a rate-limit permit or a throttling pause.
pub fn count_throttle_wait(wait: Duration) {
    THROTTLE_WAITS.fetch_add(1, Relaxed);
    metrics::counter!(THROTTLE_WAITS_TOTAL).increment(1);
    tracing::debug!(wait_ms = wait.as_millis() as u64, "waiting for a rate-limit permit");
}

/// An upload was refused for want of budget: `reason` is `plan` (its plan did not fit the
/// account's hourly budget), `call` (a stream of unknown length outgrew it) or `quota` (the
/// member's quota had no room in time).
pub fn count_refusal(account: &str, reason: &'static str) {
    metrics::counter!(BUDGET_REFUSALS, "account" => account.to_owned(), "reason" => reason).increment(1);
}

/// (retries, reconciliations, throttle waits) so far in this process.
pub fn resilience_counts() -> (u64, u64, u64) {
    (RETRIES.load(Relaxed), RECONCILIATIONS.load(Relaxed), THROTTLE_WAITS.load(Relaxed))
}

// Metric names: stable, documented in the README.
pub const UPLOADS_STARTED: &str = "chunkgate_uploads_started_total";
pub const UPLOADS_COMMITTED: &str = "chunkgate_uploads_committed_total";
pub const UPLOADS_FAILED: &str = "chunkgate_uploads_failed_total";
pub const UPLOAD_BYTES: &str = "chunkgate_upload_bytes_total";
pub const PARTS: &str = "chunkgate_parts_total";
pub const RETRIES_TOTAL: &str = "chunkgate_retries_total";
pub const RECONCILIATIONS_TOTAL: &str = "chunkgate_reconciliations_total";
pub const THROTTLE_WAITS_TOTAL: &str = "chunkgate_throttle_waits_total";
pub const UPLOADS_IN_FLIGHT: &str = "chunkgate_uploads_in_flight";
pub const BYTES_IN_FLIGHT: &str = "chunkgate_upload_bytes_in_flight";
pub const PARTS_IN_FLIGHT: &str = "chunkgate_parts_in_flight";
pub const QUEUE_WAIT: &str = "chunkgate_queue_wait_seconds";
pub const UPSTREAM_CALL: &str = "chunkgate_upstream_call_duration_seconds";
pub const RATELIMIT_REMAINING: &str = "chunkgate_upstream_ratelimit_remaining";
pub const PASSTHROUGH: &str = "chunkgate_passthrough_requests_total";
pub const CHECKSUM_UNVERIFIED: &str = "chunkgate_checksum_unverified_total";
pub const CONNECTIONS_OPEN: &str = "chunkgate_connections_open";
pub const BUDGET_FREE: &str = "chunkgate_budget_calls_free";
pub const BUDGET_RESERVED: &str = "chunkgate_budget_calls_reserved";
pub const BUDGET_USED: &str = "chunkgate_budget_calls_used";
pub const BUDGET_REFUSALS: &str = "chunkgate_budget_refusals_total";
pub const QUOTA_UPLOADS: &str = "chunkgate_quota_uploads_held";
pub const QUOTA_BYTES: &str = "chunkgate_quota_bytes_held";
pub const CLUSTER_FALLBACK: &str = "chunkgate_cluster_fallback";
pub const CLUSTER_OP: &str = "chunkgate_cluster_op_duration_seconds";
pub const TUS_SESSIONS: &str = "chunkgate_tus_sessions";
pub const TUS_SPOOLED: &str = "chunkgate_tus_spooled_bytes";
pub const TUS_CREATED: &str = "chunkgate_tus_created_total";
pub const TUS_BYTES: &str = "chunkgate_tus_bytes_total";
pub const TUS_RESUMES: &str = "chunkgate_tus_resumes_total";
pub const TUS_RECREATED: &str = "chunkgate_tus_recreated_total";
pub const TUS_REAPED: &str = "chunkgate_tus_reaped_total";
pub const TUS_CHECKSUM_MISMATCH: &str = "chunkgate_tus_checksum_mismatches_total";

/// Counts a passed-through answer by status. The counter handle of each status is looked up in the
/// registry once and kept: a lookup per request cost more than the rest of the metrics together.
pub fn passthrough(status: http::StatusCode) {
    static COUNTERS: OnceLock<std::sync::RwLock<crate::FastMap<u16, metrics::Counter>>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(Default::default);
    if let Some(counter) = counters.read().unwrap().get(&status.as_u16()) {
        counter.increment(1);
        return;
    }
    let counter = metrics::counter!(PASSTHROUGH, "status" => status.as_str().to_owned());
    counter.increment(1);
    counters.write().unwrap().insert(status.as_u16(), counter);
}

/// The process's Prometheus recorder, installed on first use. Metrics are process-wide, as the
/// process runs one gateway.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
            // Redis answers on loopback or in the same zone in well under a millisecond: finer
            // buckets, so that its p50 and p99 can be read off them.
            let redis = [0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(CLUSTER_OP.into()), &redis)
                })
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a host program's): then this handle
            // renders nothing, which the admin endpoint reports as an empty page.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
