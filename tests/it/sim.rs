//! The simulator against UPSTREAM.md: every route, rule, limit, dialect, header and fault.

use std::time::{Duration, Instant};

use chunkgate::{
    config::Dialect,
    sim::{
        SimConfig,
        config::{BoolStyle, LimitOverrides, Limits, Storage},
    },
};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn small_limits() -> SimConfig {
    let mut c = SimConfig::default();
    c.accounts.insert(
        ACCOUNT.to_owned(),
        LimitOverrides {
            max_parts: Some(3),
            max_total_size: Some(100),
            max_request_data: Some(40),
            ..Default::default()
        },
    );
    c
}

#[tokio::test]
async fn create_answers_201_with_the_whole_resource_in_strings() {
    let s = SimApi::start(SimConfig::default()).await;
    let r = s.create(b"eighteen bytes!!!!").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    let id = v["chunkedUploadId"].as_str().unwrap();
    assert!(chunkgate::ids::is_guid(id), "{id}");
    assert_eq!(v["chunkedUploadUri"], format!("docusignchunkedupload://{id}"));
    assert_eq!(v["committed"], "false");
    assert_eq!(v["chunkedUploadParts"], json!([{"sequence": "0", "size": "18"}]));
    assert_eq!(v["totalSize"], "18");
    assert_eq!(v["maxChunkedUploadParts"], "128");
    assert_eq!(v["maxTotalSize"], "52428800");
    assert!(v.get("checksum").is_none(), "checksum only with include=checksum");
    let expires = humantime::parse_rfc3339(v["expirationDateTime"].as_str().unwrap()).unwrap();
    let lifetime = expires.duration_since(std::time::SystemTime::now()).unwrap();
    assert!((1190..=1200).contains(&lifetime.as_secs()), "{lifetime:?}");
    for (k, val) in v.as_object().unwrap() {
        assert!(val.is_string() || val.is_array(), "{k} is {val}");
    }
}

#[tokio::test]
async fn parts_arrive_out_of_order_and_the_checksum_covers_the_contiguous_bytes() {
    let s = SimApi::start(SimConfig::default()).await;
    let chunks: Vec<Vec<u8>> = (0..4).map(|i| bytes_of(1000 + i, i as u64)).collect();
    let id = s.create_id(&chunks[0]).await;
    assert_eq!(s.put_part(&id, 3, &chunks[3]).await.status, StatusCode::OK);
    // Part 3 waits for 1 and 2: the checksum covers part 0 only.
    let v = s.get(&id, true).await.json();
    assert_eq!(v["checksum"], sha256_hex(&chunks[0]));
    assert_eq!(s.put_part(&id, 1, &chunks[1]).await.status, StatusCode::OK);
    let r = s.put_part(&id, 2, &chunks[2]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["chunkedUploadParts"].as_array().unwrap().len(), 4);
    let all = chunks.concat();
    assert_eq!(s.get(&id, true).await.json()["checksum"], sha256_hex(&all));
    let c = s.commit(&id).await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(c.json()["committed"], "true");
    assert_eq!(c.json()["totalSize"], all.len().to_string());
    let i = s.inspect(&id).await;
    assert_eq!((i["state"].as_str(), i["sha256"].as_str()), (Some("committed"), Some(sha256_hex(&all).as_str())));
    let content =
        s.http.send(Method::GET, &format!("{}/__sim/uploads/{id}/content", s.running.url()), &[], "").await.unwrap();
    assert_eq!(content.body, all);
}

#[tokio::test]
async fn a_part_already_received_cannot_be_replaced() {
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"zero").await;
    assert_eq!(s.put_part(&id, 1, b"one").await.status, StatusCode::OK);
    let again = s.put_part(&id, 1, b"ONE!").await;
    assert_eq!((again.status, code(&again)), (StatusCode::BAD_REQUEST, "CHUNKED_UPLOAD_PART_ALREADY_EXISTS".into()));
    let zero = s.put_part(&id, 0, b"x").await;
    assert_eq!(code(&zero), "CHUNKED_UPLOAD_PART_ALREADY_EXISTS", "create holds part 0");
    assert_eq!(s.get(&id, true).await.json()["checksum"], sha256_hex(b"zeroone"));
    assert_eq!(s.stats().await["duplicate_parts"], 2);
}

