//! Share a page with another domain, map it there, and take it back without
//! ever reusing memory a peer can still reach (the MSA02 / XSA-396 rule).
//!
//! Two domains of the in-process emulator: a guest grants pages, dom0 maps
//! them. Run with `cargo run -p xenshare-examples --example share_map`.

use std::error::Error;
use std::time::{Duration, Instant};

use xenshare::grant::{Exporter, Revoked, Share};
use xenshare::platform::{GrantBackend, PageSet};
use xenshare::{Access, DomId};
use xenshare_sim::{DomainConfig, Hypervisor};

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> Res<()> {
    let hv = Hypervisor::new();
    let dom0 = hv.create_domain_with_id(DomId(0), DomainConfig::default())?;
    let guest = hv.create_domain(DomainConfig::default())?;

    // 1. Share one page read-write with dom0; dom0 maps it and writes.
    let share = guest.exporter().share(dom0.id(), 1, Access::ReadWrite)?;
    println!(
        "guest shared grant ref {:?} with dom{}",
        share.refs(),
        dom0.id().0
    );
    let mapping = dom0.importer().map_rw(guest.id(), share.refs())?;
    mapping.mem().write(0, b"hello from dom0")?;
    let mut buf = [0u8; 15];
    share.mem().read(0, &mut buf)?;
    println!("guest reads: {:?}", String::from_utf8_lossy(&buf));
    if &buf != b"hello from dom0" {
        return Err("the guest does not see dom0's write".into());
    }

    // 2. The peer still maps the page: revocation reports Busy and hands the
    //    share back. The page is neither freed nor reused meanwhile.
    let share = match share.try_unshare() {
        Ok(_) => return Err("revoked a page the peer still maps".into()),
        Err(busy) => {
            println!("try_unshare: busy, dom0 still maps the page; keeping the share");
            busy.into_inner()
        }
    };

    // 3. The peer unmaps; retrying (with an overall deadline) now succeeds.
    drop(mapping);
    let revoked = unshare_within(share, Duration::from_secs(5))?;
    report(revoked)?;

    // 4. A peer that never lets go: give up waiting and drop the share. It
    //    goes to quarantine (never freed while mapped); reclaim frees it
    //    once the peer unmaps.
    let share = guest.exporter().share(dom0.id(), 1, Access::ReadOnly)?;
    let kept = dom0.importer().map_ro(guest.id(), share.refs())?;
    let share = match share.try_unshare() {
        Ok(_) => return Err("revoked a page the peer still maps".into()),
        Err(busy) => busy.into_inner(),
    };
    drop(share);
    let stats = guest.exporter().stats();
    println!("dropped a busy share: {} in quarantine", stats.quarantined);
    if stats.quarantined != 1 || guest.exporter().reclaim(8).reclaimed != 0 {
        return Err("a busy share must wait in quarantine".into());
    }
    drop(kept);
    let pass = guest.exporter().reclaim(8);
    println!(
        "after dom0 unmapped: reclaimed {}, {} left",
        pass.reclaimed, pass.remaining
    );
    if pass.reclaimed != 1 || pass.remaining != 0 {
        return Err("reclaim must free the share once the peer let go".into());
    }
    print_stats(guest.exporter());
    Ok(())
}

/// Retries `try_unshare` until the peer lets go or `within` has passed.
/// On timeout the share is dropped, which quarantines it.
fn unshare_within<B: GrantBackend>(
    mut share: Share<B>,
    within: Duration,
) -> Res<Revoked<B::Pages>> {
    let deadline = Instant::now() + within;
    loop {
        match share.try_unshare() {
            Ok(revoked) => return Ok(revoked),
            Err(busy) if Instant::now() < deadline => {
                share = busy.into_inner();
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_busy) => return Err("the peer kept the page; share quarantined".into()),
        }
    }
}

/// Code that pools pages must handle both outcomes of a revocation.
fn report<P: PageSet>(revoked: Revoked<P>) -> Res<()> {
    match revoked {
        Revoked::Pages(pages) => {
            println!(
                "revoked: {} page(s) are ours again (free or re-share them)",
                pages.page_count()
            );
            Ok(())
        }
        // On Linux (gntalloc) and the multi-process emulator the memory is
        // retired instead: access has ended, but it is never reused.
        Revoked::Retired => {
            println!("revoked: the memory is retired, never reused");
            Ok(())
        }
    }
}

fn print_stats<B: GrantBackend>(exporter: &Exporter<B>) {
    let s = exporter.stats();
    println!(
        "stats: granted {}, revoked {}, reclaimed {}, busy results {}, leaked {}",
        s.granted, s.revoked, s.reclaimed, s.busy_results, s.leaked
    );
}
