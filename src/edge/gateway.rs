//! The gateway: routes each request to the streamed upload or to the passthrough.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, Method, Request, Response, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::ServiceExt;

use crate::{
    body::{Body, BoxError, RequestBody},
    config::Config,
    edge::{
        listener::{self as server, Connections, Stopper},
        passthrough as proxy,
        target::{self as route, ApiTarget, Chunked},
    },
    error::GatewayError,
    ingress::{streamed, tus::Tus},
    pipeline::uploads::{Destination, Uploads},
    policy::{
        callers::{Caller, PerKey},
        pacing::{LocalPacing, Pacing},
        quota::{LocalQuota, Quota, member_of},
    },
    upstream::Upstream,
};

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    /// The pacing of the accounts' upstream calls, handed to the uploads and used by the passthrough.
    pub pacing: Arc<dyn Pacing>,
    /// The members' quota ledger, handed to the uploads and told what the passthrough ends.
    pub quota: Arc<dyn Quota>,
    pub uploads: Arc<Uploads>,
    /// Resumable uploads (tus), when `tus.dir` is set.
    pub tus: Option<Arc<Tus>>,
    /// The main listener's open connections (readiness reports a full listener).
    pub connections: Arc<Connections>,
    /// SHA-256 of each accepted caller key.
    caller_keys: Vec<[u8; 32]>,
    /// `server.caller_key_header`, parsed once.
    caller_key_header: HeaderName,
    /// The listener's TLS, when configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Passthrough requests running per caller and per account.
    passthrough_callers: Arc<PerKey<Caller>>,
    passthrough_accounts: Arc<PerKey<String>>,
    /// Members whose quota gauges the last scrape showed: one that holds nothing any more is
    /// shown at 0 once, then left out.
    quota_labels: std::sync::Mutex<std::collections::HashSet<String>>,
}

// === impl Gateway ===

