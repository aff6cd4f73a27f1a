//! Every file under `config/` parses; every deliberately invalid example fails, listing all its
//! problems; `chunkgate check-config` says so with its exit status.

use std::path::{Path, PathBuf};

use chunkgate::config::{Config, EXIT_BAD_CONFIG};

fn files(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no config files under {dir}");
    out
}

#[test]
fn every_shipped_config_file_is_valid() {
    for file in files("config").into_iter().chain(files("config/examples")) {
        if let Err(problems) = Config::load(Some(&file), []) {
            panic!("{} is invalid:\n{problems}", file.display());
        }
    }
}

#[test]
fn the_documented_file_holds_exactly_the_defaults() {
    let documented =
        Config::load(Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/chunkgate.toml"))), []).unwrap();
    assert_eq!(documented, Config::default());
}

#[test]
fn every_invalid_example_fails_with_all_its_problems() {
    let expected: &[(&str, &[&str])] = &[
        ("bad-values.toml", &["part_size", "max_in_flight", "assumed_max_parts", "throttle_status", "error_rate"]),
        ("plain-http-upstream.toml", &["allow_plain_http"]),
        ("unknown-keys.toml", &["server.listne", "upload.part_sise"]),
    ];
    let found = files("config/invalid");
    assert_eq!(found.len(), expected.len(), "every invalid example has expectations here");
    for (name, needles) in expected {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/invalid").join(name);
        let problems = Config::load(Some(&file), []).expect_err(name).0.join("\n");
        for needle in *needles {
            assert!(problems.contains(needle), "{name}: `{needle}` not reported in:\n{problems}");
        }
    }
}

#[test]
fn check_config_exits_non_zero_and_lists_every_problem() {
    let bin = env!("CARGO_BIN_EXE_chunkgate");
    let good = std::process::Command::new(bin)
        .args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/chunkgate.toml")])
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let bad = std::process::Command::new(bin)
        .args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/invalid/bad-values.toml")])
        .env("CHUNKGATE_UPLOAD__MAX_UPLOADS", "0")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(EXIT_BAD_CONFIG));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    for needle in ["part_size", "error_rate", "upload.max_uploads"] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
}

#[test]
fn check_config_warns_about_a_base_url_path_that_requests_would_repeat() {
    let bin = env!("CARGO_BIN_EXE_chunkgate");
    let out = std::process::Command::new(bin)
        .args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/chunkgate.toml")])
        .env("CHUNKGATE_UPSTREAM__BASE_URL", "https://demo.docusign.net/restapi")
        .output()
        .unwrap();
    assert!(out.status.success(), "a warning is not an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning:") && stderr.contains("/restapi/restapi/v2.1"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 warnings)"));
    let clean = std::process::Command::new(bin)
        .args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/chunkgate.toml")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&clean.stderr).contains("warning"), "the shipped file warns");
}
