//! `xenshare bench ...`: micro-benchmarks, each printed next to a baseline
//! measured in the same run.

use std::hint::black_box;
use std::time::Instant;

use clap::{Args, Subcommand};

mod all;
mod blk;
mod net;
mod progress;
mod scale;
mod stats;
mod vchan;
mod xenstore;
pub(crate) mod xenstore_scale;
pub(crate) use progress::Progress;
use xenshare::{Access, DomId};
use xenshare_sim::{DomainConfig, Hypervisor, SimExporter, SimImporter};

/// Benchmarks.
#[derive(Subcommand)]
pub enum Bench {
    /// Grant cycle: share → map → unmap → revoke, on the emulator.
    Grants(GrantArgs),
    /// vchan throughput and round-trip time vs socketpair, pipe, an ideal ring and memcpy.
    Vchan(vchan::VchanArgs),
    /// XenStore read/write ops/s over the Unix socket vs in-process and a bare socket echo.
    Xenstore(xenstore::XenstoreArgs),
    /// Block device IOPS and throughput vs pread.
    Blk(blk::BlkArgs),
    /// Netfront/netback frames per second and throughput on the emulator.
    Net(net::NetArgs),
    /// Every benchmark above, each in its own process, as one JSON object:
    /// every figure of the performance table under `figures`, and each
    /// benchmark's full output under its name.
    All(all::AllArgs),
    /// How costs grow: grant-table operations with 10^5 live entries,
    /// 256 concurrent vchan set-ups, and the xenstored scale figures.
    Scale(scale::ScaleArgs),
}

/// Options of `bench grants`.
#[derive(Args)]
pub struct GrantArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Iterations per measurement.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    iters: u64,
    /// Rounds of every measurement; medians and [min–max] are reported.
    #[arg(long, default_value_t = stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,
}

/// Runs a benchmark.
pub fn run(b: Bench) -> Result<(), String> {
    match b {
        Bench::Grants(a) => grants(a),
        Bench::Vchan(a) => vchan::run(a),
        Bench::Xenstore(a) => xenstore::run(a),
        Bench::Blk(a) => blk::run(a),
        Bench::Net(a) => net::run(a),
        Bench::All(a) => all::run(a),
        Bench::Scale(a) => scale::run(a),
    }
}

