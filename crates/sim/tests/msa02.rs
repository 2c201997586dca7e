//! MSA02 / XSA-396: a peer that says "done" but keeps its mapping.
//!
//! The granter's revoke must report busy, the share must be quarantined and
//! its memory never handed out again while mapped; once the peer unmaps,
//! reclaim frees it.

use xenshare::platform::PageSet;
use xenshare::{Access, DomId};
use xenshare_sim::DomainConfig;
use xenshare_testkit::{dom0_and_guest, two_domains};

#[test]
fn peer_keeping_its_mapping_never_sees_reused_memory() {
    let (_hv, dom0, guest) = dom0_and_guest(DomainConfig {
        mem_pages: 64,
        ..Default::default()
    });

    // Honest round: share, peer maps + writes, unmaps, guest revokes.
    let share = guest
        .exporter()
        .share(dom0.id(), 1, Access::ReadWrite)
        .unwrap();
    let m = dom0.importer().map_rw(guest.id(), share.refs()).unwrap();
    m.mem().write(0, b"hello from dom0").unwrap();
    let mut buf = [0u8; 15];
    share.mem().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello from dom0");
    drop(m);
    let pages = share
        .try_unshare()
        .expect("unmapped share must revoke")
        .pages()
        .expect("the in-process emulator proves the unmap and gives pages back");
    assert_eq!(pages.page_count(), 1);
    drop(pages);

    // Malicious round: the peer says "done" but keeps its mapping.
    let share = guest
        .exporter()
        .share(dom0.id(), 1, Access::ReadWrite)
        .unwrap();
    let gref = share.refs()[0];
    let kept = dom0.importer().map_rw(guest.id(), share.refs()).unwrap();
    let frame_of_share = guest.exporter().table().unwrap().entry(gref).unwrap().frame;
    let share = match share.try_unshare() {
        Ok(_) => panic!("revoke must fail while the peer maps the page"),
        Err(busy) => busy.into_inner(),
    };
    assert!(guest.grant_busy(gref));
    drop(share); // into quarantine, not freed
    let s = guest.exporter().stats();
    assert_eq!(s.quarantined, 1);
    assert!(
        guest.memory().is_allocated(frame_of_share as u64),
        "quarantined frame must stay allocated"
    );

    // The guest reuses memory: allocate every free page and fill it with secrets.
    let mut reused = Vec::new();
    while let Ok(s) = guest.exporter().share(DomId(77), 1, Access::ReadOnly) {
        s.mem().fill(0, 4096, 0x5A).unwrap();
        reused.push(s);
    }
    assert!(!reused.is_empty());
    for s in &reused {
        let f = guest
            .exporter()
            .table()
            .unwrap()
            .entry(s.refs()[0])
            .unwrap()
            .frame;
        assert_ne!(
            f, frame_of_share,
            "a quarantined frame was handed out again"
        );
    }

    // The peer writes through its kept mapping: nothing the guest reused sees it.
    kept.mem().fill(0, 4096, 0xEE).unwrap();
    for s in &reused {
        let mut page = vec![0u8; 4096];
        s.mem().read(0, &mut page).unwrap();
        assert!(page.iter().all(|b| *b == 0x5A));
    }
    // Reclaim cannot free it yet.
    let r = guest.exporter().reclaim(16);
    assert_eq!((r.reclaimed, r.still_busy, r.remaining), (0, 1, 1));

    // The peer finally unmaps: reclaim frees the page and the ref.
    drop(kept);
    assert!(!guest.grant_busy(gref));
    let r = guest.exporter().reclaim(16);
    assert_eq!((r.reclaimed, r.remaining), (1, 0));
    assert!(!guest.memory().is_allocated(frame_of_share as u64));
    let s = guest.exporter().stats();
    assert_eq!(s.quarantined, 0);
    assert_eq!(s.reclaimed, 1);
    assert_eq!(
        s.granted,
        s.live + s.revoked + s.quarantined + s.reclaimed + s.leaked
    );
}

#[test]
fn partially_released_multi_page_share_revokes_what_it_can() {
    let (_hv, a, b) = two_domains();
    let share = a.exporter().share(b.id(), 3, Access::ReadWrite).unwrap();
    let refs = share.refs().to_vec();
    let keep = b.importer().map_ro(a.id(), &refs[1..2]).unwrap();
    let share = share.try_unshare().unwrap_err().into_inner();
    // Pages the peer did not hold are revoked already: they cannot be mapped.
    let err = b.importer().map_ro(a.id(), &refs[0..1]).unwrap_err();
    assert!(
        matches!(err, xenshare::grant::MapError::Refused { .. }),
        "{err}"
    );
    drop(keep);
    assert!(share.try_unshare().is_ok());
}
