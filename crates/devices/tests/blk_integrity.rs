//! Data integrity: thousands of random reads, writes, flushes and discards
//! of mixed sizes through blkfront -> blkback -> image file, checked
//! against an in-memory model, in every combination of indirect
//! descriptors and persistent grants; and the submit / complete API with
//! many requests in flight.

use xenshare::blk::{BackConfig, FrontConfig, IoKind};
use xenshare_devices::blk::{BackendThread, BlkWorld, FileStorage, SimFront};
use xenshare_testkit::blk::*;

const DISK: u64 = 16 << 20;

/// Ends a run whose back end must have served every request without
/// error: the front end lets go, the back end stops cleanly, and every
/// guest grant has come back.
fn stop_clean(w: &BlkWorld, mut fe: SimFront, backend: BackendThread<FileStorage>) {
    fe.release();
    let (_, runs) = backend.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    assert_guest_grants_all_back(w);
}

/// Ends a run whose disk broke on purpose (a caller's closure panicked):
/// whatever the back end reports, once the quarantine is reclaimed every
/// guest grant has come back.
fn stop_after_panic(w: &BlkWorld, mut fe: SimFront, backend: BackendThread<FileStorage>) {
    fe.release();
    let _ = backend.stop();
    w.guest.exporter().reclaim(usize::MAX);
    assert_guest_grants_all_back(w);
}

/// A size in bytes, sector-aligned, 512 B ..= 1 MiB, mostly small.
fn size(rng: &mut Rng) -> usize {
    let sectors = match rng.below(100) {
        0..=59 => 1 + rng.below(16),    // up to 8 KiB: direct, few segments
        60..=84 => 1 + rng.below(176),  // up to 88 KiB: direct and indirect
        85..=96 => 1 + rng.below(1024), // up to 512 KiB
        _ => 1 + rng.below(2048),       // up to 1 MiB
    };
    sectors as usize * 512
}

fn offset(rng: &mut Rng, len: usize) -> u64 {
    rng.below((DISK - len as u64) / 512 + 1) * 512
}

fn integrity(indirect: bool, persistent: bool, seed: u64) {
    let w = world();
    let img = TmpImage::new("integrity");
    let storage = img.create(DISK);
    let backend = w
        .spawn_backend(storage, BackConfig::new(w.guest.id(), DEVID))
        .unwrap();
    let mut fe = w
        .frontend(FrontConfig {
            indirect,
            persistent,
            ..FrontConfig::new(DEVID)
        })
        .unwrap();
    let mut xs = w.client(&w.guest);
    let mut model = vec![0u8; DISK as usize];
    let mut rng = Rng::new(seed);
    let (mut reads, mut writes, mut flushes, mut discards) = (0, 0, 0, 0);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        let info = *disk.info();
        assert_eq!(info.size_bytes(), DISK);
        assert_eq!(info.persistent, persistent);
        assert_eq!(info.max_segments > 11, indirect, "{info:?}");
        let mut buf = Vec::new();
        for i in 0..2000 {
            let len = size(&mut rng);
            let off = offset(&mut rng, len);
            let range = off as usize..off as usize + len;
            match rng.below(100) {
                0..=44 => {
                    buf.resize(len, 0);
                    rng.fill(&mut buf);
                    disk.write_at(off, &buf).unwrap();
                    model[range].copy_from_slice(&buf);
                    writes += 1;
                }
                45..=89 => {
                    buf.resize(len, 0xEE);
                    disk.read_at(off, &mut buf).unwrap();
                    assert!(
                        buf[..] == model[range],
                        "op {i}: read of {len} bytes at {off} differs from the model"
                    );
                    reads += 1;
                }
                90..=94 => {
                    disk.flush().unwrap();
                    flushes += 1;
                }
                _ => {
                    disk.discard(off, len as u64).unwrap();
                    model[range].fill(0);
                    discards += 1;
                }
            }
        }
        // Whole-disk read back through the device.
        let mut all = vec![0u8; DISK as usize];
        disk.read_at(0, &mut all).unwrap();
        assert!(all == model, "full read-back differs");
        if persistent {
            assert!(disk.pool_pages() > 0);
        }
        disk.close(&mut xs).unwrap();
    }
    assert!(reads > 500 && writes > 500 && flushes > 50 && discards > 50);
    let rel = fe.release();
    assert_eq!(rel.quarantined, 0);
    let (back, runs) = backend.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    assert!(back.stats().failed == 0, "{:?}", back.stats());
    // The data really is in the file.
    assert!(img.contents() == model, "image file differs from the model");
    assert_guest_grants_all_back(&w);
    assert_eq!(w.dom0.importer().stats().mapped, 0);
}

