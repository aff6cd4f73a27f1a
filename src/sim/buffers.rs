//! Reused request-body buffers. Part bodies are read whole and decoded in place; fresh
//! multi-megabyte buffers per request cost more in page faults than the decoding itself. A buffer
//! handed out as `Bytes` comes back when its last holder drops it.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

pub struct Buffers {
    idle: Mutex<Vec<Vec<u8>>>,
    /// Most bytes of capacity kept idle; what does not fit is freed.
    max_idle: usize,
}

/// A buffer lent out as `Bytes`, back to the pool when dropped.
struct Lent {
    buf: Vec<u8>,
    pool: Weak<Buffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

impl Buffers {
    pub fn new(max_idle: usize) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::new(Vec::new()), max_idle })
    }

    /// An empty buffer with room for `capacity` bytes: an idle one no more than twice as big, or
    /// a fresh one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap();
        let fit = idle.iter().position(|b| (capacity..=capacity.saturating_mul(2)).contains(&b.capacity()));
        match fit {
            Some(i) => idle.swap_remove(i),
            None => Vec::with_capacity(capacity),
        }
    }

    /// `buf` as shared bytes that return it here when the last clone drops.
    pub fn lend(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent { buf, pool: Arc::downgrade(self) })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut idle = self.idle.lock().unwrap();
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= self.max_idle {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_buffer_comes_back_when_its_bytes_are_dropped() {
        let pool = Buffers::new(1 << 20);
        let mut b = pool.take(100);
        let at = b.as_ptr();
        b.extend_from_slice(&[1; 100]);
        let bytes = pool.lend(b).slice(10..20);
        let other = pool.take(100);
        assert_ne!(other.as_ptr(), at, "still lent");
        drop(bytes);
        let again = pool.take(100);
        assert_eq!(again.as_ptr(), at);
    }
}
