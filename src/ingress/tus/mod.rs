//! Resumable uploads: the tus 1.0 protocol (tus.io, protocol 1.0.0) in front of the pipeline.
//!
//! A `POST` to the streamed-upload URL that carries `Tus-Resumable: 1.0.0` creates a tus upload
//! whose URL is the gateway's own (`/tus/uploads/{id}`); `HEAD`, `PATCH`, `DELETE` and `OPTIONS`
//! on it follow the protocol, with the creation, creation-with-upload, creation-defer-length,
//! termination, checksum and expiration extensions. Each `PATCH` is appended to the upload's
//! spool and answered once its bytes and the new offset are durable (see `store`). The upstream
//! upload is driven by the same stages as a streamed upload, its body read from the spool as it
//! grows: parts go upstream as soon as they are complete on disk, under the same admission, rate
//! limits, quotas, retries and memory bounds. Only a digest of the token is kept on disk: after a
//! restart the upload goes on when its client comes back with the token.

pub mod store;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use self::store::{Outcome, Session, Store};
use crate::{
    body::{self, Body, BoxError, RequestBody},
    config::{Dialect, TusConfig},
    error::GatewayError,
    ingress::streamed,
    pipeline::{
        presence,
        uploads::{Destination, Uploads},
    },
    policy::{callers::Caller, quota::member_of},
    telemetry,
    upstream::{Upstream, client::UploadRoute},
};

pub const VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";
pub const CHECKSUMS: &str = "sha1,sha256";
/// Where upload URLs live: `/tus/uploads/{id}`.
pub const PATH: &str = "/tus/uploads/";
/// The headers a tus client sends and reads (for CORS).
pub const REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-defer-length",
    "upload-checksum",
    "upload-concat",
    "x-http-method-override",
    "x-requested-with",
    "x-request-id",
];
pub const RESPONSE_HEADERS: &[&str] = &[
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-expires",
    "upload-defer-length",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "x-chunkgate-upload-id",
    "x-chunkgate-upload-uri",
    "x-chunkgate-checksum",
    "x-chunkgate-error-code",
    "x-request-id",
    "retry-after",
];

/// CORS for browsers of `origins` (tower-http's layer): the tus methods, and the tus headers
/// allowed and exposed. None when no origin is configured.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let list: Vec<HeaderValue> =
        origins.iter().filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()).collect();
    let names = |names: &[&'static str]| names.iter().map(|n| http::HeaderName::from_static(n)).collect::<Vec<_>>();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::POST, Method::GET, Method::HEAD, Method::PATCH, Method::DELETE, Method::OPTIONS])
            .allow_headers(names(REQUEST_HEADERS))
            .expose_headers(names(RESPONSE_HEADERS))
            .max_age(Duration::from_secs(600)),
    )
}

/// The tus uploads of this gateway.
pub struct Tus {
    config: TusConfig,
    /// `Tus-Max-Size`: the largest document (`upload.max_document_bytes`).
    max_size: u64,
    store: Store,
    sessions: Mutex<HashMap<String, Arc<Live>>>,
    /// Spool bytes reserved by live uploads.
    reserved: AtomicU64,
    uploads: Arc<Uploads>,
    upstream: Arc<Upstream>,
    dialect: Dialect,
    /// How long a final PATCH waits for the commit before it answers without the upstream's ids.
    finish_wait: Duration,
    /// Turns true at shutdown: running uploads are stopped (they finish after the restart), so a
    /// final PATCH waiting for the commit answers at once, without the upstream's ids.
    stopping: watch::Sender<bool>,
}

/// One upload in memory.
struct Live {
    /// The creating token's digest (never changes).
    token: String,
    /// Terminated or reaped: nothing may start or be recorded for it any more, and a PATCH still
    /// running on it stops (see `append`).
    ended: watch::Sender<bool>,
    /// The task driving the upstream upload, while it runs.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// After the upstream upload ran out of time while the client was slow: start again only
    /// once every byte is spooled.
    whole_first: std::sync::atomic::AtomicBool,
    /// Its record; held across a PATCH, so that one PATCH runs at a time.
    session: Arc<tokio::sync::Mutex<Session>>,
    /// Bytes durable in the spool, and the length once known: the spool's reader follows them.
    offset: watch::Sender<u64>,
    length: watch::Sender<Option<u64>>,
    outcome: watch::Sender<Option<Outcome>>,
    /// Held while the upstream upload runs; dropped to stop it (it is then deleted upstream).
    running: Mutex<Option<presence::Present>>,
    /// The token and caller of the latest request, to start the upload again without one (in
    /// memory only).
    last: Mutex<Option<(HeaderValue, Caller)>>,
    /// The upstream upload's id as soon as its create answers. A PATCH holds the session across
    /// its whole body, so it records this itself as it goes (see `append`): waiting for the PATCH
    /// to end would leave the id unrecorded, and the upload open upstream, if the process died
    /// meanwhile.
    opened: watch::Sender<Option<String>>,
    /// The session as the running PATCH found it (offset aside: `offset` has it), for a HEAD that
    /// must not wait for that PATCH to end.
    patching: Mutex<Option<Session>>,
}

/// The running PATCH's session, shown to HEAD (see `Live::patching`) until dropped.
struct Patching(Arc<Live>);

impl Patching {
    fn new(live: &Arc<Live>, s: &Session) -> Self {
        *live.patching.lock().unwrap() = Some(s.clone());
        Self(live.clone())
    }
}

impl Drop for Patching {
    fn drop(&mut self) {
        *self.0.patching.lock().unwrap() = None;
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn tus_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::Tus { status, code, message: message.into() }
}

/// A header the request may carry once: its value, if any; `Err` when it is there twice or more
/// (which one was meant would be a guess).
fn once<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (value, None) => Ok(value),
        _ => Err(()),
    }
}

/// A header of the protocol the request may carry once; 400 `TUS_BAD_HEADER` when twice or more.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a HeaderValue>, GatewayError> {
    once(headers, name)
        .map_err(|()| tus_error(StatusCode::BAD_REQUEST, "TUS_BAD_HEADER", format!("{name} appears more than once.")))
}

