//! Streaming benchmark: throughput and the gateway's peak RSS for large uploads, against a direct
//! client that PUTs the same parts straight to the simulator (the baseline), in one run.
//!
//! `cargo bench --bench upload [-- --sizes 256MiB,4GiB --part-size 16MiB --in-flight 4]`
//!
//! The simulator and the gateway run as their own processes (the release `chunkgate` binary), the
//! simulator in digest mode; the client runs here. Results are printed and written to
//! `bench/results/upload.md`. Loopback only.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chunkgate::body::{Body, BoxError};
use http::{Method, Request, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;
const ACCOUNT: &str = "1234567";

struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    /// Starts `chunkgate ARGS` with `env` and reads the URL it prints.
    fn start(args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkgate"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env("CHUNKGATE_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chunkgate");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "unexpected first line: {line}");
        Proc { child, url }
    }

    /// Peak resident set (VmHWM) in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// A body of `len` bytes made of one block handed out again and again (no per-frame allocation).
struct Repeat {
    block: Bytes,
    left: u64,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let n = self.left.min(self.block.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready((n > 0).then(|| Ok(Frame::data(self.block.slice(..n)))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

struct Run {
    secs: f64,
    upload_id: String,
}

async fn through_gateway(client: &Client<HttpConnector, Body>, gw: &str, size: u64, block: &Bytes) -> Run {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{gw}/v2.1/accounts/{ACCOUNT}/chunked_uploads"))
        .header(header::AUTHORIZATION, "Bearer bench")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .body(Repeat { block: block.clone(), left: size }.boxed())
        .unwrap();
    let started = Instant::now();
    let resp = client.request(req).await.expect("gateway answers");
    let status = resp.status();
    let id = resp.headers().get("x-chunkgate-upload-id").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
    Run { secs: started.elapsed().as_secs_f64(), upload_id: id }
}

/// The baseline: the same parts, encoded and PUT straight to the simulator with the same parallelism.
async fn direct(client: &Client<HttpConnector, Body>, sim: &str, size: u64, part: usize, in_flight: usize) -> Run {
    let base = format!("{sim}/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let block = Bytes::from(random(part));
    let send = |client: Client<HttpConnector, Body>, method: Method, url: String, raw: Bytes| async move {
        let json = chunkgate_part_json(&raw);
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header(header::AUTHORIZATION, "Bearer bench")
            .header(header::CONTENT_TYPE, "application/json")
            .body(chunkgate::body::full(json))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
        body
    };
    let started = Instant::now();
    let parts = size.div_ceil(part as u64);
    let len_of = |i: u64| (size - i * part as u64).min(part as u64) as usize;
    let created = send(client.clone(), Method::POST, base.clone(), block.slice(..len_of(0))).await;
    let v: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let id = v["chunkedUploadId"].as_str().unwrap().to_owned();
    let mut set = JoinSet::new();
    for i in 1..parts {
        while set.len() >= in_flight {
            set.join_next().await.unwrap().unwrap();
        }
        set.spawn(send(client.clone(), Method::PUT, format!("{base}/{id}/{i}"), block.slice(..len_of(i))));
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let commit = Request::builder()
        .method(Method::PUT)
        .uri(format!("{base}/{id}?action=commit"))
        .header(header::AUTHORIZATION, "Bearer bench")
        .header(header::CONTENT_LENGTH, 0)
        .body(chunkgate::body::empty())
        .unwrap();
    assert!(client.request(commit).await.unwrap().status().is_success());
    Run { secs: started.elapsed().as_secs_f64(), upload_id: id }
}

fn chunkgate_part_json(raw: &[u8]) -> Bytes {
    use base64::Engine;
    let mut out = Vec::with_capacity(raw.len() / 3 * 4 + 16);
    out.extend_from_slice(b"{\"data\":\"");
    let start = out.len();
    out.resize(start + raw.len().div_ceil(3) * 4, 0);
    base64::engine::general_purpose::STANDARD.encode_slice(raw, &mut out[start..]).unwrap();
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(7).fill(&mut v);
    v
}

fn parse_size(s: &str) -> u64 {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix("gib") {
        (n, 1024 * MIB)
    } else if let Some(n) = s.strip_suffix("mib") {
        (n, MIB)
    } else {
        (s.as_str(), 1)
    };
    num.parse::<u64>().expect("a size like 256MiB") * mult
}

fn human(bytes: u64) -> String {
    if bytes >= 1024 * MIB { format!("{} GiB", bytes / (1024 * MIB)) } else { format!("{} MiB", bytes / MIB) }
}

async fn sim_sha(client: &Client<HttpConnector, Body>, sim: &str, id: &str) -> serde_json::Value {
    let req = Request::get(format!("{sim}/__sim/uploads/{id}")).body(chunkgate::body::empty()).unwrap();
    let body = client.request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
    };
    let sizes: Vec<u64> = arg("--sizes", "256MiB,4GiB").split(',').map(parse_size).collect();
    let part = parse_size(&arg("--part-size", "16MiB")) as usize;
    let in_flight: usize = arg("--in-flight", "4").parse().unwrap();
    let largest = *sizes.iter().max().unwrap();

    let sim_env = vec![
        ("CHUNKGATE_SIM__LIMITS__MAX_PARTS", "256".to_owned()),
        ("CHUNKGATE_SIM__LIMITS__MAX_TOTAL_SIZE", (largest + MIB).to_string()),
        ("CHUNKGATE_SIM__LIMITS__MAX_REQUEST_DATA", (64 * MIB).to_string()),
        ("CHUNKGATE_SIM__LIMITS__QUOTA_BYTES", (100 * largest).to_string()),
        ("CHUNKGATE_SIM__LIMITS__QUOTA_UPLOADS", "1000".to_owned()),
        ("CHUNKGATE_SIM__LIMITS__HOURLY_LIMIT", "100000000".to_owned()),
        ("CHUNKGATE_SIM__LIMITS__BURST_LIMIT", "100000000".to_owned()),
    ];
    let sim = Proc::start(&["sim", "--listen", "127.0.0.1:0", "--storage", "digest"], &sim_env);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let block = Bytes::from(random(MIB as usize));
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let mut rows = Vec::new();
    println!("part size {}, {in_flight} parts in flight, {nproc} cores, simulator in digest mode", human(part as u64));
    println!("{:<10} {:>16} {:>16} {:>8} {:>18}", "size", "gateway MiB/s", "direct MiB/s", "ratio", "gateway peak RSS");
    for &size in &sizes {
        let gw_env = vec![
            ("CHUNKGATE_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("CHUNKGATE_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
            ("CHUNKGATE_UPSTREAM__BASE_URL", sim.url.clone()),
            ("CHUNKGATE_UPSTREAM__ALLOW_PLAIN_HTTP", "true".to_owned()),
            ("CHUNKGATE_UPLOAD__PART_SIZE", part.to_string()),
            ("CHUNKGATE_UPLOAD__MAX_PART_BYTES", (64 * MIB).to_string()),
            ("CHUNKGATE_UPLOAD__ASSUMED_MAX_PARTS", "256".to_owned()),
            ("CHUNKGATE_UPLOAD__MAX_IN_FLIGHT", in_flight.to_string()),
            ("CHUNKGATE_UPLOAD__MAX_DOCUMENT_BYTES", (largest + MIB).to_string()),
        ];
        let gw = Proc::start(&["serve"], &gw_env);
        let via = through_gateway(&client, &gw.url, size, &block).await;
        let rss = gw.peak_rss();
        drop(gw);
        let seen = sim_sha(&client, &sim.url, &via.upload_id).await;
        assert_eq!(seen["state"], "committed");
        assert_eq!(seen["total_size"], size);
        let base = direct(&client, &sim.url, size, part, in_flight).await;
        let _ = base.upload_id;
        let (g, d) = (size as f64 / MIB as f64 / via.secs, size as f64 / MIB as f64 / base.secs);
        println!("{:<10} {:>16.0} {:>16.0} {:>8.2} {:>14.1} MiB", human(size), g, d, g / d, rss as f64 / MIB as f64);
        rows.push((size, g, d, rss));
    }
    let (small, big) = (rows.first().unwrap(), rows.last().unwrap());
    let growth = big.3 as f64 / small.3 as f64 - 1.0;
    println!("peak RSS {} vs {}: {:+.1}% (target: within 10%)", human(big.0), human(small.0), growth * 100.0);

    let mut md = String::from("# Upload benchmark\n\n");
    md.push_str(&format!(
        "`cargo bench --bench upload`: part size {}, {in_flight} in flight, {nproc} cores, simulator (digest mode), gateway and client in three processes on loopback. Direct = the same parts encoded and PUT straight to the simulator.\n\n",
        human(part as u64)
    ));
    md.push_str(
        "| size | gateway MiB/s | direct MiB/s | gateway / direct | gateway peak RSS |\n|---|---|---|---|---|\n",
    );
    for (size, g, d, rss) in &rows {
        md.push_str(&format!(
            "| {} | {g:.0} | {d:.0} | {:.2} | {:.1} MiB |\n",
            human(*size),
            g / d,
            *rss as f64 / MIB as f64
        ));
    }
    md.push_str(&format!(
        "\nPeak RSS, {} against {}: {:+.1}% (target within 10%).\n",
        human(big.0),
        human(small.0),
        growth * 100.0
    ));
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results")).unwrap();
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results/upload.md"), md).unwrap();
    let _ = Duration::ZERO;
    let _ = Arc::new(());
}
