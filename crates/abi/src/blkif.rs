//! The block device protocol (`xen/include/public/io/blkif.h`,
//! `io/protocols.h`), x86_64 / Arm layout.
//!
//! One shared ring of 112-byte slots ([`BlkifRequest`] and its
//! [`BlkifRequestDiscard`] / [`BlkifRequestIndirect`] variants, answered in
//! place by a [`BlkifResponse`]). Sector numbers are always in 512-byte
//! units, whatever the disk's `sector-size`. 32-bit x86 front ends
//! (`protocol` = `x86_32-abi`) pack `u64` fields on 4 bytes and are not
//! described here.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::grant::GrantRef;

/// A virtual device number (`blkif_vdev_t`).
pub type BlkifVdev = u16;
/// A sector number in 512-byte units (`blkif_sector_t`).
pub type BlkifSector = u64;

/// The unit of `sector_number`, `first_sect`, `last_sect` and `nr_sectors`.
pub const BLKIF_SECTOR_SIZE: usize = 512;

/// Read.
pub const BLKIF_OP_READ: u8 = 0;
/// Write.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write with barrier (back end offers `feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the disk cache, possibly with no segments (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (SLES).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range (`feature-discard`); uses [`BlkifRequestDiscard`].
pub const BLKIF_OP_DISCARD: u8 = 5;
/// Indirect read or write (`feature-max-indirect-segments`); uses
/// [`BlkifRequestIndirect`].
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Segment-list pages in an indirect request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors in one indirect page.
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize =
    crate::PAGE_SIZE / core::mem::size_of::<BlkifRequestSegment>();

/// `BlkifRequestDiscard::flag`: erase securely (back end offers `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// Response status: done.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// Response status: failed.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// Response status: operation not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `info` bit: the disk is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// `info` bit: removable media.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `info` bit: read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// `protocol` value of 32-bit x86 front ends.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// `protocol` value of x86_64 front ends.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// `protocol` value of Arm front ends (32- and 64-bit share a layout).
pub const XEN_IO_PROTO_ABI_ARM: &str = "arm-abi";
/// The `protocol` of this build's own layout.
#[cfg(target_arch = "x86_64")]
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_X86_64;
/// The `protocol` of this build's own layout.
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_ARM;

/// One data segment: a granted frame and an inclusive sector range in it
/// (`struct blkif_request_segment`, 8 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestSegment {
    /// Grant of the 4 KiB data frame.
    pub gref: GrantRef,
    /// First 512-byte sector in the frame (0..=7).
    pub first_sect: u8,
    /// Last 512-byte sector in the frame, inclusive (`first_sect..=7`).
    pub last_sect: u8,
    /// Padding.
    pub _pad: [u8; 2],
}

/// A read / write / barrier / flush request (`struct blkif_request`, 112 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Segments used in `seg` (1..=11 for read and write).
    pub nr_segments: u8,
    /// The `virtual-device` number.
    pub handle: BlkifVdev,
    /// Padding.
    pub _pad: [u8; 4],
    /// Opaque; echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: BlkifSector,
    /// The data segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// A discard request (`struct blkif_request_discard`, 32 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    /// The `virtual-device` number.
    pub handle: BlkifVdev,
    /// Padding.
    pub _pad: [u8; 4],
    /// Opaque; echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: BlkifSector,
    /// Sectors to discard.
    pub nr_sectors: u64,
}

/// An indirect request (`struct blkif_request_indirect`, 64 bytes): the
/// segment list lives in granted pages of [`BlkifRequestSegment`]s.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// Segments in the indirect pages (up to the back end's maximum).
    pub nr_segments: u16,
    /// Padding.
    pub _pad0: [u8; 4],
    /// Opaque; echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: BlkifSector,
    /// The `virtual-device` number.
    pub handle: BlkifVdev,
    /// Padding.
    pub _pad1: [u8; 2],
    /// Grants of the pages holding the segment list.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Padding to 8-byte alignment.
    pub _pad2: [u8; 4],
}

/// A response (`struct blkif_response`, 16 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Padding.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Padding to 8-byte alignment.
    pub _pad1: [u8; 4],
}

/// Size of one blkif ring slot (the larger of request and response).
pub const BLKIF_RING_ENTRY_SIZE: usize = core::mem::size_of::<BlkifRequest>();
/// Slots in a one-page blkif ring.
pub const BLKIF_RING_SIZE: usize = crate::ring::ring_size(crate::PAGE_SIZE, BLKIF_RING_ENTRY_SIZE);

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<BlkifRequestSegment>() == 8);
    assert!(size_of::<BlkifRequest>() == 112);
    assert!(offset_of!(BlkifRequest, id) == 8);
    assert!(offset_of!(BlkifRequest, seg) == 24);
    assert!(size_of::<BlkifRequestDiscard>() == 32);
    assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);
    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
    assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);
    assert!(size_of::<BlkifResponse>() == 16);
    assert!(offset_of!(BlkifResponse, status) == 10);
    assert!(BLKIF_RING_ENTRY_SIZE >= size_of::<BlkifResponse>());
    assert!(BLKIF_RING_ENTRY_SIZE >= size_of::<BlkifRequestDiscard>());
    assert!(BLKIF_RING_ENTRY_SIZE >= size_of::<BlkifRequestIndirect>());
    assert!(BLKIF_RING_SIZE == 32);
    assert!(BLKIF_SEGS_PER_INDIRECT_FRAME == 512);
};
