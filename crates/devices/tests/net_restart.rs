//! Back-end restart of the network device (issue 5, "Handshake"): the
//! netfront notices its back end went away, revokes every old grant
//! (quarantining those a dead back end still maps, never reusing them),
//! re-runs the handshake with a new back end on the same backend path, and
//! frames flow byte-exact both ways again; a final close releases every
//! grant.
//!
//! Two ways to lose the back end:
//! * it stops cleanly (unmaps, goes Closed) and a new back end is started
//!   *before* the front end reconnects — the new one must wait for the
//!   front end to reset rather than map its stale rings;
//! * it wedges while still mapping the rings, the toolstack marks it Closed,
//!   the front end reconnects (the old rings go to quarantine), the back-end
//!   domain is destroyed (the emulator drops its mappings, the quarantine
//!   drains), and a new back-end domain with the same id is attached.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use xenshare::net::xenbus::{FrontendKeys, DEVTYPE};
use xenshare::net::{NetError, Netback, MAX_FRAME};
use xenshare::store::xenbus::{
    create_device, read_state, wait_for_state, write_state, DevicePaths, DeviceSpec, XenbusState,
};
use xenshare::DomId;
use xenshare_devices::net::host::{mem_link, HostFrames, HostPort};
use xenshare_devices::net::run::spawn_backend;
use xenshare_sim::{Domain, DomainConfig};
use xenshare_testkit::net::{frame, world, Front, World, MAC, T};

/// Frame sizes exchanged on every connection: tiny, Ethernet, jumbo, largest.
const SIZES: [usize; 6] = [60, 1000, 1514, 4097, 9000, MAX_FRAME];

fn exchange(nf: &mut Front, host: &HostPort, seed: u8) {
    for &len in &SIZES {
        let f = frame(len, seed);
        nf.send_timeout(&f, T).unwrap();
        let got = host
            .recv_timeout(T)
            .expect("tx frame never reached the host");
        assert!(got == f, "tx frame of {len} bytes corrupted");
        let f = frame(len, !seed);
        assert!(host.send(&f));
        let got = nf
            .recv_timeout(T)
            .unwrap()
            .expect("rx frame never reached the guest");
        assert!(got == f, "rx frame of {len} bytes corrupted");
    }
}

fn keys(w: &World, paths: &DevicePaths) -> FrontendKeys {
    FrontendKeys::read(&mut w.xs(&w.dom0), &paths.front).unwrap()
}

