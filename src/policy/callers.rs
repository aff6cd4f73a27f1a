//! Who is calling, and how many requests each caller (and each account) has running: the bounds
//! that keep one caller from taking every upload slot, or queueing so many passthrough requests on
//! an account's rate limiter that everyone else of that account starves.

use std::{
    fmt,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// A caller: the key it presented when caller keys are configured, else its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The index of its key in `server.caller_keys` (the key itself is never kept or shown).
    Key(usize),
    Addr(IpAddr),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Key(i) => write!(f, "key#{i}"),
            Caller::Addr(ip) => write!(f, "{ip}"),
        }
    }
}

/// Requests running per key (a caller, an account), each key held to a maximum.
pub struct PerKey<K> {
    map: Mutex<crate::FastMap<K, usize>>,
}

/// One running request of a key, counted until dropped.
pub struct Slot<K: Hash + Eq> {
    running: Arc<PerKey<K>>,
    key: K,
}

// === impl Running ===

impl<K: Hash + Eq + Clone> PerKey<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { map: Mutex::new(crate::FastMap::default()) })
    }

    /// A slot for `key`, unless it already runs `max`.
    pub fn try_take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut map = self.map.lock().unwrap();
        // Looked up first: a key already running is not copied again for the map.
        match map.get_mut(&key) {
            Some(running) if *running >= max => return None,
            Some(running) => *running += 1,
            None if max == 0 => return None,
            None => {
                map.insert(key.clone(), 1);
            }
        }
        Some(Slot { running: self.clone(), key })
    }

    /// Requests `key` runs now.
    pub fn count(&self, key: &K) -> usize {
        self.map.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.running.map.lock().unwrap();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            // Keys come and go with their requests: the map holds only keys with some running.
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_maximum_and_gets_slots_back() {
        let running = PerKey::new();
        let a = running.try_take("a", 2).unwrap();
        let _b = running.try_take("a", 2).unwrap();
        assert!(running.try_take("a", 2).is_none());
        assert!(running.try_take("other", 2).is_some(), "keys are counted apart");
        drop(a);
        assert_eq!(running.count(&"a"), 1);
        assert!(running.try_take("a", 2).is_some());
    }
}
