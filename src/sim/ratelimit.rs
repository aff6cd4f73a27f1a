//! The simulator's per-account call counters: an hourly limit that resets at the top of the hour and
//! a burst limit per fixed window, announced in `X-RateLimit-*` / `X-BurstLimit-*` on every answer.

use std::{collections::HashMap, sync::Mutex};

use http::{HeaderMap, HeaderValue};

use crate::config::sim::Limits;

/// Which limit a throttled call ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Hourly,
    Burst,
}

impl Exceeded {
    pub fn code(self) -> &'static str {
        match self {
            Exceeded::Hourly => "HOURLY_APIINVOCATION_LIMIT_EXCEEDED",
            Exceeded::Burst => "BURST_APIINVOCATION_LIMIT_EXCEEDED",
        }
    }

    pub fn message(self, limits: &Limits) -> String {
        match self {
            Exceeded::Hourly => format!(
                "The maximum number of hourly API invocations has been exceeded. The hourly limit is {}.",
                limits.hourly_limit
            ),
            Exceeded::Burst => format!(
                "The maximum number of burst API invocations has been exceeded. The burst limit is {} per {} seconds.",
                limits.burst_limit, limits.burst_window_secs
            ),
        }
    }
}

/// The figures a response announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    pub hourly_limit: u32,
    pub hourly_remaining: u32,
    /// Unix seconds of the next top of the hour.
    pub reset: i64,
    pub burst_limit: u32,
    pub burst_remaining: u32,
}

impl Announce {
    pub fn write(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, v: i64| {
            headers.insert(name, HeaderValue::from(v));
        };
        put("x-ratelimit-limit", self.hourly_limit.into());
        put("x-ratelimit-remaining", self.hourly_remaining.into());
        put("x-ratelimit-reset", self.reset);
        put("x-burstlimit-limit", self.burst_limit.into());
        put("x-burstlimit-remaining", self.burst_remaining.into());
    }
}

#[derive(Default)]
struct Counter {
    hour: i64,
    hourly_used: u32,
    window: i64,
    burst_used: u32,
}

/// Counters for every account seen.
#[derive(Default)]
pub struct RateCounters {
    accounts: Mutex<HashMap<String, Counter>>,
}

impl RateCounters {
    /// Counts one call of `account` at `now` (Unix seconds) unless a limit is exhausted.
    pub fn admit(&self, account: &str, limits: &Limits, now: i64) -> (Option<Exceeded>, Announce) {
        let mut map = self.accounts.lock().unwrap();
        let c = map.entry(account.to_owned()).or_default();
        let hour = now.div_euclid(3600);
        let window = now.div_euclid(limits.burst_window_secs.max(1) as i64);
        if c.hour != hour {
            c.hour = hour;
            c.hourly_used = 0;
        }
        if c.window != window {
            c.window = window;
            c.burst_used = 0;
        }
        let exceeded = if c.hourly_used >= limits.hourly_limit {
            Some(Exceeded::Hourly)
        } else if c.burst_used >= limits.burst_limit {
            Some(Exceeded::Burst)
        } else {
            c.hourly_used += 1;
            c.burst_used += 1;
            None
        };
        let announce = Announce {
            hourly_limit: limits.hourly_limit,
            hourly_remaining: limits.hourly_limit.saturating_sub(c.hourly_used),
            reset: (hour + 1) * 3600,
            burst_limit: limits.burst_limit,
            burst_remaining: limits.burst_limit.saturating_sub(c.burst_used),
        };
        (exceeded, announce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_window_and_hour_reset_their_counts() {
        let limits = Limits { hourly_limit: 5, burst_limit: 2, burst_window_secs: 30, ..Limits::default() };
        let rc = RateCounters::default();
        let t = 7200; // top of an hour, start of a window
        assert_eq!(rc.admit("1", &limits, t).0, None);
        let (ex, a) = rc.admit("1", &limits, t + 1);
        assert_eq!((ex, a.burst_remaining, a.hourly_remaining, a.reset), (None, 0, 3, 10800));
        assert_eq!(rc.admit("1", &limits, t + 2).0, Some(Exceeded::Burst));
        assert_eq!(rc.admit("2", &limits, t + 2).0, None, "accounts are counted apart");
        assert_eq!(rc.admit("1", &limits, t + 30).0, None);
        assert_eq!(rc.admit("1", &limits, t + 31).0, None);
        assert_eq!(rc.admit("1", &limits, t + 60).0, None);
        assert_eq!(rc.admit("1", &limits, t + 90).0, Some(Exceeded::Hourly));
        assert_eq!(rc.admit("1", &limits, t + 3600).0, None);
    }
}
