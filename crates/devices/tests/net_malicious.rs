//! Malicious peers against the real netfront and netback.
//!
//! Back ends (played by dom0 with the raw ring and grant APIs) that keep a
//! grant after responding, repeat or invent response ids, overflow the
//! producer index, answer rx with data outside the page or with flags never
//! negotiated, send bogus tx statuses, or flood events. Front ends (played
//! by the guest) that point at grant refs they never granted, send tx chains
//! that are too long or whose sizes do not add up or leave the page, and
//! overflow the request producer. Each ends in a typed error and a broken
//! device (or, for a bad grant, an error response), with no panic, no hang
//! and no page reuse.

use std::thread;
use std::time::{Duration, Instant};

use xenshare::error::DeviceError;
use xenshare::net::{
    NetError, NetfrontConfig, NetifRxRequest, NetifRxResponse, NetifTxResponse, MAX_SLOTS,
};
use xenshare::ring::RingError;
use xenshare::{Access, GrantRef};
use xenshare_abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NETTXF_MORE_DATA,
};
use xenshare_sim::{DomainConfig, RevocationModel};
use xenshare_testkit::adversary::{Flooder, Kept, RawIndices};
use xenshare_testkit::grant_page;
use xenshare_testkit::net::{
    data_page, evil_back, evil_front, expect_backend_error, frame, tx_req, tx_response, world,
    world_with, EvilBack, Front, RxBack, TxBack, World, T,
};

// ---------------------------------------------------------------- back ends

/// The front end's reaction to whatever the evil back end did: it must
/// surface as an error quickly (no hang) and leave the device broken.
fn expect_broken(nf: &mut Front) -> NetError {
    let start = Instant::now();
    let e = loop {
        match nf.recv_timeout(Duration::from_millis(200)) {
            Err(e) => break e,
            Ok(_) if start.elapsed() > T => panic!("front end never noticed the violation"),
            Ok(_) => {}
        }
    };
    assert!(nf.is_broken(), "{e}");
    assert!(!nf.carrier());
    assert!(matches!(nf.send(&frame(100, 0)), Err(NetError::Broken(_))));
    assert!(matches!(nf.recv(), Err(NetError::Broken(_))));
    e
}

/// On a platform that cannot see "busy" (Linux gntalloc: the kernel defers
/// the free), netfront cannot tell that the back end kept a tx page. It must
/// still never reuse that page: its pool only takes memory that came back
/// from a revocation, and such a platform hands none back.
#[test]
fn backend_keeping_a_tx_grant_on_a_deferring_platform_never_sees_reused_memory() {
    let w = world_with(DomainConfig {
        mem_pages: 4096,
        revocation: RevocationModel::KernelDefers,
        ..Default::default()
    });
    let (eb, mut nf) = evil_back(&w);
    let mut tx = eb.tx_ring();
    let first = frame(300, 7);
    nf.send(&first).unwrap();
    let req = tx.next_request().unwrap().expect("request published");
    let kept = Kept::ro(&w.dom0, w.guest.id(), GrantRef(req.gref));
    let first_at = usize::from(req.offset);
    let answer = |tx: &mut TxBack<'_>, id| {
        eb.answer(
            tx,
            &[NetifTxResponse {
                id,
                status: NETIF_RSP_OKAY,
            }],
        );
    };
    answer(&mut tx, req.id);
    // Netfront reaps the response; the revocation "succeeds" (deferred).
    let deadline = Instant::now() + T;
    while w.guest.deferred_revocations() == 0 {
        assert!(Instant::now() < deadline, "the tx page was never revoked");
        let _ = nf.recv_timeout(Duration::from_millis(20));
    }
    assert!(
        !nf.is_broken(),
        "a deferring platform cannot see the kept page"
    );
    assert!(w.guest.exporter().stats().retired >= 1);
    // 64 more frames of a secret, each through a fresh (or pooled) page the
    // back end maps, reads and lets go of properly.
    let secret = vec![0x5Eu8; 1000];
    for _ in 0..64 {
        nf.send(&secret).unwrap();
        let req = loop {
            if let Some(r) = tx.next_request().unwrap() {
                break r;
            }
            assert!(Instant::now() < deadline + T, "tx request never came");
            thread::yield_now();
        };
        let m = Kept::ro(&w.dom0, w.guest.id(), GrantRef(req.gref));
        let mut got = vec![0u8; secret.len()];
        m.mem().read(usize::from(req.offset), &mut got).unwrap();
        assert_eq!(got, secret);
        drop(m);
        answer(&mut tx, req.id);
        let _ = nf.recv_timeout(Duration::from_millis(1));
        // The page the back end kept still shows only what it was given.
        let mut seen = vec![0u8; first.len()];
        kept.mem().read(first_at, &mut seen).unwrap();
        assert_eq!(seen, first, "the kept page was reused for a later frame");
    }
    assert_eq!(w.guest.deferred_revocations(), 1);
    // Once the back end lets go, the emulated kernel frees the page.
    drop(kept);
    nf.send(&secret).unwrap();
    let req = tx.next_request().unwrap().expect("request published");
    answer(&mut tx, req.id);
    while w.guest.deferred_revocations() != 0 {
        assert!(
            Instant::now() < deadline + 2 * T,
            "the deferred page was never freed"
        );
        let _ = nf.recv_timeout(Duration::from_millis(20));
    }
}

