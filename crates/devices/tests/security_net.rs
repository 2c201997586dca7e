//! The network device against the bug classes of Xen's advisories (see
//! SECURITY.md): a tx slot changed while netback reads it (XSA-155), a
//! guest that never posts rx buffers (XSA-392), split headers, zero-length
//! and maximum-fragment tx packets (XSA-423, XSA-448), hostile XenBus keys,
//! and granted pages that carry more than their frame (XSA-403). The
//! victim keeps working — or refuses the peer with a typed error — with no
//! panic, no hang and nothing unbounded.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use xenshare::error::DeviceError;
use xenshare::net::xenbus::{BackendFeatures, FrontendKeys};
use xenshare::net::{NetError, Netfront, NetfrontConfig, NetifRxRequest, NetifTxRequest};
use xenshare::net::{NetifRxResponse, NetifTxResponse};
use xenshare::ring::BackRing;
use xenshare::store::xenbus::{read_state, wait_for_state, write_state, XenbusState};
use xenshare::{Access, GrantRef};
use xenshare_abi::netif::{NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETTXF_MORE_DATA};
use xenshare_testkit::adversary::flip_during;
use xenshare_testkit::grant_page;
use xenshare_testkit::net::{
    data_page, evil_back, evil_front, expect_backend_error, frame, tx_req, tx_response, world,
    RxFront, TxFront, World, T,
};
use zerocopy::IntoBytes;

/// The shared ring header before the first slot.
const HEADER: usize = 64;
/// A tx slot: the larger of request (12 bytes) and response (4 bytes).
const TX_SLOT: usize = core::mem::size_of::<NetifTxRequest>();

