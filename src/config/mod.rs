//! Settings: one TOML file (`config/chunkgate.toml` documents every key), defaults that work out of
//! the box, `CHUNKGATE_SECTION__KEY=value` environment overrides for pod specs, and validation that
//! lists every problem at once. Unknown keys are errors.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

mod dialect;
pub mod sim;

pub use self::{dialect::Dialect, sim::SimConfig};

/// Exit status for a configuration that cannot be used (EX_USAGE, as linkerd2-proxy does).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub upload: UploadConfig,
    pub retry: RetryConfig,
    pub rate_limit: RateLimitConfig,
    pub quota: QuotaConfig,
    pub cluster: ClusterConfig,
    pub tus: TusConfig,
    pub log: LogConfig,
    pub sim: SimConfig,
}

/// The listener internal services talk to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Loopback by default: a sidecar serves its own pod.
    pub listen: SocketAddr,
    /// Time a new connection has to deliver its first request head (from accept), and any later
    /// head once begun.
    pub header_read_timeout_ms: u64,
    /// A connection with no request running is closed after this long.
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// Largest read from a client connection (see `ConnLimits::read_buffer_bytes`).
    pub read_buffer_bytes: usize,
    /// Threads serving connections: 0 = one per core.
    pub worker_threads: usize,
    /// How those threads share the work (see [`Scheduler`]).
    pub scheduler: Scheduler,
    /// On SIGTERM, time given to in-flight requests before they are cancelled.
    pub drain_secs: u64,
    /// Keys internal callers must present in `caller_key_header`; empty lets any caller in.
    pub caller_keys: Vec<Secret>,
    pub caller_key_header: String,
    /// Accounts the gateway may be used for; empty allows any.
    pub allowed_accounts: Vec<String>,
    /// Streamed uploads one caller (its key, or its address without keys) may run at once.
    pub max_uploads_per_caller: usize,
    /// Passthrough requests one caller may have running (waiting for the rate limiter included).
    pub max_passthrough_per_caller: usize,
    /// HTTP/2 streams one client connection may have open at once.
    pub http2_max_streams: u32,
    /// HTTP/2 flow-control window of each stream; the connection's is this times
    /// `http2_max_streams` (see `ConnLimits::http2_stream_window`).
    pub http2_stream_window_bytes: u32,
    /// Passthrough requests of one account running at once, over all callers.
    pub max_passthrough_per_account: usize,
    /// Serve TLS with this certificate chain and key (PEM); plain HTTP when unset.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mTLS for callers outside the pod.
    pub client_ca: Option<PathBuf>,
}

/// How the gateway's threads share connections and the work they bring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Each thread runs an event loop of its own and takes connections from the shared listener;
    /// a connection, the uploads it carries and the upstream connections they use stay on that
    /// thread. No wake-ups across threads: the least CPU per proxied request. One upload uses one
    /// core; concurrent uploads spread over the threads.
    PerThread,
    /// One work-stealing runtime for all threads: tasks move to idle threads, so a single upload's
    /// hashing and part sends can spread over cores, at the cost of wake-ups across threads.
    WorkStealing,
}

/// A TLS acceptor from PEM files, or `None` when no certificate is configured.
pub fn tls_acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let config = crate::tls::server_config(cert, key, client_ca)?;
            Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))))
        }
        (None, None) if client_ca.is_none() => Ok(None),
        _ => Err("a TLS listener needs both a certificate and a key (and a client CA only with them)".into()),
    }
}

/// A value that must not be printed (a caller key): `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
            read_buffer_bytes: 512 * 1024,
            worker_threads: 0,
            scheduler: Scheduler::PerThread,
            drain_secs: 30,
            caller_keys: Vec::new(),
            caller_key_header: "x-chunkgate-key".to_owned(),
            allowed_accounts: Vec::new(),
            max_uploads_per_caller: 32,
            max_passthrough_per_caller: 64,
            http2_max_streams: 100,
            http2_stream_window_bytes: 1024 * 1024,
            max_passthrough_per_account: 512,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }
}

impl ServerConfig {
    /// `worker_threads`, with 0 resolved to the number of cores.
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The listener's TLS acceptor, when `tls_cert` and `tls_key` are set.
    pub fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        tls_acceptor(self.tls_cert.as_deref(), self.tls_key.as_deref(), self.client_ca.as_deref())
    }
}

/// The admin listener: /healthz, /readyz, /metrics.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9090)) }
    }
}

