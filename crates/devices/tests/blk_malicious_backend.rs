//! Malicious back ends against the real front end. Each one ends in a typed
//! error and a broken disk — no panic, no hang, and never a reused page.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xenshare::blk::BlkError;
use xenshare::error::DeviceError;
use xenshare::ring::RingError;
use xenshare::{Access, GrantRef};
use xenshare_abi::blkif::{
    BlkifRequest, BlkifResponse, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY,
};
use xenshare_devices::blk::{BlkWorld, SimFront};
use xenshare_testkit::adversary::{HostileStore, Kept, RawIndices};
use xenshare_testkit::blk::*;

/// Connects the real front end to a hand-made back end.
fn connect(w: &BlkWorld, extra: &[(&str, &str)]) -> (SimFront, FakeBack) {
    connect_fake_backend(w, extra, DISK_4MIB)
}

/// [`connect`], the hand-made back end offering persistent grants or not.
fn connect_maybe_persistent(w: &BlkWorld, persistent: bool) -> (SimFront, FakeBack) {
    let extra: &[(&str, &str)] = if persistent {
        &[("feature-persistent", "1")]
    } else {
        &[]
    };
    connect(w, extra)
}

/// One read in flight; the hand-made back end answers it with `misbehave`
/// and the disk must break with the ring violation `want` describes.
fn one_read_answered_by(
    want: fn(&RingError) -> bool,
    misbehave: impl FnOnce(&FakeBack, &mut BackRingOf<'_>, BlkifRequest),
) {
    let w = world();
    let (mut fe, fb) = connect(&w, &[]);
    let mut disk = fe.disk().unwrap();
    disk.submit_read(0, 4096).unwrap();
    let mut ring = fb.ring();
    let a = fb.next_request(&mut ring);
    misbehave(&fb, &mut ring, a);
    assert_ring_error(disk.wait(), want);
    assert!(disk.is_broken());
}

/// Asserts that `r` is the ring violation `want` describes, promptly.
fn assert_ring_error(r: Result<impl std::fmt::Debug, BlkError>, want: fn(&RingError) -> bool) {
    match r {
        Err(BlkError::Core(DeviceError::Ring(e))) if want(&e) => {}
        other => panic!("expected a ring violation, got {other:?}"),
    }
}

/// The XSA-396 pattern: the back end answers a read but keeps the data
/// page mapped. The front end breaks, the page goes to quarantine, and
/// neither the grant ref nor the frame is ever handed out again.
#[test]
fn keeps_a_grant_after_responding() {
    let w = world();
    let (mut fe, fb) = connect(&w, &[]);
    let exporter = w.guest.exporter().clone();
    let kept;
    let gref;
    {
        let mut disk = fe.disk().unwrap();
        assert!(!disk.info().persistent);
        let tag = disk.submit_read(0, 4096).unwrap();
        let mut ring = fb.ring();
        let req = fb.next_request(&mut ring);
        assert_eq!(req.operation, BLKIF_OP_READ);
        gref = GrantRef(req.seg[0].gref);
        kept = Kept::rw(&w.dom0, w.guest.id(), gref);
        kept.mem().fill(0, 4096, 0xAB).unwrap();
        fb.respond(&mut ring, req.id, req.operation, BLKIF_RSP_OKAY);
        assert_eq!(disk.wait(), Err(BlkError::GrantStillMapped(1)));
        assert!(disk.is_broken());
        let _ = tag;
        // Everything afterwards is refused, promptly.
        assert!(matches!(
            disk.read_at(0, &mut [0u8; 512]),
            Err(BlkError::Broken(_))
        ));
        assert!(matches!(disk.submit_flush(), Err(BlkError::Broken(_))));
    }
    // The page is in quarantine, with its grant ref.
    assert!(exporter.quarantined() >= 1);
    assert!(exporter
        .quarantine_snapshot()
        .iter()
        .any(|(_, refs, _)| refs.contains(&gref)));
    let frame = exporter.table().unwrap().entry(gref).unwrap().frame;
    // Neither the ref nor the frame is handed out again while it is mapped.
    let mut fresh = Vec::new();
    for _ in 0..300 {
        let s = exporter.share(w.dom0.id(), 1, Access::ReadWrite).unwrap();
        assert_ne!(s.refs()[0], gref, "quarantined grant ref reused");
        let f = exporter.table().unwrap().entry(s.refs()[0]).unwrap().frame;
        assert_ne!(f, frame, "quarantined frame reused");
        fresh.push(s);
    }
    drop(fresh);
    // The malicious back end's writes land only in the quarantined page.
    kept.mem().fill(0, 4096, 0xCD).unwrap();
    let rel = fe.release();
    assert!(rel.quarantined >= 1, "{rel:?}"); // the ring is still mapped too
                                              // Once the back end lets go, quarantine drains.
    drop(kept);
    drop(fb);
    exporter.reclaim(usize::MAX);
    assert_eq!(exporter.quarantined(), 0);
    assert_eq!(exporter.stats().live, 0);
}

#[test]
fn duplicate_response_id() {
    let w = world();
    let (mut fe, fb) = connect(&w, &[]);
    let mut disk = fe.disk().unwrap();
    disk.submit_read(0, 4096).unwrap();
    disk.submit_read(4096, 4096).unwrap();
    let mut ring = fb.ring();
    let a = fb.next_request(&mut ring);
    let _b = fb.next_request(&mut ring);
    fb.respond(&mut ring, a.id, a.operation, BLKIF_RSP_OKAY);
    fb.respond(&mut ring, a.id, a.operation, BLKIF_RSP_OKAY);
    let mut last = Ok(None);
    for _ in 0..3 {
        last = disk.wait();
        if last.is_err() {
            break;
        }
    }
    assert_ring_error(last, |e| matches!(e, RingError::NotOutstanding { .. }));
    assert!(disk.is_broken());
    // A completion that finished before the violation may still be handed
    // out; after that, only errors.
    let mut broken = false;
    for _ in 0..3 {
        match disk.wait() {
            Ok(Some(c)) => assert_eq!(c.result, Ok(())),
            Ok(None) => panic!("requests in flight vanished"),
            Err(e) => {
                assert!(matches!(e, BlkError::Broken(_)), "{e:?}");
                broken = true;
                break;
            }
        }
    }
    assert!(broken);
}

#[test]
fn out_of_range_response_id() {
    one_read_answered_by(
        |e| matches!(e, RingError::BadId { id, .. } if *id >= 1000),
        |fb, ring, a| fb.respond(ring, a.id + 1000, a.operation, BLKIF_RSP_OKAY),
    );
}

#[test]
fn wrong_opcode() {
    one_read_answered_by(
        |e| matches!(e, RingError::WrongOpcode { .. }),
        |fb, ring, a| fb.respond(ring, a.id, BLKIF_OP_WRITE, BLKIF_RSP_OKAY),
    );
}

#[test]
fn overflowing_producer_index() {
    // rsp_prod far past what was requested.
    one_read_answered_by(
        |e| matches!(e, RingError::ProducerOverflow { prod: 1000, .. }),
        |fb, _, _| {
            RawIndices::new(fb.ring.mem()).set_rsp_prod(1000);
            fb.chan.notify().unwrap();
        },
    );
    // A producer index behind the consumer is as bad: fresh connection.
    let w = world();
    let (mut fe, fb) = connect(&w, &[]);
    let mut disk = fe.disk().unwrap();
    disk.submit_read(0, 4096).unwrap();
    RawIndices::new(fb.ring.mem()).set_rsp_prod(u32::MAX);
    fb.chan.notify().unwrap();
    assert_ring_error(disk.wait(), |e| {
        matches!(e, RingError::ProducerOverflow { .. })
    });
}

/// A back end that notifies in a tight loop: the front end keeps working
/// correctly while answers come, and times out (bounded) when they stop.
#[test]
fn event_flood() {
    let w = world();
    let (mut fe, fb) = connect(&w, &[("feature-flush-cache", "1")]);
    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let notifies = AtomicU64::new(0);
    let answer = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut ring = fb.ring();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    fb.chan.notify().unwrap();
                }
                notifies.fetch_add(64, Ordering::Relaxed);
                if answer.load(Ordering::Relaxed) {
                    while let Some(r) = ring.next_request().unwrap() {
                        ring.push_response(&BlkifResponse {
                            id: r.id,
                            operation: r.operation,
                            status: BLKIF_RSP_OKAY,
                            ..Default::default()
                        })
                        .unwrap();
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    ring.push_responses().unwrap();
                }
            }
        });
        let mut disk = fe.disk().unwrap();
        for _ in 0..200 {
            disk.flush().unwrap();
        }
        assert_eq!(answered.load(Ordering::Relaxed), 200);
        // The flood goes on but answers stop: a clear, bounded timeout.
        answer.store(false, Ordering::Relaxed);
        let t = Instant::now();
        assert_eq!(disk.flush(), Err(BlkError::Core(DeviceError::Timeout)));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(disk.is_broken());
        stop.store(true, Ordering::Relaxed);
    });
    assert!(notifies.load(Ordering::Relaxed) > 1000);
}

