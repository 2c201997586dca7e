//! netback against a front end that notifies the way Linux's netfront does:
//! only when `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY` says the back end asked
//! (its `req_event` lies in the window just published), never "just in
//! case", and that sleeps on its event channel until the back end's
//! `rsp_event`-driven notification. Such a front end makes progress only if
//! the back end arms `req_event` on the tx ring before it sleeps
//! (`RING_FINAL_CHECK_FOR_REQUESTS`), arms it on the rx ring for a frame
//! waiting for buffers, and notifies every response the front end asked
//! for. (The back end's own short sleeps would hide a missed wake-up as
//! slowness; these tests wait on events only, under an overall deadline,
//! and read the event indices the back end wrote.)

use std::time::{Duration, Instant};

use xenshare::event::Channel;
use xenshare::net::NetifRxRequest;
use xenshare::platform::EventChannels;
use xenshare::ring::FrontRing;
use xenshare_abi::netif::NETIF_RSP_OKAY;
use xenshare_sim::{SimEvtchn, SimShare};
use xenshare_testkit::adversary::{sring, RawIndices};
use xenshare_testkit::grant_page;
use xenshare_testkit::net::{data_page, evil_front, frame, tx_req, RxFront, TxFront, T};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The value the back end last wrote into a ring's `req_event`.
fn req_event(ring: &SimShare) -> u32 {
    RawIndices::new(ring.mem()).get(sring::REQ_EVENT)
}

/// Waits, on events only, until `ready` holds (checked after every event
/// and once before sleeping); panics at the overall deadline.
fn wait_for_event(
    chan: &Channel<SimEvtchn>,
    deadline: Instant,
    what: &str,
    mut ready: impl FnMut() -> bool,
) {
    loop {
        if ready() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notification: {what}");
        if let Some(p) = chan.wait(Some(left)).unwrap() {
            chan.handle().unmask(p).unwrap();
        }
    }
}

/// Waits for the next response on `ring`, arming `rsp_event` before each
/// sleep as netfront's tx_buf_gc does: only a notification wakes it.
fn notified_response<Req, Rsp>(
    ring: &mut FrontRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
    chan: &Channel<SimEvtchn>,
    what: &str,
) -> Rsp
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    let deadline = Instant::now() + T;
    let mut rsp = None;
    wait_for_event(chan, deadline, what, || {
        if rsp.is_none() {
            rsp = ring.next_response().unwrap();
        }
        rsp.is_some() || ring.final_check_for_responses().unwrap()
    });
    rsp.or_else(|| ring.next_response().unwrap())
        .expect("response")
}

