//! Faults the simulator injects on demand: latency with jitter, 5xx answers, throttling, and
//! "store the request, then drop the connection without answering".

use std::{sync::Mutex, time::Duration};

pub use crate::config::sim::{Faults, Op};

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
