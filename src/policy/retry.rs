//! Which upstream failures are retried, and how often. Every call's outcome is classified here, in
//! one place, by whether anything may have been received:
//!
//! - nothing sent (connect refused, DNS, TLS handshake): send again as is;
//! - maybe received (timeout, connection broken after sending, 5xx, 408, an unreadable answer): the
//!   caller reconciles first (a part is looked up with a GET before it is sent again, because the
//!   upstream refuses to replace a part);
//! - throttled (429, or 400 with `*_APIINVOCATION_LIMIT_EXCEEDED`): wait for the pause the rate
//!   limiter took from the answer, then send again; this spends no retry budget;
//! - refused (any other 4xx): final, the answer goes back to the client verbatim.
//!
//! Retries wait with exponential backoff and full jitter, stop after `max_attempts` or
//! `max_elapsed_secs` (and the upload's own deadline), and draw on a process-wide budget so that an
//! upstream outage is not multiplied into a retry storm.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use http::StatusCode;

use crate::{
    config::Dialect,
    config::RetryConfig,
    error::GatewayError,
    upstream::{Answer, CallError},
};

pub use crate::upstream::client::{is_throttle, is_throttle_code, is_throttle_status};

/// What a call's outcome means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Nothing reached the upstream.
    NotSent,
    /// The upstream may have applied the request.
    Ambiguous,
    Throttled,
    /// A final refusal.
    Refused,
    /// Stop now with this error (the rate limiter would wait longer than allowed).
    GiveUp(GatewayError),
}

/// Classifies one call's outcome.
pub fn classify(result: &Result<Answer, CallError>, dialect: Dialect) -> Class {
    match result {
        Ok(a) if a.status.is_success() => Class::Success,
        Ok(a) if is_throttle(a, dialect) => Class::Throttled,
        Ok(a) if a.status.is_server_error() || a.status == StatusCode::REQUEST_TIMEOUT => Class::Ambiguous,
        Ok(_) => Class::Refused,
        Err(CallError::NotSent(_)) => Class::NotSent,
        Err(CallError::Broken(_) | CallError::Timeout(_) | CallError::BadAnswer(_)) => Class::Ambiguous,
        Err(CallError::RateLimited(wait)) => Class::GiveUp(GatewayError::RateLimited { retry_after: *wait }),
        Err(CallError::Tls(e)) => Class::GiveUp(GatewayError::UpstreamTls(e.clone())),
    }
}

/// The client-facing error for a call that failed for good without a refusal to pass on. The one
/// mapping from upstream outcomes to client errors: the passthrough uses it too.
pub fn exhausted(result: &Result<Answer, CallError>) -> GatewayError {
    match result {
        Ok(a) => GatewayError::UpstreamFailing(a.status),
        Err(e) => failed(e),
    }
}

/// The client-facing error for a call that got no answer.
pub fn failed(err: &CallError) -> GatewayError {
    match err {
        CallError::NotSent(e) | CallError::Broken(e) => GatewayError::UpstreamUnavailable(e.clone()),
        CallError::Timeout(d) => GatewayError::UpstreamTimeout(*d),
        CallError::BadAnswer(e) => GatewayError::UpstreamBadResponse(e.clone()),
        CallError::RateLimited(wait) => GatewayError::RateLimited { retry_after: *wait },
        CallError::Tls(e) => GatewayError::UpstreamTls(e.clone()),
    }
}