/// XSA-155 (double fetch): the guest keeps rewriting the `offset` of every
/// tx slot between 0 (valid) and 4000 (the 200-byte fragment then leaves
/// the page) while netback reads them. Netback copies a slot once and
/// checks and uses that copy: each frame it forwards is 200 bytes of the
/// page from an offset that fits (0, or a torn 160 or 3840), and a hostile
/// copy ends the back end with a typed error — never a panic, never a read
/// outside the page.
#[test]
fn netback_acts_on_one_copy_of_a_tx_slot_changing_under_it() {
    const ROUNDS: u16 = 300;
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let content = frame(4096, 9);
    let page = data_page(&w, &content);
    let g = page.refs()[0];
    let size = 32usize;
    let stop = AtomicBool::new(false);
    // The slot being flipped (none: usize::MAX) and how often it was.
    let target = AtomicUsize::new(usize::MAX);
    let flips = AtomicU64::new(0);
    let outcome = thread::scope(|sc| {
        // Rewrites bytes 4..6 (offset) of the slot in flight; the response
        // only covers bytes 0..4.
        let flipper = sc.spawn(|| {
            let mem = ef.tx.mem();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = target.load(Ordering::Acquire);
                if i == usize::MAX {
                    std::hint::spin_loop();
                    continue;
                }
                let off: u16 = if n.is_multiple_of(2) { 4000 } else { 0 };
                mem.write(HEADER + i * TX_SLOT + 4, &off.to_le_bytes())
                    .unwrap();
                n += 1;
                flips.store(n, Ordering::Release);
            }
            n
        });
        let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
        let mut answered = 0u16;
        let mut broke = false;
        for id in 0..ROUNDS {
            if bt.is_finished() {
                broke = true;
                break;
            }
            let slot = tx.req_prod_pvt() as usize % size;
            tx.push_request(&tx_req(g, 0, 0, id, 200)).unwrap();
            // Publish only once the flipper is at work on this slot.
            let before = flips.load(Ordering::Acquire);
            target.store(slot, Ordering::Release);
            while flips.load(Ordering::Acquire) < before + 2 {
                std::hint::spin_loop();
            }
            tx.push_requests().unwrap();
            ef.chan.notify().unwrap();
            // A broken back end answers the slot (ERROR) before leaving.
            let r = tx_response(&mut tx, &ef.chan);
            assert_eq!(r.id, id);
            assert!(
                r.status == NETIF_RSP_OKAY || r.status == NETIF_RSP_ERROR,
                "{r:?}"
            );
            target.store(usize::MAX, Ordering::Release);
            answered += 1;
            if r.status == NETIF_RSP_ERROR {
                broke = true;
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(flipper.join().unwrap() > 0);
        (answered, broke)
    });
    let (outcome, broke) = outcome;
    assert!(outcome > 0);
    // Every forwarded frame is 200 bytes of the page from an offset that
    // fits in it.
    let mut frames = 0;
    let mut at = [0usize; 3];
    while let Some(f) = host.try_recv() {
        frames += 1;
        for (k, o) in [0usize, 160, 3840].iter().enumerate() {
            if f[..] == content[*o..*o + 200] {
                at[k] += 1;
            }
        }
        assert_eq!(f.len(), 200);
        assert!(
            [0usize, 160, 3840]
                .iter()
                .any(|&o| f[..] == content[o..o + 200]),
            "a frame the guest never offered"
        );
    }
    eprintln!(
        "{outcome} slots answered, {frames} frames forwarded ({at:?} at offsets 0, 160, 3840)"
    );
    // Decided by what the guest saw, not by whether the back end's thread
    // has finished yet: it answers ERROR first and leaves just after.
    if broke {
        let e = expect_backend_error(bt);
        assert!(matches!(e, NetError::BadTxRequest { .. }), "{e}");
    } else {
        bt.stop().unwrap();
    }
    assert_eq!(w.dom0.mapped_count(), 0);
}

/// XSA-392: a guest that never posts an rx buffer cannot make the back
/// end hold an unbounded number of frames for it. The host's queue towards
/// the guest is bounded (4096 here), the back end takes at most one frame
/// out of it while it waits, and everything beyond is dropped and counted.
/// Meanwhile the guest's tx still flows, and once it posts buffers the
/// frames held come through in order.
#[test]
fn netback_holds_a_bounded_number_of_frames_for_a_guest_posting_no_rx_buffers() {
    const SENT: usize = 20_000;
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let mut accepted = 0usize;
    for i in 0..SENT {
        if host.send(&frame(1000, i as u8)) {
            accepted += 1;
        }
    }
    // The bound: the queue's capacity plus the one frame the back end holds.
    assert!(accepted <= 4096 + 1, "{accepted} frames held");
    assert_eq!(host.dropped_to_guest() as usize, SENT - accepted);
    // tx is not starved by the stuck rx direction.
    let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
    let good = frame(300, 1);
    let page = data_page(&w, &good);
    tx.push_request(&tx_req(page.refs()[0], 0, 0, 1, 300))
        .unwrap();
    tx.push_requests().unwrap();
    ef.chan.notify().unwrap();
    assert_eq!(host.recv_timeout(T).expect("tx starved"), good);
    assert_eq!(tx_response(&mut tx, &ef.chan).status, NETIF_RSP_OKAY);
    // Post rx buffers: the first frames held arrive, in order.
    let rx_pages: Vec<_> = (0..8).map(|_| grant_page(&w, Access::ReadWrite)).collect();
    let mut rx = RxFront::attach_at(ef.rx.mem(), 0).unwrap();
    for (i, p) in rx_pages.iter().enumerate() {
        rx.push_request(&NetifRxRequest {
            id: i as u16,
            pad: 0,
            gref: p.refs()[0].0,
        })
        .unwrap();
    }
    rx.push_requests().unwrap();
    ef.chan.notify().unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    while got.len() < rx_pages.len() {
        if let Some(r) = rx.next_response().unwrap() {
            got.push(r);
            continue;
        }
        assert!(t.elapsed() < T, "held frames never delivered: {got:?}");
        if let Some(p) = ef.chan.wait(Some(Duration::from_millis(20))).unwrap() {
            ef.chan.unmask().unwrap();
            let _ = p;
        }
    }
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.status, 1000, "{r:?}");
        let mut buf = vec![0u8; 1000];
        rx_pages[usize::from(r.id)].mem().read(0, &mut buf).unwrap();
        assert_eq!(buf, frame(1000, i as u8), "frame {i} out of order");
    }
    let exit = bt.stop().unwrap();
    assert_eq!(exit.stats.rx_frames, rx_pages.len() as u64);
}

