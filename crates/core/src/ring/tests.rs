//! Both ends of a ring over one private buffer, driven by hand: the peer's
//! misbehaviour is written straight into the header.

use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use xenshare_abi::ring::SringHeader;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::sring::Sring;
use super::*;
use crate::mem::{PageBuf, SharedMem};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
struct Req {
    id: u64,
    op: u32,
    val: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
struct Rsp {
    id: u64,
    op: u32,
    status: i32,
}

type Front<'a> = FrontRing<SharedMem<'a>, Req, Rsp>;
type Back<'a> = BackRing<SharedMem<'a>, Req, Rsp>;

/// Bytes of a ring with `n` slots of 16 bytes.
const fn bytes_for(n: usize) -> usize {
    64 + 16 * n
}

fn buffer(bytes: usize) -> PageBuf {
    PageBuf::new(bytes.div_ceil(xenshare_abi::PAGE_SIZE))
}

fn region(buf: &PageBuf, bytes: usize) -> SharedMem<'_> {
    buf.mem().slice(0, bytes).unwrap()
}

fn word(m: SharedMem<'_>, field: usize) -> &AtomicU32 {
    m.atomic_u32(field).unwrap()
}

const REQ_PROD: usize = core::mem::offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = core::mem::offset_of!(SringHeader, req_event);
const RSP_PROD: usize = core::mem::offset_of!(SringHeader, rsp_prod);
const RSP_EVENT: usize = core::mem::offset_of!(SringHeader, rsp_event);

/// A front and back end over `m`, all indices at `start`.
fn pair(m: SharedMem<'_>, start: u32) -> (Front<'_>, Back<'_>) {
    Sring::new::<Req, Rsp>(m).unwrap().init(start).unwrap();
    (
        Front::attach_at(m, start).unwrap(),
        Back::attach_at(m, start).unwrap(),
    )
}

fn req(id: u64, val: u32) -> Req {
    Req { id, op: 1, val }
}

fn rsp_for(r: &Req) -> Rsp {
    Rsp {
        id: r.id,
        op: r.op,
        status: r.val as i32,
    }
}

#[test]
fn sizes() {
    #[repr(C)]
    #[derive(FromBytes, IntoBytes, Immutable)]
    struct Twelve([u32; 3]);
    #[repr(C)]
    #[derive(FromBytes, IntoBytes, Immutable)]
    struct Eight(u64);
    #[repr(C)]
    #[derive(FromBytes, IntoBytes, Immutable)]
    struct Blk([u64; 14]);

    assert_eq!(entry_size::<Req, Rsp>(), 16);
    // The C union of a 12-byte and an 8-aligned 8-byte struct is 16 bytes.
    assert_eq!(entry_size::<Twelve, Eight>(), 16);
    assert_eq!(entry_size::<Twelve, Twelve>(), 12);
    assert_eq!(nr_entries::<Twelve, Twelve>(4096), 256);
    assert_eq!(nr_entries::<Req, Rsp>(4096), 128);
    assert_eq!(nr_entries::<Blk, Eight>(ring_bytes(0)), 32);
    assert_eq!(nr_entries::<Blk, Eight>(ring_bytes(1)), 64);
    assert_eq!(nr_entries::<Blk, Eight>(ring_bytes(3)), 256);
    assert_eq!(ring_bytes(2), 16384);

    let buf = buffer(ring_bytes(1));
    let m = region(&buf, ring_bytes(1));
    let front = Front::init(m).unwrap();
    assert_eq!(front.size(), 256);
    assert_eq!(front.free_requests(), 256);
    // SHARED_RING_INIT: producers 0, events 1.
    assert_eq!(m.read_obj::<[u32; 4]>(0).unwrap(), [0, 1, 0, 1]);

    // Too small for one slot, and misaligned.
    let small = m.slice(0, 64 + 15).unwrap();
    assert_eq!(
        Front::init(small).unwrap_err(),
        RingError::Region {
            bytes: 79,
            entry_size: 16
        }
    );
    let odd = m.slice(2, 4000).unwrap();
    assert!(matches!(
        Back::attach(odd).unwrap_err(),
        RingError::Region { .. }
    ));
}

