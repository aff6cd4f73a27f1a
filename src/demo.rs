//! `chunkgate demo`: the simulator and the gateway in one process, a document streamed through
//! them with a progress bar, an envelope created through the gateway that uses the upload, and a
//! report of what happened. Needs no config file and no network.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncReadExt, sync::mpsc};

use crate::{
    body::{Body, BoxError},
    config::Config,
    edge::gateway,
    sim::{self, SimConfig, config::Storage},
    upstream::resource::hex,
};

/// What the demo is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of generated document (ignored with `file`).
    pub size: u64,
    pub file: Option<PathBuf>,
    pub part_size: usize,
    pub max_in_flight: usize,
    /// Latency the simulator adds to every call, so parts visibly overlap.
    pub latency_ms: u64,
    /// Make the simulator misbehave (5xx, stored-then-dropped parts, throttling).
    pub faults: bool,
}

/// What the demo saw.
#[derive(Clone, Debug)]
pub struct Report {
    pub status: StatusCode,
    pub upload_id: String,
    pub parts: String,
    pub bytes: u64,
    pub elapsed: Duration,
    /// SHA-256 of what the client sent, as the client computed it.
    pub sent_sha256: String,
    /// SHA-256 of what the simulator holds for the upload.
    pub upstream_sha256: String,
    pub committed: bool,
    pub sim_requests: u64,
    pub sim_faults: u64,
    /// Calls the gateway sent again, uploads it looked up after an unknown outcome, and calls that
    /// waited for the account's rate limit.
    pub retries: u64,
    pub reconciliations: u64,
    pub throttle_waits: u64,
    pub body: String,
    /// The envelope created through the gateway with the upload as its document: its status and
    /// id, or why there is none.
    pub envelope: Result<(String, String), String>,
    /// The simulator holds the upload as used by that envelope.
    pub upload_used: bool,
}

impl Report {
    pub fn checksum_matched(&self) -> bool {
        self.sent_sha256 == self.upstream_sha256
    }

    /// Everything the demo shows worked: committed byte-exact, then used by an envelope.
    pub fn succeeded(&self) -> bool {
        self.status.is_success() && self.checksum_matched() && self.envelope.is_ok() && self.upload_used
    }
}

const ACCOUNT: &str = "1234567";

/// Starts the simulator and the gateway, streams the document, and says what happened.
pub async fn run(opts: Options) -> Result<Report, String> {
    let size = document_size(&opts).await?;
    let sim = start_simulator(&opts, size).await?;
    let gw = start_gateway(&opts, size, sim.url()).await?;
    let streamed = stream(&opts, size, &gw).await?;
    let mut report = report(&sim, streamed);
    if report.committed {
        report.envelope = envelope(&gw, &report.upload_id).await;
        report.upload_used =
            sim.sim.store().inspect(&report.upload_id, 0).is_some_and(|i| i.state == sim::store::State::Consumed);
        report.sim_requests = sim.sim.stats_json()["requests"].as_u64().unwrap_or(0);
    }
    Ok(report)
}

