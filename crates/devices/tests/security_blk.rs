//! The block device against the bug classes of Xen's advisories (see
//! SECURITY.md): response padding (XSA-216), a request slot changed while
//! the back end reads it (XSA-155), hostile XenBus keys, and granted pages
//! that carry more than the data they are for (XSA-403). The victim keeps
//! working — or refuses the peer — with no panic, no hang, no leak.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use xenshare::blk::{BackConfig, BlkError};
use xenshare::error::DeviceError;
use xenshare::store::xenbus::{read_state, wait_for_state, write_state, XenbusState};
use xenshare::{Access, GrantRef};
use xenshare_abi::blkif::*;
use xenshare_devices::blk::{BackendThread, BlkWorld, FileStorage};
use xenshare_testkit::adversary::flip_during;
use xenshare_testkit::blk::*;
use xenshare_testkit::wait_until;
use zerocopy::IntoBytes;

const DISK: u64 = DISK_BYTES;
const SECTORS: u64 = DISK / 512;
/// The shared ring header before the first slot.
const HEADER: usize = 64;
/// One slot: the larger of request (112 bytes) and response (16 bytes).
const SLOT: usize = core::mem::size_of::<BlkifRequest>();

fn backend(w: &BlkWorld, img: &TmpImage) -> BackendThread<FileStorage> {
    real_backend(w, img)
}

