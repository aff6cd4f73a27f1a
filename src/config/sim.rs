//! The simulator's settings: the `[sim]` section of the config file and `chunkgate sim` flags, and
//! the faults it injects (`[sim.faults]`, also set at run time under `/__sim/faults`).

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::dialect::Dialect;

/// Where uploaded bytes go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Keep every part's bytes (they can be read back under `/__sim/`).
    #[default]
    Full,
    /// Keep only sizes and a running SHA-256, so multi-gigabyte runs need no memory.
    Digest,
}

/// How booleans are spelled in answers: DocuSign has sent both `"false"` and `"False"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BoolStyle {
    #[default]
    Lower,
    Title,
}

/// Limits that can differ per account; the upstream announces the first two in every answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Limits {
    /// `maxChunkedUploadParts`: parts 0..max_parts-1 are accepted (DocuSign: 128, at most 256).
    pub max_parts: u32,
    /// `maxTotalSize`: decoded bytes in one upload.
    pub max_total_size: u64,
    /// Decoded bytes in one create or add-part request.
    pub max_request_data: u64,
    /// Seconds an upload lives after create.
    pub lifetime_secs: u64,
    /// Unexpired, unused uploads one member (token) may hold.
    pub quota_uploads: u32,
    /// Bytes in those uploads.
    pub quota_bytes: u64,
    /// API calls per account per clock hour.
    pub hourly_limit: u32,
    /// API calls per account per burst window.
    pub burst_limit: u32,
    /// Length of the burst window in seconds.
    pub burst_window_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_parts: 128,
            max_total_size: 50 * 1024 * 1024,
            max_request_data: 50 * 1024 * 1024,
            lifetime_secs: 20 * 60,
            quota_uploads: 64,
            quota_bytes: 1_000_000_000,
            hourly_limit: 3000,
            burst_limit: 500,
            burst_window_secs: 30,
        }
    }
}

/// Per-account overrides of [`Limits`]; unset fields keep the simulator-wide value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct LimitOverrides {
    pub max_parts: Option<u32>,
    pub max_total_size: Option<u64>,
    pub max_request_data: Option<u64>,
    pub lifetime_secs: Option<u64>,
    pub quota_uploads: Option<u32>,
    pub quota_bytes: Option<u64>,
    pub hourly_limit: Option<u32>,
    pub burst_limit: Option<u32>,
    pub burst_window_secs: Option<u64>,
}

