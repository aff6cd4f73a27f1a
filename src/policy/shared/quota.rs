//! [`Quota`] shared through Redis: each member's ledger of leases and unused uploads, as every
//! sidecar sees it. While Redis cannot be reached, this sidecar's share is counted by a
//! [`LocalQuota`], and what the upstream did meanwhile (uploads created, used, deleted) is kept to
//! be written once Redis answers.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::store::{Pending, Redis, fresh_id};
use crate::{
    config::Config,
    policy::{
        pacing::BoxFuture,
        quota::{Held, Holder, LeaseId, LocalQuota, Quota, member_label},
        wait::{self, Look},
    },
};

pub struct SharedQuota {
    redis: Arc<Redis>,
    /// This sidecar's share, counted here while Redis cannot be reached.
    local: Arc<LocalQuota>,
    uploads: u64,
    bytes: u64,
    /// Leases this sidecar holds, per member, with their bytes: renewed while they live.
    leases: Mutex<HashMap<String, HashMap<String, u64>>>,
    /// The uploads this sidecar created that still count (unused, undeleted), written back to
    /// Redis if it loses its data (see `restore_if_lost`).
    mine: Arc<Mutex<crate::FastMap<String, Created>>>,
    /// What each member held when Redis last said.
    held: Arc<Mutex<HashMap<String, Held>>>,
    /// Notified when this sidecar gives room back.
    freed: Notify,
    /// Uploads whose creation or size is being written to Redis (in the background: an upload's
    /// calls do not wait for it), each with a lock held until the last write given is written:
    /// each write waits for the one before it, and a forget of the same upload for them all, so
    /// that none lands out of order.
    recording: Arc<Mutex<crate::FastMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// An upload this sidecar created, as the ledger counts it.
#[derive(Clone)]
struct Created {
    member: String,
    bytes: u64,
    expires_ms: u64,
}

enum Found {
    Taken,
    Fallback,
}

// === impl SharedQuota ===

impl SharedQuota {
    pub fn new(redis: Arc<Redis>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            redis,
            local: Arc::new(LocalQuota::new(&config.quota, config.cluster.replicas)),
            uploads: config.quota.uploads_per_member as u64,
            bytes: config.quota.bytes_per_member,
            leases: Mutex::new(HashMap::new()),
            mine: Arc::default(),
            held: Arc::default(),
            freed: Notify::new(),
            recording: Arc::default(),
        })
    }

    /// Renews the leases this sidecar holds.
    pub async fn renew(&self) {
        let held: Vec<(String, Vec<String>)> =
            self.leases.lock().unwrap().iter().map(|(m, ids)| (m.clone(), ids.keys().cloned().collect())).collect();
        let r = &self.redis;
        for (member, ids) in held {
            let (e, x) = r.member_keys(&member);
            let mut inv = r.scripts.renew.prepare_invoke();
            inv.key(e).key(x).arg(r.ttl_ms());
            for id in &ids {
                inv.arg(id);
            }
            if r.run::<i64>(&inv).await.is_none() {
                return;
            }
        }
    }

    /// Reads again what each member this sidecar has seen holds, for the metrics: the figures
    /// otherwise change only with this sidecar's own writes, and stayed as they were before an
    /// outage, or as this sidecar's share counted them during it, until the member's next call.
    pub async fn refresh_held(&self) {
        let members: Vec<String> = self.held.lock().unwrap().keys().cloned().collect();
        for member in members {
            match self.redis.held_by(&member).await {
                Some(now) => {
                    self.held.lock().unwrap().insert(member, now);
                }
                None => return,
            }
        }
    }

    /// Writes back what this sidecar knows when Redis lost its data (restarted without persistence,
    /// or flushed): the uploads it created that still count, and the leases it holds (taken
    /// whatever room is left: they were granted before). Without it, those uploads went uncounted
    /// until they expired, and the upstream refused creates for a quota the ledger said was free.
    /// Run before each renewal, so within a third of `cluster.lease_ttl_secs`.
    pub async fn restore_if_lost(&self) {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        // Expired uploads no longer count anywhere.
        self.mine.lock().unwrap().retain(|_, c| c.expires_ms > now_ms);
        if !self.redis.lost_data().await {
            self.forget_what_ended_elsewhere().await;
            return;
        }
        let uploads: Vec<(String, Created)> =
            self.mine.lock().unwrap().iter().map(|(id, c)| (id.clone(), c.clone())).collect();
        let leases: Vec<(String, String, u64)> = self
            .leases
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(m, ids)| ids.iter().map(move |(id, bytes)| (m.clone(), id.clone(), *bytes)))
            .collect();
        let r = &self.redis;
        for (upload, c) in &uploads {
            // In order with the upload's other writes: a forget that comes meanwhile waits for this
            // write and lands after it, and one that came before has taken the upload out of `mine`.
            let (redis, mine, id, c) = (r.clone(), self.mine.clone(), upload.clone(), c.clone());
            self.in_order(upload, async move {
                if !mine.lock().unwrap().contains_key(&id) {
                    return;
                }
                if !redis.record_created(&c.member, "", &id, c.bytes, c.expires_ms).await {
                    let (member, upload) = (c.member, id);
                    redis.keep(Pending::Created {
                        member,
                        lease: String::new(),
                        upload,
                        bytes: c.bytes,
                        expires_ms: c.expires_ms,
                    });
                }
            });
        }
        for (member, id, bytes) in &leases {
            let (e, x) = r.member_keys(member);
            let mut inv = r.scripts.lease.prepare_invoke();
            inv.key(&e).key(&x).arg(id).arg(*bytes).arg(u64::MAX).arg(u64::MAX).arg(r.ttl_ms());
            let _ = r.run::<(i64, u64, u64)>(&inv).await;
        }
        tracing::warn!(
            uploads = uploads.len(),
            leases = leases.len(),
            "Redis lost the shared counts (restarted empty or flushed): wrote back what this sidecar holds"
        );
    }

    /// Drops from the remembered uploads those Redis no longer counts: used or deleted through
    /// another sidecar (whose forget removed their owner key), or expired. Without it, a flush had
    /// them written back, and a member whose uploads had all ended was refused until they expired.
    /// Uploads whose writes are still on their way are kept (their owner key may not be there yet).
    async fn forget_what_ended_elsewhere(&self) {
        /// Keys per script.
        const AT_ONCE: usize = 500;
        let ids: Vec<String> = {
            let (mine, recording) = (self.mine.lock().unwrap(), self.recording.lock().unwrap());
            mine.keys().filter(|id| !recording.contains_key(*id)).cloned().collect()
        };
        let r = &self.redis;
        for ids in ids.chunks(AT_ONCE) {
            let mut inv = r.scripts.exist.prepare_invoke();
            for id in ids {
                inv.key(r.owner_key(id));
            }
            let Some(exist) = r.run::<Vec<i64>>(&inv).await else { return };
            let mut mine = self.mine.lock().unwrap();
            let recording = self.recording.lock().unwrap();
            for (id, exists) in ids.iter().zip(exist) {
                if exists == 0 && !recording.contains_key(id) {
                    mine.remove(id);
                }
            }
        }
    }

    /// Writes `write` for `upload` in the background, after the writes for it given before.
    fn in_order(&self, upload: &str, write: impl Future<Output = ()> + Send + 'static) {
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let held = gate.clone().try_lock_owned().expect("a new lock is free");
        let before = self.recording.lock().unwrap().insert(upload.to_owned(), gate.clone());
        let (recording, upload) = (self.recording.clone(), upload.to_owned());
        self.redis.spawn(async move {
            if let Some(before) = before {
                drop(before.lock().await);
            }
            write.await;
            drop(held);
            let mut recording = recording.lock().unwrap();
            if recording.get(&upload).is_some_and(|g| Arc::ptr_eq(g, &gate)) {
                recording.remove(&upload);
            }
        });
    }

    /// Waits until the writes given for `upload_ids` are written.
    async fn recorded(&self, upload_ids: &[String]) {
        let gates: Vec<_> = {
            let recording = self.recording.lock().unwrap();
            upload_ids.iter().filter_map(|id| recording.get(id).cloned()).collect()
        };
        for gate in gates {
            drop(gate.lock().await);
        }
    }

    fn unregister(&self, lease: &LeaseId) {
        let mut leases = self.leases.lock().unwrap();
        if let Some(ids) = leases.get_mut(&lease.member) {
            ids.remove(&lease.id);
            if ids.is_empty() {
                leases.remove(&lease.member);
            }
        }
    }
}

