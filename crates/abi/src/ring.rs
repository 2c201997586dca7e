//! Shared request/response rings (`xen/include/public/io/ring.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A free-running ring index (`RING_IDX`).
pub type RingIdx = u32;

/// The 64-byte header of every `<name>_sring`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SringHeader {
    /// Requests published up to this index (front writes).
    pub req_prod: RingIdx,
    /// Notify the back end when `req_prod` passes this (back writes).
    pub req_event: RingIdx,
    /// Responses published up to this index (back writes).
    pub rsp_prod: RingIdx,
    /// Notify the front end when `rsp_prod` passes this (front writes).
    pub rsp_event: RingIdx,
    /// Protocol-private bytes (netif `smartpoll_active`, ...).
    pub pvt: [u8; 4],
    /// Zero padding.
    pub _pad: [u8; 44],
}

/// Size of the shared ring header.
pub const SRING_HEADER_SIZE: usize = 64;

/// Number of entries of `entry_size` bytes that a ring of `bytes` holds:
/// what fits after the header, rounded down to a power of two (`__RING_SIZE`).
pub const fn ring_size(bytes: usize, entry_size: usize) -> usize {
    if entry_size == 0 || bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let n = (bytes - SRING_HEADER_SIZE) / entry_size;
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// Bytes in each direction of a "flex" byte ring whose two data areas
/// together span `PAGE_SIZE << order` bytes (`XEN_FLEX_RING_SIZE`).
pub const fn xen_flex_ring_size(order: u32) -> usize {
    1 << (order + crate::PAGE_SHIFT - 1)
}

const _: () = {
    assert!(core::mem::size_of::<SringHeader>() == SRING_HEADER_SIZE);
    assert!(core::mem::offset_of!(SringHeader, pvt) == 16);
    assert!(xen_flex_ring_size(0) == 2048);
    assert!(ring_size(4096, 8) == 256);
    assert!(ring_size(4096, 12) == 256);
    assert!(ring_size(4096, 16) == 128);
    assert!(ring_size(4096, 64) == 32);
    assert!(ring_size(4096, 112) == 32);
    assert!(ring_size(4096, 128) == 16);
    assert!(ring_size(8192, 112) == 64);
};
