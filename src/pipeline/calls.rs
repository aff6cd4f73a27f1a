//! The upstream calls of one upload, each retried as `retry.rs` classifies its outcome. Where the
//! outcome is unknown the upload is looked up before anything is sent again: the upstream refuses to
//! replace a part, so a part that did arrive must not be sent twice, and is never renumbered.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use http::StatusCode;
use tokio::time::Instant;

use crate::{
    error::GatewayError,
    pipeline::part::PartJson,
    policy::{
        pacing::{Draw, Pacing, Plan},
        quota::Quota,
        retry::{Class, RetryPolicy, classify, exhausted},
    },
    telemetry,
    upstream::{Answer, CallError, Upstream, client::UploadRoute},
};

/// Why an upload ended after create; either way the upstream upload is deleted.
pub enum Abort {
    Gateway(GatewayError),
    /// An upstream refusal, passed to the client verbatim.
    Upstream(Box<Answer>),
}

impl From<GatewayError> for Abort {
    fn from(e: GatewayError) -> Self {
        Abort::Gateway(e)
    }
}

/// What a create came back with.
pub enum Created {
    Answered(Answer),
    /// A 2xx answer whose body did not arrive whole: the upload may exist, and the body, as far
    /// as it came, may name it.
    CutOff {
        partial: Answer,
        abort: Abort,
    },
}

/// Whether the upstream holds a part.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Held,
    Absent,
}

/// One upload's view of the upstream: where its calls go, and the policies they run under.
#[derive(Clone)]
pub struct Calls {
    pub upstream: Arc<Upstream>,
    pub retry: Arc<RetryPolicy>,
    pub pacing: Arc<dyn Pacing>,
    /// The member's ledger, told when a delete ends the upload.
    pub quota: Arc<dyn Quota>,
    pub route: UploadRoute,
    /// Nothing is attempted after this (the upload's expiry, less a margin).
    pub deadline: Instant,
    /// Calls sent so far for this upload, by all its clones.
    pub used: Arc<AtomicU32>,
    /// The upload's reserved calls, given back when the last clone is gone.
    pub plan: Arc<Plan>,
    /// Where a delete that goes on in the background runs (the drain waits for it).
    pub background: Arc<Background>,
    /// Calls of the plan these calls leave for later stages (the finish, the delete).
    pub keep: u32,
}

/// What an attempt's class says to do when no reconciliation applies.
enum Step {
    Done(Result<Answer, Abort>),
    Again,
}

// === impl Calls ===

impl Calls {
    /// One call under the pacing: a permit first (waiting no longer than `rate_limit.max_wait_secs`,
    /// nor past the upload's deadline), then the call, then its answer shown to the pacing.
    async fn paced(&self, call: impl Future<Output = Result<Answer, CallError>>) -> Result<Answer, CallError> {
        self.paced_until(self.deadline.min(self.pacing.default_deadline()), call).await
    }

    /// The same, waiting for a permit until `deadline`.
    async fn paced_until(
        &self,
        deadline: Instant,
        call: impl Future<Output = Result<Answer, CallError>>,
    ) -> Result<Answer, CallError> {
        let account = &self.route.account;
        let draw = Draw::Plan { plan: self.plan.id(), keep: self.keep };
        self.pacing.acquire(account, draw, deadline).await.map_err(CallError::RateLimited)?;
        self.used.fetch_add(1, Ordering::Relaxed);
        let result = call.await;
        if let Ok(answer) = &result {
            let code = if answer.status.is_client_error() { answer.error_code(self.upstream.dialect) } else { None };
            self.pacing.observe(account, answer.status, &answer.headers, code.as_deref());
        }
        result
    }

    fn refused(answer: Answer) -> Result<Answer, Abort> {
        Err(Abort::Upstream(Box::new(answer)))
    }

    /// The common handling of a class: success returns, refusals pass on, throttling and
    /// retryable failures go round again while the attempts allow.
    async fn step(
        &self,
        tries: &mut crate::policy::retry::Attempts<'_>,
        class: Class,
        result: Result<Answer, CallError>,
    ) -> Step {
        match (class, result) {
            (Class::Success, Ok(answer)) => Step::Done(Ok(answer)),
            (Class::Refused, Ok(answer)) => Step::Done(Self::refused(answer)),
            (Class::GiveUp(err), _) => Step::Done(Err(err.into())),
            (Class::Throttled, result) => {
                if tries.throttled() {
                    Step::Again
                } else {
                    Step::Done(Err(match result {
                        Ok(a) => Abort::Upstream(Box::new(a)),
                        Err(e) => exhausted(&Err(e)).into(),
                    }))
                }
            }
            (_, result) => {
                if again(tries, &result, "upstream call failed").await {
                    Step::Again
                } else {
                    Step::Done(Err(exhausted(&result).into()))
                }
            }
        }
    }