/// The API the gateway drives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// The upstream's origin (`https://host[:port]`); requests go to it + the request's path and
    /// query, so the path the client uses (`/restapi/v2.1/...`) is the path the upstream sees.
    pub base_url: String,
    /// Permit an `http://` base URL (the simulator on loopback); refused otherwise.
    pub allow_plain_http: bool,
    pub dialect: Dialect,
    /// Extra PEM files of CAs to trust besides the public roots.
    pub ca_files: Vec<PathBuf>,
    pub connect_timeout_ms: u64,
    /// Whole-call limit on get and delete calls, and on the answer headers of a passthrough request.
    pub call_timeout_ms: u64,
    /// Whole-call limit on create and add-part calls, which carry a part.
    pub part_timeout_ms: u64,
    /// Whole-call limit on a commit.
    pub commit_timeout_ms: u64,
    /// Largest upstream answer the gateway reads to parse (bigger ones are a bad response).
    pub max_response_bytes: usize,
    /// Largest request body the upstream accepts (DocuSign documents 25 to 32 MB): part bodies
    /// stay within it whatever part size is configured.
    pub max_request_bytes: usize,
    /// Idle pooled connections kept per host.
    pub pool_max_idle: usize,
    /// Offer HTTP/2 in the TLS handshake (used when the upstream accepts it); HTTP/1.1 only when false.
    pub http2: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://demo.docusign.net".to_owned(),
            allow_plain_http: false,
            dialect: Dialect::Docusign,
            ca_files: Vec::new(),
            connect_timeout_ms: 5_000,
            call_timeout_ms: 30_000,
            part_timeout_ms: 120_000,
            commit_timeout_ms: 60_000,
            max_response_bytes: 1024 * 1024,
            max_request_bytes: 25_000_000,
            pool_max_idle: 32,
            // HTTP/1.1 streamed parts faster and for less CPU than HTTP/2 (BENCHMARKS.md, 7).
            http2: false,
        }
    }
}

/// The streamed upload.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct UploadConfig {
    /// Smallest part; raised per document when it would not fit in the allowed part count.
    pub part_size: usize,
    /// Largest part; a part's request body (base64 in JSON) also stays within
    /// `upstream.max_request_bytes`, which caps it further.
    pub max_part_bytes: usize,
    /// Part limit assumed when sizing part 0, before the upstream has announced its own.
    pub assumed_max_parts: u32,
    /// Part PUTs in flight per upload.
    pub max_in_flight: usize,
    /// Documents with a larger declared length are refused with 413 before any upstream call.
    pub max_document_bytes: u64,
    /// Streamed uploads at once; more get 503 GATEWAY_BUSY.
    pub max_uploads: usize,
    /// Part bytes (raw and base64) held by all uploads together; uploads wait for room.
    pub memory_budget_bytes: usize,
    /// A client body that sends nothing for this long is cut off (408 CLIENT_BODY_TIMEOUT).
    pub client_idle_timeout_ms: u64,
    /// Compare the gateway's SHA-256 with the upstream's `?include=checksum` before committing.
    pub verify_upstream_checksum: bool,
    /// With verification on, refuse to commit when the upstream's answer carries no checksum
    /// (otherwise sizes are checked, a warning logged and counted, and the answer says so).
    pub require_upstream_checksum: bool,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            part_size: 8 * 1024 * 1024,
            max_part_bytes: 16 * 1024 * 1024,
            assumed_max_parts: 128,
            max_in_flight: 4,
            max_document_bytes: 50 * 1024 * 1024,
            max_uploads: 32,
            memory_budget_bytes: 1024 * 1024 * 1024,
            client_idle_timeout_ms: 30_000,
            verify_upstream_checksum: true,
            require_upstream_checksum: false,
        }
    }
}

/// Retries of upstream calls whose failure is worth another try (see `retry.rs`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Backoff before retry n is random in 0..=min(max_backoff, base * 2^n) (full jitter).
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Time one call may spend on retries; the upload's lifetime bounds it as well.
    pub max_elapsed_secs: u64,
    /// Process-wide budget: retries may be at most this share of recent calls...
    pub budget_ratio: f64,
    /// ...plus this many retries per second, so a quiet process can still retry.
    pub budget_floor_per_sec: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_backoff_ms: 100,
            max_backoff_ms: 5_000,
            max_elapsed_secs: 300,
            budget_ratio: 0.2,
            budget_floor_per_sec: 10.0,
        }
    }
}

/// The account's API limits, paced per account over every upstream call (uploads and passthrough).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Calls per account per clock hour (DocuSign default 3,000).
    pub hourly_limit: u32,
    /// Calls per account per burst window (DocuSign: 500 per 30 s in production, 200 on demo).
    pub burst_limit: u32,
    pub burst_window_secs: u64,
    /// Longest a call waits for a permit or a throttling pause before it fails with RATE_LIMITED.
    pub max_wait_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { enabled: true, hourly_limit: 3000, burst_limit: 500, burst_window_secs: 30, max_wait_secs: 120 }
    }
}

/// The upstream's per-member quota, kept by the gateway's ledger so uploads wait here instead of
/// being refused upstream: unused uploads (from create until used, deleted or expired) and their
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct QuotaConfig {
    /// Unused uploads one member may hold (DocuSign: 64).
    pub uploads_per_member: u32,
    /// Bytes in them (DocuSign: 1 GB; declared length, or upload.max_document_bytes when unknown).
    pub bytes_per_member: u64,
    /// How long an upload waits for room before 503 GATEWAY_BUSY.
    pub wait_secs: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self { uploads_per_member: 64, bytes_per_member: 1_000_000_000, wait_secs: 30 }
    }
}