impl Gateway {
    /// Builds the gateway from a validated config; fails only on TLS material that cannot be used.
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        // Installed before any traffic: what is recorded before a recorder exists is lost.
        crate::telemetry::metrics_handle();
        let upstream = Arc::new(Upstream::new(&config.upstream)?);
        let (pacing, quota): (Arc<dyn Pacing>, Arc<dyn Quota>) = if config.cluster.redis_url.is_empty() {
            let replicas = config.cluster.replicas;
            (
                Arc::new(LocalPacing::new(config.rate_limit.clone(), replicas)),
                Arc::new(LocalQuota::new(&config.quota, replicas)),
            )
        } else {
            crate::policy::shared::policies(&config)?
        };
        let uploads = Arc::new(Uploads::new(&config, pacing.clone(), quota.clone()));
        let tus = if config.tus.dir.is_empty() {
            None
        } else {
            let up = &config.upstream;
            let finish_wait = Duration::from_millis(up.commit_timeout_ms + up.call_timeout_ms);
            let max_size = config.upload.max_document_bytes;
            let tus = Tus::open(&config.tus, max_size, uploads.clone(), upstream.clone(), finish_wait)?;
            // Expired uploads are reaped from disk and upstream, every half minute (or half the
            // uploads' lifetime, if shorter).
            let weak = Arc::downgrade(&tus);
            let every = Duration::from_secs((config.tus.session_ttl_secs / 2).clamp(1, 30));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(every);
                loop {
                    every.tick().await;
                    let Some(tus) = weak.upgrade() else { return };
                    tus.reap().await;
                }
            });
            Some(tus)
        };
        let caller_keys = config.server.caller_keys.iter().map(|k| Sha256::digest(k.0.as_bytes()).into()).collect();
        let tls = config.server.tls_acceptor()?;
        let caller_key_header = HeaderName::from_bytes(config.server.caller_key_header.as_bytes()).map_err(|_| {
            format!("server.caller_key_header {:?} is not a header name", config.server.caller_key_header)
        })?;
        let connections = Connections::new(config.server.max_connections);
        Ok(Arc::new(Self {
            config,
            upstream,
            pacing,
            quota,
            uploads,
            tus,
            connections,
            caller_keys,
            caller_key_header,
            tls,
            passthrough_callers: PerKey::new(),
            passthrough_accounts: PerKey::new(),
            quota_labels: Default::default(),
        }))
    }

    async fn handle(self: Arc<Self>, mut req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
        let dialect = self.upstream.dialect;
        // The connection reads up to `server.read_buffer_bytes` at once, so it lets heads up to that
        // size through; the limit on heads is kept here.
        let limit = self.config.server.max_header_bytes;
        if head_len(&req) > limit || req.headers().len() > MAX_HEADER_FIELDS {
            return GatewayError::HeadersTooLarge { limit }.response(dialect);
        }
        if let Err(err) = framing(&req).and_then(|()| transfer_coding(req.headers())) {
            tracing::info!(code = err.code(), "request refused before forwarding");
            // The request's framing cannot be trusted: the connection ends with this answer.
            let mut response = err.response(dialect);
            response.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            return response;
        }
        if let Some(tus) = &self.tus {
            if let Some(id) = req.uri().path().strip_prefix(crate::ingress::tus::PATH) {
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let id = id.to_owned();
                    let caller = match self.caller(&req, peer) {
                        Ok(caller) => caller,
                        Err(err) => return err.response(dialect),
                    };
                    req.headers_mut().remove(&self.caller_key_header);
                    return Box::pin(tus.upload(req, &id, caller)).await;
                }
                // Under the upload URLs, but no upload's: not a path of the upstream's either.
                return tus.unknown();
            }
        } else if req.uri().path().starts_with(crate::ingress::tus::PATH) {
            // tus's upload URLs, on a gateway without tus: say so, not that the path is no API's.
            return tus_disabled().response(dialect);
        }
        // The target is parsed once, here; everything after reads the account from this parse.
        // (A clone of the URI shares its bytes.)
        let uri = req.uri().clone();
        let target = match route::screen(req.method(), &uri, req.version()) {
            Ok(target) => target,
            Err(refused) => {
                tracing::info!(reason = refused.message(), "request target refused");
                let err = match refused {
                    route::Refused::BadAccount => GatewayError::InvalidAccountId,
                    other => GatewayError::InvalidPath(other.message()),
                };
                return err.response(dialect);
            }
        };
        let caller = match self.caller(&req, peer) {
            Ok(caller) => caller,
            Err(err) => return err.response(dialect),
        };
        // The caller's key is for the gateway alone.
        req.headers_mut().remove(&self.caller_key_header);
        let allowed = &self.config.server.allowed_accounts;
        // Account ids are numbers or GUIDs, and a GUID is the same in either case.
        if !allowed.is_empty() && !target.account.is_some_and(|a| allowed.iter().any(|x| x.eq_ignore_ascii_case(a))) {
            return GatewayError::AccountNotAllowed.response(dialect);
        }
        let creation = target.chunked == Some(Chunked { upload: None, part: None });
        if creation
            && (req.headers().contains_key("tus-resumable") || (req.method() == Method::OPTIONS && self.tus.is_some()))
        {
            let account = target.account.unwrap_or_default();
            let to = Destination { prefix: target.prefix, version: target.version, account };
            return match (&self.tus, req.method()) {
                (Some(tus), &Method::OPTIONS) => tus.options(),
                (Some(tus), &Method::POST) => Box::pin(tus.create(req, to, caller)).await,
                (Some(_), _) => GatewayError::Tus {
                    status: http::StatusCode::METHOD_NOT_ALLOWED,
                    code: "TUS_METHOD_NOT_ALLOWED",
                    message: "A tus upload is created with POST.".into(),
                }
                .response(dialect),
                (None, _) => tus_disabled().response(dialect),
            };
        }
        if req.method() == Method::POST && creation && is_document(req.headers()) {
            let Some(account) = target.account else { return GatewayError::InvalidAccountId.response(dialect) };
            let to = Destination { prefix: target.prefix, version: target.version, account };
            // Boxed, like the tus branches: the passthrough, which most requests take, then carries a
            // future a fraction of the size (each move of it was copied whole).
            return Box::pin(streamed::handle(&self.uploads, self.upstream.clone(), req, to, caller)).await;
        }
        self.passthrough(req, target, caller).await
    }

    /// Forwards a request, within the bounds on what one caller and one account may have running.
    async fn passthrough(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        target: ApiTarget<'_>,
        caller: Caller,
    ) -> Response<Body> {
        let dialect = self.upstream.dialect;
        let s = &self.config.server;
        let busy = || {
            tracing::info!(%caller, account = target.account, "passthrough refused: too many running");
            crate::telemetry::passthrough(http::StatusCode::SERVICE_UNAVAILABLE);
            GatewayError::GatewayBusy { retry_after: Duration::from_secs(1) }.response(dialect)
        };
        let Some(caller_slot) = self.passthrough_callers.try_take(caller, s.max_passthrough_per_caller) else {
            return busy();
        };
        let account = target.account.unwrap_or_default();
        let Some(account_slot) = self.passthrough_accounts.try_take(account.to_owned(), s.max_passthrough_per_account)
        else {
            return busy();
        };
        let idle = Duration::from_millis(self.config.upload.client_idle_timeout_ms);
        let request_id = req.headers().get(crate::upstream::client::REQUEST_ID).cloned();
        // The member (a SHA-256 of the token) only where a create needs it: not on every GET.
        let creates =
            req.method() == Method::POST && matches!(target.chunked, Some(Chunked { upload: None, part: None }));
        let member =
            creates.then(|| req.headers().get(http::header::AUTHORIZATION).map(|a| member_of(a.as_bytes()))).flatten();
        let ends = match (req.method(), target.chunked, &member) {
            (&Method::DELETE, Some(Chunked { upload: Some(id), part: None }), _) => proxy::Ends::Upload(id),
            (&Method::PUT, Some(Chunked { upload: Some(id), part: Some(_) }), _) => proxy::Ends::Part(id),
            // Taken for creates only.
            (_, _, Some(member)) => proxy::Ends::Create(member),
            (&Method::POST | &Method::PUT, _, _) if target.envelopes => proxy::Ends::Envelope,
            _ => proxy::Ends::Nothing,
        };
        // What a create, a use, a delete or a part does to the member's quota is seen through to
        // the upstream's answer when the client leaves once its body has been passed on whole (a
        // client's timeout, most often): the upstream acts on a request it has whole all the same,
        // and the ledger must hear of it. In a task of its own that holds the slots, counted as work
        // a stop waits for. Not for an HTTP/2 body of unknown length: a stream reset ends it as
        // cleanly as END_STREAM does (hyper), and only the handler's end tells the two apart.
        let whole_is_known = req.version() <= http::Version::HTTP_11
            || http_body::Body::is_end_stream(req.body())
            || req.headers().contains_key(header::CONTENT_LENGTH);
        let result = if ends == proxy::Ends::Nothing || !whole_is_known {
            let result = proxy::forward(&self.upstream, self.policies(), req, (account, ends), idle, None).await;
            drop((caller_slot, account_slot));
            result
        } else {
            let (ends, account) = (proxy::OwnedEnds::of(ends), account.to_owned());
            let (present, client) = crate::pipeline::presence::pair();
            let (gw, work) = (self.clone(), self.uploads.drivers.enter());
            let seen_through = tokio::spawn(async move {
                let _held = (caller_slot, account_slot, work);
                proxy::forward(&gw.upstream, gw.policies(), req, (&account, ends.ends()), idle, Some(client)).await
            });
            let result = seen_through.await;
            drop(present);
            result.unwrap_or_else(|_| Err(GatewayError::Internal("the passthrough's task ended early".into())))
        };
        match result {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(request_id = ?request_id, code = err.code(), detail = err.detail(), "passthrough failed");
                // Counted with the upstream's answers: the client's answer, whoever made it.
                crate::telemetry::passthrough(err.status());
                err.response(dialect)
            }
        }
    }
}

