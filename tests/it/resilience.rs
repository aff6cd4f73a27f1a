//! The gateway on a bad day: one test per failure class, injected by the simulator.

use std::{sync::Arc, time::Instant};

use chunkgate::sim::SimConfig;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// `n` uploads at once of `len(i)` bytes; returns each answer with the bytes it carried.
async fn concurrently(s: &Arc<Stack>, n: usize, len: impl Fn(usize) -> usize) -> Vec<(Resp, Vec<u8>)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let s = s.clone();
            let data = bytes_of(len(i), 1000 + i as u64);
            tokio::spawn(async move { (s.upload(&data, &[]).await, data) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn roomy_sim() -> SimConfig {
    let mut c = SimConfig::default();
    c.limits.quota_uploads = 1000;
    c.limits.burst_limit = 100_000;
    c
}

#[tokio::test]
async fn parts_stored_then_dropped_are_reconciled_and_every_upload_commits_byte_exact() {
    let s = Arc::new(Stack::start(roomy_sim(), |_| {}).await);
    s.sim.faults(json!({"drop_after_store_rate": 0.3, "ops": ["add_part"], "seed": 11})).await;
    for (r, data) in concurrently(&s, 8, |i| PART * 5 + 123 * i).await {
        s.assert_committed(&r, &data).await;
    }
    let st = s.sim.stats().await;
    assert!(st["dropped"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(st["duplicate_parts"], 0, "a part that arrived was never sent again");
    assert_eq!(st["open"], 0);
}

#[tokio::test]
async fn server_errors_are_retried_until_the_upload_commits() {
    let s = Arc::new(Stack::start(roomy_sim(), |_| {}).await);
    // Not on create: an answer-less create is never sent again (its own test below).
    let ops = ["add_part", "get", "commit", "delete"];
    s.sim.faults(json!({"error_next": 4, "error_rate": 0.2, "error_status": 502, "seed": 5, "ops": ops})).await;
    for (r, data) in concurrently(&s, 6, |_| PART * 3 + 7).await {
        s.assert_committed(&r, &data).await;
    }
    let st = s.sim.stats().await;
    assert!(st["injected_errors"].as_u64().unwrap() >= 4, "{st}");
    assert_eq!(st["open"], 0);
}

#[tokio::test]
async fn throttling_answered_with_400_or_429_pauses_the_account_then_resumes() {
    for status in [400u16, 429] {
        let mut sim = roomy_sim();
        sim.throttle_status = status;
        sim.limits.burst_window_secs = 1; // the pause lasts until the next window
        let s = Stack::start(sim, |_| {}).await;
        s.sim.faults(json!({"throttle_next": 2, "ops": ["add_part", "commit"]})).await;
        let data = bytes_of(PART * 3, status as u64);
        let r = s.upload(&data, &[]).await;
        s.assert_committed(&r, &data).await;
        assert_eq!(s.sim.stats().await["throttled"], 2, "status {status}");
    }
}

#[tokio::test]
async fn a_down_upstream_gets_no_more_requests_than_the_retry_budget_allows() {
    let s = Arc::new(
        Stack::start(roomy_sim(), |c| {
            c.retry.max_attempts = 6;
            c.retry.budget_ratio = 0.2;
            c.retry.budget_floor_per_sec = 1.0;
        })
        .await,
    );
    // Creates go through; every checksum read before the commit fails.
    s.sim.faults(json!({"error_rate": 1.0, "ops": ["get"]})).await;
    let started = Instant::now();
    for (r, _) in concurrently(&s, 10, |_| 1000).await {
        assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE".into()));
        assert!(r.json()["message"].as_str().unwrap().contains("503"), "the message names the upstream's answer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = s.sim.stats().await["requests"].as_u64().unwrap();
    // 30 first attempts (create, get, delete of each); retries: 20% of them, the floor's initial
    // second, and the floor since. Unbudgeted, the gets alone would have made 60.
    let allowed = 30.0 + 30.0 * 0.2 + 1.0 + elapsed.ceil() * 1.0;
    assert!(requests >= 30 && requests as f64 <= allowed, "{requests} requests, {allowed} allowed; 80 unbudgeted");
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 10).await;
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeouts_gives_upstream_timeout_and_the_upload_is_deleted() {
    let s = Stack::start(roomy_sim(), |c| {
        c.upstream.part_timeout_ms = 100;
        c.upstream.call_timeout_ms = 100;
        c.retry.max_attempts = 2;
    })
    .await;
    s.sim.faults(json!({"latency_ms": 600, "ops": ["add_part", "get"]})).await;
    let r = s.upload(&bytes_of(PART * 2, 3), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT".into()));
    assert_eq!(r.header("x-chunkgate-parts-accepted"), "0");
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 1).await;
}

/// Opens an upload of `declared` bytes and sends only `sent` of them.
async fn stalled_upload(s: &Stack, declared: usize, sent: usize) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nContent-Length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&bytes_of(sent, 9)).await.unwrap();
    tcp
}

async fn read_answer(tcp: &mut tokio::net::TcpStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_and_nothing_is_left_behind() {
    let s = Stack::start(roomy_sim(), |c| c.upload.client_idle_timeout_ms = 300).await;
    let mut tcp = stalled_upload(&s, PART * 4, PART * 2 + 10).await;
    let answer = read_answer(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("CLIENT_BODY_TIMEOUT"), "{answer}");
    let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!((st["open"].as_u64(), st["committed"].as_u64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn new_uploads_during_a_drain_get_shutting_down() {
    let s = Stack::default().await;
    s.gw.gateway.uploads.start_draining();
    let r = s.upload(b"late", &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN".into()));
    assert!(!r.header("retry-after").is_empty());
    assert_eq!(s.sim.stats().await["requests"], 0);
}

#[tokio::test]
async fn thirty_concurrent_uploads_are_paced_under_the_burst_limit_with_zero_throttled_calls() {
    let mut sim = roomy_sim();
    sim.limits.burst_limit = 60;
    sim.limits.burst_window_secs = 1;
    // The gateway is configured with the same limits (Stack mirrors them).
    let s = Arc::new(Stack::start(sim, |_| {}).await);
    let started = Instant::now();
    // 30 x (create, 2 parts, checksum, commit) = 150 calls: unpaced they would all land in well
    // under a second, far over 60 per second.
    for (r, data) in concurrently(&s, 30, |_| PART * 3).await {
        s.assert_committed(&r, &data).await;
    }
    let st = s.sim.stats().await;
    assert_eq!(st["throttled"], 0, "{st}");
    assert_eq!(st["committed"], 30);
    assert!(started.elapsed().as_secs_f64() >= 1.0, "150 calls at 60/s cannot take under a second");
}

#[tokio::test]
async fn a_member_past_its_upload_quota_waits_its_turn_then_gets_gateway_busy() {
    let s = Stack::start(roomy_sim(), |c| {
        c.quota.uploads_per_member = 1;
        c.quota.wait_secs = 1;
    })
    .await;
    let mut first = stalled_upload(&s, PART * 2, PART + 5).await;
    s.sim.wait_stats(|st| st["created"] == 1).await;
    let busy = s.upload(b"second", &[]).await;
    assert_eq!((busy.status, code(&busy)), (StatusCode::SERVICE_UNAVAILABLE, "GATEWAY_BUSY".into()));
    assert_eq!(busy.header("retry-after"), "1");
    // The first commits, and holds the quota until it is used: still no room.
    first.write_all(&bytes_of(PART - 5, 10)).await.unwrap();
    let answer = read_answer(&mut first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let busy = s.upload(b"third", &[]).await;
    assert_eq!(code(&busy), "GATEWAY_BUSY", "a committed, unused upload still counts");
    assert_eq!(s.sim.stats().await["created"], 1, "nothing was created for the refused ones");
    // An envelope uses it; then the member has room again.
    let id = answer.lines().find_map(|l| l.strip_prefix("x-chunkgate-upload-id: ")).unwrap().trim().to_owned();
    let envelope = s.envelope(&[&id]).await;
    assert_eq!(envelope.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&envelope.body));
    let data = bytes_of(100, 2);
    let r = s.upload(&data, &[]).await;
    s.assert_committed(&r, &data).await;
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_upload_can_wait_gives_rate_limited_and_a_deferred_delete() {
    let mut sim = roomy_sim();
    sim.limits.hourly_limit = 4;
    let s = Stack::start(sim, |c| {
        // As if other clients had used the account: the gateway learns it from the upstream.
        c.rate_limit.hourly_limit = 100_000;
        c.rate_limit.max_wait_secs = 1;
    })
    .await;
    // Three seconds before the simulator's top of the hour, when its hourly count resets.
    let now = s.sim.control(Method::POST, "clock?advance_secs=0", Value::Null).await["now"].as_i64().unwrap();
    s.sim.advance_clock(3600 - now.rem_euclid(3600) - 3).await;
    let r = s.upload(&bytes_of(PART * 6, 4), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED".into()));
    let after: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=4).contains(&after), "retry-after {after}");
    // Once the hour turns, the deferred delete goes through.
    let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!((st["open"].as_u64(), st["committed"].as_u64()), (Some(0), Some(0)));
}

/// A failed upload whose delete the upstream refuses for a while: the delete goes on in the
/// background, and a SIGTERM meanwhile waits for it within the drain period (the process had
/// stopped at once and left the upload open upstream).
#[tokio::test]
async fn sigterm_waits_for_a_deferred_delete_within_the_drain_period() {
    let sim = SimApi::start(roomy_sim()).await;
    let mut gateway =
        Binary::serve(&sim, &[("CHUNKGATE_SERVER__DRAIN_SECS", "20"), ("CHUNKGATE_RETRY__MAX_ATTEMPTS", "2")], false);
    sim.faults(json!({"error_rate": 1.0, "ops": ["delete"]})).await;
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", gateway.url);
    let auth = format!("Bearer {TOKEN}");
    let digest = format!("sha-256=:{}:", "A".repeat(43) + "=");
    let headers =
        [("authorization", auth.as_str()), ("content-type", "application/pdf"), ("content-digest", digest.as_str())];
    let r = sim.http.send(Method::POST, &url, &headers, bytes_of(PART * 2, 7)).await.unwrap();
    assert_eq!(code(&r), "DIGEST_MISMATCH");
    assert_eq!(r.header("x-chunkgate-upload-deleted"), "deferred");
    gateway.signal("TERM");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(sim.stats().await["open"], 1, "the upstream still refuses the delete");
    sim.faults(json!({})).await;
    let status = gateway.wait().await;
    assert!(status.success(), "{status:?}");
    let st = sim.stats().await;
    assert_eq!((st["deleted"].as_u64(), st["open"].as_u64()), (Some(1), Some(0)), "{st}");
}

#[tokio::test]
async fn sigterm_lets_running_uploads_finish_then_cancels_and_deletes_the_rest() {
    let sim = SimApi::start(roomy_sim()).await;
    let mut gateway = Binary::serve(&sim, &[("CHUNKGATE_SERVER__DRAIN_SECS", "2")], false);
    let addr: std::net::SocketAddr = gateway.url.rsplit("//").next().unwrap().parse().unwrap();

    // One upload stalls mid-body; another is slow but complete.
    sim.faults(json!({"latency_ms": 200, "ops": ["create", "add_part", "get", "commit"]})).await;
    let send = |declared: usize, sent: usize, seed: u64| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {declared}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&bytes_of(sent, seed)).await.unwrap();
        tcp
    };
    let mut stalled = send(PART * 3, PART + 1, 1).await;
    let mut complete = send(PART * 2, PART * 2, 2).await;
    sim.wait_stats(|st| st["created"] == 2).await;
    gateway.signal("TERM");

    assert!(read_answer(&mut complete).await.starts_with("HTTP/1.1 200"), "finished within the grace period");
    let cancelled = read_answer(&mut stalled).await;
    assert!(cancelled.starts_with("HTTP/1.1 503") && cancelled.contains("SHUTTING_DOWN"), "{cancelled}");
    let status = gateway.wait().await;
    assert!(status.success(), "{status:?}");
    let st = sim.stats().await;
    assert_eq!((st["committed"].as_u64(), st["deleted"].as_u64(), st["open"].as_u64()), (Some(1), Some(1), Some(0)));
}

/// curl (`--http2-prior-knowledge`), sending `file` at `rate` bytes/s with `extra` arguments (from
/// a pipe, so without a length, if `piped`): its exit code and what it printed (the answer's head
/// and body, and its complaints).
async fn curl_h2(url: &str, file: &std::path::Path, piped: bool, rate: &str, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = ["-sS", "-D", "-", "--http2-prior-knowledge", "--limit-rate", rate]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
    let source = if piped { "-".to_owned() } else { file.display().to_string() };
    args.extend(["-H".into(), format!("Authorization: Bearer {TOKEN}"), "-T".into(), source]);
    args.push(url.to_owned());
    let stdin = std::fs::File::open(file).unwrap();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("curl").args(&args).stdin(stdin).output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// An HTTP/2 request refused half-way (an upload's document too large, a tus PATCH at the wrong
/// offset, a passthrough request the upstream answers before reading it) while the client is still
/// sending gets its answer: dropping the unread body had reset the stream right after the answer,
/// and curl reported "Stream error in the HTTP/2 framing layer" with no status at all.
#[tokio::test]
async fn an_http2_request_refused_half_way_hears_why_not_a_reset_stream() {
    let dir = std::env::temp_dir().join(format!("chunkgate-h2-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spool = dir.join("spool").display().to_string();
    let s = Stack::start(SimConfig::default(), move |c| {
        c.upload.max_document_bytes = 1 << 20;
        c.tus.dir = spool;
    })
    .await;
    let file = dir.join("doc.bin");
    std::fs::write(&file, bytes_of(4 << 20, 9)).unwrap();
    // Without a length (read from a pipe): refused once it passes the limit, mid-body.
    let args = ["-X", "POST", "-H", "Content-Type: application/pdf"];
    let (rc, text) = curl_h2(&s.upload_url(ACCOUNT), &file, true, "20M", &args).await;
    assert_eq!(rc, 0, "{text}");
    assert!(text.starts_with("HTTP/2 413") && text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    // A tus PATCH at the wrong offset, refused before its body is read.
    let created = s
        .http
        .send(
            Method::POST,
            &s.upload_url(ACCOUNT),
            &[("tus-resumable", "1.0.0"), ("upload-length", "1000000"), ("authorization", &format!("Bearer {TOKEN}"))],
            Vec::new(),
        )
        .await
        .unwrap();
    let url = format!("{}{}", s.gw.url(), created.header("location"));
    std::fs::write(&file, bytes_of(900_000, 9)).unwrap();
    let patch = [
        "-X",
        "PATCH",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Upload-Offset: 7",
        "-H",
        "Content-Type: application/offset+octet-stream",
    ];
    let (rc, text) = curl_h2(&url, &file, false, "2M", &patch).await;
    assert_eq!(rc, 0, "{text}");
    assert!(text.starts_with("HTTP/2 409") && text.contains("TUS_OFFSET_MISMATCH"), "{text}");
    // Passed through: the simulator refuses a POST to a part's URL without reading the body.
    let part_url = format!("{}/nope/1", s.upload_url(ACCOUNT));
    std::fs::write(&file, bytes_of(4 << 20, 9)).unwrap();
    let (rc, text) = curl_h2(&part_url, &file, false, "20M", &["-X", "POST"]).await;
    assert_eq!(rc, 0, "{text}");
    assert!(text.starts_with("HTTP/2 405"), "{text}");
    // Refused before any routing: a path outside the API, an account id that is not one, a tus
    // upload that does not exist.
    let gw = s.gw.url();
    for url in [
        format!("{gw}/foo"),
        format!("{gw}/restapi/v2.1/accounts/abc/chunked_uploads"),
        format!("{gw}/tus/uploads/{}", "0".repeat(32)),
    ] {
        let (rc, text) = curl_h2(&url, &file, false, "20M", &["-X", "POST", "-H", "Tus-Resumable: 1.0.0"]).await;
        assert_eq!(rc, 0, "{url}: {text}");
        assert!(text.starts_with("HTTP/2 4") && text.contains("errorCode"), "{url}: {text}");
    }
    // HEAD where the gateway answers itself: headers only (a body had the stream reset).
    let head = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(["-sS", "-I", "--http2-prior-knowledge", &format!("{gw}/foo")]).output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&head.stdout).into_owned() + &String::from_utf8_lossy(&head.stderr);
    assert!(head.status.success() && text.starts_with("HTTP/2 4"), "{text}");
    assert_eq!(s.sim.wait_stats(|st| st["open"] == 0).await["committed"], 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// An HTTP/2 client still sending its document when the drain period ends hears SHUTTING_DOWN,
/// as an HTTP/1.1 one does (curl had got a broken stream and no status).
#[tokio::test]
async fn an_http2_upload_still_sending_when_the_drain_ends_hears_shutting_down() {
    let sim = SimApi::start(roomy_sim()).await;
    let gateway = Binary::serve(&sim, &[("CHUNKGATE_SERVER__DRAIN_SECS", "1")], false);
    let dir = std::env::temp_dir().join(format!("chunkgate-h2-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("doc.bin");
    std::fs::write(&file, bytes_of(30 << 20, 5)).unwrap();
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", gateway.url);
    let args = ["-X", "POST", "-H", "Content-Type: application/pdf"];
    let sending = {
        let (url, file) = (url.clone(), file.clone());
        tokio::spawn(async move { curl_h2(&url, &file, false, "2M", &args).await })
    };
    sim.wait_stats(|st| st["created"] == 1).await;
    gateway.signal("TERM");
    let (rc, text) = sending.await.unwrap();
    assert_eq!(rc, 0, "{text}");
    assert!(text.starts_with("HTTP/2 503") && text.contains("SHUTTING_DOWN"), "{text}");
    let mut gateway = gateway;
    assert!(gateway.wait().await.success());
    let st = sim.wait_stats(|st| st["open"] == 0).await;
    assert_eq!(st["deleted"], 1, "{st}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// HTTP/2 clients that leave during the drain: their uploads' cleanup (a delete each, slow here)
/// runs in tasks of the connection's event loop, and the loop had ended with its last connection,
/// dropping them half-way: uploads were left open upstream.
#[tokio::test]
async fn uploads_whose_http2_client_leaves_during_the_drain_are_still_deleted() {
    use crate::clients::{h2_raw, h2_send};
    let sim = SimApi::start(roomy_sim()).await;
    let mut gateway = Binary::serve(&sim, &[("CHUNKGATE_SERVER__DRAIN_SECS", "10")], false);
    let addr: std::net::SocketAddr = gateway.url.rsplit("//").next().unwrap().parse().unwrap();
    let mut client = h2_raw(addr).await;
    let mut streams = Vec::new();
    for i in 0..6 {
        let req = http::Request::post(format!("http://{addr}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/pdf")
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (answer, mut stream) = client.send_request(req, false).unwrap();
        h2_send(&mut stream, bytes::Bytes::from(bytes_of(PART * 2 + 1, i)), false).await;
        streams.push((answer, stream));
    }
    sim.wait_stats(|st| st["created"] == 6).await;
    sim.faults(json!({"latency_ms": 700, "ops": ["delete"]})).await;
    gateway.signal("TERM");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The client goes away: its connection closes, and with it the last one of the event loop.
    drop((client, streams));
    assert!(gateway.wait().await.success());
    let st = sim.stats().await;
    assert_eq!((st["deleted"].as_u64(), st["open"].as_u64()), (Some(6), Some(0)), "{st}");
}

/// An HTTP/2 client that had its answer, then goes silent (it never answers the server's goodbye
/// PING), does not hold a stopping server until the cleanup time runs out (45 s): the connection is
/// dropped once it has had no request running for a few seconds.
#[tokio::test]
async fn a_silent_http2_client_does_not_hold_the_shutdown() {
    let sim = SimApi::start(roomy_sim()).await;
    let mut gateway = Binary::serve(&sim, &[("CHUNKGATE_SERVER__DRAIN_SECS", "1")], false);
    let addr: std::net::SocketAddr = gateway.url.rsplit("//").next().unwrap().parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The preface, empty SETTINGS, then HEADERS (END_STREAM | END_HEADERS) on stream 1 for
    // `GET /` over http, from HPACK's static table (0x82 :method GET, 0x86 :scheme http, 0x84 :path /).
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 3, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    tcp.write_all(&hello).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0, "the server answers");
    // Nothing more is read or written; the socket stays open.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    gateway.signal("TERM");
    assert!(gateway.wait().await.success());
    let took = stopping.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "the process took {took:?} to stop");
    drop(tcp);
}

/// An HTTP/1.1 client still sending when the drain ends, and reading only once it has sent
/// everything, hears SHUTTING_DOWN (the answered connection's socket lingers, reading what the
/// client still sends, before the process exits; on this kernel the answer also survived the reset
/// of a socket closed unread, so this pins the outcome, not the lingering).
#[tokio::test]
async fn an_http1_client_sending_past_the_drain_then_reading_hears_shutting_down() {
    let sim = SimApi::start(roomy_sim()).await;
    let mut gateway = Binary::serve(&sim, &[("CHUNKGATE_SERVER__DRAIN_SECS", "1")], false);
    let addr: std::net::SocketAddr = gateway.url.rsplit("//").next().unwrap().parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let len = 24 << 20;
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nContent-Length: {len}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = bytes_of(256 << 10, 4);
    tcp.write_all(&chunk).await.unwrap();
    sim.wait_stats(|st| st["created"] == 1).await;
    gateway.signal("TERM");
    // Sends the rest slowly past the drain's end (about 2.5 s), reading nothing meanwhile.
    let mut sent = chunk.len();
    while sent < len {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        let n = chunk.len().min(len - sent);
        if tcp.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), tcp.read_to_end(&mut answer)).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && text.starts_with("HTTP/1.1 503") && text.contains("SHUTTING_DOWN"),
        "{read:?} after {sent} bytes: {text}"
    );
    assert!(gateway.wait().await.success());
    assert_eq!(sim.wait_stats(|st| st["open"] == 0).await["deleted"], 1);
}
