//! Operations: metrics after real traffic, health and readiness, and logs that never carry a token
//! or document bytes. A test binary of its own: metrics are process-wide, so no other test's
//! uploads may count here.

#[path = "support/mod.rs"]
mod common;

use std::{io::Read, time::Duration};

use base64::Engine;
use chunkgate::sim::SimConfig;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;

async fn get(http: &Http, url: &str) -> Resp {
    http.send(Method::GET, url, &[], "").await.unwrap()
}

/// The value of the sample `name{labels}` (labels as rendered, e.g. `op="add_part"`).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let matches = key == name
            || (key.starts_with(&format!("{name}{{")) && labels.iter().all(|l| key.contains(l)) && !labels.is_empty());
        matches.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn metrics_count_what_an_upload_and_a_passthrough_did() {
    let s = Stack::default().await;
    let data = bytes_of(PART * 3, 1);
    let ok = s.upload(&data, &[]).await;
    s.assert_committed(&ok, &data).await;
    let bad = s
        .upload(&bytes_of(PART, 2), &[("content-digest", "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:")])
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let auth = format!("Bearer {TOKEN}");
    let id = ok.header("x-chunkgate-upload-id");
    let pass = s
        .http
        .send(Method::GET, &format!("{}/{id}", s.upload_url(ACCOUNT)), &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(pass.status, StatusCode::OK);

    let m = get(&s.http, &format!("http://{}/metrics", s.gw.admin_addr)).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.header("content-type").starts_with("text/plain"));
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    let v = |name: &str, labels: &[&str]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(v("chunkgate_uploads_started_total", &[]), 2.0);
    assert_eq!(v("chunkgate_uploads_committed_total", &[]), 1.0);
    assert_eq!(v("chunkgate_uploads_failed_total", &["reason=\"DIGEST_MISMATCH\""]), 1.0);
    assert_eq!(v("chunkgate_upload_bytes_total", &[]), (PART * 3) as f64);
    assert_eq!(v("chunkgate_parts_total", &[]), 3.0);
    // Parts 1 and 2 of the committed upload; the failed one was a single part (part 0 rides on create).
    assert_eq!(v("chunkgate_upstream_call_duration_seconds_count", &["op=\"add_part\""]), 2.0);
    assert_eq!(v("chunkgate_upstream_call_duration_seconds_count", &["op=\"create\""]), 2.0);
    assert_eq!(v("chunkgate_upstream_call_duration_seconds_count", &["op=\"commit\""]), 1.0);
    assert_eq!(v("chunkgate_upstream_call_duration_seconds_count", &["op=\"delete\""]), 1.0);
    assert_eq!(v("chunkgate_passthrough_requests_total", &["status=\"200\""]), 1.0);
    assert_eq!(v("chunkgate_uploads_in_flight", &[]), 0.0);
    assert_eq!(v("chunkgate_upload_bytes_in_flight", &[]), 0.0);
    assert_eq!(v("chunkgate_queue_wait_seconds_count", &[]), 2.0);
    // The simulator's last announcement: 500 per window less the calls made so far.
    let remaining = v("chunkgate_upstream_ratelimit_remaining", &["account=\"1234567\"", "window=\"burst\""]);
    let calls = s.sim.stats().await["requests"].as_f64().unwrap();
    assert_eq!(remaining, 500.0 - calls);
    // The account's hourly budget: every call counted, nothing reserved once the uploads ended.
    assert_eq!(v("chunkgate_budget_calls_used", &["account=\"1234567\""]), calls);
    assert_eq!(v("chunkgate_budget_calls_reserved", &["account=\"1234567\""]), 0.0);
    assert_eq!(v("chunkgate_budget_calls_free", &["account=\"1234567\""]), 3000.0 - calls);
    // The member holds the committed upload until it is used or deleted; labelled by a digest
    // of the token, never the token.
    assert!(!text.contains(TOKEN), "the token is in the metrics");
    let held = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("chunkgate_quota_uploads_held{member=\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };
    assert_eq!(held(&text), Some(1.0), "{text}");
    let deleted = s
        .http
        .send(Method::DELETE, &format!("{}/{id}", s.upload_url(ACCOUNT)), &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(deleted.status, StatusCode::OK);
    let after = get(&s.http, &format!("http://{}/metrics", s.gw.admin_addr)).await;
    assert_eq!(held(&String::from_utf8_lossy(&after.body)), Some(0.0), "shown at 0 once it holds nothing");
    // A passthrough the gateway answers itself (no upstream there) counts by the status the
    // client got.
    let mut nowhere = gateway_config(&s.sim, "http://127.0.0.1:1".into());
    nowhere.retry.max_attempts = 1;
    let g = chunkgate::edge::gateway::spawn(nowhere).await.unwrap();
    let failed = s
        .http
        .send(
            Method::GET,
            &format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}", g.url()),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!((failed.status, code(&failed)), (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE".to_owned()));
    let text =
        String::from_utf8(get(&s.http, &format!("http://{}/metrics", g.admin_addr)).await.body.to_vec()).unwrap();
    assert_eq!(sample(&text, "chunkgate_passthrough_requests_total", &["status=\"502\""]), Some(1.0), "{text}");
}