fn write_req(id: u64, sector: u64, segs: &[(GrantRef, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: BLKIF_OP_WRITE,
        nr_segments: segs.len() as u8,
        handle: DEVID as u16,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (s, &(g, f, l)) in r.seg.iter_mut().zip(segs) {
        s.gref = g.0;
        s.first_sect = f;
        s.last_sect = l;
    }
    r
}

/// XSA-216: every response blkback writes has zero padding. The request
/// in the slot had 0xFF where the response's padding goes, so a back end
/// that wrote only the fields would leave bytes there; one that wrote an
/// uninitialised struct would leave its own memory.
#[test]
fn blkback_response_padding_is_zeroed_in_the_shared_page() {
    let Rig {
        w,
        img: _img,
        backend: bt,
        ff,
    } = rig("pad", false);
    let page = grant_page(&w, Access::ReadWrite);
    let mut ring = ff.ring();
    // OKAY, ERROR (sector out of range) and EOPNOTSUPP answers.
    let reqs = [
        write_req(u64::MAX, 0, &[(page.refs()[0], 0, 7)]),
        write_req(u64::MAX - 1, SECTORS, &[(page.refs()[0], 0, 7)]),
        BlkifRequest {
            operation: 99,
            ..write_req(u64::MAX - 2, 0, &[(page.refs()[0], 0, 7)])
        },
    ];
    for (i, r) in reqs.iter().enumerate() {
        // Fill the whole slot with 0xFF first: every byte the response
        // does not set stays visible.
        ff.ring.mem().fill(HEADER + i * SLOT, SLOT, 0xFF).unwrap();
        ring.push_request(r).unwrap();
    }
    ring.push_requests().unwrap();
    ff.chan.notify().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..reqs.len() {
        statuses.push(ff.response(&mut ring).status);
    }
    assert_eq!(
        statuses,
        [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP]
    );
    for (i, r) in reqs.iter().enumerate() {
        let mut raw = [0u8; 16];
        ff.ring.mem().read(HEADER + i * SLOT, &mut raw).unwrap();
        assert_eq!(raw[..8], r.id.to_le_bytes(), "slot {i}: id");
        assert_eq!(raw[8], r.operation, "slot {i}: operation");
        assert_eq!(raw[9], 0, "slot {i}: padding after operation");
        assert_eq!(raw[12..16], [0; 4], "slot {i}: trailing padding");
    }
    let (_, runs) = bt.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    drop(ff);
}

/// XSA-155 (double fetch): the front end keeps rewriting the request
/// slots — sector, every segment's grant ref and sector bounds — between
/// a valid write and a hostile one (sector off the disk, a ref never
/// granted, sectors past the page) while the back end reads them. The back
/// end copies a request once and uses only that copy, so whatever mix it
/// sees is validated as a whole: it answers OKAY or ERROR, never panics or
/// breaks, and writes only the valid data, only where a valid request (or
/// a torn mix of the two that is itself valid) puts it.
#[test]
fn blkback_acts_on_one_copy_of_a_request_slot_changing_under_it() {
    const ROUNDS: u64 = 300;
    let Rig {
        w,
        img,
        backend: bt,
        ff,
    } = rig("dfetch", false);
    let page = grant_page(&w, Access::ReadOnly);
    page.mem().fill(0, 4096, 0x5A).unwrap();
    let good = page.refs()[0];
    // Differs from `good` in one byte only, so a torn ref is one of the two.
    let evil = GrantRef(good.0 | 0x00FF_0000);
    let valid = |id| write_req(id, 0, &[(good, 0, 7); 11]);
    let hostile = |id| write_req(id, u64::MAX, &[(evil, 9, 200); 11]);
    let size = ff.ring().size() as usize;
    let stop = AtomicBool::new(false);
    let mut seen = HashSet::new();
    std::thread::scope(|sc| {
        // Rewrites bytes 16.. of every slot (the response only covers the
        // first 16, which stay as the front end wrote them).
        let flipper = sc.spawn(|| {
            let mem = ff.ring.mem();
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..size {
                    let r = if flips.is_multiple_of(2) {
                        hostile(0)
                    } else {
                        valid(0)
                    };
                    mem.write(HEADER + i * SLOT + 16, &r.as_bytes()[16..])
                        .unwrap();
                }
                flips += 1;
            }
            flips
        });
        let mut ring = ff.ring();
        for id in 0..ROUNDS {
            ff.send(&mut ring, &[valid(id)]);
            let rsp = ff.response(&mut ring);
            assert_eq!(rsp.id, id);
            assert_eq!(rsp.operation, BLKIF_OP_WRITE);
            assert!(
                rsp.status == BLKIF_RSP_OKAY || rsp.status == BLKIF_RSP_ERROR,
                "{rsp:?}"
            );
            seen.insert(rsp.status);
            assert!(!bt.is_finished(), "the back end died on round {id}");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            flipper.join().unwrap() > ROUNDS / 10,
            "the slots were hardly flipped"
        );
        // Still a working back end: a clean request on a quiet ring.
        let mut clean = valid(ROUNDS);
        clean.nr_segments = 1;
        ff.send(&mut ring, &[clean]);
        assert_eq!(ff.response(&mut ring).status, BLKIF_RSP_OKAY);
    });
    eprintln!("statuses seen under the race: {seen:?}");
    let (back, runs) = bt.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    assert!(back.stats().ok >= 1);
    drop(ff);
    // Valid data only, and only at sector 0 (the torn sector 0x..FF..
    // values are all off this 8192-sector disk but one: 255).
    let data = img.contents();
    assert_eq!(data.len() as u64, DISK, "image size changed");
    let ok_at = |sector: usize| sector < 88 || (255..255 + 88).contains(&sector);
    for (sector, chunk) in data.chunks(512).enumerate() {
        if ok_at(sector) {
            assert!(
                chunk.iter().all(|&b| b == 0x5A) || chunk.iter().all(|&b| b == 0),
                "sector {sector} holds something the front end never wrote"
            );
        } else {
            assert!(
                chunk.iter().all(|&b| b == 0),
                "stray write at sector {sector}"
            );
        }
    }
}

/// A hand-made front end that publishes `keys` (then `Initialised`).
fn hostile_frontend(w: &BlkWorld, keys: &[(&str, &str)]) {
    let mut xs = w.client(&w.guest);
    wait_for_state(&mut xs, &back_dir(w), T, |s| s == XenbusState::InitWait).unwrap();
    let dir = front_dir(w);
    for (k, v) in keys {
        xs.write(&format!("{dir}/{k}"), v.as_bytes()).unwrap();
    }
    write_state(&mut xs, &dir, XenbusState::Initialised).unwrap();
}

/// Hostile values for every numeric key blkback reads from a front end:
/// huge ring-page-order, out-of-range and non-numeric refs and ports,
/// signs, inner whitespace, hex, overflow. Each is refused with a typed
/// `BadKey`, before anything is mapped, and the back end goes Closed.
#[test]
fn blkback_refuses_hostile_xenbus_keys() {
    let ring_ok = ("ring-ref", "8");
    let port_ok = ("event-channel", "5");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("ring-page-order", "99"), port_ok],
        vec![("ring-page-order", "4294967296"), port_ok],
        vec![("ring-page-order", "18446744073709551616"), port_ok],
        vec![("ring-page-order", "-1"), port_ok],
        vec![
            ("ring-page-order", "+1"),
            ("ring-ref0", "8"),
            ("ring-ref1", "9"),
            port_ok,
        ],
        vec![("ring-page-order", "1 2"), port_ok],
        vec![("ring-ref", "-8"), port_ok],
        vec![("ring-ref", "4294967296"), port_ok],
        vec![("ring-ref", "0x8"), port_ok],
        vec![("ring-ref", "eight"), port_ok],
        vec![ring_ok, ("event-channel", "4294967301")],
        vec![ring_ok, ("event-channel", "+5")],
        vec![ring_ok, ("event-channel", "")],
        vec![ring_ok],
    ];
    for keys in cases {
        let w = world();
        let img = TmpImage::new("keys");
        let bt = backend(&w, &img);
        hostile_frontend(&w, &keys);
        wait_until(T, &format!("{keys:?}: the back end hangs"), || {
            bt.is_finished()
        });
        let (_, runs) = bt.stop().unwrap();
        assert!(
            matches!(
                runs.last(),
                Some(Err(BlkError::Core(DeviceError::BadKey { .. })))
            ),
            "{keys:?}: {runs:?}"
        );
        assert_eq!(w.dom0.importer().stats().mapped, 0, "{keys:?}");
        let mut xs = w.client(&w.dom0);
        assert_eq!(
            read_state(&mut xs, &back_dir(&w)).unwrap(),
            XenbusState::Closed,
            "{keys:?}"
        );
    }
}