#[test]
fn round_trip_with_notifications() {
    let buf = buffer(4096);
    let m = region(&buf, 4096);
    let mut front = Front::init(m).unwrap();
    let mut back = Back::attach(m).unwrap();

    for i in 0..3 {
        front.push_request(&req(i, i as u32 * 10)).unwrap();
    }
    assert_eq!(front.unpublished_requests(), 3);
    // The back end asked (at init) to hear of request 1.
    assert!(front.push_requests_and_check_notify().unwrap());
    assert_eq!(word(m, REQ_PROD).load(Ordering::Relaxed), 3);

    assert_eq!(back.unconsumed_requests().unwrap(), 3);
    let mut got = Vec::new();
    while let Some(r) = back.next_request().unwrap() {
        got.push(r);
    }
    assert_eq!(got, [req(0, 0), req(1, 10), req(2, 20)]);
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(word(m, REQ_EVENT).load(Ordering::Relaxed), 4);

    for r in &got {
        back.push_response(&rsp_for(r)).unwrap();
    }
    assert_eq!(back.push_response(&rsp_for(&got[0])), Err(RingError::Full));
    assert!(!back.is_broken());
    assert!(back.push_responses_and_check_notify().unwrap());

    let mut seen = Vec::new();
    while let Some(r) = front.next_response().unwrap() {
        seen.push(r.status);
    }
    assert_eq!(seen, [0, 10, 20]);
    assert!(!front.final_check_for_responses().unwrap());
    assert_eq!(word(m, RSP_EVENT).load(Ordering::Relaxed), 4);
    assert_eq!(front.free_requests(), 128);
}

#[test]
fn notify_only_when_the_peer_asked() {
    let buf = buffer(bytes_for(8));
    let m = region(&buf, bytes_for(8));
    let (mut front, mut back) = pair(m, 0);

    front.push_request(&req(0, 0)).unwrap();
    assert!(front.push_requests_and_check_notify().unwrap());
    // Not re-armed: the back end is known to be awake.
    front.push_request(&req(1, 0)).unwrap();
    assert!(!front.push_requests_and_check_notify().unwrap());
    // Work is still there, so the final check does not re-arm.
    assert!(back.final_check_for_requests().unwrap());
    assert_eq!(word(m, REQ_EVENT).load(Ordering::Relaxed), 1);
    while back.next_request().unwrap().is_some() {}
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(word(m, REQ_EVENT).load(Ordering::Relaxed), 3);
    // Publishing nothing never notifies.
    assert!(!front.push_requests_and_check_notify().unwrap());
    front.push_request(&req(2, 0)).unwrap();
    front.push_request(&req(3, 0)).unwrap();
    assert!(front.push_requests_and_check_notify().unwrap());
    assert_eq!(back.unconsumed_requests().unwrap(), 2);
}

/// Interrupt moderation: a front end waiting for 3 responses is notified
/// once, by the push that completes the third, not by the first two.
#[test]
fn front_end_can_ask_to_hear_of_several_responses_at_once() {
    let buf = buffer(bytes_for(8));
    let m = region(&buf, bytes_for(8));
    let (mut front, mut back) = pair(m, 0);
    for i in 0..4 {
        front.push_request(&req(i, i as u32)).unwrap();
    }
    front.push_requests_and_check_notify().unwrap();
    let mut got = Vec::new();
    while let Some(r) = back.next_request().unwrap() {
        got.push(r);
    }
    assert!(!front.final_check_for_responses_at_least(3).unwrap());
    assert_eq!(word(m, RSP_EVENT).load(Ordering::Relaxed), 3);
    back.push_response(&rsp_for(&got[0])).unwrap();
    back.push_response(&rsp_for(&got[1])).unwrap();
    assert!(!back.push_responses_and_check_notify().unwrap());
    // Two published: not yet three.
    assert!(!front.final_check_for_responses_at_least(3).unwrap());
    back.push_response(&rsp_for(&got[2])).unwrap();
    assert!(back.push_responses_and_check_notify().unwrap());
    assert!(front.final_check_for_responses_at_least(3).unwrap());
    let mut seen = 0;
    while front.next_response().unwrap().is_some() {
        seen += 1;
    }
    assert_eq!(seen, 3);
    // An answer already published counts at once.
    back.push_response(&rsp_for(&got[3])).unwrap();
    back.push_responses_and_check_notify().unwrap();
    assert!(front.final_check_for_responses_at_least(1).unwrap());
    assert!(front.next_response().unwrap().is_some());
}