/// XSA-423 / XSA-448 shapes on tx: a first slot shorter than the Ethernet
/// header (the header split across slots), zero-length fragments (in the
/// middle and at the end of a chain of the maximum number of slots), a
/// zero-length and a runt frame, and a chain of exactly the maximum number
/// of slots. Each is either forwarded whole and byte-exact or answered
/// with an error; the back end keeps serving.
#[test]
fn netback_handles_split_headers_zero_length_and_maximum_fragment_packets() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let content = frame(4096, 5);
    let page = data_page(&w, &content);
    let g = page.refs()[0];
    let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
    let mut id = 0u16;
    // Sends one chain of (offset, size) fragments, the first carrying the
    // total; returns the response status of its first slot.
    let mut send = |tx: &mut TxFront<'_>, frags: &[(u16, u16)]| -> i16 {
        let total: u16 = frags.iter().map(|f| f.1).sum();
        let first_id = id;
        for (i, &(off, size)) in frags.iter().enumerate() {
            let more = if i + 1 < frags.len() {
                NETTXF_MORE_DATA
            } else {
                0
            };
            let size = if i == 0 { total } else { size };
            tx.push_request(&tx_req(g, off, more, id, size)).unwrap();
            id += 1;
        }
        tx.push_requests().unwrap();
        ef.chan.notify().unwrap();
        let mut first = None;
        for _ in frags {
            let r = tx_response(tx, &ef.chan);
            if r.id == first_id {
                first = Some(r.status);
            }
        }
        first.expect("the first slot was answered")
    };
    let expect = |frags: &[(u16, u16)]| -> Vec<u8> {
        frags
            .iter()
            .flat_map(|&(o, s)| content[usize::from(o)..usize::from(o + s)].to_vec())
            .collect()
    };
    // Header split: 10 bytes, then the rest of a 100-byte frame.
    let split = [(0u16, 10u16), (10, 90)];
    assert_eq!(send(&mut tx, &split), NETIF_RSP_OKAY);
    assert_eq!(host.recv_timeout(T).unwrap(), expect(&split));
    // Header split in one-byte fragments, the most slots allowed.
    let bytes: Vec<(u16, u16)> = (0..17u16).map(|i| (i, 1)).chain([(17, 83)]).collect();
    assert_eq!(bytes.len(), xenshare::net::MAX_SLOTS);
    assert_eq!(send(&mut tx, &bytes), NETIF_RSP_OKAY);
    assert_eq!(host.recv_timeout(T).unwrap(), expect(&bytes));
    // Zero-length fragments in the middle and at the end of a full chain.
    let zeros: Vec<(u16, u16)> = [(0u16, 60u16), (100, 0)]
        .into_iter()
        .chain((0..15u16).map(|i| (200 + i * 100, 40)))
        .chain([(4000, 0)])
        .collect();
    assert_eq!(zeros.len(), xenshare::net::MAX_SLOTS);
    assert_eq!(send(&mut tx, &zeros), NETIF_RSP_OKAY);
    assert_eq!(host.recv_timeout(T).unwrap(), expect(&zeros));
    // A zero-length frame and a runt: errors, nothing forwarded.
    assert_eq!(send(&mut tx, &[(0, 0)]), NETIF_RSP_ERROR);
    assert_eq!(send(&mut tx, &[(0, 13)]), NETIF_RSP_ERROR);
    // Still serving.
    assert_eq!(send(&mut tx, &[(0, 64)]), NETIF_RSP_OKAY);
    assert_eq!(host.recv_timeout(T).unwrap(), expect(&[(0, 64)]));
    assert!(host.try_recv().is_none());
    let exit = bt.stop().unwrap();
    assert_eq!(exit.stats.tx_frames, 4);
    assert_eq!(exit.stats.tx_errors, 2);
}