/// XSA-403: the pages blkfront grants hold the request's data and nothing
/// else — zeroes around it — even after the guest's memory was full of
/// other data; and the ring page holds nothing but the ring.
#[test]
fn blkfront_grants_pages_holding_only_the_request_data() {
    let w = world();
    // Dirty the guest's free pages with a secret, then give them back.
    assert_eq!(w.guest.dirty_free_memory(64, 0xEE), 64);
    let mut fe = w.frontend(quick_front()).unwrap();
    let fb = std::thread::scope(|s| {
        let t = s.spawn(|| fake_backend(&w, &[]));
        let mut xs = w.client(&w.guest);
        drop(fe.connect(&mut xs).unwrap());
        t.join().unwrap()
    });
    // The ring page: header and slots, all zero before any request.
    let mut ring_page = vec![0u8; 4096];
    fb.ring.mem().read(0, &mut ring_page).unwrap();
    assert!(
        ring_page.iter().all(|&b| b != 0xEE),
        "the ring page carries old guest data"
    );
    let data = [0x77u8; 512];
    let mut disk = fe.disk().unwrap();
    let _tag = disk.submit_write(3 * 512, &data).unwrap();
    let mut ring = fb.ring();
    let req = fb.next_request(&mut ring);
    assert_eq!(req.operation, BLKIF_OP_WRITE);
    for seg in &req.seg[..usize::from(req.nr_segments)] {
        let m = w
            .dom0
            .importer()
            .map_ro(w.guest.id(), &[GrantRef(seg.gref)])
            .unwrap();
        let mut page = vec![0u8; 4096];
        m.mem().read(0, &mut page).unwrap();
        let (a, b) = (
            usize::from(seg.first_sect) * 512,
            (usize::from(seg.last_sect) + 1) * 512,
        );
        assert!(page[a..b].iter().all(|&x| x == 0x77), "the data");
        assert!(
            page[..a].iter().chain(&page[b..]).all(|&x| x == 0),
            "the granted page holds more than the request's data"
        );
    }
    ring.push_response(&BlkifResponse {
        id: req.id,
        operation: req.operation,
        status: BLKIF_RSP_OKAY,
        ..Default::default()
    })
    .unwrap();
    ring.push_responses().unwrap();
    fb.chan.notify().unwrap();
    assert!(disk.wait().unwrap().is_some());
}

