//! `xenshare demo`: two emulated domains, a page shared the honest way, then
//! MirageOS MSA02 replayed against the safe grant API.

use xenshare::grant::{MapError, Revoked};
use xenshare::platform::PageSet;
use xenshare::{Access, DomId};
use xenshare_sim::{Domain, DomainConfig, Hypervisor};

type Result<T> = std::result::Result<T, String>;

fn step(n: u32, title: &str) {
    println!("\n── {n}. {title}");
}

fn table(dom: &Domain) {
    let entries = dom
        .exporter()
        .table()
        .map(|t| t.active_entries())
        .unwrap_or_default();
    if entries.is_empty() {
        println!("     {} grant table: (no active entries)", dom.id());
        return;
    }
    println!(
        "     {} grant table:   ref  flags                           peer  frame",
        dom.id()
    );
    for e in entries {
        println!("                    {e}");
    }
}

fn stats(dom: &Domain) {
    let s = dom.exporter().stats();
    println!(
        "     {} grant stats: granted {}, live {}, revoked {}, quarantined {}, reclaimed {}, leaked {}",
        dom.id(),
        s.granted,
        s.live,
        s.revoked,
        s.quarantined,
        s.reclaimed,
        s.leaked
    );
}

/// Runs the demo.
pub fn run() -> Result<()> {
    println!("xenshare demo — Xen grant tables on an emulated hypervisor");
    println!("(a guest shares memory with dom0; then dom0 turns malicious, as in MirageOS MSA02)");

    let hv = Hypervisor::new();
    let cfg = DomainConfig {
        mem_pages: 64,
        ..Default::default()
    };
    let dom0 = hv
        .create_domain_with_id(DomId(0), cfg)
        .map_err(|e| e.to_string())?;
    let guest = hv.create_domain(cfg).map_err(|e| e.to_string())?;
    step(1, "boot");
    println!(
        "     hypervisor up with {} (control domain) and {} (guest), {} pages of RAM each",
        dom0.id(),
        guest.id(),
        cfg.mem_pages
    );

    step(2, "the guest shares 2 zeroed pages with dom0, writable");
    let share = guest
        .exporter()
        .share(dom0.id(), 2, Access::ReadWrite)
        .map_err(|e| e.to_string())?;
    println!(
        "     grant refs {:?} — sent to dom0 (on Xen, through xenstore)",
        share.refs().iter().map(|r| r.0).collect::<Vec<_>>()
    );
    table(&guest);

    step(3, "dom0 maps the grants and writes a message");
    let m = dom0
        .importer()
        .map_rw(guest.id(), share.refs())
        .map_err(|e| e.to_string())?;
    m.mem()
        .write(0, b"hello guest, from dom0")
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 22];
    share.mem().read(0, &mut buf).map_err(|e| e.to_string())?;
    println!(
        "     guest reads its page: {:?}",
        String::from_utf8_lossy(&buf)
    );
    println!("     the hypervisor marked the entries busy (reading|writing) while mapped:");
    table(&guest);

    step(
        4,
        "dom0 unmaps; the guest revokes — succeeds, the pages are the guest's again",
    );
    drop(m);
    let pages = share
        .try_unshare()
        .map_err(|_| "revoke unexpectedly busy".to_string())?;
    match &pages {
        Revoked::Pages(p) => println!("     try_unshare: Ok({} pages back)", p.page_count()),
        Revoked::Retired => println!("     try_unshare: Ok(retired)"),
    }
    drop(pages);
    table(&guest);

    step(5, "MSA02 replay: dom0 says \"done\" but keeps its mapping");
    let share = guest
        .exporter()
        .share(dom0.id(), 1, Access::ReadWrite)
        .map_err(|e| e.to_string())?;
    let gref = share.refs()[0];
    let frame = guest
        .exporter()
        .table()
        .and_then(|t| t.entry(gref))
        .map(|e| e.frame)
        .unwrap_or_default();
    let kept = dom0
        .importer()
        .map_rw(guest.id(), share.refs())
        .map_err(|e| e.to_string())?;
    println!("     dom0 → guest: \"I'm done with {gref}\"   (it lies: the mapping is still there)");
    let share = match share.try_unshare() {
        Ok(_) => return Err("revocation succeeded while mapped — the emulator is broken".into()),
        Err(busy) => {
            println!("     guest: try_unshare → Err(Busy): {busy}");
            busy.into_inner()
        }
    };
    println!("     mirage-xen ignored this result and reused the page. Here the share comes back;");
    println!("     the guest drops it, and it goes to quarantine instead of the free list:");
    drop(share);
    stats(&guest);

    step(6, "the guest reuses memory for secrets");
    let mut secrets = Vec::new();
    while let Ok(s) = guest.exporter().share(DomId(42), 1, Access::ReadOnly) {
        s.mem().fill(0, 4096, b'S').map_err(|e| e.to_string())?;
        secrets.push(s);
    }
    let reused_frames: Vec<u32> = secrets
        .iter()
        .filter_map(|s| {
            guest
                .exporter()
                .table()
                .and_then(|t| t.entry(s.refs()[0]))
                .map(|e| e.frame)
        })
        .collect();
    println!(
        "     the guest filled {} fresh pages (every free frame); quarantined frame {frame:#x} is not among them: {}",
        secrets.len(),
        !reused_frames.contains(&frame)
    );

    step(7, "dom0 writes through the mapping it kept");
    kept.mem().fill(0, 4096, b'X').map_err(|e| e.to_string())?;
    let mut clean = 0;
    for s in &secrets {
        let mut page = vec![0u8; 4096];
        s.mem().read(0, &mut page).map_err(|e| e.to_string())?;
        if page.iter().all(|b| *b == b'S') {
            clean += 1;
        }
    }
    println!("     {clean}/{} of the guest's reused pages are untouched — dom0 only scribbled on its own quarantined page", secrets.len());
    let r = guest.exporter().reclaim(8);
    println!(
        "     reclaim(budget 8): reclaimed {}, still busy {}",
        r.reclaimed, r.still_busy
    );
    if clean != secrets.len() {
        return Err("a reused page was modified through a stale mapping".into());
    }

    step(8, "dom0 finally unmaps; reclaim frees the page");
    drop(kept);
    let r = guest.exporter().reclaim(8);
    println!(
        "     reclaim(budget 8): reclaimed {}, still busy {}",
        r.reclaimed, r.still_busy
    );
    println!(
        "     frame {frame:#x} back on the free list: {}",
        !guest.memory().is_allocated(u64::from(frame))
    );
    drop(secrets);
    stats(&guest);

    step(9, "and the peer cannot map a revoked grant");
    match dom0.importer().map_ro(guest.id(), &[gref]) {
        Err(MapError::Refused { status, .. }) => println!("     dom0 maps {gref} again → {status}"),
        Err(e) => println!("     dom0 maps {gref} again → {e}"),
        Ok(_) => return Err("a revoked grant was mappable".into()),
    }
    println!("\nDone: no memory was reused while a peer could reach it.");
    Ok(())
}
