//! Event channels over the 2-level ABI, in poll mode.
//!
//! Upcalls stay masked (`vcpu_info[0].evtchn_upcall_mask = 1`, as the
//! builder leaves it), so Xen never delivers an event by jumping into the
//! guest. A port's event is the PENDING bit Xen sets in `shared_info`; a
//! [`PvEvents`] handle takes it by atomically clearing it, and sleeps with
//! `SCHEDOP_poll` on the ports bound through it, which Xen wakes whether
//! or not the port is masked.
//!
//! Why poll mode: Xen builds an upcall's frame on the current stack, below
//! `rsp`, and the precompiled `core`/`alloc` this image links use the red
//! zone there. An upcall at an arbitrary point could overwrite a leaf
//! function's red-zone data. With upcalls masked nothing ever interrupts
//! the guest, so no callback, trap table or `iret` path is needed at all.
//!
//! Each handle owns the ports bound through it, like an open
//! `/dev/xen/evtchn`: [`EventChannels::poll`] and `wait` only report those.
//! Give each protocol (console, XenStore, each vchan) its own handle.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use spin::Mutex;
use xenshare::event::{Channel, EventError};
use xenshare::platform::EventChannels;
use xenshare::{DomId, Port};
use xenshare_abi::event::{
    port_word_bit, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnPortOp, EVTCHNOP_ALLOC_UNBOUND,
    EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_CLOSE, EVTCHNOP_SEND, EVTCHN_2L_NR_CHANNELS,
    SHARED_INFO_PENDING_OFFSET,
};
use xenshare_abi::xen::DOMID_SELF;

use crate::hypercall;
use crate::layout::SCHED_POLL_MAX_PORTS;
use crate::shared;

/// Ports one handle may hold (one `SCHEDOP_poll` waits on all of them).
pub const MAX_PORTS_PER_HANDLE: usize = SCHED_POLL_MAX_PORTS;

static DOMID: AtomicU32 = AtomicU32::new(DOMID_SELF as u32);

/// Records this domain's id (read from XenStore's `domid`), for
/// [`EventChannels::domid`] and the grant platform.
pub fn set_domid(d: DomId) {
    DOMID.store(u32::from(d.0), Ordering::Release);
}

/// This domain's id, once [`set_domid`] ran (`DOMID_SELF` before).
pub fn domid() -> DomId {
    DomId(DOMID.load(Ordering::Acquire) as u16)
}

/// Sleeps for `d` (Xen system time), with `SCHEDOP_poll` on no port and a
/// timeout; returns early only if Xen does.
pub fn sleep(d: Duration) {
    if shared::page().is_none() {
        return;
    }
    let deadline = shared::now_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    while shared::now_ns() < deadline {
        if hypercall::sched_poll(&[], deadline) != 0 {
            hypercall::sched_yield();
        }
    }
}

/// Atomically clears `bit` of `word`; true if it was set (the event is
/// ours to handle).
pub fn take_bit(word: &AtomicU64, bit: u32) -> bool {
    let m = 1u64 << bit;
    word.fetch_and(!m, Ordering::AcqRel) & m != 0
}

fn pending_word(port: u32) -> Option<(&'static AtomicU64, u32)> {
    if port as usize >= EVTCHN_2L_NR_CHANNELS {
        return None;
    }
    let (w, bit) = port_word_bit(port);
    let p = shared::page()?;
    let a = p.atomic_u64(SHARED_INFO_PENDING_OFFSET + 8 * w).ok()?;
    Some((a, bit))
}

/// Xen's errno values (its `errno.h`) that map to typed errors.
const EINVAL: isize = -22;
const ESRCH: isize = -3;
const ENOSPC: isize = -28;

/// A set of ports bound through this handle, waited on together.
pub struct PvEvents {
    ports: Mutex<Vec<u32>>,
}

impl core::fmt::Debug for PvEvents {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PvEvents")
            .field("ports", &*self.ports.lock())
            .finish()
    }
}

impl PvEvents {
    /// A fresh handle with no ports.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            ports: Mutex::new(Vec::new()),
        })
    }

    /// Adopts a port the domain builder bound (`start_info`'s XenStore or
    /// console port) into this handle.
    pub fn adopt(self: &Arc<Self>, port: Port, remote: DomId) -> Result<Channel<Self>, EventError> {
        self.add(port.0)?;
        Ok(Channel::adopt(self, port, remote))
    }

    fn add(&self, port: u32) -> Result<(), EventError> {
        let mut ports = self.ports.lock();
        if ports.len() >= MAX_PORTS_PER_HANDLE {
            return Err(EventError::NoFreePorts);
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
        Ok(())
    }

    fn has(&self, port: Port) -> bool {
        self.ports.lock().contains(&port.0)
    }

    /// Sleeps until Xen system time `deadline_ns` or an event on this
    /// handle, whichever is first (spurious returns are possible).
    fn sleep_until(&self, deadline_ns: u64) {
        let ports = self.ports.lock().clone();
        if ports.is_empty() {
            hypercall::sched_yield();
        } else {
            hypercall::sched_poll(&ports, deadline_ns);
        }
    }
}

fn os(rc: isize) -> EventError {
    EventError::Os(i32::try_from(-rc).unwrap_or(i32::MAX))
}

