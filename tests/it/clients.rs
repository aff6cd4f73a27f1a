//! What real and hostile clients do: HTTP/2, bodies that end early or never, clients that leave
//! before the answer, silent connections, hidden accounts, unknown transfer codings, and callers
//! that queue too much. One test per behaviour, through real servers on 127.0.0.1:0.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkgate::{
    body::Body,
    sim::{SimConfig, config::LimitOverrides},
};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::*;

/// Sends raw bytes and returns what comes back until the peer closes (or 5 s pass).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/2 client with prior knowledge (h2c), as `curl --http2-prior-knowledge` or httpx.
fn h2c() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    req: Request<Body>,
) -> (Version, Resp) {
    let resp = client.request(req).await.unwrap();
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (version, Resp { status: parts.status, headers: parts.headers, body })
}

#[tokio::test]
async fn http2_prior_knowledge_streams_uploads_and_passes_requests_through() {
    let s = Stack::default().await;
    let client = h2c();
    let auth = format!("Bearer {TOKEN}");
    for (i, (len, declared)) in [(PART * 5 + 7, true), (PART * 3 + 1, false), (10, true)].into_iter().enumerate() {
        let data = bytes_of(len, 300 + i as u64);
        let mut req = Request::post(s.upload_url(ACCOUNT))
            .header("authorization", &auth)
            .header("content-type", "application/pdf");
        let body = if declared {
            req = req.header("content-length", len);
            chunkgate::body::full(data.clone())
        } else {
            chunked(Bytes::from(data.clone()), 10_000)
        };
        let (version, r) = send(&client, req.body(body).unwrap()).await;
        assert_eq!(version, Version::HTTP_2);
        let id = s.assert_committed(&r, &data).await;
        // The passthrough over the same protocol.
        let get = Request::get(format!("{}/{id}", s.upload_url(ACCOUNT)))
            .header("authorization", &auth)
            .body(chunkgate::body::empty())
            .unwrap();
        let (version, r) = send(&client, get).await;
        assert_eq!((version, r.status), (Version::HTTP_2, StatusCode::OK));
        assert_eq!(r.json()["committed"], "true");
    }
    // Many streams at once on one connection.
    let uploads: Vec<_> = (0..6)
        .map(|i| {
            let (client, url, auth) = (client.clone(), s.upload_url(ACCOUNT), auth.clone());
            let data = bytes_of(PART * 2 + i, 400 + i as u64);
            tokio::spawn(async move {
                let req = Request::post(url)
                    .header("authorization", auth)
                    .header("content-type", "application/pdf")
                    .body(chunkgate::body::full(data.clone()))
                    .unwrap();
                (send(&client, req).await.1, data)
            })
        })
        .collect();
    for u in uploads {
        let (r, data) = u.await.unwrap();
        s.assert_committed(&r, &data).await;
    }
    assert_eq!(s.sim.stats().await["open"], 0);
}

/// A raw HTTP/2 connection to `addr`, for what hyper's client does not do: reset a stream with
/// a chosen reason after sending part of its body.
pub(crate) async fn h2_raw(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    client.ready().await.unwrap()
}

/// Sends `data` on `stream`, within the flow-control window the peer grants.
pub(crate) async fn h2_send(stream: &mut h2::SendStream<Bytes>, mut data: Bytes, end: bool) {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await.unwrap().unwrap();
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, end && data.is_empty()).unwrap();
    }
}

#[tokio::test]
async fn an_http2_body_reset_with_no_error_is_never_committed() {
    let s = Stack::default().await;
    s.sim.faults(json!({"latency_ms": 50, "ops": ["add_part", "get", "commit"]})).await;
    for (round, declared) in [Some(1024 * 1024), None].into_iter().enumerate() {
        let mut client = h2_raw(s.gw.addr).await;
        let mut req = Request::post(s.upload_url(ACCOUNT))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/pdf");
        if let Some(len) = declared {
            req = req.header("content-length", len);
        }
        let (answer, mut stream) = client.send_request(req.body(()).unwrap(), false).unwrap();
        h2_send(&mut stream, Bytes::from(bytes_of(300 * 1024, 7)), false).await;
        // Once the upload exists upstream, the client stops: RST_STREAM(NO_ERROR), which hyper
        // hands to the body as a clean end.
        s.sim.wait_stats(|st| st["created"] == round as u64 + 1).await;
        stream.send_reset(h2::Reason::NO_ERROR);
        drop(answer);
        let st = s.sim.wait_stats(|st| st["deleted"] == round as u64 + 1).await;
        assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(0), Some(0)), "declared {declared:?}: {st}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_has_nothing_committed() {
    let s = Stack::default().await;
    // Slow enough that the client is gone before the commit.
    s.sim.faults(json!({"latency_ms": 300, "ops": ["add_part", "get", "commit"]})).await;
    let data = bytes_of(PART * 2 + 5, 11);
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    // HTTP/1.1: the whole body, then the connection closed; then the same with only the sending
    // side shut (a half-close is taken as the client leaving).
    for (round, half) in [false, true].into_iter().enumerate() {
        let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&data).await.unwrap();
        s.sim.wait_stats(|st| st["created"] == round as u64 + 1).await;
        if half {
            tcp.shutdown().await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
            assert!(answer.is_empty(), "a half-closed client got {}", String::from_utf8_lossy(&answer));
        } else {
            drop(tcp);
        }
        let st = s.sim.wait_stats(|st| st["deleted"] == round as u64 + 1).await;
        assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(0), Some(0)), "half-close {half}: {st}");
    }
    // HTTP/2: the whole body with END_STREAM, then RST_STREAM(CANCEL) before the answer.
    let mut client = h2_raw(s.gw.addr).await;
    let req = Request::post(s.upload_url(ACCOUNT))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-length", data.len())
        .body(())
        .unwrap();
    let (answer, mut stream) = client.send_request(req, false).unwrap();
    h2_send(&mut stream, Bytes::from(data.clone()), true).await;
    s.sim.wait_stats(|st| st["created"] == 3).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(answer);
    let st = s.sim.wait_stats(|st| st["deleted"] == 3).await;
    assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(0), Some(0)), "{st}");
    // A client that stays hears its answer as before.
    let r = s.upload(&data, &[]).await;
    s.assert_committed(&r, &data).await;
}

