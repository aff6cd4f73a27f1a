//! The streamed upload: a whole document in, a committed chunked upload out.
//!
//! The body is cut into parts as it arrives; part 0 creates the upload and the answer tells the
//! part and size limits; parts 1..n go out with up to `max_in_flight` PUTs at once; the SHA-256 of
//! the stream is checked against the client's `Content-Digest` and the upstream's checksum; then
//! the upload is committed. Any failure after create deletes the upstream upload.

use std::{
    sync::{
        Arc,
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

use crate::{
    body::Body,
    config::{Config, UploadConfig},
    error::{Cleanup, Deletion, GatewayError},
    ids::valid_upload_id,
    pipeline::{
        calls::{Abort, Calls},
        chunker::{ChunkError, Chunker, Part},
        digest, part,
        pool::BufferPool,
        presence::{self, Client},
    },
    policy::{
        callers::{Caller, PerKey},
        pacing::Pacing,
        quota::{Lease, Quota},
        retry::RetryPolicy,
    },
    telemetry,
    upstream::{
        Answer, Upstream,
        client::UploadRoute,
        resource::{ChunkedUpload, hex},
    },
};

/// Where a streamed upload goes: the parts of its request target the upstream needs.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// Everything before `/v2.1` or `/v2` in the client's path.
    pub prefix: &'a str,
    pub version: &'a str,
    pub account: &'a str,
}

/// Header a client sets to `false` to have its upload left uncommitted (it commits later itself).
pub const NO_COMMIT_HEADER: &str = "x-chunkgate-commit";

/// Margin kept before the upload's expiry: past it, no call is attempted.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// An upload's lifetime upstream (DocuSign: 20 minutes), assumed until create announces its expiry.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(20 * 60);

/// Time given to deleting an upload after a failure.
const DELETE_WINDOW: Duration = Duration::from_secs(30);

/// Shared state of all uploads: limits, buffers, and the switches of a drain.
pub struct Uploads {
    /// The upload settings in force (part sizes held to the upstream's request cap).
    config: UploadConfig,
    /// Seconds an upload waits for its account's quota.
    quota_wait: Duration,
    retry: Arc<RetryPolicy>,
    pacing: Arc<dyn Pacing>,
    quota: Arc<dyn Quota>,
    slots: Arc<Semaphore>,
    /// Budget in KiB (a semaphore counts in u32).
    budget: Arc<Semaphore>,
    /// Part PUTs on the wire now, over all uploads.
    parts_in_flight: Arc<AtomicUsize>,
    pool: Arc<BufferPool>,
    draining: AtomicBool,
    cancel: watch::Sender<bool>,
    /// Uploads running per caller.
    callers: Arc<PerKey<Caller>>,
    max_per_caller: usize,
    /// Time the finish (checksum read, commit) may need: the body must end this long before the
    /// upload expires.
    finish_reserve: Duration,
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
    finish_reserve: Duration,
    /// When the request reached the gateway.
    began: Instant,
}

/// What one upload has done so far: the state its stages share.
struct Progress {
    /// Parts the upstream has acknowledged, by sequence.
    accepted: Vec<u32>,
    /// Raw bytes of each part sent, indexed by sequence.
    sizes: Vec<u64>,
    /// The upload's `expirationDateTime`, as the upstream announced it.
    expires: String,
}

/// What create told about the upload.
struct Opened {
    id: String,
    limits: Announced,
    expires: String,
    /// The upload has less than this many seconds to live: too little to finish it.
    too_short: Option<u64>,
}

// === impl Uploads ===

impl Uploads {
    /// The uploads of a gateway, under the policies it hands them.
    pub fn new(config: &Config, pacing: Arc<dyn Pacing>, quota: Arc<dyn Quota>) -> Self {
        let c = config.effective_upload();
        let kib = (c.memory_budget_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let budget = Arc::new(Semaphore::new(kib));
        let u = &config.upstream;
        let finish_reserve =
            Duration::from_millis(u.commit_timeout_ms + if c.verify_upstream_checksum { u.call_timeout_ms } else { 0 });
        Self {
            slots: Arc::new(Semaphore::new(c.max_uploads)),
            budget: budget.clone(),
            parts_in_flight: Arc::new(AtomicUsize::new(0)),
            // Idle buffers are memory too: at most a quarter of the budget, and only what it has free.
            pool: BufferPool::within(c.memory_budget_bytes / 4, budget.clone()),
            retry: Arc::new(RetryPolicy::new(config.retry.clone())),
            quota_wait: Duration::from_secs(config.quota.wait_secs),
            pacing,
            quota,
            draining: AtomicBool::new(false),
            cancel: watch::channel(false).0,
            callers: PerKey::new(),
            max_per_caller: config.server.max_uploads_per_caller,
            finish_reserve,
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

    /// Checks what can be checked before any upstream call, waits for the account's turn, then
    /// runs the upload in its own task, so that a client going away cannot stop the cleanup.
    pub async fn handle(
        &self,
        upstream: Arc<Upstream>,
        req: Request<Incoming>,
        to: Destination<'_>,
        caller: Caller,
    ) -> Response<Body> {
        let dialect = upstream.dialect;
        // Dropped with this future: when the client leaves before the answer, hyper drops it.
        let (present, client) = presence::pair();
        let refuse = |err: GatewayError| {
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
            tracing::info!(code = err.code(), "upload refused before any upstream call");
            err.response(dialect)
        };
        if self.is_draining() {
            return refuse(GatewayError::ShuttingDown);
        }
        let job = match self.admit(upstream, &req, to) {
            Ok(job) => job,
            Err(err) => return refuse(err),
        };
        let Some(caller_slot) = self.callers.try_take(caller, self.max_per_caller) else {
            return refuse(GatewayError::GatewayBusy { retry_after: Duration::from_secs(1) });
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return refuse(GatewayError::GatewayBusy { retry_after: Duration::from_secs(1) });
        };
        metrics::counter!(telemetry::UPLOADS_STARTED).increment(1);
        let turn = match self.wait_turn(&job).await {
            Ok(turn) => turn,
            Err(err) => return refuse(err),
        };
        let cancel = self.cancel.subscribe();
        let span = tracing::info_span!(
            "upload",
            account = %job.calls.route.account,
            upload_id = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        let task = tokio::spawn(
            async move {
                let response = job.run(req.into_body(), cancel, client).await;
                drop((slot, turn, caller_slot));
                response
            }
            .instrument(span),
        );
        let answer = task.await.unwrap_or_else(|err| {
            tracing::error!(error = %err, "the upload task failed");
            GatewayError::Internal(err.to_string()).response(dialect)
        });
        drop(present);
        answer
    }

    /// The account's share of the upstream quota: waits for its turn, for a bounded time.
    async fn wait_turn(&self, job: &Job) -> Result<Lease, GatewayError> {
        let bytes = job.declared.unwrap_or(self.config.max_document_bytes);
        let queued = std::time::Instant::now();
        let lease = self.quota.lease(&job.calls.route.account, bytes, self.quota_wait).await;
        metrics::histogram!(telemetry::QUEUE_WAIT).record(queued.elapsed().as_secs_f64());
        lease.ok_or(GatewayError::GatewayBusy { retry_after: self.quota_wait.max(Duration::from_secs(1)) })
    }

    fn admit(
        &self,
        upstream: Arc<Upstream>,
        req: &Request<Incoming>,
        to: Destination<'_>,
    ) -> Result<Job, GatewayError> {
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
        Ok(Job {
            calls: Calls {
                upstream,
                retry: self.retry.clone(),
                pacing: self.pacing.clone(),
                route: UploadRoute {
                    prefix: to.prefix.to_owned(),
                    version: to.version.to_owned(),
                    account: to.account.to_owned(),
                    auth,
                },
                // Until create announces the upload's expiry, the longest a call may wait.
                deadline: self.pacing.default_deadline(),
            },
            config: self.config.clone(),
            budget: self.budget.clone(),
            parts_in_flight: self.parts_in_flight.clone(),
            pool: self.pool.clone(),
            declared,
            client_digest,
            commit,
            finish_reserve: self.finish_reserve,
            began: Instant::now(),
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

/// The stages of one upload: open (part 0 creates it), send the rest, finish (verify, commit),
/// or abort (delete). Each returns what the next needs, or the client's answer when it ends here.
impl Job {
    async fn run(mut self, body: Incoming, mut cancel: watch::Receiver<bool>, mut client: Client) -> Response<Body> {
        let idle = Duration::from_millis(self.config.client_idle_timeout_ms);
        let mut chunker = Chunker::new(body, idle, self.pool.clone()).expect_len(self.declared);
        // Until create announces the upload's expiry, the body is bounded by the lifetime assumed.
        let assumed_expiry = self.began + ASSUMED_LIFETIME;
        chunker.set_deadline(assumed_expiry - self.finish_reserve.min(ASSUMED_LIFETIME / 2), self.began);
        let Opened { id, limits, expires, too_short } = match self.open(&mut chunker, &mut cancel, &client).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
        let mut progress = Progress { accepted: vec![0], sizes: vec![chunker.emitted()], expires };
        if let Some(left) = too_short {
            return self.abort(&id, GatewayError::UploadExpiring(left).into(), &mut progress).await;
        }
        let outcome = tokio::select! {
            sent = self.send_rest(&id, &mut chunker, limits, &mut progress) => sent,
            () = cancelled(&mut cancel) => Err(GatewayError::ShuttingDown.into()),
            () = client.gone() => Err(GatewayError::ClientGone.into()),
        };
        let outcome = match outcome {
            Ok(()) => self.finish(&id, &mut chunker, &progress, &client).await,
            Err(abort) => Err(abort),
        };
        match outcome {
            Ok((answer, checked)) => self.succeeded(&id, answer, checked, &mut chunker, &progress, &client).await,
            Err(abort) => self.abort(&id, abort, &mut progress).await,
        }
    }

    /// Reads part 0 and creates the upload with it. Returns what create told about the upload.
    async fn open(
        &mut self,
        chunker: &mut Chunker<Incoming>,
        cancel: &mut watch::Receiver<bool>,
        client: &Client,
    ) -> Result<Opened, Response<Body>> {
        let dialect = self.calls.upstream.dialect;
        let fail = |err: GatewayError| {
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
            tracing::warn!(code = err.code(), detail = err.detail(), "upload failed before or at create");
            err.response(dialect)
        };
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
            () = cancelled(cancel) => return Err(fail(GatewayError::ShuttingDown)),
        };
        let part0 = tokio::select! {
            part = chunker.next_part(first_size) => part,
            () = cancelled(cancel) => return Err(fail(GatewayError::ShuttingDown)),
        };
        let part0 = match part0 {
            Ok(Some(part)) => part,
            Ok(None) => return Err(fail(GatewayError::EmptyDocument)),
            Err(err) => return Err(fail(client_error(err))),
        };
        if client.is_gone() {
            return Err(fail(GatewayError::ClientGone));
        }
        // Not cancelled half-way: a create whose answer is lost leaves an upload nobody can delete.
        let created = match self.calls.create(&part0.body).await {
            Ok(answer) => answer,
            // A refusal (quota, auth) goes back as the upstream sent it.
            Err(Abort::Upstream(answer)) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "UPSTREAM_REFUSED").increment(1);
                tracing::warn!(status = answer.status.as_u16(), "upstream refused the create");
                return Err((*answer).into_refusal(dialect));
            }
            Err(Abort::Gateway(err)) => return Err(fail(err)),
        };
        drop((part0_budget, part0));
        let resource = match created.resource(dialect) {
            // The id goes into the paths of every later call: only the shape of an id is taken.
            Ok(r) if valid_upload_id(&r.chunked_upload_id) => r,
            Ok(r) if r.chunked_upload_id.is_empty() => {
                return Err(fail(GatewayError::CreatedUnreadable("create answered without an upload id".into())));
            }
            Ok(_) => {
                let detail = "create answered an upload id outside [A-Za-z0-9-]{1,64}".to_owned();
                return Err(fail(GatewayError::CreatedUnreadable(detail)));
            }
            Err(e) => return Err(fail(GatewayError::CreatedUnreadable(e))),
        };
        let id = resource.chunked_upload_id.clone();
        tracing::Span::current().record("upload_id", id.as_str());
        let left = time_to_live(&resource.expiration_date_time, created.headers.get(header::DATE));
        let expiry = Instant::now() + left;
        // Calls stop this long before the upload expires; less than that to live is too little.
        let margin = EXPIRY_MARGIN.min(self.finish_reserve);
        self.calls.deadline = expiry - margin.min(left);
        // The rest of the body must arrive in time for the finish to run before the upload expires.
        let reserve = self.finish_reserve.min(left / 2);
        chunker.set_deadline(expiry - reserve, self.began);
        let limits = Announced {
            max_parts: resource.max_parts().unwrap_or(self.config.assumed_max_parts),
            max_total: resource.max_total().unwrap_or(u64::MAX),
            part0: chunker.emitted(),
        };
        let too_short = (left <= margin).then_some(left.as_secs());
        Ok(Opened { id, limits, expires: resource.expiration_date_time, too_short })
    }

    /// Parts 1..n, sent as the body arrives with up to `max_in_flight` at once.
    async fn send_rest(
        &self,
        id: &str,
        chunker: &mut Chunker<Incoming>,
        limits: Announced,
        progress: &mut Progress,
    ) -> Result<(), Abort> {
        let size = self.part_size(chunker, limits)?;
        let cost = budget_cost(size, &self.config);
        let mut inflight: JoinSet<Result<u32, Abort>> = JoinSet::new();
        let mut seq = 1u32;
        loop {
            while inflight.len() >= self.config.max_in_flight {
                progress.accepted.push(joined(inflight.join_next().await)?);
            }
            let permit = self.budget.clone().acquire_many_owned(cost).await.expect("budget semaphore is never closed");
            let next = tokio::select! {
                biased;
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    progress.accepted.push(joined(Some(done))?);
                    continue;
                }
                next = chunker.next_part(size) => next.map_err(client_error)?,
            };
            let Some(part) = next else { break };
            if seq >= limits.max_parts || chunker.emitted() > limits.max_total {
                return Err(GatewayError::PayloadTooLarge { limit: limits.capacity(size) }.into());
            }
            progress.sizes.push(part.len as u64);
            let span = tracing::info_span!("part", seq, bytes = part.len);
            let gauge = InFlight::enter(&self.parts_in_flight);
            let (calls, id) = (self.calls.clone(), id.to_owned());
            inflight.spawn(send_part(calls, id, seq, part, (permit, gauge)).instrument(span));
            seq += 1;
        }
        while let Some(done) = inflight.join_next().await {
            progress.accepted.push(joined(Some(done))?);
        }
        Ok(())
    }

    /// The size of parts 1..n: with a declared length, fitted into the parts the upstream allows.
    fn part_size(&self, chunker: &Chunker<Incoming>, limits: Announced) -> Result<usize, Abort> {
        let Some(len) = self.declared else { return Ok(self.config.part_size) };
        let capacity = limits.capacity(self.config.max_part_bytes);
        if len > capacity {
            return Err(GatewayError::PayloadTooLarge { limit: capacity }.into());
        }
        let left = len.saturating_sub(chunker.emitted());
        let slots = limits.max_parts.saturating_sub(1).max(1);
        Ok(fit(left, slots, &self.config))
    }

    /// The integrity checks, then the commit (unless the client asked for none) while the client
    /// is still there to hear of it. Returns the upstream's final answer and what was checked.
    async fn finish(
        &self,
        id: &str,
        chunker: &mut Chunker<Incoming>,
        progress: &Progress,
        client: &Client,
    ) -> Result<(Answer, Checked), Abort> {
        let ours = hex(&chunker.sha256().await);
        if let Some(expected) = self.client_digest {
            if hex(&expected) != ours {
                return Err(GatewayError::DigestMismatch { expected: hex(&expected), actual: ours }.into());
            }
        }
        let (last, checked) = if self.config.verify_upstream_checksum || !self.commit {
            let (answer, checked) = self.verify(id, &ours, progress).await?;
            (Some(answer), checked)
        } else {
            (None, Checked::Skipped)
        };
        if client.is_gone() {
            return Err(GatewayError::ClientGone.into());
        }
        match last {
            Some(answer) if !self.commit => Ok((answer, checked)),
            _ => Ok((self.calls.commit(id).await?, checked)),
        }
    }

    /// Reads the upload back with its checksum and compares it with ours. Without a checksum in
    /// the answer, the part sizes and the total are compared instead (or, with
    /// `upload.require_upstream_checksum`, nothing is committed).
    async fn verify(&self, id: &str, ours: &str, progress: &Progress) -> Result<(Answer, Checked), Abort> {
        let dialect = self.calls.upstream.dialect;
        let answer = self.calls.get(id, true).await?;
        let resource = answer.resource(dialect).map_err(GatewayError::UpstreamBadResponse)?;
        if !self.config.verify_upstream_checksum {
            return Ok((answer, Checked::Skipped));
        }
        match resource.checksum.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            Some(theirs) if theirs.eq_ignore_ascii_case(ours) => Ok((answer, Checked::Checksum)),
            Some(theirs) => {
                Err(GatewayError::UpstreamChecksumMismatch { upstream: theirs.to_owned(), actual: ours.to_owned() }
                    .into())
            }
            None if self.config.require_upstream_checksum => Err(GatewayError::UpstreamChecksumMissing.into()),
            None => {
                sizes_match(&resource, &progress.sizes)?;
                tracing::warn!("the upstream's answer carries no checksum: sizes checked, bytes not verified");
                metrics::counter!(telemetry::CHECKSUM_UNVERIFIED).increment(1);
                Ok((answer, Checked::SizesOnly))
            }
        }
    }

    /// The client's answer for a finished upload: the upstream's, plus the gateway's headers. If
    /// the client left during the finish, nobody will learn the upload's id: it is deleted.
    async fn succeeded(
        &self,
        id: &str,
        answer: Answer,
        checked: Checked,
        chunker: &mut Chunker<Incoming>,
        progress: &Progress,
        client: &Client,
    ) -> Response<Body> {
        let parts = progress.accepted.len();
        let bytes = chunker.total();
        tracing::Span::current().record("bytes", bytes);
        if client.is_gone() {
            let deleted = self.calls.delete(id, Instant::now() + DELETE_WINDOW).await;
            tracing::warn!(deleted, "the client left before hearing of its upload; deleted it");
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "CLIENT_GONE").increment(1);
            return GatewayError::ClientGone.response(self.calls.upstream.dialect);
        }
        tracing::info!(parts, bytes, committed = self.commit, checked = checked.name(), "upload finished");
        if self.commit {
            metrics::counter!(telemetry::UPLOADS_COMMITTED).increment(1);
        }
        metrics::counter!(telemetry::UPLOAD_BYTES).increment(bytes);
        metrics::counter!(telemetry::PARTS).increment(parts as u64);
        let mut response = answer.into_response();
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert("x-chunkgate-upload-id", v);
        }
        h.insert("x-chunkgate-parts", HeaderValue::from(parts));
        h.insert("x-chunkgate-bytes", HeaderValue::from(bytes));
        h.insert("x-chunkgate-sha256", HeaderValue::from_str(&hex(&chunker.sha256().await)).expect("hex"));
        h.insert("x-chunkgate-checksum", HeaderValue::from_static(checked.name()));
        response
    }

    /// Deletes the upstream upload after a failure and says so in the client's answer.
    async fn abort(&self, id: &str, abort: Abort, progress: &mut Progress) -> Response<Body> {
        let dialect = self.calls.upstream.dialect;
        progress.accepted.sort_unstable();
        let deletion = if let Abort::Gateway(GatewayError::RateLimited { .. }) = abort {
            // The account is paused: the delete waits for the pause in the background, for as long
            // as the upload lives, and the client hears now.
            let (calls, id, until) = (self.calls.clone(), id.to_owned(), self.calls.deadline + EXPIRY_MARGIN);
            tokio::spawn(
                async move {
                    let deleted = calls.delete(&id, until).await;
                    tracing::info!(deleted, "deferred delete after rate limiting");
                }
                .in_current_span(),
            );
            Deletion::Deferred
        } else if self.calls.delete(id, Instant::now() + DELETE_WINDOW).await {
            tracing::info!("upstream upload deleted");
            Deletion::Deleted
        } else {
            tracing::warn!("the upstream upload could not be deleted; it expires on its own");
            Deletion::Failed
        };
        let cleanup = Cleanup { accepted: &progress.accepted, deletion, expires: &progress.expires };
        match abort {
            Abort::Gateway(err) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
                tracing::warn!(code = err.code(), detail = err.detail(), "upload failed");
                err.response_after(dialect, cleanup, id)
            }
            Abort::Upstream(answer) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "UPSTREAM_REFUSED").increment(1);
                tracing::warn!(status = answer.status.as_u16(), "upstream refused the upload");
                let mut response = (*answer).into_refusal(dialect);
                cleanup.stamp(response.headers_mut(), id);
                response
            }
        }
    }
}