/// Sidecars that share an account: its limits and its members' quotas are shared budgets.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`: share counts through Redis. Empty: no Redis.
    pub redis_url: String,
    /// Sidecars sharing each account. Without Redis, or while it cannot be reached, each keeps to
    /// this share of the account's limits and quotas.
    pub replicas: u32,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// A reservation or lease a sidecar stops renewing (it was killed) is freed after this long.
    pub lease_ttl_secs: u64,
    /// Longest one Redis operation may take before the sidecar falls back to its share.
    pub op_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            replicas: 1,
            key_prefix: "chunkgate".to_owned(),
            lease_ttl_secs: 60,
            op_timeout_ms: 50,
        }
    }
}

/// Resumable uploads with the tus 1.0 protocol.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TusConfig {
    /// Where uploads' bytes are spooled and their state kept. Empty: tus is off (a tus request is
    /// answered 501 `TUS_DISABLED`).
    pub dir: String,
    /// Bytes the spool may hold: each upload counts its `Upload-Length` (the largest document
    /// while its length is deferred) from creation until it ends.
    pub max_disk_bytes: u64,
    /// An upload not finished this long after its creation expires (`Upload-Expires`) and is
    /// reaped: deleted from disk and upstream.
    pub session_ttl_secs: u64,
    /// Browser origins allowed to use tus (CORS), e.g. `https://app.example.com`. Empty: none.
    pub cors_origins: Vec<String>,
}