/// A request's `Upload-*` number header: absent, or a non-negative integer, else 400.
fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, GatewayError> {
    let value = single(headers, name)?;
    match value {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                tus_error(StatusCode::BAD_REQUEST, "TUS_BAD_HEADER", format!("{name} is not a non-negative integer."))
            }),
    }
}

// === impl Tus ===

impl Tus {
    /// Opens the spool in `config.dir` and what it holds.
    pub fn open(
        config: &TusConfig,
        max_size: u64,
        uploads: Arc<Uploads>,
        upstream: Arc<Upstream>,
        finish_wait: Duration,
    ) -> Result<Arc<Self>, String> {
        let (store, sessions) = Store::open(std::path::Path::new(&config.dir))?;
        let dialect = upstream.dialect;
        let tus = Arc::new(Self {
            config: config.clone(),
            max_size,
            store,
            sessions: Mutex::new(HashMap::new()),
            reserved: AtomicU64::new(0),
            uploads,
            upstream,
            dialect,
            finish_wait,
            stopping: watch::Sender::new(false),
        });
        let mut map = tus.sessions.lock().unwrap();
        for s in sessions {
            if s.outcome.is_none() {
                tus.reserved.fetch_add(s.reserved, Ordering::Relaxed);
            }
            map.insert(s.id.clone(), Arc::new(Live::new(s)));
        }
        let count = map.len();
        drop(map);
        tracing::info!(uploads = count, "tus: spool opened");
        Ok(tus)
    }

    fn respond(&self, err: GatewayError) -> Response<Body> {
        let mut r = err.response(self.dialect);
        r.headers_mut().insert("tus-resumable", HeaderValue::from_static(VERSION));
        if err.status() == StatusCode::PRECONDITION_FAILED {
            r.headers_mut().insert("tus-version", HeaderValue::from_static(VERSION));
        }
        r
    }

    /// The tus gauges, as of now (at each scrape, and after each reaping).
    pub fn record_gauges(&self) {
        let map = self.sessions.lock().unwrap();
        metrics::gauge!(telemetry::TUS_SESSIONS).set(map.len() as f64);
        // Bytes still in spools: not those of finished uploads (their spool is removed), nor of
        // ended ones (their offset reads u64::MAX until they leave the map).
        let spooled: u64 = map
            .values()
            .filter(|l| l.outcome.borrow().is_none())
            .map(|l| *l.offset.borrow())
            .filter(|o| *o != u64::MAX)
            .fold(0, u64::saturating_add);
        metrics::gauge!(telemetry::TUS_SPOOLED).set(spooled as f64);
    }

    /// The answer to an upload URL that names no upload (its id is not 32 hex digits).
    pub fn unknown(&self) -> Response<Body> {
        self.respond(tus_error(StatusCode::NOT_FOUND, "TUS_UPLOAD_NOT_FOUND", "No such upload."))
    }

    /// `OPTIONS` on the creation URL or an upload URL: what this server supports.
    pub fn options(&self) -> Response<Body> {
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("tus-resumable", VERSION)
            .header("tus-version", VERSION)
            .header("tus-extension", EXTENSIONS)
            .header("tus-max-size", self.max_size)
            .header("tus-checksum-algorithm", CHECKSUMS)
            .body(body::empty())
            .expect("valid response")
    }

    /// `POST` with `Tus-Resumable` to the streamed-upload URL: a new upload, admitted as a
    /// streamed upload is (token, quota, the account's budget), its URL in `Location`.
    pub async fn create(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        to: Destination<'_>,
        caller: Caller,
    ) -> Response<Body> {
        match self.try_create(req, to, caller).await {
            Ok(r) => r,
            Err(err) => self.respond(err),
        }
    }

