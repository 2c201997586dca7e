//! Loom models of the ring's index and notification protocol.
//!
//! The rings reach shared memory through raw pointers, which loom cannot
//! see, so these models run the same protocol functions the rings call
//! (`xenshare::ring::index`) on loom atomics and fences, with the event
//! channel as a loom `Notify` (so a lost wake-up is a deadlock, which loom
//! reports) and slot contents checked on every read (so a misplaced fence,
//! which lets a slot be read before it is written, is reported).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p xenshare --release --test loom_ring`
#![cfg(loom)]

mod loom_common;

use std::sync::atomic::Ordering;

use loom::sync::atomic::AtomicU32;
use loom::sync::{Arc, Notify};
use loom::thread;
use loom_common::Idx;
use xenshare::ring::index::{self, IndexCell};

/// One direction of a ring: its producer and event index, and the doorbell
/// (event channel) its consumer sleeps on.
struct Direction {
    prod: Idx,
    event: Idx,
    doorbell: Notify,
}

/// A ring of `N` slots at `start`, as `SHARED_RING_INIT` leaves it.
///
/// Slots are relaxed loom atomics rather than plain memory: loom lets a
/// relaxed load return any value not ruled out by happens-before, so a slot
/// read that the fences do not order after its write can return the stale
/// value, and the check of its contents fails.
struct Ring<const N: usize> {
    req: Direction,
    rsp: Direction,
    slots: [AtomicU32; N],
}

/// What slot `i` holds once its request is written.
fn request(i: u32) -> u32 {
    i
}

/// What slot `i` holds once its response is written over the request.
fn response(i: u32) -> u32 {
    !i
}

impl<const N: usize> Ring<N> {
    fn new(start: u32) -> Self {
        let dir = || Direction {
            prod: Idx::new(start),
            event: Idx::new(start.wrapping_add(1)),
            doorbell: Notify::new(),
        };
        Self {
            req: dir(),
            rsp: dir(),
            slots: std::array::from_fn(|_| AtomicU32::new(0x5EED)),
        }
    }

    fn slot(&self, idx: u32) -> &AtomicU32 {
        &self.slots[idx as usize & (N - 1)]
    }

    /// Producer: fills slots `old..new` (`tag` says with what), publishes,
    /// and rings the doorbell if asked to.
    fn produce(&self, dir: &Direction, old: u32, new: u32, tag: fn(u32) -> u32) -> bool {
        let mut i = old;
        while i != new {
            self.slot(i).store(tag(i), Ordering::Relaxed);
            i = i.wrapping_add(1);
        }
        let notify = index::publish_and_check_notify(&dir.prod, &dir.event, old, new);
        if notify {
            dir.doorbell.notify();
        }
        notify
    }

    /// Consumer: reads every slot from `cons` up to `prod`, checking each
    /// holds what its producer wrote and the producer is at most a ring ahead.
    fn consume(&self, cons: &mut u32, prod: u32, tag: fn(u32) -> u32) {
        assert!(
            prod.wrapping_sub(*cons) <= N as u32,
            "producer {prod:#x} beyond consumer {cons:#x}"
        );
        while *cons != prod {
            let v = self.slot(*cons).load(Ordering::Relaxed);
            assert_eq!(v, tag(*cons), "slot {cons:#x} read before it was written");
            *cons = cons.wrapping_add(1);
        }
    }
}

/// Indices start just below the wrap, so the models also cross it.
const START: u32 = u32::MAX - 1;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

/// A producer publishing in two batches (with the notify check) and a
/// consumer that drains, does the final check, and sleeps on the doorbell
/// only if that check found nothing. A lost wake-up leaves the consumer
/// asleep forever: loom reports the deadlock.
#[test]
fn no_lost_wakeup_blocking() {
    builder().check(|| {
        let r = Arc::new(Ring::<4>::new(START));
        let total = START.wrapping_add(3);
        let p = {
            let r = r.clone();
            thread::spawn(move || {
                r.produce(&r.req, START, START.wrapping_add(1), request);
                r.produce(&r.req, START.wrapping_add(1), total, request);
            })
        };
        let d = &r.req;
        let mut cons = START;
        loop {
            let prod = index::load_producer(&d.prod);
            r.consume(&mut cons, prod, request);
            if cons == total {
                break;
            }
            if index::final_check(&d.prod, &d.event, cons) != cons {
                continue;
            }
            d.doorbell.wait();
        }
        p.join().unwrap();
    });
}