    /// Create with part 0. Sent again only when nothing reached the upstream or it throttled the
    /// call: an attempt that may have been applied is never repeated, because the upload it may
    /// have made cannot be found again (no id was seen and the API cannot list uploads). One client
    /// request so makes at most one upload whose fate is unknown; it expires upstream.
    pub async fn create(&self, json: &PartJson) -> Result<Created, Abort> {
        let mut tries = self.retry.attempts(self.deadline);
        loop {
            let mut cut_off = None;
            let result = self.paced(self.upstream.create(&self.route, json.clone(), &mut cut_off)).await;
            let class = classify(&result, self.upstream.dialect);
            if class == Class::Ambiguous {
                tracing::warn!(status = status_of(&result), outcome = %describe(&result), "create outcome unknown; not sent again");
                let abort = Abort::from(match result {
                    Err(CallError::BadAnswer(detail)) => GatewayError::CreatedUnreadable(detail),
                    Ok(answer) => GatewayError::UploadOutcomeUnknown(format!("it answered {}", answer.status)),
                    Err(CallError::Timeout(_)) => {
                        GatewayError::UploadOutcomeUnknown("it did not answer in time".into())
                    }
                    Err(_) => GatewayError::UploadOutcomeUnknown("the connection broke before its answer".into()),
                });
                // A 2xx answer cut short may still name the upload it made.
                return match cut_off {
                    Some(partial) => Ok(Created::CutOff { partial, abort }),
                    None => Err(abort),
                };
            }
            if let Step::Done(out) = self.step(&mut tries, class, result).await {
                return out.map(Created::Answered);
            }
        }
    }

    /// GET the upload (with its checksum when asked); idempotent, so simply retried.
    pub async fn get(&self, id: &str, checksum: bool) -> Result<Answer, Abort> {
        let mut tries = self.retry.attempts(self.deadline);
        loop {
            let result = self.paced(self.upstream.get(&self.route, id, checksum)).await;
            let class = classify(&result, self.upstream.dialect);
            if let Step::Done(out) = self.step(&mut tries, class, result).await {
                return out;
            }
        }
    }

    /// Part `seq`, `len` raw bytes, already encoded as `json`. The same bytes go out under the same
    /// sequence on every attempt.
    pub async fn put_part(&self, id: &str, seq: u32, json: &PartJson, len: u64) -> Result<(), Abort> {
        let dialect = self.upstream.dialect;
        let mut tries = self.retry.attempts(self.deadline);
        let mut maybe_applied = false;
        loop {
            let result = self.paced(self.upstream.add_part(&self.route, id, seq, json.clone())).await;
            let class = classify(&result, dialect);
            match (class, result) {
                (Class::Success, Ok(answer)) => {
                    tracing::debug!(attempt = tries.count(), status = answer.status.as_u16(), "part accepted");
                    // A 2xx whose body is not an upload resource (cut short, not JSON, empty) says
                    // nothing either way: the upload is looked at, as after an unknown outcome.
                    if let Err(why) = answer.resource(dialect) {
                        maybe_applied = true;
                        if self.reconcile(id, seq, len).await? == Seen::Held {
                            return Ok(());
                        }
                        if !again(&mut tries, &Ok(answer), "part answered unreadably and not held").await {
                            return Err(GatewayError::UpstreamBadResponse(why).into());
                        }
                        continue;
                    }
                    return check_listed(&answer, dialect, (id, seq, len));
                }
                (Class::Ambiguous, result) => {
                    maybe_applied = true;
                    if self.reconcile(id, seq, len).await? == Seen::Held {
                        return Ok(());
                    }
                    if !again(&mut tries, &result, "part not received").await {
                        return Err(exhausted(&result).into());
                    }
                }
                // A refusal after an attempt that may have landed (typically "part already
                // exists"): look before calling it a failure.
                (Class::Refused, Ok(answer)) if maybe_applied => {
                    return match self.reconcile(id, seq, len).await? {
                        Seen::Held => Ok(()),
                        Seen::Absent => Err(Abort::Upstream(Box::new(answer))),
                    };
                }
                (class, result) => match self.step(&mut tries, class, result).await {
                    Step::Done(out) => return out.map(|_| ()),
                    Step::Again => {}
                },
            }
        }
    }

