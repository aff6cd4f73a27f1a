//! One upload driven through its stages: **open** (create with part 0), **feed** (parts 1..n),
//! **finish** (verify, then commit) or **abort** (delete). An ingress decides when each runs and
//! what the client hears; the stages do the upstream's part, keep the [`UploadState`] and hold the
//! upload to its limits. (Admission, the stage before open, is `Uploads::admit`.)

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderValue, header};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::Instrument;

use super::{
    calls::{Abort, Calls, Created, Deleted},
    chunker::Part,
    part,
    state::{Announced, UploadState},
};
use crate::{
    config::UploadConfig,
    error::{Deletion, GatewayError},
    ids::valid_upload_id,
    policy::quota::{Lease, unix_now},
    telemetry,
    upstream::{Answer, resource::ChunkedUpload},
};

/// Margin kept before the upload's expiry: past it, no call is attempted.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// An upload's lifetime upstream (DocuSign: 20 minutes), assumed until create announces its expiry.
pub const ASSUMED_LIFETIME: Duration = Duration::from_secs(20 * 60);

/// Time given to deleting an upload after a failure.
const DELETE_WINDOW: Duration = Duration::from_secs(30);

/// One upload: its state, its view of the upstream, and the shared means it draws on.
pub struct Upload {
    pub state: UploadState,
    pub calls: Calls,
    /// Its room in the member's quota: a lease until create, then the upload's own entry.
    pub lease: Option<Lease>,
    config: UploadConfig,
    budget: Arc<Semaphore>,
    parts_in_flight: Arc<AtomicUsize>,
    /// The upload ids this process's creates were answered with.
    named: Arc<NamedIds>,
    /// Time the finish (checksum read, commit) may need before the upload expires.
    finish_reserve: Duration,
    /// Calls the finish makes (checksum read, commit), held back in the plan with the delete.
    finish: u32,
    /// The size the member's quota holds for the upload (the lease's, then each resize).
    sized: Option<u64>,
}

/// An upload's plan of calls, before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Create, the parts, the finish and one delete held back for cleanup.
    pub calls: u32,
    /// The finish's calls: the checksum read (when verifying, or leaving the commit to the
    /// client) and the commit (unless left to the client).
    pub finish: u32,
}

/// The plan of an upload of `declared` bytes (unknown: part 0 alone, the plan grows as the stream
/// does), committed by the gateway or not.
pub fn planned(c: &UploadConfig, declared: Option<u64>, commit: bool) -> Planned {
    let finish = u32::from(c.verify_upstream_checksum || !commit) + u32::from(commit);
    let parts = match declared {
        None => 1,
        Some(len) => {
            let first = fit(len, c.assumed_max_parts, c) as u64;
            let rest = len.saturating_sub(first);
            let size = fit(rest, c.assumed_max_parts.saturating_sub(1).max(1), c) as u64;
            1 + rest.div_ceil(size) as u32
        }
    };
    Planned { calls: parts + finish + 1, finish }
}

/// What create told about time.
pub struct Opened {
    /// The document's bytes must all have arrived by then, for the finish to run in time.
    pub body_deadline: Instant,
    /// The upload has only this many seconds to live: too little to finish it.
    pub too_short: Option<u64>,
}

/// What the finish could verify of the bytes the upstream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The upstream's SHA-256 equals the gateway's.
    Checksum,
    /// The answer had no checksum: part sizes and the total were compared.
    SizesOnly,
    /// `upload.verify_upstream_checksum` is off.
    Skipped,
}

// === impl Upload ===

impl Upload {
    pub fn new(
        calls: Calls,
        config: UploadConfig,
        (budget, parts_in_flight): (Arc<Semaphore>, Arc<AtomicUsize>),
        named: Arc<NamedIds>,
        finish_reserve: Duration,
        finish: u32,
    ) -> Self {
        Self {
            state: UploadState::default(),
            calls,
            lease: None,
            config,
            budget,
            parts_in_flight,
            named,
            finish_reserve,
            finish,
            sized: None,
        }
    }

