//! Guests talking to the daemon over their shared-ring page and event
//! channel, exactly as on Xen, on the emulator: introduce, requests and
//! watches, a guest's identity and permissions, release, and a guest that
//! corrupts its ring.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::event::Channel;
use xenshare::store::client::Client;
use xenshare::store::ring::RingTransport;
use xenshare::DomId;
use xenshare_abi::xs::XENSTORE_ERROR_RINGIDX;
use xenshare_sim::{Domain, DomainConfig, Hypervisor};
use xenshare_testkit::adversary::{xs_ring, Flooder, RawIndices};
use xenshare_testkit::give_home;
use xenshare_xenstored::inproc;
use xenshare_xenstored::ring::RingServer;
use xenshare_xenstored::{Config, Daemon};

struct Host {
    hv: Hypervisor,
    dom0: Domain,
    xs: Daemon,
    _rings: RingServer,
}

fn host() -> Host {
    host_with(Config::default())
}

fn host_with(config: Config) -> Host {
    let hv = Hypervisor::new();
    let dom0 = hv
        .create_domain_with_id(DomId(0), DomainConfig::default())
        .unwrap();
    let xs = Daemon::new(config);
    let d0 = dom0.clone();
    let rings = RingServer::start(
        &xs,
        dom0.importer().clone(),
        move || d0.evtchn().ok(),
        |e| panic!("attach failed: {e}"),
    );
    Host {
        hv,
        dom0,
        xs,
        _rings: rings,
    }
}

/// Boots a guest the way a toolstack does: builds its xenstore page (ref 1
/// granted to dom0), gives it an unbound port for dom0, and introduces it.
fn boot(
    h: &Host,
) -> (
    Domain,
    Arc<xenshare_sim::SimEvtchn>,
    Channel<xenshare_sim::SimEvtchn>,
) {
    let g = h.hv.create_domain(DomainConfig::default()).unwrap();
    let gfn = g.build_xenstore_page(h.dom0.id()).unwrap();
    let evt = g.evtchn().unwrap();
    let ch = Channel::alloc_unbound(&evt, h.dom0.id()).unwrap();
    let mut c0 = inproc::client(&h.xs, DomId(0));
    give_home(&mut c0, g.id()).unwrap();
    c0.introduce(g.id(), gfn as i64, ch.port().0).unwrap();
    (g, evt, ch)
}

