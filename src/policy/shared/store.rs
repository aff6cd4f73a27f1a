//! The connection to Redis, the scripts, the keys, and what waits for Redis to answer again.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{FromRedisValue, Script, ScriptInvocation, aio::ConnectionManager};

use crate::{config::Config, policy::quota::Held, telemetry};

/// The Lua helpers every script starts with.
const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// The scripts, loaded once per process (by SHA; Redis is sent the source when it lacks it).
pub(super) struct Scripts {
    pub(super) reserve: Script,
    pub(super) acquire: Script,
    pub(super) giveback: Script,
    pub(super) spent: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) learn: Script,
    pub(super) lease: Script,
    pub(super) created: Script,
    pub(super) forget: Script,
    pub(super) epoch: Script,
    pub(super) exist: Script,
    pub(super) grow: Script,
    pub(super) held: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            reserve: script(include_str!("lua/reserve.lua")),
            acquire: script(include_str!("lua/acquire.lua")),
            giveback: script(include_str!("lua/giveback.lua")),
            spent: script(include_str!("lua/spent.lua")),
            release: script(include_str!("lua/release.lua")),
            renew: script(include_str!("lua/renew.lua")),
            learn: script(include_str!("lua/learn.lua")),
            lease: script(include_str!("lua/lease.lua")),
            created: script(include_str!("lua/created.lua")),
            forget: script(include_str!("lua/forget.lua")),
            epoch: script(include_str!("lua/epoch.lua")),
            exist: script(include_str!("lua/exist.lua")),
            grow: script(include_str!("lua/grow.lua")),
            held: script(include_str!("lua/held.lua")),
        }
    }
}

/// The connection to Redis, whether it answers, and the keys.
pub struct Redis {
    /// Replaced at a stop (see `stopping`).
    conn: Mutex<ConnectionManager>,
    /// How to make it again.
    client: redis::Client,
    manager: redis::aio::ConnectionManagerConfig,
    pub(super) scripts: Scripts,
    prefix: String,
    op_timeout: Duration,
    /// Reservations and leases expire after this long unless renewed.
    pub ttl: Duration,
    /// Redis did not answer in time: counts are local until it does.
    down: AtomicBool,
    /// Operations to run again once Redis answers (what the upstream did meanwhile: uploads
    /// created, used or deleted), at most [`PENDING_MAX`].
    pending: Mutex<Vec<Pending>>,
    /// The token of the data Redis held when this sidecar last looked (see `lost_data`).
    epoch: Mutex<Option<String>>,
    /// A replay of the kept writes is running: a failure in it goes back to fallback quietly (the
    /// outage goes on; it was logged when it began).
    replaying: AtomicBool,
    /// Uploads forgotten while a replay runs: their kept writes, taken out for the replay, are
    /// skipped (see `drop_kept`).
    forgotten: Mutex<std::collections::HashSet<String>>,
    /// Writes running in the background (an upload's creation and size, leases and plans given
    /// back): a stop waits for them (see `stopping`).
    writes: Arc<crate::pipeline::calls::Outstanding>,
    /// The runtime the gateway was made on, which outlives the event loops (see `spawn`).
    runtime: Option<tokio::runtime::Handle>,
    /// Held by the probe that runs (see `probe_within`).
    probing: tokio::sync::Mutex<()>,
}

/// Writes kept while Redis is down, replayed when it answers again.
#[derive(Clone, Debug)]
pub(super) enum Pending {
    Created {
        member: String,
        /// The lease the upload was created under, given up by the write ("" for none).
        lease: String,
        upload: String,
        bytes: u64,
        expires_ms: u64,
    },
    Forget {
        member: String,
        ids: Vec<String>,
    },
    /// A plan or lease under `id` in the hash and expiry set `keys`: a script that timed out may
    /// still have run once Redis went on, and a release may not have reached it. Given back, so
    /// that it does not withhold room until its TTL.
    Release {
        keys: (String, String),
        id: String,
    },
    /// An upload's size once its body ended (it was counted at the most it could be).
    Resize {
        upload: String,
        bytes: u64,
    },
    /// A part taken through the passthrough: its upload holds `bytes` more.
    Grow {
        member: String,
        upload: String,
        bytes: u64,
    },
}

const PENDING_MAX: usize = 10_000;

/// How often a stopping sidecar in fallback looks whether Redis answers again.
const STOP_PROBE_EVERY: Duration = Duration::from_millis(250);

