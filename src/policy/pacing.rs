//! Per-account pacing of upstream calls, behind the [`Pacing`] trait: every call (upload parts and
//! passthrough alike) takes a permit for the burst window and one call of the hourly budget first,
//! and every answer is shown to it afterwards. [`LocalPacing`] keeps the counts in this process;
//! `policy::shared` keeps them in Redis for every sidecar of an account.
//!
//! **Burst**: a GCRA limiter sized so that no window of that length, fixed or sliding, ever holds
//! more calls than the limit: a twentieth of the limit as a burst, the rest spread evenly.
//!
//! **Hourly, by plan**: the hourly limit is a count per clock hour, as the upstream keeps it (it
//! resets at the top of the hour). An upload reserves its whole plan of calls before it creates
//! anything ([`Plan`]); its calls draw from the plan, keeping back what its later stages need (the
//! commit, the delete), and from the free budget once the plan is spent. Passthrough calls draw
//! from the free budget alone: the limit less the calls made this hour and the calls reserved.
//!
//! **Feedback**: the `X-RateLimit-*` / `X-BurstLimit-*` headers of every answer re-base the count
//! (other clients of the account spend it too) and pause the account before the upstream says no;
//! a throttling answer pauses it until the announced reset.

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};
use http::{HeaderMap, StatusCode};
use tokio::{sync::Notify, time::Instant};

use super::wait::{self, Look};
use crate::{
    config::RateLimitConfig,
    upstream::client::{BURST_LIMIT_CODE, HOURLY_LIMIT_CODE, is_throttle_code, is_throttle_status},
};

/// A future a policy returns, boxed so that the policy can sit behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The pacing of upstream calls per account: the burst and hourly limits, the plans of admitted
/// uploads, and the pauses learned from the upstream's headers and throttling answers.
pub trait Pacing: Send + Sync {
    /// Reserves `calls` of `account`'s hourly budget for an upload's plan, waiting for reserved
    /// calls to come back until `deadline`; then says how long the caller should come back after
    /// (the time to the next clock hour).
    fn reserve<'a>(
        &'a self,
        account: &'a str,
        calls: u32,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<PlanId, Duration>>;

    /// Adds `calls` to a plan (a stream of unknown length grows its plan part by part).
    fn grow<'a>(&'a self, plan: &'a PlanId, calls: u32, deadline: Instant) -> BoxFuture<'a, Result<(), Duration>>;

    /// Gives back the calls a plan did not use.
    fn release(&self, plan: &PlanId);

    /// Waits for a permit to call the upstream for `account`, drawing the call as `draw` says;
    /// when the wait would end after `deadline`, says how long the caller should come back after.
    fn acquire<'a>(
        &'a self,
        account: &'a str,
        draw: Draw<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), Duration>>;

    /// Learns from an answer: its rate-limit headers, and whether it was throttling (by the rule of
    /// `upstream::client::is_throttle`; `code` is the error code of a 4xx answer, if any).
    fn observe(&self, account: &str, status: StatusCode, headers: &HeaderMap, code: Option<&str>);

    /// The latest a call may wait for a permit, from now (`rate_limit.max_wait_secs`).
    fn default_deadline(&self) -> Instant;

    /// What each account's last answer announced, for metrics.
    fn remaining(&self) -> Vec<(String, Remaining)>;

    /// Each account's hourly budget as last known, for metrics.
    fn budgets(&self) -> Vec<(String, Budget)>;
}

/// A plan's name in the pacing that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanId {
    pub account: String,
    pub id: String,
    /// Held in the budget shared through Redis (else in this process).
    pub shared: bool,
}

/// Where a call's place in the hourly budget comes from.
#[derive(Clone, Copy, Debug)]
pub enum Draw<'a> {
    /// The free budget: passthrough calls.
    Free,
    /// The plan, as long as it holds more than `keep` calls (what the upload's later stages
    /// need), then the free budget.
    Plan { plan: &'a PlanId, keep: u32 },
    /// Reserved in a budget this pacing does not hold (the shared one, while Redis cannot be
    /// reached): counted, never refused for want of budget.
    Granted,
}

/// An upload's reserved calls, given back when dropped.
pub struct Plan {
    id: PlanId,
    pacing: Arc<dyn Pacing>,
}

/// An account's hourly budget: its limit, the calls made this clock hour, the calls reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub used: u32,
    pub reserved: u32,
}

