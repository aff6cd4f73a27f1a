//! Reused part buffers. Allocating a fresh multi-megabyte buffer per part costs more than encoding
//! it (page faults), and the allocator keeps freed arenas around, so memory would creep up with the
//! number of parts. A sealed buffer comes back here by itself when its last holder lets go, whoever
//! that is (a retry's clone, the connection still writing it), and is handed out again.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::Semaphore;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Most bytes of capacity kept while idle; what does not fit is freed.
    max_bytes: usize,
    /// The memory budget (permits of 1 KiB) that buffers in use are counted against: idle buffers
    /// are kept only within what it has free, so in-use and idle together stay within it.
    budget: Option<Arc<Semaphore>>,
}

/// A buffer on loan: its bytes are shared as `Bytes`, and it goes back to the pool on drop.
struct Loan {
    buf: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(std::mem::take(&mut self.buf));
        }
    }
}

// === impl BufferPool ===

impl BufferPool {
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self { free: Mutex::new(Vec::new()), max_bytes, budget: None })
    }

    /// A pool whose idle buffers also fit in what `budget` (1 KiB permits) has free.
    pub fn within(max_bytes: usize, budget: Arc<Semaphore>) -> Arc<Self> {
        Arc::new(Self { free: Mutex::new(Vec::new()), max_bytes, budget: Some(budget) })
    }

    /// Bytes idle buffers may hold now.
    fn room(&self) -> usize {
        let free = self.budget.as_ref().map_or(usize::MAX, |b| b.available_permits().saturating_mul(1024));
        self.max_bytes.min(free)
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap();
        // The closest fit that is not wastefully large.
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity && b.capacity() <= capacity.saturating_mul(2))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => free.swap_remove(i),
            None => {
                // A fresh buffer is about to be counted in use: idle ones beyond the room left go.
                let room = self.room();
                let mut held: usize = free.iter().map(Vec::capacity).sum();
                while held > room {
                    let Some(b) = free.pop() else { break };
                    held -= b.capacity();
                }
                drop(free);
                Vec::with_capacity(capacity)
            }
        }
    }

    /// Freezes `buf` into shared bytes that return it to this pool when the last clone drops.
    pub fn seal(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Loan { buf, pool: Arc::downgrade(self) })
    }

    fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().unwrap();
        let held: usize = free.iter().map(Vec::capacity).sum();
        if buf.capacity() > 0 && held + buf.capacity() <= self.room() {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_holder_lets_go() {
        let pool = BufferPool::new(1 << 20);
        let mut b = pool.take(1000);
        let ptr = b.as_ptr();
        b.extend_from_slice(&[1; 1000]);
        let sealed = pool.seal(b);
        let clone = sealed.slice(10..20);
        drop(sealed);
        assert_eq!(pool.idle(), 0, "still held by a clone");
        drop(clone);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(900);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        // Too small or wastefully large buffers are not handed out for a request.
        assert!(pool.take(5000).capacity() >= 5000);
    }

    #[test]
    fn idle_buffers_stay_within_what_the_budget_has_free() {
        let budget = Arc::new(Semaphore::new(3)); // 3 KiB
        let pool = BufferPool::within(1 << 20, budget.clone());
        let held = budget.clone().try_acquire_many_owned(2).unwrap(); // 2 KiB in use elsewhere
        let (a, b) = (pool.seal(pool.take(1000)), pool.seal(pool.take(1000)));
        drop((a, b));
        assert_eq!(pool.idle(), 1, "1 KiB of room: one buffer kept");
        drop(held);
        let all = budget.clone().try_acquire_many_owned(3).unwrap(); // the whole budget in use
        let big = pool.seal(pool.take(5000));
        assert_eq!(pool.idle(), 0, "no room left: the idle buffer was let go");
        drop(big);
        assert_eq!(pool.idle(), 0, "no room left: not kept either");
        drop(all);
        drop(pool.seal(pool.take(2000)));
        assert_eq!(pool.idle(), 1, "room again");
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_cap() {
        let pool = BufferPool::new(1500);
        let a = pool.seal(pool.take(1000));
        let b = pool.seal(pool.take(1000));
        drop((a, b));
        assert_eq!(pool.idle(), 1);
    }
}
