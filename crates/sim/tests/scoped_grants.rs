//! The scoped grant helpers on the emulator: `with_grant` ends access by
//! itself and reports a peer that kept its mapping as a value; the mapping
//! helpers unmap when the closure returns.

use xenshare::Access;
use xenshare_sim::{Domain, DomainConfig, Hypervisor};
use xenshare_testkit::dom0_and_guest;

fn pair() -> (Hypervisor, Domain, Domain) {
    dom0_and_guest(DomainConfig {
        mem_pages: 64,
        ..Default::default()
    })
}

/// An honest peer maps, reads and unmaps inside the scope: the grant ends
/// with the pages back and nothing is left live or quarantined.
#[test]
fn with_grant_revokes_when_the_peer_let_go() {
    let (_hv, dom0, guest) = pair();
    let done = guest
        .exporter()
        .with_grant(dom0.id(), 1, Access::ReadOnly, |share| {
            share.mem().write(0, b"scoped").unwrap();
            dom0.importer()
                .with_mapping_ro(guest.id(), share.refs(), |m| {
                    let mut buf = [0u8; 6];
                    m.mem().read(0, &mut buf).unwrap();
                    buf
                })
                .unwrap()
        })
        .unwrap();
    assert_eq!(&done.value, b"scoped");
    assert!(!done.peer_kept_mapping());
    let pages = done.end.unwrap().pages();
    assert!(pages.is_some(), "the emulator proves the unmap");
    let s = guest.exporter().stats();
    assert_eq!((s.live, s.quarantined), (0, 0));
    assert_eq!(dom0.mapped_count(), 0, "with_mapping_ro unmapped");
}

/// A peer that keeps its mapping past the scope (MSA02 / XSA-396): the
/// result says so and hands the share back; dropping it quarantines the
/// page, and it comes back only after the peer unmaps.
#[test]
fn with_grant_reports_a_peer_that_kept_its_mapping() {
    let (_hv, dom0, guest) = pair();
    let mut kept = None;
    let done = guest
        .exporter()
        .with_grant(dom0.id(), 1, Access::ReadWrite, |share| {
            kept = Some(dom0.importer().map_rw(guest.id(), share.refs()).unwrap());
            share.refs()[0]
        })
        .unwrap();
    assert!(done.peer_kept_mapping());
    let gref = done.value;
    let share = match done.end {
        Ok(_) => panic!("revocation succeeded while the peer maps {gref:?}"),
        Err(busy) => busy.into_inner(),
    };
    assert_eq!(share.refs(), &[gref]);
    assert!(guest.grant_busy(gref));
    drop(share);
    assert_eq!(guest.exporter().stats().quarantined, 1);
    drop(kept);
    guest.exporter().reclaim(16);
    assert_eq!(guest.exporter().stats().quarantined, 0);
}

/// `with_mapping` writes through a writable mapping the granter then sees,
/// and unmaps on return; a bad ref fails before the closure runs.
#[test]
fn with_mapping_unmaps_and_fails_cleanly() {
    let (_hv, dom0, guest) = pair();
    let share = guest
        .exporter()
        .share(dom0.id(), 1, Access::ReadWrite)
        .unwrap();
    dom0.importer()
        .with_mapping(guest.id(), share.refs(), |m| {
            m.mem().write(0, b"from dom0").unwrap();
            assert_eq!(dom0.mapped_count(), 1);
        })
        .unwrap();
    assert_eq!(dom0.mapped_count(), 0);
    let mut buf = [0u8; 9];
    share.mem().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"from dom0");
    let mut ran = false;
    let bad = [xenshare::GrantRef(share.refs()[0].0 + 1000)];
    let r = dom0
        .importer()
        .with_mapping(guest.id(), &bad, |_| ran = true);
    assert!(r.is_err() && !ran);
    assert!(share.try_unshare().is_ok());
}