#[test]
fn integrity_direct_no_persistent() {
    integrity(false, false, 1);
}

#[test]
fn integrity_indirect_no_persistent() {
    integrity(true, false, 2);
}

#[test]
fn integrity_direct_persistent() {
    integrity(false, true, 3);
}

#[test]
fn integrity_indirect_persistent() {
    integrity(true, true, 4);
}

#[test]
fn many_requests_in_flight() {
    let w = world();
    let img = TmpImage::new("qd");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w.frontend(FrontConfig::new(DEVID)).unwrap();
    let mut xs = w.client(&w.guest);
    let mut disk = fe.connect(&mut xs).unwrap();
    let slots = disk.info().ring_size as usize;
    // Writes to distinct blocks, all submitted before any is waited for.
    let n = slots * 3;
    let mut expect = std::collections::HashMap::new();
    let mut max_in_flight = 0;
    for i in 0..n {
        let data = vec![(i % 251) as u8 + 1; 8192];
        let tag = disk.submit_write(i as u64 * 8192, &data).unwrap();
        expect.insert(tag, i);
        max_in_flight = max_in_flight.max(disk.in_flight());
    }
    let mut done = 0;
    while let Some(c) = disk.wait().unwrap() {
        assert_eq!(c.kind, IoKind::Write);
        c.result.unwrap();
        assert!(expect.remove(&c.tag).is_some());
        done += 1;
    }
    assert_eq!(done, n);
    assert!(max_in_flight > 1, "queue depth never exceeded 1");
    // Reads, many in flight, each checked.
    let mut tags = std::collections::HashMap::new();
    for i in 0..n {
        tags.insert(disk.submit_read(i as u64 * 8192, 8192).unwrap(), i);
    }
    let fl = disk.submit_flush().unwrap();
    let mut seen_flush = false;
    while let Some(c) = disk.wait().unwrap() {
        if c.tag == fl {
            seen_flush = true;
            c.result.unwrap();
            continue;
        }
        let i = tags.remove(&c.tag).unwrap();
        c.result.unwrap();
        assert_eq!(c.data, vec![(i % 251) as u8 + 1; 8192], "block {i}");
    }
    assert!(seen_flush && tags.is_empty());
    assert!(matches!(
        disk.submit_read(0, disk.max_request_bytes() + 4096),
        Err(xenshare::blk::BlkError::TooLarge { .. })
    ));
    assert!(matches!(
        disk.read_at(DISK, &mut [0u8; 512]),
        Err(xenshare::blk::BlkError::OutOfRange { .. })
    ));
    assert!(matches!(
        disk.read_at(100, &mut [0u8; 512]),
        Err(xenshare::blk::BlkError::Misaligned { .. })
    ));
    disk.close(&mut xs).unwrap();
    drop(fe);
    backend.stop().unwrap();
    assert_guest_grants_all_back(&w);
}

