//! `xenshare bench vchan`: vchan throughput and round-trip time on the
//! emulator, two threads, against baselines measured in the same run: a Unix
//! socketpair, a pipe, an ideal single-producer single-consumer ring over
//! plain memory of the same size, and memcpy.

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use xenshare::store::perms::{PermKind, Perms};
use xenshare::vchan::{client_init, server_init};
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, Hypervisor};
use xenshare_xenstored::{inproc, Config, Daemon};

type Res<T> = Result<T, String>;

/// Options of `bench vchan`.
#[derive(Args)]
pub struct VchanArgs {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Bytes moved per throughput measurement (MiB).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    mib: u64,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    round_trips: u64,
    /// Only the headline configuration (1 MiB rings, 64 KiB writes), no sweep.
    #[arg(long)]
    quick: bool,
}

struct Lab {
    _hv: Hypervisor,
    srv: Domain,
    cli: Domain,
    xs: Daemon,
    n: u32,
}

impl Lab {
    fn new() -> Res<Self> {
        let hv = Hypervisor::new();
        let cfg = DomainConfig {
            mem_pages: 8192,
            ..Default::default()
        };
        let e = |x: xenshare_sim::HvError| x.to_string();
        hv.create_domain_with_id(DomId(0), cfg).map_err(e)?;
        let srv = hv.create_domain(cfg).map_err(e)?;
        let cli = hv.create_domain(cfg).map_err(e)?;
        let xs = Daemon::new(Config::default());
        let mut c0 = inproc::client(&xs, DomId(0));
        for d in [&srv, &cli] {
            let home = format!("/local/domain/{}", d.id().0);
            c0.mkdir(&home).map_err(|x| x.to_string())?;
            c0.set_perms(&home, &Perms::owned_by(d.id(), PermKind::None))
                .map_err(|x| x.to_string())?;
        }
        Ok(Self {
            _hv: hv,
            srv,
            cli,
            xs,
            n: 0,
        })
    }

    /// A connected pair with both rings of `ring` bytes.
    fn pair(
        &mut self,
        ring: usize,
    ) -> Res<(
        impl Read + Write + Send + 'static,
        impl Read + Write + Send + 'static,
    )> {
        self.n += 1;
        let path = format!("/local/domain/{}/data/vchan/{}", self.srv.id().0, self.n);
        let sev = self.srv.evtchn().map_err(|e| e.to_string())?;
        let cev = self.cli.evtchn().map_err(|e| e.to_string())?;
        let s = server_init(
            self.srv.exporter(),
            &sev,
            &mut inproc::client(&self.xs, self.srv.id()),
            self.cli.id(),
            &path,
            ring,
            ring,
        )
        .map_err(|e| e.to_string())?;
        let c = client_init(
            self.cli.importer(),
            &cev,
            &mut inproc::client(&self.xs, self.cli.id()),
            self.srv.id(),
            &path,
        )
        .map_err(|e| e.to_string())?;
        Ok((s, c))
    }
}

/// Streams `total` bytes from `w` to `r` in `chunk`-byte writes on two
/// threads; returns GB/s.
fn stream<W, R>(mut w: W, mut r: R, total: usize, chunk: usize) -> Res<f64>
where
    W: Write + Send + 'static,
    R: Read + Send + 'static,
{
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    });
    let data = vec![0xA5u8; chunk];
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk);
        w.write_all(&data[..n]).map_err(|e| e.to_string())?;
        sent += n;
    }
    let got = reader
        .join()
        .map_err(|_| "reader thread panicked".to_string())?
        .map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    if got != total {
        return Err(format!("stream lost data: {got} of {total} bytes"));
    }
    drop(w);
    Ok(total as f64 / secs / 1e9)
}

