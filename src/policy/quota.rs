//! The member's upload quota, behind the [`Quota`] trait: the upstream counts every unused upload of
//! a member (the user behind the token), committed ones included, from create until an envelope
//! uses it, it is deleted or it expires; and the bytes in them. The **ledger** counts the same, so
//! that uploads wait here for room instead of being refused upstream:
//!
//! - a [`Lease`] holds room for an upload from admission until its create answers;
//! - the created upload then holds it under its upstream id until it expires (its
//!   `expirationDateTime`), or the gateway sees it end: deleted (by the gateway, or a DELETE passed
//!   through) or used (an envelope creation passed through that names it in a `remoteUrl` and is
//!   answered 2xx).
//!
//! [`LocalQuota`] keeps the ledger in this process; `policy::shared` keeps it in Redis for every
//! sidecar of the account.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::Notify, time::Instant};

use super::{
    pacing::BoxFuture,
    wait::{self, Look},
};
use crate::config::QuotaConfig;

/// Whose quota an upload counts against: its account, and its member (the user behind the token,
/// named by a digest of the token, never the token itself).
#[derive(Clone, Copy, Debug)]
pub struct Holder<'a> {
    pub account: &'a str,
    pub member: &'a str,
}

/// A lease's name in the quota that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseId {
    pub member: String,
    pub id: String,
    pub bytes: u64,
    /// Held in the ledger shared through Redis (else in this process).
    pub shared: bool,
}

/// What a member holds, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub uploads: u64,
    pub bytes: u64,
}

pub trait Quota: Send + Sync {
    /// Waits up to `wait` for room for one more upload of `bytes` for `holder`; `None` when the
    /// wait runs out.
    fn lease<'a>(&'a self, holder: Holder<'a>, bytes: u64, wait: Duration) -> BoxFuture<'a, Option<LeaseId>>;

    /// The lease's upload exists upstream as `upload_id`, until `expires` (Unix seconds): it holds
    /// the room from now on, under that id, whatever becomes of the lease. It may be written in the
    /// background; a later `resize` or `forget` of the upload lands after it.
    fn created<'a>(&'a self, lease: &'a LeaseId, upload_id: &'a str, expires: u64) -> BoxFuture<'a, ()>;

    /// The upload holds `bytes` (known once its body has ended). It may be written in the
    /// background, after the upload's earlier writes.
    fn resize<'a>(&'a self, upload_id: &'a str, bytes: u64) -> BoxFuture<'a, ()>;

    /// `member`'s upload took `bytes` more (a part sent through the passthrough); another member's
    /// upload is left as it is.
    fn grow<'a>(&'a self, member: &'a str, upload_id: &'a str, bytes: u64) -> BoxFuture<'a, ()>;

    /// Waits until what was told of the upload so far (`created`, `resize`) is written where
    /// every sidecar sees it.
    fn settled<'a>(&'a self, _upload_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Gives back a lease whose upload was never created.
    fn release(&self, lease: &LeaseId);

    /// These uploads were used by an envelope or deleted by `member` (the token that made the
    /// call): they no longer count. Only that member's uploads are forgotten: an envelope of one
    /// member that names another's upload (the upstream takes only the caller's own) frees nothing.
    fn forget<'a>(&'a self, member: &'a str, upload_ids: &'a [String]) -> BoxFuture<'a, ()>;

    /// What each member holds, as last known, for metrics (members by a short digest).
    fn held(&self) -> Vec<(String, Held)>;

    /// The process is stopping and no request runs: waits until `deadline` for the writes under
    /// way, so that none is lost with the process.
    fn stopping<'a>(&'a self, _deadline: tokio::time::Instant) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Room for one upload, given back when dropped unless its upload was created.
pub struct Lease {
    id: LeaseId,
    quota: Arc<dyn Quota>,
    created: bool,
}

// === impl Lease ===

impl Lease {
    /// Takes room for an upload (see [`Quota::lease`]).
    pub async fn take(quota: &Arc<dyn Quota>, holder: Holder<'_>, bytes: u64, wait: Duration) -> Option<Lease> {
        let id = quota.lease(holder, bytes, wait).await?;
        Some(Lease { id, quota: quota.clone(), created: false })
    }

    /// The upload was created upstream (see [`Quota::created`]).
    pub async fn created(&mut self, upload_id: &str, expires: u64) {
        self.quota.created(&self.id, upload_id, expires).await;
        self.created = true;
    }

    /// The bytes the lease holds room for.
    pub fn bytes(&self) -> u64 {
        self.id.bytes
    }

