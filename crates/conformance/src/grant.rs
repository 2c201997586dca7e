//! Grant bodies: share, map, data both ways, refusals, copy, and MSA02.

use xenshare::grant::{GntSt, GrantError, MapError, Revoked};
use xenshare::platform::{CopyDst, CopyOp, CopySrc, GrantBackend, GrantPtr, PageSet};
use xenshare::{Access, GrantRef};
use xenshare_abi::PAGE_SIZE;

use crate::{check, stats_balance, Context, Outcome, Platform, Revocation, TestResult};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A successful revocation gives `n` pages back where the platform proves
/// the peer let go, and retires the memory where it cannot (the kernel
/// defers the free: nothing may be handed back for reuse).
fn check_revoked<P: Platform>(
    p: &P,
    revoked: Revoked<<P::Backend as GrantBackend>::Pages>,
    n: usize,
) -> Result<(), String> {
    match (revoked, p.revocation()) {
        (Revoked::Pages(pages), Revocation::BusyThenQuarantine) => {
            check!(pages.page_count() == n, "{} pages back", pages.page_count());
            Ok(())
        }
        (Revoked::Retired, Revocation::RevokedAndDeferred) => Ok(()),
        (r, how) => Err(format!(
            "revocation {} on a platform that is {how:?}",
            if r.is_retired() {
                "retired the memory"
            } else {
                "handed pages back"
            }
        )),
    }
}

/// Share three pages, map them, move data both ways across page
/// boundaries, unmap, revoke.
pub fn share_map_loopback<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let share = exp
        .share(imp.domid(), 3, Access::ReadWrite)
        .ctx("share 3 pages")?;
    check!(share.refs().len() == 3, "3 refs, got {:?}", share.refs());
    check!(
        share.mem().len() == 3 * PAGE_SIZE,
        "share memory is {} bytes",
        share.mem().len()
    );
    let mut all = vec![0xFFu8; 3 * PAGE_SIZE];
    share.mem().read(0, &mut all).ctx("read fresh share")?;
    check!(all.iter().all(|b| *b == 0), "a fresh share is not zeroed");

    let m = imp.map_rw(exp.domid(), share.refs()).ctx("map the share")?;
    check!(
        m.mem().len() == 3 * PAGE_SIZE,
        "mapping is {} bytes",
        m.mem().len()
    );

    // Granter -> mapper, across the first page boundary.
    let a = pattern(7, 600);
    share
        .mem()
        .write(PAGE_SIZE - 300, &a)
        .ctx("granter write")?;
    let mut got = vec![0u8; a.len()];
    m.mem().read(PAGE_SIZE - 300, &mut got).ctx("mapper read")?;
    check!(got == a, "mapper does not see the granter's bytes");

    // Mapper -> granter, across the second page boundary, and the last byte.
    let b = pattern(99, 1000);
    m.mem().write(2 * PAGE_SIZE - 500, &b).ctx("mapper write")?;
    m.mem()
        .write(3 * PAGE_SIZE - 1, &[0xA5])
        .ctx("mapper write last")?;
    let mut got = vec![0u8; b.len()];
    share
        .mem()
        .read(2 * PAGE_SIZE - 500, &mut got)
        .ctx("granter read")?;
    check!(got == b, "granter does not see the mapper's bytes");
    let mut last = [0u8];
    share
        .mem()
        .read(3 * PAGE_SIZE - 1, &mut last)
        .ctx("granter read last")?;
    check!(last == [0xA5], "last byte reads {:#x}", last[0]);

    // Atomics on shared memory work through both views.
    share
        .mem()
        .atomic_u32(64)
        .ctx("atomic")?
        .store(0xDEAD_BEEF, std::sync::atomic::Ordering::Release);
    let v = m
        .mem()
        .atomic_u32(64)
        .ctx("atomic")?
        .load(std::sync::atomic::Ordering::Acquire);
    check!(v == 0xDEAD_BEEF, "atomic word reads {v:#x}");

    drop(m);
    let pages = share
        .try_unshare()
        .map_err(|_| "revocation of an unmapped share reported busy".to_string())?;
    check_revoked(p, pages, 3)?;
    let s = exp.stats();
    stats_balance(&s)?;
    check!(s.quarantined == 0, "nothing may wait in quarantine: {s:?}");
    Ok(Outcome::Pass(String::new()))
}