impl Budget {
    /// Calls neither made nor reserved: what a new plan or a passthrough call may take.
    pub fn free(&self) -> u32 {
        self.limit.saturating_sub(self.used.saturating_add(self.reserved))
    }
}

/// What the upstream last announced for an account, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    pub hourly: Option<i64>,
    pub burst: Option<i64>,
}

// === impl Plan ===

impl Plan {
    /// Reserves `calls` for an upload of `account` (see [`Pacing::reserve`]).
    pub async fn reserve(
        pacing: &Arc<dyn Pacing>,
        account: &str,
        calls: u32,
        deadline: Instant,
    ) -> Result<Plan, Duration> {
        let id = pacing.reserve(account, calls, deadline).await?;
        Ok(Plan { id, pacing: pacing.clone() })
    }

    /// Adds `calls` to the plan (see [`Pacing::grow`]).
    pub async fn grow(&self, calls: u32, deadline: Instant) -> Result<(), Duration> {
        self.pacing.grow(&self.id, calls, deadline).await
    }

    pub fn id(&self) -> &PlanId {
        &self.id
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        self.pacing.release(&self.id);
    }
}

/// Seconds since the epoch, the clock hour they fall in, and the time left to its end.
pub fn clock_hour() -> (i64, Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let hour = (now.as_secs() / 3600) as i64;
    (hour, Duration::from_secs((hour as u64 + 1) * 3600).saturating_sub(now))
}

/// The burst limiter's quota: at most `limit` calls in any window of `window`, a twentieth at
/// once and the rest spread evenly, so that over time 95% of the limit is used.
pub fn burst_quota(limit: u32, window: Duration) -> (u32, Duration) {
    let burst = (limit / 20).max(1);
    let sustained = (limit - burst.min(limit)).max(1);
    // Rounded up: a period a nanosecond short would let the window hold one call too many.
    let nanos = window.as_nanos().div_ceil(sustained as u128).max(1);
    (burst, Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
}

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The hourly count of one account in this process.
#[derive(Default)]
struct Hourly {
    hour: i64,
    used: u32,
    reserved: u32,
    /// Calls left in each plan.
    plans: HashMap<String, u32>,
}

impl Hourly {
    /// A new clock hour starts a new count; plans keep what they reserved.
    fn roll(&mut self, hour: i64) {
        if self.hour != hour {
            self.hour = hour;
            self.used = 0;
        }
    }

    fn budget(&self, limit: u32) -> Budget {
        Budget { limit, used: self.used, reserved: self.reserved }
    }
}

struct AccountPace {
    burst: Direct,
    hourly: Mutex<Hourly>,
    paused_until: Mutex<Option<Instant>>,
    /// Notified when calls are given back.
    released: Notify,
}

/// This process's own counts, for `share` of each account's limits (`[cluster] replicas`
/// sidecars share an account without sharing counts: each takes its part).
pub struct LocalPacing {
    config: RateLimitConfig,
    /// The sidecars this one shares each account with (itself included).
    share: u32,
    hourly_limit: u32,
    burst_limit: u32,
    accounts: Mutex<crate::FastMap<String, Arc<AccountPace>>>,
    remaining: Mutex<crate::FastMap<String, Remaining>>,
    next_plan: AtomicU64,
}

// === impl LocalPacing ===

impl Pacing for LocalPacing {
    fn reserve<'a>(
        &'a self,
        account: &'a str,
        calls: u32,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<PlanId, Duration>> {
        Box::pin(async move {
            let id = self.next_plan.fetch_add(1, Ordering::Relaxed).to_string();
            let plan = PlanId { account: account.to_owned(), id, shared: false };
            self.take_plan(&plan, calls, deadline).await?;
            Ok(plan)
        })
    }

    fn grow<'a>(&'a self, plan: &'a PlanId, calls: u32, deadline: Instant) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(self.take_plan(plan, calls, deadline))
    }

    fn release(&self, plan: &PlanId) {
        let pace = self.pace(&plan.account);
        let mut h = pace.hourly.lock().unwrap();
        if let Some(left) = h.plans.remove(&plan.id) {
            h.reserved = h.reserved.saturating_sub(left);
            drop(h);
            pace.released.notify_waiters();
        }
    }

    fn acquire<'a>(
        &'a self,
        account: &'a str,
        draw: Draw<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(self.wait(account, draw, deadline))
    }

    fn observe(&self, account: &str, status: StatusCode, headers: &HeaderMap, code: Option<&str>) {
        self.learn(account, status, headers, code);
    }

    fn default_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.config.max_wait_secs)
    }

    fn remaining(&self) -> Vec<(String, Remaining)> {
        self.remaining.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn budgets(&self) -> Vec<(String, Budget)> {
        let (hour, _) = clock_hour();
        let accounts = self.accounts.lock().unwrap();
        accounts
            .iter()
            .map(|(account, pace)| {
                let mut h = pace.hourly.lock().unwrap();
                h.roll(hour);
                (account.clone(), h.budget(self.hourly_limit))
            })
            .collect()
    }
}

