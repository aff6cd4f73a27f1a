//! The one support module of the tests (`tests/it` and `tests/ops.rs` include it): the simulator
//! and the gateway started in process on 127.0.0.1:0, the real binary started and its addresses
//! read, an HTTP client, an error code read in either dialect, tasks awaited together, and an
//! upstream that lies.
#![allow(dead_code)] // each test binary uses its own part

use base64::Engine;
use bytes::Bytes;
use chunkgate::{
    body::Body,
    config::Config,
    edge::gateway,
    sim::{self, SimConfig},
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const ACCOUNT: &str = "1234567";
pub const TOKEN: &str = "test-token-alpha";

/// An answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Body>,
}

impl Http {
    pub fn new() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http() }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        self.send_body(method, url, headers, chunkgate::body::full(body)).await
    }

    /// Sends any body: a [`chunked`] one goes out with `Transfer-Encoding: chunked`.
    pub async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Resp, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.client.request(req.body(body).unwrap()).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp { status: parts.status, headers: parts.headers, body })
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    chunkgate::upstream::resource::hex(&Sha256::digest(data))
}

/// Deterministic, non-repeating-looking test bytes.
pub fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

pub fn part_body(data: &[u8]) -> String {
    json!({ "chunkedUploadId": "ignored", "data": base64::engine::general_purpose::STANDARD.encode(data) }).to_string()
}

/// The simulator in process, with typed calls for one account and token.
pub struct SimApi {
    pub running: std::sync::Arc<sim::SimHandle>,
    pub http: Http,
    pub token: String,
    pub base: String,
}

