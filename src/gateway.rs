//! The gateway: routes each request to the streamed upload or to the passthrough.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, Method, Request, Response, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    body::{Body, BoxError},
    config::Config,
    error::GatewayError,
    proxy, route,
    server::{self, Stopper},
    upload::Uploads,
    upstream::Upstream,
};

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    pub uploads: Uploads,
    /// SHA-256 of each accepted caller key.
    caller_keys: Vec<[u8; 32]>,
    /// `server.caller_key_header`, parsed once.
    caller_key_header: HeaderName,
    /// The listener's TLS, when configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

// === impl Gateway ===

impl Gateway {
    /// Builds the gateway from a validated config; fails only on TLS material that cannot be used.
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        // Installed before any traffic: what is recorded before a recorder exists is lost.
        crate::telemetry::metrics_handle();
        let limits = crate::ratelimit::RateLimits::new(config.rate_limit.clone());
        let upstream = Arc::new(Upstream::new(&config.upstream, limits)?);
        let uploads = Uploads::new(&config);
        let caller_keys = config.server.caller_keys.iter().map(|k| Sha256::digest(k.0.as_bytes()).into()).collect();
        let tls = config.server.tls_acceptor()?;
        let caller_key_header = HeaderName::from_bytes(config.server.caller_key_header.as_bytes()).map_err(|_| {
            format!("server.caller_key_header {:?} is not a header name", config.server.caller_key_header)
        })?;
        Ok(Arc::new(Self { config, upstream, uploads, caller_keys, caller_key_header, tls }))
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let dialect = self.upstream.dialect;
        // The connection reads up to `server.read_buffer_bytes` at once, so it lets heads up to that
        // size through; the limit on heads is kept here.
        let limit = self.config.server.max_header_bytes;
        if head_len(&req) > limit {
            return GatewayError::HeadersTooLarge { limit }.response(dialect, None);
        }
        if let Err(refused) = route::screen(req.method(), req.uri()) {
            tracing::info!(reason = refused.message(), "request target refused");
            let err = match refused {
                route::Refused::BadAccount => GatewayError::InvalidAccountId,
                other => GatewayError::InvalidPath(other.message()),
            };
            return err.response(dialect, None);
        }
        let key = match self.caller_key(&req) {
            Ok(key) => key,
            Err(err) => return err.response(dialect, None),
        };
        // The caller's key is for the gateway alone.
        req.headers_mut().remove(&self.caller_key_header);
        let allowed = &self.config.server.allowed_accounts;
        if !allowed.is_empty() && !route::account_in(req.uri().path()).is_some_and(|a| allowed.iter().any(|x| x == a)) {
            return GatewayError::AccountNotAllowed.response(dialect, None);
        }
        if req.method() == Method::POST && is_document(req.headers()) {
            let uri = req.uri().clone();
            if let Some(target) = route::chunked_upload_target(uri.path()).filter(|t| t.upload.is_none()) {
                // Who is calling, for the per-caller cap: the key it presented, else its address.
                let caller = match key {
                    Some(i) => format!("key#{i}"),
                    None => peer.ip().to_string(),
                };
                return self.uploads.handle(self.upstream.clone(), req, target, caller).await;
            }
        }
        match proxy::forward(&self.upstream, req).await {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(code = err.code(), error = %err, "passthrough failed");
                err.response(self.upstream.dialect, None)
            }
        }
    }
}

// === impl Gateway (callers) ===

impl Gateway {
    /// The index of the key the caller presented when keys are configured (compared in constant
    /// time, as SHA-256 digests so lengths do not leak either); `None` when no keys are configured.
    fn caller_key(&self, req: &Request<Incoming>) -> Result<Option<usize>, GatewayError> {
        if self.caller_keys.is_empty() {
            return Ok(None);
        }
        let presented = req.headers().get(&self.caller_key_header).map(|v| v.as_bytes());
        let digest: [u8; 32] = Sha256::digest(presented.unwrap_or_default()).into();
        let mut found = None;
        for (i, key) in self.caller_keys.iter().enumerate() {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        match (presented, found) {
            (Some(_), Some(i)) => Ok(Some(i)),
            _ => Err(GatewayError::CallerUnauthorized),
        }
    }
}

/// Bytes of the request's head as sent over HTTP/1.1: request line and header lines.
fn head_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target =
        uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    req.headers().iter().fold(line, |n, (name, value)| n + name.as_str().len() + value.len() + ": \r\n".len())
}

/// A body that is neither JSON nor XML is a document to stream; JSON and XML are API calls.
fn is_document(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    !["/json", "+json", "/xml", "+xml"].iter().any(|s| mime.ends_with(s))
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains: no new uploads
/// (SHUTTING_DOWN), running ones get `server.drain_secs` to finish, and whatever is still running
/// after that is cancelled and its upstream upload deleted.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let limits = gateway.config.server.conn_limits(gateway.tls.clone());
    let drain = Duration::from_secs(gateway.config.server.drain_secs);
    let gw = gateway.clone();
    let handler = move |req, peer: SocketAddr| {
        let gw = gw.clone();
        async move { Ok::<_, BoxError>(gw.handle(req, peer).await) }
    };
    let draining = {
        let gw = gateway.clone();
        async move {
            shutdown.await;
            tracing::info!(active_uploads = gw.uploads.active(), "draining");
            gw.uploads.start_draining();
        }
    };
    // Past the drain period, running uploads are cancelled: each deletes its upstream upload and
    // answers SHUTTING_DOWN on its still-open connection before the server lets go.
    let overrun = {
        let gw = gateway.clone();
        move || {
            tracing::warn!(
                uploads = gw.uploads.active(),
                "drain period over: cancelling uploads and deleting them upstream"
            );
            gw.uploads.cancel_all();
        }
    };
    server::serve(listener, limits, handler, draining, drain, overrun).await;
}

/// Serves the gateway and its admin listener until `shutdown` resolves and the drain is over;
/// the admin listener keeps answering (`/readyz`: draining) until then.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let (mut admin_stop, admin_stopped) = Stopper::new();
    let admin = tokio::spawn(crate::admin::run(admin, gateway.clone(), admin_stopped));
    run(listener, gateway, shutdown).await;
    admin_stop.stop();
    let _ = admin.await;
}

/// A gateway running in this process (tests, the demo, benchmarks). Stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub stopper: Stopper,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `server.listen` and `admin.listen` and serves both in a background task.
pub async fn spawn(config: Config) -> Result<Running, String> {
    let (listener, addr) = bind(config.server.listen).await?;
    let (admin, admin_addr) = bind(config.admin.listen).await?;
    let gateway = Gateway::new(config)?;
    let (stopper, stopped) = Stopper::new();
    tokio::spawn(run_with_admin(listener, admin, gateway.clone(), stopped));
    Ok(Running { addr, admin_addr, gateway, stopper })
}

/// A listener on `addr` and the address it got (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_xml_are_api_calls_everything_else_is_a_document() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_document(&h)
        };
        assert!(is_document(&HeaderMap::new()));
        assert!(with("application/octet-stream"));
        assert!(with("application/pdf"));
        assert!(!with("application/json; charset=utf-8"));
        assert!(!with("Application/JSON"));
        assert!(!with("application/problem+json"));
        assert!(!with("text/xml"));
    }
}
