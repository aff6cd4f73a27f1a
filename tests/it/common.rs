//! Helpers shared by the integration tests: a plain HTTP client and typed calls on the simulator.

use base64::Engine;
use bytes::Bytes;
use chunkgate::sim::{self, SimConfig};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
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
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    chunkgate::resource::hex(&Sha256::digest(data))
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
    pub running: std::sync::Arc<sim::Running>,
    pub http: Http,
    pub token: String,
    pub base: String,
}

impl SimApi {
    pub async fn start(config: SimConfig) -> Self {
        let running = std::sync::Arc::new(
            sim::spawn(SimConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..config
            })
            .await
            .unwrap(),
        );
        let base = format!(
            "{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads",
            running.url()
        );
        Self {
            running,
            http: Http::new(),
            token: TOKEN.to_owned(),
            base,
        }
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
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        self.http
            .send(method, &format!("{}{suffix}", self.base), &headers, body)
            .await
            .unwrap()
    }

    pub async fn create(&self, data: &[u8]) -> Resp {
        self.call(Method::POST, "", part_body(data)).await
    }

    /// Creates an upload and returns its id, asserting success.
    pub async fn create_id(&self, data: &[u8]) -> String {
        let r = self.create(data).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["chunkedUploadId"].as_str().unwrap().to_owned()
    }

    pub async fn put_part(&self, id: &str, seq: u32, data: &[u8]) -> Resp {
        self.call(Method::PUT, &format!("/{id}/{seq}"), part_body(data))
            .await
    }

    pub async fn get(&self, id: &str, checksum: bool) -> Resp {
        let q = if checksum { "?include=checksum" } else { "" };
        self.call(Method::GET, &format!("/{id}{q}"), Bytes::new())
            .await
    }

    /// Commit with an explicit `Content-Length: 0`: hyper sends none for an empty PUT, and the
    /// upstream's front end answers that with 411.
    pub async fn commit(&self, id: &str) -> Resp {
        let auth = self.auth();
        let headers = [("authorization", auth.as_str()), ("content-length", "0")];
        self.http
            .send(
                Method::PUT,
                &format!("{}/{id}?action=commit", self.base),
                &headers,
                Bytes::new(),
            )
            .await
            .unwrap()
    }

    pub async fn delete(&self, id: &str) -> Resp {
        self.call(Method::DELETE, &format!("/{id}"), Bytes::new())
            .await
    }

    pub async fn control(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/__sim/{path}", self.running.url());
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let r = self
            .http
            .send(method, &url, &[("content-type", "application/json")], body)
            .await
            .unwrap();
        assert!(
            r.status.is_success(),
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    pub async fn faults(&self, faults: Value) {
        self.control(Method::PUT, "faults", faults).await;
    }

    pub async fn stats(&self) -> Value {
        self.control(Method::GET, "stats", Value::Null).await
    }

    pub async fn inspect(&self, id: &str) -> Value {
        self.control(Method::GET, &format!("uploads/{id}"), Value::Null)
            .await
    }

    pub async fn advance_clock(&self, secs: i64) {
        self.control(
            Method::POST,
            &format!("clock?advance_secs={secs}"),
            Value::Null,
        )
        .await;
    }
}