impl Quota for SharedQuota {
    fn lease<'a>(&'a self, holder: Holder<'a>, bytes: u64, wait: Duration) -> BoxFuture<'a, Option<LeaseId>> {
        Box::pin(async move {
            let bytes = bytes.clamp(1, self.bytes);
            let id = fresh_id("lease");
            let r = &self.redis;
            let (e, x) = r.member_keys(holder.member);
            // While Redis is known down no script is sent (see `fell_back` in the pacing).
            let sent = !r.is_down();
            let found = wait::until(
                Instant::now() + wait,
                &self.freed,
                |_| {},
                || async {
                    let mut inv = r.scripts.lease.prepare_invoke();
                    inv.key(&e).key(&x).arg(&id).arg(bytes).arg(self.uploads).arg(self.bytes).arg(r.ttl_ms());
                    match r.run::<(i64, u64, u64)>(&inv).await {
                        None => Look::Ready(Found::Fallback),
                        Some((taken, uploads, bytes)) => {
                            self.held.lock().unwrap().insert(holder.member.to_owned(), Held { uploads, bytes });
                            if taken == 1 { Look::Ready(Found::Taken) } else { Look::Blocked { retry_after: wait } }
                        }
                    }
                },
            )
            .await;
            match found {
                Err(_) => None,
                Ok(Found::Taken) => {
                    self.leases.lock().unwrap().entry(holder.member.to_owned()).or_default().insert(id.clone(), bytes);
                    Some(LeaseId { member: holder.member.to_owned(), id, bytes, shared: true })
                }
                Ok(Found::Fallback) => {
                    // A script that was sent may still run once Redis goes on: its lease is given
                    // back then.
                    if sent {
                        r.keep(Pending::Release { keys: (e.clone(), x.clone()), id });
                    }
                    self.local.lease(holder, bytes, wait).await
                }
            }
        })
    }

