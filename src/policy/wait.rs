//! Waiting for room in a shared budget: the one loop every policy uses, so that all of them wait,
//! wake and give up alike.

use std::time::Duration;

use tokio::{sync::Notify, time::Instant};

/// How often a blocked waiter looks again when nothing wakes it: room can come back without a
/// local wake-up (another sidecar gave it back, an entry expired).
pub const POLL: Duration = Duration::from_millis(200);

/// What one look at a budget found.
#[derive(Debug)]
pub enum Look<T> {
    /// Taken.
    Ready(T),
    /// Room comes back at a known time (a burst permit, the end of a pause): sleep that long.
    Sleep(Duration),
    /// Room comes back when someone gives it back, or at the latest after `retry_after` (the next
    /// clock hour): wait for a wake-up, looking again every [`POLL`].
    Blocked { retry_after: Duration },
}

/// Looks until `look` finds room, sleeping between looks, and gives up at `deadline`, saying how
/// long the caller should come back after (at least a second). `wake` is notified when room is
/// given back in this process; `waited` is told of the first wait, if any.
pub async fn until<T, F, Fut>(
    deadline: Instant,
    wake: &Notify,
    waited: fn(Duration),
    mut look: F,
) -> Result<T, Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Look<T>>,
{
    let mut counted = false;
    loop {
        // Created before looking, so that a wake-up between the look and the wait is not lost.
        let woken = wake.notified();
        let seen = look().await;
        let now = Instant::now();
        let sleep = match seen {
            Look::Ready(taken) => return Ok(taken),
            Look::Sleep(wait) if now + wait > deadline => return Err(wait.max(Duration::from_secs(1))),
            Look::Sleep(wait) => wait,
            Look::Blocked { retry_after } if now >= deadline => return Err(retry_after.max(Duration::from_secs(1))),
            Look::Blocked { retry_after } => retry_after.min(POLL).min(deadline - now),
        };
        if !counted {
            // Once, however many times it wakes to find the room taken.
            waited(sleep);
            counted = true;
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}