    pub fn dialect(&self) -> crate::config::Dialect {
        self.calls.upstream.dialect
    }

    /// Parts on the wire at once (`upload.max_in_flight`).
    pub fn max_in_flight(&self) -> usize {
        self.config.max_in_flight
    }

    /// The deadline of a body before create has said when the upload expires.
    pub fn assumed_body_deadline(&self, began: Instant) -> Instant {
        began + ASSUMED_LIFETIME - self.finish_reserve.min(ASSUMED_LIFETIME / 2)
    }

    /// The size of part 0: with a declared length, fitted into the parts the upstream is assumed
    /// to allow.
    pub fn first_part_size(&self, declared: Option<u64>) -> usize {
        match declared {
            Some(len) => fit(len, self.config.assumed_max_parts, &self.config),
            // A byte past the limit is enough to refuse the document (see `part_bound`).
            None => {
                self.config.part_size.min(usize::try_from(self.config.max_document_bytes + 1).unwrap_or(usize::MAX))
            }
        }
    }

    /// Its share of the memory budget for a part of `size` bytes, waited for.
    pub async fn reserve(&self, size: usize) -> OwnedSemaphorePermit {
        let cost = budget_cost(size, &self.config);
        self.budget.clone().acquire_many_owned(cost).await.expect("the budget is never closed")
    }

    /// **Open**: creates the upload with part 0. A refusal, or a failure before any upload is
    /// known to exist, leaves nothing to delete.
    pub async fn open(&mut self, part0: &Part) -> Result<Opened, Abort> {
        let dialect = self.dialect();
        // A document of unknown length is held to `upload.max_document_bytes` as it arrives (what
        // its quota reserved): from part 0 on, and through the announced total below.
        if part0.len as u64 > self.config.max_document_bytes {
            return Err(GatewayError::PayloadTooLarge { limit: self.config.max_document_bytes }.into());
        }
        // Not cancelled half-way: a create whose answer is lost leaves an upload nobody can delete.
        let created = match self.calls.create(&part0.body).await? {
            Created::Answered(created) => created,
            Created::CutOff { partial, abort } => return Err(self.unreadable_create(&partial, abort).await),
        };
        let resource = match created_resource(&created, dialect) {
            Ok(resource) => resource,
            Err(abort) => return Err(self.unreadable_create(&created, abort).await),
        };
        let left = time_to_live(&resource.expiration_date_time, created.headers.get(header::DATE));
        if !self.named.claim(&resource.chunked_upload_id, unix_now() + left.as_secs()) {
            // The id of another upload of this process (running, or committed and unexpired):
            // its calls would fail, and the cleanup would delete the other's upload. Whatever the
            // create made (if anything) cannot be named.
            return Err(GatewayError::CreatedUnreadable("create answered the id of another upload".into()).into());
        }
        tracing::Span::current().record("upload_id", resource.chunked_upload_id.as_str());
        let expiry = Instant::now() + left;
        // Calls stop this long before the upload expires; less than that to live is too little.
        let margin = EXPIRY_MARGIN.min(self.finish_reserve);
        self.calls.deadline = expiry - margin.min(left);
        let part0_len = part0.len as u64;
        if let Some(lease) = &mut self.lease {
            lease.created(&resource.chunked_upload_id, unix_now() + left.as_secs()).await;
            self.sized = Some(lease.bytes());
        }
        let announced = Announced {
            max_parts: resource.max_parts().unwrap_or(self.config.assumed_max_parts),
            max_total: resource.max_total().unwrap_or(u64::MAX).min(self.config.max_document_bytes),
            part0: part0_len,
        };
        self.state = UploadState {
            upstream_id: Some(resource.chunked_upload_id),
            deadline_unix: unix_now() + left.saturating_sub(margin).as_secs(),
            announced: Some(announced),
            expires: resource.expiration_date_time,
            next_seq: 1,
            accepted: vec![0],
            sizes: vec![part0_len],
            bytes: part0_len,
            hashed: part0_len,
            ..UploadState::default()
        };
        // The rest of the body must arrive in time for the finish to run before the upload expires.
        let body_deadline = expiry - self.finish_reserve.min(left / 2);
        Ok(Opened { body_deadline, too_short: (left <= margin).then_some(left.as_secs()) })
    }