/// A read-only grant cannot be mapped writable, but maps read-only.
pub fn read_only_refused<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let share = exp
        .share(imp.domid(), 1, Access::ReadOnly)
        .ctx("share read-only")?;
    share.mem().write(0, b"read only").ctx("granter write")?;
    let refused_before = imp.stats().refused;
    let status = match imp.map_rw(exp.domid(), share.refs()) {
        Ok(_) => return Err("a read-only grant was mapped writable".into()),
        Err(MapError::Refused { status, .. }) => status,
        Err(e) => return Err(format!("unexpected error {e}")),
    };
    check!(
        imp.stats().refused == refused_before + 1,
        "refused counter did not move"
    );
    let m = imp.map_ro(exp.domid(), share.refs()).ctx("map read-only")?;
    let mut got = [0u8; 9];
    m.mem().read(0, &mut got).ctx("read")?;
    check!(&got == b"read only", "read-only mapping reads {got:?}");
    // Clearing a byte at unmap needs a writable mapping.
    let notify = m.set_unmap_notify(Some(0), None);
    check!(
        notify.is_err(),
        "unmap notify clearing a byte of a read-only mapping was accepted"
    );
    drop(m);
    let _revoked = share
        .try_unshare()
        .map_err(|_| "revocation reported busy after unmap".to_string())?;
    Ok(Outcome::Pass(format!("writable map refused with {status}")))
}

/// Refs never granted, refs already revoked, and a batch with one bad ref
/// are refused; nothing of a refused batch stays mapped.
pub fn bad_refs_refused<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let mut notes = Vec::new();

    // A ref far past any grant table.
    match imp.map_ro(exp.domid(), &[GrantRef(0x00FF_FFF0)]) {
        Ok(_) => return Err("mapped a ref past the end of the table".into()),
        Err(MapError::Refused { status, .. }) => notes.push(format!("huge ref: {status}")),
        Err(e) => return Err(format!("huge ref: unexpected {e}")),
    }

    // A revoked ref.
    let share = exp.share(imp.domid(), 1, Access::ReadWrite).ctx("share")?;
    let refs = share.refs().to_vec();
    let _revoked = share
        .try_unshare()
        .map_err(|_| "revocation of an unmapped share reported busy".to_string())?;
    match imp.map_ro(exp.domid(), &refs) {
        Ok(_) => return Err(format!("mapped {} after it was revoked", refs[0])),
        Err(MapError::Refused { status, .. }) => notes.push(format!("revoked ref: {status}")),
        Err(e) => return Err(format!("revoked ref: unexpected {e}")),
    }

    // A batch of two good refs around a bad one: all or nothing.
    let share = exp
        .share(imp.domid(), 2, Access::ReadWrite)
        .ctx("share 2")?;
    let batch = [share.refs()[0], GrantRef(0x00FF_FFF1), share.refs()[1]];
    match imp.map_rw(exp.domid(), &batch) {
        Ok(_) => return Err("a batch with a bad ref mapped".into()),
        Err(MapError::Refused { index, status, .. }) => {
            notes.push(format!("mixed batch: element {index} {status}"))
        }
        Err(e) => return Err(format!("mixed batch: unexpected {e}")),
    }
    // Nothing of that batch stays mapped: the share revokes at once.
    match share.try_unshare() {
        Ok(_) => {}
        Err(_) => return Err("a refused batch left a page mapped".into()),
    }
    Ok(Outcome::Pass(notes.join("; ")))
}

/// Grant copy both ways, and a copy crossing the page end refused.
pub fn grant_copy<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let share = exp.share(imp.domid(), 1, Access::ReadWrite).ctx("share")?;
    let data = pattern(3, 64);
    share.mem().write(100, &data).ctx("granter write")?;
    let g = |offset| GrantPtr {
        dom: exp.domid(),
        gref: share.refs()[0],
        offset,
    };
    let mut out = vec![0u8; 64];
    let back = pattern(200, 32);
    let mut ops = [
        CopyOp {
            src: CopySrc::Grant(g(100)),
            dst: CopyDst::Local(&mut out),
            len: 64,
            status: GntSt::GeneralError,
        },
        CopyOp {
            src: CopySrc::Local(&back),
            dst: CopyDst::Grant(g(2000)),
            len: 32,
            status: GntSt::GeneralError,
        },
    ];
    imp.copy(&mut ops);
    let (s0, s1) = (ops[0].status, ops[1].status);
    check!(s0.is_ok(), "copy from grant: {s0}");
    check!(s1.is_ok(), "copy to grant: {s1}");
    check!(out == data, "copied-out bytes differ");
    let mut got = vec![0u8; 32];
    share.mem().read(2000, &mut got).ctx("granter read")?;
    check!(got == back, "copied-in bytes differ");

    let mut sink = vec![0u8; 64];
    let mut bad = [CopyOp {
        src: CopySrc::Grant(g(4090)),
        dst: CopyDst::Local(&mut sink),
        len: 64,
        status: GntSt::Okay,
    }];
    imp.copy(&mut bad);
    check!(
        bad[0].status == GntSt::BadCopyArg,
        "a copy crossing the page end gave {}",
        bad[0].status
    );
    let _revoked = share
        .try_unshare()
        .map_err(|_| "revocation reported busy after copies".to_string())?;
    Ok(Outcome::Pass(String::new()))
}

