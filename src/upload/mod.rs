//! The streamed upload: a whole document in, a committed chunked upload out.
//!
//! The body is cut into parts as it arrives; part 0 creates the upload and the answer tells the
//! part and size limits; parts 1..n go out with up to `max_in_flight` PUTs at once; the SHA-256 of
//! the stream is checked against the client's `Content-Digest` and the upstream's checksum; then
//! the upload is committed. Any failure after create deletes the upstream upload.

mod calls;
pub mod chunker;
mod digest;
mod hasher;
pub mod part;
pub mod pool;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::Instrument;

use self::{
    calls::{Abort, Calls},
    chunker::{ChunkError, Chunker, Part},
    pool::BufferPool,
};
use crate::{
    body::Body,
    config::{Config, QuotaConfig, UploadConfig},
    error::GatewayError,
    resource::hex,
    retry::RetryPolicy,
    route::{self, Target},
    telemetry,
    upstream::{Account, Answer, Upstream},
};

/// Header a client sets to `false` to have its upload left uncommitted (it commits later itself).
pub const NO_COMMIT_HEADER: &str = "x-chunkgate-commit";

/// Margin kept before the upload's expiry: past it, nothing more is attempted.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Time given to deleting an upload after a failure.
const DELETE_WINDOW: Duration = Duration::from_secs(30);

/// Per account: uploads running and the bytes they may hold, as the upstream's quota allows.
struct AccountQuota {
    uploads: Arc<Semaphore>,
    /// KiB.
    bytes: Arc<Semaphore>,
}

/// Shared state of all uploads: limits, buffers, and the switches of a drain.
pub struct Uploads {
    config: UploadConfig,
    quota: QuotaConfig,
    retry: Arc<RetryPolicy>,
    slots: Arc<Semaphore>,
    /// Budget in KiB (a semaphore counts in u32).
    budget: Arc<Semaphore>,
    accounts: Mutex<HashMap<String, Arc<AccountQuota>>>,
    /// Part PUTs on the wire now, over all uploads.
    parts_in_flight: Arc<AtomicUsize>,
    pool: Arc<BufferPool>,
    draining: AtomicBool,
    cancel: watch::Sender<bool>,
    /// Uploads running per caller.
    callers: Arc<Mutex<HashMap<String, usize>>>,
    max_per_caller: usize,
}

/// One of a caller's upload slots, given back when dropped.
struct CallerSlot {
    callers: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl CallerSlot {
    fn take(callers: &Arc<Mutex<HashMap<String, usize>>>, caller: String, max: usize) -> Option<Self> {
        let mut map = callers.lock().unwrap();
        let running = map.entry(caller.clone()).or_insert(0);
        if *running >= max {
            return None;
        }
        *running += 1;
        Some(Self { callers: callers.clone(), caller })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut map = self.callers.lock().unwrap();
        if let Some(n) = map.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.caller);
            }
        }
    }
}

/// One upload's fixed facts.
struct Job {
    calls: Calls,
    config: UploadConfig,
    budget: Arc<Semaphore>,
    parts_in_flight: Arc<AtomicUsize>,
    pool: Arc<BufferPool>,
    declared: Option<u64>,
    client_digest: Option<[u8; 32]>,
    commit: bool,
}

// === impl Uploads ===