impl LocalPacing {
    /// Pacing for `1/share` of each account's limits.
    pub fn new(config: RateLimitConfig, share: u32) -> Self {
        let share = share.max(1);
        Self {
            hourly_limit: (config.hourly_limit / share).max(1),
            burst_limit: (config.burst_limit / share).max(1),
            share,
            config,
            accounts: Mutex::default(),
            remaining: Mutex::default(),
            next_plan: AtomicU64::new(1),
        }
    }

    /// The hourly limit this process keeps to.
    pub fn hourly_limit(&self) -> u32 {
        self.hourly_limit
    }

    /// Re-bases this process's count on what the whole account has left this hour: of those
    /// calls, it may make its share.
    pub fn rebase(&self, account: &str, account_left: u32) {
        let pace = self.pace(account);
        let mut h = pace.hourly.lock().unwrap();
        h.roll(clock_hour().0);
        h.used = h.used.max(self.hourly_limit.saturating_sub(account_left / self.share));
    }

    /// Whether this process holds calls for `plan`.
    pub fn holds(&self, plan: &PlanId) -> bool {
        self.pace(&plan.account).hourly.lock().unwrap().plans.contains_key(&plan.id)
    }

    fn pace(&self, account: &str) -> Arc<AccountPace> {
        let mut map = self.accounts.lock().unwrap();
        // Looked up before an entry is made: the entry API would copy the name on every call.
        if let Some(pace) = map.get(account) {
            return pace.clone();
        }
        map.entry(account.to_owned())
            .or_insert_with(|| {
                let (burst, period) = burst_quota(self.burst_limit, Duration::from_secs(self.config.burst_window_secs));
                let quota = Quota::with_period(period)
                    .expect("period is above zero")
                    .allow_burst(NonZeroU32::new(burst).expect("at least one"));
                Arc::new(AccountPace {
                    burst: RateLimiter::direct(quota),
                    hourly: Mutex::new(Hourly::default()),
                    paused_until: Mutex::new(None),
                    released: Notify::new(),
                })
            })
            .clone()
    }

    /// Reserves `calls` more for `plan` once the free budget holds them.
    async fn take_plan(&self, plan: &PlanId, calls: u32, deadline: Instant) -> Result<(), Duration> {
        if !self.config.enabled {
            return Ok(());
        }
        let limit = self.hourly_limit;
        if calls > limit {
            // It can never fit.
            return Err(clock_hour().1.max(Duration::from_secs(1)));
        }
        let pace = self.pace(&plan.account);
        wait::until(
            deadline,
            &pace.released,
            |_| {},
            || {
                let (hour, to_next_hour) = clock_hour();
                let mut h = pace.hourly.lock().unwrap();
                h.roll(hour);
                let look = if h.budget(limit).free() >= calls {
                    h.reserved += calls;
                    *h.plans.entry(plan.id.clone()).or_default() += calls;
                    Look::Ready(())
                } else if limit.saturating_sub(h.used) < calls {
                    // Even if every reserved call came back, this hour cannot hold the plan:
                    // only the next hour can, so wait for it only if the deadline reaches it.
                    Look::Sleep(to_next_hour)
                } else {
                    Look::Blocked { retry_after: to_next_hour }
                };
                std::future::ready(look)
            },
        )
        .await
    }

