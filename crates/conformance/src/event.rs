//! Event channel bodies, and the unmap notifies (a cleared byte plus an
//! event) that tell a peer a mapping or a share went away.

use std::time::Duration;

use xenshare::event::EventError;
use xenshare::platform::EventChannels;
use xenshare::{Access, Port};

use crate::grant::unsupported;
use crate::{check, Context, Outcome, Platform, TestResult};

/// How long a body waits for an event that must come.
const EVENT_WAIT: Duration = Duration::from_secs(3);
/// How long a body waits to be sure an event does not come.
const QUIET_WAIT: Duration = Duration::from_millis(200);

/// Drains every pending event of `h` (unmasking each), returning them.
fn drain<E: EventChannels>(h: &E) -> Result<Vec<Port>, String> {
    let mut got = Vec::new();
    while let Some(p) = h.wait(Some(QUIET_WAIT)).ctx("drain")? {
        h.unmask(p).ctx("unmask while draining")?;
        got.push(p);
        if got.len() > 64 {
            return Err("an endless stream of events".into());
        }
    }
    Ok(got)
}

/// A connected pair: (exporter handle, its port, importer handle, its port).
type Pair<E> = (std::sync::Arc<E>, Port, std::sync::Arc<E>, Port);

fn connect<P: Platform>(p: &P) -> Result<Pair<P::Evtchn>, String> {
    let h1 = p.exporter_evtchn()?;
    let h2 = p.importer_evtchn()?;
    let p1 = h1.alloc_unbound(h2.domid()).ctx("alloc_unbound")?;
    let p2 = h2
        .bind_interdomain(h1.domid(), p1)
        .ctx("bind_interdomain")?;
    Ok((h1, p1, h2, p2))
}

/// Xen marks the local port of a fresh interdomain bind pending, so the
/// binder re-checks shared state; the handle must deliver that event.
pub fn event_bind_starts_pending<P: Platform>(p: &P) -> TestResult {
    let (h1, p1, h2, p2) = connect(p)?;
    let got = h2.wait(Some(EVENT_WAIT)).ctx("wait on the binder")?;
    check!(
        got == Some(p2),
        "the freshly bound port {p2} was not delivered pending (got {got:?})"
    );
    h2.unmask(p2).ctx("unmask")?;
    let rest = drain(&*h2)?;
    check!(rest.is_empty(), "more events after the bind: {rest:?}");
    let other = drain(&*h1)?;
    check!(other.is_empty(), "the unbound side got {other:?} on bind");
    h2.close(p2).ctx("close")?;
    h1.close(p1).ctx("close")?;
    Ok(Outcome::Pass(String::new()))
}

/// Notify both ways, three rounds each, unmasking after each delivery.
pub fn event_loopback<P: Platform>(p: &P) -> TestResult {
    let (h1, p1, h2, p2) = connect(p)?;
    drain(&*h2)?;
    for round in 0..3 {
        h2.notify(p2).ctx("notify from the binder")?;
        let got = h1.wait(Some(EVENT_WAIT)).ctx("wait")?;
        check!(got == Some(p1), "round {round}: expected {p1}, got {got:?}");
        h1.unmask(p1).ctx("unmask")?;
        h1.notify(p1).ctx("notify from the allocator")?;
        let got = h2.wait(Some(EVENT_WAIT)).ctx("wait")?;
        check!(got == Some(p2), "round {round}: expected {p2}, got {got:?}");
        h2.unmask(p2).ctx("unmask")?;
    }
    check!(
        h1.poll().ctx("poll")?.is_none(),
        "a spurious event after the rounds"
    );
    // A port of another handle (same domain) is not ours to use, nor is
    // a port nobody bound.
    if h1.domid() == h2.domid() {
        match h1.notify(p2) {
            Err(EventError::NotBound(_)) => {}
            other => return Err(format!("notify on another handle's port gave {other:?}")),
        }
    }
    match h1.notify(Port(p1.0.max(p2.0) + 1000)) {
        Err(EventError::NotBound(_)) => {}
        other => return Err(format!("notify on an unbound port gave {other:?}")),
    }
    h2.close(p2).ctx("close")?;
    h1.close(p1).ctx("close")?;
    Ok(Outcome::Pass(format!("ports {p1} <-> {p2}")))
}

/// A delivered port stays masked until unmasked; an event meanwhile is
/// latched, not lost, and arrives at unmask. Events coalesce.
pub fn event_masked_until_unmask<P: Platform>(p: &P) -> TestResult {
    let (h1, p1, h2, p2) = connect(p)?;
    drain(&*h2)?;
    h2.notify(p2).ctx("notify 1")?;
    let got = h1.wait(Some(EVENT_WAIT)).ctx("wait 1")?;
    check!(got == Some(p1), "first event: got {got:?}");
    // Masked now: two more notifies are latched (and coalesce into one).
    h2.notify(p2).ctx("notify 2")?;
    h2.notify(p2).ctx("notify 3")?;
    let early = h1.wait(Some(QUIET_WAIT)).ctx("wait while masked")?;
    check!(early.is_none(), "delivered while masked: {early:?}");
    h1.unmask(p1).ctx("unmask")?;
    let got = h1.wait(Some(EVENT_WAIT)).ctx("wait after unmask")?;
    check!(
        got == Some(p1),
        "the event latched while masked was lost (got {got:?})"
    );
    h1.unmask(p1).ctx("unmask")?;
    let extra = h1.wait(Some(QUIET_WAIT)).ctx("wait for extras")?;
    check!(
        extra.is_none(),
        "latched events did not coalesce: {extra:?}"
    );
    h2.close(p2).ctx("close")?;
    h1.close(p1).ctx("close")?;
    Ok(Outcome::Pass(String::new()))
}

