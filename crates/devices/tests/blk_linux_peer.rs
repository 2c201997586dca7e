//! Linux's block back end, as met in the Xen lab (xenshare's blkfront in a
//! domU on dom0's kernel `xen-blkback`), pinned on the emulator:
//!
//! * blkback publishes only `max-ring-page-order` and the indirect limit
//!   at InitWait; flush, barrier, discard and persistent grants appear in
//!   its `connect()`, with `sectors`. A front end that reads its features
//!   at InitWait only never flushes and never uses persistent grants.
//! * blkback unmaps the ring and the persistent grants only when the front
//!   end goes Closed (on Closing it just echoes Closing). A front end that
//!   revokes at the back end's Closing finds them all still mapped.
//! * In the domU the front end grants through gntalloc, where revocation
//!   never gives memory back (`Revoked::Retired`): the emulator's
//!   `KernelDefers` model runs the same front end through random I/O.

mod blk_common;

use std::time::{Duration, Instant};

use blk_common::*;
use xenshare::blk::{BackConfig, FrontConfig};
use xenshare::ring::BackRing;
use xenshare::store::xenbus::{read_state, wait_for_state, write_state, XenbusState};
use xenshare::GrantRef;
use xenshare_abi::blkif::{
    BlkifRequest, BlkifResponse, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE, BLKIF_RSP_OKAY,
};
use xenshare_devices::blk::{guest_config, BlkWorld, SimFront};
use xenshare_sim::{DomainConfig, RevocationModel};

type Ring<'a> = BackRing<xenshare::mem::SharedMem<'a>, BlkifRequest, BlkifResponse>;

/// What Linux's blkback writes at InitWait (its probe).
const AT_INITWAIT: &[(&str, &str)] = &[
    ("feature-max-indirect-segments", "256"),
    ("multi-queue-max-queues", "2"),
    ("max-ring-page-order", "4"),
];

/// What it writes in `connect()`, in one transaction before Connected.
const AT_CONNECT: &[(&str, &str)] = &[
    ("feature-flush-cache", "1"),
    ("discard-granularity", "4096"),
    ("discard-alignment", "0"),
    ("discard-secure", "0"),
    ("feature-discard", "1"),
    ("feature-barrier", "1"),
    ("feature-persistent", "1"),
    ("sectors", "8192"),
    ("info", "0"),
    ("sector-size", "512"),
    ("physical-sector-size", "512"),
];

/// The real front end on a hand-made back end that publishes its keys in
/// Linux's order.
fn connect_linux_style(w: &BlkWorld) -> (SimFront, FakeBack) {
    let mut fe = w.frontend(quick_front()).unwrap();
    let fb = std::thread::scope(|s| {
        let t = s.spawn(|| fake_backend_with_disk(w, AT_INITWAIT, AT_CONNECT));
        let mut xs = w.client(&w.guest);
        drop(fe.connect(&mut xs).unwrap());
        t.join().unwrap()
    });
    (fe, fb)
}

fn next_request(ring: &mut Ring<'_>, fb: &FakeBack) -> BlkifRequest {
    let t = Instant::now();
    loop {
        if let Some(r) = ring.next_request().unwrap() {
            return r;
        }
        assert!(t.elapsed() < T, "no request arrived");
        if fb
            .chan
            .wait(Some(Duration::from_millis(50)))
            .unwrap()
            .is_some()
        {
            fb.chan.unmask().unwrap();
        }
    }
}

fn respond(ring: &mut Ring<'_>, fb: &FakeBack, id: u64, op: u8) {
    ring.push_response(&BlkifResponse {
        id,
        operation: op,
        status: BLKIF_RSP_OKAY,
        ..Default::default()
    })
    .unwrap();
    ring.push_responses().unwrap();
    fb.chan.notify().unwrap();
}

#[test]
fn features_linux_blkback_publishes_at_connect_are_used() {
    let w = world();
    let (mut fe, fb) = connect_linux_style(&w);
    let mut disk = fe.disk().unwrap();
    let info = *disk.info();
    assert!(info.features.flush, "{info:?}");
    assert!(info.features.barrier, "{info:?}");
    assert!(info.features.discard, "{info:?}");
    assert_eq!(info.features.discard_granularity, 4096);
    assert!(
        info.persistent,
        "persistent grants offered at connect: {info:?}"
    );
    assert_eq!(info.features.max_indirect_segments, 256);
    assert!(info.max_segments > 11, "{info:?}");
    assert_eq!(info.ring_order, 1, "the order offered at InitWait is used");
    // And they work: a flush goes out as FLUSH_DISKCACHE with no segment.
    let mut ring = Ring::attach(fb.ring.mem()).unwrap();
    let tag = disk.submit_flush().unwrap();
    let req = next_request(&mut ring, &fb);
    assert_eq!(req.operation, BLKIF_OP_FLUSH_DISKCACHE);
    assert_eq!(req.nr_segments, 0);
    respond(&mut ring, &fb, req.id, req.operation);
    let c = disk.wait().unwrap().expect("a completion");
    assert_eq!(c.tag, tag);
    assert_eq!(c.result, Ok(()));
}