    /// Waits for a permit to call the upstream for `account`. When the wait would end after
    /// `deadline`, returns how long the caller should come back after.
    async fn wait(&self, account: &str, draw: Draw<'_>, deadline: Instant) -> Result<(), Duration> {
        if !self.config.enabled {
            return Ok(());
        }
        let pace = self.pace(account);
        let limit = self.hourly_limit;
        wait::until(deadline, &pace.released, crate::telemetry::count_throttle_wait, || {
            let now = Instant::now();
            let paused = *pace.paused_until.lock().unwrap();
            let look = match paused.filter(|until| *until > now) {
                Some(until) => Look::Sleep(until - now),
                None => {
                    let (hour, to_next_hour) = clock_hour();
                    let mut h = pace.hourly.lock().unwrap();
                    h.roll(hour);
                    let free = h.budget(limit).free() > 0;
                    let from_plan = match draw {
                        Draw::Plan { plan, keep } => h.plans.get(&plan.id).is_some_and(|left| *left > keep),
                        Draw::Free | Draw::Granted => false,
                    };
                    if !(from_plan || free || matches!(draw, Draw::Granted)) {
                        if h.used >= limit {
                            // Spent, not merely held by plans (which may give calls back): nothing
                            // frees a call before the hour ends, so a caller that cannot wait that
                            // long hears so at once rather than at its deadline.
                            Look::Sleep(to_next_hour)
                        } else {
                            Look::Blocked { retry_after: to_next_hour }
                        }
                    } else {
                        // Each limiter's wait is measured on its own clock: quanta clocks are
                        // calibrated per instance, so an instant of one means nothing to another.
                        match pace.burst.check() {
                            Err(not_until) => Look::Sleep(not_until.wait_time_from(pace.burst.clock().now())),
                            Ok(()) => {
                                h.used += 1;
                                let took = match (from_plan, draw) {
                                    (true, Draw::Plan { plan, .. }) => match h.plans.get_mut(&plan.id) {
                                        Some(left) => {
                                            *left -= 1;
                                            true
                                        }
                                        None => false,
                                    },
                                    _ => false,
                                };
                                if took {
                                    h.reserved -= 1;
                                }
                                Look::Ready(())
                            }
                        }
                    }
                }
            };
            std::future::ready(look)
        })
        .await
    }

    /// Learns from an answer's rate-limit headers and status.
    fn learn(&self, account: &str, status: StatusCode, headers: &HeaderMap, code: Option<&str>) {
        let seen = Seen::read(headers, code, status);
        if seen.remaining != Remaining::default() {
            let mut map = self.remaining.lock().unwrap();
            match map.get_mut(account) {
                Some(known) => *known = seen.remaining,
                None => {
                    map.insert(account.to_owned(), seen.remaining);
                }
            }
        }
        if !self.config.enabled {
            return;
        }
        let pace = self.pace(account);
        if let Some(left) = seen.hourly_left_this_hour(clock_hour().0) {
            // The upstream's count is the truth: other clients spend the account's calls too.
            self.rebase(account, left);
        }
        if let Some(secs) = seen.pause_secs(self.config.burst_window_secs) {
            let until = Instant::now() + Duration::from_secs(secs as u64);
            let mut paused = pace.paused_until.lock().unwrap();
            *paused = Some(paused.map_or(until, |p| p.max(until)));
            tracing::info!(
                account,
                pause_secs = secs,
                throttled = seen.throttled,
                "pausing upstream calls for the account"
            );
        }
    }
}

/// What one answer says of the account's limits.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub remaining: Remaining,
    /// `X-RateLimit-Reset`, Unix seconds.
    pub reset: Option<i64>,
    /// The upstream's clock (its `Date`) where it decides something (see `read`), else ours,
    /// Unix seconds.
    pub now: i64,
    pub throttled: bool,
    pub hourly_out: bool,
    pub burst_out: bool,
}

