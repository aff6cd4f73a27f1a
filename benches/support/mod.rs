//! Helpers shared by the benchmark harnesses: processes of the release binary, request bodies
//! without per-frame allocation, and the direct client used as a baseline.
#![allow(dead_code)] // each harness uses its own subset

use std::{process::Command, time::Instant};

use bytes::Bytes;
use chunkgate::{
    body::{Body, BoxError},
    pipeline::part::PartJson,
};
use http::{Method, Request, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::task::JoinSet;

pub type HttpClient = Client<HttpConnector, Body>;

pub fn client() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

pub const MIB: u64 = 1024 * 1024;
pub const ACCOUNT: &str = "1234567";

pub mod hyper_floor;
pub mod tus;

/// The tests' support module: the real binary is started the same way in both.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
pub mod test_support;

/// The release binary, running (stopped when dropped), with its CPU time and memory.
pub struct Proc {
    bin: test_support::Binary,
    pub url: String,
}

impl Proc {
    /// Starts `chunkgate ARGS` with `env` and reads the URL it prints.
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("CHUNKGATE_LOG__FILTER", "warn"));
        let bin = test_support::Binary::start(args, &all, false, 1);
        assert!(
            bin.url.starts_with("http://127.0.0.1:") || bin.url.starts_with("https://127.0.0.1:"),
            "unexpected address: {}",
            bin.url
        );
        Proc { url: bin.url.clone(), bin }
    }

    pub fn pid(&self) -> u32 {
        self.bin.child.id()
    }

    /// Peak resident set (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Resident set now (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// CPU time (user + system) the process has used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }
}

/// A figure in KiB from /proc/PID/status (`VmHWM:`, `VmRSS:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time (user + system) of process `pid` so far, in seconds; 0 once it is gone.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / clock_ticks()
}

/// CPU time of this process (the benchmark's own client) so far, in seconds.
pub fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id())
}

/// CPU time of the children of `parent` (nginx's workers), in seconds.
pub fn children_cpu_secs(parent: u32) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            total += cpu_secs(pid);
        }
    }
    total
}

/// Clock ticks per second for /proc's CPU times (`getconf CLK_TCK`; 100 on Linux in practice).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A clean stop (SIGTERM) rather than the kill a dropped `Binary` gives.
        self.bin.signal("TERM");
        let _ = self.bin.child.wait();
    }
}

/// A body of `len` bytes made of one block handed out again and again (no per-frame allocation).
pub struct Repeat {
    pub block: Bytes,
    pub left: u64,
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

pub struct Run {
    pub secs: f64,
    pub upload_id: String,
}

pub async fn through_gateway(client: &HttpClient, gw: &str, size: u64, block: &Bytes) -> Run {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{gw}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads"))
        .header(header::AUTHORIZATION, "Bearer bench")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .body(Repeat { block: block.clone(), left: size }.boxed_unsync())
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
pub async fn direct(client: &HttpClient, sim: &str, size: u64, part: usize, in_flight: usize) -> Run {
    direct_with(client, sim, size, part, in_flight, false).await
}

/// The baseline, optionally taking the SHA-256 of the document as it goes (the integrity work the
/// gateway does on every byte).
pub async fn direct_with(client: &HttpClient, sim: &str, size: u64, part: usize, in_flight: usize, hash: bool) -> Run {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let base = format!("{sim}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads");
    let block = Bytes::from(random(part));
    let send = |client: HttpClient, method: Method, url: String, raw: Bytes| async move {
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
    if hash {
        hasher.update(&block[..len_of(0)]);
    }
    let created = send(client.clone(), Method::POST, base.clone(), block.slice(..len_of(0))).await;
    let v: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let id = v["chunkedUploadId"].as_str().unwrap().to_owned();
    let mut set = JoinSet::new();
    for i in 1..parts {
        while set.len() >= in_flight {
            set.join_next().await.unwrap().unwrap();
        }
        if hash {
            hasher.update(&block[..len_of(i)]);
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
    std::hint::black_box(hasher.finalize());
    Run { secs: started.elapsed().as_secs_f64(), upload_id: id }
}

/// A part's JSON body, written by the gateway's own encoder (base64-simd, no zero-fill).
pub fn chunkgate_part_json(raw: &[u8]) -> Bytes {
    PartJson::new(Bytes::copy_from_slice(raw)).to_bytes()
}

pub fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(7).fill(&mut v);
    v
}

pub fn parse_size(s: &str) -> u64 {
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

pub fn human(bytes: u64) -> String {
    if bytes >= 1024 * MIB { format!("{} GiB", bytes / (1024 * MIB)) } else { format!("{} MiB", bytes / MIB) }
}

pub async fn sim_sha(client: &HttpClient, sim: &str, id: &str) -> serde_json::Value {
    let req = Request::get(format!("{sim}/__sim/uploads/{id}")).body(chunkgate::body::empty()).unwrap();
    let body = client.request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

pub async fn get_text(client: &HttpClient, url: &str) -> String {
    let req = Request::get(url).body(chunkgate::body::empty()).unwrap();
    let resp = client.request(req).await.unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// The p-quantile (0..1) of a Prometheus histogram summed over several pages, interpolated
/// linearly within its bucket, in seconds.
pub fn quantile(pages: &[String], name: &str, p: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for page in pages {
        for line in page.lines().filter(|l| l.starts_with(&format!("{name}_bucket{{"))) {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += count,
                None => buckets.push((le, count)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let target = p * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = if count > below { (target - below) / (count - below) } else { 1.0 };
            return Some(lower + (le - lower) * within);
        }
        (lower, below) = (le, count);
    }
    None
}
