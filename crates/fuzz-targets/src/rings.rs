//! `FrontRing` and `BackRing` as consumers of a page the peer writes.
//!
//! The first bytes pick the end, the region size (1 to 128 slots of 16-byte
//! requests / 8-byte responses) and a start index near the wrap point; the
//! rest is a script of local calls and peer writes (producer index, event
//! indices, our own published index, slot contents).
//!
//! Invariants:
//! * one consume pass (`next_*` until `None` or an error) returns at most
//!   ring-size entries; it ends with `None` or a typed error, never loops;
//! * the front end never consumes more responses than requests it
//!   published; the back end never holds more unanswered requests than the
//!   ring has slots, and `unconsumed_*` never reports more than can be legal;
//! * an entry returned is the slot's bytes (copied once);
//! * our calls write only where they may: a request / response slot we
//!   own, our producer index, our event index — nothing else in the page;
//! * our published producer index is our private one, whatever the peer
//!   scribbled over it;
//! * the first fatal error latches: every later call fails with `Broken`.

use core::ops::Range;
use core::sync::atomic::Ordering;

use xenshare::ring::{BackRing, FrontRing, RingError};
use xenshare_abi::ring::SRING_HEADER_SIZE;

use crate::input::Input;
use crate::plain::PlainMem;

type Req = [u32; 4];
type Rsp = [u32; 2];
const SLOT: usize = 16;
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let side = input.u8();
    let bytes = match input.u8() % 6 {
        0 => SRING_HEADER_SIZE + SLOT,
        1 => SRING_HEADER_SIZE + 2 * SLOT,
        2 => SRING_HEADER_SIZE + 4 * SLOT + 7,
        3 => 256,
        4 => 1024,
        _ => 4096,
    };
    let start = match input.u8() % 4 {
        0 => 0,
        1 => u32::MAX - u32::from(input.u8()),
        2 => 0x8000_0000 - u32::from(input.u8()),
        _ => input.u32(),
    };
    let page = PlainMem::new(bytes);
    if side & 1 == 0 {
        front(&page, start, &mut input);
    } else {
        back(&page, start, &mut input);
    }
}

fn slot_range(size: u32, idx: u32) -> Range<usize> {
    let off = SRING_HEADER_SIZE + (idx & (size - 1)) as usize * SLOT;
    off..off + SLOT
}

fn word(off: usize) -> Range<usize> {
    off..off + 4
}

/// Asserts that only bytes inside `allowed` changed between two snapshots.
fn only_changed(before: &[u8], after: &[u8], allowed: &[Range<usize>], what: &str) {
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "{what} wrote byte {i} outside what it owns"
            );
        }
    }
}

/// Peer actions shared by both ends. Returns true if the op was one.
fn peer_write(
    page: &PlainMem,
    op: u8,
    base: u32,
    size: u32,
    input: &mut Input<'_>,
    prod: usize,
) -> bool {
    let m = page.mem();
    let store = |off: usize, v: u32| {
        if let Ok(a) = m.atomic_u32(off) {
            a.store(v, Ordering::Relaxed)
        }
    };
    match op {
        // The peer publishes its producer index (usually near our consumer).
        0..=2 => store(prod, input.index_near(base, size)),
        // The peer fills a slot.
        3..=4 => {
            let idx = base.wrapping_add(u32::from(input.u8()));
            let r = slot_range(size, idx);
            let data = input.bytes(SLOT);
            let _ = m.write(r.start, data);
        }
        // The peer scribbles over any header word (ours included).
        5 => {
            let off = usize::from(input.u8() % 16) * 4;
            store(off, input.u32());
        }
        _ => return false,
    }
    true
}

