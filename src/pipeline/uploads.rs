//! What all uploads share (the memory budget, the upload slots, the buffers, the policies handed
//! down by the gateway, the switches of a drain) and **admission**, the stage before any upstream
//! call: everything that can be checked is, and the upload waits for its account's turn.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, HeaderValue, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{
    calls::Calls,
    digest,
    stages::{self, Upload},
};
use crate::{
    config::{Config, UploadConfig},
    error::GatewayError,
    policy::{
        callers::{Caller, PerKey, Slot},
        pacing::{Pacing, Plan},
        quota::{Holder, Lease, Quota},
        retry::RetryPolicy,
    },
    telemetry,
    upstream::{Upstream, client::UploadRoute},
};

/// Header a client sets to `false` to have its upload left uncommitted (it commits later itself).
pub const NO_COMMIT_HEADER: &str = "x-chunkgate-commit";

/// Shared state of all uploads.
pub struct Uploads {
    /// The upload settings in force (part sizes held to the upstream's request cap).
    pub config: UploadConfig,
    /// How long an upload waits for its account's quota.
    quota_wait: Duration,
    retry: Arc<RetryPolicy>,
    pacing: Arc<dyn Pacing>,
    quota: Arc<dyn Quota>,
    slots: Arc<Semaphore>,
    /// Budget in KiB (a semaphore counts in u32).
    budget: Arc<Semaphore>,
    /// Part PUTs on the wire now, over all uploads.
    parts_in_flight: Arc<AtomicUsize>,
    /// The upload ids creates were answered with (see `stages::NamedIds`).
    named: Arc<super::stages::NamedIds>,
    draining: AtomicBool,
    cancel: watch::Sender<bool>,
    /// Uploads running per caller.
    callers: Arc<PerKey<Caller>>,
    max_per_caller: usize,
    /// Time the finish (checksum read, commit) may need: the body must end this long before the
    /// upload expires.
    finish_reserve: Duration,
    /// Deletes going on after their uploads answered: the drain waits for them.
    pub background: Arc<crate::pipeline::calls::Background>,
    /// The tasks driving uploads, counted: an event loop that stops lets those it runs finish
    /// their cleanup (delete upstream) before it ends (see `ConnLimits::settle`).
    pub drivers: Arc<crate::pipeline::calls::Outstanding>,
}

/// Where an upload goes: the parts of its request target the upstream needs.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// Everything before `/v2.1` or `/v2` in the client's path.
    pub prefix: &'a str,
    pub version: &'a str,
    pub account: &'a str,
}

/// An upload that may start: its stages (holding its plan of calls and its room in the member's
/// quota), what the client asked for, and what it holds while it runs (an upload slot, its
/// caller's slot).
pub struct Admitted {
    pub upload: Upload,
    /// The document's declared length.
    pub declared: Option<u64>,
    /// The client's `Content-Digest` (sha-256).
    pub client_digest: Vec<[u8; 32]>,
    /// Commit when done (`X-Chunkgate-Commit: false` leaves it to the client).
    pub commit: bool,
    pub held: Held,
}

/// Given back when dropped, at the end of the upload.
pub struct Held {
    _slot: OwnedSemaphorePermit,
    _caller: Slot<Caller>,
}

/// What a request says of the upload it starts, before anything is held for it.
struct Asked {
    auth: HeaderValue,
    declared: Option<u64>,
    client_digest: Vec<[u8; 32]>,
    commit: bool,
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
            named: Arc::default(),
            // Idle buffers are memory too: at most a quarter of the budget, and only what it has free.
            retry: Arc::new(RetryPolicy::new(config.retry.clone())),
            quota_wait: Duration::from_secs(config.quota.wait_secs),
            pacing,
            quota,
            draining: AtomicBool::new(false),
            cancel: watch::channel(false).0,
            callers: PerKey::new(),
            max_per_caller: config.server.max_uploads_per_caller,
            finish_reserve,
            background: Arc::default(),
            drivers: Arc::default(),
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

    /// Turns true when running uploads are to be cancelled.
    pub fn cancellation(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }

    /// **Admit**: refuses at once what cannot succeed, takes the caller's and an upload slot, then
    /// waits (bounded) for room in the member's quota and, at the same time, for the account's
    /// hourly budget to hold the upload's plan of calls. No upstream call is made.
    pub async fn admit(
        &self,
        upstream: Arc<Upstream>,
        headers: &HeaderMap,
        to: Destination<'_>,
        caller: Caller,
    ) -> Result<Admitted, GatewayError> {
        if self.is_draining() {
            return Err(GatewayError::ShuttingDown);
        }
        let asked = self.asked(headers)?;
        let busy = || GatewayError::GatewayBusy { retry_after: Duration::from_secs(1) };
        let caller_slot = self.callers.try_take(caller, self.max_per_caller).ok_or_else(busy)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| busy())?;
        let bytes = asked.declared.unwrap_or(self.config.max_document_bytes);
        let queued = std::time::Instant::now();
        let member = crate::policy::quota::member_of(asked.auth.as_bytes());
        let holder = Holder { account: to.account, member: &member };
        let planned = stages::planned(&self.config, asked.declared, asked.commit);
        // Both at once (with Redis, one round trip rather than two); whichever is taken is given
        // back when the other is refused.
        let (lease, plan) = tokio::join!(
            Lease::take(&self.quota, holder, bytes, self.quota_wait),
            Plan::reserve(&self.pacing, to.account, planned.calls, self.pacing.default_deadline()),
        );
        metrics::histogram!(telemetry::QUEUE_WAIT).record(queued.elapsed().as_secs_f64());
        let Some(lease) = lease else {
            telemetry::count_refusal(to.account, "quota");
            return Err(GatewayError::QuotaBusy { retry_after: self.quota_wait.max(Duration::from_secs(1)) });
        };
        let plan = plan.map_err(|wait| {
            telemetry::count_refusal(to.account, "plan");
            tracing::info!(calls = planned.calls, "the account's hourly budget cannot hold the upload's plan");
            GatewayError::RateLimited { retry_after: wait }
        })?;
        // Admitted: counted once the quota and the hour hold it (refusals count as failures only).
        metrics::counter!(telemetry::UPLOADS_STARTED).increment(1);
        let route = UploadRoute {
            prefix: to.prefix.to_owned(),
            version: to.version.to_owned(),
            account: to.account.to_owned(),
            auth: asked.auth,
            request_id: headers.get(crate::upstream::client::REQUEST_ID).cloned(),
        };
        let mut upload = self.upload(upstream, route, Arc::new(plan), planned.finish);
        upload.lease = Some(lease);
        Ok(Admitted {
            upload,
            declared: asked.declared,
            client_digest: asked.client_digest,
            commit: asked.commit,
            held: Held { _slot: slot, _caller: caller_slot },
        })
    }

    /// What the request's headers say, refused when they cannot lead to an upload.
    fn asked(&self, headers: &HeaderMap) -> Result<Asked, GatewayError> {
        let auth = headers
            .get(header::AUTHORIZATION)
            .filter(|v| v.as_bytes().len() > 7)
            .cloned()
            .ok_or(GatewayError::MissingToken)?;
        let declared = match headers.get(header::CONTENT_LENGTH) {
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
        let client_digest = digest::sha256_of(headers).map_err(|()| GatewayError::BadContentDigest)?;
        // `true` or `false`, once: another value, or two, would have committed an upload the
        // client may have meant to keep open.
        let mut values = headers.get_all(NO_COMMIT_HEADER).iter().map(|v| v.as_bytes().trim_ascii());
        let commit = match (values.next(), values.next()) {
            (None, _) => true,
            (Some(v), None) if v.eq_ignore_ascii_case(b"true") => true,
            (Some(v), None) if v.eq_ignore_ascii_case(b"false") => false,
            _ => return Err(GatewayError::BadRequest("X-Chunkgate-Commit must be true or false, once".into())),
        };
        Ok(Asked { auth, declared, client_digest, commit })
    }

    /// Deletes upload `id`, which a previous run of this gateway created and could not finish
    /// (the process was killed); its call comes from the account's free budget. Whether it
    /// worked (or the upload was gone already).
    pub async fn delete_left_open(&self, upstream: Arc<Upstream>, route: UploadRoute, id: &str) -> bool {
        let Ok(plan) = Plan::reserve(&self.pacing, &route.account, 1, self.pacing.default_deadline()).await else {
            return false;
        };
        let mut upload = self.upload(upstream, route, Arc::new(plan), 0);
        upload.state.upstream_id = Some(id.to_owned());
        upload.delete().await
    }

    /// A new upload along `route`, under the policies, its calls drawn from `plan` (keeping
    /// `finish` calls and the delete for the end).
    fn upload(&self, upstream: Arc<Upstream>, route: UploadRoute, plan: Arc<Plan>, finish: u32) -> Upload {
        let calls = Calls {
            upstream,
            retry: self.retry.clone(),
            pacing: self.pacing.clone(),
            quota: self.quota.clone(),
            route,
            // Until create announces the upload's expiry, the longest a call may wait.
            deadline: self.pacing.default_deadline(),
            used: Arc::new(AtomicU32::new(0)),
            plan,
            keep: finish + 1,
            background: self.background.clone(),
        };
        Upload::new(
            calls,
            self.config.clone(),
            (self.budget.clone(), self.parts_in_flight.clone()),
            self.named.clone(),
            self.finish_reserve,
            finish,
        )
    }
}