#[test]
fn wraps_at_u32_max() {
    let start = 0xFFFF_FFF0u32;
    let buf = buffer(bytes_for(4));
    let m = region(&buf, bytes_for(4));
    let (mut front, mut back) = pair(m, start);
    assert_eq!(front.free_requests(), 4);

    let mut next = 0u64;
    let mut done = 0u64;
    for round in 0..40u32 {
        let n = 1 + round % 4;
        for _ in 0..n {
            front.push_request(&req(next, next as u32)).unwrap();
            next += 1;
        }
        if n == 4 {
            assert_eq!(front.push_request(&req(99, 0)), Err(RingError::Full));
        }
        front.push_requests_and_check_notify().unwrap();
        while let Some(r) = back.next_request().unwrap() {
            back.push_response(&rsp_for(&r)).unwrap();
        }
        back.push_responses_and_check_notify().unwrap();
        while let Some(r) = front.next_response().unwrap() {
            assert_eq!(r.id, done);
            assert_eq!(r.status as u64, done);
            done += 1;
        }
        assert!(!front.final_check_for_responses().unwrap());
        assert!(!back.final_check_for_requests().unwrap());
    }
    assert_eq!(done, next);
    let end = start.wrapping_add(next as u32);
    assert!(end < 0x100, "indices wrapped: {end:#x}");
    assert_eq!(front.req_prod_pvt(), end);
    assert_eq!(front.rsp_cons(), end);
    assert_eq!(back.req_cons(), end);
    assert_eq!(back.rsp_prod_pvt(), end);
    assert_eq!(
        word(m, RSP_EVENT).load(Ordering::Relaxed),
        end.wrapping_add(1)
    );
}

#[test]
fn requests_are_private_copies() {
    let buf = buffer(bytes_for(4));
    let m = region(&buf, bytes_for(4));
    let (mut front, mut back) = pair(m, 0);
    front.push_request(&req(7, 1)).unwrap();
    front.push_requests().unwrap();
    let r = back.next_request().unwrap().unwrap();
    // The front end rewrites the slot after the back end copied it.
    m.write_obj(64, &req(8, 2)).unwrap();
    assert_eq!(r, req(7, 1));
}

fn assert_broken_front(front: &mut Front<'_>, cause: RingError) {
    assert!(front.is_broken());
    assert_eq!(front.error(), Some(cause));
    assert_eq!(front.next_response(), Err(RingError::Broken));
    assert_eq!(front.unconsumed_responses(), Err(RingError::Broken));
    assert_eq!(front.final_check_for_responses(), Err(RingError::Broken));
    assert_eq!(front.push_request(&req(0, 0)), Err(RingError::Broken));
    assert_eq!(front.push_requests(), Err(RingError::Broken));
    assert_eq!(
        front.push_requests_and_check_notify(),
        Err(RingError::Broken)
    );
}

fn assert_broken_back(back: &mut Back<'_>, cause: RingError) {
    assert!(back.is_broken());
    assert_eq!(back.error(), Some(cause));
    assert_eq!(back.next_request(), Err(RingError::Broken));
    assert_eq!(back.unconsumed_requests(), Err(RingError::Broken));
    assert_eq!(back.final_check_for_requests(), Err(RingError::Broken));
    assert_eq!(
        back.push_response(&rsp_for(&req(0, 0))),
        Err(RingError::Broken)
    );
    assert_eq!(back.push_responses(), Err(RingError::Broken));
    assert_eq!(
        back.push_responses_and_check_notify(),
        Err(RingError::Broken)
    );
}