fn front(page: &PlainMem, start: u32, input: &mut Input<'_>) {
    let mut ring = if start == 0 {
        FrontRing::<_, Req, Rsp>::init(page.mem())
    } else {
        FrontRing::<_, Req, Rsp>::attach_at(page.mem(), start)
    }
    .expect("region holds a ring");
    let size = ring.size();
    let mut published = start;
    let mut broken = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        let op = input.u8() % 12;
        let cons = ring.rsp_cons();
        if peer_write(page, op, cons, size, input, RSP_PROD) {
            continue;
        }
        let before = page.snapshot();
        let pvt = ring.req_prod_pvt();
        let (r, allowed): (Result<(), RingError>, Vec<Range<usize>>) = match op {
            6 => {
                let v: Req = [input.u32(), input.u32(), 0, 0];
                let r = ring.push_request(&v);
                if r.is_ok() {
                    let mut got = [0u8; SLOT];
                    page.mem()
                        .read(slot_range(size, pvt).start, &mut got)
                        .unwrap();
                    assert_eq!(got[..8], zerocopy::IntoBytes::as_bytes(&v)[..8]);
                }
                if r == Err(RingError::Full) {
                    assert_eq!(ring.free_requests(), 0);
                }
                (r, vec![slot_range(size, pvt)])
            }
            7 => {
                let r = if input.u8() & 1 == 0 {
                    ring.push_requests()
                } else {
                    ring.push_requests_and_check_notify().map(drop)
                };
                if r.is_ok() {
                    published = pvt;
                    let shared = page
                        .mem()
                        .atomic_u32(REQ_PROD)
                        .unwrap()
                        .load(Ordering::Relaxed);
                    assert_eq!(shared, pvt, "published index is not our private one");
                }
                (r, vec![word(REQ_PROD)])
            }
            8 | 9 => {
                // One consume pass.
                let mut n = 0u32;
                let r = loop {
                    let at = ring.rsp_cons();
                    match ring.next_response() {
                        Ok(Some(rsp)) => {
                            n += 1;
                            assert!(n <= size, "a pass returned more than {size} responses");
                            let mut raw = [0u8; 8];
                            page.mem()
                                .read(slot_range(size, at).start, &mut raw)
                                .unwrap();
                            assert_eq!(&raw, zerocopy::IntoBytes::as_bytes(&rsp));
                        }
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                (r, vec![])
            }
            10 => {
                let r = ring.unconsumed_responses().map(|n| {
                    assert!(n <= published.wrapping_sub(ring.rsp_cons()));
                });
                (r, vec![])
            }
            _ => (
                ring.final_check_for_responses().map(drop),
                vec![word(RSP_EVENT)],
            ),
        };
        only_changed(&before, &page.snapshot(), &allowed, "front ring");
        let consumed = ring.rsp_cons().wrapping_sub(start);
        assert!(
            consumed <= published.wrapping_sub(start),
            "consumed {consumed} responses to {} published requests",
            published.wrapping_sub(start)
        );
        assert!(ring.req_prod_pvt().wrapping_sub(ring.rsp_cons()) <= size);
        latch(r, &mut broken, ring.is_broken());
    }
}

fn back(page: &PlainMem, start: u32, input: &mut Input<'_>) {
    let mut ring =
        BackRing::<_, Req, Rsp>::attach_at(page.mem(), start).expect("region holds a ring");
    let size = ring.size();
    let mut broken = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        let op = input.u8() % 12;
        let cons = ring.req_cons();
        if peer_write(page, op, cons, size, input, REQ_PROD) {
            continue;
        }
        let before = page.snapshot();
        let pvt = ring.rsp_prod_pvt();
        let (r, allowed): (Result<(), RingError>, Vec<Range<usize>>) = match op {
            6 => {
                let v: Rsp = [input.u32(), input.u32()];
                let unanswered = ring.unanswered();
                let r = ring.push_response(&v);
                if r == Err(RingError::Full) {
                    assert_eq!(unanswered, 0);
                }
                (r, vec![slot_range(size, pvt)])
            }
            7 => {
                let r = if input.u8() & 1 == 0 {
                    ring.push_responses()
                } else {
                    ring.push_responses_and_check_notify().map(drop)
                };
                if r.is_ok() {
                    let shared = page
                        .mem()
                        .atomic_u32(RSP_PROD)
                        .unwrap()
                        .load(Ordering::Relaxed);
                    assert_eq!(shared, pvt, "published index is not our private one");
                }
                (r, vec![word(RSP_PROD)])
            }
            8 | 9 => {
                let mut n = 0u32;
                let r = loop {
                    let at = ring.req_cons();
                    match ring.next_request() {
                        Ok(Some(req)) => {
                            n += 1;
                            assert!(n <= size, "a pass returned more than {size} requests");
                            let mut raw = [0u8; SLOT];
                            page.mem()
                                .read(slot_range(size, at).start, &mut raw)
                                .unwrap();
                            assert_eq!(&raw, zerocopy::IntoBytes::as_bytes(&req));
                        }
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                (r, vec![])
            }
            10 => {
                let r = ring.unconsumed_requests().map(|n| {
                    assert!(n <= size - ring.unanswered());
                });
                (r, vec![])
            }
            _ => (
                ring.final_check_for_requests().map(drop),
                vec![word(REQ_EVENT)],
            ),
        };
        only_changed(&before, &page.snapshot(), &allowed, "back ring");
        assert!(
            ring.unanswered() <= size,
            "more unanswered requests than slots"
        );
        latch(r, &mut broken, ring.is_broken());
    }
}

/// The latch rule: a fatal error breaks the ring for good.
fn latch(r: Result<(), RingError>, broken: &mut bool, is_broken: bool) {
    if *broken {
        assert_eq!(r, Err(RingError::Broken), "a broken ring worked again");
    }
    if let Err(e) = r {
        if e.is_fatal() {
            *broken = true;
        }
    }
    assert_eq!(
        *broken, is_broken,
        "is_broken disagrees with the errors returned"
    );
}