    async fn try_create(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        to: Destination<'_>,
        caller: Caller,
    ) -> Result<Response<Body>, GatewayError> {
        check_version(req.headers())?;
        let h = req.headers();
        let auth = h
            .get(header::AUTHORIZATION)
            .filter(|v| v.as_bytes().len() > 7)
            .cloned()
            .ok_or(GatewayError::MissingToken)?;
        let length = number(h, "upload-length")?;
        let deferred = h.get("upload-defer-length").map(|v| v.as_bytes() == b"1");
        match (length, deferred) {
            (Some(_), Some(_)) | (None, None) | (None, Some(false)) => {
                return Err(tus_error(
                    StatusCode::BAD_REQUEST,
                    "TUS_BAD_HEADER",
                    "A creation needs either Upload-Length or Upload-Defer-Length: 1.",
                ));
            }
            _ => {}
        }
        if length.is_some_and(|l| l > self.max_size) {
            return Err(tus_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TUS_TOO_LARGE",
                format!("Upload-Length exceeds Tus-Max-Size ({} bytes).", self.max_size),
            ));
        }
        if length == Some(0) {
            return Err(GatewayError::EmptyDocument);
        }
        let metadata = match h.get("upload-metadata") {
            None => None,
            Some(v) => Some(parse_metadata(v)?),
        };
        let with_upload = !is_end(&req) && content_type_is_offset(h);
        let checksum = Checksum::read(h)?;
        if !is_end(&req) && !with_upload {
            return Err(tus_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "TUS_CONTENT_TYPE",
                "A creation with data needs Content-Type: application/offset+octet-stream.",
            ));
        }
        let reserve = length.unwrap_or(self.max_size);
        if self.reserved.fetch_add(reserve, Ordering::AcqRel) + reserve > self.config.max_disk_bytes {
            self.reserved.fetch_sub(reserve, Ordering::AcqRel);
            return Err(tus_error(
                StatusCode::INSUFFICIENT_STORAGE,
                "TUS_STORAGE_FULL",
                "The gateway's spool cannot hold this upload now (tus.max_disk_bytes); retry later.",
            ));
        }
        let id = format!("{:032x}", fastrand::u128(..));
        let session = Session {
            id: id.clone(),
            prefix: to.prefix.to_owned(),
            version: to.version.to_owned(),
            account: to.account.to_owned(),
            token: member_of(auth.as_bytes()),
            length,
            offset: 0,
            metadata,
            expires: unix_now() + self.config.session_ttl_secs,
            reserved: reserve,
            outcome: None,
            upstream: None,
        };
        let live = Arc::new(Live::new(session.clone()));
        let created = async {
            self.store.put(&session).await?;
            tokio::fs::File::create(self.store.spool(&id)).await.map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        };
        if let Err(e) = created.await {
            self.store.remove(&id).await;
            self.reserved.fetch_sub(reserve, Ordering::AcqRel);
            return Err(GatewayError::Internal(format!("tus: the upload could not be spooled: {e}")));
        }
        // With data, the upload is admitted (like a streamed one) and starts now; without, at its
        // first PATCH: an upload waiting for its client holds no upload slot, quota or calls.
        if with_upload {
            if let Err(err) = self.start(&live, &session, &auth, caller).await {
                self.store.remove(&id).await;
                self.reserved.fetch_sub(reserve, Ordering::AcqRel);
                return Err(err);
            }
        }
        self.sessions.lock().unwrap().insert(id.clone(), live.clone());
        metrics::counter!(telemetry::TUS_CREATED).increment(1);
        tracing::info!(tus_id = %id, length = ?length, "tus: upload created");
        let mut response = Response::builder()
            .status(StatusCode::CREATED)
            .header(header::LOCATION, format!("{PATH}{id}"))
            .header("tus-resumable", VERSION)
            .header("upload-expires", httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(session.expires)))
            .body(body::empty())
            .expect("valid response");
        if with_upload {
            let mut guard = live.session.lock().await;
            let appended = self.append(&live, &mut guard, req.into_body(), checksum, true).await;
            let s = guard.clone();
            drop(guard);
            match appended {
                Ok(()) => {
                    response.headers_mut().insert("upload-offset", HeaderValue::from(s.offset));
                    if let Some(failed) = self.finished_headers(&live, &s, response.headers_mut()).await {
                        return Ok(failed);
                    }
                }
                // The client gets no URL: nothing of the upload may remain.
                Err(err) => {
                    self.end(&id, &live, None).await;
                    return Ok(self.respond(err));
                }
            }
        }
        Ok(response)
    }

    /// A request on an upload URL.
    pub async fn upload(self: &Arc<Self>, req: Request<RequestBody>, id: &str, caller: Caller) -> Response<Body> {
        let method = match req.headers().get("x-http-method-override").and_then(|v| v.to_str().ok()) {
            Some(m) if req.method() == Method::POST => Method::from_bytes(m.trim().as_bytes()).unwrap_or(Method::POST),
            _ => req.method().clone(),
        };
        if method == Method::OPTIONS {
            return self.options();
        }
        let result = match method {
            Method::HEAD => self.head(&req, id, caller).await,
            Method::PATCH => self.patch(req, id, caller).await,
            Method::DELETE => self.terminate(&req, id).await,
            _ => Err(tus_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "TUS_METHOD_NOT_ALLOWED",
                "Upload URLs take HEAD, PATCH, DELETE and OPTIONS.",
            )),
        };
        result.unwrap_or_else(|err| self.respond(err))
    }

    /// The upload `id`, if the request may touch it: the same token as its creation (compared as
    /// digests, in constant time), else it is not found.
    fn find(&self, headers: &HeaderMap, id: &str) -> Result<Arc<Live>, GatewayError> {
        check_version(headers)?;
        let not_found = || tus_error(StatusCode::NOT_FOUND, "TUS_UPLOAD_NOT_FOUND", "No such upload.");
        let live = self.sessions.lock().unwrap().get(id).cloned().ok_or_else(not_found)?;
        let presented = headers.get(header::AUTHORIZATION).map(|a| member_of(a.as_bytes())).unwrap_or_default();
        let owner = &live.token;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), owner.as_bytes())) {
            return Err(not_found());
        }
        Ok(live)
    }

    async fn head(
        self: &Arc<Self>,
        req: &Request<RequestBody>,
        id: &str,
        caller: Caller,
    ) -> Result<Response<Body>, GatewayError> {
        let live = self.find(req.headers(), id)?;
        let s = match live.session.try_lock() {
            Ok(s) => s.clone(),
            // A PATCH is running (perhaps stalled): what it has made durable so far, not a wait
            // for its end.
            Err(_) => {
                let running = live.patching.lock().unwrap().clone();
                match running {
                    Some(mut s) => {
                        s.offset = *live.offset.borrow();
                        s
                    }
                    None => live.session.lock().await.clone(),
                }
            }
        };
        if s.outcome.is_none() && s.expires <= unix_now() {
            return Err(tus_error(StatusCode::GONE, "TUS_UPLOAD_EXPIRED", "The upload expired."));
        }
        // Complete on disk but not committed (the process died during the finish): it finishes
        // now, as its client may never PATCH again.
        if s.outcome.is_none() && s.length == Some(s.offset) {
            if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
                self.start(&live, &s, auth, caller).await?;
            }
        }
        let mut r = Response::builder()
            .status(StatusCode::OK)
            .header("tus-resumable", VERSION)
            .header(header::CACHE_CONTROL, "no-store")
            .header("upload-offset", s.offset)
            .header("upload-expires", httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s.expires)))
            .body(body::empty())
            .expect("valid response");
        let h = r.headers_mut();
        match s.length {
            Some(l) => {
                h.insert("upload-length", HeaderValue::from(l));
            }
            None => {
                h.insert("upload-defer-length", HeaderValue::from_static("1"));
            }
        }
        if let Some(m) = s.metadata.as_deref().and_then(|m| HeaderValue::from_str(m).ok()) {
            h.insert("upload-metadata", m);
        }
        if let Some(Outcome::Failed { status, code, .. }) = &s.outcome {
            // The upload failed upstream: said on every later HEAD.
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Ok(v) = HeaderValue::from_str(code) {
                r.headers_mut().insert("x-chunkgate-error-code", v);
            }
        }
        stamp_outcome(r.headers_mut(), s.outcome.as_ref());
        Ok(r)
    }

    async fn patch(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        id: &str,
        caller: Caller,
    ) -> Result<Response<Body>, GatewayError> {
        let live = self.find(req.headers(), id)?;
        let h = req.headers();
        if !content_type_is_offset(h) {
            return Err(tus_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "TUS_CONTENT_TYPE",
                "PATCH needs Content-Type: application/offset+octet-stream.",
            ));
        }
        let offset = number(h, "upload-offset")?
            .ok_or_else(|| tus_error(StatusCode::BAD_REQUEST, "TUS_BAD_HEADER", "PATCH needs Upload-Offset."))?;
        let checksum = Checksum::read(h)?;
        let new_length = number(h, "upload-length")?;
        let auth = h.get(header::AUTHORIZATION).cloned();
        // One PATCH at a time: a second waits for the first (a client that reconnects while its
        // old request is still being read), then its offset is checked.
        let mut s = match tokio::time::timeout(Duration::from_secs(10), live.session.clone().lock_owned()).await {
            Ok(s) => s,
            Err(_) => {
                return Err(tus_error(StatusCode::LOCKED, "TUS_LOCKED", "Another PATCH of this upload is running."));
            }
        };
        let length_before = s.length;
        if *live.ended.borrow() {
            // Terminated while this PATCH waited for the one before it.
            return Err(terminated());
        }
        if let Some(Outcome::Failed { status, code, body: text }) = &s.outcome {
            // The upload failed upstream: that failure, as its last PATCH and every HEAD tell it
            // (it had been answered as an offset conflict, "already complete").
            return Ok(failed_answer(*status, code, text, s.offset));
        }
        if s.outcome.is_some() || s.length == Some(s.offset) {
            return Err(tus_error(StatusCode::CONFLICT, "TUS_OFFSET_MISMATCH", "The upload is already complete."));
        }
        if s.expires <= unix_now() {
            return Err(tus_error(StatusCode::GONE, "TUS_UPLOAD_EXPIRED", "The upload expired."));
        }
        if offset != s.offset {
            return Err(tus_error(
                StatusCode::CONFLICT,
                "TUS_OFFSET_MISMATCH",
                format!("Upload-Offset is {offset}; the upload's offset is {}.", s.offset),
            ));
        }
        if let Some(len) = new_length {
            match s.length {
                Some(known) if known != len => {
                    return Err(tus_error(StatusCode::BAD_REQUEST, "TUS_BAD_HEADER", "Upload-Length cannot change."));
                }
                Some(_) => {}
                None if len > self.max_size => {
                    return Err(tus_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "TUS_TOO_LARGE",
                        format!("Upload-Length exceeds Tus-Max-Size ({} bytes).", self.max_size),
                    ));
                }
                None if len == 0 => return Err(GatewayError::EmptyDocument),
                None if len < s.offset => {
                    return Err(tus_error(
                        StatusCode::BAD_REQUEST,
                        "TUS_BAD_HEADER",
                        "Upload-Length is below the bytes already received.",
                    ));
                }
                None => {
                    // Kept with the PATCH's bytes (recorded with its offset by `append`).
                    s.length = Some(len);
                }
            }
        }
        if s.outcome.is_none() && s.offset > 0 && live.running.lock().unwrap().is_none() {
            metrics::counter!(telemetry::TUS_RESUMES).increment(1);
        }
        if let Some(auth) = &auth {
            // Started with the length as it stood before this PATCH: a length the PATCH brings
            // (a deferred one) holds only once its bytes are appended. An upload started with it
            // and then refused (past that length: 413) was left driving a document of the wrong
            // length, which could never finish.
            let brought = std::mem::replace(&mut s.length, length_before);
            let started = self.start(&live, &s, auth, caller).await;
            s.length = brought;
            started?;
        }
        // The body is read, and what arrived recorded, in a task of its own: a request cancelled
        // with its stream (an HTTP/2 client resetting it, or dropping its connection) still keeps
        // the bytes it sent, as over HTTP/1.1, and no write of it can land after a later PATCH's.
        let appending = {
            let (this, live) = (self.clone(), live.clone());
            let (body, progressive) = (req.into_body(), new_length.is_none());
            tokio::spawn(async move {
                let patching = Patching::new(&live, &s);
                let appended = this.append(&live, &mut s, body, checksum, progressive).await;
                match &appended {
                    // Refused (past the length, a checksum): nothing was recorded, the length included.
                    Err(e)
                        if !matches!(
                            e,
                            GatewayError::ClientBodyError
                                | GatewayError::ClientBodyTimeout(_)
                                | GatewayError::ShuttingDown
                        ) =>
                    {
                        s.length = length_before
                    }
                    _ => {
                        if s.length.is_some() && live.length.borrow().is_none() {
                            live.length.send_replace(s.length);
                        }
                    }
                }
                drop(patching);
                (s, appended)
            })
        };
        let (s, appended) =
            appending.await.map_err(|e| GatewayError::Internal(format!("tus: the PATCH's task failed: {e}")))?;
        appended?;
        // Complete: the upload must be running to finish (one held back until now); unless the
        // process is stopping, when every byte is durable and it finishes after the restart (the
        // answer is 204; a last byte that arrived during the drain had got 503 SHUTTING_DOWN).
        let stopping = *self.stopping.borrow();
        if let (Some(auth), true, false) = (&auth, s.length == Some(s.offset), stopping) {
            self.start(&live, &s, auth, caller).await?;
        }
        // The upload's end is recorded under the lock: let go of it before waiting for that.
        let guard = s;
        let s = guard.clone();
        drop(guard);
        let mut r = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("tus-resumable", VERSION)
            .header("upload-offset", s.offset)
            .header("upload-expires", httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s.expires)))
            .body(body::empty())
            .expect("valid response");
        if let Some(err) = self.finished_headers(&live, &s, r.headers_mut()).await {
            return Ok(err);
        }
        Ok(r)
    }

    /// When the upload is complete: waits (bounded) for the upstream's outcome, and puts the
    /// upstream's ids on the answer, or returns the failure as the answer.
    async fn finished_headers(&self, live: &Live, s: &Session, headers: &mut HeaderMap) -> Option<Response<Body>> {
        if s.length != Some(s.offset) {
            return None;
        }
        let mut rx = live.outcome.subscribe();
        let mut stopping = self.stopping.subscribe();
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(self.finish_wait, rx.wait_for(Option::is_some)) => outcome.ok()?.ok()?.clone(),
            // Stopped for the shutdown: the bytes are all durable, and the upload finishes after
            // the restart (a HEAD then answers with the upstream's ids). It had waited out the
            // finish time (47 s) and the client got no answer at all.
            _ = stopping.wait_for(|s| *s) => return None,
        };
        match outcome {
            Some(Outcome::Failed { status, code, body: text }) => Some(failed_answer(status, &code, &text, s.offset)),
            other => {
                stamp_outcome(headers, other.as_ref());
                None
            }
        }
    }

    /// Appends a PATCH body to the spool at the session's offset: synced to disk, then the new
    /// offset recorded, then the upstream reader told. Bytes a client sent before it vanished are
    /// kept (it resumes from them); a checksum mismatch discards the whole chunk (460).
    async fn append(
        &self,
        live: &Live,
        s: &mut Session,
        mut incoming: RequestBody,
        checksum: Option<Checksum>,
        progressive: bool,
    ) -> Result<(), GatewayError> {
        // A long PATCH is made durable (and readable upstream) every so often, so that its parts
        // go up while it is still arriving; not one with a checksum, which must be whole first.
        const DURABLE_EVERY: u64 = 8 << 20;
        let io = |e: std::io::Error| GatewayError::Internal(format!("tus: the spool: {e}"));
        let mut file = store::SpoolWriter::open(self.store.spool(&s.id), s.offset).await.map_err(io)?;
        let start = s.offset;
        let limit = s.length.unwrap_or(self.max_size);
        let mut written = 0u64;
        let mut hasher = checksum.as_ref().map(Checksum::hasher);
        let idle = Duration::from_millis(self.uploads.config.client_idle_timeout_ms);
        let mut broken = false;
        let mut too_long = false;
        let progressive = progressive && checksum.is_none();
        let mut durable = start;
        // Made durable at least every half idle time while bytes arrive, however slowly: the
        // upload's reader sees the client's progress (a client slower than 8 MiB per idle time had
        // its upstream upload stopped for idleness while it was still sending).
        let mut synced_at = tokio::time::Instant::now();
        let mut stalled = false;
        // The drain's end (SIGTERM, then `server.drain_secs`): the PATCH stops there, keeping what
        // arrived (the client resumes from it after the restart), rather than holding the process
        // until its client has sent everything.
        let mut cancel = self.uploads.cancellation();
        let mut shutting = false;
        // Terminated (DELETE) while it runs: it stops at once and hears 404; nothing more of it
        // is kept (the spool goes with the upload).
        let mut ended = live.ended.subscribe();
        let mut opened = live.opened.subscribe();
        loop {
            // The upstream upload's id, once its create answers, recorded now (see `Live::opened`),
            // also while the client is quiet.
            let next = tokio::time::timeout(idle, incoming.frame());
            tokio::pin!(next);
            let next = loop {
                let id = opened.borrow_and_update().as_ref().filter(|id| s.upstream.as_ref() != Some(*id)).cloned();
                if let Some(id) = id.filter(|_| s.outcome.is_none()) {
                    s.upstream = Some(id);
                    self.store.put(s).await.map_err(GatewayError::Internal)?;
                }
                tokio::select! {
                    next = &mut next => break next,
                    _ = opened.changed() => {}
                    Ok(_) = cancel.wait_for(|c| *c), if !shutting => {
                        (shutting, broken) = (true, true);
                        break Ok(None);
                    }
                    Ok(_) = ended.wait_for(|e| *e) => {
                        return Err(terminated());
                    }
                }
            };
            let frame = match next {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    broken = true;
                    break;
                }
                Err(_) => {
                    (broken, stalled) = (true, true);
                    break;
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            if start + written + data.len() as u64 > limit {
                too_long = true;
                break;
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&data);
            }
            written += data.len() as u64;
            file.write(data).await.map_err(io)?;
            let due = start + written - durable >= DURABLE_EVERY || synced_at.elapsed() >= idle / 2;
            if progressive && start + written > durable && due {
                synced_at = tokio::time::Instant::now();
                file.sync().await.map_err(io)?;
                durable = start + written;
                s.offset = durable;
                self.store.put(s).await.map_err(GatewayError::Internal)?;
                publish(live, durable);
            }
        }
        let refused = if shutting && checksum.is_some() {
            // A chunk cut short cannot be checked: nothing of it is kept.
            Some(GatewayError::ShuttingDown)
        } else if too_long {
            Some(tus_error(StatusCode::PAYLOAD_TOO_LARGE, "TUS_TOO_LARGE", "The data goes past Upload-Length."))
        } else if let (Some(expected), Some(h)) = (checksum, hasher) {
            if broken {
                // A chunk that did not arrive whole cannot be checked: nothing of it is kept.
                Some(tus_error(StatusCode::BAD_REQUEST, "CLIENT_BODY_ERROR", "The PATCH body broke off."))
            } else if h.finish() != expected.digest {
                metrics::counter!(telemetry::TUS_CHECKSUM_MISMATCH).increment(1);
                Some(tus_error(
                    StatusCode::from_u16(460).expect("valid"),
                    "TUS_CHECKSUM_MISMATCH",
                    "Upload-Checksum does not match the PATCH body; the chunk was discarded.",
                ))
            } else {
                None
            }
        } else {
            None
        };
        if let Some(why) = refused {
            // Back to the last durable offset: nothing of this chunk is kept.
            let _ = file.truncate(durable).await;
            return Err(why);
        }
        file.sync().await.map_err(io)?;
        drop(file);
        s.offset = start + written;
        self.store.put(s).await.map_err(GatewayError::Internal)?;
        publish(live, s.offset);
        metrics::counter!(telemetry::TUS_BYTES).increment(written);
        if shutting {
            return Err(GatewayError::ShuttingDown);
        }
        if stalled {
            return Err(GatewayError::ClientBodyTimeout(idle));
        }
        if broken {
            return Err(GatewayError::ClientBodyError);
        }
        Ok(())
    }

    /// `DELETE`: the upload ends at once: its upstream upload is deleted, its spool removed.
    async fn terminate(&self, req: &Request<RequestBody>, id: &str) -> Result<Response<Body>, GatewayError> {
        let live = self.find(req.headers(), id)?;
        self.end(id, &live, req.headers().get(header::AUTHORIZATION)).await;
        Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("tus-resumable", VERSION)
            .body(body::empty())
            .expect("valid response"))
    }

    /// Stops an upload and forgets it (terminated or reaped). With the client's token (`auth`), an
    /// upstream upload a previous run left open is deleted too; without one it expires upstream.
    async fn end(&self, id: &str, live: &Arc<Live>, auth: Option<&HeaderValue>) {
        if live.ended.send_replace(true) {
            return;
        }
        self.stop(live);
        // A final PATCH waiting for the outcome hears that the upload is gone, and so does one
        // still sending (it stops: see `append`, and lets go of the session); whoever reads the
        // spool learns it is gone (an upload still waiting for part 0 too).
        let gone = terminated();
        let body = String::from_utf8_lossy(&self.dialect.error(gone.code(), &gone.to_string())).into_owned();
        let finished = live.outcome.borrow().clone();
        live.outcome.send_replace(Some(Outcome::Failed { status: 404, code: gone.code().to_owned(), body }));
        live.offset.send_replace(u64::MAX);
        let s = live.session.lock().await;
        if s.outcome.is_none() {
            self.reserved.fetch_sub(s.reserved, Ordering::AcqRel);
        }
        // The upstream upload goes too: one still open, and one committed for this upload (the
        // client may not have kept its id; it held the member's quota until it expired).
        let (stale, committed) = match finished {
            Some(Outcome::Committed { upload_id, .. }) => (Some(upload_id), true),
            Some(Outcome::Failed { .. }) => (None, false),
            None => (s.upstream.clone(), false),
        };
        let route = auth.map(|auth| UploadRoute {
            prefix: s.prefix.clone(),
            version: s.version.clone(),
            account: s.account.clone(),
            auth: auth.clone(),
            request_id: None,
        });
        drop(s);
        let running = live.task.lock().unwrap().take();
        let left = match running {
            // An upload still running deletes its upstream upload on its way out.
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task).await.is_ok() && committed,
            None => true,
        };
        if let (true, Some(stale), Some(route)) = (left, stale, route) {
            self.uploads.delete_left_open(self.upstream.clone(), route, &stale).await;
        }
        self.sessions.lock().unwrap().remove(id);
        self.store.remove(id).await;
    }

    /// Starts an upload again (boxed: it runs in the task of the upload it replaces).
    fn restart(
        self: Arc<Self>,
        live: Arc<Live>,
        s: Session,
        auth: HeaderValue,
        caller: Caller,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(err) = self.start(&live, &s, &auth, caller).await {
                self.fail(&s.id, &live, &err).await;
            }
        })
    }

    /// Records a failure that has no upstream answer (a refused admission when starting again).
    async fn fail(&self, id: &str, live: &Live, err: &GatewayError) {
        let response = err.response(self.dialect);
        let status = response.status().as_u16();
        let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let outcome =
            Outcome::Failed { status, code: err.code().to_owned(), body: String::from_utf8_lossy(&text).into_owned() };
        let mut s = live.session.lock().await;
        live.opened.send_replace(None);
        s.upstream = None;
        s.outcome = Some(outcome.clone());
        self.reserved.fetch_sub(s.reserved, Ordering::AcqRel);
        let _ = self.store.put(&s).await;
        drop(s);
        self.store.drop_spool(id).await;
        live.outcome.send_replace(Some(outcome));
    }

    fn stop(&self, live: &Live) {
        live.running.lock().unwrap().take();
    }

    /// On shutdown: every running upstream upload is stopped (and deleted upstream on its way
    /// out), bounded by `within`; the uploads stay on disk and go on after the restart.
    pub async fn shutdown(&self, within: Duration) {
        self.stopping.send_replace(true);
        let all: Vec<Arc<Live>> = self.sessions.lock().unwrap().values().cloned().collect();
        let mut tasks = Vec::new();
        for live in all {
            self.stop(&live);
            // The spool's reader stops too (an upload still waiting for its part 0).
            live.offset.send_replace(u64::MAX);
            if let Some(task) = live.task.lock().unwrap().take() {
                tasks.push(task);
            }
        }
        let count = tasks.len();
        let _ = tokio::time::timeout(within, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        if count > 0 {
            tracing::info!(uploads = count, "tus: running upstream uploads stopped for the shutdown");
        }
    }

    /// Reaps expired uploads: from disk, and upstream (a running upload is stopped and deleted).
    pub async fn reap(&self) {
        let now = unix_now();
        let all: Vec<(String, Arc<Live>)> =
            self.sessions.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (id, live) in all {
            let expired = live.session.lock().await.expires <= now;
            if expired {
                tracing::info!(tus_id = %id, "tus: upload expired; reaped");
                metrics::counter!(telemetry::TUS_REAPED).increment(1);
                self.end(&id, &live, None).await;
            }
        }
        self.record_gauges();
    }

    /// Starts the upstream upload of `live` unless it runs or has ended: admitted now (the
    /// caller hears a refusal), then driven in the background from the spool.
    async fn start(
        self: &Arc<Self>,
        live: &Arc<Live>,
        s: &Session,
        auth: &HeaderValue,
        caller: Caller,
    ) -> Result<(), GatewayError> {
        *live.last.lock().unwrap() = Some((auth.clone(), caller));
        if *live.ended.borrow() {
            return Err(tus_error(StatusCode::NOT_FOUND, "TUS_UPLOAD_NOT_FOUND", "No such upload."));
        }
        if s.outcome.is_some() || live.running.lock().unwrap().is_some() {
            return Ok(());
        }
        if live.whole_first.load(Ordering::Relaxed) && s.length != Some(s.offset) {
            return Ok(());
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, auth.clone());
        if let Some(len) = s.length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let to = Destination { prefix: &s.prefix, version: &s.version, account: &s.account };
        let admitted = self.uploads.admit(self.upstream.clone(), &headers, to, caller).await?;
        let (present, client) = presence::pair();
        {
            let mut running = live.running.lock().unwrap();
            if running.is_some() {
                return Ok(());
            }
            *running = Some(present);
        }
        // An upstream upload a dead process was driving: reconciled with a GET of its parts and
        // continued if the upstream still holds it whole, else deleted and created again.
        let resume = s.upstream.clone();
        let (this, live, live2) = (self.clone(), live.clone(), live.clone());
        let id = s.id.clone();
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<String>();
        {
            // The upstream id is kept as soon as create answers (see `Session::upstream`).
            let (this, live) = (self.clone(), live.clone());
            tokio::spawn(async move {
                if let Ok(upstream_id) = opened_rx.await {
                    live.opened.send_replace(Some(upstream_id.clone()));
                    let mut s = live.session.lock().await;
                    if s.outcome.is_none() && s.upstream.as_deref() != Some(upstream_id.as_str()) {
                        s.upstream = Some(upstream_id);
                        let _ = this.store.put(&s).await;
                    }
                }
            });
        }
        let handle = tokio::spawn(async move {
            let body = SpoolBody::open(this.store.spool(&id), &live).await;
            // A client that sends nothing for the upload's idle time lets its slot go (its upstream
            // upload is deleted, and created again from the spool once every byte is there).
            let idle = Duration::from_millis(this.uploads.config.client_idle_timeout_ms);
            let span = tracing::info_span!("tus", tus_id = %id, upload_id = tracing::field::Empty, bytes = tracing::field::Empty);
            let answer = match body {
                Ok(body) => {
                    let hooks = streamed::Hooks { opened: Some(opened_tx), resume };
                    streamed::drive(admitted, &this.uploads, body, client, idle, span, hooks).await
                }
                Err(e) => GatewayError::Internal(format!("tus: the spool: {e}")).response(this.dialect),
            };
            this.finished(&id, &live, answer).await;
        });
        *live2.task.lock().unwrap() = Some(handle);
        Ok(())
    }

    /// What the upstream upload ended in.
    async fn finished(self: &Arc<Self>, id: &str, live: &Arc<Live>, answer: Response<Body>) {
        let stopped = live.running.lock().unwrap().take().is_none();
        if *live.ended.borrow() {
            return;
        }
        let (parts, incoming) = answer.into_parts();
        if !parts.status.is_success() {
            // The upload the driver made was deleted on its way out: no longer on record. (A
            // committed one stays on record until its outcome is written with it, below: a
            // process killed in between finds it upstream rather than making another.)
            let mut s = live.session.lock().await;
            live.opened.send_replace(None);
            if s.upstream.take().is_some() {
                let _ = self.store.put(&s).await;
            }
        }
        let text = incoming.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let code = parts.headers.get("x-chunkgate-upload-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let outcome = if parts.status.is_success() {
            let uri = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    let r = if v.get("chunkedUploadUri").is_some() { v } else { v.get("data")?.clone() };
                    Some(r.get("chunkedUploadUri")?.as_str()?.to_owned())
                })
                .unwrap_or_default();
            let checksum = parts.headers.get("x-chunkgate-checksum").and_then(|v| v.to_str().ok()).unwrap_or_default();
            Outcome::Committed { upload_id: code.unwrap_or_default(), uri, checksum: checksum.to_owned() }
        } else {
            let error = error_code(&text).unwrap_or_else(|| "UPSTREAM_REFUSED".to_owned());
            // Stopped here (terminated, reaped), or by the drain (SIGTERM): not a failure of the
            // upload; it goes on after a restart, from the spool.
            if stopped || error == "SHUTTING_DOWN" {
                tracing::info!(tus_id = %id, code = %error, "tus: upstream upload stopped");
                return;
            }
            // The upstream upload ran out of time while the client was slow (the gateway's own
            // deadline, or the upstream's: expired, or gone): it is created again from the spool
            // once every byte is there, so a slow client is not bound by the upstream's 20
            // minutes; at once if they are.
            if ["CLIENT_BODY_TIMEOUT", "CHUNKED_UPLOAD_EXPIRED", "CHUNKED_UPLOAD_NOT_FOUND"].contains(&error.as_str()) {
                tracing::info!(tus_id = %id, code = %error, "tus: the upstream upload expired before the client finished; created again from the spool");
                metrics::counter!(telemetry::TUS_RECREATED).increment(1);
                live.whole_first.store(true, Ordering::Relaxed);
                let s = live.session.lock().await.clone();
                let last = live.last.lock().unwrap().clone();
                if let (true, Some((auth, caller))) = (s.length == Some(s.offset), last) {
                    tokio::spawn(self.clone().restart(live.clone(), s, auth, caller));
                }
                return;
            }
            Outcome::Failed {
                status: parts.status.as_u16(),
                code: error,
                body: String::from_utf8_lossy(&text).into_owned(),
            }
        };
        let mut s = live.session.lock().await;
        s.outcome = Some(outcome.clone());
        self.reserved.fetch_sub(s.reserved, Ordering::AcqRel);
        if let Err(e) = self.store.put(&s).await {
            tracing::warn!(tus_id = %id, error = %e, "tus: the outcome could not be written");
        }
        drop(s);
        self.store.drop_spool(id).await;
        live.outcome.send_replace(Some(outcome));
    }
}