#[test]
fn backend_keeping_a_tx_grant_breaks_the_frontend_and_the_page_is_never_reused() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut tx = eb.tx_ring();
    let secret = frame(300, 7);
    nf.send(&secret).unwrap();
    let req = tx.next_request().unwrap().expect("request published");
    // Map the data page, keep it, and claim to be done.
    let kept = Kept::ro(&w.dom0, w.guest.id(), GrantRef(req.gref));
    eb.answer(
        &mut tx,
        &[NetifTxResponse {
            id: req.id,
            status: NETIF_RSP_OKAY,
        }],
    );
    let e = expect_broken(&mut nf);
    assert_eq!(
        e,
        NetError::GrantStillInUse {
            gref: GrantRef(req.gref)
        }
    );
    assert_eq!(nf.stats().quarantined, 1);
    assert_eq!(w.guest.exporter().stats().quarantined, 1);
    assert!(w.guest.grant_busy(GrantRef(req.gref)));
    // The guest keeps using memory; the kept page must not be among it.
    let mut other = Vec::new();
    for _ in 0..200 {
        let s = grant_page(&w, Access::ReadWrite);
        s.mem().fill(0, 4096, 0x5A).unwrap();
        other.push(s);
    }
    let mut seen = vec![0u8; secret.len()];
    kept.mem().read(0, &mut seen).unwrap();
    assert_eq!(seen, secret, "the quarantined page was reused");
    // Releasing revokes every rx page; the two ring pages, still mapped by
    // the evil back end, join the kept data page in quarantine.
    let report = nf.release();
    assert_eq!(report.quarantined, 2);
    assert!(report.revoked >= NetfrontConfig::default().rx_buffers);
    assert_eq!(w.guest.exporter().stats().quarantined, 3);
    assert_eq!(
        w.guest.exporter().stats().live,
        200,
        "only the test's own shares"
    );
    drop(eb);
    drop(kept);
    drop(other);
    w.guest.exporter().reclaim(usize::MAX);
    assert_eq!(w.guest.exporter().stats().quarantined, 0);
}

