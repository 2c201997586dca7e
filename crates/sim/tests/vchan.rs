//! vchan over the emulator: data integrity for every ring placement, a
//! model-based test of interleaved I/O, malicious and dying peers, and
//! reconnection.

use std::collections::VecDeque;
use std::time::Duration;
use xenshare_testkit::adversary::{vchan_ring, RawIndices};
use xenshare_testkit::give_home;

use proptest::prelude::*;
use xenshare::error::DeviceError;
use xenshare::store::client::Client;
use xenshare::store::perms::{Perm, PermKind, Perms};
use xenshare::vchan::{
    client_init, server_init, ClientMem, ServerMem, Vchan, VchanError, VchanSide,
};
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn, SimGrantBackend, SimMapper};
use xenshare_xenstored::inproc::{self, InProcTransport};
use xenshare_xenstored::{Config, Daemon};

type Server = Vchan<ServerMem<SimGrantBackend>, SimEvtchn>;
type Cli = Vchan<ClientMem<SimMapper>, SimEvtchn>;

struct World {
    _hv: Hypervisor,
    srv: Domain,
    cli: Domain,
    xs: Daemon,
}

fn world() -> World {
    let hv = Hypervisor::new();
    let cfg = DomainConfig {
        mem_pages: 2048,
        ..Default::default()
    };
    let _dom0 = hv.create_domain_with_id(DomId(0), cfg).unwrap();
    let srv = hv.create_domain(cfg).unwrap();
    let cli = hv.create_domain(cfg).unwrap();
    let xs = Daemon::new(Config::default());
    // The toolstack's job: each guest owns its home directory.
    let mut c0 = inproc::client(&xs, DomId(0));
    for d in [&srv, &cli] {
        give_home(&mut c0, d.id()).unwrap();
    }
    World {
        _hv: hv,
        srv,
        cli,
        xs,
    }
}

impl World {
    fn path(&self) -> String {
        format!(
            "/local/domain/{}/data/vchan/{}/1",
            self.srv.id().0,
            self.cli.id().0
        )
    }
    fn xs(&self, d: &Domain) -> Client<InProcTransport> {
        inproc::client(&self.xs, d.id())
    }
    fn server(&self, read_min: usize, write_min: usize) -> Server {
        let evt = self.srv.evtchn().unwrap();
        server_init(
            self.srv.exporter(),
            &evt,
            &mut self.xs(&self.srv),
            self.cli.id(),
            &self.path(),
            read_min,
            write_min,
        )
        .unwrap()
    }
    fn client(&self) -> Result<Cli, VchanError> {
        let evt = self.cli.evtchn().unwrap();
        client_init(
            self.cli.importer(),
            &evt,
            &mut self.xs(&self.cli),
            self.srv.id(),
            &self.path(),
        )
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn every_ring_placement_carries_data_both_ways() {
    // (read_min, write_min) of the server -> orders (10,11), (11,10), (11,13), (13,11), (12,20), (16,16)
    for (r, w) in [
        (1024, 2048),
        (2048, 1024),
        (2048, 8192),
        (8192, 2048),
        (4096, 1 << 20),
        (65536, 65536),
    ] {
        let wd = world();
        let mut s = wd.server(r, w);
        let mut c = wd.client().unwrap();
        assert!(s.is_connected() && c.is_open());
        assert_eq!(s.read_ring_size(), c.write_ring_size());
        assert_eq!(s.write_ring_size(), c.read_ring_size());
        s.set_timeout(Some(Duration::from_secs(10)));
        c.set_timeout(Some(Duration::from_secs(10)));
        // Several ring-fulls each way, with writes that straddle the wrap.
        let total = 3 * s.read_ring_size().max(s.write_ring_size()) + 777;
        let up = pattern(total, 1);
        let down = pattern(total, 2);
        let t = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            let mut n = 0;
            while n < total {
                n += s.read(&mut got[n..]).unwrap();
            }
            let mut sent = 0;
            while sent < total {
                sent += s.write(&down[sent..(sent + 1000).min(total)]).unwrap();
            }
            (got, s)
        });
        let mut sent = 0;
        while sent < total {
            sent += c.write(&up[sent..(sent + 999).min(total)]).unwrap();
        }
        let mut got = vec![0u8; total];
        let mut n = 0;
        while n < total {
            n += c.read(&mut got[n..]).unwrap();
        }
        let (srv_got, _s) = t.join().unwrap();
        assert_eq!(srv_got, up, "client->server corrupted for ({r},{w})");
        assert_eq!(
            got,
            pattern(total, 2),
            "server->client corrupted for ({r},{w})"
        );
    }
}

