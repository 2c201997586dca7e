//! xenshare on a Rust PV guest kernel: the core's platform traits from
//! inside a 64-bit PV domain of real Xen, through hypercalls.
//!
//! * [`hypercall`] — the hypercall page and typed wrappers.
//! * [`layout`] — `start_info`, `vcpu_time_info`, `sched_poll` and the PV
//!   constants, checked at compile time.
//! * [`mm`] — the builder's mapping, M2P/p2m translation, page slots.
//! * [`shared`] — `shared_info` and the clock.
//! * [`events`] — [`xenshare::platform::EventChannels`] over the 2-level
//!   bitmaps, in poll mode (upcalls stay masked; see there why).
//! * [`grant`] — the grant table for the core's
//!   [`xenshare::grant::TableBackend`], and a
//!   [`xenshare::platform::ForeignMapper`] on `GNTTABOP_map_grant_ref`.
//! * [`frames`] — a [`xenshare::platform::FrameAllocator`] over an arena of
//!   the image.
//! * [`console`] — the primary console and XenStore over the builder's
//!   rings, with the core's ring code.
//!
//! Everything Xen-hypercall-specific lives here; the protocols are the
//! core's, unchanged. Pure logic (layouts, bitmaps, the clock's scaling)
//! is unit-tested on the host; the rest runs in the Xen lab's unikernel
//! (`unikernel/`, `scripts/xen-lab --two-domain`).
#![no_std]

extern crate alloc;

pub mod console;
pub mod events;
pub mod frames;
pub mod grant;
pub mod hypercall;
pub mod layout;
pub mod mm;
pub mod shared;

use layout::StartInfo;

/// Why [`init`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// `start_info` does not start with `xen-3.0-x86_64`.
    BadMagic,
    /// Mapping `shared_info` failed (Xen errno).
    SharedInfo(isize),
}

/// Brings up the platform: records the hypercall page and the builder's
/// layout, maps `shared_info` and makes sure upcalls stay masked. Returns
/// a copy of `start_info`.
///
/// # Safety
///
/// Once, first thing at boot, in a 64-bit PV guest: `start_info` is the
/// address Xen passed in `rsi`, `hypercall_page` the image's hypercall page
/// and `virt_base` the image's `VIRT_BASE`.
pub unsafe fn init(
    start_info: *const StartInfo,
    hypercall_page: usize,
    virt_base: usize,
) -> Result<StartInfo, InitError> {
    // SAFETY: Xen maps start_info (page-aligned) in the builder's area;
    // nobody writes it after boot, so a copy is a stable value.
    let si = unsafe { core::ptr::read_volatile(start_info) };
    if !si.magic_ok() {
        return Err(InitError::BadMagic);
    }
    // SAFETY: the caller's promises.
    unsafe {
        hypercall::init(hypercall_page);
        mm::init(virt_base, &si);
        shared::map(si.shared_info).map_err(InitError::SharedInfo)?;
    }
    shared::mask_upcalls();
    Ok(si)
}

/// Powers the domain off (or crashes it, `crash = true`). Returns only if
/// Xen refuses.
pub fn shutdown(crash: bool) {
    hypercall::shutdown(if crash {
        layout::SHUTDOWN_CRASH
    } else {
        layout::SHUTDOWN_POWEROFF
    });
}
