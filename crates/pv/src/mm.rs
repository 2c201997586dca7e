//! The PV guest's memory: what the domain builder mapped, machine/physical
//! frame translation, and page slots for frames mapped later.
//!
//! A PV guest's page tables hold machine frames and only Xen writes them.
//! The builder maps the image, the p2m list, `start_info`, the XenStore and
//! console rings, the page tables and the boot stack contiguously from
//! `VIRT_BASE` (`va = VIRT_BASE + pfn * 4096`). Frames the guest learns
//! about later (`shared_info`, grant-table frames, peers' grants) are mapped
//! into [`PageSlot`]s: page-aligned pages reserved in the image whose PTE is
//! repointed with `update_va_mapping`.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use xenshare::mem::SharedMem;

use crate::hypercall;
use crate::layout::{StartInfo, M2P_VIRT_START, PTE_PRESENT_RW_USER, UVMF_INVLPG};

/// Size of a page.
pub const PAGE: usize = 4096;

/// One page-aligned page of the image, set aside to have another frame
/// mapped over it. It is never accessed through a Rust reference: only
/// through [`SharedMem`] or raw pointers.
#[repr(C, align(4096))]
pub struct PageSlot(UnsafeCell<[u8; PAGE]>);

// SAFETY: the page is only reached through raw pointers with volatile or
// atomic accesses (SharedMem), never through references to its bytes.
unsafe impl Sync for PageSlot {}

impl PageSlot {
    /// A zeroed slot (for statics; it lands in `.bss`).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; PAGE]))
    }

    /// Its virtual address.
    pub fn va(&self) -> usize {
        self.0.get() as usize
    }
}

impl Default for PageSlot {
    fn default() -> Self {
        Self::new()
    }
}

static VIRT_BASE: AtomicUsize = AtomicUsize::new(0);
static NR_PAGES: AtomicU64 = AtomicU64::new(0);
static P2M: AtomicUsize = AtomicUsize::new(0);

/// Records the builder's layout.
///
/// # Safety
///
/// `virt_base` must be the image's `VIRT_BASE`, and `si` the `start_info`
/// Xen handed over (its `mfn_list` is a mapped array of `nr_pages` u64).
pub unsafe fn init(virt_base: usize, si: &StartInfo) {
    VIRT_BASE.store(virt_base, Ordering::Release);
    NR_PAGES.store(si.nr_pages, Ordering::Release);
    P2M.store(si.mfn_list as usize, Ordering::Release);
}

/// The machine frame behind guest pfn `pfn`.
pub fn pfn_to_mfn(pfn: u64) -> Option<u64> {
    let p2m = P2M.load(Ordering::Acquire);
    if p2m == 0 || pfn >= NR_PAGES.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: the p2m list holds `nr_pages` u64 and is mapped (`init`);
    // pfn is in range. Xen does not change it under us.
    Some(unsafe { core::ptr::read_volatile((p2m as *const u64).add(pfn as usize)) })
}

/// The guest pfn of machine frame `mfn`, from Xen's M2P table.
///
/// # Safety
///
/// Only in a PV guest, where the M2P is mapped (`M2P_VIRT_START`), and for
/// an `mfn` that is a real frame of the machine (an MFN Xen gave us).
pub unsafe fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: the caller promises the M2P is mapped and covers `mfn`.
    unsafe { core::ptr::read_volatile((M2P_VIRT_START as *const u64).add(mfn as usize)) }
}

/// The virtual address of guest pfn `pfn` in the builder's mapping.
pub fn pfn_to_va(pfn: u64) -> usize {
    VIRT_BASE.load(Ordering::Acquire) + pfn as usize * PAGE
}

/// The pfn of a virtual address in the builder's mapping (an image page).
pub fn va_to_pfn(va: usize) -> Option<u64> {
    let base = VIRT_BASE.load(Ordering::Acquire);
    (va >= base).then(|| ((va - base) / PAGE) as u64)
}

/// The machine frame of a virtual address in the builder's mapping.
pub fn va_to_mfn(va: usize) -> Option<u64> {
    pfn_to_mfn(va_to_pfn(va)?)
}

/// A ring page the builder mapped (XenStore, console), found from its MFN:
/// `pfn = M2P[mfn]`, checked against the p2m list.
///
/// # Safety
///
/// As for [`mfn_to_pfn`]; the page must be one of this domain's own frames
/// that the builder mapped, and stays so for `'static`.
pub unsafe fn builder_page(mfn: u64) -> Option<SharedMem<'static>> {
    // SAFETY: the caller's promise.
    let pfn = unsafe { mfn_to_pfn(mfn) };
    if pfn_to_mfn(pfn)? != mfn {
        return None;
    }
    let va = pfn_to_va(pfn);
    // SAFETY: the builder maps every pfn of the initial area at
    // VIRT_BASE + pfn * 4096, read-write, for the domain's life.
    Some(unsafe { SharedMem::from_raw(NonNull::new(va as *mut u8)?, PAGE) })
}

/// Maps machine frame `mfn` over `slot`, read-write.
///
/// # Safety
///
/// `slot` must not be in use (no live [`SharedMem`] over it that expects
/// the old frame), and `mfn` must be a frame this domain may map writable
/// (its own, `shared_info`, its grant-table frames).
pub unsafe fn map_frame(slot: &'static PageSlot, mfn: u64) -> Result<SharedMem<'static>, isize> {
    // SAFETY: the caller vouches for the slot and the frame.
    let rc = unsafe {
        hypercall::update_va_mapping(slot.va(), (mfn << 12) | PTE_PRESENT_RW_USER, UVMF_INVLPG)
    };
    if rc != 0 {
        return Err(rc);
    }
    // SAFETY: the slot now maps `mfn` for the rest of the domain's life.
    Ok(unsafe { slot_mem(slot) })
}

/// The memory of a slot.
///
/// # Safety
///
/// Whatever the slot maps must stay mapped while the result is used.
pub unsafe fn slot_mem(slot: &'static PageSlot) -> SharedMem<'static> {
    // SAFETY: a slot is a page of the image; the caller keeps it mapped.
    unsafe { SharedMem::from_raw(NonNull::new_unchecked(slot.va() as *mut u8), PAGE) }
}