/// Indirect requests with persistent grants return their indirect pages to
/// the pool. Each one used to leak a pool page: the pool grew by one per
/// request until its cap, and then every request waited for pages that
/// never came back ("grant table full"), which `bench blk` hit.
#[test]
fn indirect_pages_return_to_the_persistent_pool() {
    let w = world();
    let img = TmpImage::new("indirect-pool");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w
        .frontend(FrontConfig {
            indirect: true,
            persistent: true,
            ..FrontConfig::new(DEVID)
        })
        .unwrap();
    let cap = FrontConfig::new(DEVID).max_persistent_pages;
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        assert!(disk.info().max_segments > 11, "{:?}", disk.info());
        // 64 KiB: 16 segments, so indirect; more requests than the cap.
        let mut buf = vec![0u8; 64 << 10];
        let mut sizes = Vec::new();
        for i in 0..(cap + 200) {
            disk.read_at(((i % 64) as u64) << 16, &mut buf)
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            sizes.push(disk.pool_pages());
        }
        // One request needs 16 data pages and 1 indirect page; the pool
        // stops growing once it holds them.
        assert!(
            disk.pool_pages() <= 17,
            "pool grew to {} pages over {} requests (first sizes {:?})",
            disk.pool_pages(),
            cap + 200,
            &sizes[..8]
        );
        disk.close(&mut xs).unwrap();
    }
    assert_eq!(fe.release().quarantined, 0);
    let (_, runs) = backend.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
}

#[test]
fn a_large_transfer_goes_as_several_requests_in_flight() {
    let w = world();
    let img = TmpImage::new("pipeline");
    let storage = img.create(DISK);
    let backend = w
        .spawn_backend(storage, BackConfig::new(w.guest.id(), DEVID))
        .unwrap();
    let mut fe = w.frontend(FrontConfig::new(DEVID)).unwrap();
    let mut xs = w.client(&w.guest);
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        assert!(disk.max_request_bytes() >= 1 << 20, "{:?}", disk.info());
        disk.write_at(4096, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read_at(4096, &mut back).unwrap();
        assert!(back == data, "1 MiB read back differs");
        disk.close(&mut xs).unwrap();
    }
    fe.release();
    let (back, _) = backend.stop().unwrap();
    let st = back.stats();
    // 1 MiB each way as four 256 KiB requests, not one of 1 MiB.
    assert_eq!((st.ok, st.failed), (8, 0), "{st:?}");
    assert_eq!(st.max_segments, 64, "{st:?}");
}

/// `plug` holds requests back until `unplug` publishes them together;
/// `wait_all` hands over every finished request at once; buffers given
/// back with `recycle` carry later reads' data. More requests than the
/// ring has slots are submitted under one plug: a full ring publishes what
/// is queued and waits for room instead of stalling.
#[test]
fn plugged_batches_complete_with_wait_all_and_reuse_buffers() {
    let w = world();
    let img = TmpImage::new("plug");
    let backend = real_backend_sized(&w, &img, DISK);
    // A one-page ring (32 slots): fewer reads than the disk keeps recycled
    // buffers, so none allocates.
    let mut fe = w
        .frontend(FrontConfig {
            ring_order: 0,
            ..FrontConfig::new(DEVID)
        })
        .unwrap();
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        let slots = disk.info().ring_size as usize;
        assert_eq!(slots, 32);
        let n = slots + 3;
        let block = |i: usize| vec![(i % 251) as u8 + 1; 4096];
        for i in 0..n {
            disk.write_at(i as u64 * 4096, &block(i)).unwrap();
        }
        // Buffers of a capacity a fresh 4 KiB read would never get: every
        // read below must come back in one of them (then again in the
        // second round, recycled from the first).
        for _ in 0..n {
            disk.recycle(Vec::with_capacity(3 * 4096));
        }
        for round in 0..2 {
            disk.plug();
            let mut tags = std::collections::HashMap::new();
            for i in 0..slots.min(n) {
                tags.insert(disk.submit_read(i as u64 * 4096, 4096).unwrap(), i);
            }
            // Nothing was published, so nothing can have been answered.
            assert!(disk.poll().unwrap().is_none(), "round {round}");
            assert_eq!(disk.in_flight(), slots.min(n));
            // The ring is full: these publish the batch and wait for room.
            for i in slots..n {
                tags.insert(disk.submit_read(i as u64 * 4096, 4096).unwrap(), i);
            }
            disk.unplug().unwrap();
            let mut done = Vec::new();
            let mut calls = 0;
            while !tags.is_empty() {
                calls += 1;
                assert!(disk.wait_all(&mut done).unwrap() > 0, "round {round}");
                for c in done.drain(..) {
                    let i = tags.remove(&c.tag).expect("a tag submitted once");
                    c.result.unwrap();
                    assert!(c.data == block(i), "round {round}: block {i}");
                    assert!(
                        c.data.capacity() >= 3 * 4096,
                        "round {round}: block {i} came in a fresh buffer"
                    );
                    disk.recycle(c.data);
                }
            }
            assert!(calls <= n, "round {round}: {calls} waits for {n} reads");
            assert_eq!(disk.wait_all(&mut done).unwrap(), 0);
        }
        disk.close(&mut xs).unwrap();
    }
    drop(fe);
    backend.stop().unwrap();
    assert_guest_grants_all_back(&w);
}

