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

/// Whether `fd` is readable right now.
fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap();
    fds[0].revents().contains(rustix::event::PollFlags::IN)
}

/// Through the daemon too, a handle's fd (what the compat library's
/// `xenevtchn_fd` returns) is readable exactly while a port is delivered
/// and not taken: the daemon's token is in the pipe before its notify
/// returns, taking the port takes the token, and a port closed while its
/// delivery waits has the daemon say so, so the closer takes the token.
#[test]
fn the_wake_fd_is_readable_exactly_while_a_port_waits() {
    let (_h, sock) = common::host("evt", "ready");
    let a = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let b = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let (ha, hb) = (a.evtchn().unwrap(), b.evtchn().unwrap());
    let pa = ha.alloc_unbound(DomId(2)).unwrap();
    let pb = hb.bind_interdomain(DomId(1), pa).unwrap();
    let pa2 = ha.alloc_unbound(DomId(2)).unwrap();
    let pb2 = hb.bind_interdomain(DomId(1), pa2).unwrap();
    for left in [true, false] {
        assert!(readable(hb.wake_fd()));
        assert!(hb.poll().unwrap().is_some());
        assert_eq!(readable(hb.wake_fd()), left);
    }
    hb.unmask(pb).unwrap();
    hb.unmask(pb2).unwrap();
    assert!(!readable(hb.wake_fd()));

    // A daemon delivery, then one of this process's own (an unmask that
    // finds the latched event).
    ha.notify(pa).unwrap();
    assert!(readable(hb.wake_fd()));
    assert_eq!(hb.poll().unwrap(), Some(pb));
    assert!(!readable(hb.wake_fd()));
    ha.notify(pa).unwrap();
    assert!(!readable(hb.wake_fd()), "latched, not delivered");
    hb.unmask(pb).unwrap();
    assert!(readable(hb.wake_fd()));
    assert_eq!(hb.wait(Some(Duration::ZERO)).unwrap(), Some(pb));
    assert!(!readable(hb.wake_fd()));

    // Closing a port whose delivery waits.
    ha.notify(pa2).unwrap();
    assert!(readable(hb.wake_fd()));
    hb.close(pb2).unwrap();
    assert!(!readable(hb.wake_fd()), "closed port left the fd readable");
    assert_eq!(hb.poll().unwrap(), None);
}
