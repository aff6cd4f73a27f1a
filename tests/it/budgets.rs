//! One account, many sidecars: plan admission against the hourly budget, the member's quota
//! ledger, and both shared through a real `redis-server` (started here on 127.0.0.1 at a free
//! port). Several gateways stand in front of one simulator.

use std::time::Duration;

use bytes::Bytes;
use chunkgate::{config::Config, edge::gateway, sim::SimConfig};
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::*;

const MIB: usize = 1024 * 1024;
const OTHER_TOKEN: &str = "another-members-token";

/// The account's limit in the scenario: 150 calls per hour.
fn scenario_sim() -> SimConfig {
    let mut sim = SimConfig::default();
    sim.limits.hourly_limit = 150;
    sim
}

/// A gateway of the scenario: 1 MiB parts (a 3 MiB upload is create, two parts, the checksum read
/// and the commit: 5 calls, and a plan of 6 with the delete held back), a short wait for budget.
fn scenario_gateway(sim: &SimApi, redis: Option<&RedisServer>, replicas: u32) -> Config {
    let mut c = gateway_config(sim, sim.running.url());
    c.upload.part_size = MIB;
    c.upload.memory_budget_bytes = 128 * MIB;
    // Long enough for the admitted uploads to finish under the burst pacing and give their
    // held-back deletes back, on a loaded machine too (the whole suite runs beside this test); a
    // plan the hour can no longer hold is refused at once, not after it.
    c.rate_limit.max_wait_secs = 120;
    // All 40 uploads may run in one sidecar; the bounds on uploads at once are not under test.
    c.server.max_uploads_per_caller = 64;
    c.upload.max_uploads = 64;
    c.cluster.replicas = replicas;
    if let Some(redis) = redis {
        c.cluster.redis_url = redis.url();
        // Generous: the gateways, the simulator and the clients share the test's one thread, so an
        // operation's time here is mostly waiting for that thread, not Redis.
        c.cluster.op_timeout_ms = 5000;
    }
    c
}

/// These tests count an account's calls in one clock hour, as the upstream does: one that ran
/// across the top of the hour would see both counts reset half-way. Within two minutes of it,
/// wait for the new hour.
async fn clear_of_the_hour() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let left = 3600 - now % 3600;
    if left < 120 {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

async fn start(configs: Vec<Config>) -> Vec<gateway::GatewayHandle> {
    clear_of_the_hour().await;
    let mut out = Vec::new();
    for c in configs {
        assert_eq!(c.problems(), Vec::<String>::new());
        out.push(gateway::spawn(c).await.unwrap());
    }
    out
}

async fn upload_via(http: &Http, gateway: &str, data: Bytes, token: &str) -> Resp {
    let url = format!("{gateway}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/pdf")];
    http.send(Method::POST, &url, &headers, data).await.unwrap()
}

/// 40 uploads of 3 MiB at once, spread over the gateways; every one must commit or be refused
/// with RATE_LIMITED before anything is created for it. Returns how many committed.
async fn hourly_scenario(sim: &SimApi, gateways: &[gateway::GatewayHandle]) -> u64 {
    let data = Bytes::from(bytes_of(3 * MIB, 14));
    let tasks = (0..40).map(|i| {
        let (http, url, data) = (sim.http.clone(), gateways[i % gateways.len()].url(), data.clone());
        tokio::spawn(async move { upload_via(&http, &url, data, TOKEN).await })
    });
    let answers = all(tasks).await;
    let mut committed = 0;
    for r in &answers {
        match r.status {
            StatusCode::OK => committed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(code(r), "RATE_LIMITED");
                let after: u64 = r.header("retry-after").parse().unwrap();
                assert!((1..=3600).contains(&after), "Retry-After {after}: the seconds to the next hour");
            }
            other => panic!("neither committed nor refused for budget: {other} {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let st = sim.stats().await;
    assert_eq!(st["throttled"], 0, "the upstream throttled a call: {st}");
    assert_eq!(st["open"], 0, "an upload was left open upstream: {st}");
    assert_eq!(st["created"], st["committed"], "an upload was created and not committed: {st}");
    assert_eq!(st["committed"], committed);
    committed
}

#[tokio::test]
async fn four_sidecars_sharing_redis_keep_to_the_accounts_hourly_budget_and_leave_nothing_open() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(scenario_sim()).await;
    let gateways = start((0..4).map(|_| scenario_gateway(&sim, Some(&redis), 4)).collect()).await;
    let committed = hourly_scenario(&sim, &gateways).await;
    assert!(committed >= 28, "only {committed} of the 30 the budget can carry committed");
    // The hourly count lives in Redis, under the prefix, with an expiry.
    let keys = redis.keys("chunkgate").await;
    let hour = format!("chunkgate:a:{ACCOUNT}:hour");
    assert!(keys.contains(&hour), "{keys:?}");
    let mut conn = redis.connection().await;
    let used: u64 = redis::cmd("HGET").arg(&hour).arg("used").query_async(&mut conn).await.unwrap();
    assert_eq!(used, sim.stats().await["requests"].as_u64().unwrap(), "every upstream call counted once, shared");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{key} has no expiry");
    }
}

#[tokio::test]
async fn one_sidecar_without_redis_admits_by_plan_and_leaves_nothing_open() {
    let sim = SimApi::start(scenario_sim()).await;
    let gateways = start(vec![scenario_gateway(&sim, None, 1)]).await;
    let committed = hourly_scenario(&sim, &gateways).await;
    assert!(committed >= 28, "only {committed} of the 30 the budget can carry committed");
}

#[tokio::test]
async fn without_redis_each_of_several_sidecars_keeps_to_its_share() {
    // Two sidecars, no Redis: each takes half of the 150 calls, so neither can throttle the account.
    let sim = SimApi::start(scenario_sim()).await;
    let gateways = start((0..2).map(|_| scenario_gateway(&sim, None, 2)).collect()).await;
    let committed = hourly_scenario(&sim, &gateways).await;
    // 75 calls each: 12 plans of 6 at once, then two more as the first give their deletes back.
    assert!((20..=28).contains(&committed), "{committed}");
}