impl Uploads {
    pub fn new(config: &Config) -> Self {
        let c = config.upload.clone();
        let kib = (c.memory_budget_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let budget = Arc::new(Semaphore::new(kib));
        Self {
            slots: Arc::new(Semaphore::new(c.max_uploads)),
            budget: budget.clone(),
            accounts: Mutex::new(HashMap::new()),
            parts_in_flight: Arc::new(AtomicUsize::new(0)),
            // Idle buffers are memory too: at most a quarter of the budget, and only what it has free.
            pool: BufferPool::within(c.memory_budget_bytes / 4, budget.clone()),
            retry: Arc::new(RetryPolicy::new(config.retry.clone())),
            quota: config.quota.clone(),
            draining: AtomicBool::new(false),
            cancel: watch::channel(false).0,
            callers: Arc::new(Mutex::new(HashMap::new())),
            max_per_caller: config.server.max_uploads_per_caller,
            config: c,
        }
    }

    /// Uploads running now.
    pub fn active(&self) -> usize {
        self.config.max_uploads - self.slots.available_permits()
    }

    /// Bytes of part data (raw and base64) that running uploads hold now.
    pub fn bytes_in_flight(&self) -> u64 {
        let total_kib =
            (self.config.memory_budget_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        (total_kib - self.budget.available_permits()) as u64 * 1024
    }

    /// Part PUTs on the wire now, over all uploads.
    pub fn parts_in_flight(&self) -> usize {
        self.parts_in_flight.load(Ordering::Relaxed)
    }

    /// From now on, new uploads are refused with SHUTTING_DOWN; running ones go on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ends every running upload: each deletes its upstream upload and answers SHUTTING_DOWN.
    pub fn cancel_all(&self) {
        self.start_draining();
        self.cancel.send_replace(true);
    }

    fn account_quota(&self, account: &str) -> Arc<AccountQuota> {
        let mut map = self.accounts.lock().unwrap();
        map.entry(account.to_owned())
            .or_insert_with(|| {
                Arc::new(AccountQuota {
                    uploads: Arc::new(Semaphore::new(self.quota.uploads_per_account as usize)),
                    bytes: Arc::new(Semaphore::new(self.quota_kib() as usize)),
                })
            })
            .clone()
    }

    /// The account byte quota in KiB, the unit of its semaphore.
    fn quota_kib(&self) -> u64 {
        (self.quota.bytes_per_account / 1024).clamp(1, u32::MAX as u64)
    }

    /// Checks what can be checked before any upstream call, waits for the account's turn, then
    /// runs the upload in its own task, so that a client going away cannot stop the cleanup.
    pub async fn handle(
        &self,
        upstream: Arc<Upstream>,
        req: Request<Incoming>,
        t: Target<'_>,
        caller: String,
    ) -> Response<Body> {
        let dialect = upstream.dialect;
        let refuse = |err: GatewayError| {
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
            tracing::info!(code = err.code(), "upload refused before any upstream call");
            err.response(dialect, None)
        };
        if self.is_draining() {
            return refuse(GatewayError::ShuttingDown);
        }
        let job = match self.admit(upstream, &req, t) {
            Ok(job) => job,
            Err(err) => return refuse(err),
        };
        let Some(caller_slot) = CallerSlot::take(&self.callers, caller, self.max_per_caller) else {
            return refuse(GatewayError::GatewayBusy { retry_after: Duration::from_secs(1) });
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return refuse(GatewayError::GatewayBusy { retry_after: Duration::from_secs(1) });
        };
        metrics::counter!(telemetry::UPLOADS_STARTED).increment(1);
        // The account's share of the upstream quota: wait our turn, for a bounded time.
        let quota = self.account_quota(&job.calls.acct.id);
        let wanted = job.declared.unwrap_or(self.config.max_document_bytes).min(self.quota.bytes_per_account);
        let kib = wanted.div_ceil(1024).clamp(1, self.quota_kib()) as u32;
        let wait = Duration::from_secs(self.quota.wait_secs);
        let turn = tokio::time::timeout(wait, async {
            let upload = quota.uploads.clone().acquire_owned().await.expect("never closed");
            let bytes = quota.bytes.clone().acquire_many_owned(kib).await.expect("never closed");
            (upload, bytes)
        });
        let queued = std::time::Instant::now();
        let turn = turn.await;
        metrics::histogram!(telemetry::QUEUE_WAIT).record(queued.elapsed().as_secs_f64());
        let Ok(turn) = turn else {
            return refuse(GatewayError::GatewayBusy { retry_after: wait.max(Duration::from_secs(1)) });
        };
        let cancel = self.cancel.subscribe();
        let span = tracing::info_span!(
            "upload",
            account = %job.calls.acct.id,
            upload_id = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        let task = tokio::spawn(
            async move {
                let response = job.run(req.into_body(), cancel).await;
                drop((slot, turn, caller_slot));
                response
            }
            .instrument(span),
        );
        task.await.unwrap_or_else(|_| GatewayError::BadRequest("the upload task failed".into()).response(dialect, None))
    }

    fn admit(&self, upstream: Arc<Upstream>, req: &Request<Incoming>, t: Target<'_>) -> Result<Job, GatewayError> {
        if !route::valid_account(t.account) {
            return Err(GatewayError::InvalidAccountId);
        }
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .filter(|v| v.as_bytes().len() > 7)
            .cloned()
            .ok_or(GatewayError::MissingToken)?;
        let declared = match req.headers().get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| GatewayError::BadRequest("Content-Length is not a number".into()))?,
            ),
        };
        let c = &self.config;
        // The most a document can hold: the part count assumed before create times the largest part.
        let ceiling = c.max_document_bytes.min(c.assumed_max_parts as u64 * c.max_part_bytes as u64);
        match declared {
            Some(0) => return Err(GatewayError::EmptyDocument),
            Some(len) if len > ceiling => return Err(GatewayError::PayloadTooLarge { limit: ceiling }),
            _ => {}
        }
        let client_digest = digest::sha256_of(req.headers()).map_err(|()| GatewayError::BadContentDigest)?;
        let commit = !req.headers().get(NO_COMMIT_HEADER).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"false"));
        let deadline = upstream.limits.default_deadline();
        Ok(Job {
            calls: Calls {
                upstream,
                retry: self.retry.clone(),
                acct: Account {
                    prefix: t.prefix.to_owned(),
                    version: t.version.to_owned(),
                    id: t.account.to_owned(),
                    auth,
                    deadline,
                },
            },
            config: self.config.clone(),
            budget: self.budget.clone(),
            parts_in_flight: self.parts_in_flight.clone(),
            pool: self.pool.clone(),
            declared,
            client_digest,
            commit,
        })
    }
}