#[test]
fn xenstore_keys_are_published_with_libxenvchan_permissions() {
    let wd = world();
    let _s = wd.server(1024, 2048);
    let mut x0 = wd.xs(&wd.cli);
    let p = wd.path();
    let perms = inproc::client(&wd.xs, DomId(0))
        .get_perms(&format!("{p}/ring-ref"))
        .unwrap();
    assert_eq!(
        perms,
        Perms::from_entries(vec![
            Perm {
                domid: wd.srv.id(),
                kind: PermKind::None
            },
            Perm {
                domid: wd.cli.id(),
                kind: PermKind::Read
            },
        ])
        .unwrap()
    );
    assert!(x0.read(&format!("{p}/event-channel")).is_ok());
    // A third domain may not read them.
    let other = wd._hv.create_domain(DomainConfig::default()).unwrap();
    assert!(inproc::client(&wd.xs, other.id())
        .read(&format!("{p}/ring-ref"))
        .is_err());
}

#[derive(Debug, Clone)]
enum IoOp {
    CliWrite(usize),
    CliSend(usize),
    SrvRead(usize),
    SrvRecv(usize),
    SrvWrite(usize),
    SrvSend(usize),
    CliRead(usize),
    CliRecv(usize),
}

fn io_op() -> impl Strategy<Value = IoOp> {
    let n = 0..5000usize;
    prop_oneof![
        n.clone().prop_map(IoOp::CliWrite),
        n.clone().prop_map(IoOp::CliSend),
        n.clone().prop_map(IoOp::SrvRead),
        n.clone().prop_map(IoOp::SrvRecv),
        n.clone().prop_map(IoOp::SrvWrite),
        n.clone().prop_map(IoOp::SrvSend),
        n.clone().prop_map(IoOp::CliRead),
        n.prop_map(IoOp::CliRecv),
    ]
}

fn model_write(q: &mut VecDeque<u8>, cap: usize, data: &[u8], packet: bool) -> usize {
    let space = cap - q.len();
    let n = if packet {
        if data.len() <= space {
            data.len()
        } else {
            0
        }
    } else {
        data.len().min(space)
    };
    q.extend(&data[..n]);
    n
}

