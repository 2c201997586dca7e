//! `xengnttab_*` (map other domains' grants) and `xengntshr_*` (share this
//! domain's pages), with the semantics of Linux's gntdev / gntalloc that
//! Xen's libxengnttab wraps.
//!
//! Handles are tokens: what is mapped or shared lives in the process-wide
//! registries of [`Runtime`], keyed by address, so (as with the Linux
//! devices) memory stays valid after its handle is closed, until it is
//! unmapped / unshared.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::raw::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::{Arc, Mutex};

use xenshare::grant::{GntSt, GrantError, MapError};
use xenshare::platform::{CopyDst, CopyOp, CopySrc, GrantPtr};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::grant::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use xenshare_abi::PAGE_SIZE;

use crate::export::export;
use crate::rt::{
    close_boxed, domid, fail, guard, into_handle, libc_errno as E, lock, runtime, AnyMapping,
    CHandle, Runtime,
};

/// `PROT_WRITE` of `mmap`.
const PROT_WRITE: c_int = 2;
/// Pages quarantined shares are retried against per unshare call.
const RECLAIM_BUDGET: usize = 16;

/// A `xengnttab_handle` / `xengntshr_handle` (C: `struct xengntdev_handle`).
pub struct GntHandle {
    rt: Arc<Runtime>,
}

fn map_errno(e: &MapError) -> i32 {
    match e {
        MapError::Refused { status, .. } | MapError::Window(status) | MapError::Notify(status) => {
            gnt_errno(*status)
        }
        _ => E::EINVAL,
    }
}

fn gnt_errno(s: GntSt) -> i32 {
    match s {
        GntSt::NoSpace | GntSt::NoDeviceSpace => E::ENOMEM,
        GntSt::PermissionDenied => E::EPERM,
        GntSt::Eagain => E::EAGAIN,
        GntSt::BadDomain | GntSt::BadGntref => E::ENOENT,
        _ => E::EINVAL,
    }
}

fn grant_errno(e: &GrantError) -> i32 {
    match e {
        GrantError::TableFull => E::ENOSPC,
        GrantError::OutOfMemory { .. } => E::ENOMEM,
        GrantError::Platform(s) => gnt_errno(*s),
        GrantError::Os(e) => *e,
        _ => E::EINVAL,
    }
}

fn open(lib: &str) -> *mut GntHandle {
    match runtime(lib) {
        Some(rt) => into_handle(GntHandle { rt }),
        None => ptr::null_mut(),
    }
}

/// Defines and exports the `*_open`, `*_close` and `*_fd` of one of the
/// two libraries (`xengnttab_*`, `xengntshr_*`): both open a
/// [`GntHandle`] on the one runtime, and neither has a device fd.
macro_rules! handle_functions {
    (
        $lib:literal,
        $open:ident = $open_sym:literal,
        $close:ident = $close_sym:literal,
        $fd:ident = $fd_sym:literal $(,)?
    ) => {
        extern "C" fn $open(_logger: *mut c_void, _flags: c_uint) -> *mut GntHandle {
            guard(ptr::null_mut(), || open($lib))
        }
        export!($open_sym, "VERS_1.0", $open);

        /// # Safety
        /// `h` is `NULL` (returns 0) or a handle from the matching
        /// `*_open`, not closed before; it is invalid afterwards.
        unsafe extern "C" fn $close(h: *mut GntHandle) -> c_int {
            // SAFETY: forwarded contract.
            guard(-1, || unsafe { close_boxed(h) })
        }
        export!($close_sym, "VERS_1.0", $close);

        /// There is no device: always -1, `ENOSYS` (Xen documents the fd as
        /// optional).
        extern "C" fn $fd(_h: *mut GntHandle) -> c_int {
            fail(E::ENOSYS, -1)
        }
        export!($fd_sym, "VERS_1.2", $fd);
    };
}

/// Xen's convention for a C caller's unmap notify `(offset, port)`: an
/// offset past the page or port -1 means "none". `None` when nothing is
/// asked for.
fn notify_request(notify: Option<(u32, u32)>) -> Option<(Option<usize>, Option<Port>)> {
    let (off, port) = notify?;
    let off = (off < PAGE_SIZE as u32).then_some(off as usize);
    let port = (port != u32::MAX).then_some(Port(port));
    (off.is_some() || port.is_some()).then_some((off, port))
}

/// Registers `v` (mapped or shared at `addr`) in `reg`, first forgetting
/// the stale entries its range replaces (see [`forget_unmapped`]).
fn register<V>(reg: &Mutex<HashMap<usize, V>>, addr: usize, v: V, len_of: impl Fn(&V) -> usize) {
    let len = len_of(&v);
    let mut reg = lock(reg);
    forget_unmapped(&mut reg, addr, len, len_of);
    reg.insert(addr, v);
}