/// A back end that answers slowly, one read at a time, and stops short of
/// what the wait needs. Each answer restarts the front end's spin (it is
/// progress) but never its deadline: the wait fails when the deadline
/// taken at its start passes, not that long after the last answer.
#[test]
fn trickled_answers_do_not_stretch_the_wait() {
    let w = world();
    let (mut fe, fb) = connect(&w, &[]);
    let mut disk = fe.disk().unwrap();
    disk.plug();
    for block in 0..16u64 {
        disk.submit_read(block * 4096, 4096).unwrap();
    }
    disk.unplug().unwrap();
    // `wait_all` sleeps until 12 of the 16 are answered; 11 come, the
    // last 1.76 s into the front end's 2 s deadline.
    let gap = Duration::from_millis(160);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut ring = fb.ring();
            for _ in 0..11 {
                std::thread::sleep(gap);
                let r = fb.next_request(&mut ring);
                fb.respond(&mut ring, r.id, r.operation, BLKIF_RSP_OKAY);
            }
        });
        let t = Instant::now();
        let mut done = Vec::new();
        assert_eq!(
            disk.wait_all(&mut done),
            Err(BlkError::Core(DeviceError::Timeout))
        );
        let took = t.elapsed();
        assert!(took >= gap * 11, "{took:?}");
        // A deadline restarted by each answer would end 2 s after the
        // last one, 3.76 s in.
        assert!(took < Duration::from_millis(3000), "{took:?}");
    });
    assert!(disk.is_broken());
}