/// Ping-pong of `size`-byte messages; returns µs per round trip.
fn rtt<A, B>(mut a: A, mut b: B, size: usize, trips: u64) -> Res<f64>
where
    A: Read + Write + Send + 'static,
    B: Read + Write + Send + 'static,
{
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; size];
        for _ in 0..trips {
            b.read_exact(&mut buf)?;
            b.write_all(&buf)?;
        }
        Ok(())
    });
    let mut buf = vec![1u8; size];
    let t = Instant::now();
    for _ in 0..trips {
        a.write_all(&buf).map_err(|e| e.to_string())?;
        a.read_exact(&mut buf).map_err(|e| e.to_string())?;
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / trips as f64;
    echo.join()
        .map_err(|_| "echo thread panicked".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(us)
}

/// The ideal ring: one producer, one consumer, plain memory, the same
/// index protocol as a vchan ring but no grants, no notifications (both
/// sides spin) and `memcpy` for the data.
struct Spsc {
    buf: Box<[UnsafeCell<u8>]>,
    prod: AtomicUsize,
    cons: AtomicUsize,
}

// SAFETY: the producer only writes bytes in [cons+size .. prod) free space and
// the consumer only reads [cons .. prod); the acquire/release index updates
// order the copies, so no byte is accessed by both at once.
unsafe impl Sync for Spsc {}

impl Spsc {
    fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            buf: (0..size).map(|_| UnsafeCell::new(0)).collect(),
            prod: AtomicUsize::new(0),
            cons: AtomicUsize::new(0),
        })
    }

    fn base(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.buf.as_ptr())
    }

    fn copy(src: *const u8, dst: *mut u8, n: usize) {
        // SAFETY: callers pass ranges inside the ring and inside their own
        // buffer, owned by them per the index protocol (see `Sync` above).
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
    }

    fn write(&self, data: &[u8]) {
        let size = self.buf.len();
        let mut done = 0;
        while done < data.len() {
            let prod = self.prod.load(Ordering::Relaxed);
            let space = size - (prod - self.cons.load(Ordering::Acquire));
            if space == 0 {
                std::hint::spin_loop();
                continue;
            }
            let idx = prod % size;
            let n = (data.len() - done).min(space).min(size - idx);
            // SAFETY: idx + n <= size.
            let dst = unsafe { self.base().add(idx) };
            Self::copy(data[done..].as_ptr(), dst, n);
            self.prod.store(prod + n, Ordering::Release);
            done += n;
        }
    }

    fn read(&self, out: &mut [u8]) -> usize {
        let size = self.buf.len();
        loop {
            let cons = self.cons.load(Ordering::Relaxed);
            let ready = self.prod.load(Ordering::Acquire) - cons;
            if ready == 0 {
                std::hint::spin_loop();
                continue;
            }
            let idx = cons % size;
            let n = ready.min(out.len()).min(size - idx);
            // SAFETY: idx + n <= size.
            let src = unsafe { self.base().add(idx) };
            Self::copy(src, out.as_mut_ptr(), n);
            self.cons.store(cons + n, Ordering::Release);
            return n;
        }
    }
}

fn spsc(ring: usize, total: usize, chunk: usize) -> Res<f64> {
    let q = Spsc::new(ring);
    let q2 = q.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            got += q2.read(&mut buf);
        }
        black_box(&buf);
    });
    let data = vec![0xA5u8; chunk];
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk);
        q.write(&data[..n]);
        sent += n;
    }
    reader
        .join()
        .map_err(|_| "spsc reader panicked".to_string())?;
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e9)
}