/// Creates an envelope through the gateway (passed through to the simulator) whose one document
/// is the committed upload, named by `remoteUrl`, as a service would next.
async fn envelope(gw: &gateway::GatewayHandle, upload_id: &str) -> Result<(String, String), String> {
    let definition = serde_json::json!({
        "emailSubject": "Please sign the demo document",
        "status": "created",
        "documents": [{
            "documentId": "1",
            "name": "demo.pdf",
            "remoteUrl": format!("docusignchunkedupload://{upload_id}"),
        }],
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/restapi/v2.1/accounts/{ACCOUNT}/envelopes", gw.url()))
        .header(header::AUTHORIZATION, "Bearer demo-token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(crate::body::full(definition.to_string()))
        .expect("valid request");
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(req).await.map_err(|e| format!("the envelope request failed: {e}"))?;
    let status = response.status();
    let answer = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    match (status, json["envelopeId"].as_str(), json["status"].as_str()) {
        (StatusCode::CREATED, Some(id), Some(state)) => Ok((state.to_owned(), id.to_owned())),
        _ => Err(format!("{status} {}", String::from_utf8_lossy(&answer))),
    }
}

async fn document_size(opts: &Options) -> Result<u64, String> {
    let size = match &opts.file {
        Some(path) => {
            let meta = tokio::fs::metadata(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.is_file() {
                return Err(format!("--file {}: not a file", path.display()));
            }
            meta.len()
        }
        None => opts.size,
    };
    if size == 0 {
        return Err("the document is empty".into());
    }
    Ok(size)
}

async fn start_simulator(opts: &Options, size: u64) -> Result<sim::SimHandle, String> {
    let mut sim_config =
        SimConfig { listen: "127.0.0.1:0".parse().unwrap(), storage: Storage::Digest, ..SimConfig::default() };
    sim_config.limits.max_total_size = sim_config.limits.max_total_size.max(size);
    sim_config.limits.quota_bytes = sim_config.limits.quota_bytes.max(size);
    sim_config.faults = faults(opts);
    // A short burst window, so a throttling pause lasts at most two seconds instead of thirty.
    sim_config.limits.burst_limit = 200;
    sim_config.limits.burst_window_secs = 2;
    sim::spawn(sim_config).await.map_err(|e| format!("cannot start the simulator: {e}"))
}

async fn start_gateway(opts: &Options, size: u64, upstream: String) -> Result<gateway::GatewayHandle, String> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = upstream;
    config.upstream.allow_plain_http = true;
    config.upload.part_size = opts.part_size;
    config.upload.max_in_flight = opts.max_in_flight;
    config.upload.max_document_bytes = config.upload.max_document_bytes.max(size);
    config.rate_limit.burst_limit = 200;
    config.rate_limit.burst_window_secs = 2;
    let problems = config.problems();
    if !problems.is_empty() {
        // The demo's flags set these settings: named as the flags.
        let flags = problems
            .iter()
            .map(|p| p.replace("upload.part_size", "--part-size").replace("upload.max_in_flight", "--max-in-flight"));
        return Err(flags.collect::<Vec<_>>().join("; "));
    }
    gateway::spawn(config).await
}

/// What the client saw of its upload.
struct Streamed {
    head: http::response::Parts,
    answer: Bytes,
    elapsed: Duration,
    sent: u64,
    sent_sha256: String,
}

/// Streams the document through the gateway with a progress bar.
async fn stream(opts: &Options, size: u64, gw: &gateway::GatewayHandle) -> Result<Streamed, String> {
    let sent = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let producer = tokio::spawn(produce(opts.file.clone(), size, tx));
    let body = Counted { rx, sent: sent.clone() }.boxed_unsync();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", gw.url()))
        .header(header::AUTHORIZATION, "Bearer demo-token")
        .header(header::CONTENT_TYPE, "application/pdf")
        .header(header::CONTENT_LENGTH, size)
        .body(body)
        .expect("valid request");
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let call = tokio::spawn(async move { client.request(req).await });
    let ticker = {
        let (bar, sent, gw) = (bar.clone(), sent.clone(), gw.gateway.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(sent.load(Ordering::Relaxed));
                bar.set_message(format!("parts in flight: {}", gw.uploads.parts_in_flight()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let response = call.await.map_err(|e| e.to_string())?.map_err(|e| format!("the request failed: {e}"))?;
    let (head, incoming) = response.into_parts();
    let answer = incoming.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let elapsed = started.elapsed();
    ticker.abort();
    bar.set_position(sent.load(Ordering::Relaxed));
    bar.finish_with_message("done");
    let sent_sha256 = producer.await.map_err(|e| e.to_string())??;
    Ok(Streamed { head, answer, elapsed, sent: sent.load(Ordering::Relaxed), sent_sha256 })
}

/// What happened, as the client saw it and as the simulator holds it.
fn report(sim: &sim::SimHandle, s: Streamed) -> Report {
    let head = |name: &str| s.head.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let upload_id = head("x-chunkgate-upload-id");
    let (upstream_sha256, committed) = match sim.sim.store().inspect(&upload_id, 0) {
        Some(i) => (i.sha256, i.state == sim::store::State::Committed),
        None => (String::new(), false),
    };
    let stats = sim.sim.stats_json();
    let (retries, reconciliations, throttle_waits) = crate::telemetry::resilience_counts();
    Report {
        retries,
        reconciliations,
        throttle_waits,
        status: s.head.status,
        parts: head("x-chunkgate-parts"),
        bytes: s.sent,
        elapsed: s.elapsed,
        sent_sha256: s.sent_sha256,
        upstream_sha256,
        committed,
        sim_requests: stats["requests"].as_u64().unwrap_or(0),
        sim_faults: ["throttled", "injected_errors", "dropped"].iter().map(|k| stats[k].as_u64().unwrap_or(0)).sum(),
        upload_id,
        body: String::from_utf8_lossy(&s.answer).into_owned(),
        envelope: Err("not tried: nothing was committed".into()),
        upload_used: false,
    }
}

/// Prints the report for a person.
pub fn print(report: &Report) {
    let mib = report.bytes as f64 / (1024.0 * 1024.0);
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!();
    println!("status            {}", report.status);
    println!("upload id         {}", report.upload_id);
    println!("parts             {}", report.parts);
    println!("bytes             {} ({mib:.1} MiB)", report.bytes);
    println!("time              {:.2} s ({:.1} MiB/s)", secs, mib / secs);
    println!("upstream calls    {} ({} answered with an injected fault)", report.sim_requests, report.sim_faults);
    println!(
        "resilience        {} retries, {} reconciliations, {} rate-limit waits",
        report.retries, report.reconciliations, report.throttle_waits
    );
    println!("committed         {}", report.committed);
    println!("sha-256 sent      {}", report.sent_sha256);
    println!("sha-256 upstream  {}", report.upstream_sha256);
    println!("checksum matched  {}", if report.checksum_matched() { "yes" } else { "NO" });
    if !report.status.is_success() {
        println!("answer            {}", report.body);
    }
    match &report.envelope {
        Ok((state, id)) => println!("envelope          {id} ({state}), created through the gateway with the upload"),
        Err(why) => println!("envelope          none: {why}"),
    }
    println!(
        "upload used       {}",
        if report.upload_used { "yes (no longer counts against the quota)" } else { "no" }
    );
}

/// Feeds the document into the channel and returns the SHA-256 of what it fed.
async fn produce(file: Option<PathBuf>, size: u64, tx: mpsc::Sender<Bytes>) -> Result<String, String> {
    const FRAME: usize = 256 * 1024;
    let mut hasher = Sha256::new();
    match file {
        Some(path) => {
            let mut f = tokio::fs::File::open(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
            loop {
                let mut buf = vec![0u8; FRAME];
                let n = f.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hasher.update(&buf);
                if tx.send(Bytes::from(buf)).await.is_err() {
                    break;
                }
            }
        }
        None => {
            let mut rng = fastrand::Rng::with_seed(size);
            let mut left = size;
            while left > 0 {
                let n = left.min(FRAME as u64) as usize;
                let mut buf = vec![0u8; n];
                rng.fill(&mut buf);
                hasher.update(&buf);
                if tx.send(Bytes::from(buf)).await.is_err() {
                    break;
                }
                left -= n as u64;
            }
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// A request body fed by a channel, counting the bytes it hands to the connection.
struct Counted {
    rx: mpsc::Receiver<Bytes>,
    sent: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|next| {
            next.map(|bytes| {
                self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(Frame::data(bytes))
            })
        })
    }
}

/// The simulator's faults for these options: latency always, failures on part calls with `--faults`.
pub fn faults(opts: &Options) -> sim::faults::Faults {
    let mut f = sim::faults::Faults { latency_ms: opts.latency_ms, ..Default::default() };
    if opts.faults {
        f.jitter_ms = opts.latency_ms;
        f.error_rate = 0.05;
        f.drop_after_store_rate = 0.1;
        f.throttle_rate = 0.03;
        f.ops = vec![sim::faults::Op::AddPart];
    }
    f
}