/// A back end that never answers a read: the caller's buffer is never
/// written after the call returns, and the page is not reused.
#[test]
fn silent_backend_times_out_and_page_stays_out_of_reach() {
    let w = world();
    let (mut fe, fb) = connect(&w, &[]);
    let mut buf = vec![0x11u8; 8192];
    {
        let mut disk = fe.disk().unwrap();
        let t = Instant::now();
        assert_eq!(
            disk.read_at(0, &mut buf),
            Err(BlkError::Core(DeviceError::Timeout))
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    assert!(buf.iter().all(|&b| b == 0x11));
    // The back end maps the request's page now, late.
    let mut ring = fb.ring();
    let req = ring.next_request().unwrap().unwrap();
    let late = Kept::rw(&w.dom0, w.guest.id(), GrantRef(req.seg[0].gref));
    let rel = fe.release();
    assert!(rel.quarantined >= 2, "{rel:?}"); // ring + data page
    drop(late);
    drop(fb);
    w.guest.exporter().reclaim(usize::MAX);
    assert_eq!(w.guest.exporter().quarantined(), 0);
}

/// Linux's blkback answers an indirect request with its inner operation
/// (READ/WRITE), not BLKIF_OP_INDIRECT; the front end must accept that (and,
/// for back ends that echo INDIRECT, that too), and break on anything else.
#[test]
fn indirect_responses_name_the_inner_operation_as_linux_blkback_does() {
    use xenshare_abi::blkif::{BlkifRequestIndirect, BLKIF_OP_INDIRECT};
    use zerocopy::FromBytes;
    let w = world();
    let (mut fe, fb) = connect(&w, &[("feature-max-indirect-segments", "32")]);
    let mut disk = fe.disk().unwrap();
    let len = 16 * 4096; // more than 11 segments: an indirect request
    let mut ring = fb.ring();
    for (answer, ok) in [
        (Some(BLKIF_OP_READ), true),
        (None, true),
        (Some(BLKIF_OP_WRITE), false),
    ] {
        let tag = disk.submit_read(0, len).unwrap();
        let req = fb.next_request(&mut ring);
        assert_eq!(
            req.operation, BLKIF_OP_INDIRECT,
            "a 16-page read goes indirect"
        );
        let ind = BlkifRequestIndirect::read_from_prefix(zerocopy::IntoBytes::as_bytes(&req))
            .unwrap()
            .0;
        assert_eq!(ind.indirect_op, BLKIF_OP_READ);
        let op = answer.unwrap_or(BLKIF_OP_INDIRECT);
        fb.respond(&mut ring, ind.id, op, BLKIF_RSP_OKAY);
        let done = disk.wait();
        if ok {
            let c = done
                .unwrap_or_else(|e| panic!("answer {op} refused: {e}"))
                .expect("a completion");
            assert_eq!(c.tag, tag);
            assert!(c.result.is_ok(), "{:?}", c.result);
        } else {
            assert_ring_error(done, |e| matches!(e, RingError::WrongOpcode { .. }));
            assert!(disk.is_broken());
        }
    }
}

/// A back end that publishes a state no XenbusState spells ("banana",
/// then a number past the last state) instead of InitWait: the front
/// end's connect fails with an error within its timeout, never hangs.
#[test]
fn backend_writing_a_garbage_state_fails_the_connect() {
    for raw in ["banana", "99", " 2", "-1"] {
        let w = world();
        let mut evil = HostileStore::new(&w, &w.dom0);
        evil.raw_state(&back_dir(&w), raw);
        let mut fe = w.frontend(quick_front()).unwrap();
        let mut xs = w.client(&w.guest);
        let t = Instant::now();
        let r = fe.connect(&mut xs).map(drop);
        assert!(r.is_err(), "{raw:?}: connected to a back end in no state");
        assert!(t.elapsed() < T, "{raw:?}: took {:?}", t.elapsed());
    }
}

/// The byte a hand-made back end puts at disk offset `off`.
fn pattern(off: u64) -> u8 {
    ((off / 512) * 7 + off % 251) as u8
}

/// What a hand-made back end serving [`Disk::read_with`] does with one
/// request (the requests are collected first, then answered in reverse).
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// Fill the pages with [`pattern`] and answer OKAY.
    Fill,
    /// Answer ERROR without touching the pages.
    Fail,
    /// Fill, answer OKAY, and keep the first page mapped (XSA-396).
    FillAndKeep,
}

/// Takes `n` direct read requests, fills their pages as `answer` says and
/// answers them last first; returns the mappings it kept. The ring is
/// attached at `start` (the requests served on it before).
fn answer_reversed(
    w: &BlkWorld,
    fb: &FakeBack,
    start: u32,
    n: usize,
    answer: impl Fn(usize) -> Answer,
) -> Vec<Kept<xenshare::mem::ReadWrite>> {
    let mut ring = BackRingOf::attach_at(fb.ring.mem(), start).unwrap();
    let reqs: Vec<BlkifRequest> = (0..n).map(|_| fb.next_request(&mut ring)).collect();
    let mut kept = Vec::new();
    for (i, r) in reqs.iter().enumerate().rev() {
        assert_eq!(r.operation, BLKIF_OP_READ);
        let a = answer(i);
        if a != Answer::Fail {
            let mut off = r.sector_number * 512;
            for (k, s) in r.seg[..usize::from(r.nr_segments)].iter().enumerate() {
                let page = Kept::rw(&w.dom0, w.guest.id(), GrantRef(s.gref));
                let first = usize::from(s.first_sect) * 512;
                let bytes = (usize::from(s.last_sect) + 1) * 512 - first;
                let data: Vec<u8> = (0..bytes as u64).map(|b| pattern(off + b)).collect();
                page.mem().write(first, &data).unwrap();
                off += bytes as u64;
                if a == Answer::FillAndKeep && k == 0 {
                    kept.push(page);
                }
            }
        }
        let status = if a == Answer::Fail {
            xenshare_abi::blkif::BLKIF_RSP_ERROR
        } else {
            BLKIF_RSP_OKAY
        };
        fb.respond(&mut ring, r.id, r.operation, status);
    }
    kept
}

/// Runs one `read_with` of `len` bytes at `at` against a hand-made back end
/// that answers `n` requests with `answer`, last first; returns the call's
/// result and every (position, bytes) it was shown, in order.
#[allow(clippy::type_complexity)]
fn read_with_against(
    persistent: bool,
    at: u64,
    len: usize,
    n: usize,
    answer: impl Fn(usize) -> Answer + Send,
) -> (
    Result<(), BlkError>,
    Vec<(usize, Vec<u8>)>,
    BlkWorld,
    SimFront,
    FakeBack,
    Vec<Kept<xenshare::mem::ReadWrite>>,
) {
    let w = world();
    let (mut fe, fb) = connect_maybe_persistent(&w, persistent);
    let mut shown = Vec::new();
    let (r, kept) = std::thread::scope(|s| {
        let back = s.spawn(|| answer_reversed(&w, &fb, 0, n, answer));
        let mut disk = fe.disk().unwrap();
        assert_eq!(disk.info().persistent, persistent);
        // 11 pages a request at most (no indirect requests offered).
        assert_eq!(disk.max_request_bytes(), 11 * 4096);
        let r = disk.read_with(at, len, |pos, page| {
            let mut b = vec![0u8; page.len()];
            page.read(0, &mut b).unwrap();
            shown.push((pos, b));
        });
        (r, back.join().unwrap())
    });
    (r, shown, w, fe, fb, kept)
}

/// A back end that answers a multi-request `read_with` last first: the
/// caller is still shown every page exactly once, in disk order, with the
/// right bytes (the later requests' pages are held back until the earlier
/// ones are shown), with persistent grants and without; and every
/// per-request grant is revoked.
#[test]
fn read_with_shows_pages_in_order_when_answers_come_last_first() {
    for persistent in [false, true] {
        // 3 requests of 11, 11 and 10 pages; the last page is short.
        let (at, len) = (8 * 512, 128 * 1024 - 512);
        let (r, shown, w, mut fe, fb, _) =
            read_with_against(persistent, at, len, 3, |_| Answer::Fill);
        assert_eq!(r, Ok(()));
        assert_eq!(shown.len(), 32);
        let mut next = 0;
        for (pos, b) in &shown {
            assert_eq!(*pos, next, "pages shown out of order");
            let want: Vec<u8> = (0..b.len() as u64)
                .map(|k| pattern(at + *pos as u64 + k))
                .collect();
            assert!(*b == want, "page at {pos} has the wrong bytes");
            next += b.len();
        }
        assert_eq!(next, len);
        {
            // Nothing leaked: the disk is fine and quiet.
            let disk = fe.disk().unwrap();
            assert!(!disk.is_broken());
            assert_eq!(disk.in_flight(), 0);
            if !persistent {
                // Only the ring is still granted.
                assert_eq!(disk.grant_stats().live, 1);
            }
        }
        drop(fb);
        fe.release();
        assert_guest_grants_all_back(&w);
    }
}

/// A request of a `read_with` that fails: the call returns the error and
/// no page is shown after the failure arrives, even pages of requests
/// answered earlier and held back for order; the pages of those go back to
/// the pool (a later call has them again) and the disk is not broken.
#[test]
fn read_with_shows_nothing_after_a_failed_request() {
    for persistent in [false, true] {
        for failed in [0, 1] {
            let len = 3 * 11 * 4096;
            let (r, shown, w, mut fe, fb, _) = read_with_against(persistent, 0, len, 3, |i| {
                if i == failed {
                    Answer::Fail
                } else {
                    Answer::Fill
                }
            });
            assert_eq!(r, Err(BlkError::Io(xenshare_abi::blkif::BLKIF_RSP_ERROR)));
            // Answers come last first, so the failure arrives before the
            // first request's answer: from then on nothing is shown, not
            // even the pages before the failed request.
            assert!(
                shown.is_empty(),
                "persistent {persistent}, failed {failed}: shown {} pages",
                shown.len()
            );
            {
                let disk = fe.disk().unwrap();
                assert!(!disk.is_broken());
                assert_eq!(disk.in_flight(), 0);
            }
            if persistent {
                // Every pool page is free again: a second call of the same
                // size is served from the pool without growing it.
                let pool = fe.disk().unwrap().pool_pages();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::scope(|s| {
                    let back = s.spawn(|| answer_reversed(&w, &fb, 3, 3, |_| Answer::Fill));
                    let mut disk = fe.disk().unwrap();
                    let r = disk.read_with(0, len, |pos, _| tx.send(pos).unwrap());
                    assert_eq!(r, Ok(()));
                    assert_eq!(disk.pool_pages(), pool, "pool pages leaked");
                    back.join().unwrap();
                });
                assert_eq!(rx.try_iter().count(), 33);
            }
            drop(fb);
            fe.release();
            assert_guest_grants_all_back(&w);
        }
    }
}

/// The XSA-396 pattern against `read_with` (per-request grants): a back end
/// that answers but keeps a page mapped. The disk breaks, the page goes to
/// quarantine, and the request's data is never shown — neither that of the
/// request it kept nor anything after it.
#[test]
fn read_with_never_shows_a_request_whose_page_the_back_end_kept() {
    let len = 2 * 11 * 4096;
    let (r, shown, w, mut fe, fb, kept) = read_with_against(false, 0, len, 2, |i| {
        if i == 0 {
            Answer::FillAndKeep
        } else {
            Answer::Fill
        }
    });
    assert_eq!(r, Err(BlkError::GrantStillMapped(1)));
    assert!(shown.is_empty(), "shown {} pages", shown.len());
    assert_eq!(kept.len(), 1);
    assert!(w.guest.exporter().quarantined() >= 1);
    drop(kept);
    drop(fb);
    fe.release();
    w.guest.exporter().reclaim(usize::MAX);
    assert_guest_grants_all_back(&w);
}

/// Submits reads of `lens` pages each (at consecutive offsets from 0)
/// against a hand-made back end that answers them with `answer`, last
/// first, and takes every completion with `wait_all_with` until all are
/// in or the disk fails. Returns the first error (if any), the
/// completions, every (tag, position, bytes) shown, in order, the offset
/// of each tag, and the rest of the set-up.
#[allow(clippy::type_complexity)]
fn wait_all_with_against(
    persistent: bool,
    lens: &[usize],
    answer: impl Fn(usize) -> Answer + Send,
) -> (
    Option<BlkError>,
    Vec<xenshare::blk::Completion>,
    Vec<(xenshare::blk::Tag, usize, Vec<u8>)>,
    std::collections::HashMap<xenshare::blk::Tag, u64>,
    BlkWorld,
    SimFront,
    FakeBack,
    Vec<Kept<xenshare::mem::ReadWrite>>,
) {
    let w = world();
    let (mut fe, fb) = connect_maybe_persistent(&w, persistent);
    let (mut shown, mut done, mut at) = (Vec::new(), Vec::new(), std::collections::HashMap::new());
    let n = lens.len();
    let (err, kept) = std::thread::scope(|s| {
        let back = s.spawn(|| answer_reversed(&w, &fb, 0, n, answer));
        let mut disk = fe.disk().unwrap();
        assert_eq!(disk.info().persistent, persistent);
        let mut off = 0u64;
        disk.plug();
        for &pages in lens {
            at.insert(disk.submit_read(off, pages * 4096).unwrap(), off);
            off += pages as u64 * 4096;
        }
        disk.unplug().unwrap();
        let mut err = None;
        while done.len() < n {
            let r = disk.wait_all_with(&mut done, |tag, pos, page| {
                let mut b = vec![0u8; page.len()];
                page.read(0, &mut b).unwrap();
                shown.push((tag, pos, b));
            });
            if let Err(e) = r {
                err = Some(e);
                break;
            }
        }
        (err, back.join().unwrap())
    });
    (err, done, shown, at, w, fe, fb, kept)
}

/// Answers that come last first, with persistent grants and without: each
/// read's pages are shown once, in order within the read, with its own
/// tag and the bytes of its own range, before its completion (which
/// carries no data); pool pages go back and every grant is revoked.
#[test]
fn wait_all_with_shows_each_read_under_its_own_tag_when_answers_come_last_first() {
    for persistent in [false, true] {
        let lens = [3, 11, 1, 5];
        let (err, done, shown, at, w, mut fe, fb, _) =
            wait_all_with_against(persistent, &lens, |_| Answer::Fill);
        assert_eq!(err, None);
        assert_eq!(done.len(), lens.len());
        let mut pages_seen = 0;
        for c in &done {
            assert_eq!(c.result, Ok(()));
            assert!(c.data.is_empty());
            let base = at[&c.tag];
            let mine: Vec<_> = shown.iter().filter(|(t, _, _)| *t == c.tag).collect();
            assert!(!mine.is_empty(), "{:?} not shown", c.tag);
            for (k, (_, pos, b)) in mine.iter().enumerate() {
                assert_eq!(*pos, k * 4096, "{:?}: pages out of order", c.tag);
                let want: Vec<u8> = (0..4096u64)
                    .map(|x| pattern(base + *pos as u64 + x))
                    .collect();
                assert!(*b == want, "{:?}: page {pos} has the wrong bytes", c.tag);
            }
            pages_seen += mine.len();
        }
        assert_eq!(pages_seen, lens.iter().sum::<usize>());
        {
            let disk = fe.disk().unwrap();
            assert!(!disk.is_broken());
            assert_eq!(disk.in_flight(), 0);
            if persistent {
                assert_eq!(disk.pool_pages(), lens.iter().sum::<usize>());
            } else {
                assert_eq!(disk.grant_stats().live, 1, "only the ring is granted");
            }
        }
        drop(fb);
        fe.release();
        assert_guest_grants_all_back(&w);
    }
}

/// A failed read shows nothing (its completion carries the error) while
/// the reads around it are shown; the disk is not broken and the failed
/// read's pool pages are free again (the pool does not grow on reuse).
#[test]
fn wait_all_with_shows_nothing_of_a_failed_read() {
    for persistent in [false, true] {
        let lens = [2, 2, 2];
        let (err, done, shown, _, w, mut fe, fb, _) =
            wait_all_with_against(persistent, &lens, |i| {
                if i == 1 {
                    Answer::Fail
                } else {
                    Answer::Fill
                }
            });
        assert_eq!(err, None);
        let failed: Vec<_> = done.iter().filter(|c| c.result.is_err()).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failed[0].result,
            Err(BlkError::Io(xenshare_abi::blkif::BLKIF_RSP_ERROR))
        );
        assert!(failed[0].data.is_empty());
        assert!(
            shown.iter().all(|(t, _, _)| *t != failed[0].tag),
            "a failed read was shown"
        );
        assert_eq!(shown.len(), 4, "the two good reads, two pages each");
        if persistent {
            let pool = fe.disk().unwrap().pool_pages();
            assert_eq!(pool, 6);
            std::thread::scope(|s| {
                let back = s.spawn(|| answer_reversed(&w, &fb, 3, 3, |_| Answer::Fill));
                let mut disk = fe.disk().unwrap();
                let mut done = Vec::new();
                for i in 0..3 {
                    disk.submit_read(i * 8192, 8192).unwrap();
                }
                while done.len() < 3 {
                    disk.wait_all_with(&mut done, |_, _, _| {}).unwrap();
                }
                assert!(done.iter().all(|c| c.result.is_ok()));
                assert_eq!(disk.pool_pages(), pool, "pool pages leaked");
                back.join().unwrap();
            });
        }
        assert!(!fe.disk().unwrap().is_broken());
        drop(fb);
        fe.release();
        assert_guest_grants_all_back(&w);
    }
}