/// Batched wake-ups (`final_check_for_*_at_least`, used by blkfront's
/// `wait_all`): the consumer asks to be woken only once `need` more entries
/// are there (event index armed at `cons + need`), re-reads the producer
/// and sleeps if fewer are there. The producer publishes one at a time, so
/// only the push that reaches `cons + need` may notify; a lost wake-up
/// leaves the consumer asleep forever and loom reports the deadlock.
#[test]
fn no_lost_wakeup_waiting_for_several() {
    builder().check(|| {
        let r = Arc::new(Ring::<4>::new(START));
        let total = START.wrapping_add(3);
        let p = {
            let r = r.clone();
            thread::spawn(move || {
                let mut i = START;
                while i != total {
                    r.produce(&r.req, i, i.wrapping_add(1), request);
                    i = i.wrapping_add(1);
                }
            })
        };
        let d = &r.req;
        let mut cons = START;
        while cons != total {
            // Wait for two at a time, or for the last one.
            let need = total.wrapping_sub(cons).min(2);
            let mut prod = index::load_producer(&d.prod);
            if prod.wrapping_sub(cons) < need {
                index::arm_event(&d.event, cons.wrapping_add(need));
                prod = index::load_producer(&d.prod);
                if prod.wrapping_sub(cons) < need {
                    d.doorbell.wait();
                    continue;
                }
            }
            r.consume(&mut cons, prod, request);
        }
        p.join().unwrap();
    });
}

/// The same race without blocking, as an explicit assertion: when the
/// consumer's final check says "nothing, sleep" at index `c`, the push that
/// first published beyond `c` must have asked for a notification.
#[test]
fn no_lost_wakeup_explicit() {
    builder().check(|| {
        let r = Arc::new(Ring::<4>::new(START));
        let batches = [
            (START, START.wrapping_add(1)),
            (START.wrapping_add(1), START.wrapping_add(3)),
        ];
        let p = {
            let r = r.clone();
            thread::spawn(move || batches.map(|(old, new)| r.produce(&r.req, old, new, request)))
        };
        let d = &r.req;
        let mut cons = START;
        let prod = index::load_producer(&d.prod);
        r.consume(&mut cons, prod, request);
        let seen = index::final_check(&d.prod, &d.event, cons);
        let asleep = seen == cons;
        if !asleep {
            r.consume(&mut cons, seen, request);
        }
        let notified = p.join().unwrap();
        if asleep {
            let passing = batches
                .iter()
                .zip(notified)
                .filter(|((old, new), _)| cons.wrapping_sub(*old) < new.wrapping_sub(*old));
            let mut any = false;
            for (&(old, new), notify) in passing {
                any = true;
                assert!(
                    notify,
                    "consumer asleep at {cons:#x}; push {old:#x}..{new:#x} did not notify"
                );
            }
            assert!(any || cons == START.wrapping_add(3));
        }
        // Indices stay consistent: the consumer never passes the producer.
        let final_prod = d.prod.0.load(Ordering::Relaxed);
        assert!(final_prod.wrapping_sub(cons) <= 3);
    });
}

/// A whole ring: the front end sends requests with flow control and waits
/// for responses, the back end answers each; both sleep only after a final
/// check, each on its own doorbell. A response overwrites its request's
/// slot and the front end reuses the slot only after consuming the
/// response, so both ends check they read what the other wrote.
#[test]
fn request_response_round_trip() {
    const SIZE: usize = 2;
    const REQUESTS: u32 = 3;
    builder().check(|| {
        let ring = Arc::new(Ring::<SIZE>::new(START));
        let end = START.wrapping_add(REQUESTS);

        let back = {
            let r = ring.clone();
            thread::spawn(move || {
                let (mut req_cons, mut rsp_prod) = (START, START);
                while req_cons != end {
                    let prod = index::load_producer(&r.req.prod);
                    let before = req_cons;
                    r.consume(&mut req_cons, prod, request);
                    if req_cons != before {
                        r.produce(&r.rsp, rsp_prod, req_cons, response);
                        rsp_prod = req_cons;
                        continue;
                    }
                    if index::final_check(&r.req.prod, &r.req.event, req_cons) == req_cons {
                        r.req.doorbell.wait();
                    }
                }
            })
        };

        let r = &ring;
        let (mut req_prod, mut rsp_cons) = (START, START);
        while rsp_cons != end {
            let free = index::free_slots(SIZE as u32, req_prod, rsp_cons);
            let want = end.wrapping_sub(req_prod).min(free);
            if want > 0 {
                r.produce(&r.req, req_prod, req_prod.wrapping_add(want), request);
                req_prod = req_prod.wrapping_add(want);
            }
            let prod = index::load_producer(&r.rsp.prod);
            assert!(prod.wrapping_sub(rsp_cons) <= req_prod.wrapping_sub(rsp_cons));
            let before = rsp_cons;
            r.consume(&mut rsp_cons, prod, response);
            if rsp_cons != before || rsp_cons == end {
                continue;
            }
            if want == 0 && index::final_check(&r.rsp.prod, &r.rsp.event, rsp_cons) == rsp_cons {
                r.rsp.doorbell.wait();
            }
        }
        back.join().unwrap();
    });
}