/// What the finish could verify of the bytes the upstream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checked {
    /// The upstream's SHA-256 equals the gateway's.
    Checksum,
    /// The answer had no checksum: part sizes and the total were compared (`X-Chunkgate-Checksum:
    /// unverified`).
    SizesOnly,
    /// `upload.verify_upstream_checksum` is off.
    Skipped,
}

impl Checked {
    fn name(self) -> &'static str {
        match self {
            Checked::Checksum => "verified",
            Checked::SizesOnly => "unverified",
            Checked::Skipped => "skipped",
        }
    }
}

/// The upstream lists every part sent, with its size, and the total sent.
fn sizes_match(resource: &ChunkedUpload, sizes: &[u64]) -> Result<(), GatewayError> {
    let mismatch = |what: String, sent: String| Err(GatewayError::UpstreamSizeMismatch { what, sent });
    let total: u64 = sizes.iter().sum();
    if resource.total_size.trim().parse::<u64>().ok() != Some(total) {
        return mismatch(format!("a totalSize of {:?}", resource.total_size), format!("{total} bytes"));
    }
    if resource.chunked_upload_parts.len() != sizes.len() {
        return mismatch(format!("{} parts", resource.chunked_upload_parts.len()), format!("{} parts", sizes.len()));
    }
    for (seq, size) in sizes.iter().enumerate() {
        match resource.part_size(seq as u32) {
            Some(held) if held == *size => {}
            Some(held) => return mismatch(format!("part {seq} with {held} bytes"), format!("{size} bytes")),
            None => return mismatch(format!("no part {seq}"), format!("{size} bytes in it")),
        }
    }
    Ok(())
}