/// A plugged request is published by whatever waits for it (`wait`, a
/// synchronous `read_at`), so a forgotten `unplug` delays, never hangs.
#[test]
fn waiting_publishes_a_plugged_request() {
    let w = world();
    let img = TmpImage::new("plug-wait");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w.frontend(quick_front()).unwrap();
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        disk.write_at(8192, &[7u8; 4096]).unwrap();
        disk.plug();
        let tag = disk.submit_read(8192, 4096).unwrap();
        let c = disk.wait().unwrap().expect("the read is in flight");
        assert_eq!(c.tag, tag);
        c.result.unwrap();
        assert!(c.data == [7u8; 4096]);
        // Still plugged: a synchronous call publishes its own requests.
        let mut buf = vec![0u8; 64 << 10];
        disk.read_at(0, &mut buf).unwrap();
        assert!(buf[8192..12288] == [7u8; 4096]);
        disk.unplug().unwrap();
        disk.close(&mut xs).unwrap();
    }
    drop(fe);
    backend.stop().unwrap();
}

/// `read_with` against the real back end: for random ranges (one sector
/// to 1 MiB, several requests in flight at the larger sizes) the pages it
/// shows are contiguous from 0, in order, and hold exactly what `read_at`
/// and the model hold — with persistent grants (the back end's own pages,
/// shown in place) and without (copied out before revocation); a
/// sub-page last piece is shown with its length. (The 16 MiB write fills
/// the persistent pool to its cap; a call that lost its pages instead of
/// giving them back would soon find none and fail.) Every grant comes back.
#[test]
fn read_with_shows_what_read_at_reads_in_order() {
    for persistent in [true, false] {
        let w = world();
        let img = TmpImage::new("read-with");
        let backend = real_backend_sized(&w, &img, DISK);
        let mut fe = w
            .frontend(FrontConfig {
                persistent,
                pipeline_depth: 8,
                ..FrontConfig::new(DEVID)
            })
            .unwrap();
        let mut xs = w.client(&w.guest);
        let mut rng = Rng::new(if persistent { 11 } else { 12 });
        let mut model = vec![0u8; DISK as usize];
        rng.fill(&mut model);
        {
            let mut disk = fe.connect(&mut xs).unwrap();
            assert_eq!(disk.info().persistent, persistent);
            disk.write_at(0, &model).unwrap();
            let mut copied = Vec::new();
            for i in 0..150 {
                let len = size(&mut rng);
                let off = offset(&mut rng, len);
                let mut shown = Vec::with_capacity(len);
                disk.read_with(off, len, |pos, page| {
                    assert_eq!(pos, shown.len(), "op {i}: pages out of order");
                    assert!(page.len() <= 4096 && !page.is_empty());
                    let at = shown.len();
                    shown.resize(at + page.len(), 0);
                    page.read(0, &mut shown[at..]).unwrap();
                })
                .unwrap();
                assert_eq!(shown.len(), len, "op {i}");
                let range = off as usize..off as usize + len;
                assert!(shown[..] == model[range], "op {i}: read_with differs");
                copied.resize(len, 0);
                disk.read_at(off, &mut copied).unwrap();
                assert!(copied == shown, "op {i}: read_at differs from read_with");
            }
            disk.close(&mut xs).unwrap();
        }
        stop_clean(&w, fe, backend);
    }
}

