//! The hypervisor's grant rules: refused maps with Xen's statuses, the ref
//! allocator, zeroing, copy, unmap-notify, and domain death.

use xenshare::grant::{GntSt, GrantError, MapError};
use xenshare::platform::{CopyDst, CopyOp, CopySrc, EventChannels, GrantPtr};
use xenshare::{Access, DomId, GrantRef};
use xenshare_abi::grant::GNTTAB_NR_RESERVED_ENTRIES;
use xenshare_sim::{DomainConfig, Hypervisor};
use xenshare_testkit::{small_granter_and_peer, two_domains};

fn status(e: MapError) -> GntSt {
    match e {
        MapError::Refused { status, .. } => status,
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn refused_maps_report_xen_statuses() {
    let (hv, a, b) = two_domains();
    let c = hv.create_domain(DomainConfig::default()).unwrap();

    let ro = a.exporter().share(b.id(), 1, Access::ReadOnly).unwrap();
    // Read-only grant mapped writable.
    assert_eq!(
        status(b.importer().map_rw(a.id(), ro.refs()).unwrap_err()),
        GntSt::GeneralError
    );
    // Right grant, wrong domain.
    assert_eq!(
        status(c.importer().map_ro(a.id(), ro.refs()).unwrap_err()),
        GntSt::GeneralError
    );
    // A ref past the end of the table.
    assert_eq!(
        status(
            b.importer()
                .map_ro(a.id(), &[GrantRef(1 << 20)])
                .unwrap_err()
        ),
        GntSt::BadGntref
    );
    // A ref inside the table that was never granted.
    assert_eq!(
        status(b.importer().map_ro(a.id(), &[GrantRef(100)]).unwrap_err()),
        GntSt::GeneralError
    );
    // No such domain.
    assert_eq!(
        status(b.importer().map_ro(DomId(999), ro.refs()).unwrap_err()),
        GntSt::BadDomain
    );
    // The legitimate map works, read-only.
    let m = b.importer().map_ro(a.id(), ro.refs()).unwrap();
    drop(m);
    // Map after revoke.
    let refs = ro.refs().to_vec();
    let _revoked = ro.try_unshare().unwrap();
    assert_eq!(
        status(b.importer().map_ro(a.id(), &refs).unwrap_err()),
        GntSt::GeneralError
    );
    assert_eq!(
        b.importer().stats().refused,
        5,
        "c refused one more on its own importer"
    );
    assert_eq!(c.importer().stats().refused, 1);
    assert_eq!(b.mapped_count(), 0);
}

#[test]
fn partial_batch_is_rolled_back() {
    let (_hv, a, b) = two_domains();
    let s = a.exporter().share(b.id(), 3, Access::ReadWrite).unwrap();
    let mut refs = s.refs().to_vec();
    refs.insert(2, GrantRef(4000)); // not granted
    let err = b.importer().map_rw(a.id(), &refs).unwrap_err();
    assert!(
        matches!(
            err,
            MapError::Refused {
                index: 2,
                gref: GrantRef(4000),
                ..
            }
        ),
        "{err}"
    );
    // Nothing of the batch stays mapped: the share revokes at once.
    assert_eq!(b.mapped_count(), 0);
    for r in s.refs() {
        assert!(!a.grant_busy(*r));
    }
    assert!(s.try_unshare().is_ok());
}

#[test]
fn reserved_refs_never_handed_out_and_no_reuse_while_live() {
    let hv = Hypervisor::new();
    let a = hv
        .create_domain(DomainConfig {
            grant_frames: 1,
            mem_pages: 1024,
            ..Default::default()
        })
        .unwrap();
    let b = hv.create_domain(DomainConfig::default()).unwrap();
    let capacity = a.exporter().table().unwrap().capacity();
    assert_eq!(capacity, 512);
    let mut shares = Vec::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        match a.exporter().share(b.id(), 1, Access::ReadOnly) {
            Ok(s) => {
                let r = s.refs()[0];
                assert!(r.0 >= GNTTAB_NR_RESERVED_ENTRIES, "reserved {r} handed out");
                assert!(seen.insert(r), "{r} handed out twice while live");
                shares.push(s);
            }
            Err(e) => {
                assert_eq!(e, GrantError::TableFull);
                break;
            }
        }
    }
    assert_eq!(shares.len() as u32, capacity - GNTTAB_NR_RESERVED_ENTRIES);
    // Hold one mapped, free the rest: the mapped ref must not come back.
    let held = shares.pop().unwrap();
    let held_ref = held.refs()[0];
    let m = b.importer().map_ro(a.id(), held.refs()).unwrap();
    drop(held); // quarantined
    shares.clear(); // all revoked
    let mut again = Vec::new();
    while let Ok(s) = a.exporter().share(b.id(), 1, Access::ReadOnly) {
        assert_ne!(
            s.refs()[0],
            held_ref,
            "a ref was re-granted while the peer mapped it"
        );
        again.push(s);
    }
    assert_eq!(
        again.len() as u32,
        capacity - GNTTAB_NR_RESERVED_ENTRIES - 1
    );
    drop(m);
    drop(again);
    assert_eq!(a.exporter().reclaim(usize::MAX).reclaimed, 1);
    assert_eq!(
        a.exporter().table().unwrap().free_count() as u32,
        capacity - GNTTAB_NR_RESERVED_ENTRIES
    );
}

#[test]
fn bad_share_arguments_are_typed_errors() {
    let hv = Hypervisor::new();
    let a = hv
        .create_domain(DomainConfig {
            mem_pages: 8,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        a.exporter()
            .share(DomId(1), 0, Access::ReadOnly)
            .unwrap_err(),
        GrantError::BadCount(0)
    );
    assert_eq!(
        a.exporter()
            .share(DomId::INVALID, 1, Access::ReadOnly)
            .unwrap_err(),
        GrantError::BadPeer(DomId::INVALID)
    );
    assert_eq!(
        a.exporter()
            .share(DomId(1), 9, Access::ReadOnly)
            .unwrap_err(),
        GrantError::OutOfMemory { pages: 9 }
    );
}

#[test]
fn granted_pages_never_carry_stale_data() {
    let (_hv, a, b) = small_granter_and_peer(4);
    for round in 0..8u8 {
        let s = a.exporter().share(b.id(), 4, Access::ReadWrite).unwrap();
        let m = b.importer().map_ro(a.id(), s.refs()).unwrap();
        let mut page = vec![0xFFu8; 4 * 4096];
        m.mem().read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|x| *x == 0),
            "round {round}: stale data visible to the peer"
        );
        s.mem().fill(0, 4 * 4096, 0xA0 | round).unwrap();
        drop(m);
        // The same frames come back from revocation; re-sharing them zeroes them too.
        let pages = s.try_unshare().unwrap().pages().unwrap();
        let s = a
            .exporter()
            .share_pages(b.id(), pages, Access::ReadOnly)
            .map_err(|(e, _)| e)
            .unwrap();
        let m = b.importer().map_ro(a.id(), s.refs()).unwrap();
        m.mem().read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|x| *x == 0),
            "round {round}: re-shared pages not zeroed"
        );
    }
}

