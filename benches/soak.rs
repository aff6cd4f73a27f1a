//! Soak: hundreds of uploads of random sizes through the gateway while the simulator injects every
//! kind of fault. Each upload must end either committed byte-exact or with a clear error and its
//! upstream upload deleted; at the end the simulator must count no orphan and no duplicate part.
//!
//! `cargo bench --bench soak [-- --uploads 300 --concurrency 16 --seed 1]`
//!
//! Simulator and gateway run in this process on loopback. Results are printed and written to
//! `bench/results/soak.md`; the process exits non-zero if any check fails.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use bytes::Bytes;
use chunkgate::{
    body::Body,
    config::Config,
    edge::gateway,
    sim::{self, SimConfig},
    telemetry,
};
use http::{Method, Request, header};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

const ACCOUNT: &str = "1234567";
const PART: usize = 256 * 1024;

/// Codes a failed upload may end with under these faults; anything else is a finding.
const CLEAR_ERRORS: &[&str] =
    &["DIGEST_MISMATCH", "UPSTREAM_CHECKSUM_MISMATCH", "UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT", "RATE_LIMITED"];

struct Outcome {
    status: u16,
    code: String,
    upload_id: String,
    sha256: String,
    expect_commit: bool,
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let uploads = arg(&args, "--uploads", 300) as usize;
    let concurrency = arg(&args, "--concurrency", 16) as usize;
    let seed = arg(&args, "--seed", 1);
    // RUST_LOG=chunkgate=info shows what the gateway does.
    telemetry::init(&chunkgate::config::LogConfig { filter: "off".into(), ..Default::default() });

