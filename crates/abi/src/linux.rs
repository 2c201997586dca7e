//! Linux's Xen user-space devices: the ioctl numbers and argument structs of
//! `/dev/xen/gntalloc`, `/dev/xen/gntdev` and `/dev/xen/evtchn`
//! (`include/uapi/xen/{gntalloc,gntdev,evtchn}.h`), for x86 and Arm.
//!
//! Several structs end in a one-element array that is really variable-length
//! (`gref_ids`, `refs`): their size is the C `sizeof`, which is what the ioctl
//! number encodes, and callers pass a larger buffer for more elements.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::event::Port;
use crate::grant::GrantRef;
use crate::xen::DomId;

/// Encodes `_IOC(_IOC_NONE, ty, nr, size)` as x86 and Arm define it: the
/// direction bits are 0 and the size takes 14 bits at bit 16.
pub const fn ioc_none(ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < 1 << 14);
    (size as u32) << 16 | (ty as u32) << 8 | nr as u32
}

/// `ioctl_gntalloc_alloc_gref::flags`: grant the pages writable.
pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;

/// Unmap-notify action: write 0 to the byte at `index` in the page.
pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// Unmap-notify action: signal `event_channel_port`.
pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

/// Share pages with a domain (`struct ioctl_gntalloc_alloc_gref`, 24 bytes
/// with one gref; pass `16 + 4 * count` bytes, at least 24).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntallocAllocGref {
    /// In: the domain given access.
    pub domid: DomId,
    /// In: [`GNTALLOC_FLAG_WRITABLE`] or 0.
    pub flags: u16,
    /// In: pages to allocate and share.
    pub count: u32,
    /// Out: the mmap offset of the pages.
    pub index: u64,
    /// Out: one grant ref per page (variable length).
    pub gref_ids: [GrantRef; 1],
    /// Padding to 8-byte alignment.
    pub _pad: [u8; 4],
}

/// Stop sharing pages (`struct ioctl_gntalloc_dealloc_gref`, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntallocDeallocGref {
    /// In: the offset from the allocation.
    pub index: u64,
    /// In: pages to release.
    pub count: u32,
    /// Padding to 8-byte alignment.
    pub _pad: [u8; 4],
}

/// Set what happens when the last local user of a page goes (gntalloc and
/// gntdev share this layout: `struct ioctl_gntalloc_unmap_notify` /
/// `struct ioctl_gntdev_unmap_notify`, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlUnmapNotify {
    /// In: mmap offset of a byte in the page (the byte to clear).
    pub index: u64,
    /// In: `UNMAP_NOTIFY_*` bits.
    pub action: u32,
    /// In: the port to signal for [`UNMAP_NOTIFY_SEND_EVENT`].
    pub event_channel_port: Port,
}

/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub const IOCTL_GNTALLOC_ALLOC_GREF: u32 =
    ioc_none(b'G', 5, core::mem::size_of::<IoctlGntallocAllocGref>());
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub const IOCTL_GNTALLOC_DEALLOC_GREF: u32 =
    ioc_none(b'G', 6, core::mem::size_of::<IoctlGntallocDeallocGref>());
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u32 =
    ioc_none(b'G', 7, core::mem::size_of::<IoctlUnmapNotify>());

/// One grant to map (`struct ioctl_gntdev_grant_ref`, 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevGrantRef {
    /// The granting domain (a `u32` here).
    pub domid: u32,
    /// The grant ref.
    pub r#ref: GrantRef,
}

/// Reserve a slot range for grants (`struct ioctl_gntdev_map_grant_ref`, 24
/// bytes with one ref; pass `16 + 8 * count` bytes, at least 24).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevMapGrantRef {
    /// In: grants in `refs`.
    pub count: u32,
    /// Unused.
    pub pad: u32,
    /// Out: the mmap offset of the range.
    pub index: u64,
    /// In: the grants (variable length).
    pub refs: [IoctlGntdevGrantRef; 1],
}

/// Release a slot range (`struct ioctl_gntdev_unmap_grant_ref`, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevUnmapGrantRef {
    /// In: the offset from the map.
    pub index: u64,
    /// In: pages in the range.
    pub count: u32,
    /// Unused.
    pub pad: u32,
}

/// Find the range behind an address (`struct
/// ioctl_gntdev_get_offset_for_vaddr`, 24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevGetOffsetForVaddr {
    /// In: start address of a mapping.
    pub vaddr: u64,
    /// Out: its mmap offset.
    pub offset: u64,
    /// Out: pages in it.
    pub count: u32,
    /// Unused.
    pub pad: u32,
}

/// Obsolete per-fd grant limit (`struct ioctl_gntdev_set_max_grants`, 4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevSetMaxGrants {
    /// In: the limit.
    pub count: u32,
}

/// The foreign side of a [`GntdevGrantCopySegment`] (the `foreign` member
/// of its union, 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GntdevCopyForeign {
    /// The grant ref.
    pub r#ref: GrantRef,
    /// Offset in the granted page.
    pub offset: u16,
    /// The granting domain.
    pub domid: DomId,
}