#[test]
fn grant_copy_follows_the_rules() {
    let (_hv, a, b) = two_domains();
    let rw = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    let ro = a.exporter().share(b.id(), 1, Access::ReadOnly).unwrap();
    ro.mem().write(100, b"granted bytes").unwrap();

    let mut out = [0u8; 13];
    let data = *b"copied in!!!!";
    // A copy of `data` into `a`'s grant `gref` at `offset`.
    let into = |gref, offset| CopyOp {
        src: CopySrc::Local(&data),
        dst: CopyDst::Grant(GrantPtr {
            dom: a.id(),
            gref,
            offset,
        }),
        len: 13,
        status: GntSt::Okay,
    };
    let mut ops = [
        CopyOp {
            src: CopySrc::Grant(GrantPtr {
                dom: a.id(),
                gref: ro.refs()[0],
                offset: 100,
            }),
            dst: CopyDst::Local(&mut out),
            len: 13,
            status: GntSt::Okay,
        },
        into(rw.refs()[0], 4000),
        // Writing into a read-only grant.
        into(ro.refs()[0], 0),
        // Crossing the page end.
        into(rw.refs()[0], 4090),
    ];
    b.importer().copy(&mut ops);
    let st: Vec<GntSt> = ops.iter().map(|o| o.status).collect();
    assert_eq!(
        st,
        [
            GntSt::Okay,
            GntSt::Okay,
            GntSt::GeneralError,
            GntSt::BadCopyArg
        ]
    );
    assert_eq!(&out, b"granted bytes");
    let mut back = [0u8; 13];
    rw.mem().read(4000, &mut back).unwrap();
    assert_eq!(&back, b"copied in!!!!");
    // Copies leave no pins behind.
    assert!(!a.grant_busy(rw.refs()[0]) && !a.grant_busy(ro.refs()[0]));
    assert!(rw.try_unshare().is_ok() && ro.try_unshare().is_ok());
}

