//! `xenshare bench blk`: the block device on the emulator — blkfront and
//! blkback on two threads, the back end serving an image file — against
//! direct `pread` on the same file in the same run: 4 KiB random-read IOPS
//! (the front end keeping `--qd` requests in flight) and 1 MiB sequential
//! read throughput. The file is written once first, so both sides read
//! from the page cache.
//!
//! The IOPS headline (`iops_ratio`) takes completions with
//! [`Disk::wait_all_with`], which shows each read's pool page in place (the
//! closure hands it to `black_box` unread, as the `pread` side does with its
//! buffer); the copying [`Disk::wait_all`] is printed beside it
//! (`iops_copy_ratio`).
//!
//! The sequential headline (`seq_ratio`) reads with [`Disk::read_with`]:
//! the caller is shown the persistent pages the back end's `preadv` filled,
//! in place, as `pread`'s caller is shown its buffer, so each byte is copied
//! once (by the kernel), as with `pread`. The copying
//! [`Disk::read_at`] (a second copy, page → caller's buffer) is printed
//! beside it (`seq_copy_ratio`), and so is the floor of any two-copy split
//! design here (`handoff_seq_mbps`: one thread `pread`s into ring slots,
//! another copies them out).
//!
//! [`Disk::read_with`]: xenshare::blk::Disk::read_with
//! [`Disk::wait_all_with`]: xenshare::blk::Disk::wait_all_with
//! [`Disk::wait_all`]: xenshare::blk::Disk::wait_all
//! [`Disk::read_at`]: xenshare::blk::Disk::read_at

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use clap::Args;
use xenshare::blk::{BackConfig, FrontConfig};
use xenshare_devices::blk::{guest_config, BlkWorld, FileStorage};

type Res<T> = Result<T, String>;

const DEVID: u32 = 51712;

/// Options of `bench blk`.
#[derive(Args)]
pub struct BlkArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Size of the image file (MiB).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=4096))]
    mib: u64,
    /// 4 KiB random reads per IOPS measurement.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    ops: u64,
    /// Requests the front end keeps in flight for the IOPS measurement.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=512))]
    qd: u64,
    /// Passes over the image for the sequential measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    passes: u64,
    /// Measurement rounds, each side back to back in a round; medians and
    /// [min–max] are reported.
    #[arg(long, default_value_t = super::stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeats: u64,
    /// Requests a 1 MiB sequential read is split into, in flight together
    /// (default: the front end's default).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pipeline: Option<u64>,
    /// Use per-request grants instead of persistent grants.
    #[arg(long)]
    no_persistent: bool,
    /// Rounds the front end re-checks the ring before sleeping (default:
    /// the front end's default).
    #[arg(long)]
    front_spin: Option<u32>,
    /// Rounds the back end re-checks the ring before sleeping (default:
    /// the back end's default).
    #[arg(long)]
    back_spin: Option<u32>,
    /// The back end reads each batch of pages with one `preadv` per
    /// request instead of one io_uring submission.
    #[arg(long)]
    no_io_uring: bool,
    /// Measure only the 4 KiB random reads (blkfront and `pread`; no
    /// hand-off floor, no sequential reads), e.g. under a profiler.
    #[arg(long)]
    iops_only: bool,
    /// Image file (default: a temporary file, removed afterwards).
    #[arg(long)]
    image: Option<std::path::PathBuf>,
}