impl Seen {
    pub fn read(headers: &HeaderMap, code: Option<&str>, status: StatusCode) -> Self {
        // One walk over the answer's names, matched on their text: every proxied answer passes
        // here, and a lookup by name hashed each of the three long names byte by byte. The first
        // line of a name counts, as `HeaderMap::get` would take it.
        let (mut hourly, mut burst, mut reset) = (None, None, None);
        for (name, value) in headers {
            let slot = match name.as_str() {
                "x-ratelimit-remaining" => &mut hourly,
                "x-burstlimit-remaining" => &mut burst,
                "x-ratelimit-reset" => &mut reset,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        // A count or time below zero is no figure of the upstream's (as unreadable as `abc`):
        // taken as zero left, it had held the account's calls until the top of the hour.
        let num = |value: Option<&http::HeaderValue>| {
            value.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok()).filter(|n| *n >= 0)
        };
        let remaining = Remaining { hourly: num(hourly), burst: num(burst) };
        let reset = num(reset);
        let throttled = is_throttle_status(status) || code.is_some_and(is_throttle_code);
        let hourly_out = code == Some(HOURLY_LIMIT_CODE) || remaining.hourly == Some(0);
        let burst_out = code == Some(BURST_LIMIT_CODE) || remaining.burst == Some(0) || throttled;
        // The upstream's own clock, from its Date header, so that skew between the clocks cannot
        // stretch or cut a pause; ours when it sends none. Read only where it decides something
        // (a pause, or which hour a count without a reset speaks of): parsing a date on every
        // answer cost a proxied GET more than the rest of this.
        let decides = hourly_out || burst_out || (remaining.hourly.is_some() && reset.is_none());
        let server_now = decides
            .then(|| headers.get(http::header::DATE).and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok()))
            .flatten();
        let now =
            server_now.unwrap_or_else(SystemTime::now).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        Self { remaining, reset, now, throttled, hourly_out, burst_out }
    }

    /// The calls the upstream says are left, when it speaks of the clock hour `hour` (its reset
    /// is that hour's end; an answer from the hour before says nothing of this one).
    pub fn hourly_left_this_hour(&self, hour: i64) -> Option<u32> {
        let left = self.remaining.hourly?;
        let speaks_of = match self.reset {
            Some(reset) => reset.div_euclid(3600) - 1,
            None => self.now.div_euclid(3600),
        };
        (speaks_of == hour).then(|| left.clamp(0, u32::MAX as i64) as u32)
    }

    /// How long to pause the account's calls, if at all.
    pub fn pause_secs(&self, burst_window_secs: u64) -> Option<i64> {
        let now = self.now;
        if self.hourly_out {
            // Until the announced reset (the top of the hour), never more than an hour.
            let reset = self.reset.unwrap_or(now + 3600 - now.rem_euclid(3600));
            Some((reset - now).clamp(1, 3600))
        } else if self.burst_out {
            // No reset is announced for the burst window: wait for the next window boundary.
            let w = burst_window_secs.max(1) as i64;
            Some((w - now.rem_euclid(w)).max(1))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing(hourly_limit: u32) -> LocalPacing {
        LocalPacing::new(RateLimitConfig { hourly_limit, burst_limit: 1000, ..RateLimitConfig::default() }, 1)
    }

    #[test]
    fn no_window_holds_more_than_the_limit() {
        // A burst of a twentieth at once, the rest spread evenly: at most `limit` in any window.
        let (burst, period) = burst_quota(100, Duration::from_secs(10));
        assert_eq!(burst, 5);
        let per_window = burst as f64 + 10.0 / period.as_secs_f64();
        assert!(per_window <= 100.0 + 1e-9, "{per_window}");
        assert!(per_window >= 99.0, "the limit is used: {per_window}");
    }

    #[test]
    fn figures_below_zero_are_read_as_none() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "-100".parse().unwrap());
        h.insert("x-burstlimit-remaining", "-1".parse().unwrap());
        h.insert("x-ratelimit-reset", "-5".parse().unwrap());
        let seen = Seen::read(&h, None, StatusCode::OK);
        assert_eq!((seen.remaining, seen.reset), (Remaining::default(), None));
        assert!(!seen.hourly_out && !seen.burst_out && seen.pause_secs(10).is_none());
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        assert!(Seen::read(&h, None, StatusCode::OK).hourly_out, "zero left is a figure");
    }

    #[test]
    fn the_first_line_of_a_figure_counts_and_names_are_matched_whole() {
        let mut h = HeaderMap::new();
        h.append("x-ratelimit-remaining", "7".parse().unwrap());
        h.append("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-burstlimit-remaining-extra", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", " 1700003600 ".parse().unwrap());
        let seen = Seen::read(&h, None, StatusCode::OK);
        assert_eq!(seen.remaining, Remaining { hourly: Some(7), burst: None });
        assert_eq!(seen.reset, Some(1_700_003_600));
        assert!(!seen.hourly_out && !seen.burst_out);
    }

    #[tokio::test]
    async fn a_spent_hour_is_refused_at_once_rather_than_at_the_deadline() {
        let rl = pacing(2);
        let soon = Instant::now() + Duration::from_secs(5);
        for _ in 0..2 {
            rl.acquire("1", Draw::Free, soon).await.unwrap();
        }
        let began = Instant::now();
        let wait = rl.acquire("1", Draw::Free, Instant::now() + Duration::from_secs(5)).await.unwrap_err();
        assert!(began.elapsed() < Duration::from_secs(1), "waited {:?} for an hour that was spent", began.elapsed());
        assert!(wait <= Duration::from_secs(3600), "{wait:?}");
    }

    #[tokio::test]
    async fn the_hourly_limit_is_counted_per_clock_hour() {
        let rl = pacing(3);
        let soon = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            assert!(rl.acquire("1", Draw::Free, soon).await.is_ok(), "the whole hourly allowance may be used at once");
        }
        let wait = rl.acquire("1", Draw::Free, Instant::now()).await.unwrap_err();
        assert!(wait <= Duration::from_secs(3600), "{wait:?}");
    }