#[test]
fn grant_copy_batches_mix_granters_and_refuse_short_local_buffers() {
    let hv = Hypervisor::new();
    let a = hv.create_domain(DomainConfig::default()).unwrap();
    let c = hv.create_domain(DomainConfig::default()).unwrap();
    let b = hv.create_domain(DomainConfig::default()).unwrap();
    let from_a = a.exporter().share(b.id(), 1, Access::ReadOnly).unwrap();
    let to_c = c.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    let to_a = a.exporter().share(b.id(), 1, Access::ReadWrite).unwrap();
    from_a.mem().write(8, b"page to page").unwrap();
    let ptr = |dom: DomId, gref: GrantRef, offset: u16| GrantPtr { dom, gref, offset };
    let data = *b"local bytes!";
    let mut short = [0u8; 4];
    let mut ops = [
        // Grant to grant, two granters.
        CopyOp {
            src: CopySrc::Grant(ptr(a.id(), from_a.refs()[0], 8)),
            dst: CopyDst::Grant(ptr(c.id(), to_c.refs()[0], 3000)),
            len: 12,
            status: GntSt::GeneralError,
        },
        // Back to the first granter within the same batch.
        CopyOp {
            src: CopySrc::Local(&data),
            dst: CopyDst::Grant(ptr(a.id(), to_a.refs()[0], 0)),
            len: 12,
            status: GntSt::GeneralError,
        },
        // A local source shorter than the length.
        CopyOp {
            src: CopySrc::Local(&data[..4]),
            dst: CopyDst::Grant(ptr(c.id(), to_c.refs()[0], 0)),
            len: 12,
            status: GntSt::Okay,
        },
        // A local destination shorter than the length.
        CopyOp {
            src: CopySrc::Grant(ptr(a.id(), from_a.refs()[0], 8)),
            dst: CopyDst::Local(&mut short),
            len: 12,
            status: GntSt::Okay,
        },
    ];
    b.importer().copy(&mut ops);
    let st: Vec<GntSt> = ops.iter().map(|o| o.status).collect();
    assert_eq!(
        st,
        [
            GntSt::Okay,
            GntSt::Okay,
            GntSt::BadCopyArg,
            GntSt::BadCopyArg
        ]
    );
    let mut got = [0u8; 12];
    to_c.mem().read(3000, &mut got).unwrap();
    assert_eq!(&got, b"page to page");
    to_a.mem().read(0, &mut got).unwrap();
    assert_eq!(&got, b"local bytes!");
    let mut head = [0xFFu8; 12];
    to_c.mem().read(0, &mut head).unwrap();
    assert_eq!(head, [0; 12], "a refused copy wrote nothing");
    assert_eq!(short, [0; 4], "a refused copy wrote nothing");
    // Copies leave no pins behind, refused ones included.
    for (d, s) in [(&a, &from_a), (&c, &to_c), (&a, &to_a)] {
        assert!(!d.grant_busy(s.refs()[0]));
    }
    assert!(from_a.try_unshare().is_ok());
    assert!(to_c.try_unshare().is_ok());
    assert!(to_a.try_unshare().is_ok());
}

