//! `xenevtchn_*` with the semantics of Linux's `/dev/xen/evtchn`: a handle
//! owns the ports it bound; a delivered port is masked until unmasked;
//! `xenevtchn_fd` is readable exactly while a port is waiting, as the
//! kernel's is while its per-fd queue is non-empty: the emulator queues one
//! token on the fd with every delivered port (masked when the event came,
//! as a guest kernel's upcall does) and taking the port takes the token
//! (see [`xenshare_sim::evtchn`]), so `xenevtchn_pending` after a `poll`
//! that found the fd readable returns without waiting.

use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::Arc;

use rustix::event::{poll, PollFd, PollFlags};
use xenshare::event::EventError;
use xenshare::platform::EventChannels;
use xenshare::Port;
use xenshare_host::RemoteEvtchn;

use crate::export::export;
use crate::rt::{close_boxed, domid, fail, guard, into_handle, libc_errno as E, runtime, CHandle};

/// A `xenevtchn_handle`.
pub struct EvtHandle {
    ev: Arc<RemoteEvtchn>,
}

fn evt_errno(e: &EventError) -> i32 {
    match e {
        EventError::NotBound(_) => E::ENOTCONN,
        EventError::NotOffered { .. } | EventError::NoDomain(_) => E::EINVAL,
        EventError::NoFreePorts => E::ENOSPC,
        EventError::Closed => E::EBADF,
        EventError::Os(e) => *e,
    }
}

fn port_result(r: Result<Port, EventError>) -> c_int {
    match r.map(|p| c_int::try_from(p.0)) {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => fail(E::EINVAL, -1),
        Err(e) => fail(evt_errno(&e), -1),
    }
}

fn unit_result(r: Result<(), EventError>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail(evt_errno(&e), -1),
    }
}

extern "C" fn evtchn_open(_logger: *mut c_void, _flags: c_uint) -> *mut EvtHandle {
    guard(ptr::null_mut(), || {
        let Some(rt) = runtime("libxenevtchn") else {
            return ptr::null_mut();
        };
        match rt.dom.evtchn() {
            Ok(ev) => into_handle(EvtHandle { ev }),
            Err(e) => {
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!(
                        "libxenevtchn (xenshare): cannot open an event channel handle: {e}\n"
                    ),
                );
                fail(E::EIO, ptr::null_mut())
            }
        }
    })
}
export!("xenevtchn_open", "VERS_1.0", evtchn_open);

/// Not supported (there is no device fd to adopt): `NULL`, `ENOSYS`.
extern "C" fn evtchn_fdopen(_logger: *mut c_void, _fd: c_int, _flags: c_uint) -> *mut EvtHandle {
    fail(E::ENOSYS, ptr::null_mut())
}
export!("xenevtchn_fdopen", "VERS_1.2", evtchn_fdopen);

/// Closes the handle and every port it bound.
///
/// # Safety
/// `h` is `NULL` or a handle from `xenevtchn_open`, closed at most once.
unsafe extern "C" fn evtchn_close(h: *mut EvtHandle) -> c_int {
    // SAFETY: forwarded contract (a handle from `into_handle`).
    guard(-1, || unsafe { close_boxed(h) })
}
export!("xenevtchn_close", "VERS_1.0", evtchn_close);

/// The fd to poll: readable exactly while a port of this handle was
/// delivered and not yet taken. Owned by the handle; do not close or read
/// it.
///
/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_fd(h: *mut EvtHandle) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| h.ev.wake_fd().as_raw_fd())
}
export!("xenevtchn_fd", "VERS_1.0", evtchn_fd);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_notify(h: *mut EvtHandle, port: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| unit_result(h.ev.notify(Port(port))))
}
export!("xenevtchn_notify", "VERS_1.0", evtchn_notify);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_bind_unbound_port(h: *mut EvtHandle, dom: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| {
        let Some(dom) = domid(dom) else {
            return fail(E::EINVAL, -1);
        };
        port_result(h.ev.alloc_unbound(dom))
    })
}
export!(
    "xenevtchn_bind_unbound_port",
    "VERS_1.0",
    evtchn_bind_unbound_port
);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_bind_interdomain(h: *mut EvtHandle, dom: u32, remote: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| {
        let Some(dom) = domid(dom) else {
            return fail(E::EINVAL, -1);
        };
        port_result(h.ev.bind_interdomain(dom, Port(remote)))
    })
}
export!(
    "xenevtchn_bind_interdomain",
    "VERS_1.0",
    evtchn_bind_interdomain
);

/// Virtual IRQs do not exist in the emulator: -1, `ENOSYS`.
extern "C" fn evtchn_bind_virq(_h: *mut EvtHandle, _virq: c_uint) -> c_int {
    fail(E::ENOSYS, -1)
}
export!("xenevtchn_bind_virq", "VERS_1.0", evtchn_bind_virq);

/// Accepted as a no-op (the emulator does not restrict bindings per handle).
extern "C" fn evtchn_restrict(_h: *mut EvtHandle, _dom: u16) -> c_int {
    0
}
export!("xenevtchn_restrict", "VERS_1.1", evtchn_restrict);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_unbind(h: *mut EvtHandle, port: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| unit_result(h.ev.close(Port(port))))
}
export!("xenevtchn_unbind", "VERS_1.0", evtchn_unbind);

impl EvtHandle {
    /// The next pending port, blocking until there is one (as a `read` of
    /// the blocking device does, which `libxenvchan_wait` relies on).
    fn pending(&self) -> Result<u32, EventError> {
        loop {
            if let Some(p) = self.ev.poll()? {
                return Ok(p.0);
            }
            let fd = self.ev.wake_fd();
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(EventError::Os(e.raw_os_error())),
            }
        }
    }
}

/// The next pending port (masked until `xenevtchn_unmask`); blocks until
/// one is pending. -1 with errno on failure.
///
/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_pending(h: *mut EvtHandle) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| port_result(h.pending().map(Port)))
}
export!("xenevtchn_pending", "VERS_1.0", evtchn_pending);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn evtchn_unmask(h: *mut EvtHandle, port: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| unit_result(h.ev.unmask(Port(port))))
}
export!("xenevtchn_unmask", "VERS_1.0", evtchn_unmask);
