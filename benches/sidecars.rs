//! Many sidecars, one account: 1, 2, 4 and 8 gateways (release binaries) sharing one Redis, in
//! front of one simulator that allows the account 200 calls per 30 s and 3,000 per hour. The
//! baseline, in the same run: 4 sidecars that do not coordinate (each believes it has the whole
//! account), as a team running one sidecar per pod had before.
//!
//! Every configuration gets its own simulator (a fresh account) and its own key prefix, and they
//! all run at once. A client keeps 16 uploads of 192 KiB (three 64 KiB parts: create, two parts,
//! the checksum read and the commit, 5 calls) in flight, spread over the sidecars, until the
//! account's hour is spent (an answer RATE_LIMITED with Retry-After over a minute) or 15 minutes
//! pass. Printed, per configuration: calls throttled upstream (target 0), the share of the allowed
//! call rate used (target ≥ 90%), uploads committed against what the hour can carry (3,000 / 5 =
//! 600; target ≥ 95%), uploads left open, and the time each Redis operation took inside the
//! sidecars (p50 and p99, from `chunkgate_cluster_op_duration_seconds`; an upstream call makes
//! one). Written to bench/results/sidecars.json.
//!
//! `cargo bench --bench sidecars` (needs Debian's redis-server). Everything listens on loopback.
//! Start it in the first minutes of a clock hour: a run that crosses the top of the hour gets a
//! fresh budget half-way and is reported as such.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{test_support, *};

const HOURLY: u64 = 3000;
const BURST: u64 = 200;
const WINDOW_SECS: u64 = 30;
const PART: u64 = 64 * 1024;
const CALLS_PER_UPLOAD: u64 = 5;
const IN_FLIGHT: usize = 16;
const CAP: Duration = Duration::from_secs(15 * 60);

struct Setup {
    name: String,
    sidecars: usize,
    redis: bool,
}

#[derive(Default)]
struct Tally {
    committed: u64,
    refused_rate: u64,
    refused_busy: u64,
    other: u64,
}

fn sim() -> Proc {
    let env = [
        ("CHUNKGATE_SIM__LIMITS__HOURLY_LIMIT", HOURLY.to_string()),
        ("CHUNKGATE_SIM__LIMITS__BURST_LIMIT", BURST.to_string()),
        ("CHUNKGATE_SIM__LIMITS__BURST_WINDOW_SECS", WINDOW_SECS.to_string()),
        ("CHUNKGATE_SIM__LIMITS__QUOTA_UPLOADS", "100000".to_owned()),
        ("CHUNKGATE_SIM__LIMITS__QUOTA_BYTES", (1024 * 1024 * MIB).to_string()),
    ];
    Proc::start(&["sim", "--listen", "127.0.0.1:0", "--storage", "digest"], &env)
}

fn sidecar(setup: &Setup, upstream: &str, redis: &str) -> (Proc, String) {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = vec![
        ("CHUNKGATE_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("CHUNKGATE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}")),
        ("CHUNKGATE_UPSTREAM__BASE_URL", upstream.to_owned()),
        ("CHUNKGATE_UPSTREAM__ALLOW_PLAIN_HTTP", "true".to_owned()),
        ("CHUNKGATE_UPLOAD__PART_SIZE", PART.to_string()),
        ("CHUNKGATE_RATE_LIMIT__HOURLY_LIMIT", HOURLY.to_string()),
        ("CHUNKGATE_RATE_LIMIT__BURST_LIMIT", BURST.to_string()),
        ("CHUNKGATE_RATE_LIMIT__BURST_WINDOW_SECS", WINDOW_SECS.to_string()),
        ("CHUNKGATE_RATE_LIMIT__MAX_WAIT_SECS", "60".to_owned()),
        ("CHUNKGATE_QUOTA__UPLOADS_PER_MEMBER", "100000".to_owned()),
        ("CHUNKGATE_QUOTA__WAIT_SECS", "600".to_owned()),
    ];
    if setup.redis {
        env.push(("CHUNKGATE_CLUSTER__REDIS_URL", redis.to_owned()));
        env.push(("CHUNKGATE_CLUSTER__KEY_PREFIX", format!("bench-{}", setup.name)));
        env.push(("CHUNKGATE_CLUSTER__REPLICAS", setup.sidecars.to_string()));
    }
    (Proc::start(&["serve"], &env), format!("http://127.0.0.1:{admin_port}"))
}

/// One upload; what it ended as, and whether the account's hour is spent.
async fn upload(client: &HttpClient, gw: &str, block: &Bytes) -> (StatusCode, Option<u64>) {
    let size = 3 * PART;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{gw}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads"))
        .header(header::AUTHORIZATION, "Bearer bench")
        .header(header::CONTENT_TYPE, "application/pdf")
        .header(header::CONTENT_LENGTH, size)
        .body(Repeat { block: block.clone(), left: size }.boxed_unsync())
        .unwrap();
    let resp = client.request(req).await.expect("the gateway answers");
    let status = resp.status();
    let after = resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse().ok());
    let _ = resp.into_body().collect().await;
    (status, after)
}