// === impl Gateway (passthrough) ===

impl Gateway {
    /// The policies passthrough requests run under.
    fn policies(&self) -> proxy::Policies<'_> {
        proxy::Policies {
            pacing: self.pacing.as_ref(),
            quota: self.quota.as_ref(),
            quota_wait: Duration::from_secs(self.config.quota.wait_secs),
            max_answer: self.config.upstream.max_response_bytes,
            answer_timeout: Duration::from_millis(self.config.upstream.call_timeout_ms),
            unknown_bytes: self.config.upload.max_document_bytes,
        }
    }
}

// === impl Gateway (callers) ===

impl Gateway {
    /// Who is calling: the key it presented when keys are configured (compared in constant time,
    /// as SHA-256 digests so lengths do not leak either), else its address.
    fn caller(&self, req: &Request<RequestBody>, peer: SocketAddr) -> Result<Caller, GatewayError> {
        if self.caller_keys.is_empty() {
            return Ok(Caller::Addr(peer.ip()));
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
            (Some(_), Some(i)) => Ok(Caller::Key(i)),
            _ => Err(GatewayError::CallerUnauthorized),
        }
    }
}

// === impl Gateway (admin) ===

impl crate::edge::admin::Status for Gateway {
    fn draining(&self) -> bool {
        self.uploads.is_draining()
    }