/// Takes the entry at `start` out of `reg` if it spans `count` pages;
/// otherwise `EINVAL`.
fn take<V>(
    reg: &Mutex<HashMap<usize, V>>,
    start: *mut c_void,
    count: u32,
    pages_of: impl Fn(&V) -> usize,
) -> Option<V> {
    match lock(reg).entry(start as usize) {
        Entry::Occupied(e) if pages_of(e.get()) == count as usize => Some(e.remove()),
        _ => fail(E::EINVAL, None),
    }
}

/// Maps `refs` of `dom` contiguously and registers the mapping; sets the
/// unmap notify if asked (on failure the mapping is dropped again).
fn map(
    h: &GntHandle,
    dom: u32,
    refs: &[u32],
    prot: c_int,
    notify: Option<(u32, u32)>,
) -> *mut c_void {
    let Some(dom) = domid(dom) else {
        return fail(E::EINVAL, ptr::null_mut());
    };
    let refs: Vec<GrantRef> = refs.iter().map(|r| GrantRef(*r)).collect();
    let imp = h.rt.dom.importer();
    let mapped = if prot & PROT_WRITE != 0 {
        imp.map_rw(dom, &refs).map(AnyMapping::Rw)
    } else {
        imp.map_ro(dom, &refs).map(AnyMapping::Ro)
    };
    let m = match mapped {
        Ok(m) => m,
        Err(e) => return fail(map_errno(&e), ptr::null_mut()),
    };
    let (notified, addr) = match &m {
        AnyMapping::Rw(m) => (notify_mapping(m, notify), m.mem().as_ptr()),
        AnyMapping::Ro(m) => (notify_mapping(m, notify), m.mem().as_ptr()),
    };
    if let Err(e) = notified {
        return fail(map_errno(&e), ptr::null_mut());
    }
    register(&h.rt.maps, addr as usize, m, |m| m.pages() * PAGE_SIZE);
    addr.cast_mut().cast()
}

/// Drops from a registry every entry overlapping `[addr, addr + len)`, a
/// range the kernel just gave to a new mapping, *without* unmapping it.
///
/// C callers may unmap memory with a plain `munmap` instead of
/// `xengnttab_unmap` / `xengntshr_unshare` (libxenvchan does so for its
/// ring buffers). The kernel can then hand the same addresses to the next
/// mapping, and dropping the stale entry would unmap the new one under its
/// user's feet. Such an entry's range is provably gone (the kernel reused
/// it), so it is forgotten: its grant mappings (or shares) stay held in
/// the host until this process exits, like gntdev / gntalloc keep a grant
/// that was only `munmap`ped until the device is closed. Never freed, so
/// never reused while a peer may hold it.
pub(crate) fn forget_unmapped<V>(
    reg: &mut std::collections::HashMap<usize, V>,
    addr: usize,
    len: usize,
    len_of: impl Fn(&V) -> usize,
) {
    let end = addr.saturating_add(len);
    let stale: Vec<usize> = reg
        .iter()
        .filter(|(&a, v)| a < end && addr < a.saturating_add(len_of(v)))
        .map(|(&a, _)| a)
        .collect();
    for a in stale {
        if let Some(v) = reg.remove(&a) {
            std::mem::forget(v);
        }
    }
}

/// Sets a mapping's unmap notify if the C caller asked for one.
fn notify_mapping<P: xenshare::mem::Perm>(
    m: &xenshare::grant::Mapping<xenshare_host::client::RemoteMapper, P>,
    notify: Option<(u32, u32)>,
) -> Result<(), xenshare::grant::MapError> {
    if let Some((off, port)) = notify_request(notify) {
        m.set_unmap_notify(off, port)?;
    }
    Ok(())
}

handle_functions!(
    "libxengnttab",
    gnttab_open = "xengnttab_open",
    gnttab_close = "xengnttab_close",
    gnttab_fd = "xengnttab_fd",
);

/// Accepted and ignored (current Linux kernels do not implement it either).
extern "C" fn gnttab_set_max_grants(_h: *mut GntHandle, _n: u32) -> c_int {
    0
}
export!(
    "xengnttab_set_max_grants",
    "VERS_1.0",
    gnttab_set_max_grants
);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn gnttab_map_grant_ref(
    h: *mut GntHandle,
    dom: u32,
    gref: u32,
    prot: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(ptr::null_mut(), |h| map(h, dom, &[gref], prot, None))
}
export!("xengnttab_map_grant_ref", "VERS_1.0", gnttab_map_grant_ref);