impl Default for TusConfig {
    fn default() -> Self {
        Self { dir: String::new(), max_disk_bytes: 10 << 30, session_ttl_secs: 24 * 3600, cors_origins: Vec::new() }
    }
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `chunkgate=debug`; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".to_owned() }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Prefix of environment overrides: `CHUNKGATE_SIM__LIMITS__MAX_PARTS=64` sets `sim.limits.max_parts`.
pub const ENV_PREFIX: &str = "CHUNKGATE_";

// === impl Config ===

impl Config {
    /// Reads `path` (or the defaults when `None`), applies overrides from `env`, and validates.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, Problems> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| Problems(vec![format!("cannot read {}: {err}", path.display())]))?,
            None => String::new(),
        };
        Self::parse(&text, env)
    }

    /// Parses TOML text, applies overrides from `env`, and validates.
    pub fn parse(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, Problems> {
        let mut table: toml::Table = text.parse().map_err(|err: toml::de::Error| Problems(vec![err.to_string()]))?;
        let mut problems = Vec::new();
        // The keys the environment set, with the variable that set each.
        let mut from_env = Vec::new();
        for (name, value) in env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__")) {
                let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
                if let Err(p) = set_path(&mut table, &keys, env_value(&value)) {
                    problems.push(format!("{name}: {p}"));
                }
                from_env.push((keys.join("."), name));
            }
        }
        let mut parsed = Vec::new();
        let (config, wrong): (Config, _) = deserialize_strict(toml::Value::Table(table), &mut parsed);
        problems.extend(parsed.into_iter().map(|problem| naming_the_variable(problem, &from_env)));
        // Not what a key of the wrong type was left at (its default): the value was never read.
        problems.extend(config.problems().into_iter().filter(|p| !wrong.iter().any(|key| mentions(p, key))));
        if problems.is_empty() { Ok(config) } else { Err(Problems(problems)) }
    }

    /// Settings that work but are probably not what was meant; `check-config` prints them and
    /// `serve` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(uri) = self.upstream.base_url.parse::<http::Uri>() {
            let path = uri.path().trim_end_matches('/');
            if !path.is_empty() {
                out.push(format!(
                    "upstream.base_url has the path {path:?}: requests are forwarded to base_url + their own path, so a request for /restapi/v2.1/... would reach the upstream as {path}/restapi/v2.1/...; set base_url to the origin ({}://{}) and change only the scheme, host and port of the client's base path",
                    uri.scheme_str().unwrap_or("https"),
                    uri.authority().map_or("", |a| a.as_str()),
                ));
            }
        }
        let cap = part_cap(self.upstream.max_request_bytes);
        for (name, size) in
            [("upload.part_size", self.upload.part_size), ("upload.max_part_bytes", self.upload.max_part_bytes)]
        {
            if size > cap {
                out.push(format!(
                    "{name} ({size}) encodes to more than upstream.max_request_bytes ({}) allows: parts are held to {cap} bytes",
                    self.upstream.max_request_bytes
                ));
            }
        }
        out
    }

    /// The upload settings in force: part sizes held to what fits in one upstream request.
    pub fn effective_upload(&self) -> UploadConfig {
        let cap = part_cap(self.upstream.max_request_bytes);
        let mut u = self.upload.clone();
        u.max_part_bytes = u.max_part_bytes.min(cap).max(1);
        u.part_size = u.part_size.min(u.max_part_bytes);
        u
    }

    /// Every semantic problem (types and unknown keys are caught while parsing).
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.sim.problems();
        self.upstream_problems(&mut out);
        self.upload_problems(&mut out);
        self.zero_problems(&mut out);
        self.ceiling_problems(&mut out);
        self.server_problems(&mut out);
        self.retry_and_log_problems(&mut out);
        self.cluster_problems(&mut out);
        self.tus_problems(&mut out);
        out
    }

    fn tus_problems(&self, out: &mut Vec<String>) {
        let t = &self.tus;
        let dir = std::path::Path::new(&t.dir);
        if !t.dir.is_empty() && dir.exists() && !dir.is_dir() {
            out.push(format!("tus.dir: {} exists and is not a directory", t.dir));
        }
        if t.session_ttl_secs < 5 {
            out.push(format!("tus.session_ttl_secs ({}) must be at least 5", t.session_ttl_secs));
        }
        for origin in &t.cors_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && http::HeaderValue::from_str(origin).is_ok()
                && !origin.trim_end_matches('/').contains(['?', '#', ' '])
                && origin.matches('/').count() == 2;
            if !ok {
                out.push(format!("tus.cors_origins: {origin:?} is not an origin (scheme://host[:port])"));
            }
        }
    }

    fn cluster_problems(&self, out: &mut Vec<String>) {
        let c = &self.cluster;
        let url = &c.redis_url;
        if !url.is_empty() && (!url.starts_with("redis://") || redis::Client::open(url.as_str()).is_err()) {
            // The URL may carry a password: it is not repeated.
            out.push("cluster.redis_url must be a redis://[user:password@]host:port[/db] URL".into());
        }
        if c.key_prefix.is_empty() || c.key_prefix.len() > 64 || !c.key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
            out.push("cluster.key_prefix must be 1 to 64 printable characters without spaces".into());
        }
        if c.lease_ttl_secs < 5 && c.lease_ttl_secs > 0 {
            out.push(format!("cluster.lease_ttl_secs ({}) must be at least 5", c.lease_ttl_secs));
        }
    }

    fn upstream_problems(&self, out: &mut Vec<String>) {
        let base = &self.upstream.base_url;
        if base.contains(['?', '#'])
            || base.split("://").nth(1).is_some_and(|rest| rest.split('/').next().unwrap_or_default().contains('@'))
        {
            out.push(format!("upstream.base_url must be a scheme, host, port (and path) only: no query, fragment or user, not {base:?}"));
        }
        match base.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {
                if !self.upstream.allow_plain_http {
                    out.push(format!(
                        "upstream.base_url {base} is plain http: set upstream.allow_plain_http = true to permit it"
                    ));
                }
            }
            _ => out.push(format!("upstream.base_url must be an absolute http(s) URL, not {base:?}")),
        }
        for ca in &self.upstream.ca_files {
            if !ca.is_file() {
                out.push(format!("upstream.ca_files: {} is not a readable file", ca.display()));
            }
        }
        // What each file holds, as the gateway will read it at start (a file with no certificate
        // in it was reported only by `serve`).
        for ca in self.upstream.ca_files.iter().filter(|ca| ca.is_file()) {
            if let Err(problem) = crate::tls::client_config(std::slice::from_ref(ca)) {
                out.push(format!("upstream.ca_files: {problem}"));
            }
        }
        if self.upstream.max_request_bytes < 4096 {
            out.push(format!("upstream.max_request_bytes ({}) must be at least 4096", self.upstream.max_request_bytes));
        }
    }

    fn upload_problems(&self, out: &mut Vec<String>) {
        let u = &self.upload;
        if u.part_size == 0 || u.part_size > u.max_part_bytes {
            out.push(format!(
                "upload.part_size must be within 1..=upload.max_part_bytes ({}), not {}",
                u.max_part_bytes, u.part_size
            ));
        }
        if !(1..=256).contains(&u.assumed_max_parts) {
            out.push(format!("upload.assumed_max_parts must be within 1..=256, not {}", u.assumed_max_parts));
        }
        if u.memory_budget_bytes < u.part_size * 3 {
            out.push(format!(
                "upload.memory_budget_bytes ({}) must be at least 3 x upload.part_size ({})",
                u.memory_budget_bytes,
                u.part_size * 3
            ));
        }
    }

    /// Counts, sizes and times that must not be zero.
    fn zero_problems(&self, out: &mut Vec<String>) {
        let (u, up, s) = (&self.upload, &self.upstream, &self.server);
        for (name, v) in [
            ("upload.max_in_flight", u.max_in_flight as u64),
            ("upload.max_uploads", u.max_uploads as u64),
            ("upload.max_document_bytes", u.max_document_bytes),
            ("upload.client_idle_timeout_ms", u.client_idle_timeout_ms),
            ("upstream.connect_timeout_ms", up.connect_timeout_ms),
            ("upstream.call_timeout_ms", up.call_timeout_ms),
            ("upstream.part_timeout_ms", up.part_timeout_ms),
            ("upstream.commit_timeout_ms", up.commit_timeout_ms),
            ("upstream.max_response_bytes", up.max_response_bytes as u64),
            ("retry.max_attempts", self.retry.max_attempts as u64),
            ("rate_limit.hourly_limit", self.rate_limit.hourly_limit as u64),
            ("rate_limit.burst_limit", self.rate_limit.burst_limit as u64),
            ("rate_limit.burst_window_secs", self.rate_limit.burst_window_secs),
            ("quota.uploads_per_member", self.quota.uploads_per_member as u64),
            ("quota.bytes_per_member", self.quota.bytes_per_member),
            ("cluster.replicas", self.cluster.replicas as u64),
            ("cluster.lease_ttl_secs", self.cluster.lease_ttl_secs),
            ("cluster.op_timeout_ms", self.cluster.op_timeout_ms),
            ("server.max_connections", s.max_connections as u64),
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.max_uploads_per_caller", s.max_uploads_per_caller as u64),
            ("server.max_passthrough_per_caller", s.max_passthrough_per_caller as u64),
            ("server.max_passthrough_per_account", s.max_passthrough_per_account as u64),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
        ] {
            if v == 0 {
                out.push(format!("{name} must be above 0"));
            }
        }
    }

    /// Times and counts past any use: a time added to the clock overflowed it (every request then
    /// panicked, 500), and a count past a semaphore's maximum stopped the start-up with a panic.
    /// Refused here, with the setting named, as `check-config` reports the rest.
    fn ceiling_problems(&self, out: &mut Vec<String>) {
        const DAYS_30_SECS: u64 = 30 * 24 * 3600;
        const DAYS_30_MS: u64 = DAYS_30_SECS * 1000;
        const COUNT: u64 = 1 << 30;
        let (u, up, s, r) = (&self.upload, &self.upstream, &self.server, &self.retry);
        let limits = [
            ("server.header_read_timeout_ms", s.header_read_timeout_ms, DAYS_30_MS),
            ("server.idle_timeout_ms", s.idle_timeout_ms, DAYS_30_MS),
            ("server.drain_secs", s.drain_secs, DAYS_30_SECS),
            ("upstream.connect_timeout_ms", up.connect_timeout_ms, DAYS_30_MS),
            ("upstream.call_timeout_ms", up.call_timeout_ms, DAYS_30_MS),
            ("upstream.part_timeout_ms", up.part_timeout_ms, DAYS_30_MS),
            ("upstream.commit_timeout_ms", up.commit_timeout_ms, DAYS_30_MS),
            ("upload.client_idle_timeout_ms", u.client_idle_timeout_ms, DAYS_30_MS),
            ("retry.base_backoff_ms", r.base_backoff_ms, DAYS_30_MS),
            ("retry.max_backoff_ms", r.max_backoff_ms, DAYS_30_MS),
            ("retry.max_elapsed_secs", r.max_elapsed_secs, DAYS_30_SECS),
            ("rate_limit.burst_window_secs", self.rate_limit.burst_window_secs, DAYS_30_SECS),
            ("rate_limit.max_wait_secs", self.rate_limit.max_wait_secs, DAYS_30_SECS),
            ("quota.wait_secs", self.quota.wait_secs, DAYS_30_SECS),
            ("cluster.lease_ttl_secs", self.cluster.lease_ttl_secs, DAYS_30_SECS),
            ("cluster.op_timeout_ms", self.cluster.op_timeout_ms, DAYS_30_MS),
            ("tus.session_ttl_secs", self.tus.session_ttl_secs, DAYS_30_SECS),
            ("server.max_connections", s.max_connections as u64, COUNT),
            ("server.max_uploads_per_caller", s.max_uploads_per_caller as u64, COUNT),
            ("server.max_passthrough_per_caller", s.max_passthrough_per_caller as u64, COUNT),
            ("server.max_passthrough_per_account", s.max_passthrough_per_account as u64, COUNT),
            ("upload.max_uploads", u.max_uploads as u64, COUNT),
            ("upload.max_in_flight", u.max_in_flight as u64, COUNT),
            ("retry.max_attempts", r.max_attempts as u64, COUNT),
            ("upstream.pool_max_idle", up.pool_max_idle as u64, COUNT),
            ("rate_limit.hourly_limit", self.rate_limit.hourly_limit.into(), COUNT),
            ("rate_limit.burst_limit", self.rate_limit.burst_limit.into(), COUNT),
            ("quota.uploads_per_member", self.quota.uploads_per_member.into(), COUNT),
            ("cluster.replicas", self.cluster.replicas.into(), COUNT),
        ];
        for (name, v, max) in limits {
            if v > max {
                out.push(format!("{name} ({v}) must be at most {max}"));
            }
        }
    }

    fn server_problems(&self, out: &mut Vec<String>) {
        let s = &self.server;
        let mut within = |name: &str, v: u64, range: std::ops::RangeInclusive<u64>| {
            if !range.contains(&v) {
                out.push(format!("server.{name} ({v}) must be within {}..={}", range.start(), range.end()));
            }
        };
        within("read_buffer_bytes", s.read_buffer_bytes as u64, 8192..=16 << 20);
        within("http2_max_streams", s.http2_max_streams.into(), 1..=1000);
        within("http2_stream_window_bytes", s.http2_stream_window_bytes.into(), 65_535..=16 << 20);
        within("worker_threads", s.worker_threads as u64, 0..=1024);
        within("max_header_bytes", s.max_header_bytes as u64, 1024..=16 << 20);
        if s.listen == self.admin.listen && s.listen.port() != 0 {
            out.push(format!("server.listen and admin.listen are the same address ({})", s.listen));
        }
        if let Err(problem) = s.tls_acceptor() {
            out.push(format!("server TLS (server.tls_cert, server.tls_key): {problem}"));
        }
        if let Err(problem) = tls_acceptor(self.sim.tls_cert.as_deref(), self.sim.tls_key.as_deref(), None) {
            out.push(format!("sim TLS (sim.tls_cert, sim.tls_key): {problem}"));
        }
        if http::HeaderName::from_bytes(s.caller_key_header.as_bytes()).is_err() {
            out.push(format!("server.caller_key_header {:?} is not a header name", s.caller_key_header));
        }
        if s.caller_keys.iter().any(|k| k.0.len() < 16) {
            out.push("server.caller_keys must be at least 16 characters each".into());
        }
        for account in &s.allowed_accounts {
            if !crate::ids::valid_account(account) {
                out.push(format!("server.allowed_accounts: {account:?} is neither an integer nor a GUID"));
            }
        }
    }

    fn retry_and_log_problems(&self, out: &mut Vec<String>) {
        let r = &self.retry;
        // One problem per key: a problem that names a key of the wrong type is left out.
        if !(0.0..=10.0).contains(&r.budget_ratio) {
            out.push("retry.budget_ratio must be within 0..=10".into());
        }
        if !(0.0..=1000.0).contains(&r.budget_floor_per_sec) {
            out.push("retry.budget_floor_per_sec must be within 0..=1000".into());
        }
        if r.base_backoff_ms > r.max_backoff_ms {
            out.push("retry.base_backoff_ms must not exceed retry.max_backoff_ms".into());
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            out.push(format!("log.filter is not a valid filter: {err}"));
        }
    }
}