/// The admin endpoint's metrics.
async fn metrics(http: &Http, admin: &str) -> String {
    let r = http.send(Method::GET, &format!("http://{admin}/metrics"), &[], "").await.unwrap();
    String::from_utf8_lossy(&r.body).into_owned()
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn when_redis_dies_mid_run_sidecars_fall_back_to_their_share_and_share_again_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let sim = SimApi::start(scenario_sim()).await;
    clear_of_the_hour().await;
    // Real binaries: the fallback gauge is process-wide, and other tests' gateways share this
    // process.
    let url = redis.url();
    let part = MIB.to_string();
    let env = [
        ("CHUNKGATE_CLUSTER__REDIS_URL", url.as_str()),
        ("CHUNKGATE_CLUSTER__REPLICAS", "2"),
        ("CHUNKGATE_CLUSTER__OP_TIMEOUT_MS", "500"),
        ("CHUNKGATE_RATE_LIMIT__HOURLY_LIMIT", "150"),
        ("CHUNKGATE_RATE_LIMIT__MAX_WAIT_SECS", "30"),
        ("CHUNKGATE_UPLOAD__PART_SIZE", part.as_str()),
    ];
    let gateways = [Binary::serve(&sim, &env, false), Binary::serve(&sim, &env, false)];
    let admins: Vec<String> =
        gateways.iter().map(|g| g.admin.clone().unwrap().trim_start_matches("http://").to_owned()).collect();
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let http = sim.http.clone();
    let run = |n: usize, seed: u64| {
        let data = Bytes::from(bytes_of(3 * MIB, seed));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (http, url, data) = (http.clone(), urls[i % 2].clone(), data.clone());
                tokio::spawn(async move { upload_via(&http, &url, data, TOKEN).await })
            })
            .collect();
        async move {
            for r in all(tasks).await {
                assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
            }
        }
    };
    run(4, 1).await;
    for admin in &admins {
        assert_eq!(gauge(&metrics(&http, admin).await, "chunkgate_cluster_fallback"), Some(0.0));
    }
    // Slow parts, so that uploads are running when Redis dies.
    sim.faults(json!({"latency_ms": 150, "ops": ["add_part"]})).await;
    let running = run(4, 2);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.kill();
    };
    tokio::join!(running, killer);
    // Both fell back, stayed ready, and go on uploading within their share.
    run(4, 3).await;
    for admin in &admins {
        assert_eq!(gauge(&metrics(&http, admin).await, "chunkgate_cluster_fallback"), Some(1.0));
        let ready = http.send(Method::GET, &format!("http://{admin}/readyz"), &[], "").await.unwrap();
        assert_eq!(ready.status, StatusCode::OK);
    }
    // Redis returns (empty): both go back to it within a few probes.
    redis.restart().await;
    for admin in &admins {
        let mut back = false;
        for _ in 0..50 {
            if gauge(&metrics(&http, admin).await, "chunkgate_cluster_fallback") == Some(0.0) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "still in fallback after Redis returned");
    }
    sim.faults(json!({})).await;
    run(2, 4).await;
    let hour = format!("chunkgate:a:{ACCOUNT}:hour");
    assert!(redis.keys("chunkgate").await.contains(&hour), "counts are shared again");
    let st = sim.stats().await;
    assert_eq!((st["open"].as_u64(), st["throttled"].as_u64()), (Some(0), Some(0)), "{st}");
    assert_eq!(st["created"], st["committed"], "{st}");
}

/// A raw request whose body stops after `sent` of `declared` bytes: admitted, nothing created yet.
async fn dripping_upload(addr: &str, declared: usize, sent: usize) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nContent-Length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&bytes_of(sent, 9)).await.unwrap();
    tcp
}