#[tokio::test]
async fn healthz_answers_and_readyz_follows_the_upstream_and_the_drain() {
    let s = Stack::default().await;
    let admin = format!("http://{}", s.gw.admin_addr);
    assert_eq!(get(&s.http, &format!("{admin}/healthz")).await.status, StatusCode::OK);
    assert_eq!(get(&s.http, &format!("{admin}/readyz")).await.status, StatusCode::OK);
    s.gw.gateway.uploads.start_draining();
    let draining = get(&s.http, &format!("{admin}/readyz")).await;
    assert_eq!((draining.status, draining.body.as_ref()), (StatusCode::SERVICE_UNAVAILABLE, &b"draining\n"[..]));

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let down = Stack::start(SimConfig::default(), |c| c.upstream.base_url = dead).await;
    let r = get(&down.http, &format!("http://{}/readyz", down.gw.admin_addr)).await;
    assert_eq!((r.status, r.body.as_ref()), (StatusCode::SERVICE_UNAVAILABLE, &b"upstream unreachable\n"[..]));
    assert_eq!(get(&down.http, &format!("http://{}/healthz", down.gw.admin_addr)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn logs_at_the_most_verbose_level_never_carry_the_token_or_document_bytes() {
    let sim = SimApi::start(SimConfig::default()).await;
    sim.faults(json!({"drop_after_store_next": 1, "error_next": 1, "ops": ["add_part"]})).await;
    let mut gateway = Binary::serve(&sim, &[("CHUNKGATE_LOG__FORMAT", "json"), ("RUST_LOG", "trace")], true);
    let gw = gateway.url.clone();
    let mut stderr = gateway.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });

    // A document whose bytes are recognisable, raw and in base64 at every part boundary.
    let token = "tok-9f8e7d6c5b4a-SECRET";
    let marker = b"CONFIDENTIAL-CONTRACT-TEXT-0123456789-";
    let doc: Vec<u8> = marker.iter().copied().cycle().take(PART * 3 + 100).collect();
    let auth = format!("Bearer {token}");
    let http = Http::new();
    let url = format!("{gw}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let r = http
        .send(Method::POST, &url, &[("authorization", &auth), ("content-type", "application/pdf")], doc.clone())
        .await;
    let r = r.expect("the gateway answers");
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let id = r.header("x-chunkgate-upload-id").to_owned();
    // A failed upload and a passthrough call carry the token too.
    let bad = http
        .send(
            Method::POST,
            &url,
            &[("authorization", &auth), ("content-digest", "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:")],
            doc.clone(),
        )
        .await;
    let bad = bad.expect("the gateway answers");
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!String::from_utf8_lossy(&bad.body).contains(token), "the token is in an error body");
    http.send(Method::GET, &format!("{url}/{id}"), &[("authorization", &auth)], "").await.unwrap();
    gateway.signal("TERM");
    assert!(gateway.wait().await.success());
    let logs = logs.join().unwrap();

    assert!(logs.contains("upload finished") && logs.contains(&id), "the logs say nothing useful:\n{logs}");
    assert!(logs.contains("\"seq\""), "part spans carry their sequence");
    assert!(!logs.contains(token), "the token is in the logs");
    assert!(!logs.contains("CONFIDENTIAL-CONTRACT"), "document bytes are in the logs");
    let b64 = base64::engine::general_purpose::STANDARD;
    for part_start in [0, PART, PART * 2] {
        let encoded = b64.encode(&doc[part_start..part_start + 48]);
        assert!(!logs.contains(&encoded), "base64 of the document is in the logs");
    }
    assert!(!logs.contains(&b64.encode(token)), "the token is in the logs, encoded");
}

/// An upstream that echoes what it was sent into a field of the wrong type (the token into the
/// create's answer, a part's base64 into the part's): the parser's error quotes the value, and
/// the log line that says why the upload failed had carried it.
#[tokio::test]
async fn logs_never_quote_what_an_upstream_echoed_back() {
    let token = "tok-echoed-7c6b5a49-SECRET";
    let marker = b"CONFIDENTIAL-ECHOED-TEXT-0123456789-";
    let doc: Vec<u8> = marker.iter().copied().cycle().take(PART * 2 + 100).collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    let echoed = b64.encode(&doc[PART..PART + 300]);
    let sim = SimApi::start(SimConfig::default()).await;
    let creates = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let echo = echoed.clone();
    let (url, _) = meddler(sim.running.url(), move |m, path| {
        let json = if m == Method::POST && path.ends_with("/chunked_uploads") {
            if creates.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                return None;
            }
            format!(r#"{{"chunkedUploadId":"ABC-1","chunkedUploadParts":"Bearer {token}"}}"#)
        } else if m == Method::PUT && path.ends_with("/1") {
            format!(r#"{{"chunkedUploadId":"ABC-1","totalSize":["{echo}"]}}"#)
        } else {
            return None;
        };
        Some(answer("201 Created", "application/json", &json))
    })
    .await;
    let mut gateway = Binary::serve(&sim, &[("CHUNKGATE_UPSTREAM__BASE_URL", &url), ("RUST_LOG", "trace")], true);
    let mut stderr = gateway.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let http = Http::new();
    let target = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", gateway.url);
    let auth = format!("Bearer {token}");
    for _ in 0..2 {
        let r = http.send(Method::POST, &target, &[("authorization", &auth)], doc.clone()).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&r.body));
    }
    gateway.signal("TERM");
    assert!(gateway.wait().await.success());
    let logs = logs.join().unwrap();
    assert!(!logs.contains(token), "the echoed token is in the logs");
    assert!(!logs.contains(&echoed[..64]), "the echoed part is in the logs");
    assert!(logs.contains("a value of the wrong type"), "the logs say why:\n{logs}");
    assert!(!logs.contains("CONFIDENTIAL-ECHOED"), "document bytes are in the logs");
}