/// Resolves when `cancel` turns true; never when its sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

// === impl Job ===

impl Job {
    async fn run(mut self, body: Incoming, mut cancel: watch::Receiver<bool>) -> Response<Body> {
        let dialect = self.calls.upstream.dialect;
        let idle = Duration::from_millis(self.config.client_idle_timeout_ms);
        let mut chunker = Chunker::new(body, idle, self.pool.clone());
        let first_size = match self.declared {
            Some(len) => fit(len, self.config.assumed_max_parts, &self.config),
            None => self.config.part_size,
        };
        // Part 0 is held like any part: its body counts against the memory budget until create has
        // answered.
        let part0_budget = tokio::select! {
            permit = self.budget.clone().acquire_many_owned(budget_cost(first_size, &self.config)) => {
                permit.expect("budget semaphore is never closed")
            }
            () = cancelled(&mut cancel) => return GatewayError::ShuttingDown.response(dialect, None),
        };
        let part0 = tokio::select! {
            part = chunker.next_part(first_size) => part,
            () = cancelled(&mut cancel) => return GatewayError::ShuttingDown.response(dialect, None),
        };
        let part0 = match part0 {
            Ok(Some(part)) => part,
            Ok(None) => return GatewayError::EmptyDocument.response(dialect, None),
            Err(err) => return client_error(err).response(dialect, None),
        };
        // Not cancelled half-way: a create whose answer is lost leaves an upload nobody can delete.
        let created = match self.calls.create(&part0.body).await {
            Ok(answer) => answer,
            // A refusal (quota, auth) goes back as the upstream sent it.
            Err(Abort::Upstream(answer)) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "UPSTREAM_REFUSED").increment(1);
                tracing::warn!(status = answer.status.as_u16(), "upstream refused the create");
                return answer.into_response();
            }
            Err(Abort::Gateway(err)) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
                tracing::warn!(code = err.code(), error = %err, "create failed");
                return err.response(dialect, None);
            }
        };
        drop(part0_budget);
        drop(part0);
        let resource = match created.resource(dialect) {
            Ok(r) if !r.chunked_upload_id.is_empty() => r,
            Ok(_) => {
                return GatewayError::UpstreamBadResponse("create answered without an upload id".into())
                    .response(dialect, None);
            }
            Err(e) => return GatewayError::UpstreamBadResponse(e).response(dialect, None),
        };
        let id = resource.chunked_upload_id.clone();
        tracing::Span::current().record("upload_id", id.as_str());
        self.calls.acct.deadline = upload_deadline(&resource.expiration_date_time);
        let limits = Limits {
            max_parts: resource.max_parts().unwrap_or(self.config.assumed_max_parts),
            max_total: resource.max_total().unwrap_or(u64::MAX),
        };
        let mut accepted = vec![0u32];
        let outcome = tokio::select! {
            outcome = self.send_rest(&id, &mut chunker, limits, &mut accepted) => outcome,
            () = cancelled(&mut cancel) => Err(GatewayError::ShuttingDown.into()),
        };
        match outcome {
            Ok(answer) => {
                let parts = accepted.len();
                let bytes = chunker.total();
                tracing::Span::current().record("bytes", bytes);
                tracing::info!(parts, bytes, committed = self.commit, "upload finished");
                if self.commit {
                    metrics::counter!(telemetry::UPLOADS_COMMITTED).increment(1);
                }
                metrics::counter!(telemetry::UPLOAD_BYTES).increment(bytes);
                metrics::counter!(telemetry::PARTS).increment(parts as u64);
                let mut response = answer.into_response();
                let h = response.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    h.insert("x-chunkgate-upload-id", v);
                }
                h.insert("x-chunkgate-parts", HeaderValue::from(parts));
                h.insert("x-chunkgate-bytes", HeaderValue::from(bytes));
                h.insert("x-chunkgate-sha256", HeaderValue::from_str(&hex(&chunker.sha256().await)).expect("hex"));
                response
            }
            Err(abort) => {
                accepted.sort_unstable();
                if let Abort::Gateway(GatewayError::RateLimited { .. }) = abort {
                    // The account is paused: the delete waits for the pause in the background, for
                    // as long as the upload lives, and the client hears now.
                    let (calls, id, until) = (self.calls.clone(), id.clone(), self.calls.acct.deadline + EXPIRY_MARGIN);
                    tokio::spawn(
                        async move {
                            let deleted = calls.delete(&id, until).await;
                            tracing::info!(deleted, "deferred delete after rate limiting");
                        }
                        .in_current_span(),
                    );
                } else if self.calls.delete(&id, Instant::now() + DELETE_WINDOW).await {
                    tracing::info!("upstream upload deleted");
                } else {
                    tracing::warn!("the upstream upload could not be deleted; it expires on its own");
                }
                let reason = match &abort {
                    Abort::Gateway(err) => err.code(),
                    Abort::Upstream(_) => "UPSTREAM_REFUSED",
                };
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => reason).increment(1);
                let mut response = match abort {
                    Abort::Gateway(err) => {
                        tracing::warn!(code = err.code(), error = %err, "upload failed");
                        err.response(dialect, Some(&accepted))
                    }
                    Abort::Upstream(answer) => {
                        tracing::warn!(status = answer.status.as_u16(), "upstream refused the upload");
                        let mut response = (*answer).into_response();
                        let list = accepted.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                        if let Ok(v) = HeaderValue::from_str(&list) {
                            response.headers_mut().insert("x-chunkgate-parts-accepted", v);
                        }
                        response
                    }
                };
                // Names the (deleted) upstream upload, for the client's records.
                if let Ok(v) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert("x-chunkgate-upload-id", v);
                }
                response
            }
        }
    }

    /// Parts 1..n, the integrity checks and the commit. Returns the upstream's final answer.
    async fn send_rest(
        &self,
        id: &str,
        chunker: &mut Chunker<Incoming>,
        limits: Limits,
        accepted: &mut Vec<u32>,
    ) -> Result<Answer, Abort> {
        if let Some(len) = self.declared {
            if len > limits.max_total {
                return Err(GatewayError::PayloadTooLarge { limit: limits.max_total }.into());
            }
        }
        let size = match self.declared {
            Some(len) => {
                let left = len.saturating_sub(chunker.emitted());
                let slots = limits.max_parts.saturating_sub(1).max(1);
                let size = fit(left, slots, &self.config);
                if left.div_ceil(size as u64) > slots as u64 {
                    let limit = limits.max_parts as u64 * self.config.max_part_bytes as u64;
                    return Err(GatewayError::PayloadTooLarge { limit }.into());
                }
                size
            }
            None => self.config.part_size,
        };
        let cost = budget_cost(size, &self.config);
        let mut inflight: JoinSet<Result<u32, Abort>> = JoinSet::new();
        let mut seq = 1u32;
        loop {
            while inflight.len() >= self.config.max_in_flight {
                accepted.push(joined(inflight.join_next().await)?);
            }
            let permit = self.budget.clone().acquire_many_owned(cost).await.expect("budget semaphore is never closed");
            let next = tokio::select! {
                biased;
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    accepted.push(joined(Some(done))?);
                    continue;
                }
                next = chunker.next_part(size) => next.map_err(client_error)?,
            };
            let Some(part) = next else { break };
            if seq >= limits.max_parts || chunker.emitted() > limits.max_total {
                let limit = limits.max_total.min(limits.max_parts as u64 * size as u64);
                return Err(GatewayError::PayloadTooLarge { limit }.into());
            }
            let span = tracing::info_span!("part", seq, bytes = part.len);
            let gauge = InFlight::enter(&self.parts_in_flight);
            let (calls, id) = (self.calls.clone(), id.to_owned());
            inflight.spawn(send_part(calls, id, seq, part, (permit, gauge)).instrument(span));
            seq += 1;
        }
        while let Some(done) = inflight.join_next().await {
            accepted.push(joined(Some(done))?);
        }
        self.verify_and_commit(id, chunker).await
    }

    async fn verify_and_commit(&self, id: &str, chunker: &mut Chunker<Incoming>) -> Result<Answer, Abort> {
        let dialect = self.calls.upstream.dialect;
        let ours = hex(&chunker.sha256().await);
        if let Some(expected) = self.client_digest {
            if hex(&expected) != ours {
                return Err(GatewayError::DigestMismatch { expected: hex(&expected), actual: ours }.into());
            }
        }
        let mut last = None;
        if self.config.verify_upstream_checksum || !self.commit {
            let answer = self.calls.get(id, true).await?;
            let resource = answer.resource(dialect).map_err(GatewayError::UpstreamBadResponse)?;
            if let Some(theirs) = resource.checksum.as_deref().filter(|c| !c.is_empty()) {
                if self.config.verify_upstream_checksum && !theirs.eq_ignore_ascii_case(&ours) {
                    return Err(
                        GatewayError::UpstreamChecksumMismatch { upstream: theirs.to_owned(), actual: ours }.into()
                    );
                }
            }
            last = Some(answer);
        }
        match last {
            Some(answer) if !self.commit => Ok(answer),
            _ => self.calls.commit(id).await,
        }
    }
}

