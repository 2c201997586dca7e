//! Grant tables, version 1 (`xen/include/public/grant_table.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::DomId;

/// A grant reference: the index of an entry in the granter's table.
pub type GrantRef = u32;
/// A mapping handle returned by `GNTTABOP_map_grant_ref`.
pub type GrantHandle = u32;

/// One v1 grant table entry (`grant_entry_v1`).
///
/// In shared memory this is never accessed through this struct: the granting
/// guest and the hypervisor use atomic accessors on the first 32-bit word
/// (`flags` | `domid << 16`) and on `frame`. The struct documents the layout.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GrantEntryV1 {
    /// `GTF_*` bits.
    pub flags: u16,
    /// The domain that is granted access.
    pub domid: DomId,
    /// The frame being shared (a GFN for auto-translated guests).
    pub frame: u32,
}

/// Entries in one 4 KiB frame of a v1 table.
pub const ENTRIES_PER_FRAME_V1: usize = crate::PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();
/// Entries reserved for the toolstack at the start of every table.
pub const GNTTAB_NR_RESERVED_ENTRIES: GrantRef = 8;
/// Reserved entry: the primary console page.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// Reserved entry: the xenstore page.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

/// Entry type: grants nothing.
pub const GTF_INVALID: u16 = 0;
/// Entry type: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: `domid` may transfer a page to us (legacy).
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type (v2 only): transitive grant.
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the entry type bits.
pub const GTF_TYPE_MASK: u16 = 3;
/// Only read-only mappings are allowed.
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by Xen while the grantee has the frame pinned.
pub const GTF_READING: u16 = 1 << 3;
/// Set by Xen while the grantee has a writable pin.
pub const GTF_WRITING: u16 = 1 << 4;
/// x86 cache attribute: page write-through.
pub const GTF_PWT: u16 = 1 << 5;
/// x86 cache attribute: page cache disable.
pub const GTF_PCD: u16 = 1 << 6;
/// x86 cache attribute: PAT.
pub const GTF_PAT: u16 = 1 << 7;
/// v2: sub-page grant (copy only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// accept_transfer: Xen has committed to the transfer.
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// accept_transfer: the transfer is complete.
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_dump_table`.
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// `GNTTABOP_transfer`.
pub const GNTTABOP_TRANSFER: u32 = 4;
/// `GNTTABOP_copy`.
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_unmap_and_replace`.
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// `GNTTABOP_set_version`.
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// `GNTTABOP_get_status_frames`.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// `GNTTABOP_get_version`.
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// `GNTTABOP_swap_grant_ref`.
pub const GNTTABOP_SWAP_GRANT_REF: u32 = 11;
/// `GNTTABOP_cache_flush`.
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

/// Map for I/O devices.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// Map for the CPU at `host_addr`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// Read-only mapping.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// User space may use the mapping (PV).
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `host_addr` is the address of a PTE (PV).
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;

/// Copy: the source is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// Copy: the destination is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// Grant operation status (`GNTST_*`).
pub type GrantStatus = i16;
/// Okay.
pub const GNTST_OKAY: GrantStatus = 0;
/// Undefined error.
pub const GNTST_GENERAL_ERROR: GrantStatus = -1;
/// Unrecognised domain id.
pub const GNTST_BAD_DOMAIN: GrantStatus = -2;
/// Invalid grant reference.
pub const GNTST_BAD_GNTREF: GrantStatus = -3;
/// Invalid mapping handle.
pub const GNTST_BAD_HANDLE: GrantStatus = -4;
/// Invalid virtual address.
pub const GNTST_BAD_VIRT_ADDR: GrantStatus = -5;
/// Invalid device address.
pub const GNTST_BAD_DEV_ADDR: GrantStatus = -6;
/// No spare translation slot in the I/O MMU.
pub const GNTST_NO_DEVICE_SPACE: GrantStatus = -7;
/// Permission denied.
pub const GNTST_PERMISSION_DENIED: GrantStatus = -8;
/// Bad page.
pub const GNTST_BAD_PAGE: GrantStatus = -9;
/// Copy arguments cross a page boundary.
pub const GNTST_BAD_COPY_ARG: GrantStatus = -10;
/// Page address size too large.
pub const GNTST_ADDRESS_TOO_BIG: GrantStatus = -11;
/// Operation not done; try again.
pub const GNTST_EAGAIN: GrantStatus = -12;
/// Out of space.
pub const GNTST_NO_SPACE: GrantStatus = -13;

/// `gnttab_map_grant_ref` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabMapGrantRef {
    /// In: where to map.
    pub host_addr: u64,
    /// In: `GNTMAP_*`.
    pub flags: u32,
    /// In: the grant reference.
    pub r#ref: GrantRef,
    /// In: the granting domain.
    pub dom: DomId,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Out: handle for the unmap.
    pub handle: GrantHandle,
    /// Out: bus address if `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}

/// `gnttab_unmap_grant_ref` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabUnmapGrantRef {
    /// In: the address given to the map, or 0.
    pub host_addr: u64,
    /// In: the bus address, or 0.
    pub dev_bus_addr: u64,
    /// In: the handle from the map.
    pub handle: GrantHandle,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding to 8-byte alignment.
    pub _pad: [u8; 2],
}

/// `gnttab_setup_table` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetupTable {
    /// In: `DOMID_SELF`.
    pub dom: DomId,
    /// Padding.
    pub _pad0: [u8; 2],
    /// In: requested frames.
    pub nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad1: [u8; 6],
    /// In: guest handle of the `xen_pfn_t` array Xen fills.
    pub frame_list: u64,
}

/// `gnttab_query_size` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabQuerySize {
    /// In: the domain.
    pub dom: DomId,
    /// Padding.
    pub _pad0: [u8; 2],
    /// Out: current size in frames.
    pub nr_frames: u32,
    /// Out: maximum size in frames.
    pub max_nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad1: [u8; 2],
}

/// One side of a `gnttab_copy` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCopyPtr {
    /// `ref` (low 32 bits) if the matching `GNTCOPY_*_gref` flag is set, else a frame number.
    pub u: u64,
    /// The domain owning the ref or frame.
    pub domid: DomId,
    /// Byte offset in the page.
    pub offset: u16,
    /// Padding.
    pub _pad: [u8; 4],
}

/// `gnttab_copy` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCopy {
    /// Where to copy from.
    pub source: GnttabCopyPtr,
    /// Where to copy to.
    pub dest: GnttabCopyPtr,
    /// Bytes to copy.
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad: [u8; 2],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<GrantEntryV1>() == 8);
    assert!(size_of::<GnttabMapGrantRef>() == 32);
    assert!(offset_of!(GnttabMapGrantRef, handle) == 20);
    assert!(size_of::<GnttabUnmapGrantRef>() == 24);
    assert!(size_of::<GnttabSetupTable>() == 24);
    assert!(offset_of!(GnttabSetupTable, frame_list) == 16);
    assert!(size_of::<GnttabQuerySize>() == 16);
    assert!(size_of::<GnttabCopy>() == 40);
    assert!(offset_of!(GnttabCopy, status) == 36);
};