/// The evil back end maps the first posted rx page, keeps it (after
/// writing `data` into it), and answers it as filled; netfront has not
/// looked yet.
fn answer_an_rx_page_and_keep_it(w: &World, data: &[u8]) -> (EvilBack, Front, Kept, GrantRef) {
    let (eb, nf) = evil_back(w);
    let mut rx = eb.rx_ring();
    let req = rx.next_request().unwrap().expect("rx pages posted");
    let gref = GrantRef(req.gref);
    let kept = Kept::rw(&w.dom0, w.guest.id(), gref);
    kept.mem().write(0, data).unwrap();
    eb.answer(
        &mut rx,
        &[NetifRxResponse {
            id: req.id,
            offset: 0,
            flags: 0,
            status: 60,
        }],
    );
    (eb, nf, kept, gref)
}

/// [`answer_an_rx_page_and_keep_it`]: netfront must break with
/// `GrantStillInUse` for that page.
fn backend_keeps_an_rx_page(w: &World, data: &[u8]) -> (EvilBack, Front, Kept, GrantRef) {
    let (eb, mut nf, kept, gref) = answer_an_rx_page_and_keep_it(w, data);
    let e = expect_broken(&mut nf);
    assert_eq!(e, NetError::GrantStillInUse { gref });
    (eb, nf, kept, gref)
}

#[test]
fn backend_keeping_an_rx_grant_breaks_the_frontend() {
    let w = world();
    let (_eb, nf, kept, _) = backend_keeps_an_rx_page(&w, &frame(60, 1));
    assert_eq!(
        nf.stats().rx_frames,
        0,
        "nothing read from a page the back end still holds"
    );
    assert_eq!(w.guest.exporter().stats().quarantined, 1);
    // The back end scribbling on its kept page reaches no other guest memory.
    kept.mem().fill(0, 4096, 0xEE).unwrap();
    let s = grant_page(&w, Access::ReadWrite);
    let mut b = [0u8; 4096];
    s.mem().read(0, &mut b).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "fresh pages are zeroed and not the quarantined one"
    );
}

/// An rx page the back end keeps mapped stays in quarantine — reclaim
/// cannot take it back — until the back end lets go; then it returns.
#[test]
fn kept_rx_page_leaves_quarantine_only_once_the_backend_lets_go() {
    let w = world();
    let (eb, nf, mut kept, gref) = backend_keeps_an_rx_page(&w, &[]);
    nf.release();
    drop(eb); // the ring pages are let go of; the data page is not
    let exporter = w.guest.exporter();
    exporter.reclaim(usize::MAX);
    assert_eq!(exporter.stats().quarantined, 1, "the kept page stays out");
    assert!(w.guest.grant_busy(gref));
    kept.release();
    exporter.reclaim(usize::MAX);
    assert_eq!(exporter.stats().quarantined, 0);
    assert!(!w.guest.grant_busy(gref));
}

#[test]
fn duplicate_tx_response_id_breaks_the_frontend() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut tx = eb.tx_ring();
    nf.send(&frame(100, 1)).unwrap();
    nf.send(&frame(100, 2)).unwrap();
    let a = tx.next_request().unwrap().unwrap();
    let _b = tx.next_request().unwrap().unwrap();
    let dup = NetifTxResponse {
        id: a.id,
        status: NETIF_RSP_OKAY,
    };
    eb.answer(&mut tx, &[dup, dup]);
    let e = expect_broken(&mut nf);
    assert_eq!(
        e,
        NetError::Core(DeviceError::Ring(RingError::NotOutstanding {
            id: a.id.into()
        }))
    );
}