/// The XSA-396 pattern against `wait_all_with` (per-request grants): the
/// back end answers a read but keeps its first page mapped. The disk
/// breaks with `GrantStillMapped`, the page goes to quarantine, and that
/// read's data is never shown.
#[test]
fn wait_all_with_never_shows_a_read_whose_page_the_back_end_kept() {
    let lens = [2, 2, 2];
    let (err, done, shown, at, w, mut fe, fb, kept) = wait_all_with_against(false, &lens, |i| {
        if i == 0 {
            Answer::FillAndKeep
        } else {
            Answer::Fill
        }
    });
    assert_eq!(err, Some(BlkError::GrantStillMapped(1)));
    // Requests are answered last first: the kept one (the first
    // submitted, at offset 0) comes last, and nothing of it is shown.
    let first = *at.iter().find(|(_, &off)| off == 0).unwrap().0;
    assert!(done.iter().all(|c| c.tag != first), "{done:?}");
    assert!(shown.iter().all(|(t, _, _)| *t != first), "kept page shown");
    assert_eq!(kept.len(), 1);
    assert!(w.guest.exporter().quarantined() >= 1);
    drop(kept);
    drop(fb);
    fe.release();
    w.guest.exporter().reclaim(usize::MAX);
    assert_guest_grants_all_back(&w);
}
