//! The index and notification protocol of a shared ring, on its own.
//!
//! Each direction of a ring is one producer index and one event index in the
//! shared header. The producer fills slots, then publishes its index; the
//! consumer reads the index, then the slots, and before it sleeps it writes
//! "wake me when the index passes `cons`" into the event index. Whether a
//! wake-up can be lost depends only on the order of those few accesses and
//! fences, so they live here, generic over [`IndexCell`]: the real ring runs
//! them on `AtomicU32`s in shared memory, and the loom model
//! (`tests/loom_ring.rs`) runs the same functions on loom's atomics and
//! fences.
//!
//! The fences are Xen's: `wmb` is a release fence, `rmb` an acquire fence and
//! `mb` a sequentially consistent fence. The index accesses themselves are
//! relaxed; the fences order them against the slot accesses (which are plain
//! volatile copies) and against each other. The two `mb`s — the producer's
//! between publishing and reading the event index, the consumer's between
//! writing the event index and re-reading the producer index — are the
//! store-buffering pair that guarantees at least one side sees the other:
//! either the producer sees the new event index and notifies, or the consumer
//! sees the new producer index and does not sleep.
//!
//! All arithmetic is on free-running `u32` indices with wrapping subtraction.

use core::sync::atomic::{AtomicU32, Ordering};

/// One 32-bit index of a ring header (a producer or an event index).
pub trait IndexCell {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, v: u32, order: Ordering);
    /// A memory fence of the model this cell lives in. Real memory uses the
    /// processor's fences; loom substitutes its own so it can see them.
    fn fence(order: Ordering)
    where
        Self: Sized,
    {
        core::sync::atomic::fence(order)
    }
}

impl IndexCell for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn store(&self, v: u32, order: Ordering) {
        AtomicU32::store(self, v, order)
    }
}