async fn run(setup: Setup, redis: String) -> Value {
    let client = client();
    let s = sim();
    let sidecars: Vec<(Proc, String)> = (0..setup.sidecars).map(|_| sidecar(&setup, &s.url, &redis)).collect();
    let urls: Vec<String> = sidecars.iter().map(|(p, _)| p.url.clone()).collect();
    let block = Bytes::from(random(PART as usize));
    let hour = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600;
    let (began_at, started) = (std::time::SystemTime::now(), Instant::now());
    let spent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            let (client, gw, block, spent) =
                (client.clone(), urls[w % urls.len()].clone(), block.clone(), spent.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut last_commit = Duration::ZERO;
                while !spent.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < CAP {
                    match upload(&client, &gw, &block).await {
                        (StatusCode::OK, _) => {
                            tally.committed += 1;
                            last_commit = started.elapsed();
                        }
                        (StatusCode::TOO_MANY_REQUESTS, after) => {
                            tally.refused_rate += 1;
                            if after.unwrap_or(0) > 60 {
                                spent.store(true, std::sync::atomic::Ordering::Relaxed);
                            } else {
                                tokio::time::sleep(Duration::from_secs(after.unwrap_or(1))).await;
                            }
                        }
                        (StatusCode::SERVICE_UNAVAILABLE, _) => {
                            tally.refused_busy += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => {
                            tally.other += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                (tally, last_commit)
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut busy_for = Duration::ZERO;
    for w in workers {
        let (t, last) = w.await.unwrap();
        total.committed += t.committed;
        total.refused_rate += t.refused_rate;
        total.refused_busy += t.refused_busy;
        total.other += t.other;
        busy_for = busy_for.max(last);
    }
    let crossed_hour = hour(began_at) != hour(std::time::SystemTime::now());
    // Cleanup (deferred deletes) runs after the answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats: Value = serde_json::from_str(&get_text(&client, &format!("{}/__sim/stats", s.url)).await).unwrap();
    let mut pages = Vec::new();
    for (_, admin) in &sidecars {
        pages.push(get_text(&client, &format!("{admin}/metrics")).await);
    }
    let calls = stats["requests"].as_f64().unwrap_or(0.0);
    let secs = busy_for.as_secs_f64();
    // The calls made over the calls the limits allow in the time taken: the burst limit's (one
    // window at least), never more than the hour's.
    let allowed = (BURST as f64 * secs.max(WINDOW_SECS as f64) / WINDOW_SECS as f64).min(HOURLY as f64);
    let share = calls / allowed;
    let carry = HOURLY / CALLS_PER_UPLOAD;
    let p50 = quantile(&pages, "chunkgate_cluster_op_duration_seconds", 0.50).map(|s| s * 1000.0);
    let p99 = quantile(&pages, "chunkgate_cluster_op_duration_seconds", 0.99).map(|s| s * 1000.0);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3} ms"));
    println!(
        "{:<16} {:>2} sidecars: {:>5.0} calls in {:>5.1} s, {:>4} throttled, {:>3.0}% of the allowed rate, {:>3} committed of {carry} ({:>3.0}%), {} refused, {} open, Redis p50 {} p99 {}{}",
        setup.name,
        setup.sidecars,
        calls,
        secs,
        stats["throttled"],
        share * 100.0,
        total.committed,
        total.committed as f64 / carry as f64 * 100.0,
        total.refused_rate + total.refused_busy + total.other,
        stats["open"],
        ms(p50),
        ms(p99),
        if crossed_hour { "  (crossed the top of the hour: not comparable)" } else { "" },
    );
    json!({
        "sidecars": setup.sidecars,
        "redis": setup.redis,
        "calls": calls,
        "secs": secs,
        "throttled": stats["throttled"],
        "open": stats["open"],
        "share_of_allowed": share,
        "committed": total.committed,
        "can_carry": carry,
        "refused_rate_limited": total.refused_rate,
        "refused_busy": total.refused_busy,
        "other_answers": total.other,
        "redis_op_ms": {"p50": p50, "p99": p99},
        "crossed_hour": crossed_hour,
    })
}

#[tokio::main]
async fn main() {
    let redis = test_support::RedisServer::start().await;
    let mut setups: Vec<Setup> =
        [1, 2, 4, 8].into_iter().map(|n| Setup { name: format!("redis-{n}"), sidecars: n, redis: true }).collect();
    setups.push(Setup { name: "uncoordinated-4".into(), sidecars: 4, redis: false });
    println!(
        "{} configurations at once, each against its own account: {BURST} calls per {WINDOW_SECS} s, {HOURLY} per hour",
        setups.len()
    );
    let runs: Vec<_> = setups.into_iter().map(|s| tokio::spawn(run(s, redis.url()))).collect();
    let mut results = serde_json::Map::new();
    for r in runs {
        let v = r.await.unwrap();
        let key = format!("{}-{}", if v["redis"] == true { "redis" } else { "uncoordinated" }, v["sidecars"]);
        results.insert(key, v);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/sidecars.json"), serde_json::to_string_pretty(&Value::Object(results)).unwrap())
        .unwrap();
}