    fn saturated(&self) -> bool {
        self.connections.saturated()
    }

    fn upstream_addr(&self) -> Option<String> {
        self.upstream.host_port()
    }

    fn record_gauges(&self) {
        let gw = self;
        metrics::gauge!(crate::telemetry::UPLOADS_IN_FLIGHT).set(gw.uploads.active() as f64);
        metrics::gauge!(crate::telemetry::PARTS_IN_FLIGHT).set(gw.uploads.parts_in_flight() as f64);
        metrics::gauge!(crate::telemetry::BYTES_IN_FLIGHT).set(gw.uploads.bytes_in_flight() as f64);
        metrics::gauge!(crate::telemetry::CONNECTIONS_OPEN).set(gw.connections.open() as f64);
        if let Some(tus) = &gw.tus {
            tus.record_gauges();
        }
        for (account, budget) in gw.pacing.budgets() {
            let a = account.clone();
            metrics::gauge!(crate::telemetry::BUDGET_FREE, "account" => a.clone()).set(budget.free() as f64);
            metrics::gauge!(crate::telemetry::BUDGET_RESERVED, "account" => a.clone()).set(budget.reserved as f64);
            metrics::gauge!(crate::telemetry::BUDGET_USED, "account" => a).set(budget.used as f64);
        }
        let mut shown = std::collections::HashSet::new();
        for (member, held) in gw.quota.held() {
            metrics::gauge!(crate::telemetry::QUOTA_UPLOADS, "member" => member.clone()).set(held.uploads as f64);
            metrics::gauge!(crate::telemetry::QUOTA_BYTES, "member" => member.clone()).set(held.bytes as f64);
            shown.insert(member);
        }
        let before = std::mem::replace(&mut *gw.quota_labels.lock().unwrap(), shown.clone());
        for member in before.difference(&shown) {
            metrics::gauge!(crate::telemetry::QUOTA_UPLOADS, "member" => member.clone()).set(0.0);
            metrics::gauge!(crate::telemetry::QUOTA_BYTES, "member" => member.clone()).set(0.0);
        }
        for (account, remaining) in gw.pacing.remaining() {
            if let Some(v) = remaining.hourly {
                metrics::gauge!(crate::telemetry::RATELIMIT_REMAINING, "account" => account.clone(), "window" => "hourly")
                .set(v as f64);
            }
            if let Some(v) = remaining.burst {
                metrics::gauge!(crate::telemetry::RATELIMIT_REMAINING, "account" => account, "window" => "burst")
                    .set(v as f64);
            }
        }
    }
}

