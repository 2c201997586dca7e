//! `xenshare bench scale`: how costs grow with the size of the system, on
//! the emulator.
//!
//! - Grant table: the share → map → unmap → revoke cycle and share + revoke
//!   with 0, 10^3, 10^4 and 10^5 other entries live in the same table (a
//!   cost that grows with the live count means a scan somewhere).
//! - vchan: 1, 16, 64 and 256 set-ups at once between two domains, each
//!   with its own XenStore connection (default quotas): wall time for all
//!   to connect, and per set-up.
//! - xenstored (1,000 domains, 10,000 watches, a write storm, watch
//!   latency p50/p99): the parts in [`PARTS`] after the two above; the
//!   xenstored ones live in their own file and plug in there.
//!
//! Every figure is the median of `--repeats` rounds, with its spread.

use std::sync::Barrier;
use std::time::Instant;

use clap::Args;
use xenshare::store::perms::{PermKind, Perms};
use xenshare::vchan::{client_init, server_init};
use xenshare::{Access, DomId};
use xenshare_sim::{DomainConfig, Hypervisor};
use xenshare_xenstored::{inproc, Config, Daemon};

use super::stats::{self, Samples};

type Res<T> = Result<T, String>;

/// Options of `bench scale`.
#[derive(Args)]
pub struct ScaleArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Rounds of every measurement; medians and [min–max] are reported.
    #[arg(long, default_value_t = stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,
    /// Grant cycles timed per live-entry level.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    iters: u64,
}

/// One part of the scale benchmark: its name (for progress) and a
/// function that adds its figures to the round's samples.
pub type Part = (&'static str, fn(&ScaleArgs, &mut Samples) -> Res<()>);

/// The parts, run in this order in every round.
pub const PARTS: &[Part] = &[
    ("grant table", grant_scale),
    ("vchan set-up", vchan_scale),
    ("xenstored at scale", xenstored_scale),
];

/// xenstored with 1,000 domains, 10,000 watches and a write storm, watch
/// latency p50/p99 (`xenstore_scale`).
fn xenstored_scale(_: &ScaleArgs, st: &mut Samples) -> Res<()> {
    for (name, v) in super::xenstore_scale::measure()? {
        st.add(format!("xenstored_{name}"), v);
    }
    Ok(())
}

/// Live-entry levels of the grant-table part.
const LIVE: [usize; 4] = [0, 1_000, 10_000, 100_000];

/// Concurrent set-up levels of the vchan part.
const CONCURRENT: [usize; 4] = [1, 16, 64, 256];

fn grant_scale(a: &ScaleArgs, st: &mut Samples) -> Res<()> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let hv = Hypervisor::new();
    let dom0 = hv
        .create_domain_with_id(DomId(0), DomainConfig::default())
        .map_err(|x| e(&x))?;
    let max = LIVE[LIVE.len() - 1];
    let guest = hv
        .create_domain(DomainConfig {
            mem_pages: (max + 4096) as u64,
            grant_frames: 256,
            ..DomainConfig::default()
        })
        .map_err(|x| e(&x))?;
    let (exp, imp) = (guest.exporter(), dom0.importer());
    let mut live = Vec::with_capacity(max);
    for level in LIVE {
        while live.len() < level {
            live.push(
                exp.share(dom0.id(), 1, Access::ReadOnly)
                    .map_err(|x| e(&x))?,
            );
        }
        let cycle = super::per_iter(a.iters, || {
            super::grant_cycle(exp, imp, guest.id(), dom0.id())
        })?;
        let share_revoke = super::per_iter(a.iters, || super::share_revoke(exp, dom0.id()))?;
        st.add(format!("grant_cycle_ns_live_{level}"), cycle);
        st.add(format!("share_revoke_ns_live_{level}"), share_revoke);
    }
    let t = Instant::now();
    let n = live.len();
    for s in live.drain(..) {
        s.try_unshare().map(drop).map_err(|x| e(&x))?;
    }
    st.add(
        format!("revoke_ns_each_of_{max}"),
        t.elapsed().as_nanos() as f64 / n.max(1) as f64,
    );
    Ok(())
}