    let mut sim_config = SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..SimConfig::default() };
    sim_config.storage = sim::config::Storage::Digest;
    sim_config.limits.quota_uploads = 10_000;
    sim_config.limits.quota_bytes = u64::MAX / 2;
    sim_config.limits.burst_limit = 400;
    sim_config.limits.burst_window_secs = 2;
    sim_config.limits.hourly_limit = 1_000_000;
    // Every fault at once. Stored-then-dropped answers hit parts, commits and deletes, not creates:
    // a create whose answer is lost leaves an upload whose id nobody saw, which no client can
    // delete (see the README's known limits), and this soak counts orphans.
    sim_config.faults = serde_json::from_value(json!({
        "latency_ms": 2, "jitter_ms": 8,
        "error_rate": 0.04, "error_status": 503,
        "throttle_rate": 0.02,
        "drop_after_store_rate": 0.04,
        "corrupt_next": 3,
        "ops": ["add_part", "get", "commit", "delete"],
        "seed": seed,
    }))
    .unwrap();
    let sim = sim::spawn(sim_config).await.unwrap();

    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = sim.url();
    config.upstream.allow_plain_http = true;
    config.upload.part_size = PART;
    config.upload.max_in_flight = 4;
    config.rate_limit.burst_limit = 400;
    config.rate_limit.burst_window_secs = 2;
    config.rate_limit.hourly_limit = 1_000_000;
    config.quota.uploads_per_member = concurrency as u32;
    config.retry.base_backoff_ms = 10;
    config.retry.max_backoff_ms = 200;
    let gw = gateway::spawn(config).await.unwrap();
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();

    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tasks = Vec::new();
    let mut total_bytes = 0u64;
    for i in 0..uploads {
        // Mostly small documents, some several parts long, a few exactly on part boundaries.
        let len = match rng.u8(0..10) {
            0 => PART * rng.usize(1..5),
            1..=6 => rng.usize(1..PART * 2),
            _ => rng.usize(PART * 2..PART * 12),
        };
        total_bytes += len as u64;
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        let data = Bytes::from(data);
        // Every 40th client sends a wrong Content-Digest: it must never be committed.
        let bad_digest = i % 40 == 39;
        let (client, url, slots) = (client.clone(), gw.url(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let sha = Sha256::digest(&data);
            let digest_of = if bad_digest { Sha256::digest(b"other").to_vec() } else { sha.to_vec() };
            let digest = format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(digest_of));
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("{url}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads"))
                .header(header::AUTHORIZATION, "Bearer soak")
                .header(header::CONTENT_TYPE, "application/pdf")
                .header("content-digest", digest)
                .body(chunkgate::body::full(data))
                .unwrap();
            let resp = client.request(req).await.expect("the gateway answers");
            let status = resp.status().as_u16();
            let upload_id =
                resp.headers().get("x-chunkgate-upload-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errorCode"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Outcome {
                status,
                code,
                upload_id,
                sha256: chunkgate::upstream::resource::hex(&sha),
                expect_commit: !bad_digest,
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    // Deletes deferred after rate limiting finish on their own; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut problems = Vec::new();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut committed = 0;
    for o in &outcomes {
        let seen = sim.sim.store().inspect(&o.upload_id, 0);
        if o.status == 200 {
            committed += 1;
            match &seen {
                Some(i) if i.state == sim::store::State::Committed && i.sha256 == o.sha256 => {}
                other => problems.push(format!("{} answered 200 but the simulator holds {other:?}", o.upload_id)),
            }
            if !o.expect_commit {
                problems.push(format!("{} was committed despite a wrong Content-Digest", o.upload_id));
            }
        } else {
            *by_code.entry(format!("{} {}", o.status, o.code)).or_default() += 1;
            if !CLEAR_ERRORS.contains(&o.code.as_str()) {
                problems.push(format!("upload ended with {} {:?}, not a clear error", o.status, o.code));
            }
            if let Some(i) = &seen {
                if i.state != sim::store::State::Deleted {
                    problems.push(format!("failed upload {} left {:?} upstream", o.upload_id, i.state));
                }
            }
        }
    }
    let stats = sim.sim.stats_json();
    if stats["open"] != 0 {
        problems.push(format!("{} uploads left open upstream", stats["open"]));
    }
    if stats["duplicate_parts"] != 0 {
        problems.push(format!("{} parts were sent twice", stats["duplicate_parts"]));
    }
    let (retries, reconciliations, throttle_waits) = telemetry::resilience_counts();
    let mib = total_bytes as f64 / (1024.0 * 1024.0);
    let mut report = String::new();
    report.push_str(&format!(
        "{uploads} uploads ({mib:.0} MiB, {concurrency} at once) in {:.1} s: {committed} committed byte-exact, {} failed with a clear error\n",
        elapsed.as_secs_f64(),
        uploads - committed
    ));
    for (code, n) in &by_code {
        report.push_str(&format!("  {n} x {code}\n"));
    }
    report.push_str(&format!(
        "simulator: {} requests, {} injected 5xx, {} throttled, {} stored-then-dropped; {} open, {} duplicate parts\n",
        stats["requests"],
        stats["injected_errors"],
        stats["throttled"],
        stats["dropped"],
        stats["open"],
        stats["duplicate_parts"]
    ));
    report.push_str(&format!(
        "gateway: {retries} retries, {reconciliations} reconciliations, {throttle_waits} rate-limit waits\n"
    ));
    print!("{report}");
    let verdict = if problems.is_empty() { "PASS".to_owned() } else { format!("FAIL\n- {}", problems.join("\n- ")) };
    println!("{verdict}");
    let md = format!(
        "# Soak\n\n`cargo bench --bench soak -- --uploads {uploads} --concurrency {concurrency} --seed {seed}`: faults 4% 5xx, 2% throttled, 4% stored-then-dropped (parts, commits, deletes), 3 corrupted parts, 2-10 ms latency; every 40th client sends a wrong Content-Digest.\n\n```\n{report}{verdict}\n```\n"
    );
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results")).unwrap();
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results/soak.md"), md).unwrap();
    if !problems.is_empty() {
        std::process::exit(1);
    }
}