/// Everything `chunkgate sim` can be told.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free one (printed at start).
    pub listen: SocketAddr,
    /// The path the API is served under (DocuSign: `/restapi`); anything else is not found.
    pub path_prefix: String,
    /// Largest request body the front end takes (DocuSign documents 25 to 32 MB); larger ones
    /// are answered 413 with an HTML page.
    pub max_request_bytes: u64,
    pub dialect: Dialect,
    pub storage: Storage,
    pub bool_style: BoolStyle,
    /// Status of throttling answers: 429 (DocuSign since 2026) or 400 (before).
    pub throttle_status: u16,
    /// Answer a commit that carries no length with 411 and an HTML page, like DocuSign's front end.
    pub require_commit_length: bool,
    /// Accepted bearer tokens; empty accepts any non-empty token. Each token is its own member.
    pub tokens: Vec<String>,
    /// Limits for every account (`[sim.limits]`).
    pub limits: Limits,
    /// Overrides keyed by account id.
    pub accounts: BTreeMap<String, LimitOverrides>,
    /// Faults in force at start; `/__sim/faults` changes them at run time.
    pub faults: Faults,
    /// Serve TLS with this certificate chain and key (PEM), to test a client's verification.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            path_prefix: "/restapi".to_owned(),
            max_request_bytes: 32 * 1024 * 1024,
            dialect: Dialect::Docusign,
            storage: Storage::Full,
            bool_style: BoolStyle::Lower,
            throttle_status: 429,
            require_commit_length: true,
            tokens: Vec::new(),
            limits: Limits::default(),
            accounts: BTreeMap::new(),
            faults: Faults::default(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl SimConfig {
    /// The limits in force for `account`.
    pub fn limits_for(&self, account: &str) -> Limits {
        let mut l = self.limits.clone();
        if let Some(o) = self.accounts.get(account) {
            l.max_parts = o.max_parts.unwrap_or(l.max_parts);
            l.max_total_size = o.max_total_size.unwrap_or(l.max_total_size);
            l.max_request_data = o.max_request_data.unwrap_or(l.max_request_data);
            l.lifetime_secs = o.lifetime_secs.unwrap_or(l.lifetime_secs);
            l.quota_uploads = o.quota_uploads.unwrap_or(l.quota_uploads);
            l.quota_bytes = o.quota_bytes.unwrap_or(l.quota_bytes);
            l.hourly_limit = o.hourly_limit.unwrap_or(l.hourly_limit);
            l.burst_limit = o.burst_limit.unwrap_or(l.burst_limit);
            l.burst_window_secs = o.burst_window_secs.unwrap_or(l.burst_window_secs);
        }
        l
    }

    /// Every problem with these settings, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let p = &self.path_prefix;
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/') || p.contains("//")) {
            out.push(format!("sim.path_prefix must be empty or start with / and not end with /, not {p:?}"));
        }
        if self.max_request_bytes < 1024 {
            out.push(format!("sim.max_request_bytes must be at least 1024, not {}", self.max_request_bytes));
        }
        if !matches!(self.throttle_status, 400 | 429) {
            out.push(format!("sim.throttle_status must be 400 or 429, not {}", self.throttle_status));
        }
        let mut check = |name: &str, l: &Limits| {
            if l.max_parts == 0 || l.max_parts > 256 {
                out.push(format!("{name}max_parts must be 1..=256, not {}", l.max_parts));
            }
            for (field, v) in [
                ("max_total_size", l.max_total_size),
                ("max_request_data", l.max_request_data),
                ("lifetime_secs", l.lifetime_secs),
                ("quota_bytes", l.quota_bytes),
                ("burst_window_secs", l.burst_window_secs),
            ] {
                if v == 0 {
                    out.push(format!("{name}{field} must be above 0"));
                }
            }
            for (field, v) in
                [("quota_uploads", l.quota_uploads), ("hourly_limit", l.hourly_limit), ("burst_limit", l.burst_limit)]
            {
                if v == 0 {
                    out.push(format!("{name}{field} must be above 0"));
                }
            }
        };
        check("sim.limits.", &self.limits);
        for account in self.accounts.keys() {
            check(&format!("sim.accounts.{account}."), &self.limits_for(account));
        }
        out.extend(self.faults.problems());
        out
    }
}

/// The operations of the upstream API the simulator serves: the five chunked-upload routes and
/// envelope creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    AddPart,
    Get,
    Commit,
    Delete,
    Envelope,
}

/// Fault settings. Rates are shares of matching requests (0.0..=1.0); `*_next` counters hit the
/// next N matching requests for certain, which is what tests use.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every API answer.
    pub latency_ms: u64,
    /// Uniform extra delay in 0..=jitter_ms.
    pub jitter_ms: u64,
    pub error_rate: f64,
    pub error_next: u32,
    /// Status of injected errors.
    pub error_status: u16,
    pub throttle_rate: f64,
    pub throttle_next: u32,
    /// Apply the request (create, add-part, commit, delete), then close the connection unanswered.
    pub drop_after_store_rate: f64,
    pub drop_after_store_next: u32,
    /// Store the next N create or add-part payloads with their first byte flipped (sizes stay
    /// right, the checksum does not): an upstream that corrupted what it received.
    pub corrupt_next: u32,
    /// Answer injected throttling (429) and server errors with an HTML page and no error code, as
    /// DocuSign's front end sometimes does.
    pub html_errors: bool,
    /// Answer `?include=checksum` without a checksum, as an upstream that does not report one.
    pub omit_checksum: bool,
    /// Operations the faults apply to; empty means all.
    pub ops: Vec<Op>,
    /// Seed for the fault dice, for repeatable runs.
    pub seed: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            jitter_ms: 0,
            error_rate: 0.0,
            error_next: 0,
            error_status: 503,
            throttle_rate: 0.0,
            throttle_next: 0,
            drop_after_store_rate: 0.0,
            drop_after_store_next: 0,
            corrupt_next: 0,
            html_errors: false,
            omit_checksum: false,
            ops: Vec::new(),
            seed: None,
        }
    }
}

impl Faults {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("drop_after_store_rate", self.drop_after_store_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                out.push(format!("sim.faults.{name} must be within 0.0..=1.0, not {rate}"));
            }
        }
        if !(500..=599).contains(&self.error_status) {
            out.push(format!("sim.faults.error_status must be a 5xx status, not {}", self.error_status));
        }
        out
    }
}