#[test]
fn backend_stops_and_a_new_one_takes_over() {
    let started = Instant::now();
    let w = world();
    let paths = w.create_vif(0);
    let (bt, host) = w.vif_backend(0);
    let mut nf = w.netfront(0);
    let mut xs = w.xs(&w.guest);
    exchange(&mut nf, &host, 1);
    nf.check_backend(&mut xs).unwrap();
    let old = keys(&w, &paths);

    // The back end goes away: it unmaps everything and goes Closed.
    let exit = bt.stop().unwrap();
    assert_eq!(exit.reason, xenshare::net::back::RunExit::Stopped);
    assert_eq!(w.dom0.mapped_count(), 0);
    assert_eq!(
        read_state(&mut xs, &paths.back).unwrap(),
        XenbusState::Closed
    );
    // The front end notices through XenBus and stops using the rings.
    assert_eq!(nf.check_backend(&mut xs), Err(NetError::PeerClosed));
    assert!(nf.backend_gone() && nf.is_broken() && !nf.carrier());
    assert!(matches!(nf.send(&frame(60, 0)), Err(NetError::Broken(_))));

    // A new back end starts first: it must not map the stale rings.
    let (bt, host) = w.vif_backend(0);
    thread::sleep(Duration::from_millis(150));
    assert_eq!(
        read_state(&mut xs, &paths.back).unwrap(),
        XenbusState::Closed,
        "the new back end waits for the front end to reset"
    );
    assert_eq!(w.dom0.mapped_count(), 0);

    let before = w.guest.exporter().stats();
    let report = nf.reconnect(&mut xs, T).unwrap();
    // Nothing was mapped any more: every old grant came back.
    assert_eq!(report.quarantined, 0, "{report:?}");
    assert!(report.revoked >= 2 + 18, "{report:?}");
    let after = w.guest.exporter().stats();
    assert_eq!(after.quarantined, 0, "{after:?}");
    assert!(after.revoked >= before.revoked + report.revoked as u64);
    assert!(nf.carrier() && !nf.is_broken());
    let new = keys(&w, &paths);
    assert_ne!(new.event_channel, old.event_channel);
    assert_eq!(
        read_state(&mut xs, &paths.back).unwrap(),
        XenbusState::Connected
    );
    nf.check_backend(&mut xs).unwrap();

    exchange(&mut nf, &host, 7);
    let s = nf.stats();
    assert_eq!(s.tx_frames, 2 * SIZES.len() as u64);
    assert_eq!(s.rx_frames, 2 * SIZES.len() as u64);
    assert_eq!((s.tx_errors, s.rx_errors, s.quarantined), (0, 0, 0));

    let close = nf.close(&mut xs, T).unwrap();
    assert_eq!(close.quarantined, 0);
    let exit = bt.join().unwrap();
    assert_eq!(exit.stats.tx_frames, SIZES.len() as u64);
    assert_eq!(exit.stats.rx_frames, SIZES.len() as u64);
    let st = w.guest.exporter().stats();
    assert_eq!((st.live, st.quarantined, st.leaked), (0, 0, 0), "{st:?}");
    assert_eq!(st.granted, st.revoked + st.reclaimed, "{st:?}");
    assert_eq!(w.dom0.mapped_count(), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The driver domain of the second scenario.
const DRIVER: DomId = DomId(7);

fn driver(w: &World) -> Domain {
    w.hv.create_domain_with_id(
        DRIVER,
        DomainConfig {
            mem_pages: 1024,
            ..Default::default()
        },
    )
    .unwrap()
}

fn attach_vif(w: &World, backend: DomId) -> DevicePaths {
    create_device(
        &mut w.xs(&w.dom0),
        &DeviceSpec {
            devtype: DEVTYPE,
            devid: 0,
            frontend: w.guest.id(),
            backend,
            front_keys: &[("mac", MAC), ("handle", "0")],
            back_keys: &[("mac", MAC), ("handle", "0")],
        },
    )
    .unwrap()
}

#[test]
fn destroyed_backend_domain_is_replaced() {
    let started = Instant::now();
    let w = world();
    let d1 = driver(&w);
    let paths = attach_vif(&w, DRIVER);
    let (mut io, host) = mem_link(4096);

    // A back end in the driver domain that wedges: after `wedge` it stops
    // serving but keeps the rings mapped until told to drop them.
    let wedge = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let (drop_tx, drop_rx) = mpsc::channel::<()>();
    let old_back = {
        let (imp, evt, mut xs) = (d1.importer().clone(), d1.evtchn().unwrap(), w.xs(&d1));
        let (fe, wedge) = (w.guest.id(), wedge.clone());
        thread::spawn(move || {
            let mut nb = Netback::connect(&imp, &evt, &mut xs, fe, 0, T).unwrap();
            let bell = nb.doorbell();
            io.set_waker(Arc::new(move || {
                let _ = bell.ring();
            }));
            let _ = nb.run(&mut io, &mut xs, &wedge);
            ready_tx.send(imp.stats().mapped as usize).unwrap();
            // Still mapped; dropped only after the domain is destroyed.
            let _ = drop_rx.recv_timeout(T);
            drop(nb);
        })
    };
    let mut nf = w.netfront(0);
    let mut xs = w.xs(&w.guest);
    exchange(&mut nf, &host, 3);
    let old = keys(&w, &paths);
    wedge.store(true, Ordering::Release);
    assert_eq!(
        ready_rx.recv_timeout(T).unwrap(),
        2,
        "old back end maps both rings"
    );

    // The toolstack declares the back end dead.
    write_state(&mut w.xs(&w.dom0), &paths.back, XenbusState::Closed).unwrap();
    assert_eq!(nf.check_backend(&mut xs), Err(NetError::PeerClosed));

    // Reconnect in the background: it revokes what it can, then waits for
    // the new back end.
    let fe = thread::spawn(move || {
        let r = nf.reconnect(&mut xs, T);
        (nf, xs, r)
    });
    wait_for_state(&mut w.xs(&w.dom0), &paths.front, T, |s| {
        s == XenbusState::Initialising
    })
    .unwrap();
    // Both old rings are still mapped by the dead back end: quarantined,
    // never reused; every other old grant came back.
    let st = w.guest.exporter().stats();
    assert_eq!(st.quarantined, 2, "{st:?}");
    for r in [old.tx_ring_ref, old.rx_ring_ref] {
        assert!(
            w.guest.grant_busy(r),
            "{r} still mapped by the old back end"
        );
    }
    let q: Vec<_> = w
        .guest
        .exporter()
        .quarantine_snapshot()
        .into_iter()
        .flat_map(|(peer, refs, _)| {
            assert_eq!(peer, DRIVER);
            refs
        })
        .collect();
    assert!(q.contains(&old.tx_ring_ref) && q.contains(&old.rx_ring_ref));
    assert_eq!(w.guest.exporter().reclaim(16).reclaimed, 0, "still mapped");

    // The domain is destroyed: the emulator releases its mappings, and the
    // quarantine drains.
    w.hv.destroy_domain(DRIVER).unwrap();
    drop_tx.send(()).unwrap();
    old_back.join().unwrap();
    for r in [old.tx_ring_ref, old.rx_ring_ref] {
        assert!(!w.guest.grant_busy(r));
    }
    let rec = w.guest.exporter().reclaim(16);
    assert_eq!((rec.reclaimed, rec.remaining), (2, 0), "{rec:?}");

    // A new driver domain with the same id, the device re-attached at the
    // same backend path.
    let d2 = driver(&w);
    let paths2 = attach_vif(&w, DRIVER);
    assert_eq!(paths2.back, paths.back);
    let (io, host) = mem_link(4096);
    let bt = spawn_backend(
        d2.importer().clone(),
        d2.evtchn().unwrap(),
        w.xs(&d2),
        w.guest.id(),
        0,
        io,
        T,
    );
    let (mut nf, mut xs, r) = fe.join().unwrap();
    let report = r.unwrap();
    assert_eq!(report.quarantined, 2, "{report:?}");
    assert!(nf.carrier());
    let new = keys(&w, &paths);
    assert!(!q.contains(&new.tx_ring_ref) && !q.contains(&new.rx_ring_ref));
    exchange(&mut nf, &host, 9);
    assert_eq!(nf.stats().quarantined, 2);

    let close = nf.close(&mut xs, T).unwrap();
    assert_eq!(close.quarantined, 0);
    bt.join().unwrap();
    let st = w.guest.exporter().stats();
    assert_eq!((st.live, st.quarantined, st.leaked), (0, 0, 0), "{st:?}");
    assert_eq!(st.reclaimed, 2, "{st:?}");
    assert_eq!(st.granted, st.revoked + st.reclaimed, "{st:?}");
    assert_eq!(d2.mapped_count(), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}
