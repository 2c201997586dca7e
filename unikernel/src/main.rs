//! The xenshare PV unikernel: xenshare's `no_std` core running as a 64-bit
//! PV guest kernel on real Xen, with `crates/pv` (hypercalls) underneath.
//!
//! It boots from `xl create` (`type = "pv"`), prints a banner on its
//! console, reads its domid and name from XenStore and writes
//! `data/status = ready`, serves vchans to dom0 at
//! `/local/domain/<self>/data/vchan` (echoing what the client sends), and
//! replays MirageOS MSA02 with dom0 as the malicious mapper against the
//! real hypervisor's `GTF_reading` / `GTF_writing` bits. Each step prints a
//! `UK PASS <name> ...` or `UK FAIL <name> ...` line, which the Xen lab's
//! dom0 reads from xenconsoled's log (`scripts/xen-lab --two-domain`).
//!
//! Events are taken in poll mode (upcalls masked, `SCHEDOP_poll`): see
//! `xenshare_pv::events` for why.
#![no_std]
#![no_main]

extern crate alloc;

mod rt;
mod steps;

use xenshare_pv::layout::StartInfo;
use xenshare_pv::{println, shared};

/// Called by `_start` on the kernel stack with Xen's `start_info`.
extern "C" fn uk_start(si: *const StartInfo) -> ! {
    // SAFETY: first thing at boot, with the start_info Xen passed, the
    // image's hypercall page and VIRT_BASE.
    let si = match unsafe { xenshare_pv::init(si, rt::hypercall_page_addr(), rt::VIRT_BASE) } {
        Ok(si) => si,
        Err(_) => loop {
            xenshare_pv::shutdown(true);
        },
    };
    let t0 = shared::now_ns();
    rt::init_heap();
    let guard = rt::unmap_stack_guard();
    // SAFETY: once, with this domain's start_info, after init.
    if unsafe { xenshare_pv::console::init_console(&si) }.is_err() {
        loop {
            xenshare_pv::shutdown(true);
        }
    }
    let ok = steps::run(&si, t0, guard == 0);
    println!("UK END {}", if ok { "ok" } else { "failed" });
    xenshare_pv::shutdown(!ok);
    loop {
        xenshare_pv::hypercall::sched_yield();
    }
}