/// The evil back end answers the first rx buffer the front end posted
/// with `rsp(request id)`; the front end must break. Returns its error.
/// The answer of the two "data outside the page" tests (offset 4000 +
/// 200 bytes) was refused as such, and no frame was taken.
fn assert_refused_offset_4000(e: &NetError, nf: &Front) {
    assert!(
        matches!(
            e,
            NetError::BadRxResponse {
                offset: 4000,
                status: 200,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(nf.stats().rx_frames, 0);
}

fn rx_answer_breaks_the_frontend(rsp: impl FnOnce(u16) -> NetifRxResponse) -> (NetError, Front) {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut rx = eb.rx_ring();
    let req = rx.next_request().unwrap().expect("rx buffers posted");
    eb.answer(&mut rx, &[rsp(req.id)]);
    (expect_broken(&mut nf), nf)
}

#[test]
fn out_of_range_rx_response_id_breaks_the_frontend() {
    let (e, _) = rx_answer_breaks_the_frontend(|_| NetifRxResponse {
        id: 999,
        offset: 0,
        flags: 0,
        status: 60,
    });
    assert_eq!(
        e,
        NetError::Core(DeviceError::Ring(RingError::BadId {
            id: 999,
            limit: 256
        }))
    );
}

#[test]
fn overflowing_response_producer_breaks_the_frontend() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    nf.send(&frame(100, 1)).unwrap();
    // rsp_prod far beyond anything requested.
    RawIndices::new(eb.tx.mem()).set_rsp_prod(1000);
    eb.chan.notify().unwrap();
    let e = expect_broken(&mut nf);
    assert!(
        matches!(
            e,
            NetError::Core(DeviceError::Ring(RingError::ProducerOverflow {
                prod: 1000,
                ..
            }))
        ),
        "{e}"
    );
}

#[test]
fn rx_data_outside_the_page_breaks_the_frontend() {
    let (e, nf) = rx_answer_breaks_the_frontend(|id| NetifRxResponse {
        id,
        offset: 4000,
        flags: 0,
        status: 200,
    });
    assert_refused_offset_4000(&e, &nf);
}

#[test]
fn rx_flags_never_negotiated_break_the_frontend() {
    let (e, _) = rx_answer_breaks_the_frontend(|id| NetifRxResponse {
        id,
        offset: 0,
        flags: NETRXF_EXTRA_INFO,
        status: 60,
    });
    assert!(matches!(e, NetError::BadRxResponse { .. }), "{e}");
}

#[test]
fn invalid_tx_status_breaks_the_frontend() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut tx = eb.tx_ring();
    nf.send(&frame(100, 1)).unwrap();
    let r = tx.next_request().unwrap().unwrap();
    eb.answer(
        &mut tx,
        &[NetifTxResponse {
            id: r.id,
            status: 77,
        }],
    );
    let e = expect_broken(&mut nf);
    assert_eq!(
        e,
        NetError::BadTxStatus {
            id: r.id,
            status: 77
        }
    );
}

#[test]
fn event_flood_from_backend_neither_hangs_nor_breaks_the_frontend() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let flood = Flooder::spawn(eb.chan);
    let start = Instant::now();
    let got = nf.recv_timeout(Duration::from_millis(500)).unwrap();
    let took = start.elapsed();
    let (n, _chan) = flood.stop();
    assert!(got.is_none());
    assert!(
        took < Duration::from_secs(3),
        "recv_timeout overran under a flood: {took:?}"
    );
    assert!(n > 100, "the flood happened ({n} events)");
    assert!(!nf.is_broken());
    // Still a working front end: it can queue a frame.
    nf.send(&frame(100, 1)).unwrap();
}

// --------------------------------------------------------------- front ends

#[test]
fn bogus_grant_refs_get_error_responses_and_the_backend_carries_on() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let mut tx = ef.tx_ring();
    // A ref never granted, then a real frame.
    tx.push_request(&tx_req(GrantRef(1999), 0, 0, 1, 100))
        .unwrap();
    let good = frame(120, 3);
    let page = data_page(&w, &good);
    ef.send(&mut tx, &[tx_req(page.refs()[0], 0, 0, 2, 120)]);
    let r1 = tx_response(&mut tx, &ef.chan);
    let r2 = tx_response(&mut tx, &ef.chan);
    assert_eq!((r1.id, r1.status), (1, NETIF_RSP_ERROR));
    assert_eq!((r2.id, r2.status), (2, NETIF_RSP_OKAY));
    assert_eq!(host.recv_timeout(T).unwrap(), good);
    assert!(
        host.recv_timeout(Duration::from_millis(100)).is_none(),
        "only the good frame"
    );
    // An rx page that was never granted: the frame is answered with an error.
    let mut rx = ef.rx_ring();
    ef.send(
        &mut rx,
        &[NetifRxRequest {
            id: 5,
            pad: 0,
            gref: 1998,
        }],
    );
    assert!(host.send(&frame(60, 1)));
    let r = ef.response(&mut rx);
    assert_eq!((r.id, r.status), (5, NETIF_RSP_ERROR));
    let exit = bt.stop().unwrap();
    assert_eq!(exit.stats.tx_errors, 1);
    assert_eq!(exit.stats.tx_frames, 1);
    assert_eq!(exit.stats.rx_dropped, 1);
}