#[tokio::test]
async fn nothing_is_added_after_commit_and_commit_happens_once() {
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"zero").await;
    assert_eq!(s.commit(&id).await.status, StatusCode::OK);
    assert_eq!(code(&s.put_part(&id, 1, b"late").await), "CHUNKED_UPLOAD_ALREADY_COMMITTED");
    assert_eq!(code(&s.commit(&id).await), "CHUNKED_UPLOAD_ALREADY_COMMITTED");
    assert_eq!(s.get(&id, false).await.json()["committed"], "true");
}

#[tokio::test]
async fn commit_is_refused_until_the_parts_are_contiguous() {
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"zero").await;
    s.put_part(&id, 2, b"two").await;
    let r = s.commit(&id).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "CHUNKED_UPLOAD_PARTS_NOT_CONTIGUOUS".into()));
    assert!(r.json()["message"].as_str().unwrap().contains("part 1"));
    s.put_part(&id, 1, b"one").await;
    assert_eq!(s.commit(&id).await.status, StatusCode::OK);
}

#[tokio::test]
async fn part_count_total_size_and_request_size_limits_are_enforced_per_account() {
    let s = SimApi::start(small_limits()).await;
    let r = s.create(&[1; 41]).await;
    assert_eq!(code(&r), "CHUNKED_UPLOAD_PART_TOO_LARGE");
    let v = s.create(&[1; 40]).await.json();
    assert_eq!((v["maxChunkedUploadParts"].as_str(), v["maxTotalSize"].as_str()), (Some("3"), Some("100")));
    let id = v["chunkedUploadId"].as_str().unwrap();
    assert_eq!(code(&s.put_part(id, 3, &[1; 5]).await), "CHUNKED_UPLOAD_TOO_MANY_PARTS");
    assert_eq!(s.put_part(id, 1, &[1; 40]).await.status, StatusCode::OK);
    assert_eq!(code(&s.put_part(id, 2, &[1; 21]).await), "CHUNKED_UPLOAD_TOO_LARGE");
    assert_eq!(s.put_part(id, 2, &[1; 20]).await.json()["totalSize"], "100");
    // The defaults hold for other accounts.
    let other = s
        .http
        .send(
            Method::POST,
            &format!("{}/restapi/v2.1/accounts/42/chunked_uploads", s.running.url()),
            &[("authorization", "Bearer t"), ("content-type", "application/json")],
            part_body(&[1; 41]),
        )
        .await
        .unwrap();
    assert_eq!(other.json()["maxChunkedUploadParts"], "128");
}

#[tokio::test]
async fn an_expired_upload_is_refused_by_every_route_and_frees_the_quota() {
    let mut c = SimConfig::default();
    c.limits.quota_uploads = 1;
    let s = SimApi::start(c).await;
    let id = s.create_id(b"zero").await;
    assert_eq!(code(&s.create(b"second").await), "CHUNKED_UPLOAD_QUOTA_EXCEEDED");
    s.advance_clock(20 * 60).await;
    assert_eq!(code(&s.get(&id, false).await), "CHUNKED_UPLOAD_EXPIRED");
    assert_eq!(code(&s.put_part(&id, 1, b"one").await), "CHUNKED_UPLOAD_EXPIRED");
    assert_eq!(code(&s.commit(&id).await), "CHUNKED_UPLOAD_EXPIRED");
    assert_eq!(code(&s.delete(&id).await), "CHUNKED_UPLOAD_EXPIRED");
    assert_eq!(s.create(b"second").await.status, StatusCode::CREATED);
    assert_eq!(s.inspect(&id).await["expired"], true);
}

