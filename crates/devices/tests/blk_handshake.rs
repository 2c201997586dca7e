//! The XenBus handshake: both start-up orders, every ring size, what each
//! side publishes, back-end restart, and a clean close releasing every grant.

use std::time::Duration;

use xenshare::blk::{BackConfig, BlkError, FrontConfig};
use xenshare::error::DeviceError;
use xenshare::store::xenbus::{read_state, XenbusState};
use xenshare_testkit::blk::*;

const DISK: u64 = 4 << 20;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ seed).collect()
}

#[test]
fn frontend_first_then_backend() {
    let w = world();
    let img = TmpImage::new("fe-first");
    let storage = img.create(DISK);
    let mut fe = w.frontend(FrontConfig::new(DEVID)).unwrap();
    let mut xs = w.client(&w.guest);
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let mut disk = fe.connect(&mut xs).unwrap();
            disk.write_at(0, &pattern(65536, 1)).unwrap();
            let mut back = vec![0; 65536];
            disk.read_at(0, &mut back).unwrap();
            assert_eq!(back, pattern(65536, 1));
            disk.close(&mut xs).unwrap();
        });
        // The front end is waiting for the back end's InitWait.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!t.is_finished());
        let backend = w
            .spawn_backend(storage, BackConfig::new(w.guest.id(), DEVID))
            .unwrap();
        t.join().unwrap();
        let (_, runs) = backend.stop().unwrap();
        assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    });
    drop(fe);
    assert_eq!(w.guest.exporter().stats().live, 0);
}

#[test]
fn backend_first_publishes_features_and_disk() {
    let w = world();
    let img = TmpImage::new("be-first");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut xs = w.client(&w.guest);
    let bdir = back_dir(&w);
    xenshare::store::xenbus::wait_for_state(&mut xs, &bdir, T, |s| s == XenbusState::InitWait)
        .unwrap();
    let key = |xs: &mut blk_common_xs::Xs, k: &str| {
        String::from_utf8(xs.read(&format!("{bdir}/{k}")).unwrap()).unwrap()
    };
    for (k, v) in [
        ("feature-flush-cache", "1"),
        ("feature-barrier", "1"),
        ("feature-discard", "1"),
        ("discard-granularity", "512"),
        ("discard-alignment", "0"),
        ("feature-max-indirect-segments", "256"),
        ("feature-persistent", "1"),
        ("max-ring-page-order", "4"),
    ] {
        assert_eq!(key(&mut xs, k), v, "{k}");
    }
    let mut fe = w.frontend(FrontConfig::new(DEVID)).unwrap();
    {
        let mut fxs = w.client(&w.guest);
        let disk = fe.connect(&mut fxs).unwrap();
        assert_eq!(key(&mut xs, "sectors"), (DISK / 512).to_string());
        assert_eq!(key(&mut xs, "sector-size"), "512");
        assert_eq!(key(&mut xs, "info"), "0");
        let fdir = front_dir(&w);
        let fkey = |xs: &mut blk_common_xs::Xs, k: &str| {
            String::from_utf8(xs.read(&format!("{fdir}/{k}")).unwrap()).unwrap()
        };
        assert_eq!(fkey(&mut xs, "protocol"), "x86_64-abi");
        assert_eq!(fkey(&mut xs, "feature-persistent"), "1");
        assert_eq!(fkey(&mut xs, "ring-page-order"), "1");
        assert!(fkey(&mut xs, "ring-ref0").parse::<u32>().is_ok());
        assert!(fkey(&mut xs, "ring-ref1").parse::<u32>().is_ok());
        assert!(fkey(&mut xs, "event-channel").parse::<u32>().is_ok());
        assert_eq!(read_state(&mut xs, &fdir).unwrap(), XenbusState::Connected);
        let info = *disk.info();
        assert_eq!(info.sectors, DISK / 512);
        assert!(info.features.flush && info.features.barrier && info.features.discard);
        assert_eq!(info.features.max_indirect_segments, 256);
        assert_eq!((info.ring_order, info.ring_size), (1, 64));
        disk.close(&mut fxs).unwrap();
    }
    drop(fe);
    backend.stop().unwrap();
}

mod blk_common_xs {
    pub type Xs = xenshare_devices::blk::SimXs;
}