#[test]
fn tx_chain_longer_than_the_slot_limit_breaks_the_backend() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let mut tx = ef.tx_ring();
    let page = data_page(&w, &frame(4096, 1));
    let chain: Vec<_> = (0..19u16)
        .map(|i| tx_req(page.refs()[0], 0, NETTXF_MORE_DATA, i, 100))
        .collect();
    ef.send(&mut tx, &chain);
    let e = expect_backend_error(bt);
    assert!(matches!(e, NetError::BadTxRequest { .. }), "{e}");
    // The consumed slots were answered, so the guest gets its pages back.
    let r = tx_response(&mut tx, &ef.chan);
    assert_eq!(r.status, NETIF_RSP_ERROR);
    assert!(host.try_recv().is_none());
    assert_eq!(w.dom0.mapped_count(), 0, "the back end unmapped everything");
}

#[test]
fn tx_fragment_sizes_larger_than_the_frame_break_the_backend() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let mut tx = ef.tx_ring();
    let page = data_page(&w, &frame(4096, 1));
    ef.send(
        &mut tx,
        &[
            tx_req(page.refs()[0], 0, NETTXF_MORE_DATA, 0, 100),
            tx_req(page.refs()[0], 0, 0, 1, 200),
        ],
    );
    let e = expect_backend_error(bt);
    assert!(matches!(e, NetError::BadTxRequest { id: 0, .. }), "{e}");
    assert!(host.try_recv().is_none());
}

#[test]
fn tx_data_outside_the_page_breaks_the_backend() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let mut tx = ef.tx_ring();
    let page = data_page(&w, &frame(4096, 1));
    ef.send(&mut tx, &[tx_req(page.refs()[0], 4000, 0, 0, 200)]);
    let e = expect_backend_error(bt);
    assert!(matches!(e, NetError::BadTxRequest { .. }), "{e}");
    assert!(host.try_recv().is_none());
}

#[test]
fn overflowing_request_producer_breaks_the_backend() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    // req_prod a thousand slots ahead.
    RawIndices::new(ef.tx.mem()).set_req_prod(1000);
    ef.chan.notify().unwrap();
    let e = expect_backend_error(bt);
    assert!(
        matches!(
            e,
            NetError::Core(DeviceError::Ring(RingError::ProducerOverflow {
                prod: 1000,
                ..
            }))
        ),
        "{e}"
    );
    assert!(host.try_recv().is_none());
}

#[test]
fn event_flood_from_frontend_does_not_stop_the_backend() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let n = Flooder::burst(&ef.chan, Duration::from_millis(300));
    // The back end still serves a real frame promptly.
    let mut tx = ef.tx_ring();
    let good = frame(90, 4);
    let page = data_page(&w, &good);
    ef.send(&mut tx, &[tx_req(page.refs()[0], 0, 0, 9, 90)]);
    assert_eq!(
        host.recv_timeout(T).expect("back end starved by the flood"),
        good
    );
    assert_eq!(tx_response(&mut tx, &ef.chan).status, NETIF_RSP_OKAY);
    assert!(n > 100);
    let exit = bt.stop().unwrap();
    assert_eq!(exit.stats.tx_frames, 1);
}