/// A hand-made front end that publishes its keys with `over` replacing
/// (or adding to) the honest ones, then goes Connected.
fn publish_hostile_keys(w: &World, over: &[(&str, &str)]) -> xenshare_testkit::net::EvilFront {
    let paths = xenshare::store::xenbus::DevicePaths {
        front: xenshare::store::xenbus::frontend_path(w.guest.id(), "vif", 0),
        back: xenshare::store::xenbus::backend_path(w.dom0.id(), "vif", w.guest.id(), 0),
    };
    xenshare_testkit::net::evil_front_keys(w, &paths, over)
}

/// Hostile values for the keys netback reads: out-of-range, signed, hex,
/// spaced and non-numeric ring refs, ports and flags. Each is refused with
/// a typed `BadKey` before anything is mapped, and the back end leaves.
/// Multi-queue keys (`multi-queue-num-queues` 0 or huge) are not offered
/// by this back end and so are ignored: it serves the single queue.
#[test]
fn netback_refuses_hostile_xenbus_keys() {
    let cases: &[&[(&str, &str)]] = &[
        &[("tx-ring-ref", "-1")],
        &[("tx-ring-ref", "+8")],
        &[("rx-ring-ref", "4294967296")],
        &[("rx-ring-ref", "0x10")],
        &[("event-channel", "1 2")],
        &[("event-channel", "99999999999999999999999")],
        &[("event-channel", "")],
        &[("request-rx-copy", "yes")],
        &[("feature-sg", "-1")],
    ];
    for over in cases {
        let w = world();
        w.create_vif(0);
        let (bt, _host) = w.vif_backend(0);
        let _pages = publish_hostile_keys(&w, over);
        let e = expect_backend_error(bt);
        assert!(
            matches!(e, NetError::Core(DeviceError::BadKey { .. })),
            "{over:?}: {e}"
        );
        assert_eq!(w.dom0.mapped_count(), 0, "{over:?}");
        let mut c0 = w.xs(&w.dom0);
        let back = format!("/local/domain/0/backend/vif/{}/0", w.guest.id().0);
        assert!(
            read_state(&mut c0, &back).unwrap() >= XenbusState::Closing,
            "{over:?}"
        );
    }
    for n in ["0", "4294967295", "-1", "many"] {
        let w = world();
        w.create_vif(0);
        let (bt, host) = w.vif_backend(0);
        let pages = publish_hostile_keys(&w, &[("multi-queue-num-queues", n)]);
        let paths = format!("/local/domain/0/backend/vif/{}/0", w.guest.id().0);
        let mut c0 = w.xs(&w.dom0);
        wait_for_state(&mut c0, &paths, T, |s| s == XenbusState::Connected).unwrap();
        assert!(!bt.is_finished(), "multi-queue-num-queues={n}");
        drop((pages, host));
        bt.stop().unwrap();
    }
}