    /// Whether the upstream holds part `seq` with `len` bytes. Another size means the upload
    /// cannot be completed.
    async fn reconcile(&self, id: &str, seq: u32, len: u64) -> Result<Seen, Abort> {
        telemetry::count_reconciliation();
        let answer = self.get(id, false).await?;
        let resource = answer.resource_of(self.upstream.dialect, id).map_err(GatewayError::UpstreamBadResponse)?;
        let seen = match resource.part_size(seq) {
            Some(held) if held == len => Seen::Held,
            Some(held) => return Err(GatewayError::UpstreamPartConflict { seq, held, sent: len }.into()),
            None => Seen::Absent,
        };
        tracing::info!(seq, seen = ?seen, "reconciled a part after an unknown outcome");
        Ok(seen)
    }

    /// Commit; an unknown outcome is settled by looking at `committed`.
    pub async fn commit(&self, id: &str) -> Result<Answer, Abort> {
        let dialect = self.upstream.dialect;
        let mut tries = self.retry.attempts(self.deadline);
        let mut maybe_applied = false;
        loop {
            let result = self.paced(self.upstream.commit(&self.route, id)).await;
            let class = classify(&result, dialect);
            // A success must say so: the upload resource, committed. Anything else under a 2xx (an
            // HTML page, `{}`, an error body) is looked at before it is believed.
            let doubtful = class == Class::Success
                && !result.as_ref().is_ok_and(|a| a.resource_of(dialect, id).is_ok_and(|r| r.is_committed()));
            let ambiguous = class == Class::Ambiguous;
            maybe_applied |= ambiguous;
            if ambiguous || doubtful || (class == Class::Refused && maybe_applied) {
                telemetry::count_reconciliation();
                let seen = self.get(id, false).await?;
                if seen.resource_of(dialect, id).is_ok_and(|r| r.is_committed()) {
                    return Ok(seen);
                }
                if doubtful {
                    let status = status_of(&result);
                    return Err(GatewayError::UpstreamBadResponse(format!(
                        "the commit was answered {status} but the upload is not committed"
                    ))
                    .into());
                }
            }
            if let Step::Done(out) = self.step(&mut tries, class, result).await {
                return out;
            }
        }
    }

    /// The member the upload's token names (the quota's key).
    fn member(&self) -> String {
        crate::policy::quota::member_of(self.route.auth.as_bytes())
    }

    /// Deletes the upload after a failure, so it does not count against the member's quota,
    /// trying until `deadline` (the upload's own may already be spent). Its call is the one the
    /// plan held back. Once the upload is gone, the member's ledger forgets it.
    pub async fn delete(&self, id: &str, deadline: Instant) -> Deleted {
        let deleted = self.delete_once(id, deadline).await;
        if deleted == Deleted::Yes {
            self.quota.forget(&self.member(), &[id.to_owned()]).await;
        }
        deleted
    }

    /// Deletes the upload in the background after a delete that could not be made at once: tried
    /// again, further and further apart (up to a minute), until `until` (the upload's expiry), unless
    /// the upstream refuses it for good.
    pub async fn delete_until(&self, id: &str, until: Instant) -> bool {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            match self.delete_once(id, until).await {
                Deleted::Yes => {
                    self.quota.forget(&self.member(), &[id.to_owned()]).await;
                    return true;
                }
                Deleted::Refused => return false,
                Deleted::NotYet if Instant::now() + wait < until => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(60));
                }
                Deleted::NotYet => return false,
            }
        }
    }

    async fn delete_once(&self, id: &str, deadline: Instant) -> Deleted {
        let this = Calls { deadline, keep: 0, ..self.clone() };
        let mut tries = this.retry.attempts(this.deadline);
        let mut maybe_applied = false;
        loop {
            // The delete may wait for the pacing as long as its own deadline allows (a deferred
            // delete waits out an account's pause).
            let result = this.paced_until(deadline, this.upstream.delete(&this.route, id)).await;
            let class = classify(&result, this.upstream.dialect);
            maybe_applied |= class == Class::Ambiguous;
            match (&class, &result) {
                (Class::Success, _) => return Deleted::Yes,
                // An earlier attempt did it.
                (Class::Refused, Ok(a)) if maybe_applied && a.status == StatusCode::NOT_FOUND => return Deleted::Yes,
                _ => {}
            }
            let refused = class == Class::Refused;
            match this.step(&mut tries, class, result).await {
                Step::Done(Ok(_)) => return Deleted::Yes,
                Step::Done(Err(_)) if refused => return Deleted::Refused,
                Step::Done(Err(_)) => return Deleted::NotYet,
                Step::Again => {}
            }
        }
    }
}

