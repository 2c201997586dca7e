//! libxenvchan's shared control page (`xen/include/public/io/libxenvchan.h`).
//!
//! A vchan is two byte rings. The *left* ring carries client → server data
//! (the client writes, the server reads), the *right* ring server → client.
//! The server grants one control page that starts with [`VchanInterface`];
//! its `grants[]` array (at [`VCHAN_GRANTS_OFFSET`]) lists the grant refs of
//! out-of-page ring pages, left ring first. A ring of order 10 or 11 lives
//! inside the control page itself instead.
//!
//! The order limits and in-page offsets are not macros of the header: they
//! come from its comments and from libxenvchan's `init.c`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The consumer/producer index pair of one vchan ring (`struct ring_shared`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RingShared {
    /// Consumer index, free-running; written by the reader.
    pub cons: u32,
    /// Producer index, free-running; written by the writer.
    pub prod: u32,
}

/// The header of the vchan control page (`struct vchan_interface`, 24 bytes
/// before the flexible `grants[]`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VchanInterface {
    /// Client → server ring indices.
    pub left: RingShared,
    /// Server → client ring indices.
    pub right: RingShared,
    /// Log2 of the left ring's size in bytes.
    pub left_order: u16,
    /// Log2 of the right ring's size in bytes.
    pub right_order: u16,
    /// Client state: `VCHAN_LIVE_*` (the server reads it).
    pub cli_live: u8,
    /// Server state: `VCHAN_LIVE_*` (the client reads it).
    pub srv_live: u8,
    /// `VCHAN_NOTIFY_*` bits the client must act on (set by the server).
    pub cli_notify: u8,
    /// `VCHAN_NOTIFY_*` bits the server must act on (set by the client).
    pub srv_notify: u8,
}

/// Byte offset of the `grants[]` array in the control page.
pub const VCHAN_GRANTS_OFFSET: usize = core::mem::size_of::<VchanInterface>();
/// Byte offset of `cli_live`: the client's unmap-notify clear-byte target.
pub const VCHAN_CLI_LIVE_OFFSET: usize = core::mem::offset_of!(VchanInterface, cli_live);
/// Byte offset of `srv_live`: the server's unmap-notify clear-byte target.
pub const VCHAN_SRV_LIVE_OFFSET: usize = core::mem::offset_of!(VchanInterface, srv_live);

/// Notify bit: "tell me when data is written".
pub const VCHAN_NOTIFY_WRITE: u8 = 0x1;
/// Notify bit: "tell me when data is consumed".
pub const VCHAN_NOTIFY_READ: u8 = 0x2;

/// Live byte: that side has closed or crashed.
pub const VCHAN_LIVE_CLOSED: u8 = 0;
/// Live byte: that side is connected.
pub const VCHAN_LIVE_CONNECTED: u8 = 1;
/// `cli_live` only: the client has not connected yet.
pub const VCHAN_LIVE_WAITING: u8 = 2;

/// Smallest ring order (1 KiB, inside the control page).
pub const VCHAN_MIN_ORDER: u16 = 10;
/// Largest ring order (1 MiB); libxenvchan's `MAX_RING_SHIFT`.
pub const VCHAN_MAX_ORDER: u16 = 20;
/// Rings of this order and above live in separately granted pages.
pub const VCHAN_MIN_GRANTED_ORDER: u16 = 12;
/// Offset in the control page of an order-10 ring.
pub const VCHAN_RING_OFFSET_ORDER_10: usize = 1024;
/// Offset in the control page of an order-11 ring.
pub const VCHAN_RING_OFFSET_ORDER_11: usize = 2048;

/// Where a ring of `order` sits inside the control page, if it does.
pub const fn in_page_ring_offset(order: u16) -> Option<usize> {
    match order {
        10 => Some(VCHAN_RING_OFFSET_ORDER_10),
        11 => Some(VCHAN_RING_OFFSET_ORDER_11),
        _ => None,
    }
}

/// Granted pages a ring of `order` needs (0 for an in-page ring); `order`
/// must already be validated against [`VCHAN_MAX_ORDER`].
pub const fn ring_pages(order: u16) -> usize {
    if order < VCHAN_MIN_GRANTED_ORDER {
        0
    } else {
        1 << (order - VCHAN_MIN_GRANTED_ORDER)
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RingShared>() == 8);
    assert!(size_of::<VchanInterface>() == 24);
    assert!(offset_of!(VchanInterface, right) == 8);
    assert!(offset_of!(VchanInterface, left_order) == 16);
    assert!(VCHAN_CLI_LIVE_OFFSET == 20);
    assert!(VCHAN_SRV_LIVE_OFFSET == 21);
    assert!(offset_of!(VchanInterface, srv_notify) == 23);
    assert!(ring_pages(VCHAN_MAX_ORDER) == 256);
};
