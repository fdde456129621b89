//! Bounded answer cache. Pure: the caller passes `now`, so tests control time.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::wire::RData;

/// The result of a whole resolution of (name, type), CNAMEs followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// `canonical` is the end of the CNAME chain when the name was an alias.
    Positive {
        records: Rc<[RData]>,
        canonical: Option<Rc<str>>,
    },
    NoData,
    NxDomain,
}

struct Entry {
    expires: Instant,
    value: Cached,
}

pub struct Cache {
    capacity: usize,
    map: HashMap<(String, u16), Entry>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            map: HashMap::new(),
        }
    }

    /// The live entry for (name, qtype); `name` already lower-case. An
    /// expired entry is dropped on the way.
    pub fn get(&mut self, name: &str, qtype: u16, now: Instant) -> Option<Cached> {
        let key = (name.to_string(), qtype);
        match self.map.get(&key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                self.map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `ttl`. A zero TTL is not stored (RFC 1035: use
    /// only for this transaction). When full, expired entries go first, then
    /// the one that would expire soonest, so the cache never exceeds
    /// `capacity`.
    pub fn insert(&mut self, name: &str, qtype: u16, value: Cached, ttl: Duration, now: Instant) {
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let key = (name.to_string(), qtype);
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.map.retain(|_, e| e.expires > now);
            if self.map.len() >= self.capacity {
                // O(n) scan, only when full; n is a few hundred at most.
                let soonest = self
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.map.remove(&k);
                }
            }
        }
        let expires = now.checked_add(ttl).unwrap_or(now);
        self.map.insert(key, Entry { expires, value });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{TYPE_A, TYPE_MX};
    use std::net::Ipv4Addr;

    fn pos(ip: [u8; 4]) -> Cached {
        Cached::Positive {
            records: Rc::from(vec![RData::A(Ipv4Addr::from(ip))]),
            canonical: None,
        }
    }

    /// An entry is served until its TTL ends and not a moment after.
    #[test]
    fn entry_expires_with_fake_clock() {
        let t0 = Instant::now();
        let mut c = Cache::new(4);
        c.insert(
            "a.example",
            TYPE_A,
            pos([1, 2, 3, 4]),
            Duration::from_secs(60),
            t0,
        );
        assert_eq!(
            c.get("a.example", TYPE_A, t0 + Duration::from_secs(59)),
            Some(pos([1, 2, 3, 4]))
        );
        assert_eq!(
            c.get("a.example", TYPE_A, t0 + Duration::from_secs(60)),
            None
        );
        assert_eq!(c.len(), 0, "expired entry is dropped on lookup");
    }

    /// The key includes the type: an MX entry never answers an A lookup.
    #[test]
    fn keyed_by_type() {
        let t0 = Instant::now();
        let mut c = Cache::new(4);
        c.insert(
            "a.example",
            TYPE_MX,
            Cached::NoData,
            Duration::from_secs(60),
            t0,
        );
        assert_eq!(c.get("a.example", TYPE_A, t0), None);
        assert_eq!(c.get("a.example", TYPE_MX, t0), Some(Cached::NoData));
    }

    /// Full cache: expired entries go first, then the soonest-expiring; the
    /// size never exceeds the capacity.
    #[test]
    fn bounded_eviction() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Cache::new(2);
        c.insert("long", TYPE_A, pos([1, 1, 1, 1]), s(100), t0);
        c.insert("short", TYPE_A, pos([2, 2, 2, 2]), s(10), t0);
        c.insert("new", TYPE_A, pos([3, 3, 3, 3]), s(50), t0);
        assert_eq!(c.len(), 2);
        assert!(
            c.get("short", TYPE_A, t0).is_none(),
            "soonest-expiring evicted"
        );
        assert!(c.get("long", TYPE_A, t0).is_some());
        // At t0+60 "new" has expired: inserting drops it, not "long".
        c.insert("newer", TYPE_A, pos([4, 4, 4, 4]), s(50), t0 + s(60));
        assert!(c.get("long", TYPE_A, t0 + s(60)).is_some());
        assert!(c.get("newer", TYPE_A, t0 + s(60)).is_some());
        assert_eq!(c.len(), 2);
    }

    /// TTL 0 means "do not cache".
    #[test]
    fn zero_ttl_not_stored() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        c.insert("x", TYPE_A, Cached::NxDomain, Duration::ZERO, t0);
        assert_eq!(c.len(), 0);
    }
}