/// # Safety
/// `h` is a live handle; `domids` and `refs` point to `count` readable
/// `uint32_t` each. All domids must be equal (a mapping here has one
/// granter); otherwise `EINVAL`.
unsafe extern "C" fn gnttab_map_grant_refs(
    h: *mut GntHandle,
    count: u32,
    domids: *const u32,
    refs: *const u32,
    prot: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(ptr::null_mut(), |h| {
        if count == 0 || domids.is_null() || refs.is_null() {
            return fail(E::EINVAL, ptr::null_mut());
        }
        // SAFETY: the caller promises `count` readable elements in each.
        let (doms, refs) = unsafe {
            (
                std::slice::from_raw_parts(domids, count as usize),
                std::slice::from_raw_parts(refs, count as usize),
            )
        };
        if doms.iter().any(|d| *d != doms[0]) {
            return fail(E::EINVAL, ptr::null_mut());
        }
        map(h, doms[0], refs, prot, None)
    })
}
export!(
    "xengnttab_map_grant_refs",
    "VERS_1.0",
    gnttab_map_grant_refs
);

/// # Safety
/// `h` is a live handle; `refs` points to `count` readable `uint32_t`.
unsafe extern "C" fn gnttab_map_domain_grant_refs(
    h: *mut GntHandle,
    count: u32,
    dom: u32,
    refs: *const u32,
    prot: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(ptr::null_mut(), |h| {
        if count == 0 || refs.is_null() {
            return fail(E::EINVAL, ptr::null_mut());
        }
        // SAFETY: the caller promises `count` readable elements.
        let refs = unsafe { std::slice::from_raw_parts(refs, count as usize) };
        map(h, dom, refs, prot, None)
    })
}
export!(
    "xengnttab_map_domain_grant_refs",
    "VERS_1.0",
    gnttab_map_domain_grant_refs
);

/// # Safety
/// `h` is a live handle.
unsafe extern "C" fn gnttab_map_grant_ref_notify(
    h: *mut GntHandle,
    dom: u32,
    gref: u32,
    prot: c_int,
    notify_offset: u32,
    notify_port: u32,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(ptr::null_mut(), |h| {
        map(h, dom, &[gref], prot, Some((notify_offset, notify_port)))
    })
}
export!(
    "xengnttab_map_grant_ref_notify",
    "VERS_1.0",
    gnttab_map_grant_ref_notify
);

/// Unmaps a mapping by its start address (any handle of this process).
///
/// # Safety
/// `h` is a live handle. The C program must not touch the memory at
/// `start` afterwards.
unsafe extern "C" fn gnttab_unmap(h: *mut GntHandle, start: *mut c_void, count: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| {
        match take(&h.rt.maps, start, count, AnyMapping::pages) {
            Some(m) => {
                drop(m);
                0
            }
            None => -1,
        }
    })
}
export!("xengnttab_unmap", "VERS_1.0", gnttab_unmap);

/// `xengnttab_grant_copy_segment_t`: the C layout (24 bytes).
#[repr(C)]
pub struct CopySeg {
    source: u64,
    dest: u64,
    len: u16,
    flags: u16,
    status: i16,
}

fn foreign(v: u64) -> GrantPtr {
    GrantPtr {
        gref: GrantRef(v as u32),
        offset: (v >> 32) as u16,
        dom: DomId((v >> 48) as u16),
    }
}

/// Grant copy; each segment's `status` is set (`GNTST_*`). One side of
/// every segment must be a grant.
///
/// # Safety
/// `h` is a live handle; `segs` points to `count` writable segments; every
/// local (`virt`) side points to `len` readable (source) or writable (dest)
/// bytes not otherwise accessed during the call.
unsafe extern "C" fn gnttab_grant_copy(h: *mut GntHandle, count: u32, segs: *mut CopySeg) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| {
        if count == 0 {
            return 0;
        }
        if segs.is_null() {
            return fail(E::EINVAL, -1);
        }
        // SAFETY: the caller promises `count` writable segments.
        let segs = unsafe { std::slice::from_raw_parts_mut(segs, count as usize) };
        let mut ops = Vec::with_capacity(segs.len());
        for s in segs.iter() {
            let len = usize::from(s.len);
            let src_g = s.flags & GNTCOPY_SOURCE_GREF != 0;
            let dst_g = s.flags & GNTCOPY_DEST_GREF != 0;
            let no_grant = !src_g && !dst_g;
            if no_grant || (!src_g && s.source == 0) || (!dst_g && s.dest == 0) {
                return fail(E::EINVAL, -1);
            }
            let src = if src_g {
                CopySrc::Grant(foreign(s.source))
            } else {
                // SAFETY: a local source points to `len` readable bytes.
                CopySrc::Local(unsafe { std::slice::from_raw_parts(s.source as *const u8, len) })
            };
            let dst = if dst_g {
                CopyDst::Grant(foreign(s.dest))
            } else {
                // SAFETY: a local destination points to `len` writable
                // bytes, not aliased by any other segment's buffer.
                CopyDst::Local(unsafe { std::slice::from_raw_parts_mut(s.dest as *mut u8, len) })
            };
            ops.push(CopyOp {
                src,
                dst,
                len: s.len,
                status: GntSt::Okay,
            });
        }
        h.rt.dom.importer().copy(&mut ops);
        let statuses: Vec<i16> = ops.iter().map(|o| o.status.to_raw()).collect();
        drop(ops);
        for (s, st) in segs.iter_mut().zip(statuses) {
            s.status = st;
        }
        0
    })
}
export!("xengnttab_grant_copy", "VERS_1.1", gnttab_grant_copy);