/// Bytes of the request's head as sent over HTTP/1.1: request line and header lines.
/// A tus request to a gateway without `tus.dir`.
fn tus_disabled() -> GatewayError {
    GatewayError::Tus {
        status: http::StatusCode::NOT_IMPLEMENTED,
        code: "TUS_DISABLED",
        message: "Resumable uploads (tus) are not enabled on this gateway (tus.dir).".into(),
    }
}

/// Header fields a request may carry: HTTP/1.1's parser (hyper) holds 100, and HTTP/2 requests
/// are held to the same, so that the protocols agree.
pub const MAX_HEADER_FIELDS: usize = 100;

fn head_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target =
        uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    req.headers().iter().fold(line, |n, (name, value)| n + name.as_str().len() + value.len() + ": \r\n".len())
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, any other at most one. And one
/// `Content-Length` line: a doubled one, even with equal values (which RFC 9110 allows a recipient
/// to merge), is refused, since intermediaries that read it otherwise are what smuggling feeds on.
fn framing<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == http::Version::HTTP_11) {
        return Err(GatewayError::BadRequest("an HTTP/1.1 request needs exactly one Host header (RFC 9112)".into()));
    }
    if req.headers().get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(GatewayError::BadRequest("the request has more than one Content-Length header".into()));
    }
    Ok(())
}

/// Only `chunked` may be applied to a request body: any other transfer coding (`gzip, chunked`)
/// would reach the upload, or the upstream, still encoded (RFC 9112 §6.1: 501).
fn transfer_coding(headers: &HeaderMap) -> Result<(), GatewayError> {
    crate::body::chunked_only(headers).map(|_| ()).map_err(GatewayError::UnsupportedTransferCoding)
}

/// The whole answer to a request hyper refused while reading it (see `canned`), with a body in
/// the dialect's error shape like every other answer the gateway makes.
fn framing_answer(dialect: crate::upstream::dialect::Dialect, limit: usize) -> crate::edge::canned::Render {
    Arc::new(move |status: http::StatusCode| {
        let err = match status.as_u16() {
            431 => GatewayError::HeadersTooLarge { limit },
            414 => GatewayError::InvalidPath("the request target is too long"),
            _ => GatewayError::BadRequest(
                "the request's head or framing is malformed (the request line, a header line, Content-Length or Transfer-Encoding)".into(),
            ),
        };
        let body = dialect.error(err.code(), &err.to_string());
        // The request's head could not be read, so a client's own id cannot be echoed: a new one.
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {}\r\ndate: {}\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
            new_request_id().to_str().expect("hex"),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
        let mut answer = bytes::BytesMut::from(head.as_bytes());
        answer.extend_from_slice(&body);
        answer.freeze()
    })
}

/// A body that is neither JSON nor XML is a document to stream; JSON and XML are API calls.
fn is_document(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    !["/json", "+json", "/xml", "+xml"].iter().any(|s| mime.ends_with(s))
}

/// The request's `X-Request-Id`: the client's, or a new one put on the request (so that the
/// passthrough forwards it and an upload's calls carry it). Written by hand rather than with
/// tower-http's request-id layers, which cost a proxied request about 10% more instructions
/// (5.8k of 58k per GET, callgrind: they keep the id in the request's extensions too).
fn request_id(req: &mut Request<Incoming>) -> http::HeaderValue {
    if let Some(id) = req.headers().get(crate::upstream::client::REQUEST_ID) {
        return id.clone();
    }
    let id = new_request_id();
    req.headers_mut().insert(crate::upstream::client::REQUEST_ID, id.clone());
    id
}