/// The answer about an upload that was terminated (DELETE) or reaped.
fn terminated() -> GatewayError {
    tus_error(StatusCode::NOT_FOUND, "TUS_UPLOAD_NOT_FOUND", "The upload was terminated.")
}

/// Tells the spool's reader that bytes up to `offset` are durable, unless the upload has ended
/// (terminated, or stopped for the shutdown): the end mark stays, and the reader stops.
fn publish(live: &Live, offset: u64) {
    live.offset.send_if_modified(|o| {
        let open = *o != u64::MAX;
        if open {
            *o = offset;
        }
        open
    });
}

impl Live {
    fn new(s: Session) -> Self {
        Self {
            token: s.token.clone(),
            whole_first: std::sync::atomic::AtomicBool::new(false),
            ended: watch::Sender::new(false),
            task: Mutex::new(None),
            offset: watch::Sender::new(s.offset),
            length: watch::Sender::new(s.length),
            outcome: watch::Sender::new(s.outcome.clone()),
            running: Mutex::new(None),
            last: Mutex::new(None),
            opened: watch::Sender::new(None),
            patching: Mutex::new(None),
            session: Arc::new(tokio::sync::Mutex::new(s)),
        }
    }
}

/// The answer of a PATCH to an upload that failed upstream: the failure's status and body, and
/// its code in `X-Chunkgate-Error-Code` as a HEAD gives it.
fn failed_answer(status: u16, code: &str, text: &str, offset: u64) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
        .header("tus-resumable", VERSION)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("upload-offset", offset)
        .body(body::full(text.to_owned()))
        .expect("valid response");
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("x-chunkgate-error-code", v);
    }
    r
}

