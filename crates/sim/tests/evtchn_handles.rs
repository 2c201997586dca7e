//! Opening and closing event channel handles forever keeps the emulator's
//! per-domain handle bookkeeping as long as the live handles (dead ones are
//! pruned), not as long as the history.

use xenshare::platform::EventChannels;
use xenshare::DomId;
use xenshare_sim::{DomainConfig, Hypervisor};

#[test]
fn handle_bookkeeping_stays_bounded() {
    let hv = Hypervisor::new();
    let d = hv
        .create_domain_with_id(DomId(1), DomainConfig::default())
        .unwrap();
    let peer = hv
        .create_domain_with_id(DomId(2), DomainConfig::default())
        .unwrap();
    // Some handles stay open throughout, and keep working.
    let keep: Vec<_> = (0..40).map(|_| d.evtchn().unwrap()).collect();
    for i in 0..100_000 {
        let h = d.evtchn().unwrap();
        if i % 1000 == 0 {
            // Use some of them, so they are not trivially empty.
            let p = h.alloc_unbound(DomId(2)).unwrap();
            h.close(p).unwrap();
        }
        drop(h);
        assert!(
            d.evtchn_handle_slots() <= 2 * keep.len() + 64 + 1,
            "{} handle slots after {i} open/close cycles",
            d.evtchn_handle_slots()
        );
    }
    // The kept handles still work.
    let pe = peer.evtchn().unwrap();
    let p = keep[7].alloc_unbound(DomId(2)).unwrap();
    let q = pe.bind_interdomain(DomId(1), p).unwrap();
    pe.notify(q).unwrap();
    assert_eq!(
        keep[7]
            .wait(Some(std::time::Duration::from_secs(30)))
            .unwrap(),
        Some(p)
    );
    // Destroying the domain still closes every live handle.
    d.destroy().unwrap();
    assert!(keep[0].poll().is_err(), "a live handle missed the destroy");
}
