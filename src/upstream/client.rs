//! The upstream client: pooled hyper clients, one per thread (rustls; HTTP/1.1, and HTTP/2 when
//! `upstream.http2`), typed calls for the five chunked-upload routes, and the classification of
//! what can go wrong with a call.

use std::{
    cell::RefCell,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{
    body::{self, Body, ReadError},
    config::UpstreamConfig,
    error::GatewayError,
    pipeline::part::PartJson,
    tls,
    upstream::{
        dialect::{Dialect, ErrorBody},
        resource::ChunkedUpload,
    },
};

/// Where the chunked-upload calls of one upload go, and the token they carry.
#[derive(Clone, Debug)]
pub struct UploadRoute {
    /// The client's path before `/v2.1`, kept so the upstream sees the same API path.
    pub prefix: String,
    pub version: String,
    pub account: String,
    /// The client's `Authorization`, forwarded as is and never logged.
    pub auth: HeaderValue,
    /// The request's `X-Request-Id`, carried by every call it makes.
    pub request_id: Option<HeaderValue>,
}

/// An upstream answer, read whole.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a call failed before an answer could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nothing reached the upstream (connect refused, DNS, TLS handshake): safe to send again.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have been received and applied: the connection broke after sending.
    #[error("no answer: {0}")]
    Broken(String),
    /// No answer within the call timeout; the request may have been applied.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// An answer came but could not be read (too large, body cut off).
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// Not sent: the account's rate limit would hold the call past its deadline.
    #[error("rate limited for {0:?}")]
    RateLimited(Duration),
    /// Not sent: the upstream's certificate failed verification. Retrying will not fix it.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The header that names a request, from the client through the gateway to the upstream.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The upstream's throttling error codes.
pub const HOURLY_LIMIT_CODE: &str = "HOURLY_APIINVOCATION_LIMIT_EXCEEDED";
pub const BURST_LIMIT_CODE: &str = "BURST_APIINVOCATION_LIMIT_EXCEEDED";

/// Throttling is told by the error code, not the status alone: DocuSign answered it with 400 for
/// years and with 429 since 2026. Any 429 counts too, and 444 ("blocked due to excess usage"),
/// which its front end answers with an HTML page. The rate limiter reads answers by the same rule.
pub fn is_throttle(a: &Answer, dialect: Dialect) -> bool {
    is_throttle_status(a.status)
        || (a.status.is_client_error() && a.error_code(dialect).is_some_and(|c| is_throttle_code(&c)))
}

/// 429, or 444: throttling whatever the body says.
pub fn is_throttle_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 444
}

/// The upstream's throttling error codes.
pub fn is_throttle_code(code: &str) -> bool {
    code == HOURLY_LIMIT_CODE || code == BURST_LIMIT_CODE
}

/// A JSON error as the logs may carry it. serde's messages quote the value they stumbled on
/// (`invalid type: string "…"`, `unknown field `…``): from an upstream that echoes what it was
/// sent into the wrong field, that is the bearer token or a part's base64, which must never reach
/// a log. Only the kind of error, where it was, and a missing or repeated field (names of the
/// resource's own fields) are kept.
pub fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = e.to_string();
    let what = match e.classify() {
        Category::Data if message.starts_with("missing field `") || message.starts_with("duplicate field `") => {
            message.split(" at line ").next().unwrap_or_default().to_owned()
        }
        Category::Data => "a value of the wrong type or shape".to_owned(),
        Category::Syntax => "a syntax error".to_owned(),
        Category::Eof => "cut short".to_owned(),
        Category::Io => "unreadable".to_owned(),
    };
    if e.line() > 0 { format!("{what} at line {} column {}", e.line(), e.column()) } else { what }
}

/// An upstream error code as the logs may carry it: codes are upper-case words (`INVALID_…`);
/// anything else in that field is not shown.
pub fn loggable_code(code: &str) -> &str {
    let shaped = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if shaped { code } else { "an unrecognised code" }
}