/// Work that must be let finish before the process ends, counted: a drain waits for it.
#[derive(Default)]
pub struct Outstanding {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// Counts one piece of work as ended when dropped: done, or dropped with its runtime.
pub struct Counted(Arc<Outstanding>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Outstanding {
    /// Counts a piece of work until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Counted {
        self.running.fetch_add(1, Ordering::SeqCst);
        Counted(self.clone())
    }

    /// Work still running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Waits until nothing runs, or `deadline`; whether nothing runs.
    pub async fn settled(&self, deadline: Instant) -> bool {
        loop {
            let done = self.done.notified();
            if self.running() == 0 {
                return true;
            }
            tokio::select! {
                () = done => {}
                () = tokio::time::sleep_until(deadline) => return self.running() == 0,
            }
        }
    }
}

/// Work an upload leaves running in the background (deferred deletes), counted so that a drain can
/// wait for it. It runs on the runtime the gateway was made on, which outlives the drain (the
/// event loops of `server.scheduler = "per-thread"` stop with their connections).
pub struct Background {
    work: Arc<Outstanding>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Default for Background {
    fn default() -> Self {
        Self { work: Arc::default(), runtime: tokio::runtime::Handle::try_current().ok() }
    }
}

impl Background {
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let running = self.work.enter();
        let work = async move {
            let _running = running;
            work.await;
        };
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(work)),
            None => drop(tokio::spawn(work)),
        }
    }

    /// Work still running.
    pub fn running(&self) -> usize {
        self.work.running()
    }

    /// Waits until nothing runs, or `deadline`; whether nothing runs.
    pub async fn settled(&self, deadline: Instant) -> bool {
        self.work.settled(deadline).await
    }
}

/// How one try at a delete ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    /// A final refusal (the upload is not there, the token no longer holds): trying again is
    /// pointless.
    Refused,
    /// Retries spent, a pacing wait past the deadline, the upstream failing: it may work later.
    NotYet,
}

/// A part's answer lists the parts received so far; ours must be there with our size.
fn check_listed(
    answer: &Answer,
    dialect: crate::upstream::dialect::Dialect,
    (id, seq, len): (&str, u32, u64),
) -> Result<(), Abort> {
    let resource = answer.resource(dialect).map_err(GatewayError::UpstreamBadResponse)?;
    // A minimal answer (no id, no parts) says nothing either way: the finish's read checks.
    if !resource.chunked_upload_id.is_empty() && !resource.has_id(id) {
        return Err(GatewayError::UpstreamBadResponse(format!("the answer to part {seq} names another upload")).into());
    }
    if resource.chunked_upload_parts.is_empty() {
        return Ok(());
    }
    match resource.part_size(seq) {
        Some(held) if held == len => Ok(()),
        Some(held) => Err(GatewayError::UpstreamPartConflict { seq, held, sent: len }.into()),
        None => Err(GatewayError::UpstreamBadResponse(format!("the answer to part {seq} does not list it")).into()),
    }
}

/// The answer's status, 0 when there was none.
/// Waits the backoff before another attempt after `result`, logging `what` happened and whether it
/// is tried again; `false` when no attempt is left.
async fn again(tries: &mut crate::policy::retry::Attempts<'_>, result: &Result<Answer, CallError>, what: &str) -> bool {
    let (attempt, status, outcome) = (tries.count(), status_of(result), describe(result));
    let Some(wait) = tries.backoff() else {
        tracing::info!(attempt, status, %outcome, "{what}; no attempts left");
        return false;
    };
    tracing::info!(attempt, status, %outcome, "{what}; trying again");
    tokio::time::sleep(wait).await;
    true
}

fn status_of(result: &Result<Answer, CallError>) -> u16 {
    result.as_ref().map_or(0, |a| a.status.as_u16())
}

fn describe(result: &Result<Answer, CallError>) -> String {
    match result {
        Ok(a) => format!("status {}", a.status),
        Err(e) => e.to_string(),
    }
}
