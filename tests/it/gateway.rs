//! The streamed upload and the passthrough, gateway and simulator in process.

use base64::Engine;
use bytes::Bytes;
use chunkgate::{
    config::Dialect,
    sim::{SimConfig, config::LimitOverrides},
};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::common::*;

fn digest_header(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data)))
}

fn sim_with(account_limits: LimitOverrides) -> SimConfig {
    let mut c = SimConfig::default();
    c.accounts.insert(ACCOUNT.to_owned(), account_limits);
    c
}

#[tokio::test]
async fn every_size_commits_byte_exact_with_content_length_and_chunked() {
    let s = Stack::default().await;
    for (i, len) in [1, PART - 1, PART, PART + 1, PART * 7 / 2].into_iter().enumerate() {
        let data = bytes_of(len, i as u64);
        let r = s.upload(&data, &[]).await;
        let id = s.assert_committed(&r, &data).await;
        assert_eq!(r.header("x-chunkgate-parts"), len.div_ceil(PART).to_string(), "{len}");
        // Frames that straddle part boundaries.
        let r = s.upload_chunked(&data, 10_000).await;
        let other = s.assert_committed(&r, &data).await;
        assert_ne!(id, other);
    }
    let st = s.sim.stats().await;
    assert_eq!(
        (st["open"].as_u64(), st["committed"].as_u64(), st["duplicate_parts"].as_u64()),
        (Some(0), Some(10), Some(0))
    );
}

#[tokio::test]
async fn a_40_mib_document_is_fitted_into_the_announced_part_limit() {
    let mut sim = SimConfig { storage: chunkgate::sim::config::Storage::Digest, ..SimConfig::default() };
    sim.limits.burst_limit = 5000; // not a pacing test
    let s = Stack::start(sim, |_| {}).await;
    let data = bytes_of(40 * 1024 * 1024, 40);
    let r = s.upload(&data, &[]).await;
    s.assert_committed(&r, &data).await;
    let parts: u32 = r.header("x-chunkgate-parts").parse().unwrap();
    assert!(parts <= 128, "{parts} parts");
    // 40 MiB in 64 KiB parts would need 640: the part size was raised to fit.
    assert!(parts >= 100, "{parts} parts");

    let r = s.upload_chunked(&data, 256 * 1024).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "unknown length: parts stay at 64 KiB and outgrow the limit");
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 1).await;
}

#[tokio::test]
async fn a_smaller_part_limit_announced_by_the_upstream_is_used_from_then_on() {
    let s = Stack::start(sim_with(LimitOverrides { max_parts: Some(4), ..Default::default() }), |_| {}).await;
    let data = bytes_of(PART * 10, 3);
    let r = s.upload(&data, &[]).await;
    s.assert_committed(&r, &data).await;
    assert!(r.header("x-chunkgate-parts").parse::<u32>().unwrap() <= 4);
}

#[tokio::test]
async fn the_parts_of_uploads_reuse_pooled_upstream_connections() {
    let s = Stack::default().await; // 4 parts in flight
    for i in 0..3 {
        let data = bytes_of(PART * 20 + 5, 40 + i);
        let r = s.upload(&data, &[]).await;
        s.assert_committed(&r, &data).await;
    }
    let st = s.sim.stats().await;
    let (requests, connections) = (st["requests"].as_u64().unwrap(), st["connections"].as_u64().unwrap());
    // 3 x (create, 20 parts, checksum, commit) over at most one connection per part in flight.
    assert_eq!(requests, 3 * 23);
    assert!((1..=5).contains(&connections), "{connections} connections for {requests} requests");
}

