//! TLS toward the upstream (verified against an extra CA; wrong or self-signed certificates give
//! UPSTREAM_TLS) and on the gateway's own listener (optional TLS, optional client certificates).

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use chunkgate::{body::Body, sim::SimConfig};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::common::*;

/// A test CA with a server certificate (localhost, 127.0.0.1) and a client certificate, plus a
/// self-signed server certificate, as PEM files in a directory of their own.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chunkgate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "chunkgate test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let write = |file: &str, pem: String| std::fs::write(dir.join(file), pem).unwrap();
        write("ca.pem", ca_cert.pem());
        for (stem, names, usage) in [
            ("server", vec!["localhost".to_owned(), "127.0.0.1".to_owned()], ExtendedKeyUsagePurpose::ServerAuth),
            ("client", vec!["billing-service".to_owned()], ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            write(&format!("{stem}.pem"), params.signed_by(&key, &issuer).unwrap().pem());
            write(&format!("{stem}.key"), key.serialize_pem());
        }
        let key = KeyPair::generate().unwrap();
        let own = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        write("self-signed.pem", own.pem());
        write("self-signed.key", key.serialize_pem());
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A client trusting the test CA, presenting the client certificate if asked to.
    fn client(
        &self,
        with_cert: bool,
    ) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body> {
        self.client_offering(with_cert, false)
    }

    /// The same, offering `h2` first in ALPN when `h2` (as browsers, curl and httpx do).
    fn client_offering(
        &self,
        with_cert: bool,
        h2: bool,
    ) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            let chain = CertificateDer::pem_file_iter(self.path("client.pem")).unwrap().map(Result::unwrap).collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(self.path("client.key")).unwrap())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1();
        let https = if h2 { builder.enable_http2().build() } else { builder.build() };
        Client::builder(TokioExecutor::new()).build(https)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_sim(pki: &Pki, cert: &str, key: &str) -> SimConfig {
    SimConfig { tls_cert: Some(pki.path(cert)), tls_key: Some(pki.path(key)), ..SimConfig::default() }
}

#[tokio::test]
async fn the_upstream_is_verified_against_an_extra_ca_and_refused_without_it() {
    let pki = Pki::new("upstream");
    let data = bytes_of(PART * 2 + 9, 1);
    for (ca_files, expect_ok) in [(vec![pki.path("ca.pem")], true), (vec![], false)] {
        let s = Stack::start(tls_sim(&pki, "server.pem", "server.key"), |c| {
            c.upstream.base_url = format!("https://127.0.0.1:{}", c.upstream.base_url.rsplit(':').next().unwrap());
            c.upstream.allow_plain_http = false;
            c.upstream.ca_files = ca_files.clone();
        })
        .await;
        let r = s.upload(&data, &[]).await;
        let store = s.sim.running.sim.store();
        if expect_ok {
            assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
            let held = store.inspect(r.header("x-chunkgate-upload-id"), 0).unwrap();
            assert_eq!(held.sha256, sha256_hex(&data));
        } else {
            assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_TLS".into()));
            assert!(r.json()["message"].as_str().unwrap().contains("certificate"), "{}", r.json());
            assert_eq!(s.sim.running.sim.stats_json()["requests"], 0, "nothing got past the handshake");
        }
    }
}