    pub fn quota(&self) -> &Arc<dyn Quota> {
        &self.quota
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.created {
            self.quota.release(&self.id);
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The member a request speaks for: the SHA-256 (hex) of its `Authorization` header, with the
/// scheme's case and the whitespace around the credentials made uniform, so that `bearer  T` and
/// `Bearer T` are one member, as they are one user upstream. Only the digest is kept.
pub fn member_of(authorization: &[u8]) -> String {
    use sha2::Digest;
    let value = authorization.trim_ascii();
    let (scheme, credentials) = match value.iter().position(u8::is_ascii_whitespace) {
        Some(i) => (&value[..i], value[i..].trim_ascii()),
        None => (value, &[][..]),
    };
    let mut hasher = sha2::Sha256::new();
    hasher.update(scheme.to_ascii_lowercase());
    hasher.update(b" ");
    hasher.update(credentials);
    crate::upstream::resource::hex(&hasher.finalize())
}

/// The name a member goes by in metrics: the first 12 hex digits of its digest.
pub fn member_label(member: &str) -> String {
    member.chars().take(12).collect()
}

/// One upload in a member's ledger: a lease (no expiry: it ends with its upload's create) or a
/// created upload (until it expires upstream).
#[derive(Clone, Copy, Debug)]
struct Entry {
    bytes: u64,
    expires: Option<u64>,
}

#[derive(Default)]
struct Ledger {
    /// Per member: its entries by lease or upload id.
    members: HashMap<String, HashMap<String, Entry>>,
    /// The member of each created upload, to forget it by id alone.
    owners: HashMap<String, String>,
}

impl Ledger {
    /// The member's entries, expired ones dropped.
    fn entries(&mut self, member: &str, now: u64) -> &mut HashMap<String, Entry> {
        let entries = self.members.entry(member.to_owned()).or_default();
        let owners = &mut self.owners;
        entries.retain(|id, e| {
            let live = e.expires.is_none_or(|at| at > now);
            if !live {
                owners.remove(id);
            }
            live
        });
        entries
    }

    fn held(entries: &HashMap<String, Entry>) -> Held {
        Held { uploads: entries.len() as u64, bytes: entries.values().map(|e| e.bytes).sum() }
    }

    /// Forgets `upload_id` when `member` owns it.
    fn remove(&mut self, member: &str, upload_id: &str) -> bool {
        if self.owners.get(upload_id).is_none_or(|owner| owner != member) {
            return false;
        }
        self.owners.remove(upload_id);
        if let Some(entries) = self.members.get_mut(member) {
            entries.remove(upload_id);
            if entries.is_empty() {
                self.members.remove(member);
            }
        }
        true
    }
}

/// This process's own ledger, for `1/share` of each member's quota (`[cluster] replicas` sidecars
/// that share no counts each take their part).
pub struct LocalQuota {
    uploads: u64,
    bytes: u64,
    ledger: Mutex<Ledger>,
    next: AtomicU64,
    /// Notified when room is given back.
    freed: Notify,
}

// === impl LocalQuota ===

impl LocalQuota {
    pub fn new(config: &QuotaConfig, share: u32) -> Self {
        let share = share.max(1) as u64;
        Self {
            uploads: (config.uploads_per_member as u64 / share).max(1),
            bytes: (config.bytes_per_member / share).max(1),
            ledger: Mutex::new(Ledger::default()),
            next: AtomicU64::new(1),
            freed: Notify::new(),
        }
    }

    /// The bytes an upload of `bytes` is counted for: never more than the whole quota, so that a
    /// document that may be as large as the quota still gets its turn.
    pub fn counted(&self, bytes: u64) -> u64 {
        bytes.clamp(1, self.bytes)
    }
}

impl Quota for LocalQuota {
    fn lease<'a>(&'a self, holder: Holder<'a>, bytes: u64, wait: Duration) -> BoxFuture<'a, Option<LeaseId>> {
        Box::pin(async move {
            let bytes = self.counted(bytes);
            let id = format!("lease:{}", self.next.fetch_add(1, Ordering::Relaxed));
            let lease = LeaseId { member: holder.member.to_owned(), id, bytes, shared: false };
            let taken = wait::until(
                Instant::now() + wait,
                &self.freed,
                |_| {},
                || {
                    let mut ledger = self.ledger.lock().unwrap();
                    let entries = ledger.entries(holder.member, unix_now());
                    let held = Ledger::held(entries);
                    let look = if held.uploads < self.uploads && held.bytes + bytes <= self.bytes {
                        entries.insert(lease.id.clone(), Entry { bytes, expires: None });
                        Look::Ready(())
                    } else {
                        Look::Blocked { retry_after: wait }
                    };
                    std::future::ready(look)
                },
            )
            .await;
            taken.ok().map(|()| lease)
        })
    }

    fn created<'a>(&'a self, lease: &'a LeaseId, upload_id: &'a str, expires: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut ledger = self.ledger.lock().unwrap();
            let entries = ledger.entries(&lease.member, unix_now());
            entries.remove(&lease.id);
            entries.insert(upload_id.to_owned(), Entry { bytes: lease.bytes, expires: Some(expires) });
            ledger.owners.insert(upload_id.to_owned(), lease.member.clone());
        })
    }