/// What a chunked-upload call's answer says.
pub enum Parsed {
    Resource(ChunkedUpload),
    Error(ErrorBody),
}

// === impl Answer ===

impl Answer {
    /// The body parsed in `dialect`: the upload resource or the upstream's error.
    pub fn parse(&self, dialect: Dialect) -> Result<Parsed, String> {
        let value: serde_json::Value =
            serde_json::from_slice(&self.body).map_err(|e| format!("body is not JSON ({})", json_error(&e)))?;
        match dialect.unwrap(value) {
            Some(Ok(data)) if self.status.is_success() => serde_json::from_value(data)
                .map(Parsed::Resource)
                .map_err(|e| format!("not an upload resource ({})", json_error(&e))),
            Some(Err(err)) => Ok(Parsed::Error(err)),
            _ => Err(format!("a {} answer in neither shape of the {dialect:?} dialect", self.status)),
        }
    }

    /// The upload resource of a successful answer.
    pub fn resource(&self, dialect: Dialect) -> Result<ChunkedUpload, String> {
        match self.parse(dialect)? {
            Parsed::Resource(r) => Ok(r),
            Parsed::Error(e) => Err(format!("an error answer ({})", loggable_code(&e.code))),
        }
    }

    /// The upload resource of a successful answer about upload `id`. An answer that names
    /// another upload, by its id or by the URI a client puts in an envelope's `remoteUrl`, is no
    /// answer about this one (an upstream that mixes up its uploads would otherwise have the
    /// gateway hand back another's as this one, committed).
    pub fn resource_of(&self, dialect: Dialect, id: &str) -> Result<ChunkedUpload, String> {
        let resource = self.resource(dialect)?;
        if !resource.has_id(id) {
            return Err("the answer names another upload".into());
        }
        let uri = resource.chunked_upload_uri.trim();
        let named = uri.strip_prefix("docusignchunkedupload://").is_some_and(|named| named.eq_ignore_ascii_case(id));
        if !uri.is_empty() && !named {
            return Err("the answer's chunkedUploadUri names another upload".into());
        }
        Ok(resource)
    }

    /// The upload a successful answer names, in the shape of an id, even where the rest of the
    /// resource cannot be read (a field of the wrong type beside it).
    pub fn named_upload(&self, dialect: Dialect) -> Option<String> {
        let parsed = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|value| dialect.unwrap(value)?.ok())
            .map(|data| data.get("chunkedUploadId").and_then(|id| id.as_str()).map(str::to_owned));
        // A body that is not JSON (cut short, trailing bytes) may still name it, as a key whose
        // string value is whole.
        let id = match parsed {
            Some(id) => id?,
            None => named_in_text(&self.body)?,
        };
        crate::ids::valid_upload_id(&id).then_some(id)
    }

    /// The upstream's error code, if the body carries one.
    pub fn error_code(&self, dialect: Dialect) -> Option<String> {
        match self.parse(dialect) {
            Ok(Parsed::Error(e)) => Some(e.code),
            _ => None,
        }
    }

    /// The answer as the client gets it: status, headers and body as the upstream sent them.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        strip_hop_by_hop(response.headers_mut());
        // The body was read whole; its length is known again.
        response.headers_mut().remove(header::TRANSFER_ENCODING);
        response
    }

    /// A refusal as the client gets it: verbatim when it is an API error in the dialect's shape;
    /// otherwise (an HTML page from the upstream's front end) the gateway's own error, by status.
    pub fn into_refusal(self, dialect: Dialect) -> Response<Body> {
        if matches!(self.parse(dialect), Ok(Parsed::Error(_))) {
            return self.into_response();
        }
        let err = if is_throttle_status(self.status) {
            let after = self
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .unwrap_or(1);
            GatewayError::RateLimited { retry_after: Duration::from_secs(after) }
        } else {
            GatewayError::UpstreamRefused(self.status)
        };
        tracing::warn!(status = self.status.as_u16(), code = err.code(), "the upstream refused with a non-API answer");
        err.response(dialect)
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1; `HTTP2-Settings`, RFC 7540 §3.2.1; and the old
/// `Proxy-Connection`, which some clients still send), including those the `Connection` header
/// names, but for `X-Request-Id`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the names present costs less than ten removals, and
    // a match on the name's text less than comparing each name with ten (three of them not
    // standard names, compared byte by byte).
    let hop = |name: &HeaderName| {
        matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "http2-settings"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
        )
    };
    if !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        // The request id is the gateway's, for the upstream and the logs: not for a sender to
        // take off by naming it (`Connection: X-Request-Id` had sent the request without one).
        .filter(|name| *name != REQUEST_ID)
        .chain(headers.keys().filter(|name| hop(name)).cloned())
        .collect();
    for name in &named {
        headers.remove(name);
    }
}