/// XSA-403: the pages netfront grants hold their frame and nothing else,
/// even after the guest's memory was full of other data: a small tx frame's
/// page is zero around the frame, and every posted rx page is all zero.
#[test]
fn netfront_grants_pages_holding_only_the_frame() {
    let w = world();
    assert_eq!(w.guest.dirty_free_memory(64, 0xEE), 64);
    let paths = w.create_vif(0);
    let mut c0 = w.xs(&w.dom0);
    BackendFeatures::OURS.publish(&mut c0, &paths.back).unwrap();
    write_state(&mut c0, &paths.back, XenbusState::InitWait).unwrap();
    let (exp, evt, mut xs) = (
        w.guest.exporter().clone(),
        w.guest.evtchn().unwrap(),
        w.xs(&w.guest),
    );
    let fe = thread::spawn(move || {
        Netfront::connect(&exp, &evt, &mut xs, 0, NetfrontConfig::default(), T)
    });
    wait_for_state(&mut c0, &paths.front, T, |s| s == XenbusState::Connected).unwrap();
    let keys = FrontendKeys::read(&mut c0, &paths.front).unwrap();
    let map = |r: GrantRef| w.dom0.importer().map_ro(w.guest.id(), &[r]).unwrap();
    let ring = |r: GrantRef| w.dom0.importer().map_rw(w.guest.id(), &[r]).unwrap();
    let (txm, rxm) = (ring(keys.tx_ring_ref), ring(keys.rx_ring_ref));
    write_state(&mut c0, &paths.back, XenbusState::Connected).unwrap();
    let mut nf = fe.join().unwrap().unwrap();
    let page = |r: GrantRef| {
        let m = map(r);
        let mut b = vec![0u8; 4096];
        m.mem().read(0, &mut b).unwrap();
        b
    };
    // Posted rx pages: all zero.
    let mut rx = BackRing::<_, NetifRxRequest, NetifRxResponse>::attach(rxm.mem()).unwrap();
    let mut posted = 0;
    while let Some(r) = rx.next_request().unwrap() {
        assert!(
            page(GrantRef(r.gref)).iter().all(|&b| b == 0),
            "a posted rx page holds old data"
        );
        posted += 1;
    }
    assert!(posted > 0);
    // A small tx frame: its page holds the frame, zeroes around it.
    let small = frame(60, 3);
    nf.send(&small).unwrap();
    let mut tx = BackRing::<_, NetifTxRequest, NetifTxResponse>::attach(txm.mem()).unwrap();
    let req = tx.next_request().unwrap().expect("a tx request");
    let p = page(GrantRef(req.gref));
    let (a, b) = (usize::from(req.offset), usize::from(req.offset) + 60);
    assert_eq!(p[a..b], small[..]);
    assert!(
        p[..a].iter().chain(&p[b..]).all(|&x| x == 0),
        "the tx page holds more than the frame"
    );
}

/// XSA-403 for pages netfront reuses: a tx page that carried a full page
/// of one frame and came back from revocation carries, when granted for a
/// later small frame, that frame and zeros, none of the earlier bytes.
#[test]
fn reused_tx_pages_hold_only_the_new_frame() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut tx = eb.tx_ring();
    let read_page = |gref: u32| {
        let m = w
            .dom0
            .importer()
            .map_ro(w.guest.id(), &[GrantRef(gref)])
            .unwrap();
        let mut b = vec![0u8; 4096];
        m.mem().read(0, &mut b).unwrap();
        b
    };
    for round in 0..8u8 {
        // A full page of 0xEE-ish bytes, answered and taken back...
        nf.send(&vec![0xE0 | round; 4096]).unwrap();
        let big = tx.next_request().unwrap().expect("a tx request");
        eb.answer(
            &mut tx,
            &[NetifTxResponse {
                id: big.id,
                status: NETIF_RSP_OKAY,
            }],
        );
        let deadline = Instant::now() + T;
        while nf.tx_room() < 256 {
            assert!(Instant::now() < deadline, "the tx page never came back");
            let _ = nf.recv_timeout(Duration::from_millis(10));
        }
        // ...then a small frame, in that page again (the pool reuses it).
        let small = frame(60, round);
        nf.send(&small).unwrap();
        let req = tx.next_request().unwrap().expect("a tx request");
        let p = read_page(req.gref);
        let at = usize::from(req.offset);
        assert_eq!(p[at..at + 60], small[..]);
        assert!(
            p[..at].iter().chain(&p[at + 60..]).all(|&x| x == 0),
            "round {round}: a reused tx page holds more than its frame"
        );
        eb.answer(
            &mut tx,
            &[NetifTxResponse {
                id: req.id,
                status: NETIF_RSP_OKAY,
            }],
        );
    }
    // One tx page served every frame: the rx pages and that one.
    assert_eq!(
        nf.stats().pages_allocated,
        NetfrontConfig::default().rx_buffers as u64 + 1
    );
    assert!(!nf.is_broken());
}

