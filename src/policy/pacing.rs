//! Per-account pacing of upstream calls, behind the [`Pacing`] trait: every call (upload parts and
//! passthrough alike) takes a permit for the burst window and one for the hourly limit first, and
//! every answer is shown to it afterwards. [`LocalPacing`] keeps the counts in this process; one
//! that shares them between sidecars slots in behind the same trait.
//!
//! The burst window is a governor limiter sized so that no window of that length, fixed or
//! sliding, ever holds more calls than the limit: a tenth of the limit as a burst, the rest spread
//! evenly. The hourly limit is a count per clock hour, as the upstream keeps it (it resets at the
//! top of the hour): spreading 3,000 calls evenly over an hour would hold a busy account to one
//! call every 1.3 s when the upstream allows all of them at once. On top, the `X-RateLimit-*` / `X-BurstLimit-*` headers of every answer
//! pause the account before the upstream says no (other clients share its limits), and a throttling
//! answer pauses it until the announced reset.

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::{
    config::RateLimitConfig,
    upstream::client::{BURST_LIMIT_CODE, HOURLY_LIMIT_CODE, is_throttle_code, is_throttle_status},
};

/// A future a policy returns, boxed so that the policy can sit behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The pacing of upstream calls per account: the burst and hourly limits, and the pauses learned
/// from the upstream's headers and throttling answers.
pub trait Pacing: Send + Sync {
    /// Waits for a permit to call the upstream for `account`; when the wait would end after
    /// `deadline`, says how long the caller should come back after.
    fn acquire<'a>(&'a self, account: &'a str, deadline: Instant) -> BoxFuture<'a, Result<(), Duration>>;

    /// Learns from an answer: its rate-limit headers, and whether it was throttling (by the rule of
    /// `upstream::client::is_throttle`; `code` is the error code of a 4xx answer, if any).
    fn observe(&self, account: &str, status: StatusCode, headers: &HeaderMap, code: Option<&str>);

    /// The latest a call may wait for a permit, from now (`rate_limit.max_wait_secs`).
    fn default_deadline(&self) -> Instant;

    /// What each account's last answer announced, for metrics.
    fn remaining(&self) -> Vec<(String, Remaining)>;
}

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

struct AccountPace {
    burst: Direct,
    /// (clock hour, calls counted in it).
    hourly: Mutex<(i64, u32)>,
    paused_until: Mutex<Option<Instant>>,
}

impl AccountPace {
    /// Counts one call in the current clock hour, or says how long until the next one.
    fn take_hourly(&self, limit: u32) -> Result<(), Duration> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let hour = (now.as_secs() / 3600) as i64;
        let mut h = self.hourly.lock().unwrap();
        if h.0 != hour {
            *h = (hour, 0);
        }
        if h.1 < limit {
            h.1 += 1;
            Ok(())
        } else {
            Err(Duration::from_secs((hour as u64 + 1) * 3600) - now)
        }
    }
}

/// What the upstream last announced for an account, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    pub hourly: Option<i64>,
    pub burst: Option<i64>,
}

/// This process's own counts.
pub struct LocalPacing {
    config: RateLimitConfig,
    accounts: Mutex<HashMap<String, Arc<AccountPace>>>,
    remaining: Mutex<HashMap<String, Remaining>>,
}

/// At most `limit` calls in any window of `window`: a burst of a tenth, the rest spread evenly.
fn quota(limit: u32, window: Duration) -> Quota {
    let burst = (limit / 10).max(1);
    let sustained = (limit - burst).max(1);
    // Rounded up: a period a nanosecond short would let the window hold one call too many.
    let nanos = window.as_nanos().div_ceil(sustained as u128).max(1);
    let period = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    Quota::with_period(period).expect("period is above zero").allow_burst(NonZeroU32::new(burst).expect("at least one"))
}

// === impl LocalPacing ===

impl Pacing for LocalPacing {
    fn acquire<'a>(&'a self, account: &'a str, deadline: Instant) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(async move { self.wait(account, deadline).await.map(|_| ()) })
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
}

impl LocalPacing {
    pub fn new(config: RateLimitConfig) -> Self {
        Self { config, accounts: Mutex::new(HashMap::new()), remaining: Mutex::new(HashMap::new()) }
    }

