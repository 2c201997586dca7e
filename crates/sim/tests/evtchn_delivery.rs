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
use xenshare_sim::{Domain, DomainConfig, Hypervisor};

/// A hypervisor with domains 1 and 2 (the hypervisor must outlive them).
fn two_domains() -> (Hypervisor, Domain, Domain) {
    let hv = Hypervisor::new();
    let a = hv
        .create_domain_with_id(DomId(1), DomainConfig::default())
        .unwrap();
    let b = hv
        .create_domain_with_id(DomId(2), DomainConfig::default())
        .unwrap();
    (hv, a, b)
}

#[test]
fn an_event_after_delivery_latches_and_comes_again_on_unmask() {
    let (_hv, a, b) = two_domains();
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

/// Whether `fd` is readable right now.
fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    poll(&mut fds, Some(&zero)).unwrap();
    fds[0].revents().contains(PollFlags::IN)
}

/// A handle's fd is readable exactly while one of its ports is delivered
/// and not taken, as Linux's `/dev/xen/evtchn` is while its queue is
/// non-empty. (It once stayed readable after the port was taken until a
/// blocking wait drained it, so a C program that `select`ed on it and then
/// read a port could block with nothing to read.)
#[test]
fn the_wake_fd_is_readable_exactly_while_a_port_waits() {
    let (_hv, a, b) = two_domains();
    let (ha, hb) = (a.evtchn().unwrap(), b.evtchn().unwrap());
    let fd = || hb.wake_fd();
    let mut pairs = Vec::new();
    for _ in 0..2 {
        let pa = ha.alloc_unbound(DomId(2)).unwrap();
        let pb = hb.bind_interdomain(DomId(1), pa).unwrap();
        pairs.push((pa, pb));
    }
    // Both fresh bindings are delivered: readable until both are taken.
    let mut got = Vec::new();
    for left in [true, false] {
        assert!(readable(fd()));
        got.push(hb.poll().unwrap().unwrap());
        assert_eq!(readable(fd()), left, "after taking {got:?}");
    }
    got.sort();
    assert_eq!(got, vec![pairs[0].1, pairs[1].1]);
    assert_eq!(hb.poll().unwrap(), None);
    for (_, pb) in &pairs {
        hb.unmask(*pb).unwrap();
    }
    assert!(
        !readable(fd()),
        "unmasking with nothing pending delivers nothing"
    );

    // An event that latched while the port was masked makes the fd
    // readable when the unmask delivers it, and taking it ends that.
    let (pa, pb) = pairs[0];
    ha.notify(pa).unwrap();
    assert_eq!(hb.poll().unwrap(), Some(pb));
    ha.notify(pa).unwrap();
    assert!(!readable(fd()), "latched, not delivered");
    hb.unmask(pb).unwrap();
    assert!(readable(fd()));
    assert_eq!(hb.wait(Some(Duration::ZERO)).unwrap(), Some(pb));
    assert!(!readable(fd()));
    hb.unmask(pb).unwrap();

    // A port closed while its delivery waits takes the readiness with it.
    let (pa2, pb2) = pairs[1];
    ha.notify(pa2).unwrap();
    assert!(readable(fd()));
    hb.close(pb2).unwrap();
    assert!(!readable(fd()), "closed port left the fd readable");
    assert_eq!(hb.poll().unwrap(), None);

    // Many events on one port while it waits: still one delivery, one
    // readiness.
    for _ in 0..100 {
        ha.notify(pa).unwrap();
    }
    assert_eq!(hb.poll().unwrap(), Some(pb));
    assert!(!readable(fd()));
    hb.unmask(pb).unwrap();

    // Unmasked before it was taken, then another event: the port is
    // queued once, so one take empties the fd.
    ha.notify(pa).unwrap();
    hb.unmask(pb).unwrap();
    ha.notify(pa).unwrap();
    assert!(readable(fd()));
    assert_eq!(hb.poll().unwrap(), Some(pb));
    assert!(!readable(fd()), "a second token outlived the port");
    assert_eq!(hb.poll().unwrap(), None);
}

/// The token-before-bit order under contention: two threads notify two
/// ports as fast as they can while a third waits on the fd, takes and
/// unmasks. A delivery whose token went missing would leave the waiter
/// asleep with a port delivered (a 10 s `poll` timing out while the
/// notifiers run); a token left behind would leave the fd readable with
/// nothing to take at the end.
#[test]
fn readiness_stays_exact_under_concurrent_notifies() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (_hv, a, b) = two_domains();
    let (ha, hb) = (Arc::new(a.evtchn().unwrap()), b.evtchn().unwrap());
    let mut ports = Vec::new();
    for _ in 0..2 {
        let pa = ha.alloc_unbound(DomId(2)).unwrap();
        ports.push((pa, hb.bind_interdomain(DomId(1), pa).unwrap()));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let notifiers: Vec<_> = ports
        .iter()
        .map(|&(pa, _)| {
            let (ha, done) = (ha.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..50_000 {
                    ha.notify(pa).unwrap();
                }
                done.fetch_add(1, Ordering::AcqRel);
            })
        })
        .collect();
    let (mut taken, mut empty_wakes) = (0u64, 0u64);
    let mut finished_at = None;
    loop {
        let finished = done.load(Ordering::Acquire) == ports.len();
        if finished {
            let at = *finished_at.get_or_insert_with(std::time::Instant::now);
            assert!(
                at.elapsed() < Duration::from_secs(2),
                "the fd stays readable with nothing to take"
            );
        }
        let fd = hb.wake_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let limit = rustix::event::Timespec {
            tv_sec: if finished { 0 } else { 10 },
            tv_nsec: 0,
        };
        let n = rustix::event::poll(&mut fds, Some(&limit)).unwrap();
        if n == 0 {
            assert!(
                finished,
                "asleep with the notifiers running: a lost wake-up"
            );
            break;
        }
        match hb.poll().unwrap() {
            Some(p) => {
                taken += 1;
                hb.unmask(p).unwrap();
            }
            None => empty_wakes += 1,
        }
    }
    for t in notifiers {
        t.join().unwrap();
    }
    // Whatever is left: readable exactly while something is there to take.
    loop {
        let r = readable(hb.wake_fd());
        let p = hb.poll().unwrap();
        assert_eq!(r, p.is_some(), "readable {r}, took {p:?}");
        match p {
            Some(_) => taken += 1,
            None => break,
        }
    }
    assert!(taken > 0);
    eprintln!("{taken} deliveries taken, {empty_wakes} wake-ups found nothing (transient)");
}