/// Whether a producer that moved its index from `old` to `new` must notify a
/// consumer that asked to be woken at `event`: true exactly when `event` lies
/// in the half-open window `(old, new]`, computed with wrapping arithmetic so
/// the window may straddle `u32::MAX`.
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Producer: makes everything up to `new` visible (slots first, then the
/// index) without deciding whether to notify (`RING_PUSH_*`).
pub fn publish<C: IndexCell>(prod: &C, new: u32) {
    C::fence(Ordering::Release);
    prod.store(new, Ordering::Relaxed);
}

/// Producer: publishes `new` (the previous published value being `old`, from
/// the producer's private state) and reports whether the consumer must be
/// notified (`PUSH_*_AND_CHECK_NOTIFY`).
///
/// The full fence after the store is what makes the event index read here
/// fresh enough: without it the load could be satisfied before the store is
/// visible, and a consumer that armed its event index in between would be
/// missed by both sides.
pub fn publish_and_check_notify<C: IndexCell>(prod: &C, event: &C, old: u32, new: u32) -> bool {
    publish(prod, new);
    C::fence(Ordering::SeqCst);
    let event = event.load(Ordering::Relaxed);
    need_notify(old, new, event)
}

/// Consumer: reads the peer's producer index once. The acquire fence orders
/// every later slot read after it, so slots below the returned index are
/// read as the producer wrote them before publishing.
pub fn load_producer<C: IndexCell>(prod: &C) -> u32 {
    let p = prod.load(Ordering::Relaxed);
    C::fence(Ordering::Acquire);
    p
}

/// Consumer, before sleeping (`FINAL_CHECK_FOR_*`): returns the producer
/// index observed. If it equals `cons` there is no work and the consumer may
/// sleep: the producer is then guaranteed to see the event index armed at
/// `cons + 1` when it next publishes, and to notify.
///
/// The caller validates the returned index like any other it reads.
pub fn final_check<C: IndexCell>(prod: &C, event: &C, cons: u32) -> u32 {
    let p = load_producer(prod);
    if p != cons {
        return p;
    }
    arm_event(event, cons.wrapping_add(1));
    load_producer(prod)
}

/// Consumer: asks the producer to notify once its index reaches `at`
/// (writes the event index, then a full fence). Re-read the producer index
/// after this before sleeping; the fence pairs with the producer's in
/// [`publish_and_check_notify`] so one of the two sides sees the other.
pub fn arm_event<C: IndexCell>(event: &C, at: u32) {
    event.store(at, Ordering::Relaxed);
    C::fence(Ordering::SeqCst);
}

/// Free slots for a producer whose private index is `prod_pvt` and whose
/// slots are given back up to `freed` (the front end's `rsp_cons`, or for a
/// back end the requests it consumed).
pub const fn free_slots(nr_ents: u32, prod_pvt: u32, freed: u32) -> u32 {
    nr_ents.saturating_sub(prod_pvt.wrapping_sub(freed))
}

/// The most a peer's producer index may be ahead of our consumer index
/// `cons`, given `in_use` slots still owned by us: `nr_ents - in_use`.
/// Anything beyond (or behind `cons`, which wraps to a huge distance) is a
/// misbehaving peer.
pub const fn max_ahead(nr_ents: u32, in_use: u32) -> u32 {
    nr_ents.saturating_sub(in_use)
}

/// Whether a peer's producer index `prod` is acceptable to a consumer at
/// `cons` that allows it at most `max` entries ahead.
pub const fn producer_ok(prod: u32, cons: u32, max: u32) -> bool {
    prod.wrapping_sub(cons) <= max
}

/// Unconsumed requests as a back end counts them
/// (`RING_HAS_UNCONSUMED_REQUESTS`): what the front end published, clamped
/// to the slots that can hold unconsumed requests at all, so a front end
/// lying about its index can never make the back end consume more than a
/// ring's worth.
pub const fn unconsumed_requests(
    nr_ents: u32,
    req_prod: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
) -> u32 {
    let published = req_prod.wrapping_sub(req_cons);
    let room = nr_ents.saturating_sub(req_cons.wrapping_sub(rsp_prod_pvt));
    if published < room {
        published
    } else {
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_window_examples() {
        // old = 5, new = 8: the window is (5, 8].
        for event in [6, 7, 8] {
            assert!(need_notify(5, 8, event), "event {event}");
        }
        for event in [0, 4, 5, 9, 100, u32::MAX] {
            assert!(!need_notify(5, 8, event), "event {event}");
        }
        // Wrapping window (0xFFFF_FFFE, 2].
        for event in [0xFFFF_FFFF, 0, 1, 2] {
            assert!(need_notify(0xFFFF_FFFE, 2, event), "event {event:#x}");
        }
        for event in [0xFFFF_FFFE, 3, 0x8000_0000] {
            assert!(!need_notify(0xFFFF_FFFE, 2, event), "event {event:#x}");
        }
        // Publishing nothing never notifies.
        for event in [0, 5, 6, u32::MAX] {
            assert!(!need_notify(5, 5, event));
        }
    }

    #[test]
    fn free_and_unconsumed_wrap() {
        let near = 0xFFFF_FFF0u32;
        assert_eq!(free_slots(32, near, near), 32);
        assert_eq!(free_slots(32, near.wrapping_add(20), near), 12);
        assert_eq!(free_slots(32, near.wrapping_add(32), near), 0);
        assert_eq!(free_slots(32, 4, 0xFFFF_FFFC), 24);
        // Back end at req_cons = 3 past the wrap, two answered fewer.
        let (cons, rsp) = (3u32, 1u32);
        assert_eq!(unconsumed_requests(32, 10, cons, rsp), 7);
        // A front end claiming far too much is clamped to the room left.
        assert_eq!(
            unconsumed_requests(32, cons.wrapping_add(1000), cons, rsp),
            30
        );
        // An index behind ours is clamped too.
        assert_eq!(unconsumed_requests(32, cons.wrapping_sub(1), cons, rsp), 30);
        assert!(producer_ok(near.wrapping_add(30), near, 30));
        assert!(!producer_ok(near.wrapping_add(31), near, 30));
        assert!(!producer_ok(near.wrapping_sub(1), near, 30));
        assert_eq!(max_ahead(32, 2), 30);
    }

    #[test]
    fn final_check_arms_event_only_when_idle() {
        let (prod, event) = (AtomicU32::new(7), AtomicU32::new(0));
        assert_eq!(final_check(&prod, &event, 5), 7);
        assert_eq!(event.load(Ordering::Relaxed), 0);
        assert_eq!(final_check(&prod, &event, 7), 7);
        assert_eq!(event.load(Ordering::Relaxed), 8);
        // The next publish passes the armed event and notifies, once.
        assert!(publish_and_check_notify(&prod, &event, 7, 8));
        assert!(!publish_and_check_notify(&prod, &event, 8, 9));
        assert_eq!(prod.load(Ordering::Relaxed), 9);
        // Arming at the wrap point.
        let (prod, event) = (AtomicU32::new(u32::MAX), AtomicU32::new(5));
        assert_eq!(final_check(&prod, &event, u32::MAX), u32::MAX);
        assert_eq!(event.load(Ordering::Relaxed), 0);
        assert!(publish_and_check_notify(&prod, &event, u32::MAX, 1));
    }
}
