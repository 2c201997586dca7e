//! Secondary consoles (`device/console/<N>`): the full XenBus handshake in
//! both start-up orders, bytes through the granted page, a clean close that
//! revokes the page, and a back end that keeps the page mapped after close
//! (the page is quarantined, never reused).

use std::time::Duration;

use xenshare::console::xenbus::{connect_back, connect_front, SecondaryBack, SecondaryFront};
use xenshare::console::ConsoleError;
use xenshare::error::DeviceError;
use xenshare::store::xenbus::{
    create_device, read_state, wait_for_state, write_state, DeviceSpec, XenbusState,
};
use xenshare::{Access, GrantRef};
use xenshare_devices::console::MemoryTerminal;
use xenshare_sim::{SimEvtchn, SimGrantBackend, SimMapper};
use xenshare_testkit::console::{pattern, world, World, SOON};
use xenshare_testkit::grant_page;

const DEVID: u32 = 1;

fn make_device(w: &World) -> (String, String) {
    let p = create_device(
        &mut w.xs(&w.dom0),
        &DeviceSpec {
            devtype: "console",
            devid: DEVID,
            frontend: w.guest.id(),
            backend: w.dom0.id(),
            front_keys: &[],
            back_keys: &[],
        },
    )
    .unwrap();
    (p.front, p.back)
}

fn front(w: &World) -> Result<SecondaryFront<SimGrantBackend, SimEvtchn>, ConsoleError> {
    connect_front(
        w.guest.exporter(),
        &w.guest.evtchn().unwrap(),
        &mut w.xs(&w.guest),
        DEVID,
        SOON,
    )
}

fn back(w: &World) -> Result<SecondaryBack<SimMapper, SimEvtchn>, ConsoleError> {
    connect_back(
        w.dom0.importer(),
        &w.dom0.evtchn().unwrap(),
        &mut w.xs(&w.dom0),
        w.guest.id(),
        DEVID,
        SOON,
    )
}

/// An honest back end: serves the console to `term` until the front end
/// closes, then disconnects.
fn serve(
    w: &World,
    mut b: SecondaryBack<SimMapper, SimEvtchn>,
    term: MemoryTerminal,
) -> Result<(), ConsoleError> {
    let mut xs = w.xs(&w.dom0);
    let mut io = term.io();
    // Bounded, so a failing test cannot hang on this thread.
    let deadline = std::time::Instant::now() + 3 * SOON;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(ConsoleError::Core(DeviceError::Timeout));
        }
        if !b.console().pump(&mut io)?.any() {
            b.console().wait(Some(Duration::from_millis(5)))?;
        }
        if b.frontend_state(&mut xs)? >= XenbusState::Closing {
            // Deliver what the guest wrote before closing.
            while b.console().pump(&mut io)?.any() {}
            return b.close(&mut xs);
        }
    }
}

fn exchange(f: &mut SecondaryFront<SimGrantBackend, SimEvtchn>, term: &MemoryTerminal) {
    let data = pattern(3, 5000);
    f.console().write_all(&data, Some(SOON)).unwrap();
    assert!(term.wait_output(SOON, |o| o.len() >= data.len()));
    assert_eq!(term.take_output(), data);
    let input: Vec<u8> = (0..=255u8).collect();
    term.type_input(&input);
    let mut got = Vec::new();
    let mut buf = [0u8; 100];
    while got.len() < input.len() {
        let n = f.console().read_timeout(&mut buf, Some(SOON)).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, input);
}