    fn resize<'a>(&'a self, upload_id: &'a str, bytes: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut ledger = self.ledger.lock().unwrap();
            let Some(member) = ledger.owners.get(upload_id).cloned() else { return };
            if let Some(entry) = ledger.members.get_mut(&member).and_then(|e| e.get_mut(upload_id)) {
                entry.bytes = bytes;
            }
            drop(ledger);
            self.freed.notify_waiters();
        })
    }

    fn grow<'a>(&'a self, member: &'a str, upload_id: &'a str, bytes: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut ledger = self.ledger.lock().unwrap();
            if ledger.owners.get(upload_id).is_some_and(|owner| owner == member)
                && let Some(entry) = ledger.members.get_mut(member).and_then(|e| e.get_mut(upload_id))
            {
                entry.bytes = entry.bytes.saturating_add(bytes);
            }
        })
    }

    fn release(&self, lease: &LeaseId) {
        let mut ledger = self.ledger.lock().unwrap();
        if let Some(entries) = ledger.members.get_mut(&lease.member) {
            entries.remove(&lease.id);
            if entries.is_empty() {
                ledger.members.remove(&lease.member);
            }
        }
        drop(ledger);
        self.freed.notify_waiters();
    }

    fn forget<'a>(&'a self, member: &'a str, upload_ids: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut ledger = self.ledger.lock().unwrap();
            let forgotten = upload_ids.iter().filter(|id| ledger.remove(member, id)).count();
            drop(ledger);
            if forgotten > 0 {
                self.freed.notify_waiters();
            }
        })
    }

    fn held(&self) -> Vec<(String, Held)> {
        let mut ledger = self.ledger.lock().unwrap();
        let now = unix_now();
        let members: Vec<String> = ledger.members.keys().cloned().collect();
        members
            .into_iter()
            .map(|m| {
                let held = Ledger::held(ledger.entries(&m, now));
                (member_label(&m), held)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_its_token_whatever_the_schemes_case_and_spacing() {
        let member = member_of(b"Bearer abc.def");
        assert_eq!(member_of(b"bearer   abc.def "), member);
        assert_eq!(member_of(b"BEARER\tabc.def"), member);
        assert_ne!(member_of(b"Bearer abc.deF"), member, "the token itself is compared exactly");
        assert_ne!(member_of(b"Basic abc.def"), member);
        assert_eq!(member.len(), 64);
    }

    fn quota(uploads: u32, bytes: u64) -> Arc<dyn Quota> {
        let config = QuotaConfig { uploads_per_member: uploads, bytes_per_member: bytes, wait_secs: 0 };
        Arc::new(LocalQuota::new(&config, 1))
    }

    #[tokio::test]
    async fn a_member_gets_room_for_its_uploads_and_bytes_and_no_more() {
        let q = quota(2, 10 * 1024);
        let short = Duration::from_millis(20);
        let one = Holder { account: "1", member: "m1" };
        let a = Lease::take(&q, one, 1024, short).await.expect("room");
        let b = Lease::take(&q, one, 1024, short).await.expect("room");
        assert!(Lease::take(&q, one, 1024, short).await.is_none(), "two uploads at most");
        let two = Holder { account: "1", member: "m2" };
        assert!(Lease::take(&q, two, 10 * 1024, short).await.is_some(), "members are counted apart");
        drop(a);
        assert!(Lease::take(&q, one, 10 * 1024, short).await.is_none(), "10 KiB do not fit beside 1 KiB in 10");
        drop(b);
        assert!(Lease::take(&q, one, 10 * 1024, short).await.is_some());
    }

    #[tokio::test]
    async fn a_created_upload_holds_its_room_until_it_is_used_deleted_or_expired() {
        let q = quota(2, 1 << 30);
        let short = Duration::from_millis(20);
        let m = Holder { account: "1", member: "m" };
        let mut a = Lease::take(&q, m, 10, short).await.unwrap();
        a.created("A", unix_now() + 1200).await;
        drop(a);
        let mut b = Lease::take(&q, m, 10, short).await.unwrap();
        // Two seconds ahead (whole seconds): one ahead could lapse between here and the check below.
        b.created("B", unix_now() + 2).await;
        drop(b);
        assert!(Lease::take(&q, m, 10, short).await.is_none(), "two created uploads fill the quota");
        // Another member's envelope or delete naming A frees nothing: A is m's.
        q.forget("other", &["A".to_owned()]).await;
        assert!(Lease::take(&q, m, 10, short).await.is_none(), "another member freed m's upload");
        q.forget("m", &["A".to_owned()]).await;
        let c = Lease::take(&q, m, 10, short).await.expect("A was used");
        drop(c);
        assert_eq!(q.held(), vec![("m".to_owned(), Held { uploads: 1, bytes: 10 })]);
        // B expires within three seconds; a waiting lease then gets in.
        let mut d = Lease::take(&q, m, 10, short).await.unwrap();
        d.created("D", unix_now() + 1200).await;
        assert!(Lease::take(&q, m, 10, Duration::from_secs(5)).await.is_some(), "B expired");
    }
}