#[tokio::test]
async fn what_a_sidecar_killed_with_sigkill_held_comes_back_to_the_others_within_the_ttl() {
    let redis = RedisServer::start().await;
    let mut sim_config = SimConfig::default();
    sim_config.limits.hourly_limit = 10;
    let sim = SimApi::start(sim_config).await;
    let url = redis.url();
    let env = [
        ("CHUNKGATE_CLUSTER__REDIS_URL", url.as_str()),
        ("CHUNKGATE_CLUSTER__LEASE_TTL_SECS", "5"),
        ("CHUNKGATE_CLUSTER__OP_TIMEOUT_MS", "2000"),
        ("CHUNKGATE_RATE_LIMIT__HOURLY_LIMIT", "10"),
        ("CHUNKGATE_QUOTA__UPLOADS_PER_MEMBER", "1"),
    ];
    clear_of_the_hour().await;
    let mut doomed = Binary::serve(&sim, &env, false);
    // Three parts: a plan of 6 calls (create, two parts, checksum, commit, delete), and the
    // member's one upload, held while the body drips.
    let addr = doomed.url.trim_start_matches("http://").to_owned();
    let _dripping = dripping_upload(&addr, PART * 3, 100).await;
    let mut admitted = false;
    for _ in 0..100 {
        if redis.keys("chunkgate").await.iter().any(|k| k.starts_with("chunkgate:m:")) {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the doomed sidecar never took its lease");
    let mut c = gateway_config(&sim, sim.running.url());
    c.rate_limit.hourly_limit = 10;
    c.rate_limit.max_wait_secs = 1;
    c.quota.uploads_per_member = 1;
    c.quota.wait_secs = 1;
    c.cluster.redis_url = redis.url();
    c.cluster.lease_ttl_secs = 5;
    c.cluster.op_timeout_ms = 2000;
    let survivor = start(vec![c.clone()]).await.remove(0);
    let data = Bytes::from(bytes_of(PART * 3, 3));
    // Held elsewhere: the member's quota is taken, and 6 of the account's 10 calls.
    let busy = upload_via(&sim.http, &survivor.url(), data.clone(), TOKEN).await;
    assert_eq!(code(&busy), "GATEWAY_BUSY");
    let other = upload_via(&sim.http, &survivor.url(), data.clone(), OTHER_TOKEN).await;
    assert_eq!(code(&other), "RATE_LIMITED", "6 + 6 calls do not fit in 10");
    assert_eq!(sim.stats().await["created"], 0);
    // Killed without a chance to give anything back.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    c.rate_limit.max_wait_secs = 20;
    c.quota.wait_secs = 20;
    let patient = start(vec![c]).await.remove(0);
    let r = upload_via(&sim.http, &patient.url(), data.clone(), TOKEN).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let st = sim.stats().await;
    assert_eq!(
        (st["created"].as_u64(), st["committed"].as_u64(), st["throttled"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
}

/// Two sidecars sharing `redis`, holding a member to `uploads_per_member` (a create waits up to
/// 30 s for room), with `tweak` on top.
async fn two_sharing_a_ledger(
    sim: &SimApi,
    redis: &RedisServer,
    uploads_per_member: u32,
    tweak: impl Fn(&mut Config),
) -> Vec<gateway::GatewayHandle> {
    let configs = (0..2)
        .map(|_| {
            let mut c = gateway_config(sim, sim.running.url());
            c.quota.uploads_per_member = uploads_per_member;
            c.quota.wait_secs = 30;
            c.cluster.redis_url = redis.url();
            // Generous: see `scenario_gateway`.
            c.cluster.op_timeout_ms = 2000;
            c.cluster.replicas = 2;
            tweak(&mut c);
            c
        })
        .collect();
    start(configs).await
}

/// Three uploads of two parts committed through `gateway`: their ids.
async fn three_committed(sim: &SimApi, gateway: &gateway::GatewayHandle) -> Vec<String> {
    let mut ids = Vec::new();
    for seed in 0..3 {
        let r = upload_via(&sim.http, &gateway.url(), Bytes::from(bytes_of(PART * 2, seed)), TOKEN).await;
        assert_eq!(r.status, StatusCode::OK);
        ids.push(r.header("x-chunkgate-upload-id").to_owned());
    }
    ids
}

#[tokio::test]
async fn the_ledger_counts_committed_uploads_until_an_envelope_uses_one_across_sidecars() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    let gateways = two_sharing_a_ledger(&sim, &redis, 3, |_| {}).await;
    let ids = three_committed(&sim, &gateways[0]).await;
    // The fourth, on the other sidecar, waits for room without creating anything.
    let fourth = {
        let (http, url) = (sim.http.clone(), gateways[1].url());
        tokio::spawn(async move { upload_via(&http, &url, Bytes::from(bytes_of(PART * 2, 4)), TOKEN).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!fourth.is_finished());
    assert_eq!(sim.stats().await["created"], 3, "the fourth created nothing while it waited");
    let m = metrics(&sim.http, &gateways[1].admin_addr.to_string()).await;
    assert!(m.lines().any(|l| l.starts_with("chunkgate_quota_uploads_held{") && l.ends_with(" 3")), "{m}");
    // An envelope through the first sidecar uses one; the fourth then commits.
    let envelope = envelope_via(&sim.http, &gateways[0].url(), &[ids[1].as_str()]).await;
    assert_eq!(envelope.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&envelope.body));
    assert!(envelope.json()["envelopeId"].is_string());
    let r = tokio::time::timeout(Duration::from_secs(20), fourth).await.expect("the fourth still waits").unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let st = sim.stats().await;
    assert_eq!((st["created"].as_u64(), st["committed"].as_u64(), st["used"].as_u64()), (Some(4), Some(4), Some(1)));
    assert_eq!(sim.inspect(&ids[1]).await["state"], "consumed");
}

/// The entries (leases and unused uploads) of the one member's ledger in Redis; 0 when none.
async fn ledger_entries(redis: &RedisServer) -> usize {
    let keys: Vec<String> = redis.keys("chunkgate:m").await.into_iter().filter(|k| k.ends_with(":e")).collect();
    assert!(keys.len() <= 1, "{keys:?}");
    let Some(key) = keys.first() else { return 0 };
    let mut conn = redis.connection().await;
    redis::cmd("HLEN").arg(key).query_async::<usize>(&mut conn).await.unwrap()
}

/// Waits up to 10 s for the member's three uploads and one lease to be in Redis's ledger again.
async fn written_back(redis: &RedisServer) -> bool {
    for _ in 0..100 {
        if ledger_entries(redis).await == 4 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_redis_that_loses_its_data_has_the_uploads_that_still_count_written_back() {
    let mut redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    // Renewals (and the look for lost data) every 1.7 s.
    let gateways = two_sharing_a_ledger(&sim, &redis, 4, |c| {
        c.cluster.lease_ttl_secs = 5;
        // The dripping upload below holds its lease for the whole test.
        c.upload.client_idle_timeout_ms = 120_000;
    })
    .await;
    let ids = three_committed(&sim, &gateways[0]).await;
    // A fourth, admitted on its lease, runs (its body stops short): the lease is written back too.
    let _running = dripping_upload(&gateways[0].addr.to_string(), PART * 2, 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ledger_entries(&redis).await, 4);
    // Within a renewal of Redis coming back, the sidecar that created them has written them back:
    // after a restart without persistence (the connection breaks), and after a flush (it does not).
    redis.kill();
    redis.restart().await;
    assert!(written_back(&redis).await, "the ledger after a restart: {} entries", ledger_entries(&redis).await);
    let mut conn = redis.connection().await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    assert!(written_back(&redis).await, "the ledger after a flush: {} entries", ledger_entries(&redis).await);
    // So the member's quota still holds on the other sidecar: a fifth upload waits for room.
    let fourth = {
        let (http, url) = (sim.http.clone(), gateways[1].url());
        tokio::spawn(async move { upload_via(&http, &url, Bytes::from(bytes_of(PART * 2, 4)), TOKEN).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!fourth.is_finished());
    assert_eq!(sim.stats().await["created"], 3, "the fifth created nothing while it waited");
    // A delete through the other sidecar (not the one that created it) frees the room, and the
    // fifth goes on.
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{}", gateways[1].url(), ids[0]);
    let auth = format!("Bearer {TOKEN}");
    let deleted = sim.http.send(Method::DELETE, &url, &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(deleted.status, StatusCode::OK);
    let r = tokio::time::timeout(Duration::from_secs(20), fourth).await.expect("the fifth still waits").unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(sim.stats().await["created"], 4);
    // The deleted upload is not written back by the sidecar that created it after the next loss
    // (it learns at a renewal that Redis no longer counts it): two uploads and the lease from the
    // first sidecar, the fifth from the second. Before, it came back and held the member's room
    // until it expired.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    assert!(written_back(&redis).await, "the ledger after a second flush: {} entries", ledger_entries(&redis).await);
    let key = redis.keys("chunkgate:m").await.into_iter().find(|k| k.ends_with(":e")).unwrap();
    let back: bool = redis::cmd("HEXISTS").arg(&key).arg(&ids[0]).query_async(&mut conn).await.unwrap();
    assert!(!back, "the upload deleted through the other sidecar was written back");
}

#[tokio::test]
async fn uploads_ended_through_another_sidecar_after_redis_lost_its_data_are_not_written_back() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    // Renewals (and the look for lost data) every 1.7 s.
    let gateways = two_sharing_a_ledger(&sim, &redis, 3, |c| c.cluster.lease_ttl_secs = 5).await;
    let ids = three_committed(&sim, &gateways[0]).await;
    assert_eq!(ledger_entries(&redis).await, 3);
    let mut conn = redis.connection().await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    // At once, before the first sidecar's next renewal: one deleted and one used through the other
    // sidecar, which finds nothing of them in Redis.
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{}", gateways[1].url(), ids[0]);
    let auth = format!("Bearer {TOKEN}");
    let deleted = sim.http.send(Method::DELETE, &url, &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(deleted.status, StatusCode::OK);
    let envelope = envelope_via(&sim.http, &gateways[1].url(), &[ids[1].as_str()]).await;
    assert_eq!(envelope.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&envelope.body));
    // The first sidecar writes back what it created within a renewal: only the upload that still
    // counts (before: all three, and the member was refused room it had).
    let mut entries = 0;
    for _ in 0..100 {
        entries = ledger_entries(&redis).await;
        if entries > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let key = redis.keys("chunkgate:m").await.into_iter().find(|k| k.ends_with(":e")).expect("written back");
    let held: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!((entries, held), (1, vec![ids[2].clone()]));
    // Two more fit the member's three, on either sidecar.
    for g in &gateways {
        let r = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 7)), TOKEN).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
}

#[tokio::test]
async fn writes_kept_while_redis_refused_them_are_written_once_it_takes_them() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.cluster.redis_url = redis.url();
    c.cluster.op_timeout_ms = 2000;
    let g = start(vec![c]).await.remove(0);
    let auth = format!("Bearer {TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", g.url());
    let created = sim.http.send(Method::POST, &url, &json, part_body(b"part zero")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    let sdk = created.json()["chunkedUploadId"].as_str().unwrap().to_owned();
    let mut conn = redis.connection().await;
    let member = redis.keys("chunkgate:m").await.into_iter().find(|k| k.ends_with(":e")).unwrap();
    let bytes_of_upload = async |conn: &mut redis::aio::MultiplexedConnection, id: &str| -> Option<u64> {
        redis::cmd("HGET").arg(&member).arg(id).query_async(conn).await.unwrap()
    };
    let before = bytes_of_upload(&mut conn, &sdk).await.expect("the create counts");
    // Redis turns into a replica that refuses writes (as during a failover), though it answers
    // PING: the sidecar counts locally and keeps what happens for later.
    redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1).query_async::<()>(&mut conn).await.unwrap();
    // A streamed upload of unknown length (counted at the most it could be until its end) and a
    // part through the passthrough.
    let doc = Bytes::from(bytes_of(PART + 1000, 3));
    let auth_pairs = [("authorization", auth.as_str()), ("content-type", "application/octet-stream")];
    let streamed = sim.http.send_body(Method::POST, &url, &auth_pairs, chunked(doc.clone(), 64 * 1024)).await.unwrap();
    assert_eq!(streamed.status, StatusCode::OK, "{}", String::from_utf8_lossy(&streamed.body));
    let streamed = streamed.header("x-chunkgate-upload-id").to_owned();
    let part = part_body(&bytes_of(300_000, 4));
    let r = sim.http.send(Method::PUT, &format!("{url}/{sdk}/1"), &json, part.clone()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    // Probes find Redis answering and replay, in vain, for a few seconds (before: the first replay
    // that failed lost what was kept).
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async::<()>(&mut conn).await.unwrap();
    let mut seen = (None, None);
    for _ in 0..50 {
        seen = (bytes_of_upload(&mut conn, &streamed).await, bytes_of_upload(&mut conn, &sdk).await);
        if seen.0 == Some(doc.len() as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The streamed upload at its size (before: the most a document may be), the other with its part.
    let part_bytes = (part.len() as u64) / 4 * 3;
    assert_eq!(seen, (Some(doc.len() as u64), Some(before + part_bytes)));
}

#[tokio::test]
async fn another_members_envelope_that_mentions_an_upload_frees_nothing() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    let gateways = two_sharing_a_ledger(&sim, &redis, 3, |c| c.quota.wait_secs = 1).await;
    let ids = three_committed(&sim, &gateways[0]).await;
    // Another member's envelope, through the other sidecar, names the first upload where the
    // scanner finds it (the upstream takes the envelope: it uses no document of another member).
    let body =
        json!({"emailSubject": format!("docusignchunkedupload://{}", ids[0]), "status": "created", "documents": []});
    let theirs = format!("Bearer {OTHER_TOKEN}");
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes", gateways[1].url());
    let headers = [("authorization", theirs.as_str()), ("content-type", "application/json")];
    let envelope = sim.http.send(Method::POST, &url, &headers, body.to_string()).await.unwrap();
    assert_eq!(envelope.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&envelope.body));
    assert_eq!(sim.inspect(&ids[0]).await["state"], "committed");
    // The first member's three uploads still fill its quota, on either sidecar (before: the
    // mention freed one, and the next create went to the upstream, which refused it for quota).
    for g in &gateways {
        let refused = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 9)), TOKEN).await;
        assert_eq!(code(&refused), "GATEWAY_BUSY", "{}", String::from_utf8_lossy(&refused.body));
    }
    assert_eq!(ledger_entries(&redis).await, 3);
    assert_eq!(sim.stats().await["created"], 3);
}

#[tokio::test]
async fn a_json_create_of_unknown_length_holds_what_its_body_carried() {
    let sim = SimApi::start(SimConfig::default()).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.quota.bytes_per_member = 1_000_000;
    c.quota.wait_secs = 1;
    c.upload.max_document_bytes = 900_000;
    let g = start(vec![c]).await.remove(0);
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", g.url());
    let auth = format!("Bearer {TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    // 600 kB in a chunked JSON create (no Content-Length): it holds 600 kB once its body ends.
    let big = Bytes::from(part_body(&bytes_of(600_000, 1)));
    let created = sim.http.send_body(Method::POST, &url, &json, chunked(big.clone(), 64 * 1024)).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    // So a second such create does not fit the member's 1 MB (before: the first counted 1 byte,
    // and the second went to the upstream).
    let second = sim.http.send_body(Method::POST, &url, &json, chunked(big, 64 * 1024)).await.unwrap();
    assert_eq!(code(&second), "GATEWAY_BUSY", "{}", String::from_utf8_lossy(&second.body));
    // A 300 kB one with its length declared still fits beside it: the first holds its 600 kB, not
    // the 900 kB (`upload.max_document_bytes`) it was leased while its length was unknown.
    let declared = sim.http.send(Method::POST, &url, &json, part_body(&bytes_of(300_000, 2))).await.unwrap();
    assert_eq!(declared.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&declared.body));
    assert_eq!(sim.stats().await["created"], 2);
}

#[tokio::test]
async fn parts_sent_through_the_passthrough_count_in_their_uploads_bytes() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    let gateways = two_sharing_a_ledger(&sim, &redis, 10, |c| {
        c.quota.bytes_per_member = 1_000_000;
        c.quota.wait_secs = 1;
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let url = |g: &gateway::GatewayHandle| format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", g.url());
    // As the SDKs do: a small create, then parts, through either sidecar.
    let created = sim.http.send(Method::POST, &url(&gateways[0]), &json, part_body(b"part zero")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["chunkedUploadId"].as_str().unwrap().to_owned();
    for seq in 1..=2 {
        let part = format!("{}/{id}/{seq}", url(&gateways[seq % 2]));
        let r = sim.http.send(Method::PUT, &part, &json, part_body(&bytes_of(300_000, seq as u64))).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    // The member's bytes, as the metrics show them, hold the parts (before, with Redis: only what
    // the last create's lease had read).
    let m = metrics(&sim.http, &gateways[0].admin_addr.to_string()).await;
    let held = m
        .lines()
        .find(|l| l.starts_with("chunkgate_quota_bytes_held{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(held.is_some_and(|b| b >= 600_000.0), "{m}");
    // Another member's part naming the upload (refused upstream) adds nothing to it.
    let theirs = format!("Bearer {OTHER_TOKEN}");
    let other = [("authorization", theirs.as_str()), ("content-type", "application/json")];
    let refused = sim.http.send(Method::PUT, &format!("{}/{id}/3", url(&gateways[0])), &other, part_body(b"x")).await;
    assert!(!refused.unwrap().status.is_success());
    // The upload holds 600 kB: a 500 kB create no longer fits the member's 1 MB (before: the parts
    // counted nothing, and the create went to the upstream).
    let big = part_body(&bytes_of(500_000, 9));
    for g in &gateways {
        let r = sim.http.send(Method::POST, &url(g), &json, big.clone()).await.unwrap();
        assert_eq!(code(&r), "GATEWAY_BUSY", "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(sim.stats().await["created"], 1);
}

/// Sends `body` as a JSON request over HTTP/1.1 with its length, then leaves after `after`,
/// before the answer.
async fn leave_after(gateway: &str, method: &str, path: &str, body: &str, after: Duration) {
    let mut tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
}

#[tokio::test]
async fn passthrough_calls_whose_client_leaves_before_the_answer_still_count() {
    let sim = SimApi::start(SimConfig::default()).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.quota.uploads_per_member = 2;
    c.quota.bytes_per_member = 1_000_000;
    c.quota.wait_secs = 1;
    let g = start(vec![c]).await.remove(0);
    let auth = format!("Bearer {TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let path = format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let url = format!("{}{path}", g.url());
    let created = sim.http.send(Method::POST, &url, &json, part_body(b"part zero")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["chunkedUploadId"].as_str().unwrap().to_owned();
    // The upstream answers slowly; the clients leave (a timeout) after their request went whole.
    sim.faults(json!({"latency_ms": 600, "ops": ["create", "add_part"]})).await;
    let addr = g.addr.to_string();
    let part = part_body(&bytes_of(400_000, 1));
    leave_after(&addr, "PUT", &format!("{path}/{id}/1"), &part, Duration::from_millis(150)).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(sim.inspect(&id).await["parts"].as_array().map(Vec::len), Some(2), "the part was taken");
    // The upload holds the part's 300 kB: 800 kB more do not fit the member's 1 MB (before: the
    // part counted nothing once its client had gone).
    sim.faults(json!({})).await;
    let big = sim.http.send(Method::POST, &url, &json, part_body(&bytes_of(800_000, 2))).await.unwrap();
    assert_eq!(code(&big), "GATEWAY_BUSY", "{}", String::from_utf8_lossy(&big.body));
    // A create whose client leaves: the upload it made counts, and fills the member's two.
    sim.faults(json!({"latency_ms": 600, "ops": ["create"]})).await;
    leave_after(&addr, "POST", &path, &part_body(b"left"), Duration::from_millis(150)).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(sim.stats().await["created"], 2);
    sim.faults(json!({})).await;
    let third = sim.http.send(Method::POST, &url, &json, part_body(b"third")).await.unwrap();
    assert_eq!(code(&third), "GATEWAY_BUSY", "{}", String::from_utf8_lossy(&third.body));
    // A create whose client leaves while it waits for room is never sent, even once there is room.
    let waiting = {
        let (addr, path) = (addr.clone(), path.clone());
        tokio::spawn(
            async move { leave_after(&addr, "POST", &path, &part_body(b"gone"), Duration::from_millis(300)).await },
        )
    };
    waiting.await.unwrap();
    let deleted = sim.http.send(Method::DELETE, &format!("{url}/{id}"), &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(deleted.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(sim.stats().await["created"], 2, "a create sent after its client had gone");
}

#[tokio::test]
async fn a_delete_passed_through_frees_the_members_room() {
    let sim = SimApi::start(SimConfig::default()).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.quota.uploads_per_member = 1;
    c.quota.wait_secs = 1;
    let g = start(vec![c]).await.remove(0);
    let first = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 1)), TOKEN).await;
    assert_eq!(first.status, StatusCode::OK);
    let busy = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 2)), TOKEN).await;
    assert_eq!(code(&busy), "GATEWAY_BUSY");
    let id = first.header("x-chunkgate-upload-id");
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}", g.url());
    let auth = format!("Bearer {TOKEN}");
    // Another member's delete is answered 404 and frees nothing: the upload is still the owner's.
    let theirs = format!("Bearer {OTHER_TOKEN}");
    let refused = sim.http.send(Method::DELETE, &url, &[("authorization", &theirs)], "").await.unwrap();
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let still = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 2)), TOKEN).await;
    assert_eq!(code(&still), "GATEWAY_BUSY");
    assert!(String::from_utf8_lossy(&still.body).contains("quota"), "the refusal names the member's quota");
    let deleted = sim.http.send(Method::DELETE, &url, &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(deleted.status, StatusCode::OK);
    let second = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 2)), TOKEN).await;
    assert_eq!(second.status, StatusCode::OK, "{}", String::from_utf8_lossy(&second.body));
    // Another member was never held up.
    let other = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 3)), OTHER_TOKEN).await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn a_stream_of_unknown_length_grows_its_plan_and_is_deleted_when_the_budget_runs_out() {
    let mut sim_config = SimConfig::default();
    sim_config.limits.hourly_limit = 8;
    let sim = SimApi::start(sim_config).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.rate_limit.hourly_limit = 8;
    c.rate_limit.max_wait_secs = 1;
    let g = start(vec![c]).await.remove(0);
    // 8 calls: create, up to 4 more parts, checksum, commit, delete. A stream of 10 parts cannot fit.
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", g.url());
    let auth = format!("Bearer {TOKEN}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/pdf")];
    let long =
        sim.http.send_body(Method::POST, &url, &headers, chunked(Bytes::from(bytes_of(PART * 10, 5)), 4096)).await;
    let long = long.unwrap();
    assert_eq!((long.status, code(&long)), (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED".into()));
    let st = sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!((st["open"].as_u64(), st["committed"].as_u64(), st["throttled"].as_u64()), (Some(0), Some(0), Some(0)));
    // Create and four parts filled the budget the plan could grow into; the delete was the call
    // held back (the finish's two were never needed).
    assert_eq!(st["requests"], 6, "{st}");
}

#[tokio::test]
async fn a_create_passed_through_as_json_waits_for_room_and_counts_until_deleted() {
    let sim = SimApi::start(SimConfig::default()).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.quota.uploads_per_member = 1;
    c.quota.wait_secs = 1;
    let g = start(vec![c]).await.remove(0);
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", g.url());
    // As the SDKs do: the JSON create, through the passthrough. The scheme's case and extra
    // spaces make no other member.
    let odd = format!("bearer   {TOKEN} ");
    let json = [("authorization", odd.as_str()), ("content-type", "application/json")];
    let created = sim.http.send(Method::POST, &url, &json, part_body(b"part zero")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["chunkedUploadId"].as_str().unwrap().to_owned();
    // The member's one upload is held: a streamed upload and a second JSON create wait, then 503,
    // and nothing more is created upstream.
    let busy = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 1)), TOKEN).await;
    assert_eq!(code(&busy), "GATEWAY_BUSY");
    let again = sim.http.send(Method::POST, &url, &json, part_body(b"again")).await.unwrap();
    assert_eq!(code(&again), "GATEWAY_BUSY");
    assert_eq!(sim.stats().await["created"], 1);
    // Deleted through the passthrough: room again.
    let auth = format!("Bearer {TOKEN}");
    let deleted = sim.http.send(Method::DELETE, &format!("{url}/{id}"), &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(deleted.status, StatusCode::OK);
    let r = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART, 1)), TOKEN).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_stalled_redis_leaves_no_lease_behind_and_learns_of_uploads_made_meanwhile() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.cluster.redis_url = redis.url();
    c.cluster.op_timeout_ms = 300;
    let g = start(vec![c]).await.remove(0);
    let first = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART * 2, 1)), TOKEN).await;
    assert_eq!(first.status, StatusCode::OK);
    // Stalled: the lease's script times out here, and runs once Redis goes on.
    redis.pause();
    let during = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(PART * 2, 2)), TOKEN).await;
    redis.resume();
    assert_eq!(during.status, StatusCode::OK, "{}", String::from_utf8_lossy(&during.body));
    let ids = [first.header("x-chunkgate-upload-id").to_owned(), during.header("x-chunkgate-upload-id").to_owned()];
    // Once the sidecar shares again, the member's ledger holds both uploads and no lease.
    let mut conn = redis.connection().await;
    let mut entries: Vec<String> = Vec::new();
    for _ in 0..100 {
        let keys = redis.keys("chunkgate:m").await;
        let member = keys.iter().find(|k| k.ends_with(":e")).expect("the member's ledger");
        entries = redis::cmd("HKEYS").arg(member).query_async(&mut conn).await.unwrap();
        entries.sort();
        if entries.len() == 2 && entries.iter().all(|e| ids.contains(e)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut want = ids.to_vec();
    want.sort();
    assert_eq!(entries, want, "the ledger in Redis after the stall");
}

#[tokio::test]
async fn falling_back_late_in_the_hour_keeps_each_sidecar_to_its_share_of_what_is_left() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(scenario_sim()).await;
    let gateways = start((0..2).map(|_| scenario_gateway(&sim, Some(&redis), 2)).collect()).await;
    let fire = |n: usize, seed: u64| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (http, url) = (sim.http.clone(), gateways[i % 2].url());
                let data = Bytes::from(bytes_of(3 * MIB, seed + i as u64));
                tokio::spawn(async move { upload_via(&http, &url, data, TOKEN).await })
            })
            .collect();
        all(tasks)
    };
    // 100 of the hour's 150 calls, shared.
    for r in fire(20, 0).await {
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(sim.stats().await["requests"], 100);
    // Redis gone: each sidecar may make half of the 50 left, not half of the 150.
    drop(redis);
    for r in fire(20, 100).await {
        assert!(
            r.status == StatusCode::OK || code(&r) == "RATE_LIMITED",
            "{} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let st = sim.stats().await;
    assert_eq!(st["throttled"], 0, "{st}");
    assert_eq!(st["open"], 0, "{st}");
    assert_eq!(st["created"], st["committed"], "refused before anything was created: {st}");
}

/// Calls of `command` Redis has served so far (`INFO commandstats`).
async fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let mut conn = redis.connection().await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Passthrough calls take their permits from Redis a batch at a time: far fewer scripts than
/// calls, nothing throttled, and what a batch did not spend goes back, so that the shared hourly
/// count comes to the calls the upstream saw.
#[tokio::test]
async fn passthrough_calls_draw_from_redis_in_batches_and_give_back_what_they_did_not_spend() {
    let redis = RedisServer::start().await;
    let mut sim_config = SimConfig::default();
    sim_config.limits.burst_limit = 20_000;
    let sim = SimApi::start(sim_config).await;
    let configs = (0..2)
        .map(|_| {
            let mut c = gateway_config(&sim, sim.running.url());
            c.rate_limit.burst_limit = 20_000;
            c.cluster.redis_url = redis.url();
            c.cluster.op_timeout_ms = 5000;
            // Renewed (and lapsed batches given back) every 2 s.
            c.cluster.lease_ttl_secs = 6;
            c.cluster.replicas = 2;
            c
        })
        .collect();
    let gateways = start(configs).await;
    let id = sim.create_id(b"hello").await;
    let scripts_before = redis_calls(&redis, "evalsha").await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (http, url) = (sim.http.clone(), gateways[i % 2].url());
            let id = id.clone();
            tokio::spawn(async move {
                let url = format!("{url}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}");
                let auth = format!("Bearer {TOKEN}");
                let mut statuses = Vec::new();
                for _ in 0..12 {
                    statuses.push(http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap().status);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<StatusCode> = all(tasks).await.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 384);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let scripts = redis_calls(&redis, "evalsha").await - scripts_before;
    // One script per call without batches; a machine that stalls past a batch's 100 ms life
    // makes some lapse (given back, then taken again), so the bound leaves room for that.
    assert!(scripts * 2 < 384, "{scripts} scripts for 384 calls: not taken in batches");
    let st = sim.stats().await;
    assert_eq!(st["throttled"].as_u64(), Some(0), "{st}");
    // The GETs, and the create made straight to the simulator.
    let upstream_calls = st["requests"].as_u64().unwrap() - 1;
    assert_eq!(upstream_calls, 384, "{st}");
    let mut conn = redis.connection().await;
    let hour = format!("chunkgate:a:{ACCOUNT}:hour");
    // The upstream counts the create made straight to it as well, and says so in its
    // `X-RateLimit-Remaining`: a sidecar that reads that on an answer while it holds no calls
    // ahead counts it too (the count only ever rises to what the upstream announces).
    let counted = |used: u64| used == upstream_calls || used == upstream_calls + 1;
    let mut used = 0;
    for _ in 0..100 {
        used = redis::cmd("HGET").arg(&hour).arg("used").query_async::<u64>(&mut conn).await.unwrap();
        if counted(used) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted(used), "calls taken ahead and not spent were not given back: {used} for {upstream_calls} calls");
}

/// An upload's calls take their permits from Redis as passthrough's do, a batch at a time: its
/// reservation draws the create's permit with it and its parts take growing batches, so far fewer
/// scripts run than calls are made. What a batch does not spend (a client too slow for its create's
/// permit, a plan released with calls in hand) goes back: the shared hourly count comes to the
/// calls the upstream saw, and no plan is left reserved.
#[tokio::test]
async fn an_uploads_calls_draw_from_redis_in_batches_and_what_they_do_not_spend_goes_back() {
    let redis = RedisServer::start().await;
    let mut sim_config = SimConfig::default();
    sim_config.limits.burst_limit = 20_000;
    let sim = SimApi::start(sim_config).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.rate_limit.burst_limit = 20_000;
    c.cluster.redis_url = redis.url();
    c.cluster.op_timeout_ms = 5000;
    let g = start(vec![c]).await.remove(0);
    // 40 parts: create, 39 parts, the checksum read and the commit.
    let data = bytes_of(PART * 40, 21);
    let scripts_before = redis_calls(&redis, "evalsha").await;
    let r = upload_via(&sim.http, &g.url(), Bytes::from(data.clone()), TOKEN).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let calls = sim.stats().await["requests"].as_u64().unwrap();
    assert_eq!(calls, 42, "{}", sim.stats().await);
    let scripts = redis_calls(&redis, "evalsha").await - scripts_before;
    // One per call and four more (lease, reserve, created, release) without batches.
    assert!(scripts * 2 < calls, "{scripts} scripts for {calls} calls: not taken in batches");
    // A client quiet for longer than a batch lives before its first byte: the create's permit,
    // drawn with the reservation, lapses, and goes back before another is taken.
    let mut slow = dripping_upload(&g.addr.to_string(), PART * 3, 0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    slow.write_all(&bytes_of(PART * 3, 22)).await.unwrap();
    let mut answer = vec![0; 12];
    tokio::io::AsyncReadExt::read_exact(&mut slow, &mut answer).await.unwrap();
    assert_eq!(answer, b"HTTP/1.1 200", "the slow client's upload is committed");
    let upstream_calls = sim.stats().await["requests"].as_u64().unwrap();
    assert_eq!(upstream_calls, calls + 5, "create, two parts, checksum read, commit");
    let mut conn = redis.connection().await;
    let (hour, plans) = (format!("chunkgate:a:{ACCOUNT}:hour"), format!("chunkgate:a:{ACCOUNT}:plans"));
    let mut seen = (0, 1);
    for _ in 0..100 {
        let used = redis::cmd("HGET").arg(&hour).arg("used").query_async::<u64>(&mut conn).await.unwrap();
        let held = redis::cmd("HLEN").arg(&plans).query_async::<u64>(&mut conn).await.unwrap();
        seen = (used, held);
        if seen == (upstream_calls, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (upstream_calls, 0), "(calls counted, plans held): calls taken and not spent were not given back");
    // The totals the scripts keep beside the plans and the member's ledger (rather than summing
    // them each time) agree with what they hold.
    for hash in redis.keys("chunkgate").await.into_iter().filter(|k| k.ends_with(":plans") || k.ends_with(":e")) {
        let values: Vec<i64> = redis::cmd("HVALS").arg(&hash).query_async(&mut conn).await.unwrap();
        let kept: Option<i64> = redis::cmd("GET").arg(format!("{hash}:sum")).query_async(&mut conn).await.unwrap();
        assert_eq!(kept.unwrap_or(0), values.iter().sum::<i64>(), "{hash}: {values:?}");
    }
}

/// Uploads the upstream refuses at once (the member's quota upstream is full): each ends while the
/// batch its create's call emptied is being read ahead, and those calls go back when they arrive
/// for a plan already released (they had stayed counted for the rest of the hour: 19 counted for 13
/// made here).
#[tokio::test]
async fn calls_read_ahead_for_an_upload_that_ended_meanwhile_go_back() {
    let redis = RedisServer::start().await;
    let mut sim_config = SimConfig::default();
    sim_config.limits.quota_uploads = 1;
    let sim = SimApi::start(sim_config).await;
    let mut c = gateway_config(&sim, sim.running.url());
    c.cluster.redis_url = redis.url();
    c.cluster.op_timeout_ms = 5000;
    let g = start(vec![c]).await.remove(0);
    let first = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(1000, 1)), TOKEN).await;
    assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.body));
    for i in 0..10 {
        let refused = upload_via(&sim.http, &g.url(), Bytes::from(bytes_of(1000, i + 2)), TOKEN).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&refused.body));
    }
    let calls = sim.stats().await["requests"].as_u64().unwrap();
    assert_eq!(calls, 13, "create, checksum read, commit; then ten refused creates");
    let mut conn = redis.connection().await;
    let hour = format!("chunkgate:a:{ACCOUNT}:hour");
    let mut used = 0;
    for _ in 0..50 {
        used = redis::cmd("HGET").arg(&hour).arg("used").query_async::<u64>(&mut conn).await.unwrap();
        if used == calls {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(used, calls, "calls counted in Redis against calls the upstream saw");
}

/// Redis comes back empty after the sidecars ran on their shares: the shared burst limiter learns
/// of the calls they made meanwhile, rather than granting a whole burst window on top of them
/// (the upstream throttled 2–3 calls in a row right after Redis returned).
#[tokio::test]
async fn a_burst_limiter_that_comes_back_empty_counts_the_calls_made_without_it() {
    let mut redis = RedisServer::start().await;
    let mut sim_config = SimConfig::default();
    sim_config.limits.burst_limit = 120;
    sim_config.limits.burst_window_secs = 10;
    let sim = SimApi::start(sim_config).await;
    let configs = (0..2)
        .map(|_| {
            let mut c = gateway_config(&sim, sim.running.url());
            c.rate_limit.burst_limit = 120;
            c.rate_limit.burst_window_secs = 10;
            c.cluster.redis_url = redis.url();
            c.cluster.replicas = 2;
            c
        })
        .collect();
    let gateways = start(configs).await;
    let id = sim.create_id(b"hello").await;
    let load = |secs: u64| {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (http, url, id) = (sim.http.clone(), gateways[i % 2].url(), id.clone());
                tokio::spawn(async move {
                    let url = format!("{url}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}");
                    let auth = format!("Bearer {TOKEN}");
                    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
                    let mut statuses = Vec::new();
                    while tokio::time::Instant::now() < until {
                        statuses
                            .push(http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap().status);
                    }
                    statuses
                })
            })
            .collect();
        async move { all(tasks).await.into_iter().flatten().collect::<Vec<StatusCode>>() }
    };
    redis.kill();
    // A whole burst window on the sidecars' shares, then Redis back, empty.
    let alone = load(10).await;
    redis.restart().await;
    let shared = load(5).await;
    assert!(alone.iter().chain(&shared).all(|s| *s == StatusCode::OK), "{alone:?} {shared:?}");
    let st = sim.stats().await;
    assert_eq!(st["throttled"].as_u64(), Some(0), "{st}");
}