/// One grant copy (`struct gntdev_grant_copy_segment`, 24 bytes).
///
/// `source` and `dest` are each a C union of a local pointer and a
/// [`GntdevCopyForeign`]; which one is given by `GNTCOPY_*_gref` in `flags`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GntdevGrantCopySegment {
    /// Local address, or a [`GntdevCopyForeign`] as a `u64`.
    pub source: u64,
    /// Local address, or a [`GntdevCopyForeign`] as a `u64`.
    pub dest: u64,
    /// Bytes to copy.
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding to 8-byte alignment.
    pub _pad: [u8; 2],
}

/// Batch of grant copies (`struct ioctl_gntdev_grant_copy`, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevGrantCopy {
    /// In: segments in the array.
    pub count: u32,
    /// Padding.
    pub _pad: [u8; 4],
    /// In: address of the [`GntdevGrantCopySegment`] array.
    pub segments: u64,
}

/// dma-buf flag: write-combining.
pub const GNTDEV_DMA_FLAG_WC: u32 = 1 << 0;
/// dma-buf flag: coherent.
pub const GNTDEV_DMA_FLAG_COHERENT: u32 = 1 << 1;

/// Export grants as a dma-buf (`struct ioctl_gntdev_dmabuf_exp_from_refs`,
/// 20 bytes with one ref).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevDmabufExpFromRefs {
    /// In: `GNTDEV_DMA_FLAG_*`.
    pub flags: u32,
    /// In: refs in `refs`.
    pub count: u32,
    /// Out: the dma-buf fd.
    pub fd: u32,
    /// In: the granting domain.
    pub domid: u32,
    /// In: the grants (variable length).
    pub refs: [GrantRef; 1],
}

/// Wait for an exported dma-buf to be released (`struct
/// ioctl_gntdev_dmabuf_exp_wait_released`, 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevDmabufExpWaitReleased {
    /// In: the dma-buf fd.
    pub fd: u32,
    /// In: timeout in milliseconds.
    pub wait_to_ms: u32,
}

/// Import a dma-buf and grant it (`struct ioctl_gntdev_dmabuf_imp_to_refs`,
/// 20 bytes with one ref).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevDmabufImpToRefs {
    /// In: the dma-buf fd.
    pub fd: u32,
    /// In: refs wanted.
    pub count: u32,
    /// In: the domain to grant to.
    pub domid: u32,
    /// Must be zero.
    pub reserved: u32,
    /// Out: the grants (variable length).
    pub refs: [GrantRef; 1],
}

/// Release an imported dma-buf (`struct ioctl_gntdev_dmabuf_imp_release`, 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevDmabufImpRelease {
    /// In: the dma-buf fd.
    pub fd: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: u32 =
    ioc_none(b'G', 0, core::mem::size_of::<IoctlGntdevMapGrantRef>());
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: u32 =
    ioc_none(b'G', 1, core::mem::size_of::<IoctlGntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR`.
pub const IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR: u32 = ioc_none(
    b'G',
    2,
    core::mem::size_of::<IoctlGntdevGetOffsetForVaddr>(),
);
/// `IOCTL_GNTDEV_SET_MAX_GRANTS` (obsolete: current kernels reject it).
pub const IOCTL_GNTDEV_SET_MAX_GRANTS: u32 =
    ioc_none(b'G', 3, core::mem::size_of::<IoctlGntdevSetMaxGrants>());
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY` (the same number as gntalloc's).
pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u32 =
    ioc_none(b'G', 7, core::mem::size_of::<IoctlUnmapNotify>());
/// `IOCTL_GNTDEV_GRANT_COPY`.
pub const IOCTL_GNTDEV_GRANT_COPY: u32 =
    ioc_none(b'G', 8, core::mem::size_of::<IoctlGntdevGrantCopy>());
/// `IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS`.
pub const IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS: u32 = ioc_none(
    b'G',
    9,
    core::mem::size_of::<IoctlGntdevDmabufExpFromRefs>(),
);
/// `IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED`.
pub const IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED: u32 = ioc_none(
    b'G',
    10,
    core::mem::size_of::<IoctlGntdevDmabufExpWaitReleased>(),
);
/// `IOCTL_GNTDEV_DMABUF_IMP_TO_REFS`.
pub const IOCTL_GNTDEV_DMABUF_IMP_TO_REFS: u32 =
    ioc_none(b'G', 11, core::mem::size_of::<IoctlGntdevDmabufImpToRefs>());
/// `IOCTL_GNTDEV_DMABUF_IMP_RELEASE`.
pub const IOCTL_GNTDEV_DMABUF_IMP_RELEASE: u32 = ioc_none(
    b'G',
    12,
    core::mem::size_of::<IoctlGntdevDmabufImpRelease>(),
);

/// Bind a virtual IRQ (`struct ioctl_evtchn_bind_virq`, 4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlEvtchnBindVirq {
    /// The VIRQ number.
    pub virq: u32,
}

/// Bind to a remote unbound port (`struct ioctl_evtchn_bind_interdomain`,
/// 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlEvtchnBindInterdomain {
    /// The remote domain (a `u32` here).
    pub remote_domain: u32,
    /// The remote port.
    pub remote_port: Port,
}

