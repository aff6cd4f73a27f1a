//! Passthrough: every request that is not a streamed upload goes to `upstream.base_url` + its path
//! and query, streamed both ways, with hop-by-hop headers removed and the answer returned as is.
//! A client body that breaks off or stops is the client's error (400, 408), not the upstream's.
//! What the request does to the member's quota is told to the ledger (see `uses`).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::{sync::Notify, time::Sleep};

use crate::{body::RequestBody, pipeline::presence};

use super::uses::RemoteUrls;
use crate::{
    body::{Body, BoxError},
    error::GatewayError,
    policy::{
        pacing::{Draw, Pacing},
        quota::{Holder, LeaseId, Quota},
    },
    upstream::{Upstream, client::strip_hop_by_hop},
};

/// What a passed-through request may end in the member's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends<'a> {
    Nothing,
    /// A DELETE of this upload: once answered 2xx, it no longer counts. (Not on 404: another
    /// member's delete is answered 404 too, and the owner's upload still counts.)
    Upload(&'a str),
    /// A POST or PUT under the account's envelopes: the uploads its body names by `remoteUrl`
    /// are used once it is answered 2xx.
    Envelope,
    /// A create sent as JSON (as the SDKs do), by this member: it waits for room in the member's
    /// quota like a streamed upload, and the upload it makes counts until it is used, deleted or
    /// expires.
    Create(&'a str),
    /// A part (`PUT .../chunked_uploads/{id}/{seq}`, as the SDKs send them): once answered 2xx,
    /// the upload holds its bytes too.
    Part(&'a str),
}

/// [`Ends`] with its ids owned, for a request run in a task of its own.
pub enum OwnedEnds {
    Nothing,
    Upload(String),
    Envelope,
    Create(String),
    Part(String),
}

impl OwnedEnds {
    pub fn of(ends: Ends<'_>) -> Self {
        match ends {
            Ends::Nothing => Self::Nothing,
            Ends::Upload(id) => Self::Upload(id.to_owned()),
            Ends::Envelope => Self::Envelope,
            Ends::Create(member) => Self::Create(member.to_owned()),
            Ends::Part(id) => Self::Part(id.to_owned()),
        }
    }

    pub fn ends(&self) -> Ends<'_> {
        match self {
            Self::Nothing => Ends::Nothing,
            Self::Upload(id) => Ends::Upload(id),
            Self::Envelope => Ends::Envelope,
            Self::Create(member) => Ends::Create(member),
            Self::Part(id) => Ends::Part(id),
        }
    }
}

/// The policies a passthrough request runs under.
#[derive(Clone, Copy)]
pub struct Policies<'a> {
    pub pacing: &'a dyn Pacing,
    pub quota: &'a dyn Quota,
    /// How long a create waits for room in the member's quota.
    pub quota_wait: Duration,
    /// The largest create answer read (to learn the upload's id and expiry).
    pub max_answer: usize,
    /// How long the upstream has to answer once the body is sent (`upstream.call_timeout_ms`): for
    /// a create, its whole answer; and how long it may leave the body untaken.
    pub answer_timeout: Duration,
    /// What a create of unknown length holds until its body has ended (`upload.max_document_bytes`).
    pub unknown_bytes: u64,
}

/// Room in a member's quota taken for a create, given back unless the create made an upload.
struct Leased<'a> {
    quota: &'a dyn Quota,
    id: Option<LeaseId>,
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.quota.release(&id);
        }
    }
}