/// A new request id: a random prefix for this process and a count, in hex.
fn new_request_id() -> http::HeaderValue {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // A random prefix for this process and a count, in hex: as unique as a UUID for the purpose,
    // without drawing randomness for each request.
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Written digit by digit: `format!` cost more than the rest of the id's handling.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 29];
    for (i, slot) in text[..16].iter_mut().enumerate() {
        *slot = HEX[(prefix >> (60 - 4 * i) & 15) as usize];
    }
    for (i, slot) in text[17..].iter_mut().enumerate() {
        *slot = HEX[(n >> (44 - 4 * i) & 15) as usize];
    }
    http::HeaderValue::from_bytes(&text).expect("hex is a header value")
}

/// tower-http's body-limit and timeout layers are not used: a streamed document is bounded by its
/// declared length, the upstream's limits and the upload's deadline, with errors that say which,
/// and a passthrough body must stream whatever its size; a timeout over the whole request would
/// cut off long uploads that are making progress. Those bounds are in the pipeline and the
/// passthrough instead.
///
/// Around the gateway's handler: `sensitive` headers (`Authorization` and the caller-key header)
/// are marked so before anything reads the request (never shown by `Debug`, never indexed by
/// HPACK); a panic becomes 500 `INTERNAL_ERROR` with nothing of it in the body (the log has it);
/// every request carries an `X-Request-Id`, the client's or a new one, which its answer echoes, the
/// logs name, and the upload's upstream calls carry. Written here rather than with tower-http's
/// catch-panic and sensitive-headers layers, which cost a proxied GET 2,700 instructions of its
/// 53,000 (callgrind); tower-http's CORS layer is put around the handler when origins are set.
fn mark_sensitive(headers: &mut HeaderMap, sensitive: &[HeaderName]) {
    for name in sensitive {
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

/// A request whose body is drained rather than reset over HTTP/2 if it is let go unread, whichever
/// path refuses it (see `RequestBody`).
fn drained(req: Request<Incoming>) -> Request<RequestBody> {
    let version = req.version();
    req.map(|body| RequestBody::new(body, version))
}

/// Over HTTP/2, the answer's headers whose values change with every answer (the request id, the
/// upstream's remaining calls) are sent as literals that HPACK's table does not take in: each
/// would be inserted, evicting an older entry, and never used again. (`set_sensitive` is how the
/// h2 crate is told; callgrind: 90,158 → 86,967 instructions per proxied GET over h2c.)
fn unindexed(headers: &mut HeaderMap) {
    const CHANGING: [HeaderName; 3] = [
        crate::upstream::client::REQUEST_ID,
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderName::from_static("x-burstlimit-remaining"),
    ];
    mark_sensitive(headers, &CHANGING);
}

/// Whether CORS applies to a request: browsers of the configured origins may use tus, and nothing
/// else through the gateway. That is an upload's URL, or the creation URL (as `route::screen`
/// reads it, the one parse of request targets) asked with `Tus-Resumable` or by a preflight for a
/// request that will carry it. A preflight (an `OPTIONS` with `Access-Control-Request-Method`) is
/// answered by the CORS layer; any other `OPTIONS` (tus discovery, or one for the upstream) is not
/// one and goes where it would without CORS. The upstream's other answers get no CORS headers: a
/// configured origin cannot read them.
fn cors_applies<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    let preflight = req.method() == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if req.method() == Method::OPTIONS && !preflight {
        return false;
    }
    if req.uri().path().starts_with(crate::ingress::tus::PATH) {
        return true;
    }
    let asks_tus = headers.contains_key("tus-resumable")
        || (preflight
            && headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS).iter().any(|v| {
                v.to_str().is_ok_and(|names| names.split(',').any(|n| n.trim().eq_ignore_ascii_case("tus-resumable")))
            }));
    asks_tus
        && route::screen(req.method(), req.uri(), req.version())
            .is_ok_and(|t| t.chunked == Some(Chunked { upload: None, part: None }))
}