type HttpClient = Client<Connector, Body>;

/// The connector, with `upstream.connect_timeout_ms` over the whole connection: the TCP connect
/// and the TLS handshake. (The TCP connector's own timeout ends with the connect: an upstream that
/// accepted and never answered the ClientHello held a call until the call's timeout, which counts
/// as a call the upstream may have received, so a create was reported `UPLOAD_OUTCOME_UNKNOWN`
/// and not sent again.) A connection not made in time is a call never sent.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type Connecting = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Future;
type Connected = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;

impl tower_service::Service<Uri> for Connector {
    type Response = Connected;
    type Error = body::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connected, body::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (connecting, timeout): (Connecting, _) = (self.inner.call(uri), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(format!("no connection within {} ms (TCP and TLS)", timeout.as_millis()).into()),
            }
        })
    }
}

/// Pooled clients, one per thread that calls the upstream. A connection's task runs on the thread
/// that opened it; with an event loop per thread (`server.scheduler = "per-thread"`), a client of
/// its own keeps each request and the connection it rides on together, with no wake-ups across
/// threads.
struct Clients {
    /// Tells this upstream's clients from others' on a thread (tests run many gateways).
    token: Arc<()>,
    connector: Connector,
    pool_max_idle: usize,
}

thread_local! {
    /// This thread's clients, by upstream; entries of upstreams that are gone are pruned.
    static CLIENTS: RefCell<Vec<(Weak<()>, HttpClient)>> = const { RefCell::new(Vec::new()) };
}

// === impl Clients ===

impl Clients {
    fn build(&self) -> HttpClient {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.pool_max_idle)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(self.connector.clone())
    }

    /// Runs `f` with this thread's client, made on first use.
    fn with<R>(&self, f: impl FnOnce(&HttpClient) -> R) -> R {
        CLIENTS.with(|cell| {
            let mut clients = cell.borrow_mut();
            // A live `Weak` keeps its allocation, so no other token can share its address.
            let ours = Arc::as_ptr(&self.token);
            let at = match clients.iter().position(|(token, _)| token.as_ptr() == ours) {
                Some(at) => at,
                None => {
                    clients.retain(|(token, _)| token.strong_count() > 0);
                    clients.push((Arc::downgrade(&self.token), self.build()));
                    clients.len() - 1
                }
            };
            f(&clients[at].1)
        })
    }
}

/// The pooled clients and where they point.
pub struct Upstream {
    clients: Clients,
    base: Uri,
    pub dialect: Dialect,
    call_timeout: Duration,
    part_timeout: Duration,
    commit_timeout: Duration,
    max_response_bytes: usize,
}

