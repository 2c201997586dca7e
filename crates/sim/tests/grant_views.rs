//! A share's and a mapping's memory is resolved once, when the pages are
//! allocated or mapped, and kept beside what keeps it mapped (the
//! emulator's memory region, a chunk, a stitched reservation). These tests
//! move shares and mappings around (into boxes, through vectors) and check
//! that both sides still reach the same page, for each kind of window: the
//! granter's single memory (direct), one chunk of a chunked granter, and
//! pages stitched together from unrelated frames.

use xenshare::grant::Revoked;
use xenshare::{Access, DomId};
use xenshare_sim::{Domain, DomainConfig, Hypervisor};

fn cfg() -> DomainConfig {
    DomainConfig {
        mem_pages: 64,
        ..Default::default()
    }
}

/// Writes a distinct pattern through `w` and checks `r` shows it, for every
/// page of both.
fn same_memory(w: xenshare::mem::SharedMem<'_>, r: xenshare::mem::SharedMem<'_>, tag: u8) {
    assert_eq!(w.len(), r.len());
    for page in 0..w.len() / 4096 {
        let byte = tag ^ (page as u8).wrapping_mul(31);
        w.fill(page * 4096, 4096, byte).unwrap();
        let mut got = vec![0u8; 4096];
        r.read(page * 4096, &mut got).unwrap();
        assert!(got.iter().all(|b| *b == byte), "page {page} differs");
    }
}

/// Shares two pages of `granter` with `mapper`, maps them, moves both
/// around and checks both directions; then unmaps and revokes.
fn moved_share_and_mapping_see_each_other(granter: &Domain, mapper: &Domain) {
    let s = granter
        .exporter()
        .share(mapper.id(), 2, Access::ReadWrite)
        .unwrap();
    let m = mapper.importer().map_rw(granter.id(), s.refs()).unwrap();
    same_memory(s.mem(), m.mem(), 0x11);
    // Move both: into boxes, then through a vector.
    let (s, m) = (Box::new(s), Box::new(m));
    let mut v = vec![(*s, *m)];
    v.reserve(64);
    let (s, m) = v.pop().unwrap();
    same_memory(m.mem(), s.mem(), 0x22);
    same_memory(s.mem(), m.mem(), 0x33);
    drop(m);
    assert!(matches!(s.try_unshare(), Ok(Revoked::Pages(_))));
}

#[test]
fn views_of_the_granters_own_memory_survive_moves() {
    let hv = Hypervisor::new();
    let a = hv.create_domain(cfg()).unwrap();
    let b = hv.create_domain(cfg()).unwrap();
    for _ in 0..4 {
        moved_share_and_mapping_see_each_other(&a, &b);
    }
}

#[test]
fn views_of_a_chunked_granter_survive_moves() {
    let hv = Hypervisor::new();
    let a = hv.create_remote_domain(DomId(7), cfg()).unwrap();
    let b = hv.create_domain(cfg()).unwrap();
    for _ in 0..4 {
        moved_share_and_mapping_see_each_other(&a, &b);
    }
}

#[test]
fn a_stitched_window_survives_moves() {
    let hv = Hypervisor::new();
    let a = hv.create_domain(cfg()).unwrap();
    let b = hv.create_domain(cfg()).unwrap();
    // Two one-page shares with a third between them: their frames are not
    // adjacent, so mapping both at once stitches the pages together.
    let s1 = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    let gap = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    let s2 = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    let refs = [s2.refs()[0], s1.refs()[0]];
    let m = b.importer().map_rw(a.id(), &refs).unwrap();
    let m = *Box::new(m);
    let mut v = vec![m];
    v.reserve(64);
    let m = v.pop().unwrap();
    let win = m.mem();
    assert_eq!(win.len(), 2 * 4096);
    // The window's first page is s2's, its second s1's.
    same_memory(s2.mem(), win.slice(0, 4096).unwrap(), 0x44);
    same_memory(win.slice(4096, 4096).unwrap(), s1.mem(), 0x55);
    drop(m);
    for s in [s1, gap, s2] {
        assert!(matches!(s.try_unshare(), Ok(Revoked::Pages(_))));
    }
}
