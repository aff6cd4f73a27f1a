//! Faults the simulator injects on demand: latency with jitter, 5xx answers, throttling, and
//! "store the request, then drop the connection without answering".

use std::{sync::Mutex, time::Duration};

use serde::{Deserialize, Serialize};

/// The five operations of the upstream API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    AddPart,
    Get,
    Commit,
    Delete,
}

/// Fault settings. Rates are shares of matching requests (0.0..=1.0); `*_next` counters hit the
/// next N matching requests for certain, which is what tests use.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every API answer.
    pub latency_ms: u64,
    /// Uniform extra delay in 0..=jitter_ms.
    pub jitter_ms: u64,
    pub error_rate: f64,
    pub error_next: u32,
    /// Status of injected errors.
    pub error_status: u16,
    pub throttle_rate: f64,
    pub throttle_next: u32,
    /// Apply the request (create, add-part, commit, delete), then close the connection unanswered.
    pub drop_after_store_rate: f64,
    pub drop_after_store_next: u32,
    /// Store the next N create or add-part payloads with their first byte flipped (sizes stay
    /// right, the checksum does not): an upstream that corrupted what it received.
    pub corrupt_next: u32,
    /// Answer injected throttling (429) and server errors with an HTML page and no error code, as
    /// DocuSign's front end sometimes does.
    pub html_errors: bool,
    /// Answer `?include=checksum` without a checksum, as an upstream that does not report one.
    pub omit_checksum: bool,
    /// Operations the faults apply to; empty means all.
    pub ops: Vec<Op>,
    /// Seed for the fault dice, for repeatable runs.
    pub seed: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            jitter_ms: 0,
            error_rate: 0.0,
            error_next: 0,
            error_status: 503,
            throttle_rate: 0.0,
            throttle_next: 0,
            drop_after_store_rate: 0.0,
            drop_after_store_next: 0,
            corrupt_next: 0,
            html_errors: false,
            omit_checksum: false,
            ops: Vec::new(),
            seed: None,
        }
    }
}

impl Faults {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("drop_after_store_rate", self.drop_after_store_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                out.push(format!("sim.faults.{name} must be within 0.0..=1.0, not {rate}"));
            }
        }
        if !(500..=599).contains(&self.error_status) {
            out.push(format!("sim.faults.error_status must be a 5xx status, not {}", self.error_status));
        }
        out
    }
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Error(u16),
    Throttle,
    DropAfterStore,
    Corrupt,
}

/// The faults in force and the dice that apply them.
pub struct Injector {
    inner: Mutex<(Faults, fastrand::Rng)>,
}

// === impl Injector ===

impl Injector {
    pub fn new(faults: Faults) -> Self {
        let rng = faults.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self { inner: Mutex::new((faults, rng)) }
    }

    /// Whether injected faults answer with HTML pages.
    pub fn html_errors(&self) -> bool {
        self.inner.lock().unwrap().0.html_errors
    }

    /// Whether checksums are left out of answers.
    pub fn omit_checksum(&self) -> bool {
        self.inner.lock().unwrap().0.omit_checksum
    }

    pub fn get(&self) -> Faults {
        self.inner.lock().unwrap().0.clone()
    }

    pub fn set(&self, faults: Faults) {
        *self.inner.lock().unwrap() =
            (faults.clone(), faults.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed));
    }

    /// Decides the delay and the fault for one request of `op`.
    pub fn decide(&self, op: Op) -> (Duration, Action) {
        let mut guard = self.inner.lock().unwrap();
        let (f, rng) = &mut *guard;
        if !f.ops.is_empty() && !f.ops.contains(&op) {
            return (Duration::ZERO, Action::None);
        }
        let delay = Duration::from_millis(f.latency_ms + if f.jitter_ms > 0 { rng.u64(0..=f.jitter_ms) } else { 0 });
        let stores = op != Op::Get;
        let action = if take(&mut f.throttle_next) || roll(rng, f.throttle_rate) {
            Action::Throttle
        } else if take(&mut f.error_next) || roll(rng, f.error_rate) {
            Action::Error(f.error_status)
        } else if stores && (take(&mut f.drop_after_store_next) || roll(rng, f.drop_after_store_rate)) {
            Action::DropAfterStore
        } else if matches!(op, Op::Create | Op::AddPart) && take(&mut f.corrupt_next) {
            Action::Corrupt
        } else {
            Action::None
        };
        (delay, action)
    }
}

fn take(counter: &mut u32) -> bool {
    let hit = *counter > 0;
    *counter = counter.saturating_sub(1);
    hit
}

fn roll(rng: &mut fastrand::Rng, rate: f64) -> bool {
    rate > 0.0 && rng.f64() < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_counters_hit_exactly_n_matching_requests() {
        let inj = Injector::new(Faults { drop_after_store_next: 2, ops: vec![Op::AddPart], ..Faults::default() });
        assert_eq!(inj.decide(Op::Create).1, Action::None);
        assert_eq!(inj.decide(Op::AddPart).1, Action::DropAfterStore);
        assert_eq!(inj.decide(Op::AddPart).1, Action::DropAfterStore);
        assert_eq!(inj.decide(Op::AddPart).1, Action::None);
    }

    #[test]
    fn rates_are_repeatable_under_a_seed() {
        let f = Faults { error_rate: 0.5, seed: Some(7), ..Faults::default() };
        let a: Vec<_> = {
            let i = Injector::new(f.clone());
            (0..64).map(|_| i.decide(Op::Get).1).collect()
        };
        let b: Vec<_> = {
            let i = Injector::new(f);
            (0..64).map(|_| i.decide(Op::Get).1).collect()
        };
        assert_eq!(a, b);
        let errors = a.iter().filter(|x| **x == Action::Error(503)).count();
        assert!((10..=54).contains(&errors), "{errors} of 64 at rate 0.5");
    }
}
