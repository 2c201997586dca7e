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

use super::AlignedBuf;

type Res<T> = Result<T, String>;

/// Options of `bench vchan`.
#[derive(Args)]
pub struct VchanArgs {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Bytes moved per throughput measurement (MiB).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    mib: u64,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    round_trips: u64,
    /// Only the headline figures, no ring size x write size sweep.
    #[arg(long)]
    quick: bool,
    /// Rounds of every measurement; medians and [min–max] are reported.
    #[arg(long, default_value_t = super::stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,
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

    /// A connected pair with both rings of `ring` bytes, each end gathering
    /// up to `batch` bytes of small writes (0: none; see
    /// `Vchan::set_write_batch`).
    fn pair(
        &mut self,
        ring: usize,
        batch: usize,
    ) -> Res<(
        impl Read + Write + Send + 'static,
        impl Read + Write + Send + 'static,
    )> {
        self.n += 1;
        let path = format!("/local/domain/{}/data/vchan/{}", self.srv.id().0, self.n);
        let sev = self.srv.evtchn().map_err(|e| e.to_string())?;
        let cev = self.cli.evtchn().map_err(|e| e.to_string())?;
        let mut s = server_init(
            self.srv.exporter(),
            &sev,
            &mut inproc::client(&self.xs, self.srv.id()),
            self.cli.id(),
            &path,
            ring,
            ring,
        )
        .map_err(|e| e.to_string())?;
        let mut c = client_init(
            self.cli.importer(),
            &cev,
            &mut inproc::client(&self.xs, self.cli.id()),
            self.srv.id(),
            &path,
        )
        .map_err(|e| e.to_string())?;
        s.set_write_batch(batch);
        c.set_write_batch(batch);
        Ok((s, c))
    }
}

/// Streams `total` bytes from `w` to `r` in `chunk`-byte writes on two
/// threads; returns GB/s. Both buffers are page-aligned (see
/// [`AlignedBuf`]); the writer flushes at the end (a batching vchan
/// publishes its last bytes there).
fn stream<W, R>(mut w: W, mut r: R, total: usize, chunk: usize) -> Res<f64>
where
    W: Write + Send + 'static,
    R: Read + Send + 'static,
{
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = AlignedBuf::new(READ_BUF, 0);
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
    let data = AlignedBuf::new(chunk, 0xA5);
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk);
        w.write_all(&data[..n]).map_err(|e| e.to_string())?;
        sent += n;
    }
    w.flush().map_err(|e| e.to_string())?;
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

/// Bytes of each segment of the paired vchan ÷ ideal ring measurement.
const PAIRED_SEGMENT: usize = 64 << 20;

/// Segment pairs per round of the paired measurement.
const PAIRED_PAIRS: usize = 8;

/// vchan ÷ the ideal ring, measured in adjacent pairs: `PAIRED_PAIRS`
/// times, a `PAIRED_SEGMENT` stream through a fresh vchan and one through
/// the ideal ring, back to back (the order alternating, A B B A, so
/// neither side always goes first); the median of the pairs' ratios.
///
/// Why: on this kind of machine (a 2-vCPU VM) both spinning designs have
/// spells, lasting tens to hundreds of milliseconds, in which they run at
/// a fifth of their speed, at moments unrelated to each other. Whole
/// 512 MiB streams measured seconds apart then compare one design's spell
/// with the other's good moment, and the round's ratio swings from 0.2 to
/// 3. Segments of a few milliseconds each, side by side, mostly see the
/// same moment.
fn paired_vs_ideal(lab: &mut Lab, ring: usize, chunk: usize) -> Res<f64> {
    let mut ratios = Vec::with_capacity(PAIRED_PAIRS);
    let ideal = || spsc(ring, PAIRED_SEGMENT, chunk);
    for k in 0..PAIRED_PAIRS {
        let mut vchan = || -> Res<f64> {
            let (s, c) = lab.pair(ring, 0)?;
            stream(c, s, PAIRED_SEGMENT, chunk)
        };
        let (v, i) = if k % 2 == 0 {
            let v = vchan()?;
            (v, ideal()?)
        } else {
            let i = ideal()?;
            (vchan()?, i)
        };
        ratios.push(v / i);
        lab.srv.exporter().reclaim(usize::MAX);
        lab.cli.exporter().reclaim(usize::MAX);
    }
    Ok(super::stats::Stat::of(&ratios).median)
}