#[tokio::test]
async fn twenty_concurrent_uploads_all_commit_byte_exact() {
    let mut sim = SimConfig::default();
    sim.limits.quota_uploads = 20;
    let s = std::sync::Arc::new(Stack::start(sim, |_| {}).await);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let data = bytes_of(PART * 3 + i * 1000, 100 + i as u64);
                let r = if i % 2 == 0 { s.upload(&data, &[]).await } else { s.upload_chunked(&data, 8192).await };
                s.assert_committed(&r, &data).await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 20);
    let st = s.sim.stats().await;
    assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(20), Some(0)));
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_upstream_call() {
    let s = Stack::start(SimConfig::default(), |c| c.upload.max_document_bytes = 1000).await;
    let auth = format!("Bearer {TOKEN}");
    let octets = ("content-type", "application/octet-stream");
    let too_big = s.upload(&[7; 1001], &[]).await;
    assert_eq!((too_big.status, code(&too_big)), (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into()));
    let empty = s.upload(b"", &[]).await;
    assert_eq!((empty.status, code(&empty)), (StatusCode::BAD_REQUEST, "EMPTY_DOCUMENT".into()));
    let empty_chunked = s.upload_chunked(b"", 10).await;
    assert_eq!(code(&empty_chunked), "EMPTY_DOCUMENT");
    let no_token = s.http.send(Method::POST, &s.upload_url(ACCOUNT), &[octets], "doc").await.unwrap();
    assert_eq!((no_token.status, code(&no_token)), (StatusCode::UNAUTHORIZED, "MISSING_TOKEN".into()));
    let bad_account =
        s.http.send(Method::POST, &s.upload_url("12x"), &[("authorization", &auth), octets], "doc").await.unwrap();
    assert_eq!((bad_account.status, code(&bad_account)), (StatusCode::BAD_REQUEST, "INVALID_ACCOUNT_ID".into()));
    let bad_digest = s.upload(b"doc", &[("content-digest", "sha-256=:nope:")]).await;
    assert_eq!((bad_digest.status, code(&bad_digest)), (StatusCode::BAD_REQUEST, "BAD_CONTENT_DIGEST".into()));
    assert_eq!(s.sim.stats().await["requests"], 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_document_over_the_upstreams_total_size_is_refused_and_deleted() {
    let s =
        Stack::start(sim_with(LimitOverrides { max_total_size: Some(PART as u64 * 2), ..Default::default() }), |_| {})
            .await;
    let r = s.upload(&bytes_of(PART * 2 + 1, 1), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into()));
    assert_eq!(r.header("x-chunkgate-parts-accepted"), "0");
    let r = s.upload_chunked(&bytes_of(PART * 3, 2), 4096).await;
    assert_eq!(code(&r), "PAYLOAD_TOO_LARGE");
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 2 && st["committed"] == 0).await;
}

#[tokio::test]
async fn a_chunked_body_that_outgrows_the_part_limit_fails_and_is_deleted() {
    let s = Stack::start(sim_with(LimitOverrides { max_parts: Some(3), ..Default::default() }), |_| {}).await;
    let r = s.upload_chunked(&bytes_of(PART * 5, 5), 8192).await;
    assert_eq!((r.status, code(&r)), (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into()));
    assert!(r.json()["message"].as_str().unwrap().contains("accepted parts [0"), "{}", r.json());
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 1).await;
}

/// A document of unknown length is held to `upload.max_document_bytes` (what its quota reserved)
/// as it arrives, not only to the upstream's limits: it had been let grow to the upstream's 1 GB.
#[tokio::test]
async fn a_chunked_body_past_the_document_limit_fails_and_is_deleted() {
    let s = Stack::start(SimConfig::default(), |c| c.upload.max_document_bytes = (PART * 3) as u64).await;
    let r = s.upload_chunked(&bytes_of(PART * 5, 5), 8192).await;
    assert_eq!((r.status, code(&r)), (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into()));
    let limit = format!("larger than the {} bytes allowed", PART * 3);
    assert!(r.json()["message"].as_str().unwrap().contains(&limit), "{}", r.json());
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 1 && st["committed"] == 0).await;
    // Exactly the limit is fine.
    let data = bytes_of(PART * 3, 6);
    let ok = s.upload_chunked(&data, 8192).await;
    s.assert_committed(&ok, &data).await;
}

#[tokio::test]
async fn a_content_digest_mismatch_is_never_committed_and_the_upload_is_deleted() {
    let s = Stack::default().await;
    let data = bytes_of(PART * 3, 9);
    let r = s.upload(&data, &[("content-digest", &digest_header(b"something else"))]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::UNPROCESSABLE_ENTITY, "DIGEST_MISMATCH".into()));
    assert_eq!(r.header("x-chunkgate-parts-accepted"), "0,1,2");
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 1 && st["committed"] == 0).await;
    let ok = s.upload(&data, &[("content-digest", &digest_header(&data))]).await;
    s.assert_committed(&ok, &data).await;
}