impl SimApi {
    pub async fn start(config: SimConfig) -> Self {
        let running = std::sync::Arc::new(
            sim::spawn(SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..config }).await.unwrap(),
        );
        let base = format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", running.url());
        Self { running, http: Http::new(), token: TOKEN.to_owned(), base }
    }

    pub fn as_member(&self, token: &str) -> Self {
        Self {
            running: self.running.clone(),
            http: self.http.clone(),
            token: token.to_owned(),
            base: self.base.clone(),
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub async fn call(&self, method: Method, suffix: &str, body: impl Into<Bytes>) -> Resp {
        let auth = self.auth();
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        self.http.send(method, &format!("{}{suffix}", self.base), &headers, body).await.unwrap()
    }

    pub async fn create(&self, data: &[u8]) -> Resp {
        self.call(Method::POST, "", part_body(data)).await
    }

    /// Creates an upload and returns its id, asserting success.
    pub async fn create_id(&self, data: &[u8]) -> String {
        let r = self.create(data).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
        r.json()["chunkedUploadId"].as_str().unwrap().to_owned()
    }

    pub async fn put_part(&self, id: &str, seq: u32, data: &[u8]) -> Resp {
        self.call(Method::PUT, &format!("/{id}/{seq}"), part_body(data)).await
    }

    pub async fn get(&self, id: &str, checksum: bool) -> Resp {
        let q = if checksum { "?include=checksum" } else { "" };
        self.call(Method::GET, &format!("/{id}{q}"), Bytes::new()).await
    }

    /// Commit with an explicit `Content-Length: 0`: hyper sends none for an empty PUT, and the
    /// upstream's front end answers that with 411.
    pub async fn commit(&self, id: &str) -> Resp {
        let auth = self.auth();
        let headers = [("authorization", auth.as_str()), ("content-length", "0")];
        self.http.send(Method::PUT, &format!("{}/{id}?action=commit", self.base), &headers, Bytes::new()).await.unwrap()
    }

    pub async fn delete(&self, id: &str) -> Resp {
        self.call(Method::DELETE, &format!("/{id}"), Bytes::new()).await
    }

    pub async fn control(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/__sim/{path}", self.running.url());
        let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
        let r = self.http.send(method, &url, &[("content-type", "application/json")], body).await.unwrap();
        assert!(r.status.is_success(), "{path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        r.json()
    }

    pub async fn faults(&self, faults: Value) {
        self.control(Method::PUT, "faults", faults).await;
    }

    pub async fn stats(&self) -> Value {
        self.control(Method::GET, "stats", Value::Null).await
    }

    pub async fn inspect(&self, id: &str) -> Value {
        self.control(Method::GET, &format!("uploads/{id}"), Value::Null).await
    }

    /// The resource in a success body, whatever the dialect.
    pub fn dialect_data(&self, v: Value) -> Value {
        match self.running.sim.dialect() {
            chunkgate::config::Dialect::Docusign => v,
            chunkgate::config::Dialect::Wrapped => v["data"].clone(),
        }
    }

    /// Polls the simulator's counters until `pred` holds (cleanup runs after the client's answer).
    pub async fn wait_stats(&self, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..600 {
            let s = self.stats().await;
            if pred(&s) {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("simulator counters never reached the expected state: {}", self.stats().await);
    }

    pub async fn advance_clock(&self, secs: i64) {
        self.control(Method::POST, &format!("clock?advance_secs={secs}"), Value::Null).await;
    }
}

/// A request body of unknown length made of the frames given, trailers included.
pub struct Frames(pub std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = chunkgate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A body of unknown length (sent chunked) that yields `data` in frames of `frame` bytes.
pub fn chunked(mut data: Bytes, frame: usize) -> Body {
    let mut frames = std::collections::VecDeque::new();
    while !data.is_empty() {
        frames.push_back(http_body::Frame::data(data.split_to(frame.max(1).min(data.len()))));
    }
    Frames(frames).boxed_unsync()
}

/// The tests' gateway settings in front of `sim` (reached at `upstream`), on ports of its own.
pub fn gateway_config(sim: &SimApi, upstream: String) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = upstream;
    config.upstream.allow_plain_http = true;
    config.upstream.dialect = sim.running.sim.dialect();
    // Paced to the simulator's limits, as a deployment is to the account's.
    let limits = sim.running.sim.limits_for(ACCOUNT);
    config.rate_limit.hourly_limit = limits.hourly_limit;
    config.rate_limit.burst_limit = limits.burst_limit;
    config.rate_limit.burst_window_secs = limits.burst_window_secs;
    // Quick retries: tests should not wait out production backoffs.
    config.retry.base_backoff_ms = 5;
    config.retry.max_backoff_ms = 50;
    config.upload.part_size = PART;
    config.upload.max_in_flight = 4;
    config.upload.memory_budget_bytes = 64 * 1024 * 1024;
    config.upload.max_document_bytes = 50 * 1024 * 1024;
    config
}

/// Creates an envelope through the gateway at `gateway` whose documents use `ids` by `remoteUrl`.
pub async fn envelope_via(http: &Http, gateway: &str, ids: &[&str]) -> Resp {
    let documents: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"documentId": (i + 1).to_string(), "name": "doc.pdf", "remoteUrl": format!("docusignchunkedupload://{id}")}))
        .collect();
    let body = json!({"emailSubject": "Please sign", "status": "sent", "documents": documents});
    let auth = format!("Bearer {TOKEN}");
    let url = format!("{gateway}/restapi/v2.1/accounts/{ACCOUNT}/envelopes");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    http.send(Method::POST, &url, &headers, body.to_string()).await.unwrap()
}

/// Test part size: small, so a few hundred KiB make several parts.
pub const PART: usize = 64 * 1024;

/// The simulator and a gateway in front of it, both in process on 127.0.0.1:0.
pub struct Stack {
    pub sim: SimApi,
    pub gw: gateway::GatewayHandle,
    pub http: Http,
}

impl Stack {
    pub async fn start(sim_config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Self {
        let sim = SimApi::start(sim_config).await;
        let url = sim.running.url();
        Self::in_front_of(sim, url, tweak).await
    }

    /// A gateway whose upstream is `upstream` (a proxy in front of `sim`, say).
    pub async fn in_front_of(sim: SimApi, upstream: String, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = gateway_config(&sim, upstream);
        tweak(&mut config);
        assert_eq!(config.problems(), Vec::<String>::new());
        let gw = gateway::spawn(config).await.unwrap();
        Self { http: sim.http.clone(), sim, gw }
    }

    pub async fn default() -> Self {
        Self::start(SimConfig::default(), |_| {}).await
    }

    /// The streamed-upload URL for `account`.
    pub fn upload_url(&self, account: &str) -> String {
        format!("{}/restapi/v2.1/accounts/{account}/chunked_uploads", self.gw.url())
    }

    /// Streams `data` with a Content-Length.
    pub async fn upload(&self, data: &[u8], extra: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/octet-stream")];
        headers.extend_from_slice(extra);
        self.http.send(Method::POST, &self.upload_url(ACCOUNT), &headers, Bytes::copy_from_slice(data)).await.unwrap()
    }

    /// Streams `data` with chunked transfer encoding, in frames of `frame` bytes.
    pub async fn upload_chunked(&self, data: &[u8], frame: usize) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/octet-stream")];
        self.http
            .send_body(Method::POST, &self.upload_url(ACCOUNT), &headers, chunked(Bytes::copy_from_slice(data), frame))
            .await
            .unwrap()
    }

    /// Creates an envelope through the gateway whose documents use `ids` by `remoteUrl`.
    pub async fn envelope(&self, ids: &[&str]) -> Resp {
        envelope_via(&self.http, &self.gw.url(), ids).await
    }

    /// Asserts the upload committed and the simulator holds exactly `data`.
    pub async fn assert_committed(&self, r: &Resp, data: &[u8]) -> String {
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let id = r.header("x-chunkgate-upload-id").to_owned();
        assert_eq!(r.header("x-chunkgate-bytes"), data.len().to_string());
        assert_eq!(r.header("x-chunkgate-sha256"), sha256_hex(data));
        let body = self.sim.dialect_data(r.json());
        assert_eq!(body["committed"], "true");
        assert_eq!(body["chunkedUploadId"], id.as_str());
        let seen = self.sim.inspect(&id).await;
        assert_eq!(seen["state"], "committed");
        assert_eq!(seen["sha256"], sha256_hex(data), "the simulator holds other bytes");
        assert_eq!(seen["total_size"], data.len() as u64);
        assert_eq!(seen["parts"].as_array().unwrap().len().to_string(), r.header("x-chunkgate-parts"));
        id
    }
}

/// What a meddling upstream saw: the requests it answered itself, and the `X-Request-Id` of each
/// request (`-` for none).
#[derive(Clone, Default)]
pub struct Meddled {
    pub answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub request_ids: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Meddled {
    pub fn load(&self, order: std::sync::atomic::Ordering) -> usize {
        self.answered.load(order)
    }
}

/// An upstream that lies: a proxy on 127.0.0.1:0 in front of `target` that answers the requests
/// `meddle` picks with an answer of its own (raw bytes written on the connection) and forwards the
/// rest. Returns its base URL and what it saw.
pub async fn meddler(
    target: String,
    meddle: impl Fn(&Method, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (String, Meddled) {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let meddled = Meddled::default();
    let (seen, meddle, http) = (meddled.clone(), Arc::new(meddle), Http::new());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (seen, meddle, http, target) = (seen.clone(), meddle.clone(), http.clone(), target.clone());
            tokio::spawn(async move {
                // One request per connection, read whole: head, then Content-Length bytes.
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 1 << 16];
                let head_end = loop {
                    let Ok(n) = tcp.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or_default().split(' ');
                let method: Method = first.next().unwrap_or("GET").parse().unwrap();
                let target_path = first.next().unwrap_or("/").to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize =
                    headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = tcp.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = Bytes::copy_from_slice(&buf[head_end..head_end + len]);
                let request_id = headers.iter().find(|(k, _)| k == "x-request-id").map_or("-", |(_, v)| v.as_str());
                seen.request_ids.lock().unwrap().push(request_id.to_owned());
                if let Some(answer) = meddle(&method, &target_path) {
                    seen.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = tcp.write_all(&answer).await;
                    return;
                }
                let forwarded: Vec<(&str, &str)> = headers
                    .iter()
                    .filter(|(k, _)| {
                        ["authorization", "content-type", "content-length", "x-request-id"].contains(&k.as_str())
                    })
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let Ok(r) = http.send(method, &format!("{target}{target_path}"), &forwarded, body).await else {
                    return;
                };
                let mut out = format!("HTTP/1.1 {}\r\n", r.status).into_bytes();
                for (k, v) in &r.headers {
                    if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                        out.extend_from_slice(format!("{k}: {}\r\n", v.to_str().unwrap_or_default()).as_bytes());
                    }
                }
                out.extend_from_slice(
                    format!("content-length: {}\r\nconnection: close\r\n\r\n", r.body.len()).as_bytes(),
                );
                out.extend_from_slice(&r.body);
                let _ = tcp.write_all(&out).await;
            });
        }
    });
    (url, meddled)
}