/// The member ledger's entries in Redis (leases and uploads), by key.
async fn ledger_keys(redis: &RedisServer) -> Vec<String> {
    let Some(key) = redis.keys("chunkgate:m").await.into_iter().find(|k| k.ends_with(":e")) else { return Vec::new() };
    let mut conn = redis.connection().await;
    redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await.unwrap()
}

/// A sidecar that stops writes what it knows to Redis first: a create seen through after its client
/// left (before: written in the background after the last request had ended, and lost with the
/// process: only the create's lease was left, to expire), and what was kept while Redis did not
/// answer, if it answers at the stop (before: lost unless a probe had come first). What Redis never
/// takes is said in the log.
#[tokio::test]
async fn a_stopping_sidecar_writes_the_ledger_before_it_exits() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    let url = redis.url();
    let env = [("CHUNKGATE_CLUSTER__REDIS_URL", url.as_str()), ("CHUNKGATE_SERVER__DRAIN_SECS", "2")];
    let path = format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let mut conn = redis.connection().await;
    // Redis lost its scripts (as after a restart): the write takes a round trip more.
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut conn).await.unwrap();
    let mut g = Binary::serve(&sim, &env, true);
    sim.faults(json!({"latency_ms": 500, "ops": ["create"]})).await;
    let addr = g.url.trim_start_matches("http://").to_owned();
    leave_after(&addr, "POST", &path, &part_body(b"left"), Duration::from_millis(100)).await;
    g.signal("TERM");
    assert!(g.wait().await.success());
    assert_eq!(sim.stats().await["created"], 1);
    let keys = ledger_keys(&redis).await;
    let mut log = String::new();
    std::io::Read::read_to_string(g.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(keys.len() == 1 && !keys[0].starts_with("lease:"), "the upload, not its lease: {keys:?} {log}");

    // Redis refuses writes while a create goes through (a replica, as in a failover): the sidecar
    // keeps the write. Redis takes writes again when the sidecar stops, before any probe found it
    // so: the stop writes it.
    sim.faults(json!({})).await;
    let mut g = Binary::serve(&sim, &env, true);
    let auth = format!("Bearer {TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1).query_async::<()>(&mut conn).await.unwrap();
    let created = sim.http.send(Method::POST, &format!("{}{path}", g.url), &json, part_body(b"kept")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    let kept = created.json()["chunkedUploadId"].as_str().unwrap().to_owned();
    redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async::<()>(&mut conn).await.unwrap();
    g.signal("TERM");
    assert!(g.wait().await.success());
    let mut log = String::new();
    std::io::Read::read_to_string(g.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(ledger_keys(&redis).await.contains(&kept), "{:?} {log}", ledger_keys(&redis).await);

    // Redis stalls while a create goes through and for a moment after the stop began: the stop
    // waits for it (before: one look, and the write was lost).
    let mut g = Binary::serve(&sim, &env, false);
    // Its scripts to load again once it answers: the replay takes round trips more, while the
    // fallback's own probe and the stop's look for Redis at once.
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut conn).await.unwrap();
    redis.pause();
    let created = sim.http.send(Method::POST, &format!("{}{path}", g.url), &json, part_body(b"stalled")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    let stalled = created.json()["chunkedUploadId"].as_str().unwrap().to_owned();
    g.signal("TERM");
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.resume();
    assert!(g.wait().await.success());
    assert!(ledger_keys(&redis).await.contains(&stalled), "{:?}", ledger_keys(&redis).await);

    // Redis gone for good: the stop says what is lost.
    let mut g = Binary::serve(&sim, &env, true);
    redis.pause();
    let created = sim.http.send(Method::POST, &format!("{}{path}", g.url), &json, part_body(b"lost")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created.body));
    g.signal("TERM");
    assert!(g.wait().await.success());
    let mut log = String::new();
    std::io::Read::read_to_string(g.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("stopping with ledger writes Redis has not taken"), "{log}");
    redis.resume();
}

/// What a member holds, as a sidecar's metrics show it, follows what the others do: it is read
/// again from Redis at every renewal (before: it changed only with this sidecar's own writes, and
/// showed an upload deleted through another sidecar, or what its own share counted during an
/// outage, until the member's next call through it).
#[tokio::test]
async fn a_members_holdings_in_the_metrics_follow_what_other_sidecars_do() {
    let redis = RedisServer::start().await;
    let sim = SimApi::start(SimConfig::default()).await;
    // Renewals every 1.7 s.
    let gateways = two_sharing_a_ledger(&sim, &redis, 3, |c| c.cluster.lease_ttl_secs = 5).await;
    let first = upload_via(&sim.http, &gateways[0].url(), Bytes::from(bytes_of(PART, 1)), TOKEN).await;
    assert_eq!(first.status, StatusCode::OK);
    let admin = gateways[0].admin_addr.to_string();
    let held = async || gauge(&metrics(&sim.http, &admin).await, "chunkgate_quota_uploads_held{");
    assert_eq!(held().await, Some(1.0));
    let id = first.header("x-chunkgate-upload-id");
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}", gateways[1].url());
    let deleted = sim.http.send(Method::DELETE, &url, &[("authorization", &format!("Bearer {TOKEN}"))], "").await;
    assert_eq!(deleted.unwrap().status, StatusCode::OK);
    let mut seen = held().await;
    for _ in 0..50 {
        if seen == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = held().await;
    }
    assert_eq!(seen, Some(0.0), "the first sidecar's metrics still show the upload deleted through the second");
}