#[tokio::test]
async fn silent_connections_are_closed_and_a_full_listener_is_not_ready() {
    let s = Stack::start(SimConfig::default(), |c| {
        c.server.max_connections = 4;
        c.server.header_read_timeout_ms = 1500;
    })
    .await;
    let admin = format!("http://{}", s.gw.admin_addr);
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(s.gw.addr).await.unwrap());
    }
    // Accepted, counted, and saying nothing: the listener is full.
    let started = Instant::now();
    loop {
        let r = s.http.send(Method::GET, &format!("{admin}/readyz"), &[], "").await.unwrap();
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.body.as_ref(), b"saturated\n");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "never saturated: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A real client is served once the silent ones are let go (idle ones make room when full).
    let served = tokio::time::timeout(
        Duration::from_secs(4),
        raw(s.gw.addr, format!("GET /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/ABC HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes()),
    )
    .await
    .expect("a client was locked out by silent connections");
    assert!(served.starts_with("HTTP/1.1 404"), "{served}");
    for mut tcp in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(4), tcp.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "a silent connection stayed open: {n:?}");
    }
    assert_eq!(s.http.send(Method::GET, &format!("{admin}/readyz"), &[], "").await.unwrap().status, StatusCode::OK);

    // The admin listener: 64 silent sockets do not keep /healthz from answering in time.
    let mut hogs = Vec::new();
    for _ in 0..64 {
        hogs.push(TcpStream::connect(s.gw.admin_addr).await.unwrap());
    }
    let healthz = format!("{admin}/healthz");
    // A fresh client: no pooled connection to reuse, as `chunkgate healthcheck` has none.
    let fresh = Http::new();
    let probe = tokio::time::timeout(Duration::from_secs(3), fresh.send(Method::GET, &healthz, &[], ""));
    let r = probe.await.expect("/healthz did not answer within 3 s").unwrap();
    assert_eq!(r.status, StatusCode::OK);
    drop(hogs);
}

#[tokio::test]
async fn only_connections_count_against_the_listener_not_the_threads_waiting_to_accept() {
    // Four event loops, each waiting to accept: none of them holds a slot of the two.
    let s = Stack::start(SimConfig::default(), |c| {
        c.server.max_connections = 2;
        c.server.worker_threads = 4;
    })
    .await;
    let readyz = format!("http://{}/readyz", s.gw.admin_addr);
    let ready = async || s.http.send(Method::GET, &readyz, &[], "").await.unwrap();
    let r = ready().await;
    assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, &b"ready\n"[..]), "an idle gateway is ready");
    // One client of two: still ready, and served.
    let one = TcpStream::connect(s.gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready().await.status, StatusCode::OK, "one connection of two made the listener full");
    let mut two = TcpStream::connect(s.gw.addr).await.unwrap();
    let request = format!(
        "GET /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/ABC HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    two.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(2), two.read_exact(&mut answer)).await.expect("served").unwrap();
    assert_eq!(&answer, b"HTTP/1.1 404");
    // Two of two: full.
    let r = ready().await;
    assert_eq!((r.status, r.body.as_ref()), (StatusCode::SERVICE_UNAVAILABLE, &b"saturated\n"[..]));
    drop((one, two));
}

#[tokio::test]
async fn an_account_behind_a_second_version_segment_cannot_pass_the_allowlist() {
    let s = Stack::start(SimConfig::default(), |c| c.server.allowed_accounts = vec![ACCOUNT.into()]).await;
    let auth = format!("Bearer {TOKEN}");
    let base = s.gw.url();
    let sneaky = format!("{base}/restapi/v2.1/accounts/{ACCOUNT}/x/v2.1/accounts/43/chunked_uploads");
    let h = [("authorization", auth.as_str()), ("content-type", "application/pdf")];
    let r = s.http.send(Method::POST, &sneaky, &h, "doc").await.unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "INVALID_PATH".to_owned()));
    let r = s.http.send(Method::GET, &format!("{sneaky}/ABC"), &h, "").await.unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "INVALID_PATH".to_owned()));
    // Another account, named plainly, is refused as before; the allowed one works.
    let r = s.http.send(Method::POST, &s.upload_url("43"), &h, "doc").await.unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::FORBIDDEN, "ACCOUNT_NOT_ALLOWED".to_owned()));
    assert_eq!(s.sim.stats().await["requests"], 0, "nothing reached the upstream");
    s.assert_committed(&s.upload(b"doc", &[]).await, b"doc").await;
}