fn memcpy(ring: usize, total: usize, chunk: usize) -> f64 {
    let src = vec![0xA5u8; chunk];
    let mut dst = vec![0u8; ring];
    let t = Instant::now();
    let mut done = 0;
    let mut at = 0;
    while done < total {
        let n = chunk.min(ring - at);
        dst[at..at + n].copy_from_slice(&src[..n]);
        black_box(&mut dst);
        at = (at + n) % ring;
        done += n;
    }
    total as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn pipe_pair() -> Res<(std::io::PipeWriter, std::io::PipeReader)> {
    let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
    Ok((w, r))
}

const SWEEP_SIZES: [usize; 5] = [64, 512, 4096, 16384, 65536];

/// Runs the benchmark.
pub fn run(a: VchanArgs) -> Res<()> {
    let mut lab = Lab::new()?;
    let total = (a.mib as usize) << 20;
    let big = 1 << 20;
    let chunk = 64 * 1024;

    let sweeping = !a.quick && !a.json;
    let mut progress = super::Progress::new("bench vchan", if sweeping { 3 } else { 2 });
    progress.phase("throughput");
    let (s, c) = lab.pair(big)?;
    let vchan_gbps = stream(c, s, total, chunk)?;
    let (x, y) = UnixStream::pair().map_err(|e| e.to_string())?;
    let socketpair_gbps = stream(x, y, total, chunk)?;
    let (w, r) = pipe_pair()?;
    let pipe_gbps = stream(w, r, total, chunk)?;
    let spsc_gbps = spsc(big, total, chunk)?;
    let memcpy_gbps = memcpy(big, total.max(1 << 30), chunk);

    progress.phase("round trips");
    let (s, c) = lab.pair(4096)?;
    let vchan_rtt_us = rtt(c, s, 64, a.round_trips)?;
    let (x, y) = UnixStream::pair().map_err(|e| e.to_string())?;
    let socketpair_rtt_us = rtt(x, y, 64, a.round_trips.min(200_000))?;

    let mut sweep = Vec::new();
    if sweeping {
        progress.phase("ring size x write size sweep");
        for order in 12u32..=20 {
            for size in SWEEP_SIZES {
                let (s, c) = lab.pair(1 << order)?;
                // Small writes move less data so each cell takes similar time.
                let bytes = (total / 4).clamp(1 << 20, 64 << 20) / (65536 / size).clamp(1, 16);
                sweep.push((order, size, stream(c, s, bytes, size)?));
                // Give the closed pair's grants back before the next one.
                lab.srv.exporter().reclaim(usize::MAX);
            }
        }
    }

    lab.srv.exporter().reclaim(usize::MAX);
    let st = lab.srv.exporter().stats();
    drop(progress);
    if a.json {
        println!(
            "{}",
            crate::json::object(&[
                ("vchan_gbps", vchan_gbps),
                ("socketpair_gbps", socketpair_gbps),
                ("pipe_gbps", pipe_gbps),
                ("spsc_gbps", spsc_gbps),
                ("memcpy_gbps", memcpy_gbps),
                ("vchan_vs_socketpair", vchan_gbps / socketpair_gbps),
                ("vchan_vs_spsc", vchan_gbps / spsc_gbps),
                ("vchan_rtt_us", vchan_rtt_us),
                ("socketpair_rtt_us", socketpair_rtt_us),
                ("rtt_vs_socketpair", vchan_rtt_us / socketpair_rtt_us),
            ])
        );
    } else {
        println!(
            "vchan benchmark (emulator; two threads; {} MiB per stream)",
            a.mib
        );
        println!("throughput, 1 MiB rings, 64 KiB writes:");
        println!("  vchan            {vchan_gbps:>7.2} GB/s");
        println!(
            "  socketpair       {socketpair_gbps:>7.2} GB/s   vchan/socketpair {:>5.2}x",
            vchan_gbps / socketpair_gbps
        );
        println!(
            "  pipe             {pipe_gbps:>7.2} GB/s   vchan/pipe       {:>5.2}x",
            vchan_gbps / pipe_gbps
        );
        println!(
            "  ideal SPSC ring  {spsc_gbps:>7.2} GB/s   vchan/ideal      {:>5.2}x",
            vchan_gbps / spsc_gbps
        );
        println!("  memcpy           {memcpy_gbps:>7.2} GB/s");
        println!("round trip, 64-byte messages:");
        println!("  vchan            {vchan_rtt_us:>7.2} µs");
        println!(
            "  socketpair       {socketpair_rtt_us:>7.2} µs   vchan/socketpair {:>5.3}x",
            vchan_rtt_us / socketpair_rtt_us
        );
        if !sweep.is_empty() {
            println!("vchan stream throughput sweep (GB/s): ring order x write size");
            println!("  order      64 B    512 B    4 KiB   16 KiB   64 KiB");
            for order in 12u32..=20 {
                let row: Vec<String> = sweep
                    .iter()
                    .filter(|(o, _, _)| *o == order)
                    .map(|(_, _, g)| format!("{g:>8.2}"))
                    .collect();
                println!("  {order:>5} {}", row.join(" "));
            }
        }
        println!(
            "grants after the run: live {} quarantined {} leaked {}",
            st.live, st.quarantined, st.leaked
        );
    }
    Ok(())
}