/// Bytes of a part's request body around its base64: `{"data":""}` (the pipeline's part bodies
/// are that; a test there holds the two together).
pub const PART_BODY_OVERHEAD: usize = 11;

/// The largest raw part whose request body, `{"data":"<base64>"}`, fits in `max_request_bytes`.
pub fn part_cap(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_sub(PART_BODY_OVERHEAD) / 4 * 3
}

/// Keys of earlier releases, and what replaced them.
fn renamed(key: &str) -> Option<&'static str> {
    match key {
        "quota.uploads_per_account" => Some("quota.uploads_per_member (the upstream's quota is per member)"),
        "quota.bytes_per_account" => Some("quota.bytes_per_member (the upstream's quota is per member)"),
        _ => None,
    }
}

/// Deserializes `value`, recording every unknown key and every key of the wrong type or out of
/// its type's range in `problems`. A wrong key is reported, left at its default and the rest read
/// again, so that one run lists every problem (the parser stops at the first); the keys taken out
/// are returned, so that checks of the values read can leave them alone (their defaults are not
/// what was written).
pub fn deserialize_strict<T: DeserializeOwned + Default>(
    mut value: toml::Value,
    problems: &mut Vec<String>,
) -> (T, Vec<String>) {
    /// Each round reads the whole configuration again: past this many wrong keys, the rest are
    /// left for the next check.
    const MOST: usize = 100;
    let mut wrong = Vec::new();
    let mut taken = Vec::new();
    let mut unknown = Vec::new();
    let mut read = None;
    for _ in 0..=MOST {
        unknown.clear();
        let result: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
            value.clone(),
            &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
        ));
        match result {
            Ok(config) => {
                read = Some(config);
                break;
            }
            Err(err) => {
                if wrong.len() == MOST {
                    wrong.push(format!(
                        "more than {MOST} keys have values of the wrong type: fix these and check again"
                    ));
                    break;
                }
                let taken_out = take_out(&mut value, err.path());
                wrong.push(match err.path().iter().next() {
                    Some(_) => format!("`{}`: {}", err.path(), err.inner().message().trim()),
                    None => err.inner().to_string().trim().to_owned(),
                });
                match taken_out {
                    Some(key) => taken.push(key),
                    None => break,
                }
            }
        }
    }
    problems.extend(unknown.into_iter().map(|key| match renamed(&key) {
        Some(now) => format!("unknown key `{key}`: it was replaced by `{now}`"),
        None => format!("unknown key `{key}`"),
    }));
    problems.extend(wrong);
    (read.unwrap_or_default(), taken)
}

