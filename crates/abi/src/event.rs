//! Event channels and the 2-level pending/mask bitmaps
//! (`xen/include/public/event_channel.h`, `xen/include/public/xen.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::DomId;

/// An event channel port (`evtchn_port_t`).
pub type Port = u32;

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`.
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_bind_pirq`.
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_status`.
pub const EVTCHNOP_STATUS: u32 = 5;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_bind_ipi`.
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// `EVTCHNOP_bind_vcpu`.
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: u32 = 9;
/// `EVTCHNOP_reset`.
pub const EVTCHNOP_RESET: u32 = 10;

/// `EVTCHNSTAT_closed`: the port is free.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`: waiting for a bind from the named remote domain.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`: connected to a remote port.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNSTAT_pirq`.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// `EVTCHNSTAT_virq`.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// `EVTCHNSTAT_ipi`.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// Bits in one word of the 2-level bitmaps (`xen_ulong_t` is 64 bits).
pub const BITS_PER_EVTCHN_WORD: usize = 64;
/// Ports in the 2-level ABI: 64 words of 64 bits.
pub const EVTCHN_2L_NR_CHANNELS: usize = BITS_PER_EVTCHN_WORD * BITS_PER_EVTCHN_WORD;
/// vCPU slots in the legacy `shared_info`.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `evtchn_alloc_unbound` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnAllocUnbound {
    /// In: the domain allocating (usually `DOMID_SELF`).
    pub dom: DomId,
    /// In: the domain allowed to bind.
    pub remote_dom: DomId,
    /// Out: the new port.
    pub port: Port,
}

/// `evtchn_bind_interdomain` (12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindInterdomain {
    /// In: the remote domain.
    pub remote_dom: DomId,
    /// Padding.
    pub _pad: [u8; 2],
    /// In: the remote unbound port.
    pub remote_port: Port,
    /// Out: the new local port.
    pub local_port: Port,
}

/// `evtchn_send`, `evtchn_close` and `evtchn_unmask` (4 bytes each).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnPortOp {
    /// The local port.
    pub port: Port,
}

/// `evtchn_status` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnStatus {
    /// In: the domain.
    pub dom: DomId,
    /// Padding.
    pub _pad0: [u8; 2],
    /// In: the port.
    pub port: Port,
    /// Out: `EVTCHNSTAT_*`.
    pub status: u32,
    /// Out: the vCPU notified.
    pub vcpu: u32,
    /// Out: for interdomain, the remote domain (low 16 bits); for unbound, the allowed domain.
    pub u_dom: DomId,
    /// Padding.
    pub _pad1: [u8; 2],
    /// Out: for interdomain, the remote port.
    pub u_port: Port,
}

/// `vcpu_info` (64 bytes on x86_64).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    /// Set by Xen when an upcall is due.
    pub evtchn_upcall_pending: u8,
    /// Guest-set: suppress upcalls.
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub _pad: [u8; 6],
    /// Bit `w` set: word `w` of the pending bitmap may have work.
    pub evtchn_pending_sel: u64,
    /// Architecture-specific state.
    pub arch: [u8; 16],
    /// `vcpu_time_info`.
    pub time: [u8; 32],
}

/// `shared_info` on x86_64 (3136 bytes): the vCPU slots, then the 2-level bitmaps.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SharedInfo {
    /// Per-vCPU state.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// Pending bits, one per port.
    pub evtchn_pending: [u64; BITS_PER_EVTCHN_WORD],
    /// Mask bits, one per port; owned by the guest.
    pub evtchn_mask: [u64; BITS_PER_EVTCHN_WORD],
    /// Wall clock version.
    pub wc_version: u32,
    /// Wall clock seconds.
    pub wc_sec: u32,
    /// Wall clock nanoseconds.
    pub wc_nsec: u32,
    /// Wall clock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// `arch_shared_info`.
    pub arch: [u8; 48],
}

/// Offset of `evtchn_pending` in [`SharedInfo`].
pub const SHARED_INFO_PENDING_OFFSET: usize = core::mem::offset_of!(SharedInfo, evtchn_pending);
/// Offset of `evtchn_mask` in [`SharedInfo`].
pub const SHARED_INFO_MASK_OFFSET: usize = core::mem::offset_of!(SharedInfo, evtchn_mask);

/// The bitmap word and bit of a port in the 2-level ABI.
pub const fn port_word_bit(port: Port) -> (usize, u32) {
    (
        port as usize / BITS_PER_EVTCHN_WORD,
        port % BITS_PER_EVTCHN_WORD as u32,
    )
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<EvtchnAllocUnbound>() == 8);
    assert!(size_of::<EvtchnBindInterdomain>() == 12);
    assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
    assert!(size_of::<EvtchnStatus>() == 24);
    assert!(offset_of!(EvtchnStatus, u_port) == 20);
    assert!(size_of::<VcpuInfo>() == 64);
    assert!(size_of::<SharedInfo>() == 3136);
    assert!(SHARED_INFO_PENDING_OFFSET == 2048);
    assert!(SHARED_INFO_MASK_OFFSET == 2560);
};