/// Linux's close order: Closing is echoed with everything still mapped;
/// only the front end's Closed makes blkback unmap (ring and persistent
/// grants) and go Closed. The front end must revoke after that, and then
/// nothing is left in quarantine.
#[test]
fn close_revokes_after_blkback_unmaps_on_the_front_ends_closed() {
    let w = world();
    let exporter = w.guest.exporter().clone();
    let (mut fe, fb) = connect_linux_style(&w);
    let mut xs = w.client(&w.guest);
    let mut disk = fe.disk().unwrap();
    assert!(disk.info().persistent);
    // One write through a persistent grant, which blkback keeps mapped.
    let persistent = {
        let mut ring = Ring::attach(fb.ring.mem()).unwrap();
        let tag = disk.submit_write(0, &[0x5a; 4096]).unwrap();
        let req = next_request(&mut ring, &fb);
        assert_eq!(req.operation, BLKIF_OP_WRITE);
        let gref = GrantRef(req.seg[0].gref);
        let persistent = w.dom0.importer().map_rw(w.guest.id(), &[gref]).unwrap();
        let mut got = [0u8; 4096];
        persistent.mem().read(0, &mut got).unwrap();
        assert_eq!(got, [0x5a; 4096]);
        respond(&mut ring, &fb, req.id, req.operation);
        assert_eq!(
            disk.wait().unwrap().map(|c| (c.tag, c.result)),
            Some((tag, Ok(())))
        );
        persistent
    };
    let back_dir = back_dir(&w);
    let front_dir = front_dir(&w);
    let linux = std::thread::spawn(move || {
        let mut fb = fb;
        wait_for_state(&mut fb.xs, &front_dir, T, |s| s == XenbusState::Closing).unwrap();
        write_state(&mut fb.xs, &back_dir, XenbusState::Closing).unwrap();
        // Still mapped while the front end is only Closing.
        std::thread::sleep(Duration::from_millis(100));
        wait_for_state(&mut fb.xs, &front_dir, T, |s| s == XenbusState::Closed).unwrap();
        let FakeBack {
            mut xs, ring, chan, ..
        } = fb;
        drop(persistent);
        drop(ring);
        drop(chan);
        write_state(&mut xs, &back_dir, XenbusState::Closed).unwrap();
        xs
    });
    disk.close(&mut xs).expect("a clean close");
    let mut bxs = linux.join().unwrap();
    assert_eq!(
        read_state(&mut bxs, &blk_common::back_dir(&w)).unwrap(),
        XenbusState::Closed
    );
    let rel = fe.release();
    assert_eq!(rel.quarantined, 0, "{rel:?}");
    let st = exporter.stats();
    assert_eq!(st.quarantined, 0, "{st:?}");
    assert_eq!(st.live, 0, "{st:?}");
}

/// The same front end on the gntalloc model (revocation never hands memory
/// back): random I/O against the real back end matches a model, with and
/// without persistent grants, and every revocation is a retirement.
#[test]
fn random_io_on_the_gntalloc_model_matches_and_retires_every_grant() {
    const DISK: u64 = 8 << 20;
    for persistent in [false, true] {
        let w = BlkWorld::new(DomainConfig {
            revocation: RevocationModel::KernelDefers,
            ..guest_config()
        })
        .unwrap();
        w.create_vbd(DEVID).unwrap();
        let img = TmpImage::new("gntalloc");
        let backend = w
            .spawn_backend(img.create(DISK), BackConfig::new(w.guest.id(), DEVID))
            .unwrap();
        let mut fe = w
            .frontend(FrontConfig {
                persistent,
                ..FrontConfig::new(DEVID)
            })
            .unwrap();
        let mut xs = w.client(&w.guest);
        let mut model = vec![0u8; DISK as usize];
        let mut rng = Rng::new(0x6e7a + u64::from(persistent));
        {
            let mut disk = fe.connect(&mut xs).unwrap();
            assert_eq!(disk.info().persistent, persistent);
            assert!(disk.info().max_segments > 11);
            let mut buf = Vec::new();
            for i in 0..300 {
                let len = (1 + rng.below(if i % 4 == 0 { 2048 } else { 64 })) as usize * 512;
                let off = rng.below((DISK - len as u64) / 512 + 1) * 512;
                let range = off as usize..off as usize + len;
                buf.resize(len, 0);
                if rng.below(2) == 0 {
                    rng.fill(&mut buf);
                    disk.write_at(off, &buf).unwrap();
                    model[range].copy_from_slice(&buf);
                } else {
                    disk.read_at(off, &mut buf).unwrap();
                    assert!(
                        buf[..] == model[range],
                        "op {i}: read {len} at {off} differs"
                    );
                }
            }
            disk.flush().unwrap();
            disk.close(&mut xs).unwrap();
        }
        let rel = fe.release();
        drop(fe);
        let (_, runs) = backend.stop().unwrap();
        assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
        assert_eq!(rel.quarantined, 0);
        assert_eq!(img.contents(), model, "persistent {persistent}: image");
        let st = w.guest.exporter().stats();
        assert_eq!(st.live, 0, "{st:?}");
        assert_eq!(st.quarantined, 0, "{st:?}");
        assert!(st.revoked > 0, "{st:?}");
        assert_eq!(
            st.retired, st.revoked,
            "gntalloc never gives pages back: {st:?}"
        );
        // Nothing was granted twice: every share was a fresh allocation.
        assert_eq!(st.granted, st.revoked, "{st:?}");
    }
}
