//! Reused part buffers. Allocating a fresh multi-megabyte buffer per part costs more than encoding
//! it (page faults), and the allocator keeps freed arenas around, so memory would creep up with
//! the number of parts. Buffers come back here once a part is done and are handed out again.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

pub struct BufferPool {
    free: Mutex<Vec<BytesMut>>,
    /// Most bytes of capacity kept while idle; what does not fit is freed.
    max_bytes: usize,
}

// === impl BufferPool ===

impl BufferPool {
    pub fn new(max_bytes: usize) -> Self {
        Self { free: Mutex::new(Vec::new()), max_bytes }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> BytesMut {
        let mut free = self.free.lock().unwrap();
        // The closest fit that is not wastefully large.
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity && b.capacity() <= capacity.saturating_mul(2))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut buf = free.swap_remove(i);
                buf.clear();
                buf
            }
            None => {
                drop(free);
                BytesMut::with_capacity(capacity)
            }
        }
    }

    /// Returns a buffer once nothing else refers to it (a retry's clone or the connection still
    /// writing it keeps it alive; it is then simply freed when they let go).
    pub fn give(&self, bytes: Bytes) {
        let Ok(mut buf) = bytes.try_into_mut() else { return };
        buf.clear();
        let mut free = self.free.lock().unwrap();
        let held: usize = free.iter().map(BytesMut::capacity).sum();
        if held + buf.capacity() <= self.max_bytes {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_handed_out_again() {
        let pool = BufferPool::new(1 << 20);
        let mut b = pool.take(1000);
        let ptr = b.as_ptr();
        b.extend_from_slice(&[1; 1000]);
        pool.give(b.freeze());
        let again = pool.take(900);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        // Still referenced elsewhere: not reused.
        let shared = pool.take(1000).freeze();
        let clone = shared.clone();
        pool.give(shared);
        assert!(pool.free.lock().unwrap().is_empty());
        drop(clone);
        // Too small or wastefully large buffers are not handed out for a request.
        pool.give(BytesMut::with_capacity(10).freeze());
        assert!(pool.take(5000).capacity() >= 5000);
    }
}