#[test]
fn unmap_notify_clears_byte_and_sends_event_on_unmap_and_death() {
    let (hv, server, client) = two_domains();
    let sev = server.evtchn().unwrap();
    let cev = client.evtchn().unwrap();
    let sport = sev.alloc_unbound(client.id()).unwrap();
    let cport = cev.bind_interdomain(server.id(), sport).unwrap();

    let share = server
        .exporter()
        .share(client.id(), 1, Access::ReadWrite)
        .unwrap();
    share.mem().write(20, &[1]).unwrap();
    let m = client.importer().map_rw(server.id(), share.refs()).unwrap();
    m.set_unmap_notify(Some(20), Some(cport)).unwrap();
    while sev.poll().unwrap().is_some() {}
    drop(m);
    let mut live = [9u8];
    share.mem().read(20, &mut live).unwrap();
    assert_eq!(live, [0], "unmap must clear the live byte");
    assert_eq!(
        sev.wait(Some(std::time::Duration::from_secs(5))).unwrap(),
        Some(sport)
    );
    sev.unmask(sport).unwrap();

    // Again, but the client domain dies instead of unmapping.
    share.mem().write(20, &[1]).unwrap();
    let m = client.importer().map_rw(server.id(), share.refs()).unwrap();
    m.set_unmap_notify(Some(20), Some(cport)).unwrap();
    assert!(share.try_unshare().is_err_and(|busy| {
        let s = busy.into_inner();
        client.destroy().unwrap();
        let mut live = [9u8];
        s.mem().read(20, &mut live).unwrap();
        assert_eq!(live, [0], "death must clear the live byte");
        assert!(s.try_unshare().is_ok(), "death must release the mapping");
        true
    }));
    assert_eq!(
        sev.wait(Some(std::time::Duration::from_secs(5))).unwrap(),
        Some(sport)
    );
    // The dead domain's mapping object is harmless to drop.
    drop(m);
    // A read-only mapping cannot ask to clear a byte.
    let c2 = hv.create_domain(DomainConfig::default()).unwrap();
    let s2 = server
        .exporter()
        .share(c2.id(), 1, Access::ReadOnly)
        .unwrap();
    let m2 = c2.importer().map_ro(server.id(), s2.refs()).unwrap();
    assert!(m2.set_unmap_notify(Some(0), None).is_err());
    assert!(m2.set_unmap_notify(Some(5000), None).is_err());
}

#[test]
fn domain_death_releases_mappings_and_quarantine_drains() {
    let (_hv, guest, peer) = two_domains();
    let mut maps = Vec::new();
    for _ in 0..10 {
        let s = guest
            .exporter()
            .share(peer.id(), 2, Access::ReadWrite)
            .unwrap();
        maps.push(peer.importer().map_rw(guest.id(), s.refs()).unwrap());
        drop(s); // busy: quarantined
    }
    assert_eq!(guest.exporter().stats().quarantined, 10);
    assert_eq!(guest.exporter().reclaim(100).reclaimed, 0);
    peer.destroy().unwrap();
    assert!(!peer.is_alive());
    assert_eq!(peer.mapped_count(), 0);
    assert!(guest.active_grants().is_empty());
    let r = guest.exporter().reclaim(4);
    assert_eq!(
        (r.reclaimed, r.remaining),
        (4, 6),
        "reclaim is bounded by its budget"
    );
    let r = guest.exporter().reclaim(100);
    assert_eq!((r.reclaimed, r.remaining), (6, 0));
    // The dead domain's mapping handles are inert.
    drop(maps);
    assert!(peer.importer().map_ro(guest.id(), &[GrantRef(8)]).is_err());
}

#[test]
fn peer_death_closes_event_channels() {
    let (hv, a, b) = two_domains();
    let ea = a.evtchn().unwrap();
    let eb = b.evtchn().unwrap();
    let pa = ea.alloc_unbound(b.id()).unwrap();
    let pb = eb.bind_interdomain(a.id(), pa).unwrap();
    // Binding sets the new port pending, as on Xen.
    assert_eq!(eb.poll().unwrap(), Some(pb));
    eb.unmask(pb).unwrap();
    eb.notify(pb).unwrap();
    assert_eq!(ea.poll().unwrap(), Some(pa));
    b.destroy().unwrap();
    // The survivor is told, and its port is unbound again (it can be re-bound).
    ea.unmask(pa).unwrap();
    assert_eq!(
        ea.wait(Some(std::time::Duration::from_secs(5))).unwrap(),
        Some(pa)
    );
    let c = hv.create_domain(DomainConfig::default()).unwrap();
    assert!(
        c.evtchn().unwrap().bind_interdomain(a.id(), pa).is_err(),
        "offered to b only"
    );
    assert!(eb.notify(pb).is_err() || eb.poll().is_err());
}
