//! The freestanding runtime: Xen's ELF notes, the hypercall page, the entry
//! point and its stack, the heap, the mem* symbols and the panic handler.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;

use linked_list_allocator::Heap;

/// Where the image is linked and loaded (link.ld and the notes below).
pub const VIRT_BASE: usize = 0x40_0000;

// Xen's ELF notes ("Xen\0" name, 4-byte padded descs) in one allocated
// section that link.ld puts in the text segment and its own PT_NOTE:
// GUEST_OS (6), GUEST_VERSION (7), XEN_VERSION (5, must start xen-3.0),
// LOADER (8, must start generic), VIRT_BASE (3), PADDR_OFFSET (4, equal to
// VIRT_BASE because p_paddr == p_vaddr), ENTRY (1), HYPERCALL_PAGE (2).
// The hypercall page is prefilled with int3 so a missing note traps at
// once; Xen overwrites it with the stubs before the vCPU starts.
core::arch::global_asm!(
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, .Lguest_os_end - .Lguest_os, 6",
    ".asciz \"Xen\"",
    ".Lguest_os: .asciz \"xenshare\"",
    ".Lguest_os_end: .balign 4",
    ".long 4, .Lguest_ver_end - .Lguest_ver, 7",
    ".asciz \"Xen\"",
    ".Lguest_ver: .asciz \"0.1\"",
    ".Lguest_ver_end: .balign 4",
    ".long 4, .Lxen_ver_end - .Lxen_ver, 5",
    ".asciz \"Xen\"",
    ".Lxen_ver: .asciz \"xen-3.0\"",
    ".Lxen_ver_end: .balign 4",
    ".long 4, .Lloader_end - .Lloader, 8",
    ".asciz \"Xen\"",
    ".Lloader: .asciz \"generic\"",
    ".Lloader_end: .balign 4",
    ".long 4, 8, 3",
    ".asciz \"Xen\"",
    ".quad {base}",
    ".long 4, 8, 4",
    ".asciz \"Xen\"",
    ".quad {base}",
    ".long 4, 8, 1",
    ".asciz \"Xen\"",
    ".quad _start",
    ".long 4, 8, 2",
    ".asciz \"Xen\"",
    ".quad hypercall_page",
    "",
    ".section .hypercall_page, \"ax\"",
    ".balign 4096",
    ".fill 4096, 1, 0xcc",
    "",
    // Entry: rsi = start_info. Xen's boot stack is one page; switch to
    // ours (16-byte aligned top) before any Rust code runs.
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "  lea rsp, [rip + {stack} + {top}]",
    "  mov rdi, rsi",
    "  call {main}",
    "  ud2",
    base = const VIRT_BASE,
    stack = sym BOOT_STACK,
    top = const STACK_TOP,
    main = sym crate::uk_start,
);

extern "C" {
    /// The hypercall page (link.ld).
    static hypercall_page: u8;
}

/// The address of the hypercall page.
pub fn hypercall_page_addr() -> usize {
    // Only the address of the linker symbol is taken.
    &raw const hypercall_page as usize
}

/// Stack size: `core::fmt` frames are large; 256 KiB is plenty.
const STACK_SIZE: usize = 256 * 1024;
/// Offset of the stack top from the start of [`BootStack`].
const STACK_TOP: usize = 4096 + STACK_SIZE;

/// A guard page (unmapped at boot) below the stack.
#[repr(C, align(4096))]
pub struct BootStack(UnsafeCell<[u8; 4096 + STACK_SIZE]>);

// SAFETY: only the entry code uses it (as the stack); Rust never forms
// references to it.
unsafe impl Sync for BootStack {}

/// The kernel stack.
pub static BOOT_STACK: BootStack = BootStack(UnsafeCell::new([0; 4096 + STACK_SIZE]));

/// Unmaps the page below the stack, so an overflow faults (and Xen reports
/// it) instead of running into other data.
pub fn unmap_stack_guard() -> isize {
    let va = BOOT_STACK.0.get() as usize;
    // SAFETY: the guard page is never used; removing its PTE only makes an
    // access to it fault.
    unsafe { xenshare_pv::hypercall::update_va_mapping(va, 0, xenshare_pv::layout::UVMF_INVLPG) }
}

// ------------------------------------------------------------------ heap

/// Heap size.
pub const HEAP_SIZE: usize = 2 * 1024 * 1024;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: handed once to the allocator, which owns it from then on.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

/// A first-fit heap (linked_list_allocator) behind a spin lock. The guest
/// is single-threaded and never interrupted (poll mode), so the lock is
/// never contended.
struct KernelHeap(spin::Mutex<Heap>);

// SAFETY: allocation goes through linked_list_allocator's first-fit heap,
// which returns blocks of the layout asked for from memory it owns.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with this layout (the
            // GlobalAlloc contract).
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(spin::Mutex::new(Heap::empty()));

/// Gives the arena to the heap. Call once, before any allocation.
pub fn init_heap() {
    // SAFETY: the arena is used by nothing else, and this runs once.
    unsafe { HEAP.0.lock().init(ARENA.0.get().cast(), HEAP_SIZE) }
}

// ------------------------------------------------------- grant frame pool

/// Pages of the image kept for grants (shared with other domains).
pub const POOL_PAGES: usize = 1024;

/// The arena of the frame pool.
pub static POOL: [xenshare_pv::mm::PageSlot; POOL_PAGES] =
    [const { xenshare_pv::mm::PageSlot::new() }; POOL_PAGES];

// ------------------------------------------------------------- mem* symbols
// No libc, and compiler_builtins does not export these on a -gnu target.
// Written with string instructions (or volatile loops), so LLVM cannot
// turn a body back into a call to itself.

/// `memcpy`.
///
/// # Safety
///
/// As C's: valid, non-overlapping regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's regions; `rep movsb` copies rcx bytes forward
    // (the direction flag is clear, as the ABI guarantees).
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _,
            inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// `memmove`.
///
/// # Safety
///
/// As C's: valid regions of `n` bytes, possibly overlapping.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dst;
    }
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: a forward copy never reads a byte it already wrote here.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: copying backwards from the last byte never reads a byte
        // it already wrote when dst is above src; the flag is restored.
        unsafe {
            core::arch::asm!("std", "rep movsb", "cld", inout("rcx") n => _,
                inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                options(nostack));
        }
        dst
    }
}

/// `memset`.
///
/// # Safety
///
/// As C's: a valid region of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's region; `rep stosb` stores al rcx times.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _,
            in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp`.
///
/// # Safety
///
/// As C's: valid regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: in bounds of the caller's regions; volatile keeps LLVM
        // from recognising the loop as a memcmp call.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp`.
///
/// # Safety
///
/// As C's: valid regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` is built with unwinding and its unwind data
/// names this symbol; nothing ever unwinds here (panic = "abort").
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// The precompiled `alloc` has landing pads that resume unwinding; with
/// panic = "abort" nothing ever unwinds, so this is never reached.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    loop {
        xenshare_pv::shutdown(true);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    xenshare_pv::console::try_write_fmt(format_args!("UK PANIC: {info}\n"));
    loop {
        xenshare_pv::shutdown(true);
    }
}