/// A whole HTTP/1.1 answer with `status`, `content_type` and `body`, closing the connection.
pub fn answer(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The error code of a gateway or simulator answer, in either dialect (empty when there is none).
pub fn code(r: &Resp) -> String {
    let v = r.json();
    v["errorCode"].as_str().or(v["error"]["code"].as_str()).unwrap_or_default().to_owned()
}

/// Awaits every task, in order.
pub async fn all<T: Send + 'static>(tasks: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    // Collect first: a lazy iterator (`map(|_| tokio::spawn(..))`) would otherwise spawn each
    // task only after the one before it finished, and the tasks would run one at a time.
    let handles: Vec<_> = tasks.into_iter().collect();
    let mut out = Vec::with_capacity(handles.len());
    for t in handles {
        out.push(t.await.unwrap());
    }
    out
}

/// The real `chunkgate` binary, running; stopped with SIGTERM when dropped.
pub struct Binary {
    pub child: std::process::Child,
    /// The first address it prints (`serve`: the listener; `sim`: the simulator).
    pub url: String,
    /// `serve`'s admin address, from its second line.
    pub admin: Option<String>,
    /// Its stderr, when asked to keep it.
    pub stderr: Option<std::process::ChildStderr>,
}

impl Binary {
    /// `chunkgate ARGS` with `env`, its stderr kept when `logs`, and the addresses it prints read
    /// (`lines` of them).
    pub fn start(args: &[&str], env: &[(&str, &str)], logs: bool, lines: usize) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chunkgate"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(if logs { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .spawn()
            .expect("the binary starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut addresses = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let addr = line.split_whitespace().find(|w| w.starts_with("http://") || w.starts_with("https://"));
            addresses.push(addr.unwrap_or_else(|| panic!("no address in {line:?}")).to_owned());
        }
        let stderr = child.stderr.take();
        Self { child, url: addresses[0].clone(), admin: addresses.get(1).cloned(), stderr }
    }

    /// `chunkgate serve` in front of `sim`, on ports of its own, with `env` on top.
    pub fn serve(sim: &SimApi, env: &[(&str, &str)], logs: bool) -> Self {
        let upstream = sim.running.url();
        let part = PART.to_string();
        let mut all = vec![
            ("CHUNKGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("CHUNKGATE_ADMIN__LISTEN", "127.0.0.1:0"),
            ("CHUNKGATE_UPSTREAM__BASE_URL", upstream.as_str()),
            ("CHUNKGATE_UPSTREAM__ALLOW_PLAIN_HTTP", "true"),
            ("CHUNKGATE_UPLOAD__PART_SIZE", part.as_str()),
        ];
        all.extend_from_slice(env);
        Self::start(&["serve"], &all, logs, 2)
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        std::process::Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` (Debian's package) on 127.0.0.1 at a free port, without persistence;
/// killed when dropped.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { child: None, port };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs Debian's redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Stops it (SIGSTOP), as a stalled server: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets it go on (SIGCONT): what it was sent meanwhile runs now.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let status =
                std::process::Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
            assert!(status.is_ok_and(|s| s.success()), "kill -{name}");
        }
    }

    /// Kills it, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }

    /// Every key under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut conn = self.connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
