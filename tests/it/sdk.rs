//! The official DocuSign Python SDK (`docusign-esign`), unmodified, as a client nobody here wrote.
//! Needs `pip install -r tests/sdk/requirements.txt` (`.ci/run` does it).

use std::process::Command;

use chunkgate::sim::SimConfig;
use serde_json::Value;

use crate::common::*;

/// Runs the SDK script against `base` and returns the JSON line it prints.
pub async fn run_sdk_script(base: &str, extra: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sdk_chunked_upload.py");
    let mut args = vec![script, base, ACCOUNT, TOKEN];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output())
        .await
        .unwrap()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'docusign_esign'"),
        "the official SDK is not installed: pip install -r tests/sdk/requirements.txt"
    );
    assert!(out.status.success(), "SDK script failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).expect("the script prints one JSON line")
}

#[tokio::test]
async fn the_official_python_sdk_runs_its_chunked_upload_calls_against_the_simulator() {
    let s = SimApi::start(SimConfig::default()).await;
    let seen = run_sdk_script(&format!("{}/restapi", s.running.url()), &[]).await;
    assert_eq!(seen["parts"], 3);
    assert_eq!(seen["refused_duplicate"]["status"], 400);
    assert_eq!(seen["refused_duplicate"]["errorCode"], "CHUNKED_UPLOAD_PART_ALREADY_EXISTS");
    let id = seen["upload_id"].as_str().unwrap();
    let inspected = s.inspect(id).await;
    assert_eq!(inspected["state"], "deleted");
    assert_eq!(inspected["sha256"], seen["sha256"]);
    let stats = s.stats().await;
    assert_eq!(
        (stats["committed"].as_u64(), stats["deleted"].as_u64(), stats["open"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
}

/// Runs the Node SDK script (the official `docusign-esign` from npm) against `base` and returns
/// the JSON line it prints. Needs `npm ci --prefix tests/sdk/node` (`.ci/run` does it).
pub async fn run_node_sdk_script(base: &str) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/node");
    assert!(
        std::path::Path::new(dir).join("node_modules/docusign-esign").is_dir(),
        "the official Node SDK is not installed: npm ci --prefix tests/sdk/node"
    );
    let args: Vec<String> =
        [&format!("{dir}/sdk_chunked_upload.js"), base, ACCOUNT, TOKEN].into_iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || Command::new("node").args(&args).output())
        .await
        .unwrap()
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Node SDK script failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).expect("the script prints one JSON line")
}

#[tokio::test]
async fn the_official_node_sdk_runs_its_chunked_upload_calls_against_the_simulator_and_through_the_gateway() {
    let s = Stack::default().await;
    for base in [format!("{}/restapi", s.sim.running.url()), format!("{}/restapi", s.gw.url())] {
        let seen = run_node_sdk_script(&base).await;
        assert_eq!(seen["parts"], 3, "{base}");
        assert_eq!(seen["refused_duplicate"]["status"], 400);
        assert_eq!(seen["refused_duplicate"]["errorCode"], "CHUNKED_UPLOAD_PART_ALREADY_EXISTS");
        let inspected = s.sim.inspect(seen["upload_id"].as_str().unwrap()).await;
        assert_eq!((&inspected["state"], &inspected["sha256"]), (&"deleted".into(), &seen["sha256"]), "{base}");
    }
    let stats = s.sim.stats().await;
    assert_eq!(
        (stats["committed"].as_u64(), stats["deleted"].as_u64(), stats["open"].as_u64()),
        (Some(2), Some(2), Some(0))
    );
}

/// The README's setup: `config/examples/sidecar-local-sim.toml` in front of `chunkgate sim`, and
/// the SDKs' base path changed in its scheme, host and port only (`.../restapi` kept). The
/// simulator serves under `/restapi` alone, as DocuSign does: a doubled prefix would be a 404.
#[tokio::test]
async fn the_documented_sidecar_setup_changes_only_the_sdks_scheme_host_and_port() {
    let sim = SimApi::start(SimConfig::default()).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples/sidecar-local-sim.toml");
    let mut config = chunkgate::config::Config::load(Some(std::path::Path::new(example)), []).unwrap();
    assert_eq!(config.warnings(), Vec::<String>::new(), "the example is the documented way");
    assert_eq!(config.upstream.base_url, "http://127.0.0.1:8081", "the example points at the simulator's origin");
    // The same file, on ports of the test's own.
    config.upstream.base_url = sim.running.url();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let gw = chunkgate::edge::gateway::spawn(config).await.unwrap();
    let base = format!("{}/restapi", gw.url());
    let python = run_sdk_script(&base, &[]).await;
    let node = run_node_sdk_script(&base).await;
    for seen in [python, node] {
        let inspected = sim.inspect(seen["upload_id"].as_str().unwrap()).await;
        assert_eq!(inspected["sha256"], seen["sha256"]);
    }
    assert_eq!(sim.stats().await["committed"], 2);
}