impl EventChannels for PvEvents {
    fn domid(&self) -> DomId {
        domid()
    }

    fn alloc_unbound(&self, remote: DomId) -> Result<Port, EventError> {
        let mut op = EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom: remote.0,
            port: 0,
        };
        // SAFETY: the struct EVTCHNOP_alloc_unbound takes.
        let rc = unsafe { hypercall::event_channel_op(EVTCHNOP_ALLOC_UNBOUND, &mut op) };
        match rc {
            0 => {
                self.add(op.port)?;
                Ok(Port(op.port))
            }
            ESRCH => Err(EventError::NoDomain(remote)),
            ENOSPC => Err(EventError::NoFreePorts),
            rc => Err(os(rc)),
        }
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, EventError> {
        let mut op = EvtchnBindInterdomain {
            remote_dom: remote.0,
            _pad: [0; 2],
            remote_port: remote_port.0,
            local_port: 0,
        };
        // SAFETY: the struct EVTCHNOP_bind_interdomain takes.
        let rc = unsafe { hypercall::event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, &mut op) };
        match rc {
            0 => {
                self.add(op.local_port)?;
                Ok(Port(op.local_port))
            }
            EINVAL => Err(EventError::NotOffered {
                dom: remote,
                port: remote_port,
            }),
            ESRCH => Err(EventError::NoDomain(remote)),
            ENOSPC => Err(EventError::NoFreePorts),
            rc => Err(os(rc)),
        }
    }

    fn notify(&self, port: Port) -> Result<(), EventError> {
        if !self.has(port) {
            return Err(EventError::NotBound(port));
        }
        let mut op = EvtchnPortOp { port: port.0 };
        // SAFETY: the struct EVTCHNOP_send takes.
        match unsafe { hypercall::event_channel_op(EVTCHNOP_SEND, &mut op) } {
            0 => Ok(()),
            EINVAL => Err(EventError::NotBound(port)),
            rc => Err(os(rc)),
        }
    }

    fn unmask(&self, port: Port) -> Result<(), EventError> {
        // Ports are never masked individually in poll mode: a port's next
        // event simply sets its PENDING bit again.
        if self.has(port) {
            Ok(())
        } else {
            Err(EventError::NotBound(port))
        }
    }

    fn close(&self, port: Port) -> Result<(), EventError> {
        {
            let mut ports = self.ports.lock();
            let Some(i) = ports.iter().position(|&p| p == port.0) else {
                return Err(EventError::NotBound(port));
            };
            ports.swap_remove(i);
        }
        let mut op = EvtchnPortOp { port: port.0 };
        // SAFETY: the struct EVTCHNOP_close takes.
        match unsafe { hypercall::event_channel_op(EVTCHNOP_CLOSE, &mut op) } {
            0 => Ok(()),
            rc => Err(os(rc)),
        }
    }

    fn poll(&self) -> Result<Option<Port>, EventError> {
        let ports = self.ports.lock();
        for &p in ports.iter() {
            if let Some((w, bit)) = pending_word(p) {
                if take_bit(w, bit) {
                    return Ok(Some(Port(p)));
                }
            }
        }
        Ok(None)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError> {
        let start = shared::now_ns();
        let deadline =
            timeout.map(|t| start.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
        loop {
            if let Some(p) = self.poll()? {
                return Ok(Some(p));
            }
            match deadline {
                Some(d) if shared::now_ns() >= d => return Ok(None),
                Some(d) => self.sleep_until(d),
                None => self.sleep_until(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_bit_clears_only_its_own_bit_once() {
        let w = AtomicU64::new((1 << 5) | (1 << 63));
        assert!(take_bit(&w, 5));
        assert!(!take_bit(&w, 5), "an event is taken once");
        assert_eq!(w.load(Ordering::Relaxed), 1 << 63, "other ports untouched");
        assert!(take_bit(&w, 63));
        assert!(!take_bit(&w, 0));
    }

    #[test]
    fn ports_map_to_2l_words() {
        assert_eq!(port_word_bit(1), (0, 1));
        assert_eq!(port_word_bit(64), (1, 0));
        assert_eq!(port_word_bit(4095), (63, 63));
        // Out of the 2-level range or before shared_info is mapped: no word.
        assert!(pending_word(4096).is_none());
        assert!(pending_word(3).is_none());
    }

    #[test]
    fn a_handle_reports_only_its_ports() {
        let h = PvEvents::new();
        assert_eq!(h.unmask(Port(7)), Err(EventError::NotBound(Port(7))));
        h.add(7).unwrap();
        h.add(7).unwrap();
        assert_eq!(h.ports.lock().len(), 1, "a port is held once");
        assert!(h.unmask(Port(7)).is_ok());
        assert_eq!(h.notify(Port(8)), Err(EventError::NotBound(Port(8))));
        // No shared_info on the host: nothing is pending.
        assert_eq!(h.poll(), Ok(None));
        for p in 100..100 + MAX_PORTS_PER_HANDLE as u32 - 1 {
            h.add(p).unwrap();
        }
        assert_eq!(h.add(9999), Err(EventError::NoFreePorts), "bounded");
    }
}
