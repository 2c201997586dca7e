//! Hypercalls through the hypercall page.
//!
//! Xen fills one page of the guest image (named by the image's
//! `XEN_ELFNOTE_HYPERCALL_PAGE` note) with 32-byte stubs before the guest
//! starts; hypercall `nr` is a `call` to `page + 32 * nr`, with the
//! arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8` and the result in `rax`.
//! A stub pushes `rcx` and `r11` and its return address below `rsp`, so the
//! crates that call it are built without a red zone (the image's rustflags).
//!
//! The typed wrappers below are the only callers; they pass pointers to
//! argument structs that live on the caller's stack for the whole call.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::layout::*;

/// Xen's `-ENOSYS`, returned before [`init`] or off x86_64.
pub const ENOSYS: isize = -38;

static PAGE: AtomicUsize = AtomicUsize::new(0);

/// Records where the hypercall page is.
///
/// # Safety
///
/// `page` must be the virtual address of the page Xen filled with hypercall
/// stubs for this guest (the page the image's `HYPERCALL_PAGE` note names).
pub unsafe fn init(page: usize) {
    PAGE.store(page, Ordering::Release);
}

/// Raw hypercall `nr` with five arguments.
///
/// # Safety
///
/// The arguments must be valid for hypercall `nr`: pointers must point to
/// live, correctly laid out structs of the sizes the hypercall reads and
/// writes, and the operation must not break memory safety (for example by
/// unmapping memory Rust still uses).
#[cfg(target_arch = "x86_64")]
pub unsafe fn hypercall(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let page = PAGE.load(Ordering::Acquire);
    if page == 0 || nr >= 4096 / HYPERCALL_STUB_SIZE {
        return ENOSYS;
    }
    let stub = page + nr * HYPERCALL_STUB_SIZE;
    let ret: isize;
    // SAFETY: `stub` is Xen's stub for `nr` (the `init` contract); the
    // caller vouches for the arguments. The stub uses the stack (no
    // `nostack`) and may clobber the argument registers, rcx and r11.
    unsafe {
        core::arch::asm!(
            "call {stub}",
            stub = in(reg) stub,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Raw hypercall (unavailable off x86_64).
///
/// # Safety
///
/// None needed: it does nothing.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn hypercall(_: usize, _: usize, _: usize, _: usize, _: usize, _: usize) -> isize {
    ENOSYS
}

/// `SCHEDOP_yield`.
pub fn sched_yield() -> isize {
    // SAFETY: no pointer arguments; yielding changes no memory.
    unsafe { hypercall(HYPERVISOR_SCHED_OP, SCHEDOP_YIELD, 0, 0, 0, 0) }
}

/// `SCHEDOP_poll` on `ports` until one is pending or Xen system time
/// passes `timeout_ns` (0: no timeout). A timeout also returns 0.
pub fn sched_poll(ports: &[u32], timeout_ns: u64) -> isize {
    let n = ports.len().min(SCHED_POLL_MAX_PORTS);
    let mut arg = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: n as u32,
        _pad: 0,
        timeout: timeout_ns,
    };
    // SAFETY: `arg` and the port array it points to live across the call;
    // Xen only reads them.
    unsafe {
        hypercall(
            HYPERVISOR_SCHED_OP,
            SCHEDOP_POLL,
            &raw mut arg as usize,
            0,
            0,
            0,
        )
    }
}

/// `SCHEDOP_shutdown`: ends the domain (`SHUTDOWN_*` reason). Returns only
/// if Xen refused.
pub fn shutdown(reason: u32) -> isize {
    let mut r = reason;
    // SAFETY: `r` lives across the call; Xen reads 4 bytes.
    unsafe {
        hypercall(
            HYPERVISOR_SCHED_OP,
            SCHEDOP_SHUTDOWN,
            &raw mut r as usize,
            0,
            0,
            0,
        )
    }
}

/// `xen_version(XENVER_version)`: `(major << 16) | minor`.
pub fn xen_version() -> isize {
    // SAFETY: this command takes no buffer.
    unsafe { hypercall(HYPERVISOR_XEN_VERSION, XENVER_VERSION, 0, 0, 0, 0) }
}

/// `event_channel_op(cmd, arg)`.
///
/// # Safety
///
/// `T` must be the struct Xen expects for `cmd`.
pub unsafe fn event_channel_op<T>(cmd: u32, arg: &mut T) -> isize {
    // SAFETY: `arg` is a live exclusive reference of the right type (the
    // caller's promise) for the whole call.
    unsafe {
        hypercall(
            HYPERVISOR_EVENT_CHANNEL_OP,
            cmd as usize,
            arg as *mut T as usize,
            0,
            0,
            0,
        )
    }
}

/// `grant_table_op(cmd, ops, ops.len())`.
///
/// # Safety
///
/// `T` must be the struct Xen expects for `cmd`, and the operation must not
/// change mappings of memory Rust still uses (a map or unmap's `host_addr`
/// must be a page set aside for grant mappings).
pub unsafe fn grant_table_op<T>(cmd: u32, ops: &mut [T]) -> isize {
    // SAFETY: the slice is live and exclusive for the call; the caller
    // vouches for the type and the addresses.
    unsafe {
        hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            cmd as usize,
            ops.as_mut_ptr() as usize,
            ops.len(),
            0,
            0,
        )
    }
}

/// `update_va_mapping(va, pte, flags)`: points the PTE of `va` at a new
/// machine frame (or clears it with `pte = 0`).
///
/// # Safety
///
/// Nothing may use the old contents of the page at `va` through Rust
/// references afterwards, and the new frame must be one this domain may map.
pub unsafe fn update_va_mapping(va: usize, pte: u64, flags: usize) -> isize {
    // SAFETY: no pointer arguments; the caller vouches for what `va` was.
    unsafe { hypercall(HYPERVISOR_UPDATE_VA_MAPPING, va, pte as usize, flags, 0, 0) }
}
