//! The admin listener, on an address of its own: `/healthz` (the process answers), `/readyz`
//! (the upstream is reachable, the gateway is not draining and its listener not full) and
//! `/metrics` (Prometheus text). It knows the gateway only through the small [`Status`] handle.

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
    edge::listener::{self as server, ConnLimits, Connections},
    telemetry,
};

/// How long a reachability probe is trusted, so frequent probes do not hammer the upstream.
const PROBE_TTL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections the admin listener serves at once.
const ADMIN_CONNECTIONS: usize = 64;

/// What the admin endpoints need to know of the gateway.
pub trait Status: Send + Sync {
    /// Draining after a stop signal: not ready.
    fn draining(&self) -> bool;
    /// Every connection slot of the main listener is taken: not ready.
    fn saturated(&self) -> bool;
    /// The upstream's `host:port`, to probe whether it can be reached.
    fn upstream_addr(&self) -> Option<String>;
    /// Sets the gauges that are read off the gateway when `/metrics` is scraped.
    fn record_gauges(&self);
}

/// The last reachability probe of the upstream.
#[derive(Default)]
pub struct Probe(Mutex<Option<(Instant, bool)>>);

impl Probe {
    /// Whether a TCP connection to the upstream's host and port opens (cached for [`PROBE_TTL`]).
    async fn reachable(&self, status: &dyn Status) -> bool {
        if let Some((at, ok)) = *self.0.lock().unwrap() {
            if at.elapsed() < PROBE_TTL {
                return ok;
            }
        }
        let ok = match status.upstream_addr() {
            Some(addr) => matches!(tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await, Ok(Ok(_))),
            None => false,
        };
        *self.0.lock().unwrap() = Some((Instant::now(), ok));
        ok
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(listener: TcpListener, status: Arc<dyn Status>, shutdown: impl Future<Output = ()>) {
    let probe = Arc::new(Probe::default());
    let handler = move |req: Request<Incoming>, _peer: SocketAddr| {
        let (status, probe) = (status.clone(), probe.clone());
        async move { Ok::<_, BoxError>(handle(status.as_ref(), &probe, req).await) }
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

async fn handle(status: &dyn Status, probe: &Probe, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if status.draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if status.saturated() {
                // Every connection slot is taken: new clients wait in the backlog.
                text(StatusCode::SERVICE_UNAVAILABLE, "saturated\n")
            } else if !probe.reachable(status).await {
                text(StatusCode::SERVICE_UNAVAILABLE, "upstream unreachable\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            status.record_gauges();
            let mut response = text(StatusCode::OK, &telemetry::metrics_handle().render());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /metrics\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(body.to_owned()))
        .expect("valid response")
}
