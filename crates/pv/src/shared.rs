//! `shared_info`: the page Xen shares with the guest (vCPU time, event
//! channel bitmaps), and the clock read from it.

use core::sync::atomic::{fence, AtomicBool, Ordering};

use xenshare::mem::SharedMem;

use crate::layout::{
    VcpuTimeInfo, SHARED_INFO_VCPU0_TIME_OFFSET, SHARED_INFO_VCPU0_UPCALL_MASK_OFFSET,
};
use crate::mm::{self, PageSlot};

static SLOT: PageSlot = PageSlot::new();
static MAPPED: AtomicBool = AtomicBool::new(false);

/// Maps `shared_info` (machine address `maddr` from `start_info`).
///
/// # Safety
///
/// Once, with the `shared_info` address Xen gave this domain.
pub unsafe fn map(maddr: u64) -> Result<(), isize> {
    // SAFETY: SLOT is used for nothing else; the frame is our shared_info.
    unsafe { mm::map_frame(&SLOT, maddr >> 12) }?;
    MAPPED.store(true, Ordering::Release);
    Ok(())
}

/// The `shared_info` page, once mapped.
pub fn page() -> Option<SharedMem<'static>> {
    // SAFETY: once mapped, the slot maps shared_info for the domain's life.
    MAPPED
        .load(Ordering::Acquire)
        .then(|| unsafe { mm::slot_mem(&SLOT) })
}

/// True while vCPU 0's upcalls are masked (this guest keeps them masked:
/// see the crate documentation on poll mode).
pub fn upcalls_masked() -> bool {
    page()
        .and_then(|p| {
            p.load_u8(SHARED_INFO_VCPU0_UPCALL_MASK_OFFSET, Ordering::Acquire)
                .ok()
        })
        .is_some_and(|m| m != 0)
}

/// Masks vCPU 0's upcalls (they start masked; this only makes sure).
pub fn mask_upcalls() {
    if let Some(b) = page().and_then(|p| p.atomic_u8(SHARED_INFO_VCPU0_UPCALL_MASK_OFFSET).ok()) {
        b.store(1, Ordering::SeqCst);
    }
}

fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc only reads the time-stamp counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Xen system time now, in ns since the host booted (0 before `map`).
///
/// `system_time + scale(rdtsc - tsc_timestamp)` from vCPU 0's time record,
/// re-read while Xen is updating it (odd or changed `version`).
pub fn now_ns() -> u64 {
    let Some(p) = page() else { return 0 };
    for _ in 0..1000 {
        let Ok(v1) = p.load_u32(SHARED_INFO_VCPU0_TIME_OFFSET, Ordering::Acquire) else {
            return 0;
        };
        fence(Ordering::Acquire);
        let Ok(t) = p.read_obj::<VcpuTimeInfo>(SHARED_INFO_VCPU0_TIME_OFFSET) else {
            return 0;
        };
        let tsc = rdtsc();
        fence(Ordering::Acquire);
        let Ok(v2) = p.load_u32(SHARED_INFO_VCPU0_TIME_OFFSET, Ordering::Acquire) else {
            return 0;
        };
        if v1 & 1 == 0 && v1 == v2 {
            let delta = tsc.wrapping_sub(t.tsc_timestamp);
            return t.system_time.wrapping_add(crate::layout::scale_tsc_delta(
                delta,
                t.tsc_to_system_mul,
                t.tsc_shift,
            ));
        }
        core::hint::spin_loop();
    }
    0
}