#[test]
fn back_end_overflowing_rsp_prod_breaks_the_front() {
    for start in [0u32, 0xFFFF_FFFE] {
        // More responses than the ring holds.
        let buf = buffer(bytes_for(4));
        let m = region(&buf, bytes_for(4));
        let (mut front, _back) = pair(m, start);
        for i in 0..2 {
            front.push_request(&req(i, 0)).unwrap();
        }
        front.push_requests().unwrap();
        word(m, RSP_PROD).store(start.wrapping_add(5), Ordering::Relaxed);
        let cause = RingError::ProducerOverflow {
            prod: start.wrapping_add(5),
            cons: start,
            max: 2,
        };
        assert_eq!(front.next_response(), Err(cause));
        assert_broken_front(&mut front, cause);

        // Within the ring, but more than the requests published.
        let (mut front, _back) = pair(m, start);
        front.push_request(&req(0, 0)).unwrap();
        front.push_requests().unwrap();
        front.push_request(&req(1, 0)).unwrap();
        word(m, RSP_PROD).store(start.wrapping_add(2), Ordering::Relaxed);
        assert!(matches!(
            front.final_check_for_responses(),
            Err(RingError::ProducerOverflow { max: 1, .. })
        ));
        assert!(front.is_broken());

        // Behind our consumer index.
        let (mut front, _back) = pair(m, start);
        word(m, RSP_PROD).store(start.wrapping_sub(1), Ordering::Relaxed);
        assert!(matches!(
            front.unconsumed_responses(),
            Err(RingError::ProducerOverflow { .. })
        ));
        assert!(front.is_broken());
    }
}

#[test]
fn front_end_overflowing_req_prod_breaks_the_back() {
    let buf = buffer(bytes_for(4));
    let m = region(&buf, bytes_for(4));
    let start = 0xFFFF_FFFD;

    // req_prod - rsp_prod_pvt > nr_ents.
    let (_front, mut back) = pair(m, start);
    word(m, REQ_PROD).store(start.wrapping_add(5), Ordering::Relaxed);
    let cause = RingError::ProducerOverflow {
        prod: start.wrapping_add(5),
        cons: start,
        max: 4,
    };
    assert_eq!(back.next_request(), Err(cause));
    assert_broken_back(&mut back, cause);

    // With unanswered requests, less is allowed: 2 consumed, unanswered.
    let (mut front, mut back) = pair(m, start);
    for i in 0..2 {
        front.push_request(&req(i, 0)).unwrap();
    }
    front.push_requests().unwrap();
    back.next_request().unwrap().unwrap();
    back.next_request().unwrap().unwrap();
    word(m, REQ_PROD).store(start.wrapping_add(5), Ordering::Relaxed);
    assert_eq!(
        back.final_check_for_requests(),
        Err(RingError::ProducerOverflow {
            prod: start.wrapping_add(5),
            cons: start.wrapping_add(2),
            max: 2,
        })
    );
    assert!(back.is_broken());

    // Behind our consumer index.
    let (_front, mut back) = pair(m, start);
    word(m, REQ_PROD).store(start.wrapping_sub(1), Ordering::Relaxed);
    assert!(matches!(
        back.unconsumed_requests(),
        Err(RingError::ProducerOverflow { .. })
    ));
    assert!(back.is_broken());

    // A full ring's worth is fine, and is all the back end ever reads.
    let (_front, mut back) = pair(m, start);
    word(m, REQ_PROD).store(start.wrapping_add(4), Ordering::Relaxed);
    let mut n = 0;
    while back.next_request().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
    assert!(!back.is_broken());
}

/// The front end sends `n` requests with opcodes 1..; returns the tracker.
fn sent(front: &mut Front<'_>, n: u32) -> Outstanding<u32> {
    let mut inflight = Outstanding::new(front.size() as usize);
    for i in 0..n {
        let id = inflight.start(1 + i, 100 + i).unwrap();
        front
            .push_request(&Req {
                id,
                op: 1 + i,
                val: i,
            })
            .unwrap();
    }
    front.push_requests().unwrap();
    inflight
}

