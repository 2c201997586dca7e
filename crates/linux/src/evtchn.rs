//! Event channels over `/dev/xen/evtchn`.
//!
//! One open of the device is one [`EvtchnHandle`]: ports bound through it
//! are delivered to it. The binds are ioctls that return the new port;
//! `notify` is `IOCTL_EVTCHN_NOTIFY`; a pending port is a `u32` read from
//! the device (the kernel masks it until it is written back, which is
//! `unmask`); `close` is `IOCTL_EVTCHN_UNBIND`.
//!
//! The device is opened non-blocking: [`EventChannels::poll`] is one read,
//! [`EventChannels::wait`] adds `poll(2)` with the timeout. The handle keeps
//! the set of ports it bound, so a port of another handle is refused with
//! [`EventError::NotBound`] everywhere (the kernel silently ignores unknown
//! ports on write).
//!
//! If the kernel's per-handle queue overflows (`EFBIG`), the queue is reset
//! and every port of the handle is reported pending once: events carry no
//! data and coalesce anyway, so a spurious wake-up is harmless while a lost
//! one is not.

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use xenshare::event::EventError;
use xenshare::platform::EventChannels;
use xenshare::{DomId, Port};
use xenshare_abi::linux as uapi;

use crate::{open_dev, wait_readable, OpenError};

#[derive(Default)]
struct State {
    bound: BTreeSet<Port>,
    /// Ports to report before reading the device again (after an overflow).
    queued: VecDeque<Port>,
}

/// An open `/dev/xen/evtchn`.
pub struct EvtchnHandle {
    fd: OwnedFd,
    domid: DomId,
    state: Mutex<State>,
}

impl std::fmt::Debug for EvtchnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvtchnHandle")
            .field("domid", &self.domid)
            .finish()
    }
}

fn os(e: Errno) -> EventError {
    EventError::Os(e.raw_os_error())
}

impl EvtchnHandle {
    /// Opens `/dev/xen/evtchn` for domain `domid` (this domain).
    pub fn open(domid: DomId) -> Result<EvtchnHandle, OpenError> {
        Ok(EvtchnHandle {
            fd: open_dev(crate::EVTCHN)?,
            domid,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owns(&self, port: Port) -> Result<(), EventError> {
        if self.state().bound.contains(&port) {
            Ok(())
        } else {
            Err(EventError::NotBound(port))
        }
    }

    fn real(&self, dom: DomId) -> DomId {
        if dom == DomId::SELF {
            self.domid
        } else {
            dom
        }
    }

    fn bound(&self, port: u32) -> Port {
        let p = Port(port);
        self.state().bound.insert(p);
        p
    }
}

impl EventChannels for EvtchnHandle {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn alloc_unbound(&self, remote: DomId) -> Result<Port, EventError> {
        let remote = self.real(remote);
        let p = sys_evtchn(
            &self.fd,
            uapi::IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            remote.0.into(),
            0,
        )
        .map_err(|e| match e {
            Errno::SRCH => EventError::NoDomain(remote),
            Errno::NOSPC | Errno::MFILE => EventError::NoFreePorts,
            e => os(e),
        })?;
        Ok(self.bound(p))
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, EventError> {
        let remote = self.real(remote);
        let p = sys_evtchn(
            &self.fd,
            uapi::IOCTL_EVTCHN_BIND_INTERDOMAIN,
            remote.0.into(),
            remote_port.0,
        )
        .map_err(|e| match e {
            Errno::SRCH => EventError::NoDomain(remote),
            Errno::INVAL => EventError::NotOffered {
                dom: remote,
                port: remote_port,
            },
            Errno::NOSPC | Errno::MFILE => EventError::NoFreePorts,
            e => os(e),
        })?;
        Ok(self.bound(p))
    }

    fn notify(&self, port: Port) -> Result<(), EventError> {
        self.owns(port)?;
        sys_evtchn(&self.fd, uapi::IOCTL_EVTCHN_NOTIFY, port.0, 0).map_err(|e| match e {
            Errno::NOTCONN => EventError::NotBound(port),
            e => os(e),
        })?;
        Ok(())
    }

    fn unmask(&self, port: Port) -> Result<(), EventError> {
        self.owns(port)?;
        match rustix::io::write(&self.fd, &port.0.to_ne_bytes()) {
            Ok(4) => Ok(()),
            Ok(_) => Err(os(Errno::IO)),
            Err(e) => Err(os(e)),
        }
    }

    fn close(&self, port: Port) -> Result<(), EventError> {
        self.owns(port)?;
        let r = sys_evtchn(&self.fd, uapi::IOCTL_EVTCHN_UNBIND, port.0, 0);
        let mut st = self.state();
        st.bound.remove(&port);
        st.queued.retain(|p| *p != port);
        match r {
            Ok(_) => Ok(()),
            Err(Errno::NOTCONN) => Err(EventError::NotBound(port)),
            Err(e) => Err(os(e)),
        }
    }

    fn poll(&self) -> Result<Option<Port>, EventError> {
        if let Some(p) = self.state().queued.pop_front() {
            return Ok(Some(p));
        }
        let mut buf = [0u8; 4];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(4) => {
                    let port = Port(u32::from_ne_bytes(buf));
                    // A port of this handle, as the kernel only queues those;
                    // anything else (a port just closed) is dropped.
                    if self.state().bound.contains(&port) {
                        return Ok(Some(port));
                    }
                }
                Ok(_) => return Ok(None),
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::INTR) => {}
                Err(Errno::FBIG) => {
                    // Overflow: reset the queue and report every port once.
                    sys_evtchn(&self.fd, uapi::IOCTL_EVTCHN_RESET, 0, 0).map_err(os)?;
                    let mut st = self.state();
                    let all: Vec<Port> = st.bound.iter().copied().collect();
                    st.queued.extend(all);
                    return Ok(st.queued.pop_front());
                }
                Err(e) => return Err(os(e)),
            }
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(p) = self.poll()? {
                return Ok(Some(p));
            }
            if !wait_readable(&self.fd, deadline).map_err(os)? {
                return Ok(None);
            }
        }
    }
}

fn sys_evtchn(fd: &OwnedFd, op: u32, a: u32, b: u32) -> Result<u32, Errno> {
    crate::sys::evtchn_ioctl(fd.as_fd(), op, a, b)
}
