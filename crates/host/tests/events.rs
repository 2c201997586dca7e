//! Event delivery through the host daemon, as a Linux domain sees it on
//! Xen: the guest kernel's upcall masks a port and takes its pending bit
//! as soon as the event arrives, so a second event before the port is
//! unmasked latches and is delivered again on unmask (the in-process
//! emulator's `evtchn_delivery` test pins the same rule; here both domains
//! are remote, so every notify goes through the daemon and every unmask
//! through the handle's own copy of the `shared_info` page).

mod common;

use std::time::Duration;

use xenshare::platform::EventChannels;
use xenshare::DomId;
use xenshare_host::client::RemoteDomain;

#[test]
fn an_event_after_delivery_latches_and_comes_again_on_unmask() {
    let (_h, sock) = common::host("evt", "latch");
    let a = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let b = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let (ha, hb) = (a.evtchn().unwrap(), b.evtchn().unwrap());
    let pa = ha.alloc_unbound(DomId(2)).unwrap();
    let pb = hb.bind_interdomain(DomId(1), pa).unwrap();
    let wait = Some(Duration::from_secs(10));
    // Xen marks a freshly bound port pending: take that event first.
    assert_eq!(hb.wait(wait).unwrap(), Some(pb));
    hb.unmask(pb).unwrap();
    assert_eq!(hb.poll().unwrap(), None);

    // Two events before the handle looks: the first is delivered (masking
    // the port) when it comes, the second latches.
    ha.notify(pa).unwrap();
    ha.notify(pa).unwrap();
    assert_eq!(hb.wait(wait).unwrap(), Some(pb));
    assert_eq!(hb.poll().unwrap(), None, "masked until unmasked");
    hb.unmask(pb).unwrap();
    assert_eq!(
        hb.wait(wait).unwrap(),
        Some(pb),
        "the latched event comes again on unmask"
    );
    hb.unmask(pb).unwrap();
    assert_eq!(
        hb.wait(Some(Duration::from_millis(200))).unwrap(),
        None,
        "and only once"
    );
}