/// Whether `problem` names the setting `key`, or one below it, as a setting (`upload.part_size`
/// or `upload.part_size.x`; not `upload.part_size_x`, `sim.accounts.acme-eu` for `sim.accounts.acme`,
/// nor the word in a path or a quoted value: `/upload/ca.pem`, `"log"`).
fn mentions(problem: &str, key: &str) -> bool {
    problem.match_indices(key).any(|(at, _)| {
        let before = problem[..at].chars().next_back();
        let rest = &problem[at + key.len()..];
        let starts = before.is_none_or(|c| c.is_whitespace() || matches!(c, '`' | '('));
        let ends = match rest.chars().next() {
            None => true,
            Some('.') => rest[1..].chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_'),
            Some(c) => c.is_whitespace() || matches!(c, '`' | ':' | ')' | ','),
        };
        starts && ends
    })
}

/// Removes the key at `path` (the outermost key holding it, when it runs into an array or an
/// enum) from `value`; the key's dotted name, or `None` when there is no such key.
fn take_out(value: &mut toml::Value, path: &serde_path_to_error::Path) -> Option<String> {
    let keys: Vec<&str> = path
        .iter()
        .map_while(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let (last, parents) = keys.split_last()?;
    let mut at = value;
    for key in parents {
        at = at.get_mut(*key)?;
    }
    at.as_table_mut()?.remove(*last)?;
    Some(keys.join("."))
}

/// A problem with a key (named in backticks) that the environment set, with the variable named:
/// the key alone sent users looking for it in the file.
fn naming_the_variable(problem: String, from_env: &[(String, String)]) -> String {
    let Some(key) = problem.split('`').nth(1) else { return problem };
    let set = from_env.iter().rev().find(|(path, _)| {
        path == key
            || path.strip_prefix(key).is_some_and(|rest| rest.starts_with('.'))
            || key.strip_prefix(path.as_str()).is_some_and(|rest| rest.starts_with('['))
    });
    match set {
        Some((_, variable)) => format!("{problem} (set by {variable})"),
        None => problem,
    }
}

/// An override's value: TOML when it parses as a TOML value (`64`, `true`, `["a"]`), else a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().expect("split on `__` yields at least one key");
    let mut at = table;
    for key in parents {
        let entry = at.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        assert_eq!(Config::parse("", env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn files_are_read_as_the_gateway_will_and_listeners_are_apart() {
        let dir = std::env::temp_dir().join(format!("chunkgate-config-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-a-ca.pem");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let not_dir = dir.join("a-file");
        std::fs::write(&not_dir, "x").unwrap();
        let problems = Config::parse(
            "",
            env(&[
                ("CHUNKGATE_UPSTREAM__CA_FILES", &format!("[{:?}]", not_pem.display().to_string())),
                ("CHUNKGATE_TUS__DIR", &not_dir.display().to_string()),
                ("CHUNKGATE_SERVER__LISTEN", "127.0.0.1:18080"),
                ("CHUNKGATE_ADMIN__LISTEN", "127.0.0.1:18080"),
            ]),
        )
        .unwrap_err()
        .0;
        let _ = std::fs::remove_dir_all(&dir);
        for start in ["upstream.ca_files: CA file", "tus.dir:", "server.listen and admin.listen"] {
            assert!(problems.iter().any(|p| p.starts_with(start)), "{start}: {problems:?}");
        }
    }

    #[test]
    fn problems_with_what_the_environment_set_name_the_variable() {
        let problems =
            Config::parse("", env(&[("CHUNKGATE_FOO__BAR", "1"), ("CHUNKGATE_SERVER__LISTEN__X", "1")])).unwrap_err().0;
        for variable in ["CHUNKGATE_FOO__BAR", "CHUNKGATE_SERVER__LISTEN__X"] {
            assert!(problems.iter().any(|p| p.ends_with(&format!("(set by {variable})"))), "{variable}: {problems:?}");
        }
        // A key from the file is not blamed on the environment.
        let from_file = Config::parse("[server]\nlisten = 5\n", env(&[])).unwrap_err().0;
        assert!(from_file.iter().all(|p| !p.contains("set by")), "{from_file:?}");
    }

    #[test]
    fn every_key_of_the_wrong_type_is_listed_at_once() {
        let dir = std::env::temp_dir().join(format!("chunkgate-config-types-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-a-ca.pem");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let file = format!(
            "[server]\nlisten = 8080\ndrain_secs = \"30\"\nmax_connections = -1\n\
             [upstream]\nca_files = [{:?}, \"/nonexistent/ca.pem\"]\n\
             [upload]\nverify_upstream_checksum = \"yes\"\nbogus = 1\npart_size = \"x\"\nmax_part_bytes = 100000\n\
             [admin]\nlisten = \"127.0.0.1:8080\"\n[log]\nformat = \"xml\"\n",
            not_pem.display().to_string()
        );
        let problems = Config::parse(&file, env(&[("CHUNKGATE_RATE_LIMIT__HOURLY_LIMIT", "lots")])).unwrap_err().0;
        let _ = std::fs::remove_dir_all(&dir);
        for key in [
            "`server.listen`: ",
            "`server.drain_secs`: ",
            "`server.max_connections`: ",
            "`upload.verify_upstream_checksum`: ",
            "`log.format`: ",
            "`upload.part_size`: ",
            "`rate_limit.hourly_limit`: ",
            "unknown key `upload.bogus`",
            "upstream.ca_files: /nonexistent/ca.pem is not a readable file",
            "upstream.ca_files: CA file",
        ] {
            assert!(problems.iter().any(|p| p.starts_with(key)), "{key}: {problems:?}");
        }
        assert!(
            problems.iter().any(|p| p.starts_with("`rate_limit.hourly_limit`")
                && p.ends_with("(set by CHUNKGATE_RATE_LIMIT__HOURLY_LIMIT)")),
            "{problems:?}"
        );
        // Nothing about the defaults the wrong keys were left at (part_size's 8 MiB against the
        // 100000 written for max_part_bytes, listen's 127.0.0.1:8080 against admin.listen's).
        assert_eq!(problems.len(), 10, "{problems:?}");
        // A problem is left out only when it names a wrong key as a setting: not when it shares a
        // message with another key, names a longer account, or holds the word in a value.
        let file = "log = 5\n[server]\nallowed_accounts = [\"log\"]\ntls_cert = 5\ntls_key = \"/nonexistent/key.pem\"\n\
                    [retry]\nbudget_ratio = \"0.2\"\nbudget_floor_per_sec = 5000.0\n\
                    [sim.accounts]\nacme = 5\n[sim.accounts.acme-eu]\nmax_parts = 999\n";
        let problems = Config::parse(file, env(&[])).unwrap_err().0;
        for expected in [
            "`log`: ",
            "`server.tls_cert`: ",
            "`retry.budget_ratio`: ",
            "`sim.accounts.acme`: ",
            "server.allowed_accounts: \"log\" is neither",
            "retry.budget_floor_per_sec must be within",
            "sim.accounts.acme-eu.max_parts must be",
        ] {
            assert!(problems.iter().any(|p| p.starts_with(expected)), "{expected}: {problems:?}");
        }
        assert_eq!(problems.len(), 7, "no follow-on about the TLS pair: {problems:?}");
        let many: String = (0..150).map(|i| format!("[sim.accounts.\"{i}\"]\nmax_parts = \"x\"\n")).collect();
        let problems = Config::parse(&many, env(&[])).unwrap_err().0;
        assert_eq!(problems.len(), 101, "{:?}", &problems[95..]);
        assert!(problems[100].starts_with("more than 100 keys"), "{}", problems[100]);
    }

    #[test]
    fn times_and_counts_past_any_use_are_refused_by_name() {
        let problems = Config::parse(
            "",
            env(&[
                ("CHUNKGATE_RATE_LIMIT__MAX_WAIT_SECS", "9223372036854775807"),
                ("CHUNKGATE_QUOTA__WAIT_SECS", "9223372036854775807"),
                ("CHUNKGATE_SERVER__MAX_CONNECTIONS", "2305843009213693952"),
                ("CHUNKGATE_UPLOAD__MAX_UPLOADS", "9223372036854775807"),
                ("CHUNKGATE_RATE_LIMIT__HOURLY_LIMIT", "4000000000"),
                ("CHUNKGATE_CLUSTER__REPLICAS", "4000000000"),
            ]),
        )
        .unwrap_err();
        for name in [
            "rate_limit.max_wait_secs",
            "quota.wait_secs",
            "server.max_connections",
            "upload.max_uploads",
            "rate_limit.hourly_limit",
            "cluster.replicas",
        ] {
            assert!(
                problems.0.iter().any(|p| p.starts_with(name) && p.contains("must be at most")),
                "{name}: {:?}",
                problems.0
            );
        }
    }

    #[test]
    fn env_overrides_reach_nested_keys_and_keep_strings() {
        let c = Config::parse(
            "[sim]\ndialect = \"docusign\"\n",
            env(&[
                ("CHUNKGATE_SIM__LIMITS__MAX_PARTS", "64"),
                ("CHUNKGATE_SIM__LISTEN", "127.0.0.1:9999"),
                ("CHUNKGATE_SIM__DIALECT", "envelope"),
                ("CHUNKGATE_CONFIG", "ignored: no section separator"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sim.limits.max_parts, 64);
        assert_eq!(c.sim.listen.port(), 9999);
        assert_eq!(c.sim.dialect, Dialect::Wrapped);
    }

    #[test]
    fn a_base_url_path_and_parts_over_the_request_cap_are_warned_about() {
        assert_eq!(Config::default().warnings(), Vec::<String>::new());
        let c = Config::parse(
            "[upstream]\nbase_url = \"https://demo.docusign.net/restapi\"\n[upload]\nmax_part_bytes = 50000000\n",
            env(&[]),
        )
        .unwrap();
        let all = c.warnings().join("\n");
        assert!(all.contains("as /restapi/restapi/v2.1"), "{all}");
        assert!(all.contains("upload.max_part_bytes"), "{all}");
        let u = c.effective_upload();
        let body = |raw: usize| PART_BODY_OVERHEAD + raw.div_ceil(3) * 4;
        assert!(body(u.max_part_bytes) <= c.upstream.max_request_bytes);
        assert!(body(u.max_part_bytes + 3) > c.upstream.max_request_bytes);
    }

    #[test]
    fn a_base_url_is_an_origin_without_query_fragment_or_user() {
        for bad in ["https://h.example/?x=1", "https://h.example/#f", "https://user:pw@h.example"] {
            let text = format!("[upstream]\nbase_url = \"{bad}\"\n");
            let err = Config::parse(&text, env(&[])).unwrap_err();
            assert!(err.0.join("\n").contains("no query, fragment or user"), "{bad}: {err}");
        }
        assert!(Config::parse("[upstream]\nbase_url = \"https://h.example:8443\"\n", env(&[])).is_ok());
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = Config::parse(
            "[sim]\nbogus = 1\nthrottle_status = 418\n[sim.limits]\nmax_parts = 999\nnope = 2\n[extra]\n[upstream]\nbase_url = \"http://127.0.0.1:1\"\n[upload]\nmax_in_flight = 0\n",
            env(&[]),
        )
        .unwrap_err();
        let all = err.0.join("\n");
        for needle in ["sim.bogus", "sim.limits.nope", "extra", "throttle_status", "max_parts"] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }
}