fn stamp_outcome(headers: &mut HeaderMap, outcome: Option<&Outcome>) {
    if let Some(Outcome::Committed { upload_id, uri, checksum }) = outcome {
        if let Ok(v) = HeaderValue::from_str(upload_id) {
            headers.insert("x-chunkgate-upload-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(uri) {
            headers.insert("x-chunkgate-upload-uri", v);
        }
        // Not known for sessions committed by an older version.
        if let (false, Ok(v)) = (checksum.is_empty(), HeaderValue::from_str(checksum)) {
            headers.insert("x-chunkgate-checksum", v);
        }
    }
}

/// The version, and the headers the protocol reads once: a second line of one (`Upload-Metadata`
/// twice, two `Content-Type`s, two method overrides) is refused rather than all but the first
/// ignored. (Number headers and `Upload-Checksum` are held to one where they are read.)
fn check_version(headers: &HeaderMap) -> Result<(), GatewayError> {
    for name in ["tus-resumable", "content-type", "upload-metadata", "upload-defer-length", "x-http-method-override"] {
        single(headers, name)?;
    }
    match headers.get("tus-resumable") {
        Some(v) if v.as_bytes() == VERSION.as_bytes() => Ok(()),
        Some(_) => Err(tus_error(
            StatusCode::PRECONDITION_FAILED,
            "TUS_VERSION_UNSUPPORTED",
            "Only tus 1.0.0 is supported (Tus-Version).",
        )),
        None => Err(tus_error(
            StatusCode::PRECONDITION_FAILED,
            "TUS_VERSION_UNSUPPORTED",
            "The request has no Tus-Resumable header.",
        )),
    }
}

fn content_type_is_offset(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/offset+octet-stream")
    })
}