/// xorshift64*, so both sides read the same offsets.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Runs the benchmark.
pub fn run(a: BlkArgs) -> Res<()> {
    let tmp = std::env::temp_dir().join(format!("xenshare-bench-blk-{}.img", std::process::id()));
    let path = a.image.clone().unwrap_or_else(|| tmp.clone());
    let r = bench(&a, &path);
    if a.image.is_none() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn bench(a: &BlkArgs, path: &std::path::Path) -> Res<()> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let size = a.mib << 20;
    // Fill the image with data so nothing is a hole, and warm the cache.
    {
        let st = FileStorage::create(path, size).map_err(|x| e(&x))?;
        let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 % 253) as u8).collect();
        for off in (0..size).step_by(1 << 20) {
            st.file().write_all_at(&chunk, off).map_err(|x| e(&x))?;
        }
    }
    let file = std::fs::File::open(path).map_err(|x| e(&x))?;
    let blocks = size / 4096;
    // Page-aligned buffers on both sides: the kernel copies into a
    // destination off a 64-byte line several times slower on this kind of
    // machine, which made `pread`'s figure depend on where malloc put its
    // buffer (300k or 700k IOPS from one build to the next).
    let mut big = super::AlignedBuf::new(1 << 20, 0);

    // blkfront -> blkback on the emulator.
    let world = BlkWorld::new(guest_config()).map_err(|x| e(&x))?;
    world.create_vbd(DEVID).map_err(|x| e(&x))?;
    let storage = FileStorage::open(path, false)
        .map_err(|x| e(&x))?
        .with_io_uring(!a.no_io_uring);
    let backend = world
        .spawn_backend(
            storage,
            BackConfig {
                spin: a
                    .back_spin
                    .unwrap_or(BackConfig::new(world.guest.id(), DEVID).spin),
                ..BackConfig::new(world.guest.id(), DEVID)
            },
        )
        .map_err(|x| e(&x))?;
    let pipeline = a
        .pipeline
        .map_or(FrontConfig::new(DEVID).pipeline_depth, |p| p as usize);
    let mut fe = world
        .frontend(FrontConfig {
            persistent: !a.no_persistent,
            ring_order: 2,
            pipeline_depth: pipeline,
            spin: a.front_spin.unwrap_or(FrontConfig::new(DEVID).spin),
            ..FrontConfig::new(DEVID)
        })
        .map_err(|x| e(&x))?;
    let mut xs = world.client(&world.guest);
    let mut disk = fe.connect(&mut xs).map_err(|x| e(&x))?;
    let info = *disk.info();
    let qd = (a.qd as usize).min(info.ring_size as usize);

    let pread_iops = |n: u64, seed: u64| -> Res<f64> {
        let mut buf = super::AlignedBuf::new(4096, 0);
        let mut rng = Rng(seed);
        let t = Instant::now();
        for _ in 0..n {
            file.read_exact_at(&mut buf, rng.below(blocks) * 4096)
                .map_err(|x| e(&x))?;
            black_box(&buf);
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    // `in_place`: each read's page is shown in place (`wait_all_with`) and
    // handed to `black_box` unread, as the pread side treats its buffer;
    // otherwise it is copied into the completion's buffer (`wait_all`).
    let blk_iops = |disk: &mut xenshare_devices::blk::SimDisk<'_>,
                    n: u64,
                    seed: u64,
                    in_place: bool|
     -> Res<f64> {
        let mut rng = Rng(seed);
        let mut finished = Vec::with_capacity(qd);
        let t = Instant::now();
        let (mut submitted, mut done) = (0, 0);
        while done < n {
            // Refill to the queue depth as one batch (one ring publish, at
            // most one notification), then take every finished request
            // at once, handing the buffers back for the next reads.
            disk.plug();
            while submitted < n && disk.in_flight() < qd {
                disk.submit_read(rng.below(blocks) * 4096, 4096)
                    .map_err(|x| e(&x))?;
                submitted += 1;
            }
            disk.unplug().map_err(|x| e(&x))?;
            let got = if in_place {
                disk.wait_all_with(&mut finished, |tag, pos, page| {
                    black_box((tag, pos, page));
                })
            } else {
                disk.wait_all(&mut finished)
            };
            if got.map_err(|x| e(&x))? == 0 {
                return Err("no request in flight".into());
            }
            for c in finished.drain(..) {
                c.result.map_err(|x| e(&x))?;
                black_box(&c.data);
                disk.recycle(c.data);
                done += 1;
            }
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    // The split driver's floor: one thread `pread`s each block straight
    // into a slot of a ring of `qd` pages (as the back end reads into a
    // granted page), another copies it out (as the front end does), handed
    // over through the bench's ideal SPSC ring. What is left between this
    // and plain `pread` is what moving each block to the other core costs.
    let handoff_iops = |n: u64, seed: u64| -> Res<f64> {
        let (mut tx, mut rx) = super::vchan::spsc_ends(qd.next_power_of_two() * 4096);
        let f = file.try_clone().map_err(|x| e(&x))?;
        let t = Instant::now();
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            let mut rng = Rng(seed);
            for _ in 0..n {
                tx.fill_with(4096, |page| f.read_exact_at(page, rng.below(blocks) * 4096))?;
            }
            Ok(())
        });
        let mut buf = super::AlignedBuf::new(4096, 0);
        for _ in 0..n {
            let mut got = 0;
            while got < buf.len() {
                got += rx.read(&mut buf[got..]);
            }
            black_box(&buf);
        }
        reader
            .join()
            .map_err(|_| "handoff reader panicked".to_string())?
            .map_err(|x| e(&x))?;
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let mbps = |t: Instant| (a.passes * size) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    // The same floor for sequential reads: one thread `pread`s each MiB in
    // `chunk`-sized pieces straight into the slots of a ring of 1 MiB (as
    // the back end fills persistent pages), another copies each MiB out into
    // the caller's buffer (as `read_at` does), spinning on the ideal ring.
    // (A power of two, so that the pieces tile the ring.)
    let chunk = (1usize << 20)
        .div_ceil(pipeline.max(1))
        .next_power_of_two()
        .clamp(64 * 1024, 1 << 20);
    let handoff_seq = |big: &mut [u8]| -> Res<f64> {
        let (mut tx, mut rx) = super::vchan::spsc_ends(1 << 20);
        let f = file.try_clone().map_err(|x| e(&x))?;
        let (passes, chunk) = (a.passes, chunk);
        let t = Instant::now();
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            for _ in 0..passes {
                for off in (0..size).step_by(chunk) {
                    let n = (size - off).min(chunk as u64) as usize;
                    tx.fill_with(n, |slot| f.read_exact_at(slot, off))?;
                }
            }
            Ok(())
        });
        for _ in 0..a.passes {
            for _ in (0..size).step_by(1 << 20) {
                let mut got = 0;
                while got < big.len() {
                    got += rx.read(&mut big[got..]);
                }
                black_box(&*big);
            }
        }
        reader
            .join()
            .map_err(|_| "handoff reader panicked".to_string())?
            .map_err(|x| e(&x))?;
        Ok(mbps(t))
    };

    // Warm-up, then rounds with both sides back to back, so a busy
    // machine penalises both alike; the medians are reported.
    pread_iops((a.ops / 10).max(1), 1)?;
    blk_iops(&mut disk, (a.ops / 10).max(1), 1, true)?;
    blk_iops(&mut disk, (a.ops / 10).max(1), 1, false)?;
    let mut progress = super::Progress::new("bench blk", a.repeats as usize);
    let samples = super::stats::repeat(a.repeats, |round, st| {
        progress.phase("random and sequential reads, blkfront and pread");
        let seed = 0x9E37_79B9_7F4A_7C15 ^ round;
        let pread = pread_iops(a.ops, seed)?;
        let blk = blk_iops(&mut disk, a.ops, seed, true)?;
        let blk_copy = blk_iops(&mut disk, a.ops, seed, false)?;
        st.add("blk_iops", blk);
        st.add("pread_iops", pread);
        st.add("iops_ratio", blk / pread);
        st.add("blk_copy_iops", blk_copy);
        st.add("iops_copy_ratio", blk_copy / pread);
        if a.iops_only {
            return Ok(());
        }
        let handoff = handoff_iops(a.ops, seed)?;
        let t = Instant::now();
        for _ in 0..a.passes {
            for off in (0..size).step_by(1 << 20) {
                file.read_exact_at(&mut big, off).map_err(|x| e(&x))?;
                black_box(&big);
            }
        }
        let pread_seq = mbps(t);
        let t = Instant::now();
        for _ in 0..a.passes {
            for off in (0..size).step_by(1 << 20) {
                disk.read_at(off, &mut big).map_err(|x| e(&x))?;
                black_box(&big);
            }
        }
        let blk_seq_copy = mbps(t);
        // The caller is shown every page the back end filled, in place.
        let t = Instant::now();
        for _ in 0..a.passes {
            for off in (0..size).step_by(1 << 20) {
                disk.read_with(off, 1 << 20, |pos, page| {
                    black_box((pos, page));
                })
                .map_err(|x| e(&x))?;
            }
        }
        let blk_seq = mbps(t);
        let handoff_seq = handoff_seq(&mut big)?;
        st.add("handoff_iops", handoff);
        st.add("iops_vs_handoff", blk / handoff);
        st.add("handoff_vs_pread", handoff / pread);
        st.add("blk_seq_mbps", blk_seq);
        st.add("pread_seq_mbps", pread_seq);
        st.add("seq_ratio", blk_seq / pread_seq);
        st.add("blk_seq_copy_mbps", blk_seq_copy);
        st.add("seq_copy_ratio", blk_seq_copy / pread_seq);
        st.add("handoff_seq_mbps", handoff_seq);
        st.add("handoff_seq_vs_pread", handoff_seq / pread_seq);
        st.add("seq_copy_vs_handoff", blk_seq_copy / handoff_seq);
        Ok(())
    })?;
    disk.close(&mut xs).map_err(|x| e(&x))?;
    drop(fe);
    let (_, runs) = backend.stop().map_err(|x| e(&x))?;
    if let Some(Err(x)) = runs.iter().find(|r| r.is_err()) {
        return Err(format!("back end failed: {x}"));
    }

    drop(progress);
    if a.json {
        println!(
            "{}",
            samples.json(&[
                ("qd", qd as f64),
                ("ring_slots", f64::from(info.ring_size)),
                ("persistent", if info.persistent { 1.0 } else { 0.0 }),
                ("max_segments", f64::from(info.max_segments)),
            ])
        );
    } else {
        let g = |k: &str, w| samples.get(k).show(w, 0);
        let r = |k: &str| samples.get(k).show(5, 2);
        println!(
            "block benchmark ({} MiB image, emulator, {}-slot ring, {} segments/request, \
             persistent grants {}; median [min–max] of {} rounds)",
            a.mib,
            info.ring_size,
            info.max_segments,
            if info.persistent { "on" } else { "off" },
            samples.rounds()
        );
        println!(
            "  4 KiB random read, blkfront qd {qd:<4} {} IOPS  (wait_all_with: the pages shown in place)",
            g("blk_iops", 10)
        );
        println!(
            "  4 KiB random read, direct pread     {} IOPS",
            g("pread_iops", 10)
        );
        println!("  ratio                               {}x", r("iops_ratio"));
        println!(
            "  4 KiB random read, blkfront copying {} IOPS  (wait_all: copied into the completion)",
            g("blk_copy_iops", 10)
        );
        println!(
            "  ratio (copying)                     {}x",
            r("iops_copy_ratio")
        );
        println!(
            "  4 KiB random read, pread + hand-off {} IOPS  (to another thread through an ideal ring)",
            g("handoff_iops", 10)
        );
        println!(
            "  blkfront / hand-off                 {}x   hand-off / pread {}x",
            r("iops_vs_handoff"),
            r("handoff_vs_pread")
        );
        println!(
            "  1 MiB sequential read, blkfront     {} MiB/s  (read_with: the pages shown in place)",
            g("blk_seq_mbps", 10)
        );
        println!(
            "  1 MiB sequential read, direct pread {} MiB/s",
            g("pread_seq_mbps", 10)
        );
        println!("  ratio                               {}x", r("seq_ratio"));
        println!(
            "  1 MiB sequential, blkfront read_at  {} MiB/s  (copied into the caller's buffer)",
            g("blk_seq_copy_mbps", 10)
        );
        println!(
            "  ratio (copying)                     {}x",
            r("seq_copy_ratio")
        );
        println!(
            "  1 MiB sequential, pread + hand-off  {} MiB/s  ({} KiB pieces through an ideal ring)",
            g("handoff_seq_mbps", 10),
            chunk / 1024
        );
        println!(
            "  hand-off / pread                    {}x   read_at / hand-off {}x",
            r("handoff_seq_vs_pread"),
            r("seq_copy_vs_handoff")
        );
    }
    Ok(())
}