/// The back end answers one request with `rsp`, whatever it was.
fn answer(back: &mut Back<'_>, rsp: Rsp) {
    back.next_request().unwrap().unwrap();
    back.push_response(&rsp).unwrap();
    back.push_responses().unwrap();
}

#[test]
fn response_ids_are_checked() {
    let buf = buffer(bytes_for(4));
    let m = region(&buf, bytes_for(4));
    let check = |rsps: &[Rsp], cause: RingError| {
        let (mut front, mut back) = pair(m, 0);
        let mut inflight = sent(&mut front, 3);
        for r in rsps {
            answer(&mut back, *r);
        }
        let mut result = Ok(0);
        while let Some(r) = front.next_response().unwrap() {
            result = front.complete(&mut inflight, r.id, r.op);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(cause));
        assert_broken_front(&mut front, cause);
        assert!(inflight.is_broken());
        assert_eq!(inflight.error(), Some(cause));
        assert_eq!(inflight.start(1, 0), Err(RingError::Broken));
        // What the back end answered falsely stays in flight, for teardown.
        let left: Vec<u64> = inflight.drain().into_iter().map(|(id, _, _)| id).collect();
        assert!(!left.is_empty());
        assert_eq!(inflight.in_flight(), 0);
    };
    let ok0 = Rsp {
        id: 0,
        op: 1,
        status: 0,
    };
    check(
        &[Rsp { id: 4, ..ok0 }],
        RingError::BadId { id: 4, limit: 4 },
    );
    check(
        &[Rsp {
            id: u64::MAX,
            ..ok0
        }],
        RingError::BadId {
            id: u64::MAX,
            limit: 4,
        },
    );
    check(&[ok0, ok0], RingError::NotOutstanding { id: 0 });
    // Id 3 is in range but was never sent.
    check(&[Rsp { id: 3, ..ok0 }], RingError::NotOutstanding { id: 3 });
    check(
        &[Rsp {
            id: 1,
            op: 1,
            status: 0,
        }],
        RingError::WrongOpcode {
            id: 1,
            expected: 2,
            got: 1,
        },
    );
}

#[test]
fn outstanding_tracker() {
    let mut t = Outstanding::<&str>::new(2);
    assert_eq!(t.capacity(), 2);
    assert_eq!(t.start(5, "a"), Ok(0));
    assert_eq!(t.start(6, "b"), Ok(1));
    assert_eq!(t.start(7, "c"), Err(RingError::Full));
    assert!(!t.is_broken());
    assert_eq!(t.get(1), Some((6, &"b")));
    assert_eq!(t.cancel(1), Some("b"));
    assert_eq!(t.cancel(1), None);
    assert_eq!(t.finish(0, 5), Ok("a"));
    assert_eq!(t.in_flight(), 0);
    // The id freed last is reused first.
    assert_eq!(t.start(8, "d"), Ok(0));
    assert_eq!(
        t.finish(0, 9),
        Err(RingError::WrongOpcode {
            id: 0,
            expected: 8,
            got: 9
        })
    );
    assert_eq!(t.finish(0, 8), Err(RingError::Broken));
    assert!(t.is_outstanding(0));
    assert_eq!(t.drain(), [(0, 8, "d")]);
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn full_is_not_fatal_but_fail_is() {
    let buf = buffer(bytes_for(2));
    let m = region(&buf, bytes_for(2));
    let (mut front, mut back) = pair(m, 0);
    front.push_request(&req(0, 0)).unwrap();
    front.push_request(&req(1, 0)).unwrap();
    assert_eq!(front.push_request(&req(2, 0)), Err(RingError::Full));
    assert_eq!(front.fail(RingError::Full), RingError::Full);
    assert!(!front.is_broken());
    assert_eq!(
        back.push_response(&rsp_for(&req(0, 0))),
        Err(RingError::Full)
    );
    assert!(!back.is_broken());
    let bad = RingError::NotOutstanding { id: 9 };
    assert_eq!(back.fail(bad), bad);
    assert_broken_back(&mut back, bad);
    assert!(RingError::Broken.is_fatal() && !RingError::Full.is_fatal());
}

#[derive(Debug, Clone)]
enum Op {
    Push(u32),
    Publish,
    BackTake,
    BackAnswer,
    BackPublish,
    FrontTake,
    FrontFinal,
    BackFinal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u32>().prop_map(Op::Push),
        2 => Just(Op::Publish),
        3 => Just(Op::BackTake),
        3 => Just(Op::BackAnswer),
        2 => Just(Op::BackPublish),
        3 => Just(Op::FrontTake),
        1 => Just(Op::FrontFinal),
        1 => Just(Op::BackFinal),
    ]
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..64).prop_map(|d| u32::MAX - d),
        0u32..64
    ]
}