// === impl Upstream ===

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let base: Uri = config.base_url.parse().map_err(|e| format!("upstream.base_url: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        let tls = tls::client_config(&config.ca_files)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder =
            if config.allow_plain_http { builder.https_or_http() } else { builder.https_only() }.enable_http1();
        let inner =
            if config.http2 { builder.enable_http2().wrap_connector(http) } else { builder.wrap_connector(http) };
        let connector = Connector { inner, timeout: Duration::from_millis(config.connect_timeout_ms) };
        Ok(Self {
            clients: Clients { token: Arc::new(()), connector, pool_max_idle: config.pool_max_idle },
            base,
            dialect: config.dialect,
            call_timeout: Duration::from_millis(config.call_timeout_ms),
            part_timeout: Duration::from_millis(config.part_timeout_ms),
            commit_timeout: Duration::from_millis(config.commit_timeout_ms),
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// The upstream's host and port, for a reachability probe.
    pub fn host_port(&self) -> Option<String> {
        let host = self.base.host()?;
        let port = self.base.port_u16().unwrap_or(if self.base.scheme_str() == Some("http") { 80 } else { 443 });
        Some(format!("{}:{port}", host.trim_start_matches('[').trim_end_matches(']')))
    }

    /// `base_url` + `path_and_query`.
    pub fn uri(&self, path_and_query: &str) -> Uri {
        let base_path = self.base.path().trim_end_matches('/');
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query =
            Some(format!("{base_path}{path_and_query}").parse().unwrap_or_else(|_| "/".parse().unwrap()));
        Uri::from_parts(parts).expect("scheme and authority come from a valid base URL")
    }

    /// `base_url` + the client's path and query. Without a base path (the usual case) the client's
    /// already parsed path is reused as is.
    pub fn forward_uri(&self, client: &Uri) -> Uri {
        let pq = client.path_and_query().map_or("/", |pq| pq.as_str());
        if !self.base.path().trim_end_matches('/').is_empty() {
            return self.uri(pq);
        }
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = client.path_and_query().cloned().or_else(|| Some(PathAndQuery::from_static("/")));
        Uri::from_parts(parts).expect("scheme and authority come from a valid base URL")
    }

    /// Sends a request as is; the passthrough uses this (after its pacing). The call timeout
    /// starts once `sent` resolves (the request body has been sent), so a slow but steady upload is
    /// not cut off; a client body that stops is bounded apart.
    pub async fn send(
        &self,
        req: Request<Body>,
        sent: impl Future<Output = ()>,
    ) -> Result<Response<Incoming>, CallError> {
        let timeout = async {
            sent.await;
            tokio::time::sleep(self.call_timeout).await;
        };
        let answer = tokio::select! {
            answer = self.clients.with(|c| c.request(req)) => Ok(answer),
            () = timeout => Err(()),
        };
        let response = match answer {
            Err(()) => return Err(CallError::Timeout(self.call_timeout)),
            Ok(Err(err)) => return Err(call_error(&err)),
            Ok(Ok(response)) => response,
        };
        Ok(response)
    }

    /// One chunked-upload call: the request sent and the answer read whole, within the call timeout.
    /// With `cut_off`, a 2xx answer whose body did not arrive whole (broken off, too large, or
    /// stalled past the timeout) is kept there as far as it came.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        method: Method,
        route: &UploadRoute,
        tail: &str,
        json: Option<PartJson>,
        timeout: Duration,
        op: &'static str,
        cut_off: Option<&mut Option<Answer>>,
    ) -> Result<Answer, CallError> {
        let started = std::time::Instant::now();
        let path = format!("{}/{}/accounts/{}/chunked_uploads{tail}", route.prefix, route.version, route.account);
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri(&path))
            .header(header::AUTHORIZATION, route.auth.clone())
            .header(header::ACCEPT, "application/json");
        req = match &json {
            Some(bytes) => {
                req.header(header::CONTENT_TYPE, "application/json").header(header::CONTENT_LENGTH, bytes.len())
            }
            // DocuSign's front end answers a PUT without a length with 411.
            None => req.header(header::CONTENT_LENGTH, 0),
        };
        if let Some(id) = &route.request_id {
            req = req.header(REQUEST_ID, id.clone());
        }
        let req = req.body(json.map_or_else(body::empty, |json| json.body())).expect("valid request");
        // The answer's status and its body as far as it came, kept outside the exchange so that
        // a timeout leaves them to read.
        let (mut status, mut got) = (None, Vec::new());
        let exchange = async {
            let response = match self.clients.with(|c| c.request(req)).await {
                Ok(r) => r,
                Err(err) => return Err(call_error(&err)),
            };
            let (parts, incoming) = response.into_parts();
            status = Some(parts.status);
            body::read_appending(incoming, self.max_response_bytes, &mut got).await.map_err(|err| match err {
                ReadError::TooLarge { limit } => CallError::BadAnswer(format!("answer over {limit} bytes")),
                ReadError::Io(e) => CallError::Broken(format!("answer cut off: {e}")),
            })?;
            Ok((parts.status, parts.headers))
        };
        let answer = tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(timeout));
        metrics::histogram!(crate::telemetry::UPSTREAM_CALL, "op" => op).record(started.elapsed().as_secs_f64());
        match (answer.and_then(|a| a), status) {
            (Ok((status, headers)), _) => Ok(Answer { status, headers, body: Bytes::from(got) }),
            (Err(err), Some(status)) if status.is_success() => {
                if let Some(kept) = cut_off {
                    *kept = Some(Answer { status, headers: HeaderMap::new(), body: Bytes::from(got) });
                }
                Err(err)
            }
            (Err(err), _) => Err(err),
        }
    }

    /// A create; a 2xx answer whose body did not arrive whole is kept in `cut_off` as far as it
    /// came (it may name the upload made).
    pub async fn create(
        &self,
        route: &UploadRoute,
        json: PartJson,
        cut_off: &mut Option<Answer>,
    ) -> Result<Answer, CallError> {
        self.call(Method::POST, route, "", Some(json), self.part_timeout, "create", Some(cut_off)).await
    }

    pub async fn add_part(&self, route: &UploadRoute, id: &str, seq: u32, json: PartJson) -> Result<Answer, CallError> {
        self.call(Method::PUT, route, &format!("/{id}/{seq}"), Some(json), self.part_timeout, "add_part", None).await
    }

    pub async fn get(&self, route: &UploadRoute, id: &str, checksum: bool) -> Result<Answer, CallError> {
        let query = if checksum { "?include=checksum" } else { "" };
        self.call(Method::GET, route, &format!("/{id}{query}"), None, self.call_timeout, "get", None).await
    }

    pub async fn commit(&self, route: &UploadRoute, id: &str) -> Result<Answer, CallError> {
        self.call(Method::PUT, route, &format!("/{id}?action=commit"), None, self.commit_timeout, "commit", None).await
    }

    pub async fn delete(&self, route: &UploadRoute, id: &str) -> Result<Answer, CallError> {
        self.call(Method::DELETE, route, &format!("/{id}"), None, self.call_timeout, "delete", None).await
    }
}

/// The first `"chunkedUploadId": "..."` in a body that is not JSON, if its value's closing quote
/// is there.
fn named_in_text(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"chunkedUploadId\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = body[at..].trim_ascii_start().strip_prefix(b":")?.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// What a failed request means: not sent (connect, TLS), an answer that could not be parsed, or a
/// connection that broke after sending.
fn call_error(err: &hyper_util::client::legacy::Error) -> CallError {
    if tls::is_certificate_error(err) {
        return CallError::Tls(describe(err));
    }
    if err.is_connect() {
        return CallError::NotSent(describe(err));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_parse() || h.is_parse_status() || h.is_parse_too_large())
        {
            return CallError::BadAnswer(describe(err));
        }
        source = e.source();
    }
    CallError::Broken(describe(err))
}

/// The error and its causes on one line (hyper's own message alone is often just "client error").
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "x-named"),
            ("x-named", "1"),
            ("proxy-connection", "keep-alive"),
            ("http2-settings", "AAMAAABkAARAAAAA"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "Bearer t"),
        ] {
            h.append(HeaderName::from_static(name), name_value(value));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["authorization"]);
    }

    fn name_value(v: &'static str) -> http::HeaderValue {
        http::HeaderValue::from_static(v)
    }
}
