//! The index and notification protocol of a vchan ring, on its own.
//!
//! Each ring has a producer and a consumer index in the control page, and
//! each side a notify byte in which the *peer* sets a bit to ask to be woken
//! (`VCHAN_NOTIFY_WRITE`: "wake me when you produce", `VCHAN_NOTIFY_READ`:
//! "wake me when you consume"). A side that moved its index checks its own
//! byte and notifies if the bit is set; a side about to sleep sets the bit
//! in the peer's byte and re-reads the peer's index. Whether a wake-up can
//! be lost depends only on the order of those accesses and fences, so they
//! live here, generic over [`IndexCell`] and [`FlagCell`]: the vchan runs
//! them on atomics in shared memory, and the loom model
//! (`tests/loom_vchan.rs`) on loom's.
//!
//! The two full fences — after publishing an index and before reading our
//! notify byte, and after setting the peer's bit and before re-reading its
//! index — are the store-buffering pair: either the publisher sees the bit
//! and notifies, or the sleeper sees the new index and does not sleep.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::ring::index::IndexCell;

/// One notify byte of the control page.
pub trait FlagCell {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u8;
    /// Atomic OR; returns the previous value.
    fn fetch_or(&self, bits: u8, order: Ordering) -> u8;
    /// Atomic AND; returns the previous value.
    fn fetch_and(&self, bits: u8, order: Ordering) -> u8;
}

impl FlagCell for AtomicU8 {
    fn load(&self, order: Ordering) -> u8 {
        AtomicU8::load(self, order)
    }
    fn fetch_or(&self, bits: u8, order: Ordering) -> u8 {
        AtomicU8::fetch_or(self, bits, order)
    }
    fn fetch_and(&self, bits: u8, order: Ordering) -> u8 {
        AtomicU8::fetch_and(self, bits, order)
    }
}

/// Reads the peer's index. Acquire: ring bytes the index covers are read
/// (consumer) or overwritten (producer) only after this load.
pub fn load_peer<C: IndexCell>(idx: &C) -> u32 {
    idx.load(Ordering::Acquire)
}

/// Publishes our index `new` (release: the ring accesses it covers come
/// first), then reports whether the peer asked for `bit`, clearing it. The
/// byte is read before the locked AND, so while the peer does not ask the
/// cost is a fence and a load.
pub fn publish_and_check<C: IndexCell, F: FlagCell>(idx: &C, new: u32, ours: &F, bit: u8) -> bool {
    idx.store(new, Ordering::Release);
    C::fence(Ordering::SeqCst);
    ours.load(Ordering::Relaxed) & bit != 0 && ours.fetch_and(!bit, Ordering::SeqCst) & bit != 0
}

/// Before sleeping: asks the peer for `bit`. The caller must re-read the
/// peer's index afterwards and sleep only if it still shows no progress.
pub fn request<C: IndexCell, F: FlagCell>(peers: &F, bit: u8) {
    peers.fetch_or(bit, Ordering::SeqCst);
    C::fence(Ordering::SeqCst);
}
