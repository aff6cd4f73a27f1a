//! Streaming benchmark: throughput and the gateway's peak RSS for large uploads, against a direct
//! client that PUTs the same parts straight to the simulator (the baseline), in one run.
//!
//! `cargo bench --bench upload [-- --sizes 256MiB,4GiB --part-size 16MiB --in-flight 4]`
//!
//! The simulator and the gateway run as their own processes (the release `chunkgate` binary), the
//! simulator in digest mode; the client runs here. Results are printed and written to
//! `bench/results/upload.md`. Loopback only.

mod support;

use bytes::Bytes;
use support::*;

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
    let client = client();
    let block = Bytes::from(random(MIB as usize));
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let mut rows = Vec::new();
    println!("part size {}, {in_flight} parts in flight, {nproc} cores, simulator in digest mode", human(part as u64));
    println!("{:<10} {:>16} {:>16} {:>8} {:>18}", "size", "gateway MiB/s", "direct MiB/s", "ratio", "gateway peak RSS");
    for &size in &sizes {
        let gw_env = vec![
            ("CHUNKGATE_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("CHUNKGATE_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
            // The simulator's limits are raised for this run: the gateway's pacing (DocuSign's
            // 500 calls per 30 s by default) would otherwise cap a 4 GiB upload near 240 MiB/s.
            ("CHUNKGATE_RATE_LIMIT__ENABLED", "false".to_owned()),
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
}