#[tokio::test]
async fn a_create_whose_outcome_is_unknown_is_sent_only_once() {
    let s = Stack::default().await;
    // Stored, then the connection dropped: the upload exists, its id was never seen.
    s.sim.faults(json!({"drop_after_store_next": 1, "ops": ["create"]})).await;
    let r = s.upload(&bytes_of(PART + 1, 1), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPLOAD_OUTCOME_UNKNOWN".to_owned()));
    assert!(r.json()["message"].as_str().unwrap().contains("until it expires"), "{:?}", r.json());
    let st = s.sim.stats().await;
    assert_eq!((st["created"].as_u64(), st["requests"].as_u64()), (Some(1), Some(1)), "{st}");
    // A 5xx to a create is as ambiguous: one attempt.
    s.sim.faults(json!({"error_next": 1, "ops": ["create"]})).await;
    let r = s.upload(&bytes_of(10, 2), &[]).await;
    assert_eq!(code(&r), "UPLOAD_OUTCOME_UNKNOWN");
    assert_eq!(s.sim.stats().await["requests"], 2);
    // Throttling says nothing was done: that create is sent again.
    s.sim.faults(json!({"throttle_next": 1, "ops": ["create"]})).await;
    let data = bytes_of(10, 3);
    s.assert_committed(&s.upload(&data, &[]).await, &data).await;
}

#[tokio::test]
async fn a_dripping_body_is_cut_off_at_the_uploads_deadline() {
    // Uploads live 6 s; commit and checksum read may take 1 s each: the body must end within 4 s.
    let mut sim = SimConfig::default();
    sim.accounts.insert(ACCOUNT.into(), LimitOverrides { lifetime_secs: Some(6), ..Default::default() });
    let s = Stack::start(sim, |c| {
        c.upload.client_idle_timeout_ms = 1000;
        c.upstream.commit_timeout_ms = 1000;
        c.upstream.call_timeout_ms = 1000;
    })
    .await;
    let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        PART * 4
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&bytes_of(PART + 10, 5)).await.unwrap();
    s.sim.wait_stats(|st| st["created"] == 1).await;
    let created = Instant::now();
    // One byte every 300 ms: never idle for 1 s, never done.
    let (mut read, mut write) = tcp.into_split();
    let drip = tokio::spawn(async move {
        while write.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    drip.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("CLIENT_BODY_TIMEOUT") && answer.contains("deadline"), "{answer}");
    let waited = created.elapsed();
    assert!(waited < Duration::from_secs(6), "cut off only after {waited:?}, past the upload's expiry");
    let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!(st["open"], 0);
}

#[tokio::test]
async fn an_answer_without_a_checksum_is_checked_by_size_named_and_counted_or_refused() {
    let s = Stack::default().await;
    s.sim.faults(json!({"omit_checksum": true})).await;
    let data = bytes_of(PART * 3 + 9, 21);
    let r = s.upload(&data, &[]).await;
    s.assert_committed(&r, &data).await;
    assert_eq!(r.header("x-chunkgate-checksum"), "unverified");
    // With a checksum, as before.
    s.sim.faults(json!({})).await;
    let r = s.upload(&data, &[]).await;
    assert_eq!(r.header("x-chunkgate-checksum"), "verified");

    let strict = Stack::start(SimConfig::default(), |c| c.upload.require_upstream_checksum = true).await;
    strict.sim.faults(json!({"omit_checksum": true})).await;
    let r = strict.upload(&data, &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_CHECKSUM_MISSING".to_owned()));
    let st = strict.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused_before_any_upstream_call() {
    let s = Stack::default().await;
    for (method, path) in [
        ("POST", format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads")),
        ("PUT", format!("/restapi/v2.1/accounts/{ACCOUNT}/envelopes/E1")),
    ] {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let answer = raw(s.gw.addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
        assert!(answer.contains("UNSUPPORTED_TRANSFER_CODING"), "{answer}");
    }
    assert_eq!(s.sim.stats().await["requests"], 0);
}

#[tokio::test]
async fn passthrough_requests_are_bounded_per_caller_and_per_account() {
    for (per_caller, per_account) in [(2, 100), (100, 2)] {
        let s = Stack::start(SimConfig::default(), |c| {
            c.server.max_passthrough_per_caller = per_caller;
            c.server.max_passthrough_per_account = per_account;
        })
        .await;
        s.sim.faults(json!({"latency_ms": 400, "ops": ["get"]})).await;
        let auth = format!("Bearer {TOKEN}");
        let url = format!("{}/ABC", s.upload_url(ACCOUNT));
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (http, url, auth) = (s.http.clone(), url.clone(), auth.clone());
                tokio::spawn(
                    async move { http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap() },
                )
            })
            .collect();
        let mut statuses = Vec::new();
        for c in calls {
            let r = c.await.unwrap();
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(code(&r), "GATEWAY_BUSY");
            }
            statuses.push(r.status);
        }
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::NOT_FOUND, StatusCode::NOT_FOUND, StatusCode::SERVICE_UNAVAILABLE],
            "per caller {per_caller}, per account {per_account}"
        );
    }
    // The account's bound does not hold up another account.
    let s = Stack::start(SimConfig::default(), |c| c.server.max_passthrough_per_account = 1).await;
    s.sim.faults(json!({"latency_ms": 400, "ops": ["get"]})).await;
    let auth = format!("Bearer {TOKEN}");
    let busy = {
        let (http, url, auth) = (s.http.clone(), format!("{}/ABC", s.upload_url(ACCOUNT)), auth.clone());
        tokio::spawn(async move { http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap() })
    };
    s.sim.wait_stats(|st| st["requests"] == 1).await;
    let same = s
        .http
        .send(Method::GET, &format!("{}/ABC", s.upload_url(ACCOUNT)), &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(same.status, StatusCode::SERVICE_UNAVAILABLE);
    let other = s
        .http
        .send(Method::GET, &format!("{}/ABC", s.upload_url("999")), &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::NOT_FOUND, "another account waits for nobody");
    assert_eq!(busy.await.unwrap().status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn errors_name_what_happened_and_always_carry_a_body() {
    let s = Stack::start(SimConfig::default(), |c| {
        c.upload.client_idle_timeout_ms = 300;
        c.retry.max_attempts = 2;
    })
    .await;
    // A failed upload whose delete fails too: the answer says it may remain, and the delete is
    // tried again in the background (it had been given up: the upload stayed open upstream).
    s.sim.faults(json!({"error_rate": 1.0, "ops": ["delete"]})).await;
    let r =
        s.upload(&bytes_of(PART * 2, 1), &[("content-digest", &format!("sha-256=:{}:", "A".repeat(43) + "="))]).await;
    assert_eq!(code(&r), "DIGEST_MISMATCH");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("may remain until it expires") && !message.contains("was deleted"), "{message}");
    assert_eq!(r.header("x-chunkgate-upload-deleted"), "deferred");
    assert_eq!(s.sim.stats().await["open"], 1);
    s.sim.faults(json!({})).await;
    let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!(st["open"], 0, "{st}");

    // Passthrough (a JSON part the client sends itself, whose body the upstream reads): a malformed
    // chunked body is the client's 400, with no transport detail.
    let path = format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/ABC/1");
    let bad = format!(
        "PUT {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    );
    let answer = raw(s.gw.addr, bad.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("CLIENT_BODY_ERROR"), "{answer}");
    assert!(!answer.contains("hyper") && !answer.contains("Invalid"), "transport detail leaked: {answer}");
    // A stalled passthrough body is the client's 408, not the upstream's 504.
    let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    let stalled = format!(
        "PUT {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":"
    );
    tcp.write_all(stalled.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("CLIENT_BODY_TIMEOUT"), "{answer}");

    // Framing hyper refuses by itself still gets a body in the upstream's shape.
    for head in [
        format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 12abc\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nnot a header line\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n", "a".repeat(600_000)),
    ] {
        let answer = raw(s.gw.addr, head.as_bytes()).await;
        let (status_line, rest) = answer.split_once("\r\n").unwrap();
        assert!(status_line.starts_with("HTTP/1.1 4"), "{answer}");
        let (head, body) = rest.split_once("\r\n\r\n").unwrap();
        // Every answer names a request id, these too (a new one: the client's could not be read).
        assert!(head.to_ascii_lowercase().contains("x-request-id: "), "{answer}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert!(v["errorCode"].as_str().is_some_and(|c| c == "BAD_REQUEST" || c == "HEADERS_TOO_LARGE"), "{answer}");
    }
    assert_eq!(s.sim.stats().await["created"], 1, "none of the malformed requests reached the upstream");
}

#[tokio::test]
async fn html_pages_from_the_upstreams_front_end_are_classified_by_status() {
    let mut sim = SimConfig::default();
    sim.limits.burst_window_secs = 1; // a throttling pause lasts until the next window
    let s = Stack::start(sim, |_| {}).await;
    // 503 and 429 pages on parts: retried, and the upload commits.
    for fault in [json!({"error_next": 2}), json!({"throttle_next": 2})] {
        let mut f = fault.clone();
        f["html_errors"] = true.into();
        f["ops"] = json!(["add_part"]);
        s.sim.faults(f).await;
        let data = bytes_of(PART * 3, 8);
        s.assert_committed(&s.upload(&data, &[]).await, &data).await;
    }
    // A 413 page (the front end's size cap): the client gets the gateway's JSON error.
    let capped = Stack::start(SimConfig { max_request_bytes: 50_000, ..SimConfig::default() }, |_| {}).await;
    let r = capped.upload(&bytes_of(PART, 3), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_REFUSED".to_owned()));
    assert!(r.header("content-type").starts_with("application/json"));
}

#[tokio::test]
async fn parts_stay_within_the_upstreams_request_cap_whatever_part_size_is_configured() {
    let cap = 100_000;
    let s = Stack::start(SimConfig { max_request_bytes: cap, ..SimConfig::default() }, |c| {
        c.upstream.max_request_bytes = cap as usize;
        c.upload.part_size = 1024 * 1024;
        c.upload.max_part_bytes = 4 * 1024 * 1024;
        c.upload.memory_budget_bytes = 64 * 1024 * 1024;
    })
    .await;
    let data = bytes_of(400_000, 4);
    let r = s.upload(&data, &[]).await;
    s.assert_committed(&r, &data).await;
    let parts: usize = r.header("x-chunkgate-parts").parse().unwrap();
    assert!(parts >= 6, "{parts} parts: each under {cap} bytes of request body");
}

/// The simulator behind an upstream that answers what `meddle` picks itself.
async fn lying(
    sim: SimConfig,
    meddle: impl Fn(&Method, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (Stack, Meddled) {
    let sim = SimApi::start(sim).await;
    let (url, meddled) = meddler(sim.running.url(), meddle).await;
    (Stack::in_front_of(sim, url, |c| c.retry.max_attempts = 2).await, meddled)
}

#[tokio::test]
async fn a_commit_answered_2xx_without_a_committed_upload_is_not_believed() {
    // The last: the answer of a committed upload, but another one (the client would have been
    // handed an id that names nothing it sent).
    let other = r#"{"chunkedUploadId":"11111111-2222-3333-4444-555555555555","committed":"true"}"#;
    // And one that names the upload by its id but another by the URI the client would use.
    let other_uri = |id: &str| {
        format!(
            r#"{{"chunkedUploadId":"{id}","chunkedUploadUri":"docusignchunkedupload://11111111-2222-3333-4444-555555555555","committed":"true"}}"#
        )
    };
    for body in ["<html><body>OK</body></html>", "{}", r#"{"errorCode":"X","message":"y"}"#, other, "uri"] {
        let (s, meddled) = lying(SimConfig::default(), move |m, path| {
            if !(m == Method::PUT && path.contains("action=commit")) {
                return None;
            }
            let text = match body {
                "uri" => other_uri(path.rsplit('/').next()?.split('?').next()?),
                _ => body.to_owned(),
            };
            Some(answer("200 OK", "text/html", &text))
        })
        .await;
        let r = s.upload(&bytes_of(PART * 2, 1), &[]).await;
        assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_BAD_RESPONSE".to_owned()), "{body}");
        assert!(r.header("content-type").starts_with("application/json"), "the page never reaches the client");
        assert!(meddled.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
        assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(0), Some(0)), "{body}: {st}");
    }
}

/// A part answered 2xx with a body that is not the upload (cut short, not JSON, empty) is looked up
/// rather than taken as a failure: not held, it is sent again, and the upload commits whole
/// (before: the upload failed with UPSTREAM_BAD_RESPONSE and was deleted).
#[tokio::test]
async fn a_part_answered_2xx_unreadably_is_looked_up_and_sent_again() {
    for body in [r#"{"chunkedUploadId":"#, "OK", ""] {
        let lied = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let once = lied.clone();
        let (s, meddled) = lying(SimConfig::default(), move |m, path| {
            let part = m == Method::PUT && path.ends_with("/1") && !path.contains('?');
            (part && !once.swap(true, std::sync::atomic::Ordering::Relaxed))
                .then(|| answer("200 OK", "application/json", body))
        })
        .await;
        let data = bytes_of(PART * 3, 7);
        let r = s.upload(&data, &[]).await;
        s.assert_committed(&r, &data).await;
        assert_eq!(meddled.load(std::sync::atomic::Ordering::Relaxed), 1, "{body:?}");
    }
}

/// A passthrough whose upstream stops taking the body half-way, or stalls in the middle of a
/// create's answer, is answered `UPSTREAM_TIMEOUT` within the call timeout of the stall, and frees
/// the caller's slot (before: the first waited forever, the client's idle timer never running
/// while the upstream asked for nothing; the second held the slot and the answer for good).
#[tokio::test]
async fn a_passthrough_upstream_that_stops_reading_or_stalls_its_answer_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Takes each connection and reads a little of it: the rest of the body waits in the
    // gateway's socket. A create (the body names "create") is read whole and answered with its
    // head and the start of its body, then nothing.
    let upstream = tokio::net::TcpSocket::new_v4().unwrap();
    upstream.set_recv_buffer_size(4096).unwrap();
    upstream.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = upstream.local_addr().unwrap().port();
    let upstream = upstream.listen(64).unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut socket, _)) = upstream.accept().await {
            let mut head = vec![0u8; 2048];
            let n = socket.read(&mut head).await.unwrap_or(0);
            if String::from_utf8_lossy(&head[..n]).contains("create") {
                let _ = socket.write_all(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"chunked").await;
            }
            open.push(socket);
        }
    });
    let sim = SimApi::start(SimConfig::default()).await;
    let s = Stack::in_front_of(sim, format!("http://127.0.0.1:{port}"), |c| {
        c.upstream.call_timeout_ms = 500;
        c.server.max_passthrough_per_caller = 1;
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let envelopes = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes", s.gw.url());
    let body = format!(r#"{{"emailSubject":"{}"}}"#, "x".repeat(16 << 20));
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), s.http.send(Method::POST, &envelopes, &json, body))
        .await
        .expect("no answer: the upstream stopped reading the body")
        .unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let create = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", s.gw.url());
    let r = tokio::time::timeout(Duration::from_secs(20), s.http.send(Method::POST, &create, &json, r#"{"create":1}"#))
        .await
        .expect("no answer: the create's answer stalled")
        .unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT".to_owned()));
    // The caller's one passthrough slot is free again.
    let r = s.http.send(Method::POST, &create, &json, r#"{"create":2}"#).await.unwrap();
    assert_eq!(code(&r), "UPSTREAM_TIMEOUT");
    held.abort();
}

/// A passthrough client that pauses longer than the call timeout (but within its idle time) is
/// waited for: the upstream is asking for more, so it is not taken for one that stopped reading.
#[tokio::test]
async fn a_slow_passthrough_client_is_not_taken_for_a_stalled_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start(SimConfig::default(), |c| {
        c.upstream.call_timeout_ms = 300;
        c.upload.client_idle_timeout_ms = 5_000;
    })
    .await;
    let body = format!(r#"{{"emailSubject":"{}","status":"created","documents":[]}}"#, "x".repeat(1000));
    let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/envelopes HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body.as_bytes()[..500]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tcp.write_all(&body.as_bytes()[500..]).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

/// An upstream that answers a create with the id of another upload this gateway holds (here one
/// it committed) has the new upload refused, and the other left as it is: its cleanup would have
/// deleted the committed upload of another client.
#[tokio::test]
async fn a_create_answered_with_the_id_of_another_upload_leaves_that_upload_alone() {
    let held: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let reused = held.clone();
    let (s, _) = lying(SimConfig::default(), move |m, path| {
        let id = reused.lock().unwrap().clone()?;
        let created = format!(
            r#"{{"chunkedUploadId":"{id}","chunkedUploadUri":"docusignchunkedupload://{id}","committed":"false","chunkedUploadParts":[{{"sequence":"0","size":"65536"}}],"totalSize":"65536"}}"#
        );
        (m == Method::POST && path.ends_with("/chunked_uploads")).then(|| answer("201 Created", "application/json", &created))
    })
    .await;
    let first = bytes_of(PART * 2, 1);
    let r = s.upload(&first, &[]).await;
    s.assert_committed(&r, &first).await;
    *held.lock().unwrap() = Some(r.header("x-chunkgate-upload-id").to_owned());
    let r = s.upload(&bytes_of(PART * 2, 2), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_BAD_RESPONSE".to_owned()));
    assert!(r.json()["message"].as_str().unwrap().contains("expires"), "says an upload may remain");
    let st = s.sim.stats().await;
    assert_eq!((st["committed"].as_u64(), st["deleted"].as_u64()), (Some(1), Some(0)), "{st}");
}

/// A create answered 2xx with a resource that cannot be read but that names an upload in the
/// shape of an id: that upload is deleted, not left open. Numbers where strings belong; JSON cut
/// short, or followed by other bytes; a body that breaks off before its declared length.
#[tokio::test]
async fn an_unreadable_create_answer_that_names_an_upload_has_it_deleted() {
    let shapes: [fn(&str) -> Vec<u8>; 4] = [
        |id| {
            let body = format!(
                r#"{{"chunkedUploadId":"{id}","committed":"false","maxChunkedUploadParts":128,"totalSize":65536,"chunkedUploadParts":[{{"sequence":"0","size":"65536"}}]}}"#
            );
            answer("201 Created", "application/json", &body)
        },
        |id| answer("201 Created", "application/json", &format!(r#"{{"chunkedUploadId" : "{id}","committed":"fal"#)),
        |id| {
            answer(
                "201 Created",
                "application/json",
                &format!(r#"{{"chunkedUploadId":"{id}","committed":"false"}} and more"#),
            )
        },
        |id| {
            let body = format!(r#"{{"chunkedUploadId":"{id}","committed":"false"}}"#);
            let head = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nconnection: close\r\n";
            format!("{head}content-length: {}\r\n\r\n{body}", body.len() + 100).into_bytes()
        },
    ];
    for (n, shape) in shapes.into_iter().enumerate() {
        let sim = SimApi::start(SimConfig::default()).await;
        let id = sim.create_id(b"made by the create the gateway cannot read").await;
        let (url, _) = meddler(sim.running.url(), move |m, path| {
            (m == Method::POST && path.ends_with("/chunked_uploads")).then(|| shape(&id))
        })
        .await;
        let s = Stack::in_front_of(sim, url, |c| c.retry.max_attempts = 2).await;
        let r = s.upload(&bytes_of(PART * 2, 1), &[]).await;
        assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_BAD_RESPONSE".to_owned()), "shape {n}");
        let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
        assert_eq!(st["open"], 0, "shape {n}: {st}");
    }
}

#[tokio::test]
async fn upload_ids_from_the_upstream_are_used_only_in_the_shape_of_an_id() {
    for id in ["../../43/chunked_uploads/X", "ABC?action=commit", "A B", "ABC#frag", &"A".repeat(65)] {
        let created = format!(
            r#"{{"chunkedUploadId":"{id}","committed":"false","chunkedUploadParts":[{{"sequence":"0","size":"65536"}}]}}"#
        );
        let (s, meddled) = lying(SimConfig::default(), move |m, _| {
            (m == Method::POST).then(|| answer("201 Created", "application/json", &created))
        })
        .await;
        let r = s.upload(&bytes_of(PART * 2, 1), &[]).await;
        assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_BAD_RESPONSE".to_owned()), "{id}");
        assert!(r.json()["message"].as_str().unwrap().contains("expires"), "{id}: says an upload may remain");
        assert_eq!(meddled.load(std::sync::atomic::Ordering::Relaxed), 1, "{id}: one create, no call after it");
        assert_eq!(s.sim.stats().await["requests"], 0, "{id}: nothing reached the upstream's API with that id");
    }
}

#[tokio::test]
async fn an_upload_given_too_little_time_to_live_is_deleted_at_once() {
    let mut sim = SimConfig::default();
    sim.accounts.insert(ACCOUNT.into(), LimitOverrides { lifetime_secs: Some(5), ..Default::default() });
    let s = Stack::start(sim, |_| {}).await;
    let r = s.upload(&bytes_of(PART * 3, 2), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPLOAD_EXPIRING".to_owned()));
    assert_eq!(r.header("x-chunkgate-upload-deleted"), "true");
    let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!((st["committed"].as_u64(), st["open"].as_u64(), st["requests"].as_u64()), (Some(0), Some(0), Some(2)));
}

#[tokio::test]
async fn limits_and_outcomes_are_named_as_they_are() {
    // A part limit of 1: the document can hold part 0 alone.
    let mut sim = SimConfig::default();
    sim.accounts.insert(ACCOUNT.into(), LimitOverrides { max_parts: Some(1), ..Default::default() });
    let s = Stack::start(sim, |_| {}).await;
    let r = s.upload(&bytes_of(PART * 2, 3), &[]).await;
    assert_eq!(code(&r), "PAYLOAD_TOO_LARGE");
    assert!(r.json()["message"].as_str().unwrap().contains(&format!("the {PART} bytes allowed")), "{:?}", r.json());
    // A create answered 503: said so, not "lost".
    s.sim.faults(json!({"error_next": 1, "ops": ["create"]})).await;
    let r = s.upload(b"doc", &[]).await;
    assert_eq!(code(&r), "UPLOAD_OUTCOME_UNKNOWN");
    assert!(r.json()["message"].as_str().unwrap().contains("503"), "{:?}", r.json());
    // HTTP/1.1 heads without exactly one Host are refused (RFC 9112 §3.2).
    let path = format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/ABC");
    for head in [
        format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    ] {
        let answer = raw(s.gw.addr, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("BAD_REQUEST"), "{answer}");
    }
    let requests = s.sim.stats().await["requests"].as_u64().unwrap();
    assert_eq!(requests, 3, "the two creates and a delete reached the upstream, nothing else");
}

#[tokio::test]
async fn a_passthrough_answer_that_cannot_be_parsed_is_a_bad_response_not_an_outage() {
    let (s, _) = lying(SimConfig::default(), |m, _| {
        (m == Method::GET).then(|| b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n".to_vec())
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    let r = s
        .http
        .send(Method::GET, &format!("{}/ABC", s.upload_url(ACCOUNT)), &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_BAD_RESPONSE".to_owned()));
}

#[tokio::test]
async fn uploads_queued_for_quota_on_an_http2_connection_do_not_stall_the_others() {
    // Twelve uploads of one member with room for ten; the other two queue for their turn with
    // their bodies unread, on the same connection as the ten. Their turn comes when an envelope
    // uses two of the ten. (Not a pacing test: the burst limit is roomy.)
    let mut sim = SimConfig::default();
    sim.limits.burst_limit = 100_000;
    let s = Stack::start(sim, |c| c.quota.uploads_per_member = 10).await;
    s.sim.faults(json!({"latency_ms": 20, "ops": ["add_part"]})).await;
    let client = h2c();
    let mut uploads: tokio::task::JoinSet<_> = (0..12)
        .map(|i| {
            let (client, url) = (client.clone(), s.upload_url(ACCOUNT));
            let data = bytes_of(2 * 1024 * 1024 + i, 500 + i as u64);
            async move {
                let req = Request::post(url)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/pdf")
                    .header("content-length", data.len())
                    .body(chunkgate::body::full(data.clone()))
                    .unwrap();
                (send(&client, req).await, data)
            }
        })
        .collect();
    let mut ids: Vec<String> = Vec::new();
    for n in 0..12 {
        if n == 10 {
            let envelope = s.envelope(&[ids[0].as_str(), ids[1].as_str()]).await;
            assert_eq!(envelope.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&envelope.body));
        }
        let next = tokio::time::timeout(Duration::from_secs(30), uploads.join_next()).await.expect("stalled");
        let ((version, r), data) = next.unwrap().unwrap();
        assert_eq!(version, Version::HTTP_2);
        ids.push(s.assert_committed(&r, &data).await);
    }
    assert_eq!(s.sim.stats().await["created"], 12);
}

#[tokio::test]
async fn every_request_has_an_id_that_its_answer_echoes_and_its_upstream_calls_carry() {
    let (s, seen) = lying(SimConfig::default(), |_, _| None).await;
    let auth = format!("Bearer {TOKEN}");
    // The client's own id, through an upload: every one of its calls upstream carries it.
    let data = bytes_of(PART * 3, 4);
    let r = s.upload(&data, &[("x-request-id", "client-chosen-7")]).await;
    s.assert_committed(&r, &data).await;
    assert_eq!(r.header("x-request-id"), "client-chosen-7");
    let ids = seen.request_ids.lock().unwrap().clone();
    assert!(ids.len() >= 5 && ids.iter().all(|id| id == "client-chosen-7"), "{ids:?}");
    // None given: the gateway makes one, answers with it and forwards it (passthrough).
    let r = s
        .http
        .send(Method::GET, &format!("{}/ABC", s.upload_url(ACCOUNT)), &[("authorization", &auth)], "")
        .await
        .unwrap();
    let made = r.header("x-request-id").to_owned();
    assert_eq!(made.len(), 29, "prefix and count: {made}");
    assert_eq!(seen.request_ids.lock().unwrap().last(), Some(&made));
    // A client cannot take it off the forwarded request by naming it in `Connection` (before: the
    // upstream got none, though the answer echoed one).
    let r = s
        .http
        .send(
            Method::GET,
            &format!("{}/ABC", s.upload_url(ACCOUNT)),
            &[("authorization", &auth), ("connection", "x-request-id")],
            "",
        )
        .await
        .unwrap();
    let made = r.header("x-request-id").to_owned();
    assert_eq!(seen.request_ids.lock().unwrap().last(), Some(&made));
    // Errors the gateway makes carry it too.
    let r = s.http.send(Method::GET, &format!("{}/nope", s.gw.url()), &[], "").await.unwrap();
    assert_eq!((r.status, r.header("x-request-id").len()), (StatusCode::BAD_REQUEST, 29));
}

#[tokio::test]
async fn an_http2_upload_refused_before_its_body_was_read_lets_the_client_finish_sending_and_read_the_answer() {
    // An hourly budget of 2 calls cannot hold any upload's plan: refused at once, before the body.
    let s = Stack::start(SimConfig::default(), |c| c.rate_limit.hourly_limit = 2).await;
    let mut client = h2_raw(s.gw.addr).await;
    let len = 2 * 1024 * 1024;
    let req = Request::post(s.upload_url(ACCOUNT))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/pdf")
        .header("content-length", len)
        .body(())
        .unwrap();
    let (answer, mut stream) = client.send_request(req, false).unwrap();
    // Well past the stream's window: the gateway must read what it will not use rather than
    // reset the stream (clients such as curl and httpx take a reset as a failure).
    let sending = tokio::spawn(async move { h2_send(&mut stream, Bytes::from(bytes_of(len, 9)), true).await });
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    let mut body = answer.into_body();
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    let v: Value = serde_json::from_slice(&read).unwrap();
    assert_eq!(v["errorCode"], "RATE_LIMITED");
    tokio::time::timeout(Duration::from_secs(10), sending).await.expect("the body was taken").expect("not reset");
    assert_eq!(s.sim.stats().await["requests"], 0);
}

/// The upstream's answers are passed on framed for the body the client gets: a length received
/// beside a chunked body is dropped (it had reached the client as a complete answer of 2 bytes),
/// a transfer coding the gateway does not decode or an interim status is refused, and the status
/// line is the client's protocol's, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn passthrough_answers_are_framed_for_the_body_the_client_gets() {
    let whole = r#"{"a":"the whole body here"}"#;
    let cases = [
        (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{whole}\r\n0\r\n\r\n",
                whole.len()
            ),
            Some(whole),
        ),
        (format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{whole}", whole.len()), Some(whole)),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_owned(), None),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_owned(), None),
        ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW".to_owned(), None),
    ];
    for (upstream_answer, expected) in cases {
        let sim = SimApi::start(SimConfig::default()).await;
        let (url, _) = meddler(sim.running.url(), move |_, _| Some(upstream_answer.clone().into_bytes())).await;
        let s = Stack::in_front_of(sim, url, |_| {}).await;
        let target = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes/abc", s.gw.url());
        let h1 = s.http.send(Method::GET, &target, &[("authorization", &format!("Bearer {TOKEN}"))], "").await;
        let h1 = h1.expect("a whole answer over HTTP/1.1");
        let req =
            Request::get(&target).header("authorization", format!("Bearer {TOKEN}")).body(chunkgate::body::empty());
        let (version, h2) = send(&h2c(), req.unwrap()).await;
        assert_eq!(version, Version::HTTP_2);
        for r in [&h1, &h2] {
            match expected {
                Some(body) => {
                    assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, body.as_bytes()), "{:?}", r.headers);
                    assert!(
                        r.header("content-length").is_empty() || r.header("content-length") == body.len().to_string()
                    );
                }
                None => assert_eq!((r.status, code(r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_BAD_RESPONSE".to_owned())),
            }
        }
        if expected.is_some() {
            let raw_answer = raw(
                s.gw.addr,
                format!(
                    "GET {} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n",
                    &target[s.gw.url().len()..]
                )
                .as_bytes(),
            )
            .await;
            assert!(raw_answer.starts_with("HTTP/1.1 200"), "{raw_answer}");
        }
    }
}

/// A head over `server.max_header_bytes`, or with more than 100 fields, gets 431
/// HEADERS_TOO_LARGE in the dialect's shape over HTTP/2 as over HTTP/1.1 (the HTTP/2 library's
/// own refusal had been a bare 431 and a refused stream, which curl sent again six times); a target
/// in asterisk form (`OPTIONS *`) is refused for what it is.
#[tokio::test]
async fn oversized_heads_are_refused_alike_over_both_protocols() {
    let s = Stack::default().await;
    let target = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes", s.gw.url());
    let auth = format!("Bearer {TOKEN}");
    let big = "a".repeat(70_000);
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".to_owned())).collect();
    for case in ["big", "many"] {
        let mut req = Request::get(&target).header("authorization", &auth);
        let mut line =
            format!("GET /restapi/v2.1/accounts/{ACCOUNT}/envelopes HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
        if case == "big" {
            req = req.header("x-big", &big);
            line += &format!("X-Big: {big}\r\n");
        } else {
            for (k, v) in &many {
                req = req.header(k, v);
                line += &format!("{k}: {v}\r\n");
            }
        }
        let (_, h2) = send(&h2c(), req.body(chunkgate::body::empty()).unwrap()).await;
        assert_eq!((h2.status, code(&h2)), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "HEADERS_TOO_LARGE".into()));
        let h1 = raw(s.gw.addr, (line + "\r\n").as_bytes()).await;
        assert!(h1.starts_with("HTTP/1.1 431") && h1.contains("HEADERS_TOO_LARGE"), "{case}: {h1}");
    }
    let star = raw(s.gw.addr, b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await;
    assert!(star.starts_with("HTTP/1.1 400") && star.contains("asterisk"), "{star}");
    assert_eq!(s.sim.stats().await["requests"], 0, "none reached the upstream");
}

/// A delete the upstream refuses for good (401: the token no longer holds) is reported as failed
/// (`X-Chunkgate-Upload-Deleted: false`), not as one deferred to the background that will never
/// be tried.
#[tokio::test]
async fn a_delete_refused_for_good_is_reported_as_failed_not_deferred() {
    let (s, _) = lying(SimConfig::default(), |m, path| {
        let refuse = |status: &str, code: &str| {
            Some(answer(status, "application/json", &format!(r#"{{"errorCode":"{code}","message":"no"}}"#)))
        };
        match *m {
            Method::PUT if path.ends_with("/1") => refuse("400 Bad Request", "INVALID_REQUEST_BODY"),
            Method::DELETE => refuse("401 Unauthorized", "USER_AUTHENTICATION_FAILED"),
            _ => None,
        }
    })
    .await;
    let r = s.upload(&bytes_of(PART * 3, 6), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY".to_owned()));
    assert_eq!(r.header("x-chunkgate-upload-deleted"), "false", "{:?}", r.headers);
}

#[tokio::test]
async fn a_passthrough_post_whose_connection_breaks_after_it_was_sent_may_have_been_applied() {
    let s = Stack::default().await;
    // The simulator stores the create, then drops the connection without an answer.
    s.sim.faults(json!({"drop_after_store_next": 1, "ops": ["create"]})).await;
    let auth = format!("Bearer {TOKEN}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let r = s.http.send(Method::POST, &s.upload_url(ACCOUNT), &headers, part_body(b"part zero")).await.unwrap();
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE".to_owned()));
    // Not sent again (a POST), and the client is told it may have been applied, not to try later.
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("may have been applied"), "{text}");
    assert_eq!(s.sim.stats().await["created"], 1);
}

/// A `Content-Digest` sent as a trailer field (RFC 9530: what a client that hashes as it sends
/// can do) is checked like one in the head, over HTTP/1.1 chunked and HTTP/2 (before: ignored,
/// and a wrong one committed); a malformed one is refused. Nothing is committed or left open.
#[tokio::test]
async fn a_content_digest_sent_as_a_trailer_is_checked() {
    use base64::Engine;
    use sha2::Digest;
    let s = Stack::default().await;
    let doc = bytes_of(PART + 123, 9);
    let right = format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&doc)));
    let wrong = format!("sha-256=:{}:", "A".repeat(43) + "=");
    let path = format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let h1 = async |digest: &str| {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Digest\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in doc.chunks(64 * 1024) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(format!("0\r\ncontent-digest: {digest}\r\n\r\n").as_bytes());
        raw(s.gw.addr, &req).await
    };
    let h2 = async |digest: &str| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("content-digest", digest.parse().unwrap());
        let body =
            Frames([http_body::Frame::data(Bytes::from(doc.clone())), http_body::Frame::trailers(trailers)].into());
        let req = Request::post(format!("{}{path}", s.gw.url()))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/pdf")
            .body(BodyExt::boxed_unsync(body))
            .unwrap();
        send(&h2c(), req).await.1
    };
    let answer = h1(&wrong).await;
    assert!(answer.starts_with("HTTP/1.1 422") && answer.contains("DIGEST_MISMATCH"), "{answer}");
    let answer = h1("sha-256=AAAA").await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("BAD_CONTENT_DIGEST"), "{answer}");
    // Every sha-256 member counts (before, only the last: a wrong one before a right one passed).
    let answer = h1(&format!("{wrong}, {right}")).await;
    assert!(answer.starts_with("HTTP/1.1 422") && answer.contains("DIGEST_MISMATCH"), "{answer}");
    let answer = h1(&right).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = h2(&wrong).await;
    assert_eq!((r.status, code(&r)), (StatusCode::UNPROCESSABLE_ENTITY, "DIGEST_MISMATCH".into()));
    let r = h2(&right).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let st = s.sim.stats().await;
    assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(2), Some(0)), "{st}");
}

/// An HTTP/2 passthrough body that reaches its `Content-Length` without END_STREAM is not passed
/// on whole until the stream ends: data past the length fails the call, and the upstream never
/// gets a whole request (before: it created the upload, and the client, reset for the extra data,
/// took the call as failed). One whose END_STREAM comes in a frame of its own goes through.
#[tokio::test]
async fn an_http2_passthrough_body_sent_past_its_length_never_reaches_the_upstream_whole() {
    let s = Stack::default().await;
    let body = Bytes::from_static(br#"{"data":"aGVsbG8="}"#);
    let mut client = h2_raw(s.gw.addr).await;
    let create = || {
        Request::post(s.upload_url(ACCOUNT))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(())
            .unwrap()
    };
    let (answer, mut stream) = client.send_request(create(), false).unwrap();
    h2_send(&mut stream, body.clone(), false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sim.stats().await["created"], 0, "held until the stream ends");
    h2_send(&mut stream, Bytes::from_static(b"more"), true).await;
    let answer = answer.await;
    assert!(answer.is_err() || answer.as_ref().unwrap().status() == StatusCode::BAD_REQUEST, "{answer:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.sim.stats().await["created"], 0);
    let mut client = h2_raw(s.gw.addr).await;
    let (answer, mut stream) = client.send_request(create(), false).unwrap();
    h2_send(&mut stream, body.clone(), false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.send_data(Bytes::new(), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(s.sim.stats().await["created"], 1);
}
