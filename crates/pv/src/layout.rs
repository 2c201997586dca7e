//! Byte layouts and constants a 64-bit PV guest kernel needs beyond the
//! inter-domain ones of `xenshare-abi`: `start_info`, `vcpu_time_info`,
//! `sched_poll`, hypercall numbers and the PV MMU constants
//! (`xen/include/public/xen.h`, `sched.h`, `arch-x86/xen-x86_64.h`; offsets
//! as in `reference/xen-abi.md` and `reference/pv-boot.md`, checked below at
//! compile time).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Hypercall `mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: usize = 1;
/// Hypercall `update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: usize = 14;
/// Hypercall `xen_version`.
pub const HYPERVISOR_XEN_VERSION: usize = 17;
/// Hypercall `grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: usize = xenshare_abi::xen::HYPERVISOR_GRANT_TABLE_OP as usize;
/// Hypercall `sched_op`.
pub const HYPERVISOR_SCHED_OP: usize = 29;
/// Hypercall `event_channel_op`.
pub const HYPERVISOR_EVENT_CHANNEL_OP: usize =
    xenshare_abi::xen::HYPERVISOR_EVENT_CHANNEL_OP as usize;

/// Each hypercall has a 32-byte stub in the hypercall page.
pub const HYPERCALL_STUB_SIZE: usize = 32;

/// `SCHEDOP_yield`: give up the CPU.
pub const SCHEDOP_YIELD: usize = 0;
/// `SCHEDOP_shutdown` with a `sched_shutdown` (`u32` reason).
pub const SCHEDOP_SHUTDOWN: usize = 2;
/// `SCHEDOP_poll` with a [`SchedPoll`].
pub const SCHEDOP_POLL: usize = 3;

/// Shutdown reason: power off.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// Shutdown reason: crash (the toolstack's `on_crash` applies).
pub const SHUTDOWN_CRASH: u32 = 3;

/// `xen_version` command: `(major << 16) | minor`.
pub const XENVER_VERSION: usize = 0;

/// `update_va_mapping` flag: invalidate this one TLB entry.
pub const UVMF_INVLPG: usize = 2;

/// PTE bits of a present, writable, user (PV kernels run in ring 3) page.
pub const PTE_PRESENT_RW_USER: u64 = 0x7;

/// Where Xen maps the read-only machine-to-physical table in every 64-bit PV
/// guest: one `u64` pfn per machine frame.
pub const M2P_VIRT_START: u64 = 0xffff_8000_0000_0000;

/// The magic string `start_info` begins with for a 64-bit PV guest.
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";

/// `SIF_INITDOMAIN`: this is the control domain.
pub const SIF_INITDOMAIN: u32 = 2;

/// Maximum number of ports one `SCHEDOP_poll` may wait on.
pub const SCHED_POLL_MAX_PORTS: usize = 128;

/// `start_info` of a 64-bit PV guest (1168 bytes), handed over in `rsi` at
/// the entry point. Frame fields are machine frame numbers (MFNs);
/// `pt_base` and `mfn_list` are virtual addresses.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// `"xen-3.0-x86_64"`, NUL-padded.
    pub magic: [u8; 32],
    /// Pages of RAM the domain owns.
    pub nr_pages: u64,
    /// Machine address of `shared_info` (not mapped yet).
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Padding.
    pub _pad0: u32,
    /// MFN of the XenStore ring page.
    pub store_mfn: u64,
    /// Event channel port of the XenStore ring.
    pub store_evtchn: u32,
    /// Padding.
    pub _pad1: u32,
    /// MFN of the console ring page (`console.domU.mfn`).
    pub console_mfn: u64,
    /// Event channel port of the console (`console.domU.evtchn`).
    pub console_evtchn: u32,
    /// Padding.
    pub _pad2: u32,
    /// Virtual address of the L4 page table.
    pub pt_base: u64,
    /// Number of page-table frames the builder made.
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m array: one `u64` MFN per pfn.
    pub mfn_list: u64,
    /// Virtual address of the initial ramdisk, or 0.
    pub mod_start: u64,
    /// Length of the initial ramdisk.
    pub mod_len: u64,
    /// The xl `extra=` command line, NUL-terminated.
    pub cmd_line: [u8; 1024],
    /// pfn of the p2m list (only with `INIT_P2M`).
    pub first_p2m_pfn: u64,
    /// Frames of the p2m list (only with `INIT_P2M`).
    pub nr_p2m_frames: u64,
}

impl StartInfo {
    /// True if the magic names a 64-bit PV guest of the 3.0 interface.
    pub fn magic_ok(&self) -> bool {
        self.magic.starts_with(START_INFO_MAGIC)
    }

    /// The command line up to its first NUL (lossy: non-UTF-8 gives "").
    pub fn cmd_line(&self) -> &str {
        let end = self
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.cmd_line.len());
        core::str::from_utf8(&self.cmd_line[..end]).unwrap_or("")
    }
}

/// `vcpu_time_info` (32 bytes), at offset 32 of each `vcpu_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: u32,
    /// Padding.
    pub _pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// Xen system time (ns since boot) at the last update.
    pub system_time: u64,
    /// TSC-to-ns multiplier, a 32.32 fixed-point fraction.
    pub tsc_to_system_mul: u32,
    /// Shift applied to a TSC delta before the multiply.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Padding.
    pub _pad1: [u8; 2],
}

