//! Delivery as a Linux domain sees it on Xen: the guest kernel's upcall
//! masks a port and takes its pending bit as soon as the event arrives, so
//! a second event before the port is unmasked latches and comes again on
//! unmask. (The emulator once delivered lazily, when the handle looked:
//! the second event merged into the first, and Xen's `vchan-socket-proxy`,
//! which looks at its vchan only after its next `select`, could wait for
//! ever with data in the ring.)

use std::time::Duration;

use xenshare::platform::EventChannels;
use xenshare::DomId;
use xenshare_sim::{DomainConfig, Hypervisor};

#[test]
fn an_event_after_delivery_latches_and_comes_again_on_unmask() {
    let hv = Hypervisor::new();
    let a = hv
        .create_domain_with_id(DomId(1), DomainConfig::default())
        .unwrap();
    let b = hv
        .create_domain_with_id(DomId(2), DomainConfig::default())
        .unwrap();
    let (ha, hb) = (a.evtchn().unwrap(), b.evtchn().unwrap());
    let pa = ha.alloc_unbound(DomId(2)).unwrap();
    let pb = hb.bind_interdomain(DomId(1), pa).unwrap();
    // Xen marks a freshly bound port pending: take that event first.
    assert_eq!(hb.poll().unwrap(), Some(pb));
    hb.unmask(pb).unwrap();
    assert_eq!(hb.poll().unwrap(), None);

    // Two events before the handle looks: the first was delivered (and
    // masked the port) when it came, the second latched.
    ha.notify(pa).unwrap();
    ha.notify(pa).unwrap();
    assert_eq!(hb.poll().unwrap(), Some(pb));
    assert_eq!(hb.poll().unwrap(), None, "masked until unmasked");
    hb.unmask(pb).unwrap();
    assert_eq!(
        hb.wait(Some(Duration::from_secs(10))).unwrap(),
        Some(pb),
        "the latched event comes again on unmask"
    );
    hb.unmask(pb).unwrap();
    assert_eq!(hb.poll().unwrap(), None, "and only once");

    // Events while masked coalesce into one, as on Xen.
    ha.notify(pa).unwrap();
    assert_eq!(hb.poll().unwrap(), Some(pb));
    for _ in 0..5 {
        ha.notify(pa).unwrap();
    }
    hb.unmask(pb).unwrap();
    assert_eq!(hb.poll().unwrap(), Some(pb));
    hb.unmask(pb).unwrap();
    assert_eq!(hb.poll().unwrap(), None);
}
