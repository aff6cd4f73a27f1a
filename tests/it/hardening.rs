//! One test per defence: hostile request targets, framing tricks, oversized or slow requests,
//! caller authentication, the account allowlist, and an upstream that answers nonsense.

use std::time::Duration;

use chunkgate::{config::Secret, sim::SimConfig};
use http::{Method, StatusCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::common::*;

/// Sends raw bytes to `addr` and returns what comes back until the peer closes (or 5 s pass).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn hostile_request_targets_are_refused_and_never_forwarded() {
    let s = Stack::default().await;
    let cases: &[(&str, &str)] = &[
        ("/restapi/v2.1/accounts/1234567/../../admin", "INVALID_PATH"),
        ("/restapi/v2.1/accounts/1234567/%2e%2e/x", "INVALID_PATH"),
        ("/restapi/v2.1/accounts/1234567%2Fchunked_uploads", "INVALID_PATH"),
        ("/restapi/v2.1/accounts/1234567/a%5cb", "INVALID_PATH"),
        ("http://169.254.169.254/latest/meta-data/", "INVALID_PATH"),
        ("/latest/meta-data/", "INVALID_PATH"),
        ("/restapi/v2.1/accounts/12ab/envelopes", "INVALID_ACCOUNT_ID"),
        ("/restapi/v2.1/accounts/1234567/chunked_uploads/abc$def", "INVALID_PATH"),
        ("/restapi/v2.1/accounts/1234567/chunked_uploads/ABC/1e9", "INVALID_PATH"),
    ];
    for (target, code) in cases {
        let answer = raw(s.gw.addr, &get(target)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains(code), "{target}: {answer}");
    }
    let connect = raw(s.gw.addr, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 400"), "{connect}");
    assert_eq!(s.sim.stats().await["requests"], 0, "nothing reached the upstream");
}

#[tokio::test]
async fn conflicting_framing_cannot_smuggle_and_bad_lengths_are_refused() {
    let s = Stack::default().await;
    let path = format!("/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    // Content-Length says 5, the chunked body holds 11 bytes and then a smuggled request. The
    // chunked framing wins (RFC 9112 §6.1; hyper drops the Content-Length): the upload holds all
    // 11 bytes and the smuggled request is never forwarded, since chunkgate re-frames every request
    // it sends upstream.
    let both = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nb\r\nhello world\r\n0\r\n\r\nDELETE {path}/X HTTP/1.1\r\nHost: gw\r\n\r\n"
    );
    let answer = raw(s.gw.addr, both.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-chunkgate-bytes: 11"), "{answer}");
    assert!(answer.contains(&format!("x-chunkgate-sha256: {}", sha256_hex(b"hello world"))), "{answer}");
    let st = s.sim.stats().await;
    assert_eq!((st["created"].as_u64(), st["deleted"].as_u64()), (Some(1), Some(0)), "{st}");
    let before = st["requests"].as_u64().unwrap();
    let bad_len = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 12abc\r\n\r\nhello"
    );
    assert!(raw(s.gw.addr, bad_len.as_bytes()).await.starts_with("HTTP/1.1 400"));
    let two_lens = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    assert!(raw(s.gw.addr, two_lens.as_bytes()).await.starts_with("HTTP/1.1 400"));
    assert_eq!(s.sim.stats().await["requests"].as_u64(), Some(before), "bad lengths reached the upstream");
}

#[tokio::test]
async fn a_body_longer_than_declared_commits_only_the_declared_bytes() {
    let s = Stack::default().await;
    let doc = bytes_of(PART + 10, 5);
    let mut request = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        doc.len()
    )
    .into_bytes();
    request.extend_from_slice(&doc);
    request.extend_from_slice(b"SMUGGLED EXTRA BYTES THAT ARE NOT A REQUEST\r\n\r\n");
    let answer = raw(s.gw.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let id = answer.lines().find_map(|l| l.strip_prefix("x-chunkgate-upload-id: ")).unwrap().trim();
    assert_eq!(s.sim.inspect(id).await["sha256"], sha256_hex(&doc));
    assert_eq!(s.sim.stats().await["created"], 1, "the extra bytes started nothing");
}

#[tokio::test]
async fn oversized_heads_slow_heads_and_connection_floods_are_bounded() {
    let s = Stack::start(SimConfig::default(), |c| {
        c.server.max_header_bytes = 8192;
        c.server.read_buffer_bytes = 16384;
        c.server.header_read_timeout_ms = 300;
        c.server.max_connections = 1;
    })
    .await;
    // Over max_header_bytes: refused by the gateway, in the upstream's error shape, never forwarded.
    let big = format!(
        "GET /restapi/v2.1/accounts/1/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    let answer = raw(s.gw.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("\"errorCode\":\"HEADERS_TOO_LARGE\""), "{answer}");
    assert_eq!(s.sim.stats().await["requests"], 0);
    // Over the read buffer too: the connection cuts it off before it is even parsed.
    let huge = format!("GET /restapi/v2.1/accounts/1/x HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let answer = raw(s.gw.addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer =
        raw(s.gw.addr, format!("GET /restapi/v2.1/accounts/1/x HTTP/1.1\r\nHost: gw\r\n{many}\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Slowloris: a head that never ends is cut off after the header timeout.
    let mut slow = TcpStream::connect(s.gw.addr).await.unwrap();
    slow.write_all(b"GET /restapi/v2.1/accounts/1/x HTTP/1.1\r\nHost: gw\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was not cut off");

    // One connection at a time: a second client waits until the first is done.
    let mut first = TcpStream::connect(s.gw.addr).await.unwrap();
    first.write_all(b"GET /restapi/v2.1/accounts/1/x HTTP/1.1\r\nHost: gw\r\n").await.unwrap();
    let addr = s.gw.addr;
    let second =
        tokio::spawn(async move { raw(addr, &get("/restapi/v2.1/accounts/1234567/chunked_uploads/ABC")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "a second connection was served while the first held the only slot");
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "served once the slot was free: {answer}");
}

#[tokio::test]
async fn callers_need_a_valid_key_and_accounts_must_be_allowed() {
    let key = "k3y-for-the-billing-service";
    let s = Stack::start(SimConfig::default(), |c| {
        c.server.caller_keys = vec![Secret(key.into()), Secret("another-caller-key-0001".into())];
        c.server.allowed_accounts = vec![ACCOUNT.into()];
    })
    .await;
    let data = bytes_of(1000, 1);
    let none = s.upload(&data, &[]).await;
    assert_eq!(
        (none.status, none.json()["errorCode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("CALLER_UNAUTHORIZED"))
    );
    let wrong = s.upload(&data, &[("x-chunkgate-key", "k3y-for-the-billing-servicE")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = s.upload(&data, &[("x-chunkgate-key", key)]).await;
    s.assert_committed(&ok, &data).await;
    let auth = format!("Bearer {TOKEN}");
    let other = s
        .http
        .send(
            Method::GET,
            &format!("{}/restapi/v2.1/accounts/999/envelopes", s.gw.url()),
            &[("authorization", &auth), ("x-chunkgate-key", key)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (other.status, other.json()["errorCode"].as_str()),
        (StatusCode::FORBIDDEN, Some("ACCOUNT_NOT_ALLOWED"))
    );
    assert_eq!(s.sim.stats().await["created"], 1);
}

/// An upstream that answers every request with `answer`, and counts requests.
async fn nonsense_upstream(answer: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(&answer).await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn malformed_or_oversized_upstream_answers_give_upstream_bad_response() {
    let huge = format!("{{\"chunkedUploadId\":\"{}\"}}", "A".repeat(2 << 20));
    for body in ["this is not json".to_owned(), "{\"chunkedUploadId\": 5, \"committed\": [".to_owned(), huge] {
        let answer = format!(
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (url, _) = nonsense_upstream(answer.into_bytes()).await;
        let s = Stack::start(SimConfig::default(), |c| {
            c.upstream.base_url = url;
            c.retry.max_attempts = 2;
        })
        .await;
        let r = s.upload(b"doc", &[]).await;
        assert_eq!(
            (r.status, r.json()["errorCode"].as_str()),
            (StatusCode::BAD_GATEWAY, Some("UPSTREAM_BAD_RESPONSE")),
            "{}",
            &body[..body.len().min(40)]
        );
    }
}

#[tokio::test]
async fn one_caller_cannot_take_more_than_its_share_of_uploads() {
    let s = Stack::start(SimConfig::default(), |c| c.server.max_uploads_per_caller = 1).await;
    let mut first = TcpStream::connect(s.gw.addr).await.unwrap();
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        PART * 2
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&bytes_of(PART + 1, 1)).await.unwrap();
    s.sim.wait_stats(|st| st["created"] == 1).await;
    let second = s.upload(b"second", &[]).await;
    assert_eq!(
        (second.status, second.json()["errorCode"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("GATEWAY_BUSY"))
    );
    first.write_all(&bytes_of(PART - 1, 2)).await.unwrap();
    let mut answer = [0u8; 32];
    first.read_exact(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(s.upload(b"third", &[]).await.status, StatusCode::OK, "the slot came back");
}

#[tokio::test]
async fn an_answer_sent_before_the_body_was_read_reaches_a_client_that_writes_its_whole_body_first() {
    // A client that writes all 24 MiB of a refused upload before it reads: the refusal is sent at
    // once, and the gateway reads and throws away the rest rather than resetting the connection
    // (which would destroy the answer before the client reads it).
    let s = Stack::start(SimConfig::default(), |c| c.upload.max_document_bytes = 1 << 20).await;
    let body = vec![7u8; 24 << 20];
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.expect("the whole body is taken, not refused with a reset");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
    assert_eq!(s.sim.stats().await["requests"], 0);
}

/// An upstream that answers the first request of each connection and closes the connection,
/// unanswered, on its second (as a server does with a keep-alive connection it has just timed out).
async fn closes_on_reuse() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                let mut answered = 0;
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if answered == 1 {
                            return; // closed, unanswered
                        }
                        answered += 1;
                        let _ = tcp
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                            )
                            .await;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_idempotent_passthrough_request_is_sent_again_when_a_reused_connection_breaks() {
    let sim = SimApi::start(SimConfig::default()).await;
    let upstream = closes_on_reuse().await;
    let s = Stack::in_front_of(sim, upstream, |_| {}).await;
    let auth = format!("Bearer {TOKEN}");
    let url = format!("{}/6D8A7F52-3D2B-4D91-9A62-1F2E3D4C5B6A", s.upload_url(ACCOUNT));
    let first = s.http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    // The pooled connection is reused and breaks: a bodiless DELETE is sent again on a new one.
    let second = s.http.send(Method::DELETE, &url, &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(second.status, StatusCode::OK, "{}", String::from_utf8_lossy(&second.body));
}

#[tokio::test]
async fn an_allowed_guid_account_is_allowed_in_either_case() {
    let guid = "3216e4b2-0a1b-4c2d-8e3f-34cc91813ea2";
    let s = Stack::start(SimConfig::default(), move |c| c.server.allowed_accounts = vec![guid.into()]).await;
    let auth = format!("Bearer {TOKEN}");
    for (account, allowed) in [(guid.to_owned(), true), (guid.to_uppercase(), true), ("1234567".to_owned(), false)] {
        let url = format!("{}/restapi/v2.1/accounts/{account}/envelopes", s.gw.url());
        let r = s.http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap();
        let refused = r.status == StatusCode::FORBIDDEN && r.json()["errorCode"] == "ACCOUNT_NOT_ALLOWED";
        assert_eq!(!refused, allowed, "{account}: {}", r.status);
    }
}

/// An upstream's answer body whose bytes are hyper's own bodiless error head, written alone, is
/// passed on as it is: only a write between two answers can be hyper's error (before: it was
/// swapped for a full error answer in the middle of the upstream's, and a keep-alive client read
/// the rest as its next answer). A malformed request after it is still answered in the error shape.
#[tokio::test]
async fn an_upstream_body_that_looks_like_a_bare_error_head_is_passed_on_as_it_is() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let lookalike =
        format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = lookalike.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(head.as_bytes()).await;
                    // The body in a write of its own, after the head has gone on.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tcp.write_all(body.as_bytes()).await;
                }
            });
        }
    });
    let s = Stack::start(SimConfig::default(), |c| c.upstream.base_url = url).await;
    let target = format!("/restapi/v2.1/accounts/{ACCOUNT}/envelopes");
    let keep = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    tcp.write_all(keep.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    // The whole answer: its head and exactly its declared body.
    while !String::from_utf8_lossy(&got).ends_with(&lookalike) && got.len() < 4096 {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200") && !text.contains("errorCode"), "{text}");
    // The same connection goes on: a malformed request is answered in the error shape.
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400") && rest.contains("BAD_REQUEST"), "{rest}");
}

/// A malformed request after an HTTP/1.0 request kept alive is answered in the error shape too
/// (hyper's own answer then says HTTP/1.0 and has no `connection` line: it had gone out bare).
#[tokio::test]
async fn a_malformed_request_after_an_http10_keep_alive_request_is_answered_in_the_error_shape() {
    let s = Stack::default().await;
    let mut tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    let first = format!(
        "GET /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/ABC HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    tcp.write_all(first.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !String::from_utf8_lossy(&got).contains("CHUNKED_UPLOAD_NOT_FOUND") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    tcp.write_all(b"GET / HTTP/1.0\r\nHost: gw\r\nContent-Length: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains(" 400 ") && rest.contains("BAD_REQUEST"), "{rest}");
}