fn is_end(req: &Request<RequestBody>) -> bool {
    req.body().is_end_stream() || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0")
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent), keys
/// unique, kept as sent.
fn parse_metadata(v: &HeaderValue) -> Result<String, GatewayError> {
    let bad = || {
        tus_error(
            StatusCode::BAD_REQUEST,
            "TUS_BAD_HEADER",
            "Upload-Metadata is not a list of `key base64value` pairs.",
        )
    };
    let text = v.to_str().map_err(|_| bad())?;
    let mut keys = Vec::new();
    for pair in text.split(',') {
        let mut it = pair.trim().splitn(2, ' ');
        let key = it.next().filter(|k| !k.is_empty() && !k.contains(' ')).ok_or_else(bad)?;
        if let Some(value) = it.next() {
            base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|_| bad())?;
        }
        if keys.contains(&key) {
            return Err(bad());
        }
        keys.push(key);
    }
    Ok(text.to_owned())
}

/// The error code of an error body, in either dialect.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("errorCode").or_else(|| v.get("error")?.get("code"))?;
    Some(code.as_str()?.to_owned())
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
struct Checksum {
    algorithm: Algorithm,
    digest: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Algorithm {
    Sha1,
    Sha256,
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Checksum {
    fn read(headers: &HeaderMap) -> Result<Option<Self>, GatewayError> {
        let bad = |m: &str| tus_error(StatusCode::BAD_REQUEST, "TUS_BAD_CHECKSUM", m.to_owned());
        let Some(v) = once(headers, "upload-checksum").map_err(|()| bad("Upload-Checksum appears more than once."))?
        else {
            return Ok(None);
        };
        let text = v.to_str().map_err(|_| bad("Upload-Checksum is not text."))?;
        let (name, b64) =
            text.trim().split_once(' ').ok_or_else(|| bad("Upload-Checksum needs an algorithm and a digest."))?;
        let algorithm = match name.to_ascii_lowercase().as_str() {
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            _ => {
                return Err(bad(
                    "Upload-Checksum: the algorithm is not supported (Tus-Checksum-Algorithm: sha1,sha256).",
                ));
            }
        };
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad("Upload-Checksum: the digest is not base64."))?;
        Ok(Some(Self { algorithm, digest }))
    }

    fn hasher(&self) -> Hasher {
        use sha2::Digest;
        match self.algorithm {
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// The upload's body as the pipeline reads it: the spool, from its start, as far as it is
/// durable, waiting for more until the length is known and reached.
struct SpoolBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    left: Option<u64>,
}

impl SpoolBody {
    async fn open(path: std::path::PathBuf, live: &Live) -> std::io::Result<Self> {
        let file = tokio::fs::File::open(path).await?.into_std().await;
        let (tx, rx) = mpsc::channel(4);
        let (offset, length) = (live.offset.subscribe(), live.length.subscribe());
        let left = *length.borrow();
        tokio::spawn(read_spool(file, offset, length, tx));
        Ok(Self { rx, left })
    }
}

/// Feeds the spool's durable bytes into `tx`, in order, until the length is reached. Each frame is
/// read on the blocking pool straight into a buffer of its own (no zero-fill, no copy through an
/// intermediate buffer), which the parts then hold as they are (see `pipeline::part`).
async fn read_spool(
    file: std::fs::File,
    mut offset: watch::Receiver<u64>,
    mut length: watch::Receiver<Option<u64>>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
) {
    const FRAME: u64 = 1 << 20;
    let file = Arc::new(file);
    let mut pos = 0u64;
    loop {
        let durable = *offset.borrow_and_update();
        let len = *length.borrow_and_update();
        if durable == u64::MAX {
            let _ = tx.send(Err("the upload was ended".into())).await;
            return;
        }
        if len.is_some_and(|l| pos >= l) {
            return;
        }
        if pos < durable {
            let want = (durable - pos).min(FRAME);
            let from = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(want as usize);
                std::io::Read::read_to_end(&mut std::io::Read::take(&*from, want), &mut buf)?;
                if buf.len() as u64 != want {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the spool is shorter than its offset",
                    ));
                }
                Ok(buf)
            });
            let buf = match read.await.map_err(BoxError::from).and_then(|r| r.map_err(BoxError::from)) {
                Ok(buf) => buf,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            pos += want;
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            changed = offset.changed() => if changed.is_err() { return },
            changed = length.changed() => if changed.is_err() { return },
        }
    }
}

impl HttpBody for SpoolBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|item| {
            item.map(|r| {
                r.map(|data| {
                    if let Some(left) = self.left.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    Frame::data(data)
                })
            })
        })
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