/// How often a sidecar in fallback looks whether Redis answers again.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

// === impl Redis ===

impl Redis {
    /// A lazy connection: the sidecar starts (and is ready) whether Redis answers or not.
    pub(super) fn connect(config: &Config) -> Result<Arc<Self>, String> {
        let c = &config.cluster;
        let client = redis::Client::open(c.redis_url.as_str())
            .map_err(|_| "cluster.redis_url is not a usable redis:// URL".to_owned())?;
        let op_timeout = Duration::from_millis(c.op_timeout_ms);
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(op_timeout))
            .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
            .map_err(|e| format!("cluster.redis_url: {:?}", e.kind()))?;
        metrics::gauge!(telemetry::CLUSTER_FALLBACK).set(0.0);
        Ok(Arc::new(Self {
            conn: Mutex::new(conn),
            client,
            manager,
            scripts: Scripts::new(),
            prefix: c.key_prefix.clone(),
            op_timeout,
            ttl: Duration::from_secs(c.lease_ttl_secs),
            down: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            epoch: Mutex::new(None),
            replaying: AtomicBool::new(false),
            forgotten: Mutex::default(),
            writes: Arc::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            probing: tokio::sync::Mutex::new(()),
        }))
    }

    pub(super) fn account_key(&self, account: &str, what: &str) -> String {
        format!("{}:a:{account}:{what}", self.prefix)
    }

    /// The keys of the scripts that draw, reserve or give back an account's calls, in their order:
    /// hourly count, plans, plan expiries, burst state, pause.
    pub(super) fn pacing_keys(&self, account: &str) -> [String; 5] {
        ["hour", "plans", "plans:x", "gcra", "pause"].map(|k| self.account_key(account, k))
    }

    pub(super) fn member_keys(&self, member: &str) -> (String, String) {
        (format!("{}:m:{member}:e", self.prefix), format!("{}:m:{member}:x", self.prefix))
    }

    pub(super) fn owner_key(&self, upload: &str) -> String {
        format!("{}:u:{upload}", self.prefix)
    }

    /// Set when `member` used or deleted `upload` (see `forget.lua`).
    fn tombstone_key(&self, member: &str, upload: &str) -> String {
        format!("{}:g:{member}:{upload}", self.prefix)
    }

    pub(super) fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Runs a script within the operation timeout; `None` (and fallback) when Redis does not
    /// answer in time or fails. Skipped at once while Redis is known to be down.
    pub(super) async fn run<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Option<T> {
        if self.is_down() {
            return None;
        }
        let started = Instant::now();
        let mut conn = self.conn.lock().unwrap().clone();
        let result = tokio::time::timeout(self.op_timeout, invocation.invoke_async::<T>(&mut conn)).await;
        metrics::histogram!(telemetry::CLUSTER_OP).record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                self.fell(&format!("Redis failed: {err}"));
                None
            }
            Err(_) => {
                self.fell(&format!("Redis took longer than {} ms", self.op_timeout.as_millis()));
                None
            }
        }
    }

    /// Redis did not answer: counts go local (each sidecar its share) until it does.
    pub(super) fn fell(&self, why: &str) {
        if !self.down.swap(true, Ordering::Relaxed) && !self.replaying.load(Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "shared counts unavailable: falling back to this sidecar's share of the limits"
            );
            metrics::gauge!(telemetry::CLUSTER_FALLBACK).set(1.0);
        }
    }

    /// Drops the kept writes of uploads `member` used or deleted (their creation, size, parts):
    /// written after the forget, on a Redis that lost the forget's tombstone meanwhile, they had
    /// brought the uploads back.
    pub(super) fn drop_kept(&self, member: &str, ids: &[String]) {
        let ended = |upload: &String| ids.contains(upload);
        self.pending.lock().unwrap().retain(|op| match op {
            Pending::Created { member: m, upload, .. } | Pending::Grow { member: m, upload, .. } => {
                !(m == member && ended(upload))
            }
            Pending::Resize { upload, .. } => !ended(upload),
            Pending::Forget { .. } | Pending::Release { .. } => true,
        });
        if self.replaying.load(Ordering::Relaxed) {
            self.forgotten.lock().unwrap().extend(ids.iter().cloned());
        }
    }

    /// Runs `write` in the background, counted so that a stop waits for it, on the runtime the
    /// gateway was made on: the event loops of `server.scheduler = "per-thread"` stop with their
    /// connections, and a write spawned there was dropped unwritten.
    pub(super) fn spawn(&self, write: impl Future<Output = ()> + Send + 'static) {
        let Some(runtime) = self.runtime.clone().or_else(|| tokio::runtime::Handle::try_current().ok()) else { return };
        let counted = self.writes.enter();
        runtime.spawn(async move {
            let _counted = counted;
            write.await;
        });
    }

    /// At a stop, once no request runs: waits until `deadline` for the writes under way, replays
    /// what was kept while Redis did not answer as soon as it answers (looked for until
    /// `deadline`), and says what is lost with the process. (Writes spawned after the last
    /// request had ended went unwritten when the process exited: a passthrough create whose
    /// client had left was never counted.)
    pub async fn stopping(self: &Arc<Self>, deadline: tokio::time::Instant) {
        if !self.writes.settled(deadline).await {
            tracing::warn!(writes = self.writes.running(), "stopping before Redis took every ledger write");
        }
        if self.is_down() {
            // The connection's own tasks run where it was first used or last made again: on an
            // event loop that has stopped with its connections, it can answer nothing more (seen
            // as a broken pipe, or a reconnection that never ends). A fresh one, made here.
            if let Ok(fresh) = ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone()) {
                *self.conn.lock().unwrap() = fresh;
            }
            // A Redis that stalls or restarts for a moment is waited for (one probe had given up
            // on a stall of a second).
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.probe_within(self.op_timeout.max(Duration::from_millis(200)).min(left)).await;
                let next = tokio::time::Instant::now() + STOP_PROBE_EVERY;
                if !self.is_down() || next >= deadline {
                    break;
                }
                tokio::time::sleep_until(next).await;
            }
        }
        let kept = self.pending.lock().unwrap().len();
        if kept > 0 {
            tracing::warn!(
                writes = kept,
                "stopping with ledger writes Redis has not taken (kept while it could not be reached): unless it \
                 runs ones it was sent late, they are lost, and the shared ledger miscounts their uploads until \
                 they expire"
            );
        }
    }

    /// Keeps a write for when Redis answers again.
    pub(super) fn keep(&self, op: Pending) {
        let mut pending = self.pending.lock().unwrap();
        if pending.len() < PENDING_MAX {
            pending.push(op);
        }
    }

    /// While down: looks every second whether Redis answers, and if so replays what was kept and
    /// shares counts again.
    pub(super) async fn probe(self: &Arc<Self>) {
        self.probe_within(self.op_timeout.max(Duration::from_millis(200))).await;
    }

    /// A probe whose `PING` waits at most `wait`. One at a time: a stop's probe that found the
    /// kept writes taken by the background's replay returned while that replay was still writing,
    /// and the process exited before it was done.
    async fn probe_within(self: &Arc<Self>, wait: Duration) {
        let _one = self.probing.lock().await;
        if !self.is_down() {
            return;
        }
        let mut conn = self.conn.lock().unwrap().clone();
        let ping = tokio::time::timeout(wait, async { redis::cmd("PING").query_async::<String>(&mut conn).await });
        if !matches!(ping.await, Ok(Ok(_))) {
            return;
        }
        self.replaying.store(true, Ordering::Relaxed);
        self.down.store(false, Ordering::Relaxed);
        let kept = std::mem::take(&mut *self.pending.lock().unwrap());
        let replayed = kept.len();
        for op in kept {
            if let Pending::Created { upload, .. } | Pending::Resize { upload, .. } | Pending::Grow { upload, .. } = &op
                && self.forgotten.lock().unwrap().contains(upload)
            {
                continue;
            }
            let written = match &op {
                Pending::Created { member, lease, upload, bytes, expires_ms } => {
                    self.record_created(member, lease, upload, *bytes, *expires_ms).await
                }
                Pending::Forget { member, ids } => self.forget_or_resize(ids, Some(member), None).await.is_some(),
                Pending::Release { keys, id } => self.release_now(keys, id).await,
                Pending::Resize { upload, bytes } => {
                    self.forget_or_resize(std::slice::from_ref(upload), None, Some(*bytes)).await.is_some()
                }
                Pending::Grow { member, upload, bytes } => self.grow(member, upload, *bytes).await.is_some(),
            };
            // Redis answered the probe but not this (a replica that refuses writes, a timeout):
            // kept again, in order, for the next time it answers.
            if !written {
                self.keep(op);
            }
        }
        self.replaying.store(false, Ordering::Relaxed);
        self.forgotten.lock().unwrap().clear();
        if !self.is_down() {
            tracing::info!(replayed, "Redis answers again: sharing counts again");
            metrics::gauge!(telemetry::CLUSTER_FALLBACK).set(0.0);
        }
    }

    /// Whether Redis lost its data since this sidecar last looked (restarted without persistence,
    /// or flushed): the token of its data is another than the one seen last. The first look only
    /// learns the token. `false` when Redis does not answer (nothing is known then).
    pub(super) async fn lost_data(&self) -> bool {
        /// Renewed at every look (a third of the lease TTL at most): it outlives any pause of the
        /// sidecars short of a day.
        const TOKEN_LIFE_MS: u64 = 24 * 3600 * 1000;
        let mut inv = self.scripts.epoch.prepare_invoke();
        inv.key(format!("{}:epoch", self.prefix)).arg(fresh_id("epoch")).arg(TOKEN_LIFE_MS);
        let Some(token) = self.run::<String>(&inv).await else { return false };
        let mut seen = self.epoch.lock().unwrap();
        let lost = seen.as_ref().is_some_and(|before| *before != token);
        *seen = Some(token);
        lost
    }

    /// Gives back the plan or lease `id` held in `keys` (its hash and its expiry set); kept for
    /// later when Redis does not answer.
    pub(super) async fn release(&self, keys: &(String, String), id: &str) {
        if !self.release_now(keys, id).await {
            self.keep(Pending::Release { keys: keys.clone(), id: id.to_owned() });
        }
    }

    /// Gives back the plan or lease `id` held in `keys`; whether Redis took it.
    async fn release_now(&self, keys: &(String, String), id: &str) -> bool {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&keys.0).key(&keys.1).arg(id);
        self.run::<i64>(&inv).await.is_some()
    }

    pub(super) async fn record_created(
        &self,
        member: &str,
        lease: &str,
        upload: &str,
        bytes: u64,
        expires_ms: u64,
    ) -> bool {
        let (e, x) = self.member_keys(member);
        let mut inv = self.scripts.created.prepare_invoke();
        inv.key(e).key(x).key(self.owner_key(upload)).key(self.tombstone_key(member, upload));
        inv.arg(lease).arg(upload).arg(bytes).arg(expires_ms).arg(member);
        self.run::<i64>(&inv).await.is_some()
    }

    /// `member`'s upload took `bytes` more; what the member holds after it.
    pub(super) async fn grow(&self, member: &str, upload: &str, bytes: u64) -> Option<Held> {
        let mut inv = self.scripts.grow.prepare_invoke();
        inv.key(self.owner_key(upload)).arg(&self.prefix).arg(member).arg(upload).arg(bytes);
        self.run::<(u64, u64)>(&inv).await.map(|(uploads, bytes)| Held { uploads, bytes })
    }

    /// What `member` holds.
    pub(super) async fn held_by(&self, member: &str) -> Option<Held> {
        let mut inv = self.scripts.held.prepare_invoke();
        inv.arg(&self.prefix).arg(member);
        self.run::<(u64, u64)>(&inv).await.map(|(uploads, bytes)| Held { uploads, bytes })
    }

    /// Forgets uploads (`bytes` None) or sets their size; what the calling `member` holds after
    /// it (nothing held without one).
    pub(super) async fn forget_or_resize(
        &self,
        ids: &[String],
        member: Option<&str>,
        bytes: Option<u64>,
    ) -> Option<Held> {
        if ids.is_empty() {
            return Some(Held::default());
        }
        let mut inv = self.scripts.forget.prepare_invoke();
        for id in ids {
            inv.key(self.owner_key(id));
        }
        inv.arg(&self.prefix)
            .arg(bytes.map_or_else(|| "forget".to_owned(), |b| b.to_string()))
            .arg(member.unwrap_or(""))
            .arg(2 * self.ttl_ms());
        for id in ids {
            inv.arg(id);
        }
        self.run::<(u64, u64)>(&inv).await.map(|(uploads, bytes)| Held { uploads, bytes })
    }
}

/// A fresh id for a plan or lease, unique across sidecars.
pub(super) fn fresh_id(kind: &str) -> String {
    format!("{kind}:{:016x}{:08x}", fastrand::u64(..), std::process::id())
}