#[tokio::test]
async fn an_upstream_checksum_that_differs_stops_the_commit() {
    let s = Stack::default().await;
    s.sim.faults(json!({"corrupt_next": 1, "ops": ["add_part"]})).await;
    let r = s.upload(&bytes_of(PART * 3, 11), &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_CHECKSUM_MISMATCH".into()));
    s.sim.wait_stats(|st| st["open"] == 0 && st["deleted"] == 1 && st["committed"] == 0).await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_leaves_nothing_behind() {
    let s = Stack::default().await;
    let mut tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let head = format!(
        "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nContent-Length: {}\r\n\r\n",
        PART * 6
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&bytes_of(PART * 3 + 17, 6)).await.unwrap();
    // Wait until the upload exists upstream, then go away.
    s.sim.wait_stats(|st| st["created"] == 1).await;
    drop(tcp);
    let st = s.sim.wait_stats(|st| st["deleted"] == 1).await;
    assert_eq!((st["open"].as_u64(), st["committed"].as_u64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn a_client_may_leave_the_commit_to_itself() {
    let s = Stack::default().await;
    let data = bytes_of(PART * 2 + 5, 12);
    let r = s.upload(&data, &[("x-chunkgate-commit", "false")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["committed"], "false");
    assert_eq!(v["checksum"], sha256_hex(&data));
    let id = r.header("x-chunkgate-upload-id");
    assert_eq!(s.sim.inspect(id).await["state"], "open");
    // The client commits through the passthrough.
    let auth = format!("Bearer {TOKEN}");
    let url = format!("{}/{id}?action=commit", s.upload_url(ACCOUNT));
    let c = s.http.send(Method::PUT, &url, &[("authorization", &auth), ("content-length", "0")], "").await.unwrap();
    assert_eq!(c.status, StatusCode::OK, "{}", String::from_utf8_lossy(&c.body));
    assert_eq!(s.sim.inspect(id).await["state"], "committed");
    // Any other value (or two) is refused before anything is created: it had committed uploads
    // their clients may have meant to keep open.
    for value in ["0", "no", "false, true", "yes"] {
        let r = s.upload(&data, &[("x-chunkgate-commit", value)]).await;
        assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "BAD_REQUEST".to_owned()), "{value}");
    }
    let auth_pairs =
        [("authorization", auth.as_str()), ("x-chunkgate-commit", "false"), ("x-chunkgate-commit", "false")];
    let r = s.http.send(Method::POST, &s.upload_url(ACCOUNT), &auth_pairs, data.clone()).await.unwrap();
    assert_eq!(code(&r), "BAD_REQUEST");
    assert_eq!(s.sim.stats().await["created"], 1);
    let r = s.upload(&data, &[("x-chunkgate-commit", " TRUE ")]).await;
    s.assert_committed(&r, &data).await;
}

#[tokio::test]
async fn upstream_refusals_reach_the_client_verbatim() {
    let mut sim = SimConfig::default();
    sim.limits.quota_uploads = 1;
    let s = Stack::start(sim, |_| {}).await;
    s.sim.create_id(b"holds the only slot").await;
    let direct = s.sim.create(b"x").await;
    let via = s.upload(b"x", &[]).await;
    assert_eq!(via.status, direct.status);
    assert_eq!(via.body, direct.body);
    assert_eq!(code(&via), "CHUNKED_UPLOAD_QUOTA_EXCEEDED");
    assert!(!via.header("x-burstlimit-remaining").is_empty(), "upstream headers pass too");
}

#[tokio::test]
async fn both_dialects_work_and_gateway_errors_use_the_upstreams_shape() {
    let s = Stack::start(SimConfig { dialect: Dialect::Wrapped, ..SimConfig::default() }, |c| {
        c.upload.max_document_bytes = PART as u64 * 4
    })
    .await;
    let data = bytes_of(PART * 2 + 1, 13);
    let r = s.upload(&data, &[]).await;
    assert_eq!(r.json()["success"], true);
    s.assert_committed(&r, &data).await;
    let e = s.upload(&bytes_of(PART * 4 + 1, 1), &[]).await.json();
    assert_eq!(e["success"], false);
    assert_eq!(e["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert!(e.get("errorCode").is_none());
}

#[tokio::test]
async fn the_passthrough_forwards_other_requests_unchanged() {
    let s = Stack::default().await;
    let id = s.sim.create_id(b"made directly").await;
    let auth = format!("Bearer {TOKEN}");
    let url = format!("{}/{id}?include=checksum", s.upload_url(ACCOUNT));
    let via = s
        .http
        .send(Method::GET, &url, &[("authorization", &auth), ("connection", "keep-alive, x-hop"), ("x-hop", "1")], "")
        .await
        .unwrap();
    let direct = s.sim.get(&id, true).await;
    assert_eq!(via.status, StatusCode::OK);
    assert_eq!(via.json()["checksum"], direct.json()["checksum"]);
    // A JSON create (what the SDKs send) is an API call, not a streamed document.
    let json_create = s
        .http
        .send(
            Method::POST,
            &s.upload_url(ACCOUNT),
            &[("authorization", &auth), ("content-type", "application/json")],
            part_body(b"sdk style"),
        )
        .await
        .unwrap();
    assert_eq!(json_create.status, StatusCode::CREATED);
    assert!(json_create.header("x-chunkgate-upload-id").is_empty());
    let unknown = s
        .http
        .send(
            Method::GET,
            &format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes", s.gw.url()),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!((unknown.status, code(&unknown)), (StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND".into()));
}

#[tokio::test]
async fn an_unreachable_upstream_gives_upstream_unavailable() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let s = Stack::start(SimConfig::default(), |c| c.upstream.base_url = dead).await;
    let r = s.upload(b"doc", &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE".into()));
    let auth = format!("Bearer {TOKEN}");
    let p = s
        .http
        .send(
            Method::GET,
            &format!("{}/restapi/v2.1/accounts/1/chunked_uploads/X", s.gw.url()),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(code(&p), "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn the_official_python_sdk_works_unchanged_through_the_gateway() {
    let s = Stack::default().await;
    let seen = crate::sdk::run_sdk_script(&format!("{}/restapi", s.gw.url()), &[]).await;
    let inspected = s.sim.inspect(seen["upload_id"].as_str().unwrap()).await;
    assert_eq!(inspected["sha256"], seen["sha256"]);
    assert_eq!(inspected["state"], "deleted");
}

#[tokio::test]
async fn curl_streams_a_file_with_a_length_and_chunked() {
    let s = Stack::default().await;
    let dir = std::env::temp_dir().join(format!("chunkgate-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("contract.pdf");
    let data = bytes_of(PART * 3 + 333, 77);
    std::fs::write(&file, &data).unwrap();
    let url = s.upload_url(ACCOUNT);
    for chunked in [false, true] {
        let mut args = vec![
            "-sS".to_owned(),
            "-D".to_owned(),
            "-".to_owned(),
            "-H".to_owned(),
            format!("Authorization: Bearer {TOKEN}"),
            "-H".to_owned(),
            "Content-Type: application/pdf".to_owned(),
            "--data-binary".to_owned(),
            format!("@{}", file.display()),
            url.clone(),
        ];
        if chunked {
            args.splice(0..0, ["-H".to_owned(), "Transfer-Encoding: chunked".to_owned()]);
        }
        let out = tokio::task::spawn_blocking(move || std::process::Command::new("curl").args(&args).output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let sha = text.lines().find_map(|l| l.strip_prefix("x-chunkgate-sha256: ")).unwrap().trim();
        assert_eq!(sha, sha256_hex(&data));
        let id = text.lines().find_map(|l| l.strip_prefix("x-chunkgate-upload-id: ")).unwrap().trim();
        assert_eq!(s.sim.inspect(id).await["sha256"], sha256_hex(&data));
    }
    std::fs::remove_dir_all(dir).unwrap();
    let _ = (Bytes::new(), Value::Null);
}

/// Threads of this process serving `port` (their names are `loop-{port}-{i}`).
fn loop_threads(port: u16) -> usize {
    let prefix = format!("loop-{port}-");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(&prefix))
        .count()
}

#[tokio::test]
async fn four_event_loops_serve_concurrent_connections_and_a_stop_drains_every_one() {
    let mut sim = SimConfig::default();
    sim.limits.quota_uploads = 100;
    sim.limits.burst_limit = 100_000;
    let mut s = Stack::start(sim, |c| {
        c.server.worker_threads = 4;
        c.quota.uploads_per_member = 20;
        c.server.scheduler = chunkgate::config::Scheduler::PerThread;
    })
    .await;
    let port = s.gw.addr.port();
    // The server starts its loops when its task first runs.
    for _ in 0..400 {
        if loop_threads(port) == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(loop_threads(port), 3, "this task's loop and three threads of their own");
    // Slow parts, so the uploads are still running when the stop comes.
    s.sim.faults(json!({"latency_ms": 300, "ops": ["add_part"]})).await;
    let auth = format!("Bearer {TOKEN}");
    let uploads: Vec<_> = (0..12)
        .map(|i| {
            // A client of its own per upload: a connection of its own, for any loop to take.
            let (http, url, auth) = (Http::new(), s.upload_url(ACCOUNT), auth.clone());
            let data = bytes_of(PART * 3 + i * 777, 500 + i as u64);
            tokio::spawn(async move {
                let headers = [("authorization", auth.as_str()), ("content-type", "application/octet-stream")];
                let r = http.send(Method::POST, &url, &headers, data.clone()).await.unwrap();
                (r, data)
            })
        })
        .collect();
    s.sim.wait_stats(|st| st["created"] == 12).await;
    // The passthrough, on fresh connections, while the uploads run.
    let id = s.sim.create_id(b"read me back").await;
    for _ in 0..8 {
        let url = format!("{}/{id}", s.upload_url(ACCOUNT));
        let r = Http::new().send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(s.sim.dialect_data(r.json())["chunkedUploadId"], id.as_str());
    }
    assert_eq!(s.sim.stats().await["committed"], 0, "the stop comes while every upload runs");
    s.gw.stopper.stop();
    for t in uploads {
        let (r, data) = t.await.unwrap();
        s.assert_committed(&r, &data).await;
    }
    let st = s.sim.stats().await;
    assert_eq!((st["committed"].as_u64(), st["open"].as_u64()), (Some(12), Some(1)), "all but the one read back");
    // Every loop lets go of the listener and its thread ends.
    for _ in 0..400 {
        if loop_threads(port) == 0 && tokio::net::TcpStream::connect(s.gw.addr).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("after the stop: {} loop threads left, listener still accepting", loop_threads(port));
}

/// A document of unknown length is refused as soon as it passes `upload.max_document_bytes`, not
/// a whole part later: a client that sent a little more than the limit and waits hears 413 at once
/// (it had waited for a part's worth more, 8 MiB at the defaults, or its idle timeout). The limit
/// falls within part 0, then within a later part.
#[tokio::test]
async fn a_chunked_body_is_refused_as_soon_as_it_passes_the_document_limit() {
    for (limit, sent, created) in [(100_000u64, 150_000usize, 0u64), (1_500_000, 1_600_000, 1)] {
        let s = Stack::start(SimConfig::default(), |c| {
            c.upload.max_document_bytes = limit;
            c.upload.part_size = 1 << 20;
        })
        .await;
        let mut tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
        let head = format!(
            "POST /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/pdf\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let chunk = bytes_of(sent, 3);
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        tcp.write_all(&chunk).await.unwrap();
        tcp.write_all(b"\r\n").await.unwrap();
        // The client waits with its body unfinished.
        let mut answer = vec![0u8; 4096];
        let read = tokio::io::AsyncReadExt::read(&mut tcp, &mut answer);
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("answered while the body is still open")
            .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 413") && text.contains("PAYLOAD_TOO_LARGE"), "{limit}: {text}");
        let st = s.sim.wait_stats(|st| st["open"] == 0).await;
        assert_eq!(st["created"], created, "{st}");
    }
}