/// `answer`, or 500 `INTERNAL_ERROR` if it panics (see `mark_sensitive`).
async fn unpanicked<F>(answer: F, dialect: crate::config::Dialect) -> Result<Response<Body>, BoxError>
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Unpin,
{
    match (CatchUnwind { inner: answer }).await {
        Ok(answer) => answer,
        Err(_panic) => {
            tracing::error!("a request's handler panicked");
            Ok(GatewayError::Internal("a request's handler panicked".into()).response(dialect))
        }
    }
}

/// A future whose panic is caught and returned instead of unwinding through the connection.
struct CatchUnwind<F> {
    inner: F,
}

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| std::pin::Pin::new(inner).poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(answer)) => std::task::Poll::Ready(Ok(answer)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains: no new uploads
/// (SHUTTING_DOWN), running ones get `server.drain_secs` to finish, and whatever is still running
/// after that is cancelled and its upstream upload deleted.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let mut limits =
        server::ConnLimits::for_server(&gateway.config.server, gateway.tls.clone(), gateway.connections.clone());
    limits.render = Some(framing_answer(gateway.upstream.dialect, gateway.config.server.max_header_bytes));
    limits.settle = Some(gateway.uploads.drivers.clone());
    let drain = Duration::from_secs(gateway.config.server.drain_secs);
    let (dialect, key) = (gateway.upstream.dialect, gateway.caller_key_header.clone());
    let sensitive = [header::AUTHORIZATION, key];
    // Browsers of the configured origins may use tus (and only they).
    let cors = crate::ingress::tus::cors(&gateway.config.tus.cors_origins);
    let gw = gateway.clone();
    let handler = move |mut req: Request<Incoming>, peer: SocketAddr| {
        mark_sensitive(req.headers_mut(), &sensitive);
        let id = request_id(&mut req);
        let req = drained(req);
        let gw = gw.clone();
        let unread_risk = req.version() <= http::Version::HTTP_11 && !hyper::body::Body::is_end_stream(req.body());
        let h2 = req.version() == http::Version::HTTP_2;
        let head = req.method() == Method::HEAD;
        // Boxed once: the handler's future is large, and each wrapper would otherwise copy it as
        // it wraps it.
        let answer: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> = match &cors {
            Some(cors) if cors_applies(&req) => {
                let inner = tower::service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, BoxError>(gw.handle(req, peer).await) }
                });
                Box::pin(tower::Layer::layer(cors, inner).oneshot(req))
            }
            _ => Box::pin(async move { Ok(gw.handle(req, peer).await) }),
        };
        async move {
            let mut answer = unpanicked(answer, dialect).await?;
            answer.headers_mut().insert(crate::upstream::client::REQUEST_ID, id);
            if h2 {
                unindexed(answer.headers_mut());
                if head {
                    crate::body::headers_only(&mut answer);
                }
            }
            if unread_risk && (answer.status().is_client_error() || answer.status().is_server_error()) {
                // A refusal may leave the request's body unread: the connection cannot carry another
                // request, and the client is told so (RFC 9112 §9.6), rather than finding out by
                // sending one into a closing connection. (The unread rest is drained: see `linger`.)
                answer.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, BoxError>(answer)
        }
    };
    // When the drain began: deferred deletes get what is left of it (below).
    let began = Arc::new(std::sync::OnceLock::new());
    let draining = {
        let (gw, began) = (gateway.clone(), began.clone());
        async move {
            shutdown.await;
            let _ = began.set(tokio::time::Instant::now());
            tracing::info!(active_uploads = gw.uploads.active(), "draining");
            gw.uploads.start_draining();
            // tus uploads are driven without a client connection: their upstream uploads are
            // stopped and deleted now, while the event loops that run them still run (the uploads
            // stay spooled, and go on after the restart). Beside the drain, not before it: a
            // stopped upload can wait for a PATCH still arriving, and the drain period had only
            // begun once that wait (up to 10 s) was over.
            if let Some(tus) = gw.tus.clone() {
                tokio::spawn(async move { tus.shutdown(Duration::from_secs(10)).await });
            }
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
    // Deletes that went on in the background after their uploads answered (the account paused,
    // the upstream failing) get what is left of the drain period: stopping now would leave their
    // uploads open upstream.
    let running = gateway.uploads.background.running();
    if running > 0 {
        let until = began.get().copied().unwrap_or_else(tokio::time::Instant::now) + drain;
        tracing::info!(deletes = running, "waiting for deferred deletes");
        if !gateway.uploads.background.settled(until).await {
            tracing::warn!(
                deletes = gateway.uploads.background.running(),
                "drain period over: deferred deletes abandoned (their uploads expire upstream on their own)"
            );
        }
    }
    // The ledger's writes under way (a passthrough call seen through after its client left is
    // written after its task ends), and what was kept while Redis did not answer.
    gateway.quota.stopping(tokio::time::Instant::now() + LEDGER_GRACE).await;
}

/// At a stop, the time the quota ledger's last writes are given (Redis's operations take
/// `cluster.op_timeout_ms` at most; the rest is for a Redis that does not answer for a moment).
const LEDGER_GRACE: Duration = Duration::from_secs(2);

/// Serves the gateway and its admin listener until `shutdown` resolves and the drain is over;
/// the admin listener keeps answering (`/readyz`: draining) until then.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let (mut admin_stop, admin_stopped) = Stopper::new();
    let admin = tokio::spawn(crate::edge::admin::run(admin, gateway.clone(), admin_stopped));
    run(listener, gateway, shutdown).await;
    admin_stop.stop();
    let _ = admin.await;
}