// ------------------------------------------- frames lent in place (recv_with)

/// The evil back end takes every posted rx request and answers the first
/// `rsps(requests).len()` of them as `rsps` says, writing `data` into the
/// first page beforehand (through a mapping it lets go of again).
fn answer_rx_chain(
    eb: &EvilBack,
    rx: &mut RxBack<'_>,
    w: &World,
    data: &[u8],
    rsps: impl FnOnce(&[NetifRxRequest]) -> Vec<NetifRxResponse>,
) -> Vec<NetifRxRequest> {
    let mut reqs = Vec::new();
    while let Some(r) = rx.next_request().unwrap() {
        reqs.push(r);
    }
    assert!(!reqs.is_empty(), "rx pages posted");
    let mut kept = Kept::rw(&w.dom0, w.guest.id(), GrantRef(reqs[0].gref));
    kept.mem().write(0, data).unwrap();
    kept.release();
    let answers = rsps(&reqs);
    eb.answer(rx, &answers);
    reqs
}

/// Like `expect_broken`, receiving in place: the closure must never run.
fn expect_broken_in_place(nf: &mut Front) -> NetError {
    let start = Instant::now();
    let mut lent = 0;
    let e = loop {
        match nf.recv_with(Duration::from_millis(200), |_| lent += 1) {
            Err(e) => break e,
            Ok(_) if start.elapsed() > T => panic!("front end never noticed the violation"),
            Ok(_) => {}
        }
    };
    assert_eq!(lent, 0, "a frame was lent from a bad chain");
    assert!(nf.is_broken(), "{e}");
    assert!(matches!(nf.try_recv_with(|_| ()), Err(NetError::Broken(_))));
    e
}

/// A page is posted to the back end again only once the closure that was
/// lent it has returned. The back end answers 64 one-page frames, a quarter
/// of the posted pages, so by the 64th frame a re-post is due: still, while
/// the closure looks at that frame the ring holds no new request. The next
/// call (finding nothing to receive) posts the pages again, the same grants
/// (persistent), without a new one.
#[test]
fn recv_with_posts_a_lent_page_again_only_after_the_closure_returns() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let data = frame(300, 7);
    let mut rx = eb.rx_ring();
    let reqs = answer_rx_chain(&eb, &mut rx, &w, &data, |reqs| {
        reqs[..64]
            .iter()
            .map(|r| NetifRxResponse {
                id: r.id,
                offset: 0,
                flags: 0,
                status: 300,
            })
            .collect()
    });
    let granted = w.guest.exporter().stats().granted;
    let first = nf.recv_with(T, |f| {
        assert!(f.in_place());
        assert_eq!(f.fragments().count(), 1);
        let mut v = Vec::new();
        f.copy_to(&mut v);
        v
    });
    assert_eq!(first.unwrap().as_deref(), Some(&data[..]));
    for i in 1..64 {
        let len = nf.recv_with(T, |f| {
            assert!(
                rx.next_request().unwrap().is_none(),
                "a page was posted while the closure still looks at frame {i}"
            );
            f.len()
        });
        assert_eq!(len.unwrap(), Some(300));
    }
    assert!(nf.try_recv_with(|_| ()).unwrap().is_none());
    let mut again = Vec::new();
    while let Some(r) = rx.next_request().unwrap() {
        again.push(r.gref);
    }
    assert_eq!(again.len(), 64, "every lent page is posted again");
    for r in &reqs[..64] {
        assert!(again.contains(&r.gref), "the same grants, posted again");
    }
    assert_eq!(w.guest.exporter().stats().granted, granted);
    assert!(!nf.is_broken());
}

#[test]
fn recv_with_refuses_rx_data_outside_the_page() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    answer_rx_chain(&eb, &mut eb.rx_ring(), &w, &[], |reqs| {
        vec![NetifRxResponse {
            id: reqs[0].id,
            offset: 4000,
            flags: 0,
            status: 200,
        }]
    });
    let e = expect_broken_in_place(&mut nf);
    assert_refused_offset_4000(&e, &nf);
}

