//! The admin listener, on an address of its own: `/healthz` (the process answers), `/readyz`
//! (the upstream is reachable and the gateway is not draining) and `/metrics` (Prometheus text).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};

use crate::{
    body::{self, Body, BoxError},
    edge::{
        gateway::Gateway,
        listener::{self as server, ConnLimits, Connections},
    },
    telemetry,
};

/// How long a reachability probe is trusted, so frequent probes do not hammer the upstream.
const PROBE_TTL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections the admin listener serves at once.
const ADMIN_CONNECTIONS: usize = 64;

/// The last reachability probe of the upstream.
#[derive(Default)]
pub struct Probe(Mutex<Option<(Instant, bool)>>);

impl Probe {
    /// Whether a TCP connection to the upstream's host and port opens (cached for [`PROBE_TTL`]).
    async fn reachable(&self, gw: &Gateway) -> bool {
        if let Some((at, ok)) = *self.0.lock().unwrap() {
            if at.elapsed() < PROBE_TTL {
                return ok;
            }
        }
        let ok = match gw.upstream.host_port() {
            Some(addr) => matches!(tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await, Ok(Ok(_))),
            None => false,
        };
        *self.0.lock().unwrap() = Some((Instant::now(), ok));
        ok
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(listener: TcpListener, gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let probe = Arc::new(Probe::default());
    let handler = move |req: Request<Incoming>, _peer: SocketAddr| {
        let (gw, probe) = (gw.clone(), probe.clone());
        async move { Ok::<_, BoxError>(handle(&gw, &probe, req).await) }
    };
    // Probes come every few seconds: a short time to send a request, and idle connections close
    // to make room when all are taken, so silent sockets cannot starve /healthz.
    let limits = ConnLimits {
        connections: Connections::new(ADMIN_CONNECTIONS),
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        ..ConnLimits::default()
    };
    server::serve(listener, limits, handler, shutdown, Duration::from_secs(1), || {}).await;
}

async fn handle(gw: &Gateway, probe: &Probe, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if gw.uploads.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if gw.connections.saturated() {
                // Every connection slot is taken: new clients wait in the backlog.
                text(StatusCode::SERVICE_UNAVAILABLE, "saturated\n")
            } else if !probe.reachable(gw).await {
                text(StatusCode::SERVICE_UNAVAILABLE, "upstream unreachable\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            record_gauges(gw);
            let mut response = text(StatusCode::OK, &telemetry::metrics_handle().render());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /metrics\n"),
    }
}

/// Gauges are read off the gateway when scraped.
fn record_gauges(gw: &Gateway) {
    metrics::gauge!(telemetry::UPLOADS_IN_FLIGHT).set(gw.uploads.active() as f64);
    metrics::gauge!(telemetry::PARTS_IN_FLIGHT).set(gw.uploads.parts_in_flight() as f64);
    metrics::gauge!(telemetry::BYTES_IN_FLIGHT).set(gw.uploads.bytes_in_flight() as f64);
    metrics::gauge!(telemetry::CONNECTIONS_OPEN).set(gw.connections.open() as f64);
    for (account, remaining) in gw.upstream.limits.remaining() {
        if let Some(v) = remaining.hourly {
            metrics::gauge!(telemetry::RATELIMIT_REMAINING, "account" => account.clone(), "window" => "hourly")
                .set(v as f64);
        }
        if let Some(v) = remaining.burst {
            metrics::gauge!(telemetry::RATELIMIT_REMAINING, "account" => account, "window" => "burst").set(v as f64);
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(body.to_owned()))
        .expect("valid response")
}