/// Offset of vCPU 0's `vcpu_time_info` in `shared_info`.
pub const SHARED_INFO_VCPU0_TIME_OFFSET: usize = 32;
/// Offset of vCPU 0's `evtchn_upcall_mask` byte in `shared_info`.
pub const SHARED_INFO_VCPU0_UPCALL_MASK_OFFSET: usize = 1;

/// `sched_poll` (24 bytes): wait until one of `ports` is pending or the
/// absolute Xen system time `timeout` (ns; 0 = none) passes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedPoll {
    /// Guest handle of a `u32` port array.
    pub ports: u64,
    /// Number of ports (at most [`SCHED_POLL_MAX_PORTS`]).
    pub nr_ports: u32,
    /// Padding.
    pub _pad: u32,
    /// Absolute timeout in Xen system time (ns), 0 for none.
    pub timeout: u64,
}

/// The ns value of a TSC delta, as `vcpu_time_info` defines it: the delta
/// shifted by `shift` (left if positive), times `mul` as a 32.32 fraction.
pub const fn scale_tsc_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    // Xen's shifts are small (-32..32); anything wider saturates to 0
    // instead of overflowing.
    let d = if shift >= 0 {
        match delta.checked_shl(shift as u32) {
            Some(d) => d,
            None => 0,
        }
    } else {
        match delta.checked_shr((-(shift as i16)) as u32) {
            Some(d) => d,
            None => 0,
        }
    };
    ((d as u128 * mul as u128) >> 32) as u64
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<StartInfo>() == 1168);
    assert!(offset_of!(StartInfo, nr_pages) == 32);
    assert!(offset_of!(StartInfo, shared_info) == 40);
    assert!(offset_of!(StartInfo, flags) == 48);
    assert!(offset_of!(StartInfo, store_mfn) == 56);
    assert!(offset_of!(StartInfo, store_evtchn) == 64);
    assert!(offset_of!(StartInfo, console_mfn) == 72);
    assert!(offset_of!(StartInfo, console_evtchn) == 80);
    assert!(offset_of!(StartInfo, pt_base) == 88);
    assert!(offset_of!(StartInfo, nr_pt_frames) == 96);
    assert!(offset_of!(StartInfo, mfn_list) == 104);
    assert!(offset_of!(StartInfo, mod_start) == 112);
    assert!(offset_of!(StartInfo, mod_len) == 120);
    assert!(offset_of!(StartInfo, cmd_line) == 128);
    assert!(offset_of!(StartInfo, first_p2m_pfn) == 1152);
    assert!(offset_of!(StartInfo, nr_p2m_frames) == 1160);
    assert!(size_of::<VcpuTimeInfo>() == 32);
    assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
    assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
    assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
    assert!(size_of::<SchedPoll>() == 24);
    assert!(offset_of!(SchedPoll, nr_ports) == 8);
    assert!(offset_of!(SchedPoll, timeout) == 16);
    // vcpu_info: time at 32 (xenshare-abi's VcpuInfo layout).
    assert!(offset_of!(xenshare_abi::event::VcpuInfo, time) == SHARED_INFO_VCPU0_TIME_OFFSET);
    assert!(
        offset_of!(xenshare_abi::event::VcpuInfo, evtchn_upcall_mask)
            == SHARED_INFO_VCPU0_UPCALL_MASK_OFFSET
    );
};

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn start_info_parses_a_builder_record() {
        let mut raw = [0u8; 1168];
        raw[..14].copy_from_slice(b"xen-3.0-x86_64");
        raw[32..40].copy_from_slice(&8192u64.to_le_bytes());
        raw[56..64].copy_from_slice(&0x1234u64.to_le_bytes());
        raw[64..68].copy_from_slice(&1u32.to_le_bytes());
        raw[80..84].copy_from_slice(&2u32.to_le_bytes());
        raw[128..136].copy_from_slice(b"uk=1 x=2");
        let si = StartInfo::read_from_bytes(&raw).unwrap();
        assert!(si.magic_ok());
        assert_eq!(si.nr_pages, 8192);
        assert_eq!(si.store_mfn, 0x1234);
        assert_eq!((si.store_evtchn, si.console_evtchn), (1, 2));
        assert_eq!(si.cmd_line(), "uk=1 x=2");
        let mut bad = StartInfo::new_zeroed();
        bad.magic[..14].copy_from_slice(b"xen-3.0-x86_32");
        assert!(!bad.magic_ok());
    }

    #[test]
    fn tsc_scaling_follows_the_pvclock_rule() {
        // mul = 2^31 is one half; shift 0.
        assert_eq!(scale_tsc_delta(1000, 1 << 31, 0), 500);
        // A positive shift doubles the delta first; a negative one halves it.
        assert_eq!(scale_tsc_delta(1000, 1 << 31, 1), 1000);
        assert_eq!(scale_tsc_delta(1000, 1 << 31, -1), 250);
        // No overflow for a large delta and the largest multiplier.
        let big = scale_tsc_delta(u64::MAX >> 2, u32::MAX, 1);
        assert!(big > 0);
        // A 3 GHz TSC (mul = 2^32/3) gives about a third of the ticks as ns.
        assert_eq!(
            scale_tsc_delta(3_000_000_000, (1u64 << 32).div_ceil(3) as u32, 0),
            1_000_000_000
        );
    }
}