/// Waits (deadline loop) until the back end has armed `req_event` at
/// `want`: it went to sleep asking to be told.
fn wait_armed(ring: &SimShare, want: u32, what: &str) {
    let deadline = Instant::now() + T;
    while req_event(ring) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: req_event is {}, not {want}",
            req_event(ring)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tx_frames_sent_with_linux_notification_discipline_all_get_through() {
    let w = xenshare_testkit::net::world();
    let (ef, bt, host) = evil_front(&w);
    let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
    // More frames than the ring holds, one at a time: each needs the back
    // end to have asked for the next request (or to still be busy).
    let n = 300u32;
    let pages: Vec<_> = (0..4).map(|i| data_page(&w, &frame(1000, i))).collect();
    let mut notified = 0;
    for i in 0..n {
        let page = &pages[(i % 4) as usize];
        let idle_prod = tx.req_prod_pvt();
        if i % 50 == 0 {
            // Let the back end go idle: it must leave req_event armed at
            // the next request before it sleeps.
            wait_armed(&ef.tx, idle_prod.wrapping_add(1), "idle tx ring");
        }
        tx.push_request(&tx_req(page.refs()[0], 0, 0, (i % 256) as u16, 1000))
            .unwrap();
        if tx.push_requests_and_check_notify().unwrap() {
            ef.chan.notify().unwrap();
            notified += 1;
        } else {
            assert!(i % 50 != 0, "frame {i}: the idle back end did not ask");
        }
        let rsp = notified_response(&mut tx, &ef.chan, &format!("tx response {i}"));
        assert_eq!((rsp.id, rsp.status), ((i % 256) as u16, NETIF_RSP_OKAY));
        assert_eq!(host.recv_timeout(T), Some(frame(1000, (i % 4) as u8)));
    }
    assert!(
        notified >= 6,
        "only {notified} notifications for {n} frames"
    );
    drop(ef);
    let _ = bt.stop();
}

#[test]
fn a_host_frame_waiting_for_rx_buffers_is_delivered_when_linux_posts_them() {
    let w = xenshare_testkit::net::world();
    let (ef, bt, host) = evil_front(&w);
    let mut rx = RxFront::attach_at(ef.rx.mem(), 0).unwrap();
    let pages: Vec<_> = (0..8)
        .map(|_| {
            w.guest
                .exporter()
                .share(w.dom0.id(), 1, xenshare::Access::ReadWrite)
                .unwrap()
        })
        .collect();
    for round in 0..8u32 {
        // A frame arrives while the guest has no buffer posted: the back
        // end must keep it and ask to be told when one is.
        let f = frame(1400, round as u8);
        assert!(host.send(&f));
        let prod = rx.req_prod_pvt();
        wait_armed(&ef.rx, prod.wrapping_add(1), "rx ring with no buffers");
        let page = &pages[round as usize];
        rx.push_request(&NetifRxRequest {
            id: round as u16,
            gref: page.refs()[0].0,
            ..Default::default()
        })
        .unwrap();
        assert!(
            rx.push_requests_and_check_notify().unwrap(),
            "round {round}: the back end did not ask for rx buffers"
        );
        ef.chan.notify().unwrap();
        let rsp = notified_response(&mut rx, &ef.chan, &format!("rx frame {round}"));
        assert_eq!(rsp.id, round as u16);
        assert_eq!(rsp.status, f.len() as i16);
        let mut got = vec![0u8; f.len()];
        page.mem().read(usize::from(rsp.offset), &mut got).unwrap();
        assert_eq!(got, f, "round {round}");
    }
    drop(ef);
    let _ = bt.stop();
}

#[test]
fn a_round_with_tx_and_rx_work_sends_one_event_on_the_shared_channel() {
    use xenshare::net::xenbus::FrontendKeys;
    use xenshare::net::Netback;
    use xenshare::Access;
    use xenshare_devices::net::host::mem_link;

    let w = xenshare_testkit::net::world();
    let share = || grant_page(&w, Access::ReadWrite);
    let (txs, rxs, buf) = (share(), share(), share());
    let mut tx = TxFront::init(txs.mem()).unwrap();
    let mut rx = RxFront::init(rxs.mem()).unwrap();
    let chan = Channel::alloc_unbound(&w.guest.evtchn().unwrap(), w.dom0.id()).unwrap();
    let keys = FrontendKeys {
        tx_ring_ref: txs.refs()[0],
        rx_ring_ref: rxs.refs()[0],
        event_channel: chan.port(),
        event_channel_rx: None,
        request_rx_copy: true,
        sg: true,
        rx_notify: true,
    };
    let mut nb = Netback::attach(
        w.dom0.importer(),
        &w.dom0.evtchn().unwrap(),
        w.guest.id(),
        &keys,
    )
    .unwrap();
    let (mut io, host) = mem_link(16);
    // Work on both rings at once: a guest frame to send, a buffer posted
    // for the host frame waiting.
    let page = data_page(&w, &frame(800, 1));
    tx.push_request(&tx_req(page.refs()[0], 0, 0, 7, 800))
        .unwrap();
    tx.push_requests().unwrap();
    rx.push_request(&NetifRxRequest {
        id: 3,
        gref: buf.refs()[0].0,
        ..Default::default()
    })
    .unwrap();
    rx.push_requests().unwrap();
    assert!(host.send(&frame(700, 2)));
    // Both rings start with rsp_event = 1: the front end asked to hear of
    // the first response on each.
    assert!(nb.poll(&mut io).unwrap());
    let st = nb.stats();
    assert_eq!((st.tx_frames, st.rx_frames), (1, 1), "{st:?}");
    assert_eq!(st.notifies, 1, "one event for both rings: {st:?}");
    assert_eq!(host.recv_timeout(T), Some(frame(800, 1)));
    let got = chan.wait(Some(T)).unwrap();
    assert_eq!(got, Some(chan.port()));
    assert_eq!(tx.next_response().unwrap().map(|r| r.id), Some(7));
    assert_eq!(
        rx.next_response().unwrap().map(|r| (r.id, r.status)),
        Some((3, 700))
    );
    nb.release();
}

#[test]
fn split_channels_carry_each_ring_its_own_event() {
    use xenshare::net::xenbus::{BackendFeatures, FrontendKeys};
    use xenshare::net::Netback;
    use xenshare::Access;
    use xenshare_devices::net::host::mem_link;

    let w = xenshare_testkit::net::world();
    // The keys Linux's netfront writes when the back end offers split
    // channels (which ours does).
    let paths = w.create_vif(0);
    let mut c0 = w.xs(&w.dom0);
    BackendFeatures::OURS.publish(&mut c0, &paths.back).unwrap();
    assert_eq!(
        c0.read(&format!("{}/feature-split-event-channels", paths.back))
            .unwrap(),
        b"1"
    );
    let share = || grant_page(&w, Access::ReadWrite);
    let (txs, rxs, buf) = (share(), share(), share());
    let mut tx = TxFront::init(txs.mem()).unwrap();
    let mut rx = RxFront::init(rxs.mem()).unwrap();
    // One handle per channel, so each wait sees only its own port.
    let tx_chan = Channel::alloc_unbound(&w.guest.evtchn().unwrap(), w.dom0.id()).unwrap();
    let rx_chan = Channel::alloc_unbound(&w.guest.evtchn().unwrap(), w.dom0.id()).unwrap();
    let mut cg = w.xs(&w.guest);
    FrontendKeys {
        tx_ring_ref: txs.refs()[0],
        rx_ring_ref: rxs.refs()[0],
        event_channel: tx_chan.port(),
        event_channel_rx: Some(rx_chan.port()),
        request_rx_copy: true,
        sg: true,
        rx_notify: true,
    }
    .publish(&mut cg, &paths.front)
    .unwrap();
    for (k, want) in [
        ("event-channel-tx", Some(tx_chan.port().0)),
        ("event-channel-rx", Some(rx_chan.port().0)),
        ("event-channel", None),
    ] {
        let v = cg.try_read(&format!("{}/{k}", paths.front)).unwrap();
        assert_eq!(v, want.map(|p| p.to_string().into_bytes()), "{k}");
    }
    let keys = FrontendKeys::read(&mut c0, &paths.front).unwrap();
    assert_eq!(keys.event_channel, tx_chan.port());
    assert_eq!(keys.event_channel_rx, Some(rx_chan.port()));
    let mut nb = Netback::attach(
        w.dom0.importer(),
        &w.dom0.evtchn().unwrap(),
        w.guest.id(),
        &keys,
    )
    .unwrap();
    let (mut io, host) = mem_link(16);
    let none = Some(Duration::ZERO);

    // A tx response: an event on the tx channel only.
    let page = data_page(&w, &frame(600, 1));
    tx.push_request(&tx_req(page.refs()[0], 0, 0, 4, 600))
        .unwrap();
    tx.push_requests().unwrap();
    assert!(nb.poll(&mut io).unwrap());
    assert_eq!(tx_chan.wait(Some(T)).unwrap(), Some(tx_chan.port()));
    tx_chan.handle().unmask(tx_chan.port()).unwrap();
    assert_eq!(rx_chan.wait(none).unwrap(), None, "rx channel woken by tx");
    assert_eq!(tx.next_response().unwrap().map(|r| r.id), Some(4));
    assert_eq!(host.recv_timeout(T), Some(frame(600, 1)));

    // A delivered frame: an event on the rx channel only.
    rx.push_request(&NetifRxRequest {
        id: 9,
        gref: buf.refs()[0].0,
        ..Default::default()
    })
    .unwrap();
    rx.push_requests().unwrap();
    assert!(host.send(&frame(500, 2)));
    assert!(nb.poll(&mut io).unwrap());
    assert_eq!(rx_chan.wait(Some(T)).unwrap(), Some(rx_chan.port()));
    assert_eq!(tx_chan.wait(none).unwrap(), None, "tx channel woken by rx");
    assert_eq!(
        rx.next_response().unwrap().map(|r| (r.id, r.status)),
        Some((9, 500))
    );
    assert_eq!(nb.stats().notifies, 2);
    nb.release();

    // Half a split is refused: event-channel-tx without -rx.
    cg.rm(&format!("{}/event-channel-rx", paths.front)).unwrap();
    assert!(FrontendKeys::read(&mut c0, &paths.front).is_err());
}
