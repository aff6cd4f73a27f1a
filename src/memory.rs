//! Memory the allocator holds for nobody goes back to the system once a thread has been idle.
//! mimalloc keeps pages freed by a thread for that thread's next allocations, and purges them only
//! while the thread allocates: an event loop that goes quiet after an upload kept its peak (about
//! 70 MiB after a 50 MB upload) indefinitely. Each runtime thread collects its heap when it parks
//! (it has nothing to run), at most once per [`INTERVAL`], and a ticker per runtime makes sure a
//! quiet thread still parks now and then.

use std::{
    cell::Cell,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Most often a thread collects its heap.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What collects the calling thread's heap: installed by the binary, which owns the allocator
/// (`mi_collect`, an FFI call, and this library forbids `unsafe`).
static COLLECT: OnceLock<fn()> = OnceLock::new();

/// Installs the allocator's collection; the first one installed stays.
pub fn install(collect: fn()) {
    let _ = COLLECT.set(collect);
}

thread_local! {
    static COLLECTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For `tokio::runtime::Builder::on_thread_park`: collects this thread's heap (freeing empty pages
/// and returning their memory to the system) when the last collection is [`INTERVAL`] old.
pub fn on_thread_park() {
    let now = Instant::now();
    let due = COLLECTED.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < INTERVAL => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if let (true, Some(collect)) = (due, COLLECT.get()) {
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