#[tokio::test]
async fn http2_is_used_with_a_tls_upstream_when_turned_on_and_http1_otherwise() {
    let pki = Pki::new("h2");
    let data = bytes_of(PART * 5 + 3, 4);
    for http2 in [true, false] {
        let s = Stack::start(tls_sim(&pki, "server.pem", "server.key"), |c| {
            c.upstream.base_url = format!("https://127.0.0.1:{}", c.upstream.base_url.rsplit(':').next().unwrap());
            c.upstream.allow_plain_http = false;
            c.upstream.ca_files = vec![pki.path("ca.pem")];
            c.upstream.http2 = http2;
        })
        .await;
        let r = s.upload(&data, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let id = r.header("x-chunkgate-upload-id").to_owned();
        assert_eq!(s.sim.running.sim.store().inspect(&id, 0).unwrap().sha256, sha256_hex(&data));
        // The passthrough takes the same road.
        let url = format!("{}/{id}", s.upload_url(ACCOUNT));
        let read = s.http.send(Method::GET, &url, &[("authorization", &format!("Bearer {TOKEN}"))], "").await.unwrap();
        assert_eq!(read.status, StatusCode::OK);
        let stats = s.sim.running.sim.stats_json();
        let expect = if http2 { stats["requests"].clone() } else { 0.into() };
        assert_eq!(stats["http2_requests"], expect, "http2 = {http2}: {stats}");
    }
}

#[tokio::test]
async fn a_self_signed_upstream_certificate_gives_upstream_tls() {
    let pki = Pki::new("selfsigned");
    let s = Stack::start(tls_sim(&pki, "self-signed.pem", "self-signed.key"), |c| {
        c.upstream.base_url = format!("https://127.0.0.1:{}", c.upstream.base_url.rsplit(':').next().unwrap());
        c.upstream.ca_files = vec![pki.path("ca.pem")];
    })
    .await;
    let r = s.upload(b"doc", &[]).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_TLS".into()));
    let auth = format!("Bearer {TOKEN}");
    let p = s
        .http
        .send(
            Method::GET,
            &format!("{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/ABC", s.gw.url()),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(code(&p), "UPSTREAM_TLS", "the passthrough says so too");
}

#[tokio::test]
async fn the_listener_serves_tls_and_requires_client_certificates_when_configured() {
    let pki = Pki::new("listener");
    let s = Stack::start(SimConfig::default(), |c| {
        c.server.tls_cert = Some(pki.path("server.pem"));
        c.server.tls_key = Some(pki.path("server.key"));
        c.server.client_ca = Some(pki.path("ca.pem"));
    })
    .await;
    let url = format!("https://localhost:{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", s.gw.addr.port());
    let data = bytes_of(PART + 1, 2);
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(chunkgate::body::full(Bytes::from(data.clone())))
            .unwrap()
    };
    let resp = pki.client(true).request(request()).await.expect("a client with a certificate gets through");
    assert_eq!(resp.status(), StatusCode::OK);
    let id = resp.headers()["x-chunkgate-upload-id"].to_str().unwrap().to_owned();
    let _ = resp.into_body().collect().await.unwrap();
    assert_eq!(s.sim.running.sim.store().inspect(&id, 0).unwrap().sha256, sha256_hex(&data));
    assert!(pki.client(false).request(request()).await.is_err(), "a client without a certificate got through");
    let plain = s.http.send(Method::GET, &format!("{}/restapi/v2.1/accounts/1/x", s.gw.url()), &[], "").await;
    assert!(plain.is_err(), "plain HTTP was served on the TLS listener");
}

#[tokio::test]
async fn clients_that_offer_h2_to_the_tls_listener_upload_and_pass_through_over_http2() {
    let pki = Pki::new("listener-h2");
    let s = Stack::start(SimConfig::default(), |c| {
        c.server.tls_cert = Some(pki.path("server.pem"));
        c.server.tls_key = Some(pki.path("server.key"));
    })
    .await;
    let base = format!("https://localhost:{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads", s.gw.addr.port());
    let client = pki.client_offering(false, true);
    let data = bytes_of(PART * 4 + 17, 6);
    let upload = Request::post(&base)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/pdf")
        .body(chunkgate::body::full(Bytes::from(data.clone())))
        .unwrap();
    let resp = client.request(upload).await.unwrap();
    assert_eq!((resp.version(), resp.status()), (http::Version::HTTP_2, StatusCode::OK));
    let id = resp.headers()["x-chunkgate-upload-id"].to_str().unwrap().to_owned();
    let _ = resp.into_body().collect().await.unwrap();
    assert_eq!(s.sim.running.sim.store().inspect(&id, 0).unwrap().sha256, sha256_hex(&data));
    let read = Request::get(format!("{base}/{id}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(chunkgate::body::empty())
        .unwrap();
    let resp = client.request(read).await.unwrap();
    assert_eq!((resp.version(), resp.status()), (http::Version::HTTP_2, StatusCode::OK));
}

#[tokio::test]
async fn an_upstream_that_never_answers_the_tls_handshake_is_a_call_never_sent() {
    // Accepts TCP and reads nothing: the ClientHello is never answered.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let s = Stack::in_front_of(SimApi::start(SimConfig::default()).await, format!("https://127.0.0.1:{port}"), |c| {
        c.upstream.connect_timeout_ms = 200;
        // Far longer than the connect timeout: what ends each attempt is the connect timeout.
        c.upstream.part_timeout_ms = 5_000;
        c.upstream.call_timeout_ms = 5_000;
        c.retry.max_attempts = 3;
    })
    .await;
    let r = s.upload(b"doc", &[]).await;
    // Before: 502 UPLOAD_OUTCOME_UNKNOWN (a create that may have been received) at the part
    // timeout, not sent again.
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE".into()));
    held.abort();
}

#[tokio::test]
async fn connections_still_in_their_tls_handshake_make_room_and_do_not_hold_up_a_stop() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new("handshakes");
    let mut s = Stack::start(SimConfig::default(), |c| {
        c.server.tls_cert = Some(pki.path("server.pem"));
        c.server.tls_key = Some(pki.path("server.key"));
        c.server.max_connections = 4;
        // Far longer than the waits below: what frees the slots is not this timeout.
        c.server.header_read_timeout_ms = 60_000;
    })
    .await;
    // Every slot held by a socket that never sends its ClientHello.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(s.gw.addr).await.unwrap());
    }
    let id = s.sim.create_id(b"read me").await;
    let url = format!("https://localhost:{}/restapi/v2.1/accounts/{ACCOUNT}/chunked_uploads/{id}", s.gw.addr.port());
    let get = Request::builder()
        .uri(&url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(chunkgate::body::empty())
        .unwrap();
    // Before: answered only once the handshakes timed out (60 s here; 10 s by default).
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), pki.client(false).request(get))
        .await
        .expect("a full TLS listener made room")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // The silent sockets that made room were dropped; the rest go when the server stops, without
    // waiting out their handshake time.
    let mut late = Vec::new();
    for _ in 0..2 {
        late.push(tokio::net::TcpStream::connect(s.gw.addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s.gw.stopper.stop();
    for mut socket in silent.into_iter().chain(late) {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), socket.read(&mut buf))
            .await
            .expect("closed when the server stopped");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