#[test]
fn guest_uses_xenstore_over_its_ring() {
    let h = host();
    let (g, _evt, ch) = boot(&h);
    let page = g.xenstore_page().unwrap();
    let mut c = Client::new(RingTransport::new(page, ch).unwrap());
    // The daemon knows who is talking: relative paths are the guest's home.
    let home = c.get_domain_path(g.id()).unwrap();
    assert_eq!(home, format!("/local/domain/{}", g.id().0));
    c.write("data/hello", b"from the ring").unwrap();
    let mut c0 = inproc::client(&h.xs, DomId(0));
    assert_eq!(
        c0.read(&format!("{home}/data/hello")).unwrap(),
        b"from the ring"
    );
    // Values larger than the 1 KiB ring cross it in pieces; past the
    // guest node-size quota the daemon answers ENOSPC over the ring.
    let big: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
    c.write("data/big", &big).unwrap();
    assert_eq!(c.read("data/big").unwrap(), big);
    let too_big = vec![b'x'; 4000];
    assert_eq!(
        c.write("data/big", &too_big).unwrap_err().xs(),
        Some(xenshare::store::XsError::ENOSPC)
    );
    // The guest may not touch dom0's nodes.
    c0.write("/secret", b"dom0 only").unwrap();
    assert!(c.read("/secret").is_err());
    assert!(c.write("/secret", b"x").is_err());
    // Watches fire across the ring.
    c.watch("data/watched", b"tok").unwrap();
    let first = c.next_event(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(first.token, b"tok");
    c0.write(&format!("{home}/data/watched"), b"1").unwrap();
    let ev = c.next_event(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(ev.path, "data/watched");
    // Transactions.
    let v = c
        .transaction(4, |tx| {
            tx.write("data/t", b"42")?;
            tx.read("data/t")
        })
        .unwrap();
    assert_eq!(v, b"42");
}

#[test]
fn many_guests_and_release() {
    let h = host();
    let mut doms = Vec::new();
    let mut chans = Vec::new();
    for _ in 0..4 {
        let (g, evt, ch) = boot(&h);
        doms.push((g, evt));
        chans.push(ch);
    }
    let mut clients: Vec<_> = doms
        .iter()
        .zip(chans)
        .map(|((g, _), ch)| {
            (
                g.id(),
                Client::new(RingTransport::new(g.xenstore_page().unwrap(), ch).unwrap()),
            )
        })
        .collect();
    for (id, c) in clients.iter_mut() {
        c.write("name", format!("guest-{}", id.0).as_bytes())
            .unwrap();
    }
    let mut c0 = inproc::client(&h.xs, DomId(0));
    for (id, _) in &clients {
        assert_eq!(
            c0.read(&format!("/local/domain/{}/name", id.0)).unwrap(),
            format!("guest-{}", id.0).as_bytes()
        );
        assert!(c0.is_domain_introduced(*id).unwrap());
    }
    // Releasing one guest stops its link; the others carry on.
    let (gone, _) = clients.remove(0);
    c0.release(gone).unwrap();
    assert!(common::wait_for(|| !h._rings.attached().contains(&gone)));
    assert!(!c0.is_domain_introduced(gone).unwrap());
    for (id, c) in clients.iter_mut() {
        assert_eq!(
            c.read("name").unwrap(),
            format!("guest-{}", id.0).as_bytes()
        );
    }
}

/// Two guests; `corrupt` scribbles on the bad guest's ring indices and the
/// bad guest kicks the daemon. It is cut off with `XENSTORE_ERROR_RINGIDX`;
/// the good guest, which wrote `ok` before, carries on.
fn corrupt_ring_cuts_off_only_that_guest(corrupt: impl FnOnce(RawIndices<'_>)) {
    let h = host();
    let (bad, _e1, ch_bad) = boot(&h);
    let (good, _e2, ch_good) = boot(&h);
    let bad_page = bad.xenstore_page().unwrap();
    let mut good_c =
        Client::new(RingTransport::new(good.xenstore_page().unwrap(), ch_good).unwrap());
    good_c.write("ok", b"1").unwrap();
    assert!(common::wait_for(|| h._rings.attached().contains(&bad.id())));
    corrupt(RawIndices::new(bad_page));
    ch_bad.notify().unwrap();
    assert!(
        common::wait_for(|| !h._rings.attached().contains(&bad.id())),
        "corrupt guest still served"
    );
    assert_eq!(
        RawIndices::new(bad_page).get(xs_ring::ERROR),
        XENSTORE_ERROR_RINGIDX
    );
    // The good guest is unaffected.
    assert_eq!(good_c.read("ok").unwrap(), b"1");
}

#[test]
fn guest_corrupting_its_ring_is_cut_off_alone() {
    // The bad guest claims 64 KiB of requests in a 1 KiB ring.
    corrupt_ring_cuts_off_only_that_guest(|r| r.set(xs_ring::REQ_PROD, 65536));
}

/// A guest that never reads its ring while a peer writes a node it
/// watches: the daemon keeps at most its byte cap queued for it (plus one
/// message staged for the ring), drops and counts the rest of the events,
/// and the guest's next request still gets its reply.
#[test]
fn guest_ring_that_never_reads_is_capped_and_drops_watch_events() {
    let cap = 8 * 1024;
    let h = host_with(Config {
        max_queued_bytes: cap,
        ..Config::default()
    });
    let (g, _evt, ch) = boot(&h);
    let mut c = Client::new(RingTransport::new(g.xenstore_page().unwrap(), ch).unwrap());
    c.watch("data/w", b"tok").unwrap();
    assert!(c
        .next_event(Some(Duration::from_secs(5)))
        .unwrap()
        .is_some());
    let mut c0 = inproc::client(&h.xs, DomId(0));
    let node = format!("/local/domain/{}/data/w", g.id().0);
    let writes = 3000;
    for i in 0..writes {
        c0.write(&node, i.to_string().as_bytes()).unwrap();
        if i % 500 == 0 {
            for conn in h.xs.connections_of(g.id()) {
                assert!(conn.queue.queued_bytes() <= cap);
            }
        }
    }
    let conns = h.xs.connections_of(g.id());
    assert_eq!(conns.len(), 1);
    assert!(conns[0].queue.queued_bytes() <= cap);
    let dropped = conns[0].queue.dropped_events();
    assert!(dropped > 0, "nothing dropped");
    // Other guests and dom0 are served meanwhile.
    let (g2, _e2, ch2) = boot(&h);
    let mut c2 = Client::new(RingTransport::new(g2.xenstore_page().unwrap(), ch2).unwrap());
    c2.write("x", b"y").unwrap();
    // The stalled guest's reply is not dropped.
    assert_eq!(
        c.read("data/w").unwrap(),
        (writes - 1).to_string().as_bytes()
    );
    let mut kept = 0;
    while c.pending_event().is_some() {
        kept += 1;
    }
    assert_eq!(kept + dropped, writes as u64);
}

/// A peer ringing the guest's XenStore event channel every 2 ms without
/// writing a byte must not stretch a timed wait for a reply or a watch
/// event: `recv` with a 300 ms timeout returns nothing, not before 300 ms
/// and well before the storm ends.
#[test]
fn doorbell_storm_does_not_extend_a_ring_transport_timeout() {
    use std::sync::atomic::AtomicBool;
    use xenshare::store::client::Transport;
    const TIMEOUT: Duration = Duration::from_millis(300);
    const BOUND: Duration = Duration::from_secs(3);
    let hv = Hypervisor::new();
    let dom0 = hv
        .create_domain_with_id(DomId(0), DomainConfig::default())
        .unwrap();
    let g = hv.create_domain(DomainConfig::default()).unwrap();
    g.build_xenstore_page(dom0.id()).unwrap();
    let ch = Channel::alloc_unbound(&g.evtchn().unwrap(), dom0.id()).unwrap();
    let port = ch.port();
    let mut tr = RingTransport::new(g.xenstore_page().unwrap(), ch).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let storm = s.spawn(|| {
            let chan = Channel::bind(&dom0.evtchn().unwrap(), g.id(), port).unwrap();
            let t = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < 10 * BOUND {
                chan.notify().unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        let t = Instant::now();
        let r = tr.recv(Some(TIMEOUT));
        let took = t.elapsed();
        let storming = !storm.is_finished();
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert!(storming, "the storm ended first");
        assert!(storm.join().unwrap() > 20);
        assert!(took >= TIMEOUT, "returned early: {took:?}");
        assert!(took < BOUND, "took {took:?}");
    });
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// One thread serves every guest: sixteen guests, each on its own thread,
/// make requests at the same time and each gets a watch event caused by
/// dom0, while no server thread per guest exists.
#[test]
fn one_thread_serves_many_guests_at_once() {
    const GUESTS: usize = 16;
    let h = host();
    let (doms, chans): (Vec<_>, Vec<_>) = (0..GUESTS)
        .map(|_| {
            let (g, evt, ch) = boot(&h);
            ((g, evt), ch)
        })
        .unzip();
    let mut c0 = inproc::client(&h.xs, DomId(0));
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = doms
            .iter()
            .zip(chans)
            .map(|((g, _), ch)| {
                let page = g.xenstore_page().unwrap();
                let tx = tx.clone();
                s.spawn(move || {
                    let mut c = Client::new(RingTransport::new(page, ch).unwrap());
                    let t = Some(Duration::from_secs(10));
                    c.watch("data/ping", b"p").unwrap();
                    assert_eq!(c.next_event(t).unwrap().unwrap().path, "data/ping");
                    tx.send(()).unwrap();
                    for i in 0..100u32 {
                        c.write("data/x", i.to_string().as_bytes()).unwrap();
                        assert_eq!(c.read("data/x").unwrap(), i.to_string().as_bytes());
                    }
                    let ev = c.next_event(t).unwrap().expect("no event from dom0");
                    assert_eq!(ev.path, "data/ping");
                })
            })
            .collect();
        drop(tx);
        for _ in 0..GUESTS {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("a guest could not set its watch");
        }
        // Every guest is attached and talking; none has a thread of its
        // own in the daemon (they were named xenstored-d<domid>).
        for (g, _) in &doms {
            assert!(h._rings.attached().contains(&g.id()));
        }
        let per_guest: Vec<String> = thread_names()
            .into_iter()
            .filter(|n| n.starts_with("xenstored-d"))
            .collect();
        assert!(per_guest.is_empty(), "{per_guest:?}");
        for (g, _) in &doms {
            c0.write(&format!("/local/domain/{}/data/ping", g.id().0), b"!")
                .unwrap();
        }
        for w in workers {
            w.join().unwrap();
        }
    });
}

/// A guest that rewrites the daemon's own index of its ring (`rsp_prod`,
/// which only the daemon writes) is cut off with `XENSTORE_ERROR_RINGIDX`
/// at its next turn; another guest is unaffected.
#[test]
fn guest_rewriting_the_daemons_index_is_cut_off() {
    corrupt_ring_cuts_off_only_that_guest(|r| r.bump(xs_ring::RSP_PROD, 7));
}

/// A guest that floods its event channel to the daemon, with nothing in
/// its ring, does not starve another guest: every request of the other
/// guest is answered while the flood goes on.
#[test]
fn guest_flooding_events_does_not_starve_another_guest() {
    let h = host();
    let (bad, _e1, ch_bad) = boot(&h);
    let (good, _e2, ch_good) = boot(&h);
    assert!(common::wait_for(|| h._rings.attached().contains(&bad.id())));
    let mut good_c =
        Client::new(RingTransport::new(good.xenstore_page().unwrap(), ch_good).unwrap());
    let flood = Flooder::spawn(ch_bad);
    for i in 0..50u32 {
        good_c.write("n", i.to_string().as_bytes()).unwrap();
        assert_eq!(good_c.read("n").unwrap(), i.to_string().as_bytes());
    }
    let (sent, _ch) = flood.stop();
    assert!(sent > 0, "the flood happened");
}