#[tokio::test]
async fn quota_counts_a_members_uploads_and_bytes_until_deleted_or_used() {
    let mut c = SimConfig::default();
    c.limits.quota_uploads = 3;
    c.limits.quota_bytes = 100;
    let s = SimApi::start(c).await;
    let a = s.create_id(&[0; 10]).await;
    let b = s.create_id(&[0; 10]).await;
    let committed = s.create_id(&[0; 10]).await;
    s.commit(&committed).await;
    let r = s.create(&[0; 10]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "CHUNKED_UPLOAD_QUOTA_EXCEEDED".into()));
    assert_eq!(s.as_member("another-member").create(&[0; 10]).await.status, StatusCode::CREATED, "quota is per member");
    assert_eq!(s.delete(&a).await.status, StatusCode::OK);
    let c2 = s.create_id(&[0; 10]).await;
    // Bytes: 3 uploads of 10 bytes held; parts may add up to 100 in all.
    assert_eq!(s.put_part(&b, 1, &[0; 70]).await.status, StatusCode::OK);
    assert_eq!(code(&s.put_part(&c2, 1, &[0; 1]).await), "CHUNKED_UPLOAD_QUOTA_EXCEEDED");
    let used = s.control(Method::POST, &format!("uploads/{committed}/consume"), Value::Null).await;
    assert_eq!(used["consumed"], committed.as_str());
    assert_eq!(s.put_part(&c2, 1, &[0; 10]).await.status, StatusCode::OK, "a used upload stops counting");
    assert_eq!(code(&s.get(&committed, false).await), "CHUNKED_UPLOAD_NOT_FOUND");
}