fn model_read(q: &mut VecDeque<u8>, want: usize, packet: bool) -> Vec<u8> {
    let n = if packet {
        if q.len() >= want {
            want
        } else {
            0
        }
    } else {
        want.min(q.len())
    };
    q.drain(..n).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_io_matches_two_queues(
        sizes in prop_oneof![Just((1024usize, 2048usize)), Just((2048, 1024)), Just((4096, 1 << 20))],
        ops in proptest::collection::vec(io_op(), 1..80),
    ) {
        let wd = world();
        let mut s = wd.server(sizes.0, sizes.1);
        let mut c = wd.client().unwrap();
        s.set_blocking(false);
        c.set_blocking(false);
        let (up_cap, down_cap) = (s.read_ring_size(), s.write_ring_size());
        let (mut up, mut down) = (VecDeque::new(), VecDeque::new());
        let mut seed = 0u8;
        for op in ops {
            seed = seed.wrapping_add(1);
            match op {
                IoOp::CliWrite(n) | IoOp::CliSend(n) => {
                    let packet = matches!(op, IoOp::CliSend(_));
                    let data = pattern(n, seed);
                    let r = if packet { c.send(&data) } else { c.write(&data) };
                    if packet && n > up_cap {
                        prop_assert!(matches!(r, Err(VchanError::TooBig { .. })), "oversized packet accepted");
                        continue;
                    }
                    prop_assert_eq!(r.unwrap(), model_write(&mut up, up_cap, &data, packet));
                }
                IoOp::SrvWrite(n) | IoOp::SrvSend(n) => {
                    let packet = matches!(op, IoOp::SrvSend(_));
                    let data = pattern(n, seed);
                    let r = if packet { s.send(&data) } else { s.write(&data) };
                    if packet && n > down_cap {
                        prop_assert!(matches!(r, Err(VchanError::TooBig { .. })), "oversized packet accepted");
                        continue;
                    }
                    prop_assert_eq!(r.unwrap(), model_write(&mut down, down_cap, &data, packet));
                }
                IoOp::SrvRead(n) | IoOp::SrvRecv(n) => {
                    let packet = matches!(op, IoOp::SrvRecv(_));
                    let mut buf = vec![0u8; n];
                    let r = if packet { s.recv(&mut buf) } else { s.read(&mut buf) };
                    if packet && n > up_cap {
                        prop_assert!(matches!(r, Err(VchanError::TooBig { .. })), "oversized packet accepted");
                        continue;
                    }
                    let got = r.unwrap();
                    let want = model_read(&mut up, n, packet);
                    prop_assert_eq!(&buf[..got], &want[..]);
                }
                IoOp::CliRead(n) | IoOp::CliRecv(n) => {
                    let packet = matches!(op, IoOp::CliRecv(_));
                    let mut buf = vec![0u8; n];
                    let r = if packet { c.recv(&mut buf) } else { c.read(&mut buf) };
                    if packet && n > down_cap {
                        prop_assert!(matches!(r, Err(VchanError::TooBig { .. })), "oversized packet accepted");
                        continue;
                    }
                    let got = r.unwrap();
                    let want = model_read(&mut down, n, packet);
                    prop_assert_eq!(&buf[..got], &want[..]);
                }
            }
            prop_assert_eq!(s.data_ready().unwrap(), up.len());
            prop_assert_eq!(c.data_ready().unwrap(), down.len());
            prop_assert_eq!(c.buffer_space().unwrap(), up_cap - up.len());
            prop_assert_eq!(s.buffer_space().unwrap(), down_cap - down.len());
        }
    }
}

#[test]
fn corrupted_indices_break_the_vchan_instead_of_overreading() {
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let c = wd.client().unwrap();
    s.set_blocking(false);
    // The client (malicious) claims to have produced 1 MiB into a 4 KiB ring.
    RawIndices::new(c.side().ctrl().unwrap()).set(vchan_ring::LEFT_PROD, 1 << 20);
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf), Err(VchanError::Corrupt("read")));
    assert_eq!(
        s.read(&mut buf),
        Err(VchanError::Broken),
        "broken stays broken"
    );
    assert_eq!(s.write(b"x"), Err(VchanError::Broken));
    // A consumer index moved backwards past the producer is caught too.
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let c = wd.client().unwrap();
    s.set_blocking(false);
    RawIndices::new(c.side().ctrl().unwrap()).set(vchan_ring::RIGHT_CONS, 0x8000_0000);
    assert_eq!(s.write(b"hello"), Err(VchanError::Corrupt("write")));
}

#[test]
fn orders_changed_after_connect_are_ignored() {
    let wd = world();
    let mut s = wd.server(1024, 2048);
    let mut c = wd.client().unwrap();
    // The server (malicious) rewrites the orders to claim 1 MiB rings.
    let ctrl = s.side().ctrl().unwrap();
    ctrl.write(16, &20u16.to_le_bytes()).unwrap();
    ctrl.write(18, &20u16.to_le_bytes()).unwrap();
    assert_eq!(c.write_ring_size(), 1024);
    assert_eq!(c.read_ring_size(), 2048);
    c.set_blocking(false);
    assert_eq!(
        c.write(&vec![7u8; 5000]).unwrap(),
        1024,
        "still bounded by the real ring"
    );
    let mut buf = vec![0u8; 5000];
    s.set_blocking(false);
    assert_eq!(s.read(&mut buf).unwrap(), 1024);
}

#[test]
fn client_rejects_bad_server_pages() {
    let wd = world();
    let s = wd.server(1024, 2048);
    // Equal in-page orders, then an order out of range: the client refuses.
    for (l, r) in [(10u16, 10u16), (9, 12), (12, 21)] {
        let ctrl = s.side().ctrl().unwrap();
        ctrl.write(16, &l.to_le_bytes()).unwrap();
        ctrl.write(18, &r.to_le_bytes()).unwrap();
        assert!(
            matches!(wd.client(), Err(VchanError::BadOrders { .. })),
            "({l},{r}) accepted"
        );
    }
    // A zero ring-ref is refused before anything is mapped.
    let mut x = wd.xs(&wd.srv);
    x.write(&format!("{}/ring-ref", wd.path()), b"0").unwrap();
    assert!(matches!(
        wd.client(),
        Err(VchanError::Core(DeviceError::BadKey { ref key, .. })) if key == "ring-ref"
    ));
}