/// How long the upload has to live: its `expirationDateTime` less the upstream's own `Date` (so
/// that skew between the clocks does not count), or less ours when it sends none. An expiry that
/// cannot be read gives the assumed lifetime; one already past, none.
fn time_to_live(expiration: &str, date: Option<&HeaderValue>) -> Duration {
    let Ok(expires) = humantime::parse_rfc3339_weak(expiration.trim()) else { return ASSUMED_LIFETIME };
    let now = date.and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok()).unwrap_or_else(SystemTime::now);
    expires.duration_since(now).unwrap_or(Duration::ZERO)
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

/// The limits create announced, and what part 0 took of them.
#[derive(Clone, Copy)]
struct Announced {
    max_parts: u32,
    max_total: u64,
    /// Bytes in part 0.
    part0: u64,
}

impl Announced {
    /// The most the upload can hold with parts 1..n of `part` bytes.
    fn capacity(&self, part: usize) -> u64 {
        let rest = u64::from(self.max_parts.saturating_sub(1)).saturating_mul(part as u64);
        self.max_total.min(self.part0.saturating_add(rest))
    }
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
        Some(Err(err)) => Err(GatewayError::Internal(format!("a part task failed: {err}")).into()),
        None => Err(GatewayError::Internal("no part in flight".into()).into()),
    }
}

fn client_error(err: ChunkError) -> GatewayError {
    match err {
        ChunkError::Idle(d) => GatewayError::ClientBodyTimeout(d),
        ChunkError::Deadline(d) => GatewayError::ClientBodyDeadline(d),
        ChunkError::Broken => GatewayError::ClientBodyError,
    }
}