/// XSA-391: a guest flooding one disk's event channel neither stops that
/// disk's back end nor starves another disk served from the same back-end
/// domain: the second disk writes and reads back 100 x 4 KiB while the
/// flood goes on, and the flooded disk still answers afterwards. (Event
/// channels are a pending bitmap: a flood sets one bit, so nothing grows.)
#[test]
fn event_flood_on_one_disk_does_not_starve_another() {
    const OTHER: u32 = 51728; // xvdb
    let w = world();
    w.create_vbd(OTHER).unwrap();
    let img1 = TmpImage::new("flood1");
    let img2 = TmpImage::new("flood2");
    let bt1 = backend(&w, &img1);
    let bt2 = w
        .spawn_backend(img2.create(DISK), BackConfig::new(w.guest.id(), OTHER))
        .unwrap();
    let ff = fake_frontend(&w, false);
    let mut fe = w
        .frontend(xenshare::blk::FrontConfig {
            timeout: Some(T),
            ..xenshare::blk::FrontConfig::new(OTHER)
        })
        .unwrap();
    let mut xs = w.client(&w.guest);
    let stop = AtomicBool::new(false);
    let flooded = std::thread::scope(|sc| {
        let flooder = sc.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ff.chan.notify().unwrap();
                n += 1;
            }
            n
        });
        let mut disk = fe.connect(&mut xs).unwrap();
        let t = Instant::now();
        for i in 0..100u64 {
            let data = vec![i as u8 ^ 0x3C; 4096];
            disk.write_at(i * 4096, &data).unwrap();
            let mut back = vec![0u8; 4096];
            disk.read_at(i * 4096, &mut back).unwrap();
            assert_eq!(back, data, "block {i}");
        }
        assert!(t.elapsed() < 3 * T, "starved: {:?}", t.elapsed());
        disk.close(&mut xs).unwrap();
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap()
    });
    assert!(flooded > 1000, "{flooded} events");
    // The flooded disk's back end still serves.
    let page = grant_page(&w, Access::ReadWrite);
    let mut ring = ff.ring();
    ff.send(&mut ring, &[write_req(7, 0, &[(page.refs()[0], 0, 7)])]);
    assert_eq!(ff.response(&mut ring).status, BLKIF_RSP_OKAY);
    let (_, runs) = bt1.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    fe.release();
    let (_, runs) = bt2.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    drop(ff);
}

/// A front end that closes and then reconnects publishing its old ring
/// ref, revoked since: the back end's map is refused, the connection ends
/// in a typed error with nothing mapped and the back end Closed — it never
/// touches whatever that ref or page is now.
#[test]
fn blkback_refuses_a_reconnect_with_stale_ring_refs() {
    let Rig {
        w,
        img: _img,
        backend: bt,
        ff: FakeFront { mut xs, ring, chan },
    } = rig("stale", false);
    let fdir = front_dir(&w);
    let bdir = back_dir(&w);
    let old_ref = ring.refs()[0];
    // Close: the back end leaves the connection and waits for the next one.
    write_state(&mut xs, &fdir, XenbusState::Closing).unwrap();
    wait_for_state(&mut xs, &bdir, T, |s| s >= XenbusState::Closing).unwrap();
    write_state(&mut xs, &fdir, XenbusState::Closed).unwrap();
    wait_for_state(&mut xs, &bdir, T, |s| s == XenbusState::InitWait).unwrap();
    assert_eq!(w.dom0.importer().stats().mapped, 0);
    // Revoke the ring, then come back with the same keys.
    assert!(ring.try_unshare().is_ok());
    assert_eq!(
        xs.read(&format!("{fdir}/ring-ref")).unwrap(),
        old_ref.0.to_string().as_bytes()
    );
    write_state(&mut xs, &fdir, XenbusState::Initialised).unwrap();
    wait_until(T, "the back end hangs on a stale ref", || bt.is_finished());
    let (_, runs) = bt.stop().unwrap();
    assert!(matches!(runs.first(), Some(Ok(_))), "{runs:?}");
    assert!(
        matches!(runs.last(), Some(Err(BlkError::Core(DeviceError::Map(_))))),
        "{runs:?}"
    );
    assert_eq!(w.dom0.importer().stats().mapped, 0);
    assert_eq!(read_state(&mut xs, &bdir).unwrap(), XenbusState::Closed);
    drop(chan);
}

