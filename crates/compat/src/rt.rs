//! The process-wide runtime: one domain joined lazily on the first
//! `*_open`, the registries of mapped and shared addresses, errno and the
//! panic guard.

use std::collections::HashMap;
use std::io::Write;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use xenshare::grant::{Mapping, Share};
use xenshare::mem::ReadOnly;
use xenshare::DomId;
use xenshare_host::client::{RemoteGrantBackend, RemoteMapper};
use xenshare_host::RemoteDomain;

/// The domain this process is, and what it has mapped and shared, keyed by
/// start address (`xengnttab_unmap` / `xengntshr_unshare` name them so).
pub(crate) struct Runtime {
    /// The joined domain.
    pub dom: RemoteDomain,
    /// Foreign grants mapped here, by start address.
    pub maps: Mutex<HashMap<usize, AnyMapping>>,
    /// Pages shared from here, by start address.
    pub shares: Mutex<HashMap<usize, Share<RemoteGrantBackend>>>,
}

/// A mapping of either access (C callers choose with `PROT_WRITE`; the
/// read-only one is mmapped from a read-only fd, so a C write faults).
pub(crate) enum AnyMapping {
    /// Mapped writable.
    Rw(Mapping<RemoteMapper>),
    /// Mapped read-only.
    Ro(Mapping<RemoteMapper, ReadOnly>),
}

impl AnyMapping {
    /// Number of pages mapped.
    pub fn pages(&self) -> usize {
        match self {
            Self::Rw(m) => m.refs().len(),
            Self::Ro(m) => m.refs().len(),
        }
    }
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// Locks a mutex, ignoring poisoning (the data stays consistent: every
/// critical section is a single map insert/remove).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime, on first use: the domain `xenshare exec` created for this
/// process (`XENSHARE_HOST_FD`), else a new one joined through
/// `XENSHARE_HOST` (see `RemoteDomain::join_from_env`). On failure prints
/// why on stderr, sets `errno` and returns `None`; a later call tries
/// again.
pub(crate) fn runtime(lib: &str) -> Option<Arc<Runtime>> {
    let mut g = lock(&RUNTIME);
    if let Some(rt) = g.as_ref() {
        return Some(rt.clone());
    }
    match RemoteDomain::join_from_env() {
        Ok(dom) => {
            let rt = Arc::new(Runtime {
                dom,
                maps: Mutex::new(HashMap::new()),
                shares: Mutex::new(HashMap::new()),
            });
            *g = Some(rt.clone());
            Some(rt)
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "{lib} (xenshare): cannot join the emulated hypervisor: {e}"
            );
            set_errno(libc_errno::ECONNREFUSED);
            None
        }
    }
}

/// The errno values used here (Linux).
pub(crate) mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENOSYS: i32 = 38;
    pub const ENOTCONN: i32 = 107;
    pub const ECONNREFUSED: i32 = 111;
}

extern "C" {
    fn __errno_location() -> *mut c_int;
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: glibc's `__errno_location` returns a valid pointer to the
    // calling thread's errno for the life of the thread.
    unsafe { *__errno_location() = e };
}

/// Runs `f`; a panic becomes `on_panic` with `errno = EIO` instead of
/// unwinding into C.
pub(crate) fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            set_errno(libc_errno::EIO);
            on_panic
        }
    }
}

/// Sets `errno` to `e` and returns `v` (the C failure value).
pub(crate) fn fail<T>(e: i32, v: T) -> T {
    set_errno(e);
    v
}

/// A C `domid` argument as a domain id (`None` above 16 bits).
pub(crate) fn domid(d: u32) -> Option<DomId> {
    u16::try_from(d).ok().map(DomId)
}

/// Moves a new handle to the heap for C; `*_close` takes it back with
/// [`close_boxed`].
pub(crate) fn into_handle<H>(h: H) -> *mut H {
    Box::into_raw(Box::new(h))
}

/// Frees a handle from [`into_handle`]; `NULL` is accepted. Always 0.
///
/// # Safety
/// `h` is `NULL` or a pointer from [`into_handle`] of the same type, not
/// freed before; it is invalid afterwards.
pub(crate) unsafe fn close_boxed<H>(h: *mut H) -> c_int {
    if !h.is_null() {
        // SAFETY: per the caller's contract, a pointer from Box::into_raw
        // in `into_handle`, freed at most once.
        drop(unsafe { Box::from_raw(h) });
    }
    0
}

/// A handle argument from C, checked for `NULL` when it is used.
pub(crate) struct CHandle<'a, H>(Option<&'a H>);

impl<'a, H> CHandle<'a, H> {
    /// Wraps the raw handle `h`.
    ///
    /// # Safety
    /// `h` is `NULL` or a live handle that stays valid for `'a`.
    pub unsafe fn new(h: *mut H) -> Self {
        // SAFETY: per the caller's contract the pointer is NULL or live.
        Self(unsafe { h.as_ref() })
    }

    /// Runs `f` on the handle under [`guard`]: a `NULL` handle gives
    /// `on_err` with `errno = EBADF`, a panic `on_err` with `EIO`.
    pub fn run<T: Copy>(self, on_err: T, f: impl FnOnce(&'a H) -> T) -> T {
        guard(on_err, || match self.0 {
            Some(h) => f(h),
            None => fail(libc_errno::EBADF, on_err),
        })
    }
}