fn per_iter(iters: u64, f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    per_iter_cpu(iters, f).map(|(wall, _)| wall)
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// Nanoseconds per call of `f`, as (wall clock, this thread's CPU time).
/// On a machine with more runnable threads than cores the wall time also
/// counts the slices other processes ran in; the CPU time does not (it
/// still counts their cache pollution).
fn per_iter_cpu(iters: u64, f: impl FnMut() -> Result<(), String>) -> Result<(f64, f64), String> {
    let mut f = f;
    // Warm-up, so page faults and allocator growth are not measured.
    for _ in 0..(iters / 10).max(1) {
        f()?;
    }
    let (t, c) = (Instant::now(), thread_cpu_ns());
    for _ in 0..iters {
        f()?;
    }
    let cpu = thread_cpu_ns() - c;
    Ok((
        t.elapsed().as_nanos() as f64 / iters as f64,
        cpu / iters as f64,
    ))
}

/// One grant cycle, what `bench grants` and `bench scale` time: `exp`
/// (domain `granter`) shares a page with `mapper`, whose `imp` maps and
/// unmaps it; then the share is revoked. Never inlined, so a profiler can
/// attribute (and `callgrind --toggle-collect` count) exactly one cycle.
#[inline(never)]
fn grant_cycle(
    exp: &SimExporter,
    imp: &SimImporter,
    granter: DomId,
    mapper: DomId,
) -> Result<(), String> {
    let s = exp
        .share(mapper, 1, Access::ReadWrite)
        .map_err(|x| x.to_string())?;
    let m = imp.map_rw(granter, s.refs()).map_err(|x| x.to_string())?;
    black_box(m.mem().as_ptr());
    drop(m);
    s.try_unshare().map(drop).map_err(|x| x.to_string())
}

/// Shares a page with `peer` and revokes it (never mapped).
fn share_revoke(exp: &SimExporter, peer: DomId) -> Result<(), String> {
    let s = exp
        .share(peer, 1, Access::ReadWrite)
        .map_err(|x| x.to_string())?;
    s.try_unshare().map(drop).map_err(|x| x.to_string())
}

/// Prints `samples` as one JSON object if `json`; else the table's title
/// line, `head` (which opens a parenthesis) followed by how many rounds
/// the figures are medians of. True when the caller prints its table next.
fn json_or_title(samples: &stats::Samples, json: bool, head: &str) -> bool {
    if json {
        println!("{}", samples.json(&[]));
        return false;
    }
    println!("{head}median [min–max] of {} rounds)", samples.rounds());
    true
}

fn grants(a: GrantArgs) -> Result<(), String> {
    let hv = Hypervisor::new();
    let dom0 = hv
        .create_domain_with_id(DomId(0), DomainConfig::default())
        .map_err(|e| e.to_string())?;
    let guest = hv
        .create_domain(DomainConfig::default())
        .map_err(|e| e.to_string())?;
    let (exp, imp) = (guest.exporter().clone(), dom0.importer().clone());
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let mut progress = Progress::new("bench grants", a.repeats as usize);
    let region = xenshare_sim::region::Region::new("bench", 4096).map_err(|x| e(&x))?;
    let table = guest
        .exporter()
        .table()
        .ok_or("the emulator has a grant table")?;

    let samples = stats::repeat(a.repeats, |i, st| {
        progress.phase(&format!("round {} of {}", i + 1, a.repeats));
        let (cycle, cycle_cpu) =
            per_iter_cpu(a.iters, || grant_cycle(&exp, &imp, guest.id(), dom0.id()))?;
        let share_only = per_iter(a.iters, || share_revoke(&exp, dom0.id()))?;

        let s = exp
            .share(dom0.id(), 1, Access::ReadWrite)
            .map_err(|x| e(&x))?;
        let map_unmap = per_iter(a.iters, || {
            let m = imp.map_rw(guest.id(), s.refs()).map_err(|x| e(&x))?;
            black_box(m.mem().as_ptr());
            Ok(())
        })?;
        drop(s);

        // The revoke alone: the entry's compare-and-swap loop plus bookkeeping.
        let mut revoke_total = 0f64;
        let rounds = (a.iters / 1000).max(1);
        for _ in 0..rounds {
            let shares: Vec<_> = (0..1000)
                .map(|_| exp.share(dom0.id(), 1, Access::ReadOnly))
                .collect::<Result<_, _>>()
                .map_err(|x| e(&x))?;
            let t = Instant::now();
            for s in shares {
                black_box(s.try_unshare().is_ok());
            }
            revoke_total += t.elapsed().as_nanos() as f64;
        }
        let end_access = revoke_total / (rounds * 1000) as f64;
        black_box(table.free_count());

        // Baseline: what mapping a page costs when the emulator has to go
        // to the kernel (memfd mmap + munmap), as a multi-process emulator
        // or gntdev does.
        let mmap_ns = per_iter((a.iters / 4).max(1), || {
            let st = xenshare_sim::region::Stitched::new(&[(region.fd(), 0, true)])
                .map_err(|x| e(&x))?;
            black_box(st.mem().as_ptr());
            Ok(())
        })?;
        st.add("grant_cycle_ns", cycle);
        st.add("grant_cycle_cpu_ns", cycle_cpu);
        st.add("end_access_ns", end_access);
        st.add("share_revoke_ns", share_only);
        st.add("map_unmap_ns", map_unmap);
        st.add("mmap_munmap_ns", mmap_ns);
        st.add("cycle_vs_mmap", cycle / mmap_ns);
        Ok(())
    })?;

    drop(progress);
    let head = format!("grant benchmark (emulator, {} iterations each; ", a.iters);
    if json_or_title(&samples, a.json, &head) {
        let g = |k: &str| samples.get(k).show(9, 1);
        println!(
            "  full cycle share→map→unmap→revoke  {} ns",
            g("grant_cycle_ns")
        );
        println!(
            "    the same in this thread's CPU time {} ns",
            g("grant_cycle_cpu_ns")
        );
        println!(
            "  share + revoke (no map)            {} ns",
            g("share_revoke_ns")
        );
        println!(
            "  map + unmap                        {} ns",
            g("map_unmap_ns")
        );
        println!(
            "  revoke alone (end_access)          {} ns",
            g("end_access_ns")
        );
        println!(
            "  baseline: memfd mmap+munmap 1 page {} ns",
            g("mmap_munmap_ns")
        );
        println!(
            "  cycle / baseline                   {}x",
            samples.get("cycle_vs_mmap").show(9, 3)
        );
    }
    Ok(())
}

/// A page-aligned private buffer. Every benchmark copies from and into
/// these, so that no side is slowed by where the allocator happened to put
/// its buffer: on this AMD machine glibc's `memcpy` of 64 KiB runs at
/// about 1.7 GB/s into a destination 16 bytes past a cache line (its
/// `rep movsb` path) and at 20–30 GB/s into an aligned one, which is what
/// made the old `memcpy` baseline a tenth of a C program's.
pub(crate) struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes of `fill`, starting on a page boundary.
    pub(crate) fn new(len: usize, fill: u8) -> Self {
        let v = vec![fill; len + 4096];
        let off = v.as_ptr().align_offset(4096).min(4096);
        Self { v, off, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}