#[test]
fn client_that_never_unmaps_sends_server_pages_to_quarantine() {
    let wd = world();
    let s = wd.server(4096, 8192);
    // A malicious client maps the pages itself and never lets go.
    let ring_ref: u32 = String::from_utf8(
        wd.xs(&wd.cli)
            .read(&format!("{}/ring-ref", wd.path()))
            .unwrap(),
    )
    .unwrap()
    .parse()
    .unwrap();
    let kept = wd
        .cli
        .importer()
        .map_rw(wd.srv.id(), &[xenshare::GrantRef(ring_ref)])
        .unwrap();
    let before = wd.srv.exporter().stats();
    drop(s); // close: the control page is still mapped -> quarantine
    let after = wd.srv.exporter().stats();
    assert_eq!(after.quarantined, before.quarantined + 1);
    assert_eq!(after.live, 0, "ring pages nobody mapped were revoked");
    drop(kept);
    assert_eq!(wd.srv.exporter().reclaim(8).reclaimed, 1);
}

#[test]
fn dead_peer_is_seen_and_data_drains_before_eof() {
    // The client dies: the server sees cli_live cleared by unmap-notify.
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let mut c = wd.client().unwrap();
    c.write(b"last words").unwrap();
    std::mem::forget(c); // the process "crashes": no close
    wd.cli.destroy().unwrap();
    assert!(!s.is_open());
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"last words");
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF after draining");
    assert_eq!(
        s.write(b"anyone?"),
        Err(VchanError::Core(DeviceError::Closed))
    );

    // The server dies: the client sees srv_live cleared by the export-side notify.
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let mut c = wd.client().unwrap();
    s.write(b"bye").unwrap();
    std::mem::forget(s);
    wd.srv.destroy().unwrap();
    assert!(!c.is_open());
    assert_eq!(c.read(&mut buf).unwrap(), 3);
    assert_eq!(c.read(&mut buf).unwrap(), 0);
}

#[test]
fn blocking_reader_wakes_on_close_and_on_data() {
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let mut c = wd.client().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).unwrap();
        let first = buf[..n].to_vec();
        let eof = s.read(&mut buf).unwrap();
        (first, eof)
    });
    std::thread::sleep(Duration::from_millis(50));
    c.write(b"ping").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.close();
    let (first, eof) = t.join().unwrap();
    assert_eq!(first, b"ping");
    assert_eq!(eof, 0);
    // A timed-out blocking read reports it.
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let _c = wd.client().unwrap();
    s.set_timeout(Some(Duration::from_millis(20)));
    assert_eq!(
        s.read(&mut [0u8; 4]),
        Err(VchanError::Core(DeviceError::Timeout))
    );
}

#[test]
fn server_accepts_a_new_client_after_the_old_one_closed() {
    let wd = world();
    for round in 0..3u8 {
        let mut s = wd.server(4096, 4096);
        let mut c = wd.client().unwrap();
        c.send(&[round; 100]).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(s.recv(&mut buf).unwrap(), 100);
        assert_eq!(buf, [round; 100]);
        c.close();
        assert!(!s.is_open());
        drop(s);
    }
    let st = wd.srv.exporter().stats();
    assert_eq!(
        (st.live, st.quarantined),
        (0, 0),
        "every round's grants were revoked"
    );
}