/// The back end answers the first `slots` rx requests as one chain of
/// `size`-byte fragments, each flagged "more data"; returns the error the
/// front end broke with, before lending anything.
fn chain_refused_in_place(
    eb: &EvilBack,
    w: &World,
    nf: &mut Front,
    slots: usize,
    size: i16,
) -> NetError {
    answer_rx_chain(eb, &mut eb.rx_ring(), w, &[], |reqs| {
        (0..slots)
            .map(|i| NetifRxResponse {
                id: reqs[i].id,
                offset: 0,
                flags: NETRXF_MORE_DATA,
                status: size,
            })
            .collect()
    });
    expect_broken_in_place(nf)
}

/// A chain of 16 full pages is 65536 bytes, one more than the largest
/// frame: refused at its 16th slot, nothing lent.
#[test]
fn recv_with_refuses_a_frame_longer_than_the_largest() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let e = chain_refused_in_place(&eb, &w, &mut nf, 16, 4096);
    assert!(
        matches!(e, NetError::BadRxResponse { why, .. } if why.contains("longer")),
        "{e}"
    );
}

/// A chain of one-byte fragments longer than XEN_NETIF_NR_SLOTS_MIN slots:
/// refused, nothing lent, and every page of it revoked on release.
#[test]
fn recv_with_refuses_a_chain_of_too_many_slots() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let e = chain_refused_in_place(&eb, &w, &mut nf, MAX_SLOTS + 1, 1);
    assert!(
        matches!(e, NetError::BadRxResponse { why, .. } if why.contains("slots")),
        "{e}"
    );
    drop(eb);
    let report = nf.release();
    assert_eq!(report.quarantined, 0);
    assert_eq!(w.guest.exporter().stats().live, 0, "every grant came back");
}

/// A back end that keeps a mapping of the rx page it answered: the frame
/// is never lent (not even copied out), the page is quarantined and the
/// device broken, as with `recv`.
#[test]
fn recv_with_never_lends_a_page_the_backend_keeps() {
    let w = world();
    let (_eb, mut nf, kept, gref) = answer_an_rx_page_and_keep_it(&w, &frame(60, 3));
    assert_eq!(
        expect_broken_in_place(&mut nf),
        NetError::GrantStillInUse { gref }
    );
    assert_eq!(nf.stats().rx_frames, 0);
    assert_eq!(w.guest.exporter().stats().quarantined, 1);
    drop(kept);
}

/// A frame whose chain has a slot answered with an error is dropped and
/// counted; the device carries on and lends the next frame.
#[test]
fn recv_with_drops_a_frame_the_backend_failed_and_carries_on() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let data = frame(100, 9);
    answer_rx_chain(&eb, &mut eb.rx_ring(), &w, &data, |reqs| {
        vec![
            NetifRxResponse {
                id: reqs[0].id,
                offset: 0,
                flags: NETRXF_MORE_DATA,
                status: 100,
            },
            NetifRxResponse {
                id: reqs[1].id,
                offset: 0,
                flags: 0,
                status: NETIF_RSP_ERROR,
            },
            NetifRxResponse {
                id: reqs[2].id,
                offset: 0,
                flags: 0,
                status: 100,
            },
        ]
    });
    let mut lent = Vec::new();
    let n = nf.recv_with(T, |f| {
        f.copy_to(&mut lent);
        f.len()
    });
    assert_eq!(n.unwrap(), Some(100));
    // The third page was never written: what it holds is not checked, only
    // that the failed frame was not the one lent.
    assert_eq!(nf.stats().rx_errors, 1);
    assert_eq!(nf.stats().rx_frames, 1);
    assert!(!nf.is_broken());
    assert!(lent.len() == 100);
}