/// The latest time to attempt anything for an upload: its expiry less a margin, or its lifetime
/// from now when the expiry cannot be read.
fn upload_deadline(expiration: &str) -> Instant {
    let left = humantime::parse_rfc3339_weak(expiration.trim())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::from_secs(20 * 60));
    Instant::now() + left.saturating_sub(EXPIRY_MARGIN)
}

/// Counts a part on the wire for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(gauge: &Arc<AtomicUsize>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends one part, retrying as needed; the permit holds its share of the memory budget, and the
/// gauge counts the part, until the part is done.
async fn send_part(
    calls: Calls,
    id: String,
    seq: u32,
    part: Part,
    held: (OwnedSemaphorePermit, InFlight),
) -> Result<u32, Abort> {
    let outcome = calls.put_part(&id, seq, &part.body, part.len as u64).await;
    // The budget first, so that the buffer, going back to the pool, finds the room it held.
    drop(held);
    drop(part);
    outcome.map(|()| seq)
}

#[derive(Clone, Copy)]
struct Limits {
    max_parts: u32,
    max_total: u64,
}

/// The part size that fits `len` bytes into `parts` parts: at least `part_size`, at most
/// `max_part_bytes` (the caller checks that the result does fit).
fn fit(len: u64, parts: u32, c: &UploadConfig) -> usize {
    let need = len.div_ceil(parts.max(1) as u64) as usize;
    need.max(c.part_size).min(c.max_part_bytes).max(1)
}

/// KiB of the memory budget one part holds: its body (the raw bytes are never held apart from it).
fn budget_cost(size: usize, c: &UploadConfig) -> u32 {
    let bytes = part::encoded_len(size);
    let cap = (c.memory_budget_bytes / 1024).clamp(1, u32::MAX as usize);
    (bytes.div_ceil(1024)).min(cap) as u32
}

fn joined(done: Option<Result<Result<u32, Abort>, tokio::task::JoinError>>) -> Result<u32, Abort> {
    match done {
        Some(Ok(result)) => result,
        Some(Err(err)) => Err(GatewayError::BadRequest(format!("a part task failed: {err}")).into()),
        None => Err(GatewayError::BadRequest("no part in flight".into()).into()),
    }
}

fn client_error(err: ChunkError) -> GatewayError {
    match err {
        ChunkError::Idle(d) => GatewayError::ClientBodyTimeout(d),
        ChunkError::Broken => GatewayError::ClientBodyError,
    }
}