/// A guest that dies with its ring full of requests: the back end keeps
/// answering (grant copies now fail: ERROR), does not panic, and once the
/// toolstack removes the dead guest's directory it leaves the connection,
/// unmapping everything, within a deadline.
#[test]
fn blkback_survives_the_guest_dying_mid_transfer() {
    let Rig {
        w,
        img,
        backend: bt,
        ff,
    } = rig("dying", false);
    let page = grant_page(&w, Access::ReadWrite);
    let mut ring = ff.ring();
    let full: Vec<_> = (0..u64::from(ring.size()))
        .map(|id| write_req(id, id * 8, &[(page.refs()[0], 0, 7); 11]))
        .collect();
    ff.send(&mut ring, &full);
    w.hv.destroy_domain(w.guest.id()).unwrap();
    // The toolstack cleans up after the dead guest.
    let mut c0 = w.client(&w.dom0);
    c0.rm(&front_dir(&w)).unwrap();
    wait_until(T, "the back end still maps the dead guest's ring", || {
        w.dom0.importer().stats().mapped == 0
    });
    let (_, runs) = bt.stop().unwrap();
    assert!(
        matches!(
            runs.first(),
            Some(Ok(xenshare::blk::BackExit::FrontendClosed))
        ),
        "{runs:?}"
    );
    assert_eq!(img.contents().len() as u64, DISK);
    drop(ff);
}

/// Request ids are the front end's business: blkback echoes whatever it
/// gets — duplicates, zero, `u64::MAX` — one response per request, keeps
/// no state keyed by them, and carries on.
#[test]
fn blkback_answers_duplicate_and_arbitrary_request_ids() {
    let Rig {
        w,
        img,
        backend: bt,
        ff,
    } = rig("ids", false);
    let page = grant_page(&w, Access::ReadWrite);
    page.mem().fill(0, 4096, 0x11).unwrap();
    let ids = [5u64, 5, 5, 0, u64::MAX, 5];
    let mut ring = ff.ring();
    let reqs: Vec<_> = (0..)
        .zip(ids)
        .map(|(i, id)| write_req(id, i * 8, &[(page.refs()[0], 0, 7)]))
        .collect();
    ff.send(&mut ring, &reqs);
    let got: Vec<u64> = (0..ids.len())
        .map(|_| {
            let r = ff.response(&mut ring);
            assert_eq!(r.status, BLKIF_RSP_OKAY);
            r.id
        })
        .collect();
    xenshare_testkit::assert_same_ids(got, &ids);
    let (back, runs) = bt.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    assert_eq!(back.stats().ok, ids.len() as u64);
    drop(ff);
    assert!(img.contents()[..ids.len() * 4096]
        .iter()
        .all(|&b| b == 0x11));
}

/// Hostile values for the keys blkfront reads from a back end: features
/// (ring order, indirect segments, flags) and the disk's geometry (sectors,
/// sector size). Non-numbers, signs, spaces and overflow are refused with a
/// typed `BadKey`; numbers beyond what the front end supports are clamped
/// or refused, never trusted; nothing is left granted.
#[test]
fn blkfront_refuses_hostile_backend_keys() {
    // Features, read before the front end grants anything.
    for (k, v) in [
        ("max-ring-page-order", "-1"),
        ("max-ring-page-order", "1 2"),
        ("feature-max-indirect-segments", "0x100"),
        ("feature-max-indirect-segments", "18446744073709551616"),
        ("feature-persistent", "+1"),
        ("discard-granularity", "lots"),
    ] {
        let w = world();
        let mut c0 = w.client(&w.dom0);
        c0.write(&format!("{}/{k}", back_dir(&w)), v.as_bytes())
            .unwrap();
        write_state(&mut c0, &back_dir(&w), XenbusState::InitWait).unwrap();
        let mut fe = w.frontend(quick_front()).unwrap();
        let r = fe.connect(&mut w.client(&w.guest)).map(drop);
        assert!(
            matches!(r, Err(BlkError::Core(DeviceError::BadKey { ref key, .. })) if key == k),
            "{k}={v}: {r:?}"
        );
        fe.release();
        assert_eq!(w.guest.exporter().stats().live, 0, "{k}={v}");
    }
    // Too large to use: clamped to what the front end supports.
    {
        let w = world();
        let mut fe = w.frontend(quick_front()).unwrap();
        let fb = std::thread::scope(|s| {
            let t = s.spawn(|| {
                fake_backend(
                    &w,
                    &[
                        ("max-ring-page-order", "4294967295"),
                        ("feature-max-indirect-segments", "4294967295"),
                    ],
                )
            });
            let info = *fe.connect(&mut w.client(&w.guest)).unwrap().info();
            assert!(info.ring_order <= xenshare::blk::MAX_RING_ORDER);
            assert!(info.max_segments <= 256 * 8, "{info:?}");
            t.join().unwrap()
        });
        drop(fb);
    }
    // The disk's geometry, read at connect time.
    for (k, v) in [
        ("sectors", "-1"),
        ("sectors", "abc"),
        ("sectors", "18446744073709551615"),
        ("sector-size", "0"),
        ("sector-size", "3"),
        ("sector-size", "+512"),
        ("sector-size", "4294967808"),
        ("info", "0x4"),
    ] {
        let w = world();
        let mut disk = vec![("sectors", "8192"), ("sector-size", "512"), ("info", "0")];
        for d in disk.iter_mut() {
            if d.0 == k {
                d.1 = v;
            }
        }
        let mut fe = w.frontend(quick_front()).unwrap();
        let r = std::thread::scope(|s| {
            let t = s.spawn(|| fake_backend_with_disk(&w, &[], &disk));
            let r = fe.connect(&mut w.client(&w.guest)).map(drop);
            drop(t.join().unwrap());
            r
        });
        assert!(
            matches!(r, Err(BlkError::Core(DeviceError::BadKey { ref key, .. })) if key == k),
            "{k}={v}: {r:?}"
        );
        fe.release();
        assert_eq!(w.guest.exporter().stats().live, 0, "{k}={v}");
    }
}