/// Bytes a stream reader asks for per read call.
const READ_BUF: usize = 256 * 1024;

/// Round-trip times of one ping-pong run, in µs.
struct Rtt {
    /// The median round trip: what a request usually costs, unmoved by the
    /// few trips a preempted thread stretches to a scheduler slice.
    p50: f64,
    /// The 99th percentile.
    p99: f64,
    /// The mean over all trips (preemptions included).
    mean: f64,
}

/// Ping-pong of `size`-byte messages, each round trip timed on its own.
fn rtt<A, B>(mut a: A, mut b: B, size: usize, trips: u64) -> Res<Rtt>
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
    let mut each = Vec::with_capacity(trips as usize);
    let t = Instant::now();
    let mut last = t;
    for _ in 0..trips {
        a.write_all(&buf).map_err(|e| e.to_string())?;
        a.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let now = Instant::now();
        each.push(now.duration_since(last).as_secs_f64() * 1e6);
        last = now;
    }
    let mean = t.elapsed().as_secs_f64() * 1e6 / trips as f64;
    echo.join()
        .map_err(|_| "echo thread panicked".to_string())?
        .map_err(|e| e.to_string())?;
    each.sort_by(f64::total_cmp);
    let at = |q: f64| {
        each.get(((each.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Rtt {
        p50: at(0.5),
        p99: at(0.99),
        mean,
    })
}

/// An index on a cache line pair of its own: the producer's and the
/// consumer's index never share a line (nor an adjacent one, which the
/// spatial prefetcher pulls in pairs), so a store to one does not evict
/// the other from the peer's cache.
#[repr(align(128))]
struct Padded(AtomicUsize);

/// The ideal ring: one producer, one consumer, plain page-aligned memory,
/// the same stream semantics as a vchan ring (free-running indices, copy in,
/// publish, copy out, publish), but no grants and no notifications (both
/// sides spin), and what an expert adds: indices on separate cache lines,
/// each side caching the peer's index and re-reading it only when the
/// cached value does not cover the request, one publish per call
/// (batching), and `memcpy` between aligned buffers for the data.
struct Spsc<I: IndexLoc = OwnLines> {
    pages: Box<[Page]>,
    idx: I,
}

/// Where a ring's producer and consumer index live: a type parameter, so
/// the ideal ring's hot loop has no branch on it.
pub(super) trait IndexLoc: Send + Sync + 'static {
    fn prod(&self) -> &AtomicUsize;
    fn cons(&self) -> &AtomicUsize;
    /// Runs after each index is published: nothing for the ideal ring;
    /// the notify check of vchan's wire protocol for [`VchanProtocol`].
    #[inline(always)]
    fn published(&self) {}
}

/// Each index on a cache-line pair of its own (the ideal).
pub(super) struct OwnLines {
    prod: Padded,
    cons: Padded,
}

impl IndexLoc for OwnLines {
    fn prod(&self) -> &AtomicUsize {
        &self.prod.0
    }
    fn cons(&self) -> &AtomicUsize {
        &self.cons.0
    }
}

/// Both rings' indices of a duplex pair in one shared cache line, as
/// libxenvchan's wire layout has them (`slot` picks this ring's pair).
struct InOneLine {
    line: Arc<SharedLine>,
    slot: usize,
}

impl IndexLoc for InOneLine {
    fn prod(&self) -> &AtomicUsize {
        &self.line.0[2 * self.slot]
    }
    fn cons(&self) -> &AtomicUsize {
        &self.line.0[2 * self.slot + 1]
    }
}

/// Four indices in one cache line, two rings' producer and consumer, and
/// a word standing for the notify bytes that share the line in a vchan's
/// control page.
#[repr(align(64))]
struct SharedLine([AtomicUsize; 5]);

/// The indices in one line as [`InOneLine`], plus what vchan's wire
/// protocol adds to every index update: a full fence after the store and a
/// load of the notify byte in the same line (see `xenshare::vchan::notify`).
/// With no peer ever asking for a wake-up, this is the floor of a
/// wire-compatible vchan's round trip on this machine: the protocol's cost
/// without any of the implementation's (no validation, no grant or mapping
/// views, no error paths).
pub(super) struct VchanProtocol {
    one: InOneLine,
}

impl IndexLoc for VchanProtocol {
    fn prod(&self) -> &AtomicUsize {
        self.one.prod()
    }
    fn cons(&self) -> &AtomicUsize {
        self.one.cons()
    }
    #[inline(always)]
    fn published(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        black_box(self.one.line.0[4].load(Ordering::Relaxed));
    }
}

/// One page of ring memory, page-aligned.
#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);

impl<I: IndexLoc> Spsc<I> {
    fn with_indices(size: usize, idx: I) -> Arc<Self> {
        Arc::new(Self {
            pages: (0..size.div_ceil(4096))
                .map(|_| Page(UnsafeCell::new([0; 4096])))
                .collect(),
            idx,
        })
    }

    fn len(&self) -> usize {
        self.pages.len() * 4096
    }

    fn base(&self) -> *mut u8 {
        // `Page` is repr(C) around the cell, so the slice's pointer is the
        // first cell's; the pages are contiguous (size == alignment).
        UnsafeCell::raw_get(self.pages.as_ptr().cast::<UnsafeCell<[u8; 4096]>>()).cast()
    }
}

/// The producer's end, with its private index and cached consumer index.
pub(super) struct SpscTx<I: IndexLoc = OwnLines> {
    q: Arc<Spsc<I>>,
    prod: usize,
    seen_cons: usize,
}

/// The consumer's end, with its private index and cached producer index.
pub(super) struct SpscRx<I: IndexLoc = OwnLines> {
    q: Arc<Spsc<I>>,
    cons: usize,
    seen_prod: usize,
}

impl<I: IndexLoc> SpscTx<I> {
    /// Waits for `n` bytes of room in one piece (`n` divides the ring
    /// size, so a piece never wraps), lets `f` fill them in place (as a
    /// back end's `pread` fills a granted page), then publishes them.
    pub(super) fn fill_with<E>(
        &mut self,
        n: usize,
        f: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let size = self.q.len();
        assert!(n > 0 && size.is_multiple_of(n) && self.prod.is_multiple_of(n));
        let mut spins = 0;
        while size - (self.prod - self.seen_cons) < n {
            self.seen_cons = self.q.idx.cons().load(Ordering::Acquire);
            if size - (self.prod - self.seen_cons) < n {
                backoff(&mut spins);
            }
        }
        let idx = self.prod & (size - 1);
        // SAFETY: idx + n <= size (n divides size and prod is a multiple of
        // n), and [prod, prod + n) is free space that only the producer
        // touches until it publishes it below (the consumer published it
        // free with a release store, read above with acquire); the slice
        // does not outlive this call.
        let piece = unsafe { std::slice::from_raw_parts_mut(self.q.base().add(idx), n) };
        f(piece)?;
        self.prod += n;
        self.q.idx.prod().store(self.prod, Ordering::Release);
        self.q.idx.published();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) {
        let size = self.q.len();
        let mut spins = 0;
        let mut done = 0;
        while done < data.len() {
            let mut space = size - (self.prod - self.seen_cons);
            if space < data.len() - done {
                self.seen_cons = self.q.idx.cons().load(Ordering::Acquire);
                space = size - (self.prod - self.seen_cons);
            }
            if space == 0 {
                backoff(&mut spins);
                continue;
            }
            spins = 0;
            let idx = self.prod & (size - 1);
            let n = (data.len() - done).min(space).min(size - idx);
            // SAFETY: idx + n <= size, and [prod, prod + n) is free space
            // that only the producer touches until it publishes it below
            // (the consumer published it free with a release store, read
            // above with acquire).
            unsafe {
                std::ptr::copy_nonoverlapping(data[done..].as_ptr(), self.q.base().add(idx), n)
            };
            self.prod += n;
            done += n;
            if done < data.len() {
                // Wrapped: publish the first part before waiting for room.
                self.q.idx.prod().store(self.prod, Ordering::Release);
                self.q.idx.published();
            }
        }
        self.q.idx.prod().store(self.prod, Ordering::Release);
        self.q.idx.published();
    }
}

impl<I: IndexLoc> SpscRx<I> {
    pub(super) fn read(&mut self, out: &mut [u8]) -> usize {
        let size = self.q.len();
        let mut spins = 0;
        loop {
            let mut ready = self.seen_prod - self.cons;
            if ready < out.len() {
                self.seen_prod = self.q.idx.prod().load(Ordering::Acquire);
                ready = self.seen_prod - self.cons;
            }
            if ready == 0 {
                backoff(&mut spins);
                continue;
            }
            let idx = self.cons & (size - 1);
            let n = ready.min(out.len()).min(size - idx);
            // SAFETY: idx + n <= size, and [cons, cons + n) was published by
            // the producer (release store, read above with acquire) and is
            // not written again until the consumer publishes it free below.
            unsafe { std::ptr::copy_nonoverlapping(self.q.base().add(idx), out.as_mut_ptr(), n) };
            self.cons += n;
            self.q.idx.cons().store(self.cons, Ordering::Release);
            self.q.idx.published();
            return n;
        }
    }
}

/// Waiting for the peer: spin a while (it is normally running on the other
/// core), then yield the core, so that on a machine with more runnable
/// threads than cores a spinning side does not hold the core its peer
/// needs for a whole time slice.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 2048 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

// SAFETY: the ring bytes are only reached through SpscTx (free space) and
// SpscRx (published data), whose ranges never overlap per the index
// protocol; the indices are atomics.
unsafe impl<I: IndexLoc> Sync for Spsc<I> {}

/// Both ends of one ideal ring.
pub(super) fn spsc_ends(ring: usize) -> (SpscTx, SpscRx) {
    assert!(ring.is_power_of_two());
    ends_of(Spsc::with_indices(
        ring,
        OwnLines {
            prod: Padded(AtomicUsize::new(0)),
            cons: Padded(AtomicUsize::new(0)),
        },
    ))
}

/// The two ends of ring `q`.
fn ends_of<I: IndexLoc>(q: Arc<Spsc<I>>) -> (SpscTx<I>, SpscRx<I>) {
    let tx = SpscTx {
        q: q.clone(),
        prod: 0,
        seen_cons: 0,
    };
    let rx = SpscRx {
        q,
        cons: 0,
        seen_prod: 0,
    };
    (tx, rx)
}

/// One end of a pair of ideal rings, one each way: the round-trip floor
/// of a shared-memory ring on this machine (both sides spin, nothing is
/// validated, no notification protocol), to set vchan's round trip against.
struct SpscDuplex<I: IndexLoc = OwnLines> {
    tx: SpscTx<I>,
    rx: SpscRx<I>,
}

impl SpscDuplex {
    fn pair(ring: usize) -> (Self, Self) {
        let (atx, brx) = spsc_ends(ring);
        let (btx, arx) = spsc_ends(ring);
        (Self { tx: atx, rx: arx }, Self { tx: btx, rx: brx })
    }
}

impl<I: IndexLoc> SpscDuplex<I> {
    /// A pair whose two rings keep all four indices in one cache line, as
    /// a vchan's control page has them; `loc` wraps each ring's slot of
    /// that line in the index placement `I`.
    fn one_line_pair(ring: usize, loc: impl Fn(InOneLine) -> I) -> (Self, Self) {
        assert!(ring.is_power_of_two());
        let line = Arc::new(SharedLine(std::array::from_fn(|_| AtomicUsize::new(0))));
        let ring_at = |slot| {
            Spsc::with_indices(
                ring,
                loc(InOneLine {
                    line: line.clone(),
                    slot,
                }),
            )
        };
        let (atx, brx) = ends_of(ring_at(0));
        let (btx, arx) = ends_of(ring_at(1));
        (Self { tx: atx, rx: arx }, Self { tx: btx, rx: brx })
    }
}

impl<I: IndexLoc> Read for SpscDuplex<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        Ok(self.rx.read(buf))
    }
}