    fn created<'a>(&'a self, lease: &'a LeaseId, upload_id: &'a str, expires: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let expires_ms = expires.saturating_mul(1000);
            let remembered = Created { member: lease.member.clone(), bytes: lease.bytes, expires_ms };
            self.mine.lock().unwrap().insert(upload_id.to_owned(), remembered);
            if !lease.shared {
                // Taken from this sidecar's share while Redis could not be reached: the upload
                // counts in the shared ledger too, now or once Redis answers.
                self.local.created(lease, upload_id, expires).await;
                if !self.redis.record_created(&lease.member, "", upload_id, lease.bytes, expires_ms).await {
                    let (member, upload) = (lease.member.clone(), upload_id.to_owned());
                    self.redis.keep(Pending::Created {
                        member,
                        lease: String::new(),
                        upload,
                        bytes: lease.bytes,
                        expires_ms,
                    });
                }
                return;
            }
            self.unregister(lease);
            let (redis, local, lease, upload) =
                (self.redis.clone(), self.local.clone(), lease.clone(), upload_id.to_owned());
            let record = async move {
                if !redis.record_created(&lease.member, &lease.id, &upload, lease.bytes, expires_ms).await {
                    // Counted here meanwhile, and written to Redis once it answers.
                    local.created(&lease, &upload, expires).await;
                    // With its lease, which the write gives up (else it held room until its TTL).
                    let (member, bytes, lease) = (lease.member, lease.bytes, lease.id);
                    redis.keep(Pending::Created { member, lease, upload, bytes, expires_ms });
                }
            };
            self.in_order(upload_id, record);
        })
    }

    fn resize<'a>(&'a self, upload_id: &'a str, bytes: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.local.resize(upload_id, bytes).await;
            if let Some(known) = self.mine.lock().unwrap().get_mut(upload_id) {
                known.bytes = bytes;
            }
            let (redis, upload) = (self.redis.clone(), upload_id.to_owned());
            self.in_order(upload_id, async move {
                if redis.forget_or_resize(std::slice::from_ref(&upload), None, Some(bytes)).await.is_none() {
                    // After the creation, if it was kept too: the pending writes replay in order.
                    redis.keep(Pending::Resize { upload, bytes });
                }
            });
            self.freed.notify_waiters();
        })
    }

    fn grow<'a>(&'a self, member: &'a str, upload_id: &'a str, bytes: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.local.grow(member, upload_id, bytes).await;
            if let Some(known) = self.mine.lock().unwrap().get_mut(upload_id).filter(|c| c.member == member) {
                known.bytes = known.bytes.saturating_add(bytes);
            }
            let (redis, member, upload) = (self.redis.clone(), member.to_owned(), upload_id.to_owned());
            let held = self.held.clone();
            // In order with the upload's other writes, and written before the part's answer goes
            // back (the client's next create must see it); kept for when Redis answers again if it
            // does not now.
            self.in_order(upload_id, async move {
                match redis.grow(&member, &upload, bytes).await {
                    Some(now) => {
                        held.lock().unwrap().insert(member, now);
                    }
                    None => redis.keep(Pending::Grow { member, upload, bytes }),
                }
            });
            self.recorded(std::slice::from_ref(&upload_id.to_owned())).await;
        })
    }

    fn settled<'a>(&'a self, upload_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.recorded(std::slice::from_ref(&upload_id.to_owned())).await;
        })
    }

    fn release(&self, lease: &LeaseId) {
        if !lease.shared {
            return self.local.release(lease);
        }
        self.unregister(lease);
        let (redis, lease) = (self.redis.clone(), lease.clone());
        // In the background: a drop cannot wait. If Redis does not take it, the lease expires.
        self.redis.spawn(async move {
            redis.release(&redis.member_keys(&lease.member), &lease.id).await;
        });
        self.freed.notify_waiters();
    }

    fn forget<'a>(&'a self, member: &'a str, upload_ids: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.recorded(upload_ids).await;
            {
                let mut mine = self.mine.lock().unwrap();
                for id in upload_ids {
                    if mine.get(id).is_some_and(|c| c.member == member) {
                        mine.remove(id);
                    }
                }
            }
            self.local.forget(member, upload_ids).await;
            self.redis.drop_kept(member, upload_ids);
            match self.redis.forget_or_resize(upload_ids, Some(member), None).await {
                Some(now) => {
                    self.held.lock().unwrap().insert(member.to_owned(), now);
                }
                None => self.redis.keep(Pending::Forget { member: member.to_owned(), ids: upload_ids.to_vec() }),
            }
            self.freed.notify_waiters();
        })
    }

    fn stopping<'a>(&'a self, deadline: Instant) -> BoxFuture<'a, ()> {
        Box::pin(self.redis.stopping(deadline))
    }

    fn held(&self) -> Vec<(String, Held)> {
        if self.redis.is_down() {
            return self.local.held();
        }
        self.held.lock().unwrap().iter().map(|(m, h)| (member_label(m), *h)).collect()
    }
}