    fn pace(&self, account: &str) -> Arc<AccountPace> {
        let mut map = self.accounts.lock().unwrap();
        map.entry(account.to_owned())
            .or_insert_with(|| {
                let c = &self.config;
                Arc::new(AccountPace {
                    burst: RateLimiter::direct(quota(c.burst_limit, Duration::from_secs(c.burst_window_secs))),
                    hourly: Mutex::new((0, 0)),
                    paused_until: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Waits for a permit to call the upstream for `account`. When the wait would end after
    /// `deadline`, returns how long the caller should come back after.
    async fn wait(&self, account: &str, deadline: Instant) -> Result<Duration, Duration> {
        if !self.config.enabled {
            return Ok(Duration::ZERO);
        }
        let pace = self.pace(account);
        let started = Instant::now();
        let mut counted = false;
        loop {
            let now = Instant::now();
            let paused = *pace.paused_until.lock().unwrap();
            let wait = match paused.filter(|until| *until > now) {
                Some(until) => until - now,
                // Each limiter's wait is measured on its own clock: quanta clocks are calibrated per
                // instance, so an instant of one means nothing to another.
                None => match pace.burst.check() {
                    Err(not_until) => not_until.wait_time_from(pace.burst.clock().now()),
                    Ok(()) => match pace.take_hourly(self.config.hourly_limit) {
                        Ok(()) => return Ok(now - started),
                        Err(until_next_hour) => until_next_hour,
                    },
                },
            };
            if now + wait > deadline {
                return Err(wait.max(Duration::from_secs(1)));
            }
            if !counted {
                // One wait per call, however many times it wakes to find the permit taken.
                crate::telemetry::count_throttle_wait(wait);
                counted = true;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Learns from an answer's rate-limit headers and status.
    fn learn(&self, account: &str, status: StatusCode, headers: &HeaderMap, code: Option<&str>) {
        let num =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
        let remaining = Remaining { hourly: num("x-ratelimit-remaining"), burst: num("x-burstlimit-remaining") };
        if remaining != Remaining::default() {
            let mut map = self.remaining.lock().unwrap();
            match map.get_mut(account) {
                Some(known) => *known = remaining,
                None => {
                    map.insert(account.to_owned(), remaining);
                }
            }
        }
        let throttled = is_throttle_status(status) || code.is_some_and(is_throttle_code);
        if !self.config.enabled {
            return;
        }
        // The upstream's own clock, from its Date header, so that skew between the clocks cannot
        // stretch or cut a pause; ours when it sends none.
        let server_now = headers.get(http::header::DATE).and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        let now_epoch =
            server_now.unwrap_or_else(SystemTime::now).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let hourly_out = code == Some(HOURLY_LIMIT_CODE) || remaining.hourly == Some(0);
        let burst_out = code == Some(BURST_LIMIT_CODE) || remaining.burst == Some(0) || throttled;
        let pause_secs = if hourly_out {
            // Until the announced reset (the top of the hour), never more than an hour.
            let reset = num("x-ratelimit-reset").unwrap_or(now_epoch + 3600 - now_epoch.rem_euclid(3600));
            Some((reset - now_epoch).clamp(1, 3600))
        } else if burst_out {
            // No reset is announced for the burst window: wait for the next window boundary.
            let w = self.config.burst_window_secs.max(1) as i64;
            Some((w - now_epoch.rem_euclid(w)).max(1))
        } else {
            None
        };
        if let Some(secs) = pause_secs {
            let until = Instant::now() + Duration::from_secs(secs as u64);
            let pace = self.pace(account);
            let mut paused = pace.paused_until.lock().unwrap();
            *paused = Some(paused.map_or(until, |p| p.max(until)));
            tracing::info!(account, pause_secs = secs, throttled, "pausing upstream calls for the account");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_holds_more_than_the_limit() {
        // Burst of 10% at once, the rest spread evenly: at most `limit` in any window.
        let lim = RateLimiter::direct(quota(100, Duration::from_secs(10)));
        let burst = (0..200).take_while(|_| lim.check().is_ok()).count();
        assert_eq!(burst, 10);
        let q = quota(100, Duration::from_secs(10));
        let per_window = q.burst_size().get() as f64 + 10.0 / q.replenish_interval().as_secs_f64();
        assert!(per_window <= 100.0 + 1e-9, "{per_window}");
    }

    #[tokio::test]
    async fn the_hourly_limit_is_counted_per_clock_hour() {
        let rl = LocalPacing::new(RateLimitConfig { hourly_limit: 3, burst_limit: 1000, ..RateLimitConfig::default() });
        let soon = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            assert!(rl.acquire("1", soon).await.is_ok(), "the whole hourly allowance may be used at once");
        }
        let wait = rl.acquire("1", soon).await.unwrap_err();
        assert!(wait <= Duration::from_secs(3600), "{wait:?}");
    }

    #[tokio::test]
    async fn a_throttling_answer_pauses_the_account_and_a_long_wait_gives_up() {
        let rl = LocalPacing::new(RateLimitConfig { max_wait_secs: 120, ..RateLimitConfig::default() });
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        headers.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        rl.observe("1", StatusCode::BAD_REQUEST, &headers, Some(HOURLY_LIMIT_CODE));
        let soon = Instant::now() + Duration::from_secs(5);
        let retry_after = rl.acquire("1", soon).await.unwrap_err();
        assert!(retry_after > Duration::from_secs(590), "{retry_after:?}");
        assert!(rl.acquire("2", soon).await.is_ok(), "other accounts are not paused");
        assert_eq!(rl.remaining().iter().find(|(a, _)| a == "1").unwrap().1.hourly, Some(0));
    }
}