#[test]
fn every_ring_order_and_a_barrier_only_backend() {
    for (order, slots) in [(0u32, 32u32), (2, 128), (4, 512)] {
        let w = world();
        let img = TmpImage::new("orders");
        let cfg = BackConfig {
            flush: false,
            ..BackConfig::new(w.guest.id(), DEVID)
        };
        let backend = w.spawn_backend(img.create(DISK), cfg).unwrap();
        let mut fe = w
            .frontend(FrontConfig {
                ring_order: order,
                ..FrontConfig::new(DEVID)
            })
            .unwrap();
        let mut xs = w.client(&w.guest);
        {
            let mut disk = fe.connect(&mut xs).unwrap();
            assert_eq!(disk.info().ring_size, slots);
            if order == 0 {
                let ring_ref = xs.read(&format!("{}/ring-ref", front_dir(&w))).unwrap();
                assert!(!ring_ref.is_empty());
            }
            // Fill the ring several times over.
            let data = pattern(slots as usize * 3 * 2048, order as u8);
            for (i, c) in data.chunks(2048).enumerate() {
                disk.submit_write(i as u64 * 2048, c).unwrap();
            }
            while let Some(c) = disk.wait().unwrap() {
                c.result.unwrap();
            }
            // No flush-cache offered: flush falls back to a barrier.
            disk.flush().unwrap();
            disk.barrier().unwrap();
            let mut back = vec![0; data.len()];
            disk.read_at(0, &mut back).unwrap();
            assert!(back == data);
            disk.close(&mut xs).unwrap();
        }
        drop(fe);
        let (b, _) = backend.stop().unwrap();
        assert_eq!(b.stats().failed, 0);
    }
}

#[test]
fn backend_restart_then_reconnect() {
    let w = world();
    let img = TmpImage::new("restart");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w.frontend(quick_front()).unwrap();
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        disk.write_at(8192, &pattern(4096, 9)).unwrap();
        disk.flush().unwrap();
        // The back end goes away: it unmaps everything and goes Closed.
        let (_, runs) = backend.stop().unwrap();
        assert!(matches!(runs.last(), Some(Ok(_))), "{runs:?}");
        assert_eq!(
            read_state(&mut xs, &back_dir(&w)).unwrap(),
            XenbusState::Closed
        );
        assert_eq!(w.dom0.importer().stats().mapped, 0);
        // I/O now fails with a clear error instead of hanging.
        let t = std::time::Instant::now();
        let e = disk.read_at(0, &mut [0u8; 4096]).unwrap_err();
        assert_eq!(e, BlkError::Core(DeviceError::Timeout));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(disk.is_broken());
        assert!(matches!(disk.flush(), Err(BlkError::Broken(_))));
        disk.close(&mut xs).unwrap();
    }
    // Every grant came back: the old back end let go of them all.
    let rel = fe.release();
    assert_eq!(rel.quarantined, 0, "{rel:?}");
    assert_guest_grants_all_back(&w);
    // A new back end on the same image; the same front end reconnects.
    let backend = w
        .spawn_backend(img.open(), BackConfig::new(w.guest.id(), DEVID))
        .unwrap();
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        let mut back = vec![0; 4096];
        disk.read_at(8192, &mut back).unwrap();
        assert_eq!(back, pattern(4096, 9), "data written before the restart");
        disk.write_at(0, &pattern(4096, 3)).unwrap();
        disk.close(&mut xs).unwrap();
    }
    drop(fe);
    // And a fresh front end works with it too.
    let mut fe2 = w.frontend(FrontConfig::new(DEVID)).unwrap();
    {
        let mut disk = fe2.connect(&mut xs).unwrap();
        let mut back = vec![0; 4096];
        disk.read_at(0, &mut back).unwrap();
        assert_eq!(back, pattern(4096, 3));
        disk.close(&mut xs).unwrap();
    }
    drop(fe2);
    let (_, runs) = backend.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    let st = w.guest.exporter().stats();
    assert_eq!((st.live, st.quarantined, st.leaked), (0, 0, 0), "{st:?}");
    assert_eq!(w.dom0.importer().stats().mapped, 0);
}

#[test]
fn clean_close_releases_every_grant() {
    for persistent in [false, true] {
        let w = world();
        let img = TmpImage::new("close");
        let backend = real_backend_sized(&w, &img, DISK);
        let mut fe = real_frontend(&w, persistent);
        let mut xs = w.client(&w.guest);
        {
            let mut disk = fe.connect(&mut xs).unwrap();
            disk.write_at(0, &pattern(1 << 20, 5)).unwrap();
            let mut back = vec![0; 1 << 20];
            disk.read_at(0, &mut back).unwrap();
            // While connected, grants are live (ring, and the pool if any).
            assert!(w.guest.exporter().stats().live >= 1);
            if persistent {
                assert!(disk.pool_pages() > 0);
                assert!(w.dom0.importer().stats().mapped > 1);
            }
            // Leave requests in flight: close waits for them.
            for i in 0..8 {
                disk.submit_write(i * 4096, &pattern(4096, i as u8))
                    .unwrap();
            }
            disk.close(&mut xs).unwrap();
        }
        assert_eq!(
            read_state(&mut xs, &front_dir(&w)).unwrap(),
            XenbusState::Closed
        );
        let rel = fe.release();
        assert_eq!(rel.quarantined, 0);
        let st = assert_guest_grants_all_back(&w);
        assert_eq!(st.granted, st.revoked, "{st:?}");
        assert_eq!(w.dom0.importer().stats().mapped, 0);
        let (_, runs) = backend.stop().unwrap();
        assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    }
}

#[test]
fn demo_disk_summary() {
    let line = xenshare_devices::blk::demo_disk(None, 8).unwrap();
    assert!(line.contains("disk xvda"), "{line}");
    assert!(line.contains("grants revoked"), "{line}");
}