/// XSA-155 from the other side: a back end that keeps rewriting a
/// response slot — id between the real one and one never issued, status
/// between OKAY and ERROR — while blkfront reads it. The front end copies
/// the response once: each request completes with one outcome (and a
/// successful read returns exactly the data in its page), or the disk
/// breaks with a typed error; never a panic or a hang.
#[test]
fn blkfront_acts_on_one_copy_of_a_response_slot_changing_under_it() {
    const ROUNDS: usize = 200;
    let w = world();
    let mut fe = w.frontend(quick_front()).unwrap();
    let fb = std::thread::scope(|s| {
        let t = s.spawn(|| fake_backend(&w, &[]));
        drop(fe.connect(&mut w.client(&w.guest)).unwrap());
        t.join().unwrap()
    });
    let mut disk = fe.disk().unwrap();
    let mut ring = fb.ring();
    let size = ring.size() as usize;
    let (mut ok, mut failed, mut broke) = (0, 0, None);
    for round in 0..ROUNDS {
        disk.submit_read(0, 512).unwrap();
        let req = fb.next_request(&mut ring);
        // The data the back end "read" for this request.
        let page = w
            .dom0
            .importer()
            .map_rw(w.guest.id(), &[GrantRef(req.seg[0].gref)])
            .unwrap();
        page.mem().fill(0, 4096, round as u8).unwrap();
        drop(page);
        let good = BlkifResponse {
            id: req.id,
            operation: req.operation,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        };
        let evil = BlkifResponse {
            id: req.id ^ 0xFFFF_0000_0000_0000,
            status: BLKIF_RSP_ERROR,
            ..good
        };
        ring.push_response(&good).unwrap();
        let slot = HEADER + (round % size) * SLOT;
        let (outcome, _) = flip_during(
            fb.ring.mem(),
            slot,
            evil.as_bytes(),
            good.as_bytes(),
            || {
                ring.push_responses().unwrap();
                fb.chan.notify().unwrap();
                disk.wait()
            },
        );
        match outcome {
            Ok(Some(c)) => match c.result {
                Ok(()) => {
                    ok += 1;
                    assert!(c.data.iter().all(|&b| b == round as u8), "round {round}");
                }
                Err(e) => {
                    failed += 1;
                    assert!(!e.is_fatal(), "{e:?}");
                }
            },
            Ok(None) => panic!("round {round}: nothing completed"),
            Err(e) => {
                assert!(e.is_fatal(), "{e:?}");
                assert!(disk.is_broken());
                broke = Some(e);
                break;
            }
        }
    }
    eprintln!("{ok} ok, {failed} failed, broke: {broke:?}");
    assert!(ok + failed > 0 || broke.is_some());
    drop(disk);
    fe.release();
}
