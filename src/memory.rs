//! Memory the allocator holds for nobody goes back to the system once a thread has been idle.
//! mimalloc keeps pages freed by a thread for that thread's next allocations, and purges them only
//! while the thread allocates: an event loop that goes quiet after an upload kept its peak (about
//! 70 MiB after a 50 MB upload) indefinitely. Each runtime thread looks when it parks (it has
//! nothing to run), at most once per [`INTERVAL`], and collects its heap if it was idle over the
//! interval; a ticker per runtime makes sure a quiet thread still parks now and then.

use std::{
    cell::Cell,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// How often a thread looks whether it has been idle, and collects its heap if so.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What collects the calling thread's heap: installed by the binary, which owns the allocator
/// (`mi_collect`, an FFI call, and this library forbids `unsafe`).
static COLLECT: OnceLock<fn()> = OnceLock::new();

/// Installs the allocator's collection; the first one installed stays.
pub fn install(collect: fn()) {
    let _ = COLLECT.set(collect);
}

/// A thread woken fewer times than this over an [`INTERVAL`] is idle (a quiet thread wakes for
/// its ticker and a few timers; one serving an upload or requests, thousands of times a second).
const IDLE_WAKES: u64 = 50;

thread_local! {
    /// Times this thread was woken, and when and at what count it last looked.
    static WAKES: Cell<u64> = const { Cell::new(0) };
    static LOOKED: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// For `tokio::runtime::Builder::on_thread_unpark`: counts the thread's wake-ups.
pub fn on_thread_unpark() {
    WAKES.with(|w| w.set(w.get() + 1));
}

/// For `tokio::runtime::Builder::on_thread_park`: once per [`INTERVAL`], collects this thread's
/// heap (freeing empty pages and returning their memory to the system) if the thread was idle
/// over it. Not while it is busy: memory given back mid-upload is faulted in (and zeroed) again
/// at once.
pub fn on_thread_park() {
    let now = Instant::now();
    let wakes = WAKES.with(Cell::get);
    let idle = LOOKED.with(|looked| match looked.get() {
        Some((at, _)) if now.duration_since(at) < INTERVAL => None,
        last => {
            looked.set(Some((now, wakes)));
            Some(last.is_some_and(|(_, before)| wakes - before < IDLE_WAKES))
        }
    });
    if let (Some(true), Some(collect)) = (idle, COLLECT.get()) {
        collect();
    }
}

/// Keeps a quiet runtime's threads waking (and so parking) once per [`INTERVAL`]; spawn one per
/// runtime.
pub async fn ticker() {
    let mut every = tokio::time::interval(INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
    }
}
