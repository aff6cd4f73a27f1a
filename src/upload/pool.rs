//! Reused part buffers. Allocating a fresh multi-megabyte buffer per part costs more than encoding
//! it (page faults), and the allocator keeps freed arenas around, so memory would creep up with the
//! number of parts. A sealed buffer comes back here by itself when its last holder lets go, whoever
//! that is (a retry's clone, the connection still writing it), and is handed out again.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Most bytes of capacity kept while idle; what does not fit is freed.
    max_bytes: usize,
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
        Arc::new(Self { free: Mutex::new(Vec::new()), max_bytes })
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
        if buf.capacity() > 0 && held + buf.capacity() <= self.max_bytes {
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
    fn the_pool_keeps_no_more_than_its_cap() {
        let pool = BufferPool::new(1500);
        let a = pool.seal(pool.take(1000));
        let b = pool.seal(pool.take(1000));
        drop((a, b));
        assert_eq!(pool.idle(), 1);
    }
}