/// A `read_with` closure that panics unwinds through the disk while the
/// call's other requests are still in flight. Their answers name only a
/// position in the call, so the next call must not take them for its own:
/// it fails with `Interrupted` and the disk stays broken (no stale page is
/// ever shown or copied into a later buffer); every grant still comes
/// back.
#[test]
fn a_panicking_read_with_closure_breaks_the_disk_for_later_calls() {
    let w = world();
    let img = TmpImage::new("read-with-panic");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w
        .frontend(FrontConfig {
            pipeline_depth: 8,
            ..FrontConfig::new(DEVID)
        })
        .unwrap();
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            disk.read_with(0, 1 << 20, |_, _| panic!("the caller's closure fails"))
        }));
        assert!(unwound.is_err(), "the panic reaches the caller");
        let mut buf = vec![0xA5u8; 64 * 1024];
        assert_eq!(
            disk.read_at(0, &mut buf),
            Err(xenshare::blk::BlkError::Interrupted)
        );
        assert!(disk.read_at(0, &mut buf).is_err(), "the disk stays broken");
        assert!(buf.iter().all(|&b| b == 0xA5), "nothing was copied in");
    }
    stop_after_panic(&w, fe, backend);
}

/// `wait_all_with` against the real back end, with persistent grants (the
/// pool pages shown in place) and without (each request's pages copied
/// out before revocation): 600 random reads of mixed sizes, up to 32 in
/// flight, every one shown once, page by page in order, with the bytes
/// `read_at` reads, and its completion carrying no data; `wait_all` takes
/// every fourth batch, so both ways of taking completions interleave. The
/// pool does not grow past what the reads in flight need, and every grant
/// comes back.
#[test]
fn wait_all_with_shows_in_place_what_read_at_reads() {
    for persistent in [true, false] {
        let w = world();
        let img = TmpImage::new("wait-all-with");
        let backend = real_backend_sized(&w, &img, DISK);
        let mut fe = real_frontend(&w, persistent);
        let mut xs = w.client(&w.guest);
        let mut rng = Rng::new(if persistent { 21 } else { 22 });
        let mut model = vec![0u8; DISK as usize];
        rng.fill(&mut model);
        {
            let mut disk = fe.connect(&mut xs).unwrap();
            assert_eq!(disk.info().persistent, persistent);
            disk.write_at(0, &model).unwrap();
            let max = disk.max_request_bytes();
            let pool_before = disk.pool_pages();
            let mut want = std::collections::HashMap::new();
            let mut shown: std::collections::HashMap<_, Vec<u8>> = Default::default();
            let mut done = Vec::new();
            let (mut submitted, mut finished, mut batches) = (0, 0, 0);
            while finished < 600 {
                disk.plug();
                while submitted < 600 && disk.in_flight() < 32 {
                    let len = size(&mut rng).min(max);
                    let off = offset(&mut rng, len);
                    want.insert(disk.submit_read(off, len).unwrap(), (off as usize, len));
                    submitted += 1;
                }
                disk.unplug().unwrap();
                batches += 1;
                let copying = batches % 4 == 0;
                let n = if copying {
                    disk.wait_all(&mut done).unwrap()
                } else {
                    disk.wait_all_with(&mut done, |tag, pos, page| {
                        let v = shown.entry(tag).or_default();
                        assert_eq!(pos, v.len(), "{tag:?}: pages out of order");
                        assert!(!page.is_empty() && page.len() <= 4096);
                        let at = v.len();
                        v.resize(at + page.len(), 0);
                        page.read(0, &mut v[at..]).unwrap();
                    })
                    .unwrap()
                };
                assert!(n > 0);
                for c in done.drain(..) {
                    assert_eq!(c.kind, IoKind::Read);
                    c.result.unwrap();
                    let (off, len) = want.remove(&c.tag).expect("a tag submitted once");
                    let got = if copying {
                        assert!(!shown.contains_key(&c.tag), "{:?} shown and copied", c.tag);
                        c.data
                    } else {
                        assert!(c.data.is_empty(), "{:?}: data copied too", c.tag);
                        shown.remove(&c.tag).expect("every page shown")
                    };
                    assert!(got == model[off..off + len], "{:?}: wrong bytes", c.tag);
                    finished += 1;
                }
                assert!(shown.is_empty(), "pages shown for a tag not completed");
            }
            if persistent {
                // 32 requests of at most `max` bytes in flight, and as
                // many finished ones held until taken.
                let bound = pool_before + 2 * 32 * max.div_ceil(4096);
                assert!(disk.pool_pages() <= bound, "{}", disk.pool_pages());
            }
            disk.close(&mut xs).unwrap();
        }
        stop_clean(&w, fe, backend);
    }
}