#[tokio::test]
async fn a_single_threaded_gateway_streams_uploads_at_once_and_passes_requests_through() {
    streams_and_passes_through(&[("CHUNKGATE_SERVER__WORKER_THREADS", "1")], 0).await;
}

#[tokio::test]
async fn three_event_loops_stream_uploads_at_once_and_pass_requests_through() {
    let env = [("CHUNKGATE_SERVER__WORKER_THREADS", "3"), ("CHUNKGATE_SERVER__SCHEDULER", "per-thread")];
    streams_and_passes_through(&env, 2).await;
}

#[tokio::test]
async fn the_work_stealing_scheduler_streams_uploads_at_once_and_passes_requests_through() {
    let env = [("CHUNKGATE_SERVER__WORKER_THREADS", "2"), ("CHUNKGATE_SERVER__SCHEDULER", "work-stealing")];
    streams_and_passes_through(&env, 0).await;
}

/// The real binary with `env`: three uploads at once under faults commit byte-exact, each is read
/// back through the passthrough, the process runs `loops` event loops besides its main thread's
/// (threads named `loop-{port}-{i}`), and SIGTERM ends it with 0.
async fn streams_and_passes_through(env: &[(&str, &str)], loops: usize) {
    let sim = SimApi::start(SimConfig::default()).await;
    sim.faults(json!({"drop_after_store_next": 1, "error_next": 1, "ops": ["add_part"]})).await;
    let mut gateway = Binary::serve(&sim, env, false);
    let url = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", gateway.url);
    let auth = format!("Bearer {TOKEN}");
    let docs: Vec<Vec<u8>> =
        (0..3u8).map(|i| (0..PART * 4 + 7).map(|j| (j as u8).wrapping_mul(i + 3)).collect()).collect();
    let uploads = docs.iter().map(|doc| {
        let (url, auth, doc) = (url.clone(), auth.clone(), doc.clone());
        tokio::spawn(async move {
            let headers = [("authorization", auth.as_str()), ("content-type", "application/pdf")];
            Http::new().send(Method::POST, &url, &headers, doc).await.expect("the gateway answers")
        })
    });
    let answers: Vec<Resp> = all(uploads).await;
    for (answer, doc) in answers.iter().zip(&docs) {
        assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
        let id = answer.header("x-chunkgate-upload-id");
        assert_eq!(sim.inspect(id).await["sha256"], sha256_hex(doc), "committed byte-exact");
        let read =
            Http::new().send(Method::GET, &format!("{url}/{id}"), &[("authorization", &auth)], "").await.unwrap();
        assert_eq!(read.status, StatusCode::OK, "passthrough");
    }
    assert_eq!(sim.stats().await["duplicate_parts"], 0);
    let running = std::fs::read_dir(format!("/proc/{}/task", gateway.child.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("loop-"))
        .count();
    gateway.signal("TERM");
    assert!(gateway.wait().await.success());
    assert_eq!(running, loops, "event-loop threads of the gateway process");
}

#[tokio::test]
async fn sighup_and_sigquit_drain_like_sigterm_and_sigusr1_is_ignored() {
    let sim = SimApi::start(SimConfig::default()).await;
    // Slow parts: the upload is still running when the signal comes.
    sim.faults(json!({"latency_ms": 150, "ops": ["add_part"]})).await;
    let auth = format!("Bearer {TOKEN}");
    let doc = bytes_of(PART * 6, 5);
    let upload = |url: String| {
        let (auth, doc) = (auth.clone(), doc.clone());
        tokio::spawn(async move {
            let url = format!("{url}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
            let headers = [("authorization", auth.as_str()), ("content-type", "application/pdf")];
            Http::new().send(Method::POST, &url, &headers, doc).await.expect("the gateway answers")
        })
    };
    let mut gateway = Binary::serve(&sim, &[], false);
    // Ignored: the gateway goes on serving.
    gateway.signal("USR1");
    gateway.signal("USR2");
    let r = upload(gateway.url.clone()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "still serving after SIGUSR1");
    let committed_before = sim.stats().await["committed"].as_u64().unwrap();
    for name in ["HUP", "QUIT"] {
        if name == "QUIT" {
            gateway = Binary::serve(&sim, &[], false);
        }
        let created = sim.stats().await["created"].as_u64().unwrap();
        let running = upload(gateway.url.clone());
        sim.wait_stats(|st| st["created"].as_u64().unwrap() > created).await;
        gateway.signal(name);
        // The upload in flight finishes and commits; then the process exits 0.
        let answer = running.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "SIG{name}: {}", String::from_utf8_lossy(&answer.body));
        let status = gateway.wait().await;
        assert!(status.success(), "SIG{name}: {status:?}");
    }
    let st = sim.stats().await;
    assert_eq!(st["committed"].as_u64().unwrap(), committed_before + 2, "{st}");
    assert_eq!(st["open"], 0, "nothing left open: {st}");
}

#[tokio::test]
async fn a_stop_signal_while_the_configuration_is_read_drains_rather_than_kills() {
    // The configuration comes through a FIFO: the gateway is held in start-up, reading it, until
    // the test writes it, and the signal comes in that window every time.
    let sim = SimApi::start(SimConfig::default()).await;
    let fifo = std::env::temp_dir().join(format!("chunkgate-early-signal-{}.toml", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chunkgate"))
        .args(["serve", "--config", fifo.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Past `main`'s first moment: blocked opening the FIFO.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{}\"\nallow_plain_http = true\n",
        sim.running.url()
    );
    // Opened without waiting for a reader: one killed by the signal never opens it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(status) = child.try_wait().unwrap() {
        let _ = std::fs::remove_file(&fifo);
        panic!("ended by the signal while starting, with no drain: {status:?}");
    }
    let mut writer = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap()
    };
    std::io::Write::write_all(&mut writer, config.as_bytes()).unwrap();
    drop(writer);
    let ended = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut logs = String::new();
        child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
        (status, logs)
    });
    let (status, logs) =
        tokio::time::timeout(Duration::from_secs(20), ended).await.expect("it drains and exits").unwrap();
    let _ = std::fs::remove_file(&fifo);
    // Killed by the signal's default action before: no status code, no drain.
    assert_eq!(status.code(), Some(0), "{status:?}: {logs}");
    assert!(logs.contains("shutdown signal received while starting"), "{logs}");
}

#[test]
fn the_demo_commits_a_byte_exact_upload_and_uses_it_in_an_envelope_through_the_gateway() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chunkgate"))
        .args(["demo", "--size", "700KiB", "--part-size", "256KiB", "--latency-ms", "0"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |name: &str| {
        stdout.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_owned()).unwrap_or_default()
    };
    assert_eq!(line("status"), "200 OK");
    assert_eq!(line("parts"), "3");
    assert_eq!(line("checksum matched"), "yes");
    assert!(line("envelope").ends_with("(created), created through the gateway with the upload"), "{stdout}");
    assert!(line("upload used").starts_with("yes"), "{stdout}");
    // Create, two parts, the checksum read, the commit, and the envelope.
    assert_eq!(line("upstream calls"), "6 (0 answered with an injected fault)", "{stdout}");
}