proptest! {
    /// Random interleavings of both ends against a queue model: everything
    /// arrives once, in order; free and unconsumed counts match; an end that
    /// went idle through its final check is always notified by the next
    /// publish.
    #[test]
    fn matches_queue_model(
        start in start_index(),
        log2 in 0u32..4,
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let n = 1usize << log2;
        let buf = buffer(bytes_for(n));
        let m = region(&buf, bytes_for(n));
        let (mut front, mut back) = pair(m, start);

        let mut unpublished = VecDeque::new(); // pushed by the front end
        let mut published = VecDeque::new(); // visible to the back end
        let mut unanswered = VecDeque::new(); // taken by the back end
        let mut rsp_unpublished = VecDeque::new();
        let mut rsp_published = VecDeque::new();
        let mut in_ring = 0usize; // requests whose responses are not yet consumed
        let (mut back_idle, mut front_idle) = (false, false);

        for op in ops {
            match op {
                Op::Push(v) => {
                    let r = front.push_request(&req(0, v));
                    if in_ring == n {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        unpublished.push_back(v);
                        in_ring += 1;
                    }
                }
                Op::Publish => {
                    let notify = front.push_requests_and_check_notify().unwrap();
                    if back_idle && !unpublished.is_empty() {
                        prop_assert!(notify, "idle back end not notified");
                        back_idle = false;
                    }
                    published.extend(unpublished.drain(..));
                }
                Op::BackTake => {
                    let r = back.next_request().unwrap();
                    prop_assert_eq!(r.map(|r| r.val), published.pop_front());
                    if let Some(v) = r.map(|r| r.val) {
                        unanswered.push_back(v);
                    }
                }
                Op::BackAnswer => {
                    let v = unanswered.pop_front();
                    let r = back.push_response(&Rsp { id: 0, op: 1, status: v.unwrap_or(0) as i32 });
                    prop_assert_eq!(r.is_ok(), v.is_some());
                    rsp_unpublished.extend(v);
                }
                Op::BackPublish => {
                    let notify = back.push_responses_and_check_notify().unwrap();
                    if front_idle && !rsp_unpublished.is_empty() {
                        prop_assert!(notify, "idle front end not notified");
                        front_idle = false;
                    }
                    rsp_published.extend(rsp_unpublished.drain(..));
                }
                Op::FrontTake => {
                    let r = front.next_response().unwrap();
                    let want = rsp_published.pop_front();
                    prop_assert_eq!(r.map(|r| r.status as u32), want);
                    if want.is_some() {
                        in_ring -= 1;
                    }
                }
                Op::FrontFinal => {
                    let more = front.final_check_for_responses().unwrap();
                    prop_assert_eq!(more, !rsp_published.is_empty());
                    front_idle = !more;
                }
                Op::BackFinal => {
                    let more = back.final_check_for_requests().unwrap();
                    prop_assert_eq!(more, !published.is_empty());
                    back_idle = !more;
                }
            }
            prop_assert_eq!(front.free_requests() as usize, n - in_ring);
            prop_assert_eq!(front.unconsumed_responses().unwrap() as usize, rsp_published.len());
            prop_assert_eq!(back.unconsumed_requests().unwrap() as usize, published.len());
            prop_assert_eq!(back.unanswered() as usize, unanswered.len());
        }
        prop_assert!(!front.is_broken() && !back.is_broken());
    }
}
