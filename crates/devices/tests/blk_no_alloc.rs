//! The block read path in steady state allocates nothing per request:
//! the back end reads straight into the persistently mapped pages with its
//! batches on the stack, and the front end recycles its buffers. Measured
//! with a counting global allocator around 20,000 random 4 KiB reads at
//! queue depth 32, after a warm-up that fills every pool and queue.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use xenshare::blk::{BackConfig, FrontConfig};
use xenshare_devices::blk::{guest_config, BlkWorld, FileStorage};

/// The system allocator, counting allocations (every thread's).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract (`ptr` came from `System` above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const DEVID: u32 = 51712;

#[test]
fn random_reads_in_steady_state_allocate_nothing_per_request() {
    let dir = std::env::temp_dir().join(format!("xenshare-noalloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let blocks = 2048u64; // 8 MiB
    let st = FileStorage::create(&path, blocks * 4096).unwrap();
    let fill: Vec<u8> = (0..blocks * 4096).map(|i| (i / 4096) as u8).collect();
    st.file().write_all_at(&fill, 0).unwrap();
    drop(st);

    let world = BlkWorld::new(guest_config()).unwrap();
    world.create_vbd(DEVID).unwrap();
    let backend = world
        .spawn_backend(
            FileStorage::open(&path, false).unwrap(),
            BackConfig::new(world.guest.id(), DEVID),
        )
        .unwrap();
    let mut fe = world
        .frontend(FrontConfig {
            persistent: true,
            ring_order: 2,
            ..FrontConfig::new(DEVID)
        })
        .unwrap();
    let mut xs = world.client(&world.guest);
    let mut disk = fe.connect(&mut xs).unwrap();
    let qd = 32.min(disk.info().ring_size as usize);

    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut finished = Vec::with_capacity(qd);
    // (tag, the block's first byte) of each read in flight; the capacity
    // is reserved, so keeping it allocates nothing either.
    let mut flight: Vec<(u64, u8)> = Vec::with_capacity(2 * qd);
    let mut run = |disk: &mut xenshare_devices::blk::SimDisk<'_>, n: u64| {
        let (mut submitted, mut done) = (0, 0);
        while done < n {
            disk.plug();
            while submitted < n && disk.in_flight() < qd {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let block = x % blocks;
                let tag = disk.submit_read(block * 4096, 4096).unwrap();
                flight.push((tag.0, block as u8));
                submitted += 1;
            }
            disk.unplug().unwrap();
            disk.wait_all_with(&mut finished, |tag, _, page| {
                // The first byte of each block names it.
                let i = flight.iter().position(|(t, _)| *t == tag.0).unwrap();
                let (_, want) = flight.swap_remove(i);
                assert_eq!(page.load_u8(0, Ordering::Relaxed), Ok(want));
            })
            .unwrap();
            for c in finished.drain(..) {
                c.result.unwrap();
                disk.recycle(c.data);
                done += 1;
            }
        }
    };
    run(&mut disk, 4_000);
    let before = ALLOCS.load(Ordering::Relaxed);
    let n = 20_000u64;
    run(&mut disk, n);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    eprintln!("{allocs} allocations for {n} reads");
    assert!(
        allocs * 100 < n,
        "{allocs} allocations for {n} reads: something allocates per request or per batch"
    );
    drop(disk);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
}
