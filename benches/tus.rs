//! A 50 MB document through tus (5 MiB PATCHes) against the streamed path, side by side in one
//! run: time, the gateway's CPU, bytes it wrote to disk, its peak RSS. Simulator (digest mode) and
//! gateways are release binaries on loopback; each path gets a fresh gateway (peak RSS is per
//! process), the same settings (default part size, `tus.dir` in a temporary directory for both),
//! and three rounds (the median is reported). Written to bench/results/tus.json.
//!
//! `cargo bench --bench tus`

mod support;

use bytes::Bytes;
use support::*;

#[tokio::main]
async fn main() {
    let client = client();
    let block = Bytes::from(random(MIB as usize));
    let result = support::tus::tus_vs_streamed(&client, &block).await;
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results/tus.json");
    std::fs::write(out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
}