/// The process-wide retry budget: each first attempt deposits `ratio` of a retry, each retry
/// withdraws one, and `floor_per_sec` retries a second accrue regardless.
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_sec: f64) -> Self {
        // Enough to absorb a burst of failures, not an outage: ten seconds of floor or the share of
        // a hundred calls, whichever is larger.
        let cap = (floor_per_sec * 10.0).max(ratio * 100.0).max(1.0);
        Self { ratio, floor_per_sec, cap, state: Mutex::new((floor_per_sec.min(cap), Instant::now())) }
    }

    pub fn deposit(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = (s.0 + self.ratio).min(self.cap);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.floor_per_sec).min(self.cap);
        s.1 = now;
        // Deposits are fractions: tolerate their rounding (ten of 0.2 make 1.9999...).
        if s.0 + 1e-9 >= 1.0 {
            s.0 = (s.0 - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

/// The retry settings and the shared budget.
pub struct RetryPolicy {
    pub config: RetryConfig,
    pub budget: RetryBudget,
}

impl RetryPolicy {
    pub fn new(config: RetryConfig) -> Self {
        let budget = RetryBudget::new(config.budget_ratio, config.budget_floor_per_sec);
        Self { config, budget }
    }

    /// The attempts of one logical call that must finish by `deadline`.
    pub fn attempts(&self, deadline: tokio::time::Instant) -> Attempts<'_> {
        self.budget.deposit();
        Attempts { policy: self, started: tokio::time::Instant::now(), deadline, done: 1 }
    }
}

/// Counts the attempts of one call and decides whether another may follow.
pub struct Attempts<'a> {
    policy: &'a RetryPolicy,
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
    done: u32,
}

impl Attempts<'_> {
    /// Attempts made so far.
    pub fn count(&self) -> u32 {
        self.done
    }

    /// The backoff before the next attempt, counted as taken; `None` when no further attempt is
    /// allowed (attempts, time or the process-wide budget are used up). The caller waits it.
    pub fn backoff(&mut self) -> Option<Duration> {
        let c = &self.policy.config;
        let exp = c.base_backoff_ms.saturating_mul(1u64 << self.done.min(20)).min(c.max_backoff_ms);
        let wait = Duration::from_millis(fastrand::u64(0..=exp));
        let until = tokio::time::Instant::now() + wait;
        let out_of_time = until > self.deadline || until.duration_since(self.started).as_secs() >= c.max_elapsed_secs;
        if self.done >= c.max_attempts || out_of_time || !self.policy.budget.try_withdraw() {
            return None;
        }
        self.done += 1;
        crate::telemetry::count_retry();
        Some(wait)
    }

    /// A throttled attempt: the rate limiter does the waiting, and no budget is spent; only the
    /// deadline bounds it.
    pub fn throttled(&mut self) -> bool {
        self.done += 1;
        tokio::time::Instant::now() < self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_share_of_calls_plus_a_floor() {
        let b = RetryBudget::new(0.2, 0.0);
        assert!(!b.try_withdraw(), "no floor, no calls: no retries");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw(), "10 calls at 20% allow 2 retries");
        let floor = RetryBudget::new(0.0, 3.0);
        assert!((0..3).all(|_| floor.try_withdraw()));
        assert!(!floor.try_withdraw());
    }

    #[test]
    fn throttling_is_told_by_code_or_429() {
        let answer = |status: u16, body: &str| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: bytes::Bytes::from(body.to_owned()),
        };
        let d = Dialect::Docusign;
        let burst400 = answer(400, r#"{"errorCode":"BURST_APIINVOCATION_LIMIT_EXCEEDED","message":""}"#);
        assert_eq!(classify(&Ok(burst400), d), Class::Throttled);
        assert_eq!(classify(&Ok(answer(429, "")), d), Class::Throttled);
        let other400 = answer(400, r#"{"errorCode":"INVALID_REQUEST_BODY","message":""}"#);
        assert_eq!(classify(&Ok(other400), d), Class::Refused);
        assert_eq!(classify(&Ok(answer(503, "<html>busy</html>")), d), Class::Ambiguous);
        assert_eq!(classify(&Ok(answer(444, "<html>blocked</html>")), d), Class::Throttled);
        assert_eq!(classify(&Ok(answer(413, "<html>too large</html>")), d), Class::Refused);
        assert_eq!(classify(&Ok(answer(408, "")), d), Class::Ambiguous);
        assert_eq!(classify(&Err(CallError::NotSent("refused".into())), d), Class::NotSent);
        assert_eq!(classify(&Err(CallError::Timeout(Duration::from_secs(1))), d), Class::Ambiguous);
        let env = Dialect::Wrapped;
        let wrapped =
            answer(400, r#"{"success":false,"error":{"code":"HOURLY_APIINVOCATION_LIMIT_EXCEEDED","message":""}}"#);
        assert_eq!(classify(&Ok(wrapped), env), Class::Throttled);
    }
}