    /// A create answered with a resource that cannot be read. If it still names an upload in the
    /// shape of an id (a field of the wrong type beside it), that upload exists: it is deleted
    /// rather than left open. Otherwise (or if the delete fails) nothing can be done about it.
    async fn unreadable_create(&mut self, created: &Answer, abort: Abort) -> Abort {
        let Some(id) = created.named_upload(self.dialect()) else { return abort };
        if !self.named.claim(&id, unix_now() + ASSUMED_LIFETIME.as_secs()) {
            return abort;
        }
        self.state.upstream_id = Some(id);
        let deleted = self.delete().await;
        self.state = UploadState::default();
        tracing::warn!(deleted, "create answered an unreadable resource naming an upload; deleting it");
        match abort {
            Abort::Gateway(err) if deleted => {
                let why = err.detail().unwrap_or("the create's answer broke off");
                GatewayError::UpstreamBadResponse(format!("{why}; the upload it named was deleted")).into()
            }
            abort => abort,
        }
    }

    /// **Adopt**: takes over upload `id`, which an earlier run of this gateway created and fed
    /// (it died), from where the upstream holds it: parts 0..k, contiguous, reconciled with a GET
    /// of the upload. None when it cannot go on (gone, committed, a gap, too little time left): it
    /// is then deleted if it exists, and the caller opens a new one.
    pub async fn adopt(&mut self, id: &str) -> Option<Opened> {
        let Ok(found) = self.calls.get(id, false).await else {
            // Not to be read (gone, expired, or the upstream failing): not continued, and deleted
            // if it is there at all, rather than left open and forgotten.
            self.discard(id).await;
            return None;
        };
        let usable = found.resource(self.dialect()).ok().filter(|r| r.chunked_upload_id == id && !r.is_committed());
        let left = usable
            .as_ref()
            .map_or(Duration::ZERO, |r| time_to_live(&r.expiration_date_time, found.headers.get(header::DATE)));
        let sizes: Vec<u64> = match &usable {
            Some(r) => (0..).map_while(|seq| r.part_size(seq)).collect(),
            None => Vec::new(),
        };
        let margin = EXPIRY_MARGIN.min(self.finish_reserve);
        let whole = usable.as_ref().is_some_and(|r| sizes.len() == r.chunked_upload_parts.len());
        let (Some(resource), true, false, true) =
            (usable, whole, sizes.is_empty(), left > margin + self.finish_reserve)
        else {
            self.discard(id).await;
            return None;
        };
        tracing::Span::current().record("upload_id", id);
        self.named.adopt(id, unix_now() + left.as_secs());
        let expiry = Instant::now() + left;
        self.calls.deadline = expiry - margin;
        if let Some(lease) = &mut self.lease {
            lease.created(id, unix_now() + left.as_secs()).await;
            self.sized = Some(lease.bytes());
        }
        let bytes: u64 = sizes.iter().sum();
        let parts = sizes.len() as u32;
        self.state = UploadState {
            upstream_id: Some(id.to_owned()),
            deadline_unix: unix_now() + left.saturating_sub(margin).as_secs(),
            announced: Some(Announced {
                max_parts: resource.max_parts().unwrap_or(self.config.assumed_max_parts),
                max_total: resource.max_total().unwrap_or(u64::MAX).min(self.config.max_document_bytes),
                part0: sizes[0],
            }),
            expires: resource.expiration_date_time,
            part_size: if parts > 1 { sizes[1] as usize } else { 0 },
            next_seq: parts,
            accepted: (0..parts).collect(),
            bytes,
            hashed: bytes,
            sizes,
            ..UploadState::default()
        };
        Some(Opened { body_deadline: expiry - self.finish_reserve.min(left / 2), too_short: None })
    }