/// A guest that dies with tx requests in flight and a frame waiting for
/// rx buffers: once the toolstack removes its directory, netback leaves
/// within a deadline, unmapping both rings — no panic, no hang.
#[test]
fn netback_survives_the_guest_dying_mid_transfer() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let page = data_page(&w, &frame(4096, 2));
    let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
    for id in 0..16u16 {
        tx.push_request(&tx_req(page.refs()[0], 0, 0, id, 1000))
            .unwrap();
    }
    tx.push_requests().unwrap();
    assert!(host.send(&frame(500, 1)));
    ef.chan.notify().unwrap();
    w.hv.destroy_domain(w.guest.id()).unwrap();
    let front = xenshare::store::xenbus::frontend_path(w.guest.id(), "vif", 0);
    w.xs(&w.dom0).rm(&front).unwrap();
    let t = Instant::now();
    while !bt.is_finished() {
        assert!(t.elapsed() < T, "netback hangs on a dead guest");
        thread::sleep(Duration::from_millis(5));
    }
    let exit = bt.join();
    assert!(
        !matches!(&exit, Err(NetError::Broken(why)) if why.contains("panicked")),
        "{exit:?}"
    );
    assert_eq!(w.dom0.mapped_count(), 0);
    drop(ef);
}

/// Tx request ids are the front end's business: netback echoes whatever
/// it gets — duplicates included — one response per slot, forwards each
/// frame, and carries on.
#[test]
fn netback_answers_duplicate_tx_ids() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let content = frame(4096, 6);
    let page = data_page(&w, &content);
    let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
    let ids = [3u16, 3, 3, 0, u16::MAX, 3];
    for &id in &ids {
        tx.push_request(&tx_req(page.refs()[0], 0, 0, id, 100))
            .unwrap();
    }
    tx.push_requests().unwrap();
    ef.chan.notify().unwrap();
    let got: Vec<u16> = ids
        .iter()
        .map(|_| {
            let r = tx_response(&mut tx, &ef.chan);
            assert_eq!(r.status, NETIF_RSP_OKAY);
            r.id
        })
        .collect();
    xenshare_testkit::assert_same_ids(got, &ids);
    for _ in ids {
        assert_eq!(host.recv_timeout(T).unwrap(), content[..100]);
    }
    let exit = bt.stop().unwrap();
    assert_eq!(exit.stats.tx_frames, ids.len() as u64);
}

/// Hostile values for the feature keys netfront reads from a back end:
/// signs, spaces, empty, out of range, not 0 or 1. The front end refuses
/// each with a typed `BadKey` and leaves nothing granted.
#[test]
fn netfront_refuses_hostile_backend_keys() {
    for (k, v) in [
        ("feature-rx-copy", "+1"),
        ("feature-rx-copy", "2"),
        ("feature-rx-copy", "1 1"),
        ("feature-sg", "-1"),
        ("feature-sg", "4294967297"),
        ("feature-sg", "yes"),
    ] {
        let w = world();
        let paths = w.create_vif(0);
        let mut c0 = w.xs(&w.dom0);
        BackendFeatures::OURS.publish(&mut c0, &paths.back).unwrap();
        c0.write(&format!("{}/{k}", paths.back), v.as_bytes())
            .unwrap();
        write_state(&mut c0, &paths.back, XenbusState::InitWait).unwrap();
        let r = w.try_netfront(0, Duration::from_secs(2));
        assert!(
            matches!(r, Err(NetError::Core(DeviceError::BadKey { ref key, .. })) if key == k),
            "{k}={v}: {:?}",
            r.err()
        );
        assert_eq!(w.guest.exporter().stats().live, 0, "{k}={v}");
    }
}