impl<I: IndexLoc> Write for SpscDuplex<I> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn spsc(ring: usize, total: usize, chunk: usize) -> Res<f64> {
    let (mut tx, mut rx) = spsc_ends(ring);
    let reader = std::thread::spawn(move || {
        let mut buf = AlignedBuf::new(READ_BUF, 0);
        let mut got = 0;
        while got < total {
            got += rx.read(&mut buf);
        }
        black_box(&buf[..]);
    });
    let data = AlignedBuf::new(chunk, 0xA5);
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk);
        tx.write(&data[..n]);
        sent += n;
    }
    reader
        .join()
        .map_err(|_| "spsc reader panicked".to_string())?;
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// One thread copying `chunk`-byte pieces from an aligned buffer round an
/// aligned ring-sized buffer: what a single copy costs at best.
fn memcpy(ring: usize, total: usize, chunk: usize) -> f64 {
    let src = AlignedBuf::new(chunk, 0xA5);
    let mut dst = AlignedBuf::new(ring, 0);
    let t = Instant::now();
    let mut done = 0;
    let mut at = 0;
    while done < total {
        let n = chunk.min(ring - at);
        dst[at..at + n].copy_from_slice(&src[..n]);
        black_box(&mut dst[..]);
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

/// Bytes a batching vchan gathers before it publishes (see
/// `Vchan::set_write_batch`).
const BATCH: usize = 16 * 1024;

/// Runs the benchmark.
pub fn run(a: VchanArgs) -> Res<()> {
    let mut lab = Lab::new()?;
    let total = (a.mib as usize) << 20;
    let small_total = (total / 8).max(1 << 20);
    let big = 1 << 20;
    let chunk = 64 * 1024;

    let sweeping = !a.quick && !a.json;
    let mut progress =
        super::Progress::new("bench vchan", a.repeats as usize + usize::from(sweeping));
    let samples = super::stats::repeat(a.repeats, |i, st| {
        progress.phase(&format!("round {} of {}", i + 1, a.repeats));
        // Baselines and vchan back to back in each round, so the ratios
        // compare runs under the same load.
        let (s, c) = lab.pair(big, 0)?;
        let vchan = stream(c, s, total, chunk)?;
        let (x, y) = UnixStream::pair().map_err(|e| e.to_string())?;
        let socketpair = stream(x, y, total, chunk)?;
        let (w, r) = pipe_pair()?;
        let pipe = stream(w, r, total, chunk)?;
        let ideal = spsc(big, total, chunk)?;
        let mc = memcpy(big, total.max(1 << 30), chunk);
        st.add("vchan_gbps", vchan);
        st.add("socketpair_gbps", socketpair);
        st.add("pipe_gbps", pipe);
        st.add("spsc_gbps", ideal);
        st.add("memcpy_gbps", mc);
        st.add("vchan_vs_socketpair", vchan / socketpair);
        st.add("vchan_vs_spsc", vchan / ideal);
        st.add(
            "vchan_vs_spsc_paired",
            paired_vs_ideal(&mut lab, big, chunk)?,
        );

        let (s, c) = lab.pair(big, 0)?;
        st.add("vchan_64b_gbps", stream(c, s, small_total, 64)?);
        let (s, c) = lab.pair(big, BATCH)?;
        let v64 = stream(c, s, small_total, 64)?;
        st.add("vchan_64b_batched_gbps", v64);
        let (x, y) = UnixStream::pair().map_err(|e| e.to_string())?;
        let sp64 = stream(x, y, small_total / 8, 64)?;
        st.add("socketpair_64b_gbps", sp64);
        st.add("vchan_64b_batched_vs_socketpair", v64 / sp64);

        let (s, c) = lab.pair(4096, 0)?;
        let v = rtt(c, s, 64, a.round_trips)?;
        let (x, y) = UnixStream::pair().map_err(|e| e.to_string())?;
        let sp = rtt(x, y, 64, a.round_trips.min(200_000))?;
        st.add("vchan_rtt_us", v.p50);
        st.add("vchan_rtt_p99_us", v.p99);
        st.add("vchan_rtt_mean_us", v.mean);
        st.add("socketpair_rtt_us", sp.p50);
        st.add("socketpair_rtt_p99_us", sp.p99);
        st.add("socketpair_rtt_mean_us", sp.mean);
        let (x, y) = SpscDuplex::<OwnLines>::pair(4096);
        let ideal = rtt(x, y, 64, a.round_trips)?;
        st.add("spsc_rtt_us", ideal.p50);
        // The one-line layout alone: what it costs a round trip.
        let (x, y) = SpscDuplex::one_line_pair(4096, |l| l);
        let packed = rtt(x, y, 64, a.round_trips)?;
        st.add("spsc_one_line_rtt_us", packed.p50);
        st.add("rtt_vs_spsc_one_line", v.p50 / packed.p50);
        // The same with vchan's notify protocol on every publish.
        let (x, y) = SpscDuplex::one_line_pair(4096, |one| VchanProtocol { one });
        let proto = rtt(x, y, 64, a.round_trips)?;
        st.add("vchan_protocol_rtt_us", proto.p50);
        st.add("rtt_vs_vchan_protocol", v.p50 / proto.p50);
        st.add("vchan_protocol_rtt_vs_socketpair", proto.p50 / sp.p50);
        st.add("rtt_vs_socketpair", v.p50 / sp.p50);
        st.add("rtt_vs_spsc", v.p50 / ideal.p50);
        st.add("spsc_rtt_vs_socketpair", ideal.p50 / sp.p50);
        st.add("rtt_mean_vs_socketpair", v.mean / sp.mean);
        // Give the closed pairs' grants back before the next round.
        lab.srv.exporter().reclaim(usize::MAX);
        lab.cli.exporter().reclaim(usize::MAX);
        Ok(())
    })?;

    let mut sweep = Vec::new();
    if sweeping {
        progress.phase("ring size x write size sweep");
        for order in 12u32..=20 {
            for size in SWEEP_SIZES {
                let (s, c) = lab.pair(1 << order, 0)?;
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
    let head = format!(
        "vchan benchmark (emulator; two threads; {} MiB per stream; ",
        a.mib
    );
    if !super::json_or_title(&samples, a.json, &head) {
        return Ok(());
    }
    let g = |k: &str| samples.get(k);
    println!("throughput, 1 MiB rings, 64 KiB writes (GB/s):");
    println!("  vchan            {}", g("vchan_gbps").show(7, 2));
    println!(
        "  socketpair       {}   vchan/socketpair {}",
        g("socketpair_gbps").show(7, 2),
        g("vchan_vs_socketpair").show(5, 2)
    );
    println!("  pipe             {}", g("pipe_gbps").show(7, 2));
    println!(
        "  ideal SPSC ring  {}   vchan/ideal      {}",
        g("spsc_gbps").show(7, 2),
        g("vchan_vs_spsc").show(5, 2)
    );
    println!(
        "  vchan/ideal in adjacent {} MiB segment pairs (median of {})  {}",
        PAIRED_SEGMENT >> 20,
        PAIRED_PAIRS,
        g("vchan_vs_spsc_paired").show(5, 2)
    );
    println!("  memcpy           {}", g("memcpy_gbps").show(7, 2));
    println!("64-byte writes, 1 MiB rings (GB/s):");
    println!("  vchan            {}", g("vchan_64b_gbps").show(7, 2));
    println!(
        "  vchan, batched   {}   ({} KiB batches)",
        g("vchan_64b_batched_gbps").show(7, 2),
        BATCH / 1024
    );
    println!(
        "  socketpair       {}   batched/socketpair {}",
        g("socketpair_64b_gbps").show(7, 2),
        g("vchan_64b_batched_vs_socketpair").show(5, 1)
    );
    println!("round trip, 64-byte messages (µs, median trip):");
    println!("  vchan            {}", g("vchan_rtt_us").show(7, 2));
    println!(
        "  socketpair       {}   vchan/socketpair {}",
        g("socketpair_rtt_us").show(7, 2),
        g("rtt_vs_socketpair").show(5, 3)
    );
    println!(
        "  ideal SPSC ring  {}   vchan/ideal      {}",
        g("spsc_rtt_us").show(7, 2),
        g("rtt_vs_spsc").show(5, 2)
    );
    println!(
        "  ideal, indices in one line {} vchan/that {}",
        g("spsc_one_line_rtt_us").show(7, 2),
        g("rtt_vs_spsc_one_line").show(5, 2)
    );
    println!(
        "  that + vchan's notify fences {} vchan/that {}  that/socketpair {}",
        g("vchan_protocol_rtt_us").show(7, 2),
        g("rtt_vs_vchan_protocol").show(5, 2),
        g("vchan_protocol_rtt_vs_socketpair").show(5, 3)
    );
    if !sweep.is_empty() {
        println!("vchan stream throughput sweep (GB/s, one run): ring order x write size");
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
    Ok(())
}