fn full_session(front_first: bool) {
    let w = world();
    let (fdir, bdir) = make_device(&w);
    let term = MemoryTerminal::new();
    std::thread::scope(|s| {
        let wr = &w;
        let t = term.clone();
        let (f, b) = if front_first {
            let f = s.spawn(move || front(wr));
            std::thread::sleep(Duration::from_millis(50));
            // The front end published and waits at Initialised.
            assert_eq!(
                read_state(&mut w.xs(&w.dom0), &fdir).unwrap(),
                XenbusState::Initialised
            );
            let b = s.spawn(move || back(wr).and_then(|b| serve(wr, b, t)));
            (f, b)
        } else {
            let b = s.spawn(move || back(wr).and_then(|b| serve(wr, b, t)));
            wait_for_state(&mut w.xs(&w.dom0), &bdir, SOON, |s| {
                s == XenbusState::InitWait
            })
            .unwrap();
            let f = s.spawn(move || front(wr));
            (f, b)
        };
        let mut f = f.join().unwrap().unwrap();
        assert_eq!(
            read_state(&mut w.xs(&w.dom0), &fdir).unwrap(),
            XenbusState::Connected
        );
        assert_eq!(
            read_state(&mut w.xs(&w.dom0), &bdir).unwrap(),
            XenbusState::Connected
        );
        let gref = {
            let raw = w.xs(&w.dom0).read(&format!("{fdir}/ring-ref")).unwrap();
            GrantRef(String::from_utf8(raw).unwrap().parse().unwrap())
        };
        assert!(w.guest.grant_busy(gref), "back end maps the granted page");
        exchange(&mut f, &term);

        // Front-initiated close: the honest back end unmaps; the page is
        // revoked (not quarantined).
        f.close(&mut w.xs(&w.guest), SOON).unwrap();
        b.join().unwrap().unwrap();
        assert_eq!(
            read_state(&mut w.xs(&w.dom0), &bdir).unwrap(),
            XenbusState::Closed
        );
        assert_eq!(
            read_state(&mut w.xs(&w.dom0), &fdir).unwrap(),
            XenbusState::Closed
        );
        let st = w.guest.exporter().stats();
        assert_eq!(w.guest.exporter().quarantined(), 0);
        assert_eq!(st.live, 0, "every grant released: {st:?}");
        assert!(!w.guest.grant_busy(gref));
        assert_eq!(w.dom0.mapped_count(), 0);
    });
}

#[test]
fn handshake_front_end_first() {
    full_session(true);
}

#[test]
fn handshake_back_end_first() {
    full_session(false);
}

#[test]
fn backend_keeping_the_page_after_close_gets_it_quarantined() {
    let w = world();
    let (fdir, bdir) = make_device(&w);
    std::thread::scope(|s| {
        // A malicious back end: connects by hand with a raw map it never
        // releases, and claims Closed when asked to close.
        let wr = &w;
        let (fd, bd) = (fdir.clone(), bdir.clone());
        let evil = s.spawn(move || {
            let mut xs = wr.xs(&wr.dom0);
            write_state(&mut xs, &bd, XenbusState::InitWait).unwrap();
            wait_for_state(&mut xs, &fd, SOON, |s| s == XenbusState::Initialised).unwrap();
            let raw = xs.read(&format!("{fd}/ring-ref")).unwrap();
            let gref = GrantRef(String::from_utf8(raw).unwrap().parse().unwrap());
            let handle = wr
                .dom0
                .raw_map(wr.guest.id(), gref, Access::ReadWrite)
                .unwrap();
            write_state(&mut xs, &bd, XenbusState::Connected).unwrap();
            wait_for_state(&mut xs, &fd, SOON, |s| s >= XenbusState::Closing).unwrap();
            write_state(&mut xs, &bd, XenbusState::Closed).unwrap();
            (gref, handle)
        });
        let f = front(&w).unwrap();
        f.close(&mut w.xs(&w.guest), SOON)
            .map(|()| panic!("close must report the kept grant"))
            .unwrap_or_else(|e| assert_eq!(e, ConsoleError::GrantKept));
        let (gref, handle) = evil.join().unwrap();

        // The page and its ref are in quarantine: still granted, not reused.
        assert_eq!(w.guest.exporter().quarantined(), 1);
        assert!(w.guest.grant_busy(gref));
        let fresh: Vec<_> = (0..8).map(|_| grant_page(&w, Access::ReadWrite)).collect();
        assert!(
            fresh.iter().all(|s| s.refs()[0] != gref),
            "quarantined ref reused"
        );
        drop(fresh);

        // Once the back end finally lets go, reclaim gets it back.
        w.dom0.raw_unmap(handle).unwrap();
        w.guest.exporter().reclaim(16);
        assert_eq!(w.guest.exporter().quarantined(), 0);
    });
}

