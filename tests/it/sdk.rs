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