/// Closing the binder's port returns the other end to unbound: it can be
/// bound again. Closed ports are refused.
pub fn event_close_and_rebind<P: Platform>(p: &P) -> TestResult {
    let (h1, p1, h2, p2) = connect(p)?;
    // A bound port cannot be bound a second time.
    match h2.bind_interdomain(h1.domid(), p1) {
        Err(EventError::NotOffered { .. }) => {}
        other => return Err(format!("second bind of a bound port gave {other:?}")),
    }
    h2.close(p2).ctx("close")?;
    match h2.notify(p2) {
        Err(EventError::NotBound(_)) => {}
        other => return Err(format!("notify on a closed port gave {other:?}")),
    }
    match h2.close(p2) {
        Err(EventError::NotBound(_)) => {}
        other => return Err(format!("second close gave {other:?}")),
    }
    let p3 = h2
        .bind_interdomain(h1.domid(), p1)
        .ctx("rebind after close")?;
    drain(&*h2)?;
    drain(&*h1)?;
    h2.notify(p3).ctx("notify after rebind")?;
    let got = h1.wait(Some(EVENT_WAIT)).ctx("wait")?;
    check!(got == Some(p1), "after rebind: got {got:?}");
    h1.unmask(p1).ctx("unmask")?;
    h2.close(p3).ctx("close")?;
    h1.close(p1).ctx("close")?;
    Ok(Outcome::Pass(String::new()))
}

/// The mapper asks for byte 8 to be cleared and its port notified when its
/// mapping goes; the granter sees both when the mapping is dropped.
pub fn unmap_notify_mapper_side<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let (h1, p1, h2, p2) = connect(p)?;
    drain(&*h2)?;
    let share = exp.share(imp.domid(), 1, Access::ReadWrite).ctx("share")?;
    let m = imp.map_rw(exp.domid(), share.refs()).ctx("map")?;
    m.set_unmap_notify(Some(8), Some(p2))
        .ctx("set_unmap_notify")?;
    share.mem().write(8, &[1]).ctx("set the live byte")?;
    share.mem().write(9, &[7]).ctx("set a neighbour")?;
    let mut b = [0u8; 2];
    m.mem().read(8, &mut b).ctx("read")?;
    check!(b == [1, 7], "mapper sees {b:?}");
    drain(&*h1)?;
    drop(m);
    share.mem().read(8, &mut b).ctx("read after unmap")?;
    check!(b == [0, 7], "after unmap the bytes are {b:?}, want [0, 7]");
    let got = h1.wait(Some(EVENT_WAIT)).ctx("wait")?;
    check!(
        got == Some(p1),
        "no unmap event on the granter's port (got {got:?})"
    );
    h1.unmask(p1).ctx("unmask")?;
    let _revoked = share
        .try_unshare()
        .map_err(|_| "busy after the mapper unmapped".to_string())?;
    h2.close(p2).ctx("close")?;
    h1.close(p1).ctx("close")?;
    Ok(Outcome::Pass(String::new()))
}

/// The granter asks for byte 8 to be cleared and its port notified when
/// its side of the share goes; the mapper, still mapping, sees both.
pub fn unmap_notify_granter_side<P: Platform>(p: &P) -> TestResult {
    let exp = p.exporter();
    let imp = p.importer();
    let (h1, p1, h2, p2) = connect(p)?;
    drain(&*h2)?;
    let share = exp.share(imp.domid(), 1, Access::ReadWrite).ctx("share")?;
    if let Err(e) = share.set_unmap_notify(Some(8), Some(p1)) {
        if unsupported(&e) {
            return Ok(Outcome::Skip(format!("{e}")));
        }
        return Err(format!("set_unmap_notify: {e}"));
    }
    let m = imp.map_rw(exp.domid(), share.refs()).ctx("map")?;
    share.mem().write(8, &[1]).ctx("set the live byte")?;
    let mut b = [0u8];
    m.mem().read(8, &mut b).ctx("read")?;
    check!(b == [1], "mapper sees {b:?}");
    // The granter lets go while the peer still maps the page: the notify
    // runs then (on a granter-owned table the share itself stays busy and
    // waits in quarantine; on Linux it is revoked-and-deferred).
    let kept = match share.try_unshare() {
        Ok(_) => None,
        Err(busy) => Some(busy.into_inner()),
    };
    m.mem().read(8, &mut b).ctx("read after unshare")?;
    check!(b == [0], "the live byte was not cleared: {b:?}");
    let got = h2.wait(Some(EVENT_WAIT)).ctx("wait")?;
    check!(
        got == Some(p2),
        "no event on the mapper's port (got {got:?})"
    );
    h2.unmask(p2).ctx("unmask")?;
    drop(m);
    if let Some(share) = kept {
        let _revoked = share
            .try_unshare()
            .map_err(|_| "still busy after the mapper unmapped".to_string())?;
    }
    h2.close(p2).ctx("close")?;
    h1.close(p1).ctx("close")?;
    Ok(Outcome::Pass(String::new()))
}