/// A peer that rings the doorbell every 2 ms without writing a byte (or
/// without reading one) must not keep a timed blocking call blocked: the
/// timeout is one overall deadline, not restarted on every wake-up. Checks
/// a 300 ms read and a 300 ms write (ring full) while the storm goes on:
/// each returns `TimedOut`, not before 300 ms, and well before the storm
/// ends (it only ends when both calls are done, or after 30 s).
#[test]
fn doorbell_storm_without_data_does_not_extend_a_timeout() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;
    use xenshare::platform::EventChannels;

    const TIMEOUT: Duration = Duration::from_millis(300);
    const BOUND: Duration = Duration::from_secs(3);
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let evt = wd.cli.evtchn().unwrap();
    let c = client_init(
        wd.cli.importer(),
        &evt,
        &mut wd.xs(&wd.cli),
        wd.srv.id(),
        &wd.path(),
    )
    .unwrap();
    let port = c.port();
    let done = AtomicBool::new(false);
    let rings = AtomicU64::new(0);
    std::thread::scope(|sc| {
        let storm = sc.spawn(|| {
            let t = Instant::now();
            while !done.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(30) {
                evt.notify(port).unwrap();
                rings.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let victim = sc.spawn(|| {
            s.set_timeout(Some(TIMEOUT));
            // Read: nothing is ever written.
            let t = Instant::now();
            let read = s.read(&mut [0u8; 16]);
            let read_took = t.elapsed();
            // Write: fill the ring (the client never reads), then block.
            s.set_blocking(false);
            let fill = vec![0xA5u8; s.write_ring_size()];
            let mut n = 0;
            while n < fill.len() {
                n += s.write(&fill[n..]).unwrap();
            }
            s.set_blocking(true);
            let t = Instant::now();
            let write = s.write(b"x");
            let write_took = t.elapsed();
            (read, read_took, write, write_took)
        });
        let t = Instant::now();
        while !victim.is_finished() && t.elapsed() < 2 * BOUND {
            std::thread::sleep(Duration::from_millis(10));
        }
        let finished = victim.is_finished();
        let storming = !storm.is_finished();
        done.store(true, Ordering::Relaxed);
        assert!(
            finished,
            "blocked for {:?} under a doorbell storm",
            t.elapsed()
        );
        assert!(storming, "the storm ended before the victim returned");
        let (read, read_took, write, write_took) = victim.join().unwrap();
        assert_eq!(read, Err(VchanError::Core(DeviceError::Timeout)));
        assert_eq!(write, Err(VchanError::Core(DeviceError::Timeout)));
        for took in [read_took, write_took] {
            assert!(took >= TIMEOUT, "returned early: {took:?}");
            assert!(took < BOUND, "took {took:?}");
        }
        // The storm really did ring during the calls.
        assert!(rings.load(Ordering::Relaxed) > 20, "{rings:?}");
    });
    drop(c);
}

/// A server (or anyone who can write its XenStore directory) publishing
/// hostile numbers: signs, hex, inner spaces, empty, past `u32`. The client
/// refuses each with a typed `BadKey` before mapping anything.
#[test]
fn client_refuses_hostile_xenstore_keys() {
    let wd = world();
    let _s = wd.server(1024, 1024);
    let mut x = wd.xs(&wd.srv);
    let dir = wd.path();
    let good_ref = x.read(&format!("{dir}/ring-ref")).unwrap();
    let good_port = x.read(&format!("{dir}/event-channel")).unwrap();
    for key in ["ring-ref", "event-channel"] {
        for bad in ["-1", "+5", "0x5", "1 2", "", "4294967296", "abc", "\u{663}"] {
            x.write(&format!("{dir}/{key}"), bad.as_bytes()).unwrap();
            match wd.client() {
                Err(VchanError::Core(DeviceError::BadKey { key: k, .. })) => {
                    assert_eq!(k, key, "{bad:?}")
                }
                other => panic!("{key}={bad:?}: {other:?}"),
            }
            assert_eq!(wd.cli.importer().stats().mapped, 0, "{key}={bad:?}");
        }
        x.write(&format!("{dir}/ring-ref"), &good_ref).unwrap();
        x.write(&format!("{dir}/event-channel"), &good_port)
            .unwrap();
    }
    // The honest keys still work.
    assert!(wd.client().is_ok());
}

/// XSA-403: the pages a vchan server grants (control page and both rings,
/// in-page and external) carry nothing but the vchan: after the server's
/// memory was full of other data, every byte the client can see before the
/// first write is zero, except the control page's own fields.
#[test]
fn server_pages_carry_no_stale_data() {
    let wd = world();
    assert_eq!(wd.srv.dirty_free_memory(256, 0xEE), 256);
    for (rd, wr) in [(1024, 1024), (8192, 16384)] {
        let s = wd.server(rd, wr);
        let c = wd.client().unwrap();
        let side = c.side();
        let mut pages = vec![side.ctrl().unwrap().read_only()];
        pages.extend(side.external_ro(true));
        pages.extend(side.external_ro(false));
        for (i, m) in pages.iter().enumerate() {
            let mut b = vec![0u8; m.len()];
            m.read(0, &mut b).unwrap();
            assert!(
                !b.contains(&0xEE),
                "({rd},{wr}) page set {i} carries old server data"
            );
        }
        drop((c, s));
    }
}

#[derive(Debug, Clone)]
enum BatchOp {
    Write(usize),
    Send(usize),
    Flush,
    Read(usize),
    Recv(usize),
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    let n = 0..3000usize;
    prop_oneof![
        n.clone().prop_map(BatchOp::Write),
        n.clone().prop_map(BatchOp::Send),
        Just(BatchOp::Flush),
        n.clone().prop_map(BatchOp::Read),
        n.prop_map(BatchOp::Recv),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Write batching against a model: the bytes a batching client wrote
    /// reach the server in order and complete, but only once published —
    /// when `batch` of them are pending, on flush, or when the ring is full
    /// and the writer would wait — and the ring's space accounts for
    /// unpublished bytes too.
    #[test]
    fn batched_writes_are_published_by_threshold_flush_or_full_ring(
        batch in prop_oneof![Just(1usize), Just(64), Just(700), Just(4096)],
        ops in proptest::collection::vec(batch_op(), 1..80),
    ) {
        let wd = world();
        let mut s = wd.server(4096, 1024);
        let mut c = wd.client().unwrap();
        s.set_blocking(false);
        c.set_blocking(false);
        c.set_write_batch(batch);
        let cap = s.read_ring_size();
        let mut up = VecDeque::new();
        let mut visible = 0usize;
        let mut seed = 0u8;
        for op in ops {
            seed = seed.wrapping_add(1);
            match op {
                BatchOp::Write(n) | BatchOp::Send(n) => {
                    let packet = matches!(op, BatchOp::Send(_));
                    let data = pattern(n, seed);
                    let r = if packet { c.send(&data) } else { c.write(&data) };
                    if packet && n > cap {
                        prop_assert!(matches!(r, Err(VchanError::TooBig { .. })), "oversized packet accepted");
                        continue;
                    }
                    let space = cap - up.len();
                    let full = n > 0 && if packet { space < n } else { space == 0 };
                    let got = model_write(&mut up, cap, &data, packet);
                    prop_assert_eq!(r.unwrap(), got);
                    if full || (got > 0 && up.len() - visible >= batch.min(c.write_ring_size())) {
                        visible = up.len();
                    }
                }
                BatchOp::Flush => {
                    c.flush().unwrap();
                    visible = up.len();
                }
                BatchOp::Read(n) | BatchOp::Recv(n) => {
                    let packet = matches!(op, BatchOp::Recv(_));
                    let mut buf = vec![0u8; n];
                    let r = if packet { s.recv(&mut buf) } else { s.read(&mut buf) };
                    if packet && n > cap {
                        prop_assert!(matches!(r, Err(VchanError::TooBig { .. })), "oversized packet accepted");
                        continue;
                    }
                    let take = if packet { if visible >= n { n } else { 0 } } else { n.min(visible) };
                    let want: Vec<u8> = up.drain(..take).collect();
                    visible -= take;
                    prop_assert_eq!(&buf[..r.unwrap()], &want[..]);
                }
            }
            prop_assert_eq!(s.data_ready().unwrap(), visible);
            prop_assert_eq!(c.buffer_space().unwrap(), cap - up.len());
        }
        // Closing publishes what is still pending: nothing is lost.
        c.close();
        let mut rest = vec![0u8; cap];
        let n = s.read(&mut rest).unwrap();
        prop_assert_eq!(n, up.len());
        prop_assert!(rest[..n].iter().eq(up.iter()));
    }
}

#[test]
fn a_batching_writer_publishes_before_it_waits_for_a_reply() {
    let wd = world();
    let mut s = wd.server(4096, 4096);
    let mut c = wd.client().unwrap();
    c.set_write_batch(1 << 20);
    c.set_timeout(Some(Duration::from_secs(60)));
    s.set_timeout(Some(Duration::from_secs(60)));
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 5];
        let mut got = 0;
        while got < 5 {
            got += s.read(&mut buf[got..]).unwrap();
        }
        s.write(&buf).unwrap();
        s
    });
    // The request sits unpublished in the ring until the blocking read
    // below publishes it; without that both sides would wait for ever (the
    // timeouts turn that into a failure).
    assert_eq!(c.write(b"hello").unwrap(), 5);
    let mut reply = [0u8; 5];
    let mut got = 0;
    while got < 5 {
        got += c.read(&mut reply[got..]).unwrap();
    }
    assert_eq!(&reply, b"hello");
    drop(echo.join().unwrap());
}