    /// Deletes upload `id` (one that cannot be adopted), if it is there.
    async fn discard(&mut self, id: &str) {
        self.state.upstream_id = Some(id.to_owned());
        let deleted = self.delete().await;
        tracing::info!(deleted, "an upload an earlier run left could not be continued; deleted");
        self.state = UploadState::default();
    }

    /// The upstream's id of the upload (set by open).
    pub fn id(&self) -> &str {
        self.state.upstream_id.as_deref().unwrap_or_default()
    }

    fn announced(&self) -> Announced {
        self.state.announced.expect("set by open")
    }

    /// How much of the next part (of `size`) to read: no further than a byte past what the
    /// upload may still hold, so that a document of unknown length is refused as soon as it passes
    /// the limit rather than a whole part later.
    pub fn part_bound(&self, size: usize) -> usize {
        let room = self.announced().max_total.saturating_sub(self.state.bytes).saturating_add(1);
        size.min(usize::try_from(room).unwrap_or(usize::MAX))
    }

    /// The size of parts 1..n: with a declared length, fitted into the parts the upstream allows;
    /// refused when the document cannot fit at all.
    pub fn size_parts(&mut self, declared: Option<u64>) -> Result<usize, Abort> {
        if self.state.part_size > 0 {
            // Sized already (an adopted upload keeps the size its parts were sent with).
            return Ok(self.state.part_size);
        }
        let size = match declared {
            None => self.config.part_size,
            Some(len) => {
                let announced = self.announced();
                let capacity = announced.capacity(self.config.max_part_bytes);
                if len > capacity {
                    return Err(GatewayError::PayloadTooLarge { limit: capacity }.into());
                }
                let left = len.saturating_sub(self.state.bytes);
                // Never more parts than the plan counted with the parts assumed.
                let parts = announced.max_parts.min(self.config.assumed_max_parts);
                fit(left, parts.saturating_sub(1).max(1), &self.config)
            }
        };
        self.state.part_size = size;
        Ok(size)
    }