/// Forwards `req`, paced under `account` (the one its path names), and returns the upstream's
/// answer, or the gateway's error when there is none.
///
/// With `client` (run in a task of its own: see `Gateway::passthrough`), a client that leaves
/// ends the request only until its body has been passed on whole: a request still waiting for
/// room or pacing, or whose body broke off, is not sent; one the upstream has whole is seen
/// through to its answer, so that what it did to the member's quota is recorded.
pub async fn forward(
    upstream: &Upstream,
    policies: Policies<'_>,
    req: Request<RequestBody>,
    (account, ends): (&str, Ends<'_>),
    idle: Duration,
    mut client: Option<presence::Client>,
) -> Result<Response<Body>, GatewayError> {
    let pacing = policies.pacing;
    let mut leased = None;
    // The body's declared length (for a create or a part, of the JSON that carries the part in
    // base64).
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let declared = length.filter(|_| matches!(ends, Ends::Create(_) | Ends::Part(_)));
    if let Ends::Create(member) = ends {
        // Unknown (a chunked body): the most a document may be, until the body's end tells.
        let bytes = declared.map_or(policies.unknown_bytes, part_bytes);
        let holder = Holder { account, member };
        let lease = policies.quota.lease(holder, bytes, policies.quota_wait);
        let Some(id) = unless_gone(&mut client, lease).await? else {
            return Err(GatewayError::QuotaBusy { retry_after: policies.quota_wait.max(Duration::from_secs(1)) });
        };
        leased = Some(Leased { quota: policies.quota, id: Some(id) });
    }
    let (mut parts, incoming) = req.into_parts();
    let request_id = parts.headers.get(crate::upstream::client::REQUEST_ID).cloned();
    // Whose uploads a delete or an envelope may end: the caller's own (a token's SHA-256; no
    // token is the digest of nothing, which names no member).
    let caller = matches!(ends, Ends::Upload(_) | Ends::Envelope | Ends::Part(_)).then(|| {
        let token = parts.headers.get(header::AUTHORIZATION).map_or(&[][..], |a| a.as_bytes());
        crate::policy::quota::member_of(token)
    });
    parts.uri = upstream.forward_uri(&parts.uri);
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The client sets Host from the URI.
    parts.headers.remove(header::HOST);
    // Most passthrough calls (GETs) carry no body: they need no watching.
    let watch = (!incoming.is_end_stream()).then(|| Arc::new(Watch::default()));
    let body = match &watch {
        None => incoming.map_err(Into::into).boxed_unsync(),
        Some(w) => {
            let urls =
                (ends == Ends::Envelope).then(|| RemoteUrls::for_content_type(parts.headers.get(header::CONTENT_TYPE)));
            ClientBody::new(incoming, idle, w.clone(), urls, length).boxed_unsync()
        }
    };
    // The call timeout starts once the body has been passed on (see `Upstream::send`), or once the
    // upstream has taken none of it for that long without waiting for the client (a client that
    // is slow is the idle timer's): an upstream that stops reading mid-body is timed out like one
    // that does not answer (it had waited forever: the client's idle timer runs only while the
    // upstream asks for more).
    let stall = policies.answer_timeout;
    let sent = async {
        if let Some(w) = &watch {
            loop {
                let before = w.sent.load(std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    () = w.ended() => return,
                    () = tokio::time::sleep(stall) => {}
                }
                let waiting = w.waiting_on_client.load(std::sync::atomic::Ordering::Relaxed);
                if w.sent.load(std::sync::atomic::Ordering::Relaxed) == before && !waiting {
                    return;
                }
            }
        }
    };
    unless_gone(&mut client, pacing.acquire(account, Draw::Free, pacing.default_deadline()))
        .await?
        .map_err(|wait| GatewayError::RateLimited { retry_after: wait })?;
    // A bodiless request of an idempotent method can be sent again if its connection broke (most
    // often a pooled connection the upstream had closed as idle just as it was reused).
    let again = (watch.is_none() && parts.method.is_idempotent()).then(|| {
        let mut copy = Request::new(crate::body::empty());
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        copy
    });
    let idempotent = parts.method.is_idempotent();
    let call = upstream.send(Request::from_parts(parts, body), sent);
    let mut answer = match client {
        None => call.await,
        Some(mut client) => {
            tokio::pin!(call);
            // Once the client has left, the call goes on only if the body had been passed on whole.
            let left_short = async {
                client.gone().await;
                if let Some(w) = &watch {
                    w.ended().await;
                    if w.sent_if_whole().is_none() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                answer = &mut call => answer,
                () = left_short => return Err(GatewayError::ClientGone),
            }
        }
    };
    if let (Err(crate::upstream::CallError::Broken(why)), Some(copy)) = (&answer, again) {
        tracing::info!(reason = %why, "passthrough connection broke before an answer; sending the idempotent request once more");
        answer = upstream.send(copy, std::future::ready(())).await;
    }
    let response = match answer {
        Ok(response) => response,
        // The client's body failed first: that is the cause, whatever the upstream call saw.
        Err(err) => {
            return Err(watch.and_then(|w| w.fault()).unwrap_or_else(|| match err {
                // Sent whole, not safe to send again: the client is told it may have been applied.
                crate::upstream::CallError::Broken(why) if !idempotent => GatewayError::UpstreamBrokeAfterSending(why),
                err => crate::policy::retry::failed(&err),
            }));
        }
    };
    let (mut parts, incoming) = response.into_parts();
    // The body is streamed, not read: throttling is seen by its status and headers.
    pacing.observe(account, parts.status, &parts.headers, None);
    reframe(&mut parts)?;
    crate::telemetry::passthrough(parts.status);
    let ended = match ends {
        Ends::Upload(id) if parts.status.is_success() => vec![id.to_owned()],
        Ends::Envelope if parts.status.is_success() => watch.as_ref().map(|w| w.used()).unwrap_or_default(),
        _ => Vec::new(),
    };
    if let (false, Some(caller)) = (ended.is_empty(), &caller) {
        tracing::info!(uploads = ended.len(), "uploads used or deleted through the passthrough no longer count");
        policies.quota.forget(caller, &ended).await;
    }
    // A part taken: its bytes.
    if let (Ends::Part(id), true, Some(caller)) = (ends, parts.status.is_success(), &caller) {
        let sent = declared.or_else(|| watch.as_ref().and_then(|w| w.sent_if_whole()));
        if let Some(sent) = sent {
            policies.quota.grow(caller, id, part_bytes(sent)).await;
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    if let Some(mut leased) = leased.filter(|_| parts.status.is_success()) {
        // The answer is read (it is small) to learn the upload's id and expiry.
        let limited = http_body_util::Limited::new(incoming, policies.max_answer);
        let answer = tokio::time::timeout(policies.answer_timeout, limited.collect())
            .await
            .map_err(|_| GatewayError::UpstreamTimeout(policies.answer_timeout))?
            .map_err(|_| GatewayError::UpstreamBadResponse("the create's answer could not be read".into()))?;
        let answer = answer.to_bytes();
        if let (Some(id), Some(lease)) = (created_upload(&answer), leased.id.take()) {
            policies.quota.created(&lease, &id.0, id.1).await;
            // A create of unknown length holds what its body carried, once known.
            if let Some(sent) = watch.as_ref().filter(|_| declared.is_none()).and_then(|w| w.sent_if_whole()) {
                policies.quota.resize(&id.0, part_bytes(sent)).await;
            }
        }
        return Ok(Response::from_parts(parts, crate::body::full(answer)));
    }
    // A body that breaks off reaches the client as one (a connection closed early, a stream
    // reset), never as a complete answer; the log says so, with the request's id.
    let body = incoming.map_err(move |err| {
        tracing::warn!(request_id = ?request_id, error = %err, "the upstream's passthrough answer broke off");
        BoxError::from(err)
    });
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// `work`, or `Err(ClientGone)` if the client leaves first (without a client to watch: `work`).
async fn unless_gone<T>(
    client: &mut Option<presence::Client>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, GatewayError> {
    match client {
        None => Ok(work.await),
        Some(client) => tokio::select! {
            done = work => Ok(done),
            () = client.gone() => Err(GatewayError::ClientGone),
        },
    }
}

/// Makes the upstream's answer one the gateway can pass on as it stands: its framing headers
/// must describe the body the client gets. hyper has already taken the body apart by the
/// upstream's framing (a chunked body decoded, a length checked), so:
/// - `Transfer-Encoding` overrides `Content-Length` (RFC 9112 §6.3), and the length received is
///   dropped (a proxy must not pass it on: it would describe another body than the one sent, and
///   a client would take a cut-off body for a whole one); the gateway then frames the body itself;
/// - a transfer coding besides `chunked` (`gzip, chunked`) is not one the gateway decodes, and
///   passed on unlabelled it would corrupt the body: the answer is refused;
/// - an interim status (`101 Switching Protocols`) is no final answer to a request that asked for
///   no upgrade (the gateway forwards none);
/// - the answer goes out in the client's protocol, not the upstream's (an `HTTP/1.0` status line).
fn reframe(parts: &mut http::response::Parts) -> Result<(), GatewayError> {
    if parts.status.is_informational() {
        return Err(GatewayError::UpstreamBadResponse(format!("a final answer of {}", parts.status)));
    }
    parts.version = http::Version::HTTP_11;
    match crate::body::chunked_only(&parts.headers) {
        Ok(false) => {}
        Ok(true) => {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Err(codings) => {
            return Err(GatewayError::UpstreamBadResponse(format!(
                "transfer codings the gateway does not decode: {codings}"
            )));
        }
    }
    Ok(())
}

/// A part's bytes from the length of the JSON that carries them in base64: about three quarters.
fn part_bytes(json_len: u64) -> u64 {
    (json_len / 4 * 3).max(1)
}

/// The id and expiry (Unix seconds) of the upload a create's answer describes, in either dialect.
fn created_upload(answer: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let resource = if v.get("chunkedUploadId").is_some() { &v } else { v.get("data")? };
    let id = resource.get("chunkedUploadId")?.as_str()?.to_owned();
    let expires = resource
        .get("expirationDateTime")
        .and_then(|e| humantime::parse_rfc3339_weak(e.as_str()?).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| crate::policy::quota::unix_now() + 20 * 60, |d| d.as_secs());
    Some((id, expires))
}

/// What became of a forwarded client body.
#[derive(Default)]
struct Watch {
    /// Set once: the body's end, or the client's fault.
    outcome: Mutex<Option<Option<GatewayError>>>,
    notify: Notify,
    /// The uploads the body names by `remoteUrl`, so far.
    used: Mutex<Vec<String>>,
    /// Bytes of the body passed on so far.
    sent: std::sync::atomic::AtomicU64,
    /// The upstream asked for more and the client had none yet.
    waiting_on_client: std::sync::atomic::AtomicBool,
}

impl Watch {
    fn used(&self) -> Vec<String> {
        self.used.lock().unwrap().clone()
    }

    fn end(&self, fault: Option<GatewayError>) {
        let mut outcome = self.outcome.lock().unwrap();
        if outcome.is_none() {
            *outcome = Some(fault);
            self.notify.notify_waiters();
        }
    }

    /// The body's size, once it has ended whole.
    fn sent_if_whole(&self) -> Option<u64> {
        matches!(*self.outcome.lock().unwrap(), Some(None))
            .then(|| self.sent.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn fault(&self) -> Option<GatewayError> {
        self.outcome.lock().unwrap().clone().flatten()
    }

    /// Resolves once the body has ended (or failed).
    async fn ended(&self) {
        loop {
            let notified = self.notify.notified();
            if self.outcome.lock().unwrap().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// The client's body on its way upstream: a frame must come within `idle`, and how it ends is
/// recorded, so that a failure is told apart from the upstream's. An upstream that answers before
/// it has all (a refusal) lets go of it: over HTTP/2 the rest is drained (see `RequestBody`).
struct ClientBody {
    inner: RequestBody,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    watch: Arc<Watch>,
    /// Reads the uploads an envelope body names, as its frames go by.
    urls: Option<RemoteUrls>,
    /// The length the client declared: a body that ends short of it broke off (an HTTP/2 stream
    /// reset with NO_ERROR or CANCEL, which hyper reports as a clean end).
    declared: Option<u64>,
    /// The frame that completed the declared length, held until the client's stream has ended
    /// (see `poll_frame`).
    held: Option<Frame<Bytes>>,
    /// What comes after the held frame once it is let go: the end, or trailers.
    after_held: Option<Option<Frame<Bytes>>>,
}

impl ClientBody {
    fn new(
        inner: RequestBody,
        idle: Duration,
        watch: Arc<Watch>,
        urls: Option<RemoteUrls>,
        declared: Option<u64>,
    ) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            watch,
            urls,
            declared,
            held: None,
            after_held: None,
        }
    }

    /// The client's next frame, timed, counted and scanned, and how the body ended.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.watch.waiting_on_client.store(polled.is_pending(), std::sync::atomic::Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                if let Some(data) = frame.data_ref() {
                    this.watch.sent.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(urls) = &mut this.urls {
                        let before = urls.len();
                        urls.feed(data);
                        if urls.len() != before {
                            // Kept as found: the answer may come before the body's end is polled.
                            *this.watch.used.lock().unwrap() = urls.ids();
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::info!(error = %err, "the client's passthrough body broke off");
                this.watch.end(Some(GatewayError::ClientBodyError));
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                let sent = this.watch.sent.load(std::sync::atomic::Ordering::Relaxed);
                if this.declared.is_some_and(|declared| declared != sent) {
                    tracing::info!(sent, declared = this.declared, "the client's passthrough body ended short");
                    this.watch.end(Some(GatewayError::ClientBodyError));
                    return Poll::Ready(Some(Err("the client's body ended short of its length".into())));
                }
                this.watch.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.watch.end(Some(GatewayError::ClientBodyTimeout(this.idle)));
                    Poll::Ready(Some(Err("the client's body stalled".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    /// The client's frames, but for the one that completes the declared length before the
    /// client's stream has ended (HTTP/2, END_STREAM not on it): held until the end comes, and
    /// the call failed if more data comes instead. Passed on at once, it had let the upstream
    /// act on a request the client then sent past its length (and was reset for).
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(after) = this.after_held.take() {
            return Poll::Ready(after.map(Ok));
        }
        loop {
            let polled = std::task::ready!(this.poll_client(cx));
            let Some(held) = this.held.take() else {
                let sent = this.watch.sent.load(std::sync::atomic::Ordering::Relaxed);
                return match polled {
                    Some(Ok(frame))
                        if frame.is_data() && this.declared == Some(sent) && !this.inner.is_end_stream() =>
                    {
                        this.held = Some(frame);
                        continue;
                    }
                    polled => Poll::Ready(polled),
                };
            };
            return Poll::Ready(match polled {
                // An empty DATA frame (one that carries only END_STREAM, as some clients send it).
                Some(Ok(frame)) if frame.data_ref().is_some_and(|d| d.is_empty()) => {
                    this.held = Some(held);
                    continue;
                }
                None => {
                    this.after_held = Some(None);
                    Some(Ok(held))
                }
                Some(Ok(frame)) if frame.is_trailers() => {
                    this.after_held = Some(Some(frame));
                    Some(Ok(held))
                }
                Some(Ok(_)) => {
                    tracing::info!("the client's passthrough body went past its length");
                    this.watch.end(Some(GatewayError::ClientBodyError));
                    Some(Err("the client's body went past its length".into()))
                }
                Some(Err(err)) => Some(Err(err)),
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.after_held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // Dropped unfinished (the upstream answered early, or the call ended): nobody waits.
        self.watch.end(None);
    }
}