/// 256 vchans set up at once between two domains, with the server domain's
/// whole transaction quota (10, the default of C xenstored and ours) held
/// by other connections the whole time: set-up must need no transaction,
/// and every pair must then carry data both ways.
#[test]
fn vchan_setup_needs_no_transaction_256_concurrent_pairs_succeed_with_default_quotas() {
    const PAIRS: usize = 256;
    let wd = world();
    let quota = Config::default().max_transactions;
    let mut holders: Vec<_> = (0..quota).map(|_| wd.xs(&wd.srv)).collect();
    for h in &mut holders {
        h.transaction_start().unwrap();
    }
    let refused = wd.xs(&wd.srv).transaction_start().unwrap_err();
    assert_eq!(
        refused.xs(),
        Some(xenshare::store::XsError::ENOSPC),
        "the server domain's transaction quota is full"
    );
    let barrier = std::sync::Barrier::new(PAIRS);
    let wd = &wd;
    let barrier = &barrier;
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..PAIRS)
            .map(|i| {
                sc.spawn(move || -> Result<(), String> {
                    let path = format!("/local/domain/{}/data/vchan/many/{i}", wd.srv.id().0);
                    let (sev, cev) = (wd.srv.evtchn().unwrap(), wd.cli.evtchn().unwrap());
                    let (mut sxs, mut cxs) = (wd.xs(&wd.srv), wd.xs(&wd.cli));
                    barrier.wait();
                    let mut s = server_init(
                        wd.srv.exporter(),
                        &sev,
                        &mut sxs,
                        wd.cli.id(),
                        &path,
                        1024,
                        2048,
                    )
                    .map_err(|e| format!("server {i}: {e}"))?;
                    let mut c = client_init(wd.cli.importer(), &cev, &mut cxs, wd.srv.id(), &path)
                        .map_err(|e| format!("client {i}: {e}"))?;
                    for v in [&mut s as &mut dyn std::io::Write, &mut c] {
                        v.write_all(&[i as u8]).map_err(|e| e.to_string())?;
                    }
                    let (mut a, mut b) = ([0u8], [0u8]);
                    std::io::Read::read_exact(&mut s, &mut a).map_err(|e| e.to_string())?;
                    std::io::Read::read_exact(&mut c, &mut b).map_err(|e| e.to_string())?;
                    if (a[0], b[0]) != (i as u8, i as u8) {
                        return Err(format!("pair {i} carried {a:?} {b:?}"));
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
    });
    drop(holders);
}

/// A XenStore quota really hit during set-up is a typed error, not a
/// generic store failure.
#[test]
fn vchan_setup_reports_a_xenstore_quota_as_a_typed_error() {
    let hv = Hypervisor::new();
    let _dom0 = hv
        .create_domain_with_id(DomId(0), DomainConfig::default())
        .unwrap();
    let srv = hv.create_domain(DomainConfig::default()).unwrap();
    let cli = hv.create_domain(DomainConfig::default()).unwrap();
    let xs = Daemon::new(Config {
        max_nodes: 3,
        ..Config::default()
    });
    let mut c0 = inproc::client(&xs, DomId(0));
    let home = format!("/local/domain/{}", srv.id().0);
    c0.mkdir(&home).unwrap();
    c0.set_perms(&home, &Perms::owned_by(srv.id(), PermKind::None))
        .unwrap();
    let r = server_init(
        srv.exporter(),
        &srv.evtchn().unwrap(),
        &mut inproc::client(&xs, srv.id()),
        cli.id(),
        &format!("{home}/data/vchan/q/1"),
        1024,
        2048,
    );
    assert_eq!(
        r.err(),
        Some(VchanError::StoreQuota(xenshare::store::XsError::ENOSPC))
    );
}