    /// **Feed**: takes the next part (`permit` holds its share of the memory budget) and returns
    /// the call that sends it, to run in a task of its own; it resolves to the part's sequence.
    /// Refused when the part would go past the announced limits.
    pub fn feed(
        &mut self,
        part: Part,
        permit: OwnedSemaphorePermit,
    ) -> Result<impl Future<Output = Result<u32, Abort>> + Send + 'static, Abort> {
        let announced = self.announced();
        let seq = self.state.next_seq;
        let bytes = self.state.bytes + part.len as u64;
        if seq >= announced.max_parts || bytes > announced.max_total {
            return Err(GatewayError::PayloadTooLarge { limit: announced.capacity(self.state.part_size) }.into());
        }
        self.state.next_seq += 1;
        self.state.bytes = bytes;
        self.state.hashed = bytes;
        self.state.sizes.push(part.len as u64);
        let span = tracing::info_span!("part", seq, bytes = part.len);
        let gauge = InFlight::enter(&self.parts_in_flight);
        let (calls, id) = (self.calls.clone(), self.id().to_owned());
        Ok(send_part(calls, id, seq, part, (permit, gauge)).instrument(span))
    }

    /// Makes room in the plan for one more part of a stream of unknown length, waiting for the
    /// account's budget no longer than calls may wait; refused with RATE_LIMITED when it cannot.
    pub async fn plan_part(&self, declared: Option<u64>) -> Result<(), Abort> {
        if declared.is_some() {
            return Ok(());
        }
        let deadline = self.calls.deadline.min(self.calls.pacing.default_deadline());
        self.calls.plan.grow(1, deadline).await.map_err(|wait| {
            telemetry::count_refusal(&self.calls.route.account, "call");
            GatewayError::RateLimited { retry_after: wait }.into()
        })
    }

    /// A part the upstream acknowledged.
    pub fn acknowledged(&mut self, seq: u32) {
        self.state.accepted.push(seq);
    }

    /// **Finish**, first half: reads the upload back and compares its checksum with `ours`.
    /// Without a checksum in the answer the part sizes and the total are compared instead (or, with
    /// `upload.require_upstream_checksum`, nothing is committed).
    pub async fn verify(&mut self, ours: &str) -> Result<(Answer, Checked), Abort> {
        // The commit (if planned) and the delete stay held back.
        self.calls.keep = self.finish;
        let answer = self.calls.get(self.id(), true).await?;
        // Not when the ledger holds that size already (a declared length the body kept to).
        if self.sized != Some(self.state.bytes) {
            self.calls.quota.resize(self.id(), self.state.bytes).await;
            self.sized = Some(self.state.bytes);
        }
        let resource = answer.resource_of(self.dialect(), self.id()).map_err(GatewayError::UpstreamBadResponse)?;
        if !self.config.verify_upstream_checksum {
            return Ok((answer, Checked::Skipped));
        }
        match resource.checksum.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            Some(theirs) if theirs.eq_ignore_ascii_case(ours) => Ok((answer, Checked::Checksum)),
            Some(theirs) => {
                let (upstream, actual) = (theirs.to_owned(), ours.to_owned());
                Err(GatewayError::UpstreamChecksumMismatch { upstream, actual }.into())
            }
            None if self.config.require_upstream_checksum => Err(GatewayError::UpstreamChecksumMissing.into()),
            None => {
                sizes_match(&resource, &self.state.sizes)?;
                tracing::warn!("the upstream's answer carries no checksum: sizes checked, bytes not verified");
                metrics::counter!(telemetry::CHECKSUM_UNVERIFIED).increment(1);
                Ok((answer, Checked::SizesOnly))
            }
        }
    }

    /// Whether the finish reads the upload back before committing.
    pub fn verifies(&self) -> bool {
        self.config.verify_upstream_checksum
    }

    /// **Finish**, second half: commits. The committed upload goes on counting against the
    /// member's quota, for its real size, until an envelope uses it or it expires.
    pub async fn commit(&mut self) -> Result<Answer, Abort> {
        self.calls.keep = 1;
        let answer = self.calls.commit(self.id()).await?;
        if self.sized != Some(self.state.bytes) {
            self.calls.quota.resize(self.id(), self.state.bytes).await;
        }
        // The client may use the upload at once, through any sidecar: the ledger knows of it
        // before the answer goes.
        self.calls.quota.settled(self.id()).await;
        Ok(answer)
    }

    /// **Abort**: deletes the upload upstream, so it does not count against the member's quota.
    /// After `RateLimited` the account is paused: the delete waits out the pause in the
    /// background, for as long as the upload lives.
    pub async fn abort(&mut self, reason: &Abort) -> Deletion {
        self.state.accepted.sort_unstable();
        if let Abort::Gateway(GatewayError::RateLimited { .. }) = reason {
            return self.defer_delete("rate limiting");
        }
        match self.delete_now().await {
            Deleted::Yes => {
                tracing::info!("upstream upload deleted");
                return Deletion::Deleted;
            }
            Deleted::Refused => {
                // For good (the token no longer holds, say): trying later would be refused too.
                tracing::warn!("the upstream refused to delete the upload; it expires on its own");
                return Deletion::Failed;
            }
            Deleted::NotYet => {}
        }
        // Not given up while the upload lives: the account may be paused past the delete's window
        // (a client that vanished just after a throttled part), or the upstream failing for a while.
        if Instant::now() < self.calls.deadline + EXPIRY_MARGIN {
            return self.defer_delete("a delete that could not be made at once");
        }
        tracing::warn!("the upstream upload could not be deleted; it expires on its own");
        Deletion::Failed
    }

    /// Deletes the upload in the background, waiting for the pacing as long as the upload lives.
    fn defer_delete(&self, after: &'static str) -> Deletion {
        let (calls, id, until) = (self.calls.clone(), self.id().to_owned(), self.calls.deadline + EXPIRY_MARGIN);
        self.calls.background.clone().spawn(
            async move {
                let deleted = calls.delete_until(&id, until).await;
                if deleted {
                    tracing::info!(after, "deferred delete done");
                } else {
                    tracing::warn!(after, "the upstream upload could not be deleted; it expires on its own");
                }
            }
            .in_current_span(),
        );
        Deletion::Deferred
    }

    /// Deletes the upload now (a committed one too); whether it worked.
    pub async fn delete(&self) -> bool {
        self.delete_now().await == Deleted::Yes
    }

    /// One delete now, within `DELETE_WINDOW`: done, refused for good, or not yet.
    async fn delete_now(&self) -> Deleted {
        self.calls.delete(self.id(), Instant::now() + DELETE_WINDOW).await
    }

    /// The state as of now, the calls counted.
    pub fn snapshot(&self) -> UploadState {
        let used = self.calls.used.load(Ordering::Relaxed);
        UploadState { calls_used: used, ..self.state.clone() }
    }
}