/// A gateway running in this process (tests, the demo, benchmarks). Stops when dropped.
pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub stopper: Stopper,
}

impl GatewayHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `server.listen` and `admin.listen` and serves both in a background task.
pub async fn spawn(config: Config) -> Result<GatewayHandle, String> {
    let (listener, addr) = bind(config.server.listen).await?;
    let (admin, admin_addr) = bind(config.admin.listen).await?;
    let gateway = Gateway::new(config)?;
    let (stopper, stopped) = Stopper::new();
    tokio::spawn(run_with_admin(listener, admin, gateway.clone(), stopped));
    Ok(GatewayHandle { addr, admin_addr, gateway, stopper })
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

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_nothing_of_the_panic_and_the_token_is_sensitive() {
        use http_body_util::BodyExt;
        let handler = |path: &str| {
            let mut req = Request::builder().uri(path).header(header::AUTHORIZATION, "Bearer t").body(()).unwrap();
            req.headers_mut().append(header::AUTHORIZATION, "Bearer u".parse().unwrap());
            mark_sensitive(req.headers_mut(), &[header::AUTHORIZATION]);
            Box::pin(async move {
                if req.uri().path() == "/panic" {
                    panic!("secret detail from inside");
                }
                let sensitive = req.headers().get_all(header::AUTHORIZATION).iter().all(|v| v.is_sensitive());
                Ok::<_, BoxError>(Response::new(crate::body::full(format!("sensitive={sensitive}"))))
            })
        };
        let answer = unpanicked(handler("/panic"), crate::config::Dialect::Docusign).await.unwrap();
        assert_eq!(answer.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("INTERNAL_ERROR") && !body.contains("secret"), "{body}");
        let answer = unpanicked(handler("/fine"), crate::config::Dialect::Docusign).await.unwrap();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"sensitive=true");
    }

    #[test]
    fn only_chunked_is_a_transfer_coding_the_gateway_takes() {
        let with = |te: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::TRANSFER_ENCODING, te.parse().unwrap());
            transfer_coding(&h).map_err(|e| e.code())
        };
        assert_eq!(transfer_coding(&HeaderMap::new()), Ok(()));
        assert_eq!(with("chunked"), Ok(()));
        assert_eq!(with("Chunked"), Ok(()));
        for te in ["gzip, chunked", "chunked, chunked", "identity", "gzip", "deflate,chunked"] {
            assert_eq!(with(te), Err("UNSUPPORTED_TRANSFER_CODING"), "{te}");
        }
    }
}
