//! [`Pacing`] shared through Redis: the hourly count, the plans and the burst limiter of each
//! account, and the pauses learned from the upstream, as one sidecar sees them and every other
//! does. While Redis cannot be reached, this sidecar's share is counted by a [`LocalPacing`].

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use tokio::{sync::Notify, time::Instant};

use super::store::{Pending, Redis, fresh_id};
use crate::{
    config::{Config, RateLimitConfig},
    policy::{
        pacing::{BoxFuture, Budget, Draw, LocalPacing, Pacing, PlanId, Remaining, Seen, burst_quota, clock_hour},
        wait::{self, Look},
    },
};

pub struct SharedPacing {
    /// Itself, for the work it starts in the background.
    me: std::sync::Weak<SharedPacing>,
    redis: Arc<Redis>,
    /// This sidecar's share, counted here while Redis cannot be reached.
    local: LocalPacing,
    config: RateLimitConfig,
    /// The burst limiter: ms per call, and ms of burst.
    period_ms: f64,
    tau_ms: f64,
    /// Plans this sidecar holds, per account: renewed while they live.
    plans: Mutex<HashMap<String, HashSet<String>>>,
    /// Each account's budget as Redis last told it.
    budgets: Mutex<HashMap<String, Budget>>,
    /// Notified when this sidecar gives calls back.
    released: Notify,
    /// Free calls (passthrough) taken from Redis ahead, per account: a call from the batch costs no
    /// round trip.
    batches: Mutex<HashMap<String, Batch>>,
    /// One refill at a time per account (a refill may wait out the account's pause or burst; other
    /// accounts do not wait behind it): the others wait for it and take from the new batch.
    refills: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Plan calls taken from Redis ahead, per plan id: a new plan's first call (its create follows
    /// at once) is taken with its reservation, and its parts, which go several at once, take
    /// batches as passthrough does. A call from the batch costs no round trip.
    plan_batches: Mutex<crate::FastMap<String, PlanBatch>>,
    /// Most calls one batch takes.
    max_batch: u32,
    /// When this sidecar made calls from its own share while Redis could not be reached, per
    /// account, within the last burst window: told to the shared burst limiter once Redis answers
    /// again, so that a limiter that came back empty does not grant a whole burst on top of them.
    unshared: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Free calls this sidecar took from the shared budget ahead of need. They count as used there from
/// the moment they are taken; what is left when the batch lapses is given back with the next look
/// at Redis (the next refill, or the plans' renewal).
#[derive(Clone, Copy, Debug)]
struct Batch {
    /// Calls left, and how many the batch had.
    left: u32,
    size: u32,
    /// Until when its calls may be spent.
    until: Instant,
    /// The clock hour Redis counted them in.
    hour: i64,
}

/// A plan's batch, and the one refill at a time that makes the next.
struct PlanBatch {
    account: String,
    batch: Option<Batch>,
    /// Calls left in the plan in Redis when the batch was taken: a draw that keeps `keep` calls for
    /// later may take from the batch while these and the batch's together hold more than `keep`.
    in_plan: u32,
    refill: Arc<tokio::sync::Mutex<()>>,
}

/// How long a batch's calls may be spent: short, so that calls held by one sidecar are soon
/// free again for the others.
const BATCH_LIFE: Duration = Duration::from_millis(100);

/// What one look at the shared budget found.
enum Found<T> {
    Taken(T),
    /// Redis did not answer: this sidecar's share decides.
    Fallback,
}

// === impl SharedPacing ===

impl SharedPacing {
    pub fn new(redis: Arc<Redis>, config: &Config) -> Arc<Self> {
        let c = &config.rate_limit;
        let (burst, period) = burst_quota(c.burst_limit, Duration::from_secs(c.burst_window_secs));
        let period_ms = period.as_secs_f64() * 1000.0;
        // A fifth of the burst at most, and 64: enough that a busy passthrough asks Redis about
        // once per 64 calls, little enough that one sidecar never holds a large share of a burst.
        let max_batch = (burst / 5).clamp(1, 64);
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            redis,
            local: LocalPacing::new(c.clone(), config.cluster.replicas),
            config: c.clone(),
            period_ms,
            tau_ms: (burst.saturating_sub(1)) as f64 * period_ms,
            plans: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            released: Notify::new(),
            batches: Mutex::new(HashMap::new()),
            plan_batches: Mutex::new(crate::FastMap::default()),
            refills: Mutex::new(HashMap::new()),
            max_batch,
            unshared: Mutex::new(HashMap::new()),
        })
    }

    fn seen(&self, account: &str, used: i64, reserved: i64) {
        let budget = Budget {
            limit: self.config.hourly_limit,
            used: used.clamp(0, u32::MAX as i64) as u32,
            reserved: reserved.clamp(0, u32::MAX as i64) as u32,
        };
        self.budgets.lock().unwrap().insert(account.to_owned(), budget);
    }

    /// Reserves `calls` under `id` (a new plan, or one growing) in the shared budget, drawing the
    /// first `first` of them at once when the limits allow (see `reserve.lua`): the calls drawn,
    /// the clock hour they count in, and the calls left in the plan.
    async fn take(
        &self,
        account: &str,
        id: &str,
        (calls, first): (u32, u32),
        deadline: Instant,
    ) -> Result<Found<(u32, i64, u32)>, Duration> {
        let r = &self.redis;
        let keys = r.pacing_keys(account);
        wait::until(
            deadline,
            &self.released,
            |_| {},
            || async {
                let mut inv = r.scripts.reserve.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(self.config.hourly_limit).arg(calls).arg(id).arg(r.ttl_ms());
                inv.arg(self.period_ms).arg(self.tau_ms).arg(first);
                match r.run::<(i64, i64, i64, i64, i64, i64, i64)>(&inv).await {
                    None => Look::Ready(Found::Fallback),
                    Some((taken, used, reserved, to_next_hour_ms, drawn, hour, left)) => {
                        self.seen(account, used, reserved);
                        let to_next_hour = Duration::from_millis(to_next_hour_ms.max(0) as u64);
                        if taken == 1 {
                            let count = |n: i64| n.clamp(0, u32::MAX as i64) as u32;
                            Look::Ready(Found::Taken((count(drawn), hour, count(left))))
                        } else if (self.config.hourly_limit as i64) - used < calls as i64 {
                            // Even if every reserved call came back, this hour cannot hold the plan.
                            Look::Sleep(to_next_hour)
                        } else {
                            Look::Blocked { retry_after: to_next_hour }
                        }
                    }
                }
            },
        )
        .await
    }

    /// Falling back: this sidecar's count starts from its share of what the account had left when
    /// Redis last said, not from a fresh share.
    fn seed(&self, account: &str) {
        let last = self.budgets.lock().unwrap().get(account).copied();
        if let Some(budget) = last {
            self.local.rebase(account, budget.free());
        }
    }

    /// Falling back: the count goes to this sidecar's share; and a reservation whose script was
    /// sent (Redis was not known to be down) may have been made after it timed out, so it is given
    /// back once Redis answers. (While Redis is known down no script is sent: nothing to give back,
    /// and the kept writes stay for what the upstream did.)
    fn fell_back(&self, account: &str, keys: (String, String), id: String, sent: bool) {
        if sent {
            self.redis.keep(Pending::Release { keys, id });
        }
        self.seed(account);
    }

    fn burst_window(&self) -> Duration {
        Duration::from_secs(self.config.burst_window_secs)
    }

    /// A call made from this sidecar's own share (Redis could not be reached).
    fn spent_alone(&self, account: &str) {
        let now = Instant::now();
        let mut unshared = self.unshared.lock().unwrap();
        let times = unshared.entry(account.to_owned()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= self.burst_window()) {
            times.pop_front();
        }
        times.push_back(now);
    }

    /// Tells the shared burst limiter of the calls this sidecar made on its own within the last
    /// burst window, once Redis answers again. Kept for the next time if Redis does not take it.
    async fn report_unshared(&self, account: &str) {
        let now = Instant::now();
        let calls = {
            let mut unshared = self.unshared.lock().unwrap();
            let Some(times) = unshared.remove(account) else { return };
            times.iter().filter(|t| now.duration_since(**t) < self.burst_window()).count()
        };
        if calls == 0 {
            return;
        }
        let r = &self.redis;
        let mut inv = r.scripts.spent.prepare_invoke();
        inv.key(r.account_key(account, "gcra")).arg(self.period_ms).arg(calls);
        if r.run::<i64>(&inv).await.is_none() {
            let mut unshared = self.unshared.lock().unwrap();
            let times = unshared.entry(account.to_owned()).or_default();
            times.extend(std::iter::repeat_n(now, calls));
        }
    }

    /// A free call from this sidecar's batch for `account`, if it has one left.
    fn take_batched(&self, account: &str) -> bool {
        let mut batches = self.batches.lock().unwrap();
        match batches.get_mut(account) {
            Some(b) if b.left > 0 && Instant::now() < b.until => {
                b.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// A free call (passthrough): from the batch, or from a new batch taken from Redis. A batch
    /// spent before it lapsed makes the next one twice as large (up to `max_batch`); one that
    /// lapsed with calls left, as large as what was spent, plus one.
    async fn free_permit(&self, account: &str, deadline: Instant) -> Result<Found<()>, Duration> {
        if self.take_batched(account) {
            return Ok(Found::Taken(()));
        }
        let refill = self.refills.lock().unwrap().entry(account.to_owned()).or_default().clone();
        let _refilling = refill.lock().await;
        if self.take_batched(account) {
            return Ok(Found::Taken(()));
        }
        let last = self.batches.lock().unwrap().remove(account);
        let count = match last {
            None => 1,
            Some(b) if b.left == 0 => (b.size * 2).min(self.max_batch),
            Some(b) => (b.size - b.left + 1).min(self.max_batch),
        };
        let unused = last.filter(|b| b.left > 0);
        match self.shared_permits(account, Draw::Free, (count, unused, false), deadline).await? {
            Found::Taken((taken, hour, _)) => {
                let batch = Batch { left: taken - 1, size: taken, until: Instant::now() + BATCH_LIFE, hour };
                self.batches.lock().unwrap().insert(account.to_owned(), batch);
                Ok(Found::Taken(()))
            }
            Found::Fallback => Ok(Found::Fallback),
        }
    }

    /// The account was paused: the calls its batches hold are no longer spent (they go back with
    /// the next look at Redis).
    fn lapse_batches(&self, account: &str) {
        let now = Instant::now();
        if let Some(b) = self.batches.lock().unwrap().get_mut(account) {
            b.until = b.until.min(now);
        }
        for p in self.plan_batches.lock().unwrap().values_mut().filter(|p| p.account == account) {
            if let Some(b) = &mut p.batch {
                b.until = b.until.min(now);
            }
        }
    }

    /// Calls of `account` this sidecar holds in batches, not yet spent.
    fn ahead(&self, account: &str) -> i64 {
        let now = Instant::now();
        let live = |b: &Batch| if b.until > now { b.left as i64 } else { 0 };
        let free = self.batches.lock().unwrap().get(account).map_or(0, live);
        let planned: i64 = self
            .plan_batches
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.account == account)
            .filter_map(|p| p.batch.as_ref().map(live))
            .sum();
        free + planned
    }

    /// A call from `plan`'s batch, if it has one left that a draw keeping `keep` may take; and
    /// whether that emptied the batch of a plan that holds more calls than the delete.
    fn take_planned(&self, plan: &str, keep: u32) -> Option<bool> {
        let mut batches = self.plan_batches.lock().unwrap();
        let p = batches.get_mut(plan)?;
        match &mut p.batch {
            Some(b) if b.left > 0 && Instant::now() < b.until && p.in_plan + b.left > keep => {
                b.left -= 1;
                Some(b.left == 0 && p.in_plan > 1)
            }
            _ => None,
        }
    }

    /// The lock that makes one refill of `plan`'s batch at a time.
    fn plan_refill(&self, plan: &PlanId) -> Arc<tokio::sync::Mutex<()>> {
        let mut batches = self.plan_batches.lock().unwrap();
        let entry = batches.entry(plan.id.clone()).or_insert_with(|| PlanBatch {
            account: plan.account.clone(),
            batch: None,
            in_plan: 0,
            refill: Arc::default(),
        });
        entry.refill.clone()
    }

    /// A plan's batch was emptied by a call about to be made: its next calls are likely to follow
    /// that call's answer (the finish after the create, more parts), so the next batch is taken in
    /// the background meanwhile, if the limits allow it at once and no draw is refilling already.
    /// It takes from the plan alone, and never a call the delete keeps.
    fn read_ahead(&self, plan: &PlanId) {
        let (Some(me), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else { return };
        let plan = plan.clone();
        runtime.spawn(async move {
            // Not for a plan released meanwhile (nor making its entry again).
            let refill = me.plan_batches.lock().unwrap().get(&plan.id).map(|p| p.refill.clone());
            let Some(refill) = refill else { return };
            let Ok(_refilling) = refill.try_lock() else { return };
            let _ = me.refill_plan(&plan, (1, true), Instant::now()).await;
        });
    }

    /// Takes `plan`'s next batch from Redis (giving back what the last one left), grown and shrunk
    /// as `free_permit`'s are; one of its calls is spent at once unless `ahead` (then it never
    /// comes from the free budget, and the plan's last call stays for the delete).
    async fn refill_plan(
        &self,
        plan: &PlanId,
        (keep, ahead): (u32, bool),
        deadline: Instant,
    ) -> Result<Found<()>, Duration> {
        let last = self.plan_batches.lock().unwrap().get_mut(&plan.id).and_then(|p| p.batch.take());
        let count = match last {
            None => 1,
            Some(b) if b.left == 0 => (b.size * 2).min(self.max_batch),
            Some(b) => (b.size - b.left + 1).min(self.max_batch),
        };
        let unused = last.filter(|b| b.left > 0);
        let draw = Draw::Plan { plan, keep };
        match self.shared_permits(&plan.account, draw, (count, unused, ahead), deadline).await? {
            Found::Taken((taken, hour, in_plan)) => {
                let left = if ahead { taken } else { taken - 1 };
                let kept = {
                    let mut batches = self.plan_batches.lock().unwrap();
                    match (batches.get_mut(&plan.id), in_plan) {
                        (Some(p), Some(in_plan)) => {
                            p.batch = Some(Batch { left, size: taken, until: Instant::now() + BATCH_LIFE, hour });
                            p.in_plan = in_plan;
                            true
                        }
                        _ => false,
                    }
                };
                // A plan released meanwhile (its upload ended while this batch was read ahead):
                // its calls go back at once, or they would count as made for the rest of the hour.
                if !kept && left > 0 {
                    self.give_back(&plan.account, left, hour).await;
                }
                Ok(Found::Taken(()))
            }
            Found::Fallback => Ok(Found::Fallback),
        }
    }

    /// A call drawn from a plan: from its batch, or from a new batch taken from Redis, grown and
    /// shrunk as `free_permit`'s are. A batch's calls come from the plan alone (never from the free
    /// budget, which a plan held down to `keep` draws from one call at a time), and may include
    /// calls later stages keep for themselves: a draw spends from the batch only while the batch
    /// and the plan together hold more than its own `keep`. What a lapsed batch left goes back to
    /// the plan with the next look, and a released plan's with its release.
    async fn plan_permit(&self, plan: &PlanId, keep: u32, deadline: Instant) -> Result<Found<()>, Duration> {
        if let Some(emptied) = self.take_planned(&plan.id, keep) {
            if emptied {
                self.read_ahead(plan);
            }
            return Ok(Found::Taken(()));
        }
        let refill = self.plan_refill(plan);
        let _refilling = refill.lock().await;
        if let Some(emptied) = self.take_planned(&plan.id, keep) {
            if emptied {
                self.read_ahead(plan);
            }
            return Ok(Found::Taken(()));
        }
        self.refill_plan(plan, (keep, false), deadline).await
    }

    /// Gives back `calls` taken in clock `hour` and not spent; whether Redis took them.
    async fn give_back(&self, account: &str, calls: u32, hour: i64) -> bool {
        give_back(&self.redis, self.period_ms, account, calls, hour).await
    }

    /// Gives back the calls of lapsed batches (those of accounts no longer busy).
    async fn return_lapsed(&self) {
        let now = Instant::now();
        let lapsed: Vec<(String, Batch)> = {
            let mut batches = self.batches.lock().unwrap();
            let accounts: Vec<String> =
                batches.iter().filter(|(_, b)| b.until <= now).map(|(a, _)| a.clone()).collect();
            accounts
                .into_iter()
                .filter_map(|a| batches.remove(&a).map(|b| (a, b)))
                .filter(|(_, b)| b.left > 0)
                .collect()
        };
        for (account, batch) in lapsed {
            if !self.give_back(&account, batch.left, batch.hour).await {
                return;
            }
        }
    }

    /// Renews the plans this sidecar holds.
    pub async fn renew(&self) {
        self.return_lapsed().await;
        let held: Vec<(String, Vec<String>)> =
            self.plans.lock().unwrap().iter().map(|(a, ids)| (a.clone(), ids.iter().cloned().collect())).collect();
        let r = &self.redis;
        for (account, ids) in held {
            let mut inv = r.scripts.renew.prepare_invoke();
            inv.key(r.account_key(&account, "plans")).key(r.account_key(&account, "plans:x")).arg(r.ttl_ms());
            for id in &ids {
                inv.arg(id);
            }
            if r.run::<i64>(&inv).await.is_none() {
                return;
            }
        }
    }

    /// One permit from the shared budget.
    async fn shared_permit(&self, account: &str, draw: Draw<'_>, deadline: Instant) -> Result<Found<()>, Duration> {
        let taken = self.shared_permits(account, draw, (1, None, false), deadline).await?;
        Ok(match taken {
            Found::Taken(_) => Found::Taken(()),
            Found::Fallback => Found::Fallback,
        })
    }

    /// Permits from the shared budget: up to `count` for a free draw or one from a plan (one
    /// otherwise), giving back the calls a lapsed batch left; a plan's draw `ahead` takes only
    /// from the plan, and leaves its last call. Returns how many were taken, the clock hour they
    /// count in, and the calls then left in the plan they came from (None when they did not come
    /// from a plan).
    async fn shared_permits(
        &self,
        account: &str,
        draw: Draw<'_>,
        (count, unused, ahead): (u32, Option<Batch>, bool),
        deadline: Instant,
    ) -> Result<Found<(u32, i64, Option<u32>)>, Duration> {
        let r = &self.redis;
        let keys = r.pacing_keys(account);
        let (mode, id, keep) = match draw {
            Draw::Free => ("free", "", 0),
            Draw::Plan { plan, keep } => (if ahead { "ahead" } else { "plan" }, plan.id.as_str(), keep),
            Draw::Granted => ("granted", "", 0),
        };
        let unused = Mutex::new(unused);
        let unused = &unused;
        wait::until(deadline, &self.released, crate::telemetry::count_throttle_wait, || async {
            let mut inv = r.scripts.acquire.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(self.config.hourly_limit).arg(mode).arg(id).arg(keep).arg(self.period_ms).arg(self.tau_ms);
            // Given back with the first look only, whatever it finds.
            let back = unused.lock().unwrap().take().map_or((0, -1), |b| (b.left, b.hour));
            inv.arg(count).arg(back.0).arg(back.1);
            match r.run::<(i64, i64, i64, i64, i64, i64, i64, i64)>(&inv).await {
                None => Look::Ready(Found::Fallback),
                Some((status, wait_ms, used, reserved, to_next_hour_ms, taken, hour, in_plan)) => {
                    self.seen(account, used, reserved);
                    let in_plan = (in_plan >= 0).then(|| in_plan.min(u32::MAX as i64) as u32);
                    match status {
                        0 => Look::Ready(Found::Taken((taken.clamp(1, count as i64) as u32, hour, in_plan))),
                        1 => Look::Sleep(Duration::from_millis(wait_ms.max(1) as u64)),
                        _ => Look::Blocked { retry_after: Duration::from_millis(to_next_hour_ms.max(0) as u64) },
                    }
                }
            }
        })
        .await
    }
}

/// Gives back `calls` of `account` taken in clock `hour` and not spent: off the hourly count (if
/// it is still that hour) and off the burst limiter; whether Redis took them.
async fn give_back(redis: &Redis, period_ms: f64, account: &str, calls: u32, hour: i64) -> bool {
    let keys = redis.pacing_keys(account);
    let mut inv = redis.scripts.giveback.prepare_invoke();
    for k in &keys {
        inv.key(k);
    }
    inv.arg(period_ms).arg(calls).arg(hour);
    redis.run::<i64>(&inv).await.is_some()
}

impl Pacing for SharedPacing {
    fn reserve<'a>(
        &'a self,
        account: &'a str,
        calls: u32,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<PlanId, Duration>> {
        Box::pin(async move {
            if !self.config.enabled {
                return self.local.reserve(account, calls, deadline).await;
            }
            if calls > self.config.hourly_limit {
                return Err(clock_hour().1.max(Duration::from_secs(1)));
            }
            let id = fresh_id("plan");
            let sent = !self.redis.is_down();
            // The create's call, drawn with the plan (it follows at once).
            match self.take(account, &id, (calls, 1), deadline).await? {
                Found::Taken((drawn, hour, in_plan)) => {
                    self.plans.lock().unwrap().entry(account.to_owned()).or_default().insert(id.clone());
                    let batch = (drawn > 0).then(|| Batch {
                        left: drawn,
                        size: drawn,
                        until: Instant::now() + BATCH_LIFE,
                        hour,
                    });
                    let planned = PlanBatch { account: account.to_owned(), batch, in_plan, refill: Arc::default() };
                    self.plan_batches.lock().unwrap().insert(id.clone(), planned);
                    Ok(PlanId { account: account.to_owned(), id, shared: true })
                }
                Found::Fallback => {
                    self.fell_back(
                        account,
                        (self.redis.account_key(account, "plans"), self.redis.account_key(account, "plans:x")),
                        id,
                        sent,
                    );
                    self.local.reserve(account, calls, deadline).await
                }
            }
        })
    }

    fn grow<'a>(&'a self, plan: &'a PlanId, calls: u32, deadline: Instant) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(async move {
            if !plan.shared || !self.config.enabled {
                return self.local.grow(plan, calls, deadline).await;
            }
            match self.take(&plan.account, &plan.id, (calls, 0), deadline).await? {
                Found::Taken((_, _, in_plan)) => {
                    if let Some(p) = self.plan_batches.lock().unwrap().get_mut(&plan.id) {
                        p.in_plan = in_plan;
                    }
                    Ok(())
                }
                // Held in this sidecar's share under the same id until Redis answers.
                Found::Fallback => self.local.grow(plan, calls, deadline).await,
            }
        })
    }

    fn release(&self, plan: &PlanId) {
        self.local.release(plan);
        if !plan.shared {
            return;
        }
        if let Some(ids) = self.plans.lock().unwrap().get_mut(&plan.account) {
            ids.remove(&plan.id);
        }
        let unspent = self.plan_batches.lock().unwrap().remove(&plan.id).and_then(|p| p.batch).filter(|b| b.left > 0);
        let (redis, plan, period_ms) = (self.redis.clone(), plan.clone(), self.period_ms);
        // Given back in the background: a drop cannot wait. If Redis does not take it, the plan
        // expires with its TTL (and calls its batch did not spend stay counted: never too few).
        self.redis.spawn(async move {
            if let Some(batch) = unspent {
                give_back(&redis, period_ms, &plan.account, batch.left, batch.hour).await;
            }
            let keys = (redis.account_key(&plan.account, "plans"), redis.account_key(&plan.account, "plans:x"));
            redis.release(&keys, &plan.id).await;
        });
        self.released.notify_waiters();
    }

    fn acquire<'a>(
        &'a self,
        account: &'a str,
        draw: Draw<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(async move {
            let local_plan = matches!(draw, Draw::Plan { plan, .. } if !plan.shared);
            if !self.config.enabled {
                return self.local.acquire(account, draw, deadline).await;
            }
            if local_plan {
                let taken = self.local.acquire(account, draw, deadline).await;
                if taken.is_ok() {
                    self.spent_alone(account);
                }
                return taken;
            }
            if !self.redis.is_down() {
                self.report_unshared(account).await;
            }
            let found = match draw {
                Draw::Free => self.free_permit(account, deadline).await?,
                Draw::Plan { plan, keep } => self.plan_permit(plan, keep, deadline).await?,
                Draw::Granted => self.shared_permit(account, draw, deadline).await?,
            };
            match found {
                Found::Taken(()) => Ok(()),
                Found::Fallback => {
                    self.seed(account);
                    // A plan reserved in the shared budget keeps its promise: its calls are
                    // granted from this sidecar's share; unless it grew here meanwhile.
                    let draw = match draw {
                        Draw::Plan { plan, keep } if self.local.holds(plan) => Draw::Plan { plan, keep },
                        Draw::Plan { .. } => Draw::Granted,
                        other => other,
                    };
                    let taken = self.local.acquire(account, draw, deadline).await;
                    if taken.is_ok() {
                        self.spent_alone(account);
                    }
                    taken
                }
            }
        })
    }

    fn observe(&self, account: &str, status: StatusCode, headers: &HeaderMap, code: Option<&str>) {
        self.local.observe(account, status, headers, code);
        if !self.config.enabled || self.redis.is_down() {
            return;
        }
        let seen = Seen::read(headers, code, status);
        let pause_ms = seen.pause_secs(self.config.burst_window_secs).map_or(0, |s| s * 1000);
        let left = seen.remaining.hourly;
        // Calls this sidecar holds in batches count as used in Redis but not yet upstream.
        let ahead = self.ahead(account);
        let rebase = {
            let mut budgets = self.budgets.lock().unwrap();
            let known = budgets.get_mut(account);
            let upstream_used = left.map(|l| self.config.hourly_limit as i64 - l);
            match (known, upstream_used) {
                // Only when it changes something: the upstream has seen more calls than counted
                // (see `learn.lua`). Counted here at once, with the batches on top, so that the
                // answers that follow, saying the same, send nothing more.
                (Some(b), Some(used)) if used > b.used as i64 => {
                    b.used = (used + ahead).clamp(0, u32::MAX as i64) as u32;
                    true
                }
                (Some(_), _) => false,
                (None, used) => used.is_some_and(|u| u > 0),
            }
        };
        if pause_ms == 0 && !rebase {
            return;
        }
        if pause_ms > 0 {
            self.lapse_batches(account);
        }
        let speaks_of = match seen.reset {
            Some(reset) => reset.div_euclid(3600) - 1,
            None => seen.now.div_euclid(3600),
        };
        let (redis, limit, account) = (self.redis.clone(), self.config.hourly_limit, account.to_owned());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut inv = redis.scripts.learn.prepare_invoke();
                inv.key(redis.account_key(&account, "hour")).key(redis.account_key(&account, "pause"));
                inv.arg(limit).arg(left.unwrap_or(-1)).arg(speaks_of).arg(pause_ms).arg(ahead);
                redis.run::<i64>(&inv).await;
            });
        }
    }

    fn default_deadline(&self) -> Instant {
        self.local.default_deadline()
    }

    fn remaining(&self) -> Vec<(String, Remaining)> {
        self.local.remaining()
    }

    fn budgets(&self) -> Vec<(String, Budget)> {
        if self.redis.is_down() {
            return self.local.budgets();
        }
        self.budgets.lock().unwrap().iter().map(|(a, b)| (a.clone(), *b)).collect()
    }
}