/// MirageOS MSA02 / Linux XSA-396: the peer says "done" but keeps its
/// mapping. Revocation must not let the page be reused while mapped: on a
/// granter-owned table it reports busy and the share waits in quarantine;
/// on Linux the kernel revokes-and-defers. On both, the peer's view keeps
/// the original bytes and is not the memory of any new share, and after
/// the peer unmaps everything is released.
pub fn msa02_revoke_while_mapped<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let before = exp.stats();
    let secret = pattern(0x42, PAGE_SIZE);
    let share = exp.share(imp.domid(), 1, Access::ReadWrite).ctx("share")?;
    share.mem().write(0, &secret).ctx("granter write")?;
    let kept = imp.map_rw(exp.domid(), share.refs()).ctx("peer maps")?;

    // The peer says "done", the granter revokes.
    let note = match (share.try_unshare(), p.revocation()) {
        (Err(busy), Revocation::BusyThenQuarantine) => {
            let share = busy.into_inner();
            drop(share); // into quarantine, never freed
            let s = exp.stats();
            check!(
                s.quarantined == before.quarantined + 1,
                "dropped busy share is not in quarantine: {s:?}"
            );
            "busy, then quarantined"
        }
        (Ok(revoked), Revocation::RevokedAndDeferred) => {
            check_revoked(p, revoked, 1)?;
            "revoked-and-deferred by the kernel, memory retired"
        }
        (Ok(_), Revocation::BusyThenQuarantine) => {
            return Err("revocation succeeded while the peer maps the page".into())
        }
        (Err(_), Revocation::RevokedAndDeferred) => {
            return Err("platform said revoked-and-deferred but reported busy".into())
        }
    };

    // The granter reuses memory: new shares, filled with other data, and
    // some plain allocation churn.
    let mut fresh = Vec::new();
    for _ in 0..16 {
        let s = exp
            .share(imp.domid(), 1, Access::ReadWrite)
            .ctx("share after revoke")?;
        s.mem().fill(0, PAGE_SIZE, 0x5A).ctx("fill new share")?;
        fresh.push(s);
    }
    let mut churn = Vec::new();
    for _ in 0..16 {
        churn.push(vec![0xEEu8; 1 << 20]);
    }
    drop(churn);

    // The peer's view still holds the original bytes ...
    let mut view = vec![0u8; PAGE_SIZE];
    kept.mem().read(0, &mut view).ctx("peer read")?;
    check!(
        view == secret,
        "the peer's kept mapping no longer holds the original page: memory was reused"
    );
    // ... and is not the memory of any new share.
    kept.mem().fill(0, PAGE_SIZE, 0xC3).ctx("peer write")?;
    for (i, s) in fresh.iter().enumerate() {
        let mut page = vec![0u8; PAGE_SIZE];
        s.mem().read(0, &mut page).ctx("read new share")?;
        check!(
            page.iter().all(|b| *b == 0x5A),
            "new share {i} sees the peer's writes: a still-mapped page was reused"
        );
    }

    if p.revocation() == Revocation::BusyThenQuarantine {
        let r = exp.reclaim(usize::MAX);
        check!(
            r.reclaimed == 0 && r.still_busy >= 1,
            "reclaim freed a page the peer maps: {r:?}"
        );
    }

    // The peer finally unmaps: everything is released.
    drop(kept);
    if p.revocation() == Revocation::BusyThenQuarantine {
        let r = exp.reclaim(usize::MAX);
        check!(r.reclaimed >= 1, "reclaim after unmap freed nothing: {r:?}");
        check!(exp.quarantined() == 0, "quarantine not empty after unmap");
    }
    for s in fresh {
        let _revoked = s
            .try_unshare()
            .map_err(|_| "an unmapped new share reported busy".to_string())?;
    }
    let s = exp.stats();
    stats_balance(&s)?;
    check!(
        s.quarantined == 0 && s.live == before.live,
        "leftovers: {s:?}"
    );
    Ok(Outcome::Pass(note.into()))
}

/// Whether the exporter supports unmap notify on shares.
pub(crate) fn unsupported(e: &GrantError) -> bool {
    matches!(e, GrantError::Unsupported(_))
}