// === impl Checked ===

impl Checked {
    /// As `X-Chunkgate-Checksum` says it.
    pub fn name(self) -> &'static str {
        match self {
            Checked::Checksum => "verified",
            Checked::SizesOnly => "unverified",
            Checked::Skipped => "skipped",
        }
    }
}

/// The upload ids the upstream has named in answers to this process's creates, each until it
/// expires. An upstream that names one again for another create (a bug, or a lie) would have the
/// new upload's calls land on the old one and its cleanup delete it, committed or not.
#[derive(Default)]
pub struct NamedIds {
    ids: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl NamedIds {
    /// Records `id` until `expires` (Unix seconds); false if it is recorded and unexpired.
    pub fn claim(&self, id: &str, expires: u64) -> bool {
        let now = unix_now();
        let mut ids = self.ids.lock().unwrap();
        if ids.get(id).is_some_and(|&until| until > now) {
            return false;
        }
        // Expired entries go once the map has doubled since it was last swept.
        if ids.len() >= 1024 && ids.len().is_power_of_two() {
            ids.retain(|_, until| *until > now);
        }
        ids.insert(id.to_owned(), expires);
        true
    }

    /// Records `id`, which this process takes over (an upload an earlier run created).
    pub fn adopt(&self, id: &str, expires: u64) {
        self.ids.lock().unwrap().insert(id.to_owned(), expires);
    }
}

/// The upload resource of create's answer, if it names the upload in the shape of an id: the id
/// goes into the path of every later call.
fn created_resource(created: &Answer, dialect: crate::config::Dialect) -> Result<ChunkedUpload, Abort> {
    let unreadable = |detail: &str| Abort::from(GatewayError::CreatedUnreadable(detail.to_owned()));
    match created.resource(dialect) {
        Ok(r) if valid_upload_id(&r.chunked_upload_id) => Ok(r),
        Ok(r) if r.chunked_upload_id.is_empty() => Err(unreadable("create answered without an upload id")),
        Ok(_) => Err(unreadable("create answered an upload id outside [A-Za-z0-9-]{1,64}")),
        Err(e) => Err(unreadable(&e)),
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
    drop(held);
    drop(part);
    outcome.map(|()| seq)
}

/// The part size that fits `len` bytes into `parts` parts: at least `part_size`, at most
/// `max_part_bytes` (the caller checks that the result does fit).
fn fit(len: u64, parts: u32, c: &UploadConfig) -> usize {
    let need = len.div_ceil(parts.max(1) as u64) as usize;
    need.max(c.part_size).min(c.max_part_bytes).max(1)
}

/// KiB of the memory budget one part holds: its raw bytes, and the slice of its body being encoded.
fn budget_cost(size: usize, c: &UploadConfig) -> u32 {
    let bytes = part::held_len(size);
    let cap = (c.memory_budget_bytes / 1024).clamp(1, u32::MAX as usize);
    (bytes.div_ceil(1024)).min(cap) as u32
}