fn vchan_scale(_: &ScaleArgs, st: &mut Samples) -> Res<()> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let hv = Hypervisor::new();
    let cfg = DomainConfig {
        mem_pages: 8192,
        ..DomainConfig::default()
    };
    hv.create_domain_with_id(DomId(0), cfg).map_err(|x| e(&x))?;
    let srv = hv.create_domain(cfg).map_err(|x| e(&x))?;
    let cli = hv.create_domain(cfg).map_err(|x| e(&x))?;
    let xs = Daemon::new(Config::default());
    let mut c0 = inproc::client(&xs, DomId(0));
    for d in [&srv, &cli] {
        let home = format!("/local/domain/{}", d.id().0);
        c0.mkdir(&home).map_err(|x| e(&x))?;
        c0.set_perms(&home, &Perms::owned_by(d.id(), PermKind::None))
            .map_err(|x| e(&x))?;
    }
    for (level, n) in CONCURRENT.into_iter().enumerate() {
        let barrier = Barrier::new(n + 1);
        let (srv, cli, xs, barrier) = (&srv, &cli, &xs, &barrier);
        let elapsed = std::thread::scope(|sc| -> Res<f64> {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    sc.spawn(move || -> Res<()> {
                        let e = |x: &dyn std::fmt::Display| x.to_string();
                        let path =
                            format!("/local/domain/{}/data/vchan/scale/{level}/{i}", srv.id().0);
                        let handles = srv.evtchn().and_then(|s| Ok((s, cli.evtchn()?)));
                        let mut sxs = inproc::client(xs, srv.id());
                        let mut cxs = inproc::client(xs, cli.id());
                        // Every thread passes both barriers whatever happens,
                        // so a failed set-up is reported, not a hang.
                        barrier.wait();
                        let r = handles.map_err(|x| e(&x)).and_then(|(sev, cev)| {
                            let s = server_init(
                                srv.exporter(),
                                &sev,
                                &mut sxs,
                                cli.id(),
                                &path,
                                1024,
                                2048,
                            )
                            .map_err(|x| format!("server {i}: {x}"))?;
                            let c = client_init(cli.importer(), &cev, &mut cxs, srv.id(), &path)
                                .map_err(|x| format!("client {i}: {x}"))?;
                            Ok((s, c))
                        });
                        barrier.wait();
                        drop(r?);
                        sxs.rm(&path).map_err(|x| e(&x))
                    })
                })
                .collect();
            barrier.wait();
            let t = Instant::now();
            barrier.wait();
            let elapsed = t.elapsed().as_secs_f64();
            for h in hs {
                h.join()
                    .map_err(|_| "set-up thread panicked".to_string())??;
            }
            Ok(elapsed)
        })?;
        srv.exporter().reclaim(usize::MAX);
        st.add(format!("vchan_setup_ms_{n}_concurrent"), elapsed * 1e3);
        st.add(
            format!("vchan_setup_us_each_{n}_concurrent"),
            elapsed * 1e6 / n as f64,
        );
    }
    Ok(())
}

/// Runs the benchmark.
pub fn run(a: ScaleArgs) -> Res<()> {
    let mut progress = super::Progress::new("bench scale", a.repeats as usize * PARTS.len());
    let samples = stats::repeat(a.repeats, |_, st| {
        for (name, part) in PARTS {
            progress.phase(name);
            part(&a, st)?;
        }
        Ok(())
    })?;
    drop(progress);
    if !super::json_or_title(&samples, a.json, "scale benchmark (emulator; ") {
        return Ok(());
    }
    println!("grant table, {} cycles per level (ns):", a.iters);
    println!("  live entries   share→map→unmap→revoke      share + revoke");
    for level in LIVE {
        println!(
            "  {level:>12}   {}   {}",
            samples
                .get(&format!("grant_cycle_ns_live_{level}"))
                .show(9, 1),
            samples
                .get(&format!("share_revoke_ns_live_{level}"))
                .show(9, 1)
        );
    }
    println!("vchan set-ups at once between two domains:");
    println!("  concurrent         all connected (ms)        per set-up (µs)");
    for n in CONCURRENT {
        println!(
            "  {n:>10}   {}   {}",
            samples
                .get(&format!("vchan_setup_ms_{n}_concurrent"))
                .show(9, 2),
            samples
                .get(&format!("vchan_setup_us_each_{n}_concurrent"))
                .show(9, 1)
        );
    }
    Ok(())
}