/// Allocate a port a remote domain may bind (`struct
/// ioctl_evtchn_bind_unbound_port`, 4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlEvtchnBindUnboundPort {
    /// The domain allowed to bind (a `u32` here).
    pub remote_domain: u32,
}

/// Name a port bound on this fd (`struct ioctl_evtchn_unbind` and `struct
/// ioctl_evtchn_notify`, 4 bytes each).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlEvtchnPort {
    /// The local port.
    pub port: Port,
}

/// Restrict the fd to one peer (`struct ioctl_evtchn_restrict_domid`, 2 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlEvtchnRestrictDomid {
    /// The only domain interdomain binds may name.
    pub domid: DomId,
}

/// `IOCTL_EVTCHN_BIND_VIRQ`.
pub const IOCTL_EVTCHN_BIND_VIRQ: u32 =
    ioc_none(b'E', 0, core::mem::size_of::<IoctlEvtchnBindVirq>());
/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 =
    ioc_none(b'E', 1, core::mem::size_of::<IoctlEvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 =
    ioc_none(b'E', 2, core::mem::size_of::<IoctlEvtchnBindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`.
pub const IOCTL_EVTCHN_UNBIND: u32 = ioc_none(b'E', 3, core::mem::size_of::<IoctlEvtchnPort>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: u32 = ioc_none(b'E', 4, core::mem::size_of::<IoctlEvtchnPort>());
/// `IOCTL_EVTCHN_RESET`: empty the fd's pending queue, clear overflow.
pub const IOCTL_EVTCHN_RESET: u32 = ioc_none(b'E', 5, 0);
/// `IOCTL_EVTCHN_RESTRICT_DOMID`.
pub const IOCTL_EVTCHN_RESTRICT_DOMID: u32 =
    ioc_none(b'E', 6, core::mem::size_of::<IoctlEvtchnRestrictDomid>());
/// `IOCTL_EVTCHN_BIND_STATIC` (Linux 6.2+: bind a dom0less static port).
pub const IOCTL_EVTCHN_BIND_STATIC: u32 =
    ioc_none(b'E', 7, core::mem::size_of::<IoctlEvtchnPort>());

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<IoctlGntallocAllocGref>() == 24);
    assert!(offset_of!(IoctlGntallocAllocGref, gref_ids) == 16);
    assert!(IOCTL_GNTALLOC_ALLOC_GREF == 0x0018_4705);
    assert!(IOCTL_GNTALLOC_DEALLOC_GREF == 0x0010_4706);
    assert!(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY == 0x0010_4707);
    assert!(size_of::<IoctlGntdevMapGrantRef>() == 24);
    assert!(IOCTL_GNTDEV_MAP_GRANT_REF == 0x0018_4700);
    assert!(IOCTL_GNTDEV_UNMAP_GRANT_REF == 0x0010_4701);
    assert!(IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR == 0x0018_4702);
    assert!(IOCTL_GNTDEV_SET_MAX_GRANTS == 0x0004_4703);
    assert!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY == IOCTL_GNTALLOC_SET_UNMAP_NOTIFY);
    assert!(size_of::<GntdevCopyForeign>() == 8);
    assert!(size_of::<GntdevGrantCopySegment>() == 24);
    assert!(offset_of!(GntdevGrantCopySegment, status) == 20);
    assert!(IOCTL_GNTDEV_GRANT_COPY == 0x0010_4708);
    assert!(IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS == 0x0014_4709);
    assert!(IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED == 0x0008_470a);
    assert!(IOCTL_GNTDEV_DMABUF_IMP_TO_REFS == 0x0014_470b);
    assert!(IOCTL_GNTDEV_DMABUF_IMP_RELEASE == 0x0008_470c);
    assert!(IOCTL_EVTCHN_BIND_VIRQ == 0x0004_4500);
    assert!(IOCTL_EVTCHN_BIND_INTERDOMAIN == 0x0008_4501);
    assert!(IOCTL_EVTCHN_BIND_UNBOUND_PORT == 0x0004_4502);
    assert!(IOCTL_EVTCHN_UNBIND == 0x0004_4503);
    assert!(IOCTL_EVTCHN_NOTIFY == 0x0004_4504);
    assert!(IOCTL_EVTCHN_RESET == 0x0000_4505);
    assert!(IOCTL_EVTCHN_RESTRICT_DOMID == 0x0002_4506);
    assert!(IOCTL_EVTCHN_BIND_STATIC == 0x0004_4507);
};
