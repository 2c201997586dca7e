//! The few `xc_*` functions of `libxenctrl.so.4.17` that tools built for a
//! guest use, with what an unprivileged domain gets from Xen.
//!
//! Xen's `vchan-socket-proxy` opens a control handle only to ask, while it
//! waits for a vchan server, whether the server's domain still exists
//! (`xc_domain_getinfo`); it keeps waiting when the call fails with
//! anything but `ESRCH`. A domain of the emulator is not privileged, and
//! Xen refuses `XEN_DOMCTL_getdomaininfo` to an unprivileged domain with
//! `EPERM`; so does this library. Opening and closing a handle always
//! succeed: on Xen they only open the privcmd device, which a guest has.
//!
//! Everything else of libxenctrl (domain building, memory, scheduling...)
//! needs the hypervisor's privileged interface and is not provided: a
//! program that needs it fails to load with a missing-symbol error, which
//! names the function.

use std::os::raw::{c_int, c_uint, c_void};
use std::ptr;

use crate::export::export;
use crate::rt::{close_boxed, guard, into_handle, libc_errno as E, set_errno};

/// An `xc_interface`: nothing to hold.
pub struct CtrlHandle {
    _flags: c_uint,
}

/// Opens a control handle (always succeeds; loggers are not used).
extern "C" fn interface_open(
    _logger: *mut c_void,
    _dombuild_logger: *mut c_void,
    flags: c_uint,
) -> *mut CtrlHandle {
    guard(ptr::null_mut(), || {
        into_handle(CtrlHandle { _flags: flags })
    })
}
export!("xc_interface_open", "VERS_4.17.0", interface_open);

/// Closes a handle from `xc_interface_open`; `NULL` is accepted.
///
/// # Safety
/// `h` is `NULL` or a handle from `xc_interface_open`, closed at most once.
unsafe extern "C" fn interface_close(h: *mut CtrlHandle) -> c_int {
    // SAFETY: forwarded contract (a handle from `into_handle`).
    guard(-1, || unsafe { close_boxed(h) })
}
export!("xc_interface_close", "VERS_4.17.0", interface_close);

/// Domain information needs privilege: `-1` with `EPERM`, as Xen answers
/// an unprivileged domain (`EBADF` for a `NULL` handle). `info` is never
/// written.
extern "C" fn domain_getinfo(
    h: *mut CtrlHandle,
    _first_domid: u32,
    _max_doms: c_uint,
    _info: *mut c_void,
) -> c_int {
    set_errno(if h.is_null() { E::EBADF } else { E::EPERM });
    -1
}
export!("xc_domain_getinfo", "VERS_4.17.0", domain_getinfo);