#[tokio::test]
async fn a_token_is_required_and_uploads_belong_to_their_member() {
    let s = SimApi::start(SimConfig::default()).await;
    let none =
        s.http.send(Method::POST, &s.base, &[("content-type", "application/json")], part_body(b"x")).await.unwrap();
    assert_eq!((none.status, code(&none)), (StatusCode::UNAUTHORIZED, "USER_AUTHENTICATION_FAILED".into()));
    let id = s.create_id(b"mine").await;
    let thief = s.as_member("someone-else");
    for r in [
        thief.get(&id, false).await,
        thief.put_part(&id, 1, b"x").await,
        thief.commit(&id).await,
        thief.delete(&id).await,
    ] {
        assert_eq!((r.status, code(&r)), (StatusCode::NOT_FOUND, "CHUNKED_UPLOAD_NOT_FOUND".into()));
    }
    assert_eq!(s.get(&id, false).await.status, StatusCode::OK);

    let c = SimConfig { tokens: vec!["only-this".into()], ..SimConfig::default() };
    let strict = SimApi::start(c).await;
    assert_eq!(strict.create(b"x").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(strict.as_member("only-this").create(b"x").await.status, StatusCode::CREATED);
}

/// Sends a commit with neither Content-Length nor Transfer-Encoding, as some clients do.
async fn raw_commit_without_length(s: &SimApi, id: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(s.running.addr).await.unwrap();
    let req = format!(
        "PUT /restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}?action=commit HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_commit_without_a_length_is_answered_411_like_the_real_front_end() {
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"zero").await;
    let answer = raw_commit_without_length(&s, &id).await;
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    assert!(answer.contains("text/html") && answer.contains("Length Required"), "{answer}");
    assert_eq!(s.get(&id, false).await.json()["committed"], "false");

    let lenient = SimApi::start(SimConfig { require_commit_length: false, ..SimConfig::default() }).await;
    let id = lenient.create_id(b"zero").await;
    assert!(raw_commit_without_length(&lenient, &id).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn bodies_must_be_json_with_standard_base64_data() {
    let s = SimApi::start(SimConfig::default()).await;
    let auth = format!("Bearer {TOKEN}");
    let octets = s
        .http
        .send(Method::POST, &s.base, &[("authorization", &auth), ("content-type", "application/octet-stream")], "raw")
        .await
        .unwrap();
    assert_eq!((octets.status, code(&octets)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "INVALID_CONTENT_TYPE".into()));
    for bad in [
        "not json",
        r#"{"data": 5}"#,
        r#"{"chunkedUploadId": "x"}"#,
        r#"{"data": "!!!not base64"}"#,
        r#"{"data": "YQ"}"#,
        r#"{"data": ""}"#,
    ] {
        let r = s.call(Method::POST, "", bad.to_owned()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            matches!(code(&r).as_str(), "INVALID_REQUEST_BODY" | "CHUNKED_UPLOAD_EMPTY_PART"),
            "{bad}: {}",
            code(&r)
        );
    }
    let bad_seq = s.call(Method::PUT, "/ABC/one", part_body(b"x")).await;
    assert_eq!(code(&bad_seq), "INVALID_PART_SEQUENCE");
    let bad_account = s
        .http
        .send(
            Method::POST,
            &format!("{}/restapi/v2.1/accounts/12ab/chunked_uploads", s.running.url()),
            &[("authorization", &auth), ("content-type", "application/json")],
            part_body(b"x"),
        )
        .await
        .unwrap();
    assert_eq!(code(&bad_account), "INVALID_ACCOUNT_ID");
    assert_eq!(s.stats().await["created"], 0);
}

#[tokio::test]
async fn v2_and_v2_1_serve_the_same_routes_under_the_one_configured_prefix() {
    let s = SimApi::start(SimConfig::default()).await;
    let auth = format!("Bearer {TOKEN}");
    let guid = "3216E4B2-0A1B-4C2D-8E3F-34CC91813EA2";
    for base in [
        format!("{}/restapi/v2/accounts/{ACCOUNT}/chunked_uploads", s.running.url()),
        format!("{}/restapi/v2.1/accounts/{guid}/chunked_uploads", s.running.url()),
    ] {
        let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let r = s.http.send(Method::POST, &base, &h, part_body(b"abc")).await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{base}");
        let id = r.json()["chunkedUploadId"].as_str().unwrap().to_owned();
        let c = s
            .http
            .send(Method::PUT, &format!("{base}/{id}?action=commit"), &[h[0], ("content-length", "0")], "")
            .await
            .unwrap();
        assert_eq!(c.status, StatusCode::OK, "{base}");
        assert_eq!(s.http.send(Method::DELETE, &format!("{base}/{id}"), &h, "").await.unwrap().status, StatusCode::OK);
    }
    let other = s
        .http
        .send(
            Method::GET,
            &format!("{}/restapi/v2.1/accounts/1/envelopes", s.running.url()),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    // DocuSign serves the API under /restapi only: a doubled prefix, another prefix or none is
    // not found, so a gateway that doubles the prefix fails here as it would there.
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for wrong in ["/restapi/restapi/v2.1", "/v2.1", "/a/b/v2.1"] {
        let url = format!("{}{wrong}/accounts/{ACCOUNT}/chunked_uploads", s.running.url());
        let r = s.http.send(Method::POST, &url, &h, part_body(b"abc")).await.unwrap();
        assert_eq!((r.status, code(&r)), (StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND".to_owned()), "{wrong}");
    }
    // Another prefix can be configured (an API behind a gateway of its own), or none.
    let bare = SimApi::start(SimConfig { path_prefix: String::new(), ..SimConfig::default() }).await;
    let url = format!("{}/v2.1/accounts/{ACCOUNT}/chunked_uploads", bare.running.url());
    assert_eq!(bare.http.send(Method::POST, &url, &h, part_body(b"abc")).await.unwrap().status, StatusCode::CREATED);
    assert_eq!(s.stats().await["created"], 2);
}

#[tokio::test]
async fn every_answer_announces_rate_limits_and_burst_throttling_uses_the_configured_status() {
    for status in [429u16, 400] {
        let mut c = SimConfig { throttle_status: status, ..SimConfig::default() };
        c.limits = Limits { burst_limit: 3, hourly_limit: 100, burst_window_secs: 3600, ..Limits::default() };
        let s = SimApi::start(c).await;
        let ok = s.create(b"one").await;
        assert_eq!((ok.header("x-ratelimit-limit"), ok.header("x-ratelimit-remaining")), ("100", "99"));
        assert_eq!((ok.header("x-burstlimit-limit"), ok.header("x-burstlimit-remaining")), ("3", "2"));
        let reset: i64 = ok.header("x-ratelimit-reset").parse().unwrap();
        assert_eq!(reset % 3600, 0, "reset is the top of an hour");
        let refused = s.create(b"").await; // an error answer counts and announces too
        assert_eq!(refused.header("x-burstlimit-remaining"), "1");
        s.create(b"three").await;
        let throttled = s.create(b"four").await;
        assert_eq!(throttled.status.as_u16(), status);
        assert_eq!(code(&throttled), "BURST_APIINVOCATION_LIMIT_EXCEEDED");
        assert_eq!(throttled.header("x-burstlimit-remaining"), "0");
        assert_eq!(s.stats().await["throttled"], 1);
    }
}

#[tokio::test]
async fn the_hourly_limit_refuses_every_call_until_the_next_hour() {
    let mut c = SimConfig::default();
    c.limits.hourly_limit = 2;
    // The next hour can be up to 60 minutes away: outlive it.
    c.limits.lifetime_secs = 2 * 3600;
    let s = SimApi::start(c).await;
    let id = s.create_id(b"a").await;
    s.get(&id, false).await;
    let r = s.get(&id, false).await;
    assert_eq!((r.status, code(&r)), (StatusCode::TOO_MANY_REQUESTS, "HOURLY_APIINVOCATION_LIMIT_EXCEEDED".into()));
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    let reset: i64 = r.header("x-ratelimit-reset").parse().unwrap();
    let now = s.control(Method::POST, "clock?advance_secs=0", Value::Null).await["now"].as_i64().unwrap();
    s.advance_clock(reset - now).await;
    assert_eq!(s.get(&id, false).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_envelope_dialect_wraps_successes_and_errors() {
    let s =
        SimApi::start(SimConfig { dialect: Dialect::Wrapped, bool_style: BoolStyle::Title, ..SimConfig::default() })
            .await;
    let r = s.create(b"abc").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["data"]["totalSize"], "3");
    assert_eq!(v["data"]["committed"], "False");
    let id = v["data"]["chunkedUploadId"].as_str().unwrap().to_owned();
    let e = s.put_part(&id, 0, b"x").await.json();
    assert_eq!(
        e,
        json!({"success": false, "error": {"code": "CHUNKED_UPLOAD_PART_ALREADY_EXISTS", "message": "Part 0 was already received and cannot be replaced."}})
    );
}

#[tokio::test]
async fn injected_latency_errors_and_throttling_apply_to_the_chosen_operations() {
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"zero").await;
    s.faults(json!({"error_next": 1, "error_status": 502, "ops": ["add_part"]})).await;
    assert_eq!(s.get(&id, false).await.status, StatusCode::OK, "get is not a chosen op");
    let failed = s.put_part(&id, 1, b"one").await;
    assert_eq!((failed.status, code(&failed)), (StatusCode::BAD_GATEWAY, "UNSPECIFIED_ERROR".into()));
    assert_eq!(s.inspect(&id).await["parts"], json!([[0, 4]]), "an injected error stores nothing");
    assert_eq!(s.put_part(&id, 1, b"one").await.status, StatusCode::OK);

    s.faults(json!({"throttle_rate": 1.0})).await;
    let t = s.get(&id, false).await;
    assert_eq!((t.status, code(&t)), (StatusCode::TOO_MANY_REQUESTS, "BURST_APIINVOCATION_LIMIT_EXCEEDED".into()));

    s.faults(json!({"latency_ms": 150, "jitter_ms": 20})).await;
    let started = Instant::now();
    assert_eq!(s.get(&id, false).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    s.faults(json!({})).await;
    assert_eq!(s.stats().await["injected_errors"], 1);
}

#[tokio::test]
async fn store_then_drop_applies_the_part_but_never_answers() {
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"zero").await;
    s.faults(json!({"drop_after_store_next": 1, "ops": ["add_part"]})).await;
    let auth = format!("Bearer {TOKEN}");
    let dropped = s
        .http
        .send(
            Method::PUT,
            &format!("{}/{id}/1", s.base),
            &[("authorization", &auth), ("content-type", "application/json")],
            part_body(b"one"),
        )
        .await;
    assert!(dropped.is_err(), "the client saw an answer: {dropped:?}");
    assert_eq!(s.inspect(&id).await["parts"], json!([[0, 4], [1, 3]]), "the part was stored");
    assert_eq!(code(&s.put_part(&id, 1, b"one").await), "CHUNKED_UPLOAD_PART_ALREADY_EXISTS");
    assert_eq!(s.stats().await["dropped"], 1);
}

#[tokio::test]
async fn the_faults_route_refuses_unknown_or_out_of_range_settings() {
    let s = SimApi::start(SimConfig::default()).await;
    let url = format!("{}/__sim/faults", s.running.url());
    for bad in [json!({"error_rate": 2.0}), json!({"nonsense": 1}), json!({"error_status": 404})] {
        let r = s.http.send(Method::PUT, &url, &[], bad.to_string()).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(s.control(Method::GET, "faults", Value::Null).await["error_rate"], 0.0);
}

#[tokio::test]
async fn stats_count_uploads_left_open() {
    let s = SimApi::start(SimConfig::default()).await;
    let a = s.create_id(b"a").await;
    let b = s.create_id(b"b").await;
    let c = s.create_id(b"c").await;
    assert_eq!(s.stats().await["open"], 3);
    s.commit(&a).await;
    s.delete(&b).await;
    let st = s.stats().await;
    assert_eq!(
        (st["open"].as_u64(), st["created"].as_u64(), st["committed"].as_u64(), st["deleted"].as_u64()),
        (Some(1), Some(3), Some(1), Some(1))
    );
    assert_eq!(s.inspect(&c).await["state"], "open");
    assert_eq!(s.inspect(&b).await["state"], "deleted");
}

#[tokio::test]
async fn digest_storage_keeps_the_checksum_but_not_the_bytes() {
    let s = SimApi::start(SimConfig { storage: Storage::Digest, ..SimConfig::default() }).await;
    let (p0, p1) = (bytes_of(5000, 1), bytes_of(3000, 2));
    let id = s.create_id(&p0).await;
    s.put_part(&id, 1, &p1).await;
    assert_eq!(s.get(&id, true).await.json()["checksum"], sha256_hex(&[p0, p1].concat()));
    let content =
        s.http.send(Method::GET, &format!("{}/__sim/uploads/{id}/content", s.running.url()), &[], "").await.unwrap();
    assert_eq!(content.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_sim_command_prints_its_address_and_stops_on_sigterm() {
    let mut sim = Binary::start(&["sim", "--listen", "127.0.0.1:0", "--dialect", "envelope"], &[], false, 1);
    assert!(sim.url.starts_with("http://127.0.0.1:"), "{}", sim.url);
    let r = Http::new()
        .send(
            Method::POST,
            &format!("{}/restapi/v2.1/accounts/1/chunked_uploads", sim.url),
            &[("authorization", "Bearer t"), ("content-type", "application/json")],
            part_body(b"hi"),
        )
        .await
        .unwrap();
    assert_eq!(r.json()["success"], true);
    sim.signal("TERM");
    let status = sim.wait().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_front_end_answers_oversized_requests_and_chosen_faults_with_html_pages() {
    assert_eq!(SimConfig::default().limits.quota_uploads, 64, "DocuSign's documented default");
    let s = SimApi::start(SimConfig { max_request_bytes: 4096, ..SimConfig::default() }).await;
    // Over the request cap: 413 and an HTML page, before the API looks at it.
    let big = s.create(&[7; 4000]).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.header("content-type").starts_with("text/html"), "{:?}", big.headers);
    assert!(String::from_utf8_lossy(&big.body).contains("<html>"));
    let id = s.create_id(&[7; 100]).await;
    // Throttling and server errors as HTML pages, without error codes or rate-limit headers.
    s.faults(json!({"html_errors": true, "throttle_next": 1, "error_next": 1, "error_status": 502})).await;
    for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_GATEWAY] {
        let r = s.get(&id, false).await;
        assert_eq!(r.status, status);
        assert!(r.header("content-type").starts_with("text/html") && r.header("x-ratelimit-remaining").is_empty());
        assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err(), "not JSON");
    }
    // A checksum left out on request.
    s.faults(json!({"omit_checksum": true})).await;
    assert!(s.get(&id, true).await.json().get("checksum").is_none());
    s.faults(json!({})).await;
    assert_eq!(s.get(&id, true).await.json()["checksum"], sha256_hex(&[7; 100]));
}

/// An envelope whose documents name `ids` by `remoteUrl`, sent to the simulator as `token`.
async fn envelope_as(s: &SimApi, token: &str, ids: &[&str]) -> Resp {
    let documents: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"documentId": (i + 1).to_string(), "name": "d.pdf", "remoteUrl": format!("docusignchunkedupload://{id}")}))
        .collect();
    let body = json!({"emailSubject": "Please sign", "status": "sent", "documents": documents});
    let auth = format!("Bearer {token}");
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes", s.running.url());
    s.http
        .send(Method::POST, &url, &[("authorization", &auth), ("content-type", "application/json")], body.to_string())
        .await
        .unwrap()
}

#[tokio::test]
async fn envelopes_use_the_callers_committed_uploads_and_refuse_any_other_using_nothing() {
    let mut config = SimConfig::default();
    config.limits.hourly_limit = 1000;
    let s = SimApi::start(config).await;
    let committed = |data: &'static [u8]| {
        let s = &s;
        async move {
            let id = s.create_id(data).await;
            assert_eq!(s.commit(&id).await.status, StatusCode::OK);
            id
        }
    };
    let (a, b, c) = (committed(b"first").await, committed(b"second").await, committed(b"third").await);
    let open = s.create_id(b"open").await;
    let deleted = committed(b"deleted").await;
    assert_eq!(s.delete(&deleted).await.status, StatusCode::OK);
    let theirs = {
        let other = s.as_member("someone-else");
        let id = other.create_id(b"theirs").await;
        assert_eq!(other.commit(&id).await.status, StatusCode::OK);
        id
    };

    // Used: 201 with the envelope's summary; both uploads are consumed.
    let r = envelope_as(&s, TOKEN, &[&a, &b]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let envelope_id = v["envelopeId"].as_str().unwrap();
    assert!(chunkgate::ids::is_guid(envelope_id), "{v}");
    assert_eq!(v["uri"], format!("/envelopes/{envelope_id}"));
    assert_eq!(v["status"], "sent");
    assert!(humantime::parse_rfc3339(v["statusDateTime"].as_str().unwrap()).is_ok(), "{v}");
    for id in [&a, &b] {
        assert_eq!(s.inspect(id).await["state"], "consumed");
    }
    // An envelope naming a good upload beside a bad one is refused, and the good one stays unused.
    for (bad, why) in [
        (a.as_str(), "was already used"),
        (open.as_str(), "is not committed"),
        (deleted.as_str(), "was deleted"),
        (theirs.as_str(), "does not exist"),
        ("6D8A7F52-3D2B-4D91-9A62-1F2E3D4C5B6A", "does not exist"),
        (c.as_str(), "names twice"),
    ] {
        let r = envelope_as(&s, TOKEN, &[&c, bad]).await;
        assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "CHUNKED_UPLOAD_NOT_USABLE".into()), "{bad}");
        assert!(r.json()["message"].as_str().unwrap().contains(why), "{bad}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(s.inspect(&c).await["state"], "committed", "{bad}");
        // Every envelope call counts against the account's hourly limit, refused or not.
        let remaining: i64 = r.header("x-ratelimit-remaining").parse().unwrap();
        assert_eq!(remaining, 1000 - s.stats().await["requests"].as_i64().unwrap(), "{bad}");
    }
    // Expired: past the upload's twenty minutes, a committed upload can no longer be used.
    s.advance_clock(1201).await;
    let r = envelope_as(&s, TOKEN, &[&c]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "CHUNKED_UPLOAD_NOT_USABLE".into()));
    assert!(r.json()["message"].as_str().unwrap().contains("has expired"));
    let st = s.stats().await;
    assert_eq!((st["envelopes"].as_u64(), st["used"].as_u64()), (Some(1), Some(2)), "{st}");
    // Only creation is simulated: other envelope routes are not found.
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes/{envelope_id}", s.running.url());
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(
        s.http.send(Method::GET, &url, &[("authorization", &auth)], "").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

/// HEAD over HTTP/2 is answered with headers only (a body had the stream reset, PROTOCOL_ERROR),
/// keeping the length GET's body would have.
#[tokio::test]
async fn head_over_http2_is_answered_with_headers_only() {
    use http_body_util::BodyExt;
    let s = SimApi::start(SimConfig::default()).await;
    let id = s.create_id(b"eighteen bytes!!!!").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<chunkgate::body::Body>();
    for (method, status) in [(Method::GET, StatusCode::OK), (Method::HEAD, StatusCode::METHOD_NOT_ALLOWED)] {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}/{id}", s.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(chunkgate::body::empty())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!((resp.version(), resp.status()), (http::Version::HTTP_2, status), "{method}");
        let length: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        match method {
            Method::GET => assert_eq!(body.len(), length),
            _ => assert!(body.is_empty() && length > 0, "{length} {body:?}"),
        }
    }
}