handle_functions!(
    "libxengntshr",
    gntshr_open = "xengntshr_open",
    gntshr_close = "xengntshr_close",
    gntshr_fd = "xengntshr_fd",
);

/// Shares `count` fresh zeroed pages and registers the share.
fn share(
    h: &GntHandle,
    dom: u32,
    count: c_int,
    writable: c_int,
    notify: Option<(u32, u32)>,
) -> Option<(*mut c_void, Vec<u32>)> {
    let (Some(dom), Ok(n)) = (domid(dom), usize::try_from(count)) else {
        return fail(E::EINVAL, None);
    };
    let access = if writable != 0 {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let s = match h.rt.dom.exporter().share(dom, n, access) {
        Ok(s) => s,
        Err(e) => return fail(grant_errno(&e), None),
    };
    if let Some((off, port)) = notify_request(notify) {
        if let Err(e) = s.set_unmap_notify(off, port) {
            return fail(grant_errno(&e), None); // `s` drops: revoked (never mapped yet)
        }
    }
    let refs = s.refs().iter().map(|r| r.0).collect();
    let addr = s.mem().as_ptr();
    register(&h.rt.shares, addr as usize, s, |s| {
        s.refs().len() * PAGE_SIZE
    });
    Some((addr.cast_mut().cast(), refs))
}

/// # Safety
/// `h` is a live handle; `refs` points to `count` writable `uint32_t`.
unsafe extern "C" fn gntshr_share_pages(
    h: *mut GntHandle,
    dom: u32,
    count: c_int,
    refs: *mut u32,
    writable: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(ptr::null_mut(), |h| {
        if refs.is_null() || count <= 0 {
            return fail(E::EINVAL, ptr::null_mut());
        }
        let Some((addr, got)) = share(h, dom, count, writable, None) else {
            return ptr::null_mut();
        };
        // SAFETY: the caller promises `count` writable elements, and
        // `got.len() == count`.
        unsafe { ptr::copy_nonoverlapping(got.as_ptr(), refs, got.len()) };
        addr
    })
}
export!("xengntshr_share_pages", "VERS_1.0", gntshr_share_pages);

/// # Safety
/// `h` is a live handle; `gref` points to one writable `uint32_t`.
unsafe extern "C" fn gntshr_share_page_notify(
    h: *mut GntHandle,
    dom: u32,
    gref: *mut u32,
    writable: c_int,
    notify_offset: u32,
    notify_port: u32,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(ptr::null_mut(), |h| {
        if gref.is_null() {
            return fail(E::EINVAL, ptr::null_mut());
        }
        let Some((addr, got)) = share(h, dom, 1, writable, Some((notify_offset, notify_port)))
        else {
            return ptr::null_mut();
        };
        // SAFETY: the caller promises one writable element; a one-page
        // share has exactly one ref.
        unsafe { *gref = got.first().copied().unwrap_or(0) };
        addr
    })
}
export!(
    "xengntshr_share_page_notify",
    "VERS_1.0",
    gntshr_share_page_notify
);

/// Ends sharing of the pages at `start`. Like gntalloc, this succeeds even
/// if the peer still maps them: the share then goes to the exporter's
/// quarantine and its memory and refs are reused only after a later
/// revocation succeeds (never while mapped).
///
/// # Safety
/// `h` is a live handle. The C program must not touch the memory at
/// `start` afterwards.
unsafe extern "C" fn gntshr_unshare(h: *mut GntHandle, start: *mut c_void, count: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { CHandle::new(h) }.run(-1, |h| {
        let Some(s) = take(&h.rt.shares, start, count, |s| s.refs().len()) else {
            return -1;
        };
        match s.try_unshare() {
            Ok(pages) => drop(pages),
            Err(busy) => drop(busy.into_inner()),
        }
        let _ = h.rt.dom.exporter().reclaim(RECLAIM_BUDGET);
        0
    })
}
export!("xengntshr_unshare", "VERS_1.0", gntshr_unshare);