/// XSA-155 from the other side: a back end that keeps rewriting an rx
/// response slot between an honest answer (100 bytes at offset 0) and a
/// hostile one (200 bytes at offset 4000, leaving the page) while netfront
/// reads it. netfront copies the response once: it delivers the page's bytes
/// for one in-page (offset, size) the copy holds, or breaks with a typed
/// error — never a read outside the page, a panic or a hang.
#[test]
fn netfront_acts_on_one_copy_of_an_rx_response_changing_under_it() {
    const ROUNDS: usize = 200;
    const RX_SLOT: usize = core::mem::size_of::<NetifRxResponse>();
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut rx = BackRing::<_, NetifRxRequest, NetifRxResponse>::attach(eb.rx.mem()).unwrap();
    let size = rx.size() as usize;
    let (mut delivered, mut broke) = (0, None);
    for round in 0..ROUNDS {
        let t = Instant::now();
        let req = loop {
            if let Some(r) = rx.next_request().unwrap() {
                break r;
            }
            assert!(t.elapsed() < T, "no rx buffer posted");
            thread::sleep(Duration::from_millis(1));
        };
        let data = frame(100, round as u8);
        let page = w
            .dom0
            .importer()
            .map_rw(w.guest.id(), &[GrantRef(req.gref)])
            .unwrap();
        page.mem().write(0, &data).unwrap();
        drop(page);
        let good = NetifRxResponse {
            id: req.id,
            offset: 0,
            flags: 0,
            status: 100,
        };
        let evil = NetifRxResponse {
            offset: 4000,
            status: 200,
            ..good
        };
        let slot = HEADER + (rx.rsp_prod_pvt() as usize % size) * RX_SLOT;
        rx.push_response(&good).unwrap();
        let (got, _) = flip_during(eb.rx.mem(), slot, evil.as_bytes(), good.as_bytes(), || {
            rx.push_responses().unwrap();
            eb.chan.notify().unwrap();
            nf.recv_timeout(T)
        });
        match got {
            Ok(Some(f)) => {
                // One copy of the slot may mix the two writes' bytes (the
                // flipper's store and netfront's copy are not single atomic
                // accesses; they may go byte by byte): any in-page
                // (offset, size) whose every byte comes from one of the two
                // responses is one the back end could have sent outright.
                // What is delivered must be exactly the page's bytes for one
                // such pair.
                let mut image = vec![0u8; 4096];
                image[..data.len()].copy_from_slice(&data);
                let mixes = |a: u16, b: u16| {
                    let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
                    [
                        u16::from_le_bytes([a[0], a[1]]),
                        u16::from_le_bytes([a[0], b[1]]),
                        u16::from_le_bytes([b[0], a[1]]),
                        u16::from_le_bytes([b[0], b[1]]),
                    ]
                };
                let offsets = mixes(good.offset, evil.offset);
                let sizes = mixes(good.status as u16, evil.status as u16);
                let one_copy = offsets.iter().any(|&off| {
                    sizes.iter().any(|&len| {
                        let (off, len) = (usize::from(off), usize::from(len));
                        off + len <= image.len() && f[..] == image[off..off + len]
                    })
                });
                assert!(
                    one_copy,
                    "round {round}: {} bytes not from one copy",
                    f.len()
                );
                delivered += 1;
            }
            Ok(None) => panic!("round {round}: nothing delivered"),
            Err(e) => {
                assert!(nf.is_broken(), "{e}");
                assert!(matches!(e, NetError::BadRxResponse { .. }), "{e}");
                broke = Some(e);
                break;
            }
        }
    }
    eprintln!("{delivered} frames delivered, broke: {broke:?}");
    assert!(delivered > 0 || broke.is_some());
}