#[test]
fn backend_closing_during_handshake_is_a_peer_state_error() {
    let w = world();
    let (_fdir, bdir) = make_device(&w);
    write_state(&mut w.xs(&w.dom0), &bdir, XenbusState::Closing).unwrap();
    let r = front(&w);
    assert_eq!(
        r.err(),
        Some(ConsoleError::Core(DeviceError::PeerState(
            XenbusState::Closing
        )))
    );
    // The page it had granted was given back.
    assert_eq!(w.guest.exporter().stats().live, 0);
}

#[test]
fn frontend_with_bad_keys_is_refused_by_the_backend() {
    // A guest publishing garbage instead of a grant ref / port: signs, hex,
    // inner spaces, empty, and values past u32 / u64.
    let w = world();
    let (fdir, _bdir) = make_device(&w);
    let mut xg = w.xs(&w.guest);
    for (ring_ref, port, want) in [
        ("12abc", "3", "ring-ref"),
        ("5", "-1", "port"),
        ("99999999999", "3", "ring-ref"),
        ("+5", "3", "ring-ref"),
        ("0x5", "3", "ring-ref"),
        ("5", "1 2", "port"),
        ("5", "", "port"),
        ("5", "4294967299", "port"),
        ("18446744073709551621", "3", "ring-ref"),
    ] {
        xg.write(&format!("{fdir}/ring-ref"), ring_ref.as_bytes())
            .unwrap();
        xg.write(&format!("{fdir}/port"), port.as_bytes()).unwrap();
        write_state(&mut xg, &fdir, XenbusState::Initialised).unwrap();
        match back(&w) {
            Err(ConsoleError::Core(DeviceError::BadKey { key, .. })) => assert_eq!(key, want),
            other => panic!("expected a bad {want} key, got {other:?}"),
        }
    }
    // A well-formed ref the guest never granted: the map is refused.
    xg.write(&format!("{fdir}/ring-ref"), b"77").unwrap();
    xg.write(&format!("{fdir}/port"), b"3").unwrap();
    assert!(matches!(
        back(&w),
        Err(ConsoleError::Core(DeviceError::Map(_)))
    ));
    assert_eq!(w.dom0.mapped_count(), 0);
}

/// XSA-403: the page a secondary console front end grants carries nothing
/// but the console ring, even after the guest's memory was full of other
/// data.
#[test]
fn secondary_console_page_carries_no_stale_data() {
    let w = world();
    assert_eq!(w.guest.dirty_free_memory(64, 0xEE), 64);
    let (fdir, _bdir) = make_device(&w);
    std::thread::scope(|s| {
        let f = s.spawn(|| front(&w));
        let mut x0 = w.xs(&w.dom0);
        wait_for_state(&mut x0, &fdir, SOON, |s| s == XenbusState::Initialised).unwrap();
        let r = x0.read(&format!("{fdir}/ring-ref")).unwrap();
        let gref = GrantRef(std::str::from_utf8(&r).unwrap().trim().parse().unwrap());
        let m = w.dom0.importer().map_ro(w.guest.id(), &[gref]).unwrap();
        let mut page = vec![0u8; 4096];
        m.mem().read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|&b| b == 0),
            "the console page carries old guest data"
        );
        drop(m);
        let b = back(&w).unwrap();
        let f = f.join().unwrap().unwrap();
        drop((f, b));
    });
}