/// Finished reads keep their pool pages until a `wait_all*` takes them; a
/// caller that only submits must not starve the pool: with the smallest
/// pool (22 pages), 60 one-page reads submitted without taking a completion
/// all go through (the held ones are copied out to make room) and are then all
/// delivered once each, with the right bytes, through `wait_all_with`.
#[test]
fn reads_held_for_wait_all_with_give_their_pages_back_when_the_pool_runs_short() {
    let w = world();
    let img = TmpImage::new("held-pool");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w
        .frontend(FrontConfig {
            max_persistent_pages: 1,
            ..FrontConfig::new(DEVID)
        })
        .unwrap();
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        assert!(disk.info().persistent);
        let block = |i: usize| vec![(i % 251) as u8 + 1; 4096];
        for i in 0..60 {
            disk.write_at(i as u64 * 4096, &block(i)).unwrap();
        }
        let mut want = std::collections::HashMap::new();
        for i in 0..60 {
            want.insert(disk.submit_read(i as u64 * 4096, 4096).unwrap(), i);
        }
        assert!(disk.pool_pages() <= 22, "{}", disk.pool_pages());
        let mut shown = std::collections::HashMap::new();
        let mut done = Vec::new();
        while !want.is_empty() {
            assert!(
                disk.wait_all_with(&mut done, |tag, pos, page| {
                    assert_eq!(pos, 0);
                    let mut b = vec![0u8; page.len()];
                    page.read(0, &mut b).unwrap();
                    assert!(shown.insert(tag, b).is_none(), "{tag:?} shown twice");
                })
                .unwrap()
                    > 0
            );
            for c in done.drain(..) {
                c.result.unwrap();
                assert!(c.data.is_empty());
                let i = want.remove(&c.tag).expect("a tag submitted once");
                let b = shown.remove(&c.tag).expect("shown before completing");
                assert!(b == block(i), "block {i}");
            }
        }
        assert!(disk.pool_pages() <= 22, "{}", disk.pool_pages());
        disk.close(&mut xs).unwrap();
    }
    drop(fe);
    backend.stop().unwrap();
    assert_guest_grants_all_back(&w);
}

/// A `wait_all_with` closure that panics loses the completion it was
/// shown: the disk is broken, every later call fails with `Interrupted`
/// or `Broken`, and every grant still comes back.
#[test]
fn a_panicking_wait_all_with_closure_breaks_the_disk_for_later_calls() {
    let w = world();
    let img = TmpImage::new("wait-all-with-panic");
    let backend = real_backend_sized(&w, &img, DISK);
    let mut fe = w.frontend(FrontConfig::new(DEVID)).unwrap();
    let mut xs = w.client(&w.guest);
    {
        let mut disk = fe.connect(&mut xs).unwrap();
        for i in 0..4 {
            disk.submit_read(i * 4096, 4096).unwrap();
        }
        let mut done = Vec::new();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            disk.wait_all_with(&mut done, |_, _, _| panic!("the caller's closure fails"))
        }));
        assert!(unwound.is_err(), "the panic reaches the caller");
        assert!(done.is_empty());
        assert_eq!(
            disk.wait_all_with(&mut done, |_, _, _| {}),
            Err(xenshare::blk::BlkError::Interrupted)
        );
        assert!(disk.is_broken());
        assert!(disk.wait_all(&mut done).is_err(), "the disk stays broken");
        assert!(disk.submit_read(0, 4096).is_err());
        assert!(done.is_empty());
    }
    stop_after_panic(&w, fe, backend);
}