    #[tokio::test]
    async fn plans_hold_their_calls_against_the_free_budget_and_give_back_what_they_did_not_use() {
        let rl = Arc::new(pacing(10));
        let now = Instant::now;
        let plan = rl.reserve("1", 6, now()).await.expect("6 of 10 fit");
        assert!(rl.reserve("1", 5, now()).await.is_err(), "5 more do not fit beside 6");
        // The plan's calls, keeping one back, then the free budget.
        for _ in 0..5 {
            rl.acquire("1", Draw::Plan { plan: &plan, keep: 1 }, now()).await.unwrap();
        }
        assert_eq!(rl.budgets()[0].1, Budget { limit: 10, used: 5, reserved: 1 });
        // Passthrough takes only what is neither used nor reserved.
        for _ in 0..4 {
            rl.acquire("1", Draw::Free, now()).await.unwrap();
        }
        assert!(rl.acquire("1", Draw::Free, now()).await.is_err(), "the held-back call is not free");
        assert!(rl.acquire("1", Draw::Plan { plan: &plan, keep: 1 }, now()).await.is_err(), "nor for a part");
        rl.acquire("1", Draw::Plan { plan: &plan, keep: 0 }, now()).await.expect("the delete has its call");
        rl.release(&plan);
        assert_eq!(rl.budgets()[0].1, Budget { limit: 10, used: 10, reserved: 0 });
        // A waiting plan starts when another gives calls back.
        let rl2 = Arc::new(pacing(10));
        let held = rl2.reserve("1", 8, now()).await.unwrap();
        let waiting = {
            let rl2 = rl2.clone();
            tokio::spawn(async move { rl2.reserve("1", 5, Instant::now() + Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        rl2.release(&held);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_throttling_answer_pauses_the_account_and_a_long_wait_gives_up() {
        let rl = LocalPacing::new(RateLimitConfig { max_wait_secs: 120, ..RateLimitConfig::default() }, 1);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        headers.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        rl.observe("1", StatusCode::BAD_REQUEST, &headers, Some(HOURLY_LIMIT_CODE));
        let soon = Instant::now() + Duration::from_secs(5);
        let retry_after = rl.acquire("1", Draw::Free, soon).await.unwrap_err();
        assert!(retry_after > Duration::from_secs(590), "{retry_after:?}");
        assert!(rl.acquire("2", Draw::Free, soon).await.is_ok(), "other accounts are not paused");
        assert_eq!(rl.remaining().iter().find(|(a, _)| a == "1").unwrap().1.hourly, Some(0));
    }

    #[tokio::test]
    async fn the_upstreams_remaining_count_rebases_the_budget_of_this_hour_only() {
        let rl = pacing(100);
        let (hour, _) = clock_hour();
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "30".parse().unwrap());
        headers.insert("x-ratelimit-reset", ((hour + 1) * 3600).to_string().parse().unwrap());
        rl.observe("1", StatusCode::OK, &headers, None);
        assert_eq!(rl.budgets()[0].1.used, 70, "other clients spent 70");
        headers.insert("x-ratelimit-remaining", "90".parse().unwrap());
        rl.observe("1", StatusCode::OK, &headers, None);
        assert_eq!(rl.budgets()[0].1.used, 70, "a late answer never gives calls back");
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset", (hour * 3600).to_string().parse().unwrap());
        rl.observe("2", StatusCode::OK, &headers, None);
        assert_eq!(
            rl.budgets().iter().find(|(a, _)| a == "2").unwrap().1.used,
            0,
            "last hour's count is not this one's"
        );
    }
}
