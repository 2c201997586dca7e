//! Hash maps keyed by small integers the daemon or the toolstack hands out
//! (connection ids, epoll keys, domain ids): hashed with one multiplication
//! instead of SipHash. No peer picks these keys, and domain ids are 16-bit,
//! so the hash-flooding defence of the default hasher buys nothing here;
//! paths and other peer-chosen keys keep the default hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A multiplicative hasher for integer keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// Odd, with well-spread bits (2^64 / golden ratio).
const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and a tag from the
        // top seven. For one integer the product's low bits are a
        // one-to-one function of the key's (K is odd: consecutive ids fill
        // consecutive-size tables without collisions) and its top bits mix
        // all of them.
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` keyed by daemon-assigned integers.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let hash = |n: u64| {
            let mut h = IdHasher::default();
            h.write_u64(n);
            h.finish()
        };
        // Low bits (bucket) of 1024 consecutive ids: all distinct in a
        // 1024-bucket table.
        let mut buckets: Vec<u64> = (1..=1024).map(|n| hash(n) & 1023).collect();
        buckets.sort_unstable();
        buckets.dedup();
        assert_eq!(buckets.len(), 1024);
        // Top seven bits (tag): every value shows up.
        let mut tags: Vec<u64> = (1..=1024).map(|n| hash(n) >> 57).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), 128);
        // And a map works as a map.
        let mut m: IdMap<u64, u64> = IdMap::default();
        for n in 0..10_000 {
            m.insert(n, n * 2);
        }
        assert!((0..10_000).all(|n| m.get(&n) == Some(&(n * 2))));
    }
}
