//! What the loom models share: a ring index on loom's atomics and fences.

use std::sync::atomic::Ordering;

use loom::sync::atomic::AtomicU32;
use xenshare::ring::index::IndexCell;

/// A header index on loom's atomics and fences.
pub struct Idx(pub AtomicU32);

impl Idx {
    /// An index holding `v`.
    pub fn new(v: u32) -> Self {
        Self(AtomicU32::new(v))
    }
}

impl IndexCell for Idx {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    fn store(&self, v: u32, order: Ordering) {
        self.0.store(v, order)
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}
