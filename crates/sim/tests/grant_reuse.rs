//! Frame and record reuse on the grant cycle: a page that comes back from
//! a revocation and is handed out again is zero (whatever the peer wrote
//! into it), and a page a peer still maps is never handed out again while
//! the rest of the domain's memory is recycled around it.

use xenshare::grant::{GrantError, Revoked};
use xenshare::Access;
use xenshare_sim::SimShare;
use xenshare_testkit::small_granter_and_peer;

/// The frame a one-page share grants (as the peer would see it).
fn frame_of(s: &SimShare, table: &dyn xenshare::grant::TableView) -> u32 {
    table
        .entry(s.refs()[0])
        .expect("a live ref has an entry")
        .frame
}

#[test]
fn a_reshared_page_is_zero_after_the_peer_wrote_to_it() {
    // One page of memory: every share gets the same frame back.
    let (_hv, a, b) = small_granter_and_peer(1);
    let table = a.exporter().table().unwrap();
    let mut frame = None;
    let mut page = vec![0u8; 4096];
    for round in 0..16u8 {
        let s = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
        let f = frame_of(&s, table);
        assert_eq!(*frame.get_or_insert(f), f, "the one frame is reused");
        let m = b.importer().map_rw(a.id(), s.refs()).unwrap();
        page.fill(0xFF);
        m.mem().read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|x| *x == 0),
            "round {round}: the fresh share shows what the peer wrote before"
        );
        // The peer dirties every byte, at an odd offset too.
        m.mem().fill(0, 4096, 0xC0 | round).unwrap();
        m.mem().fill(1, 4093, 0x5A).unwrap();
        drop(m);
        if round % 2 == 0 {
            // Through `share_pages`: the pages that came back are re-shared.
            let pages = s.try_unshare().unwrap().pages().unwrap();
            let s = a
                .exporter()
                .share_pages(b.id(), pages, Access::ReadOnly)
                .map_err(|(e, _)| e)
                .unwrap();
            assert_eq!(frame_of(&s, table), f);
            let m = b.importer().map_ro(a.id(), s.refs()).unwrap();
            page.fill(0xFF);
            m.mem().read(0, &mut page).unwrap();
            assert!(
                page.iter().all(|x| *x == 0),
                "round {round}: re-shared pages show the peer's bytes"
            );
        } else {
            assert!(matches!(s.try_unshare(), Ok(Revoked::Pages(_))));
        }
    }
}

#[test]
fn a_page_still_mapped_is_never_handed_out_again() {
    let (_hv, a, b) = small_granter_and_peer(4);
    let table = a.exporter().table().unwrap();
    // The peer maps a page, writes a pattern and keeps it; the granter drops
    // its share (quarantine).
    let held = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    let held_frame = frame_of(&held, table);
    let m = b.importer().map_rw(a.id(), held.refs()).unwrap();
    m.mem().fill(0, 4096, 0x77).unwrap();
    drop(held);
    assert_eq!(a.exporter().quarantined(), 1);
    // Many full cycles over the rest of memory, each reusing freed frames
    // and records: none hands out the held frame, none zeroes it.
    for _ in 0..200 {
        let s = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
        assert_ne!(frame_of(&s, table), held_frame, "a mapped frame came back");
        let m2 = b.importer().map_rw(a.id(), s.refs()).unwrap();
        m2.mem().fill(0, 4096, 0x11).unwrap();
        drop(m2);
        assert!(s.try_unshare().is_ok());
    }
    // Taking every free page at once: three come back, never the held one.
    let mut all = Vec::new();
    loop {
        match a.exporter().share(b.id(), 1, Access::ReadOnly) {
            Ok(s) => {
                assert_ne!(frame_of(&s, table), held_frame, "a mapped frame came back");
                all.push(s);
            }
            Err(e) => {
                assert_eq!(e, GrantError::OutOfMemory { pages: 1 });
                break;
            }
        }
    }
    assert_eq!(all.len(), 3);
    drop(all);
    let mut page = vec![0u8; 4096];
    m.mem().read(0, &mut page).unwrap();
    assert!(
        page.iter().all(|x| *x == 0x77),
        "the held page was zeroed or reused under the peer's mapping"
    );
    // Once the peer lets go, the quarantine frees it and it is used again.
    drop(m);
    assert_eq!(a.exporter().reclaim(usize::MAX).reclaimed, 1);
    let again: Vec<_> = (0..4)
        .map(|_| a.exporter().share(b.id(), 1, Access::ReadOnly).unwrap())
        .collect();
    assert!(again.iter().any(|s| frame_of(s, table) == held_frame));
}
