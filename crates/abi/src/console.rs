//! The PV console ring page (`xen/include/public/io/console.h`), in the
//! layout of the Xen 4.17 headers (3088 bytes; upstream 4.21 appends a
//! `connection` byte that 4.17 back ends do not know).
//!
//! Both rings are byte streams with free-running `u32` indices; the byte for
//! index `i` is at `i & (len - 1)` of its array (`MASK_XENCONS_IDX`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A console ring index (`XENCONS_RING_IDX`).
pub type XenconsRingIdx = u32;

/// Size of the `in` ring (back end → guest).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the `out` ring (guest → back end).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// The console page (`struct xencons_interface`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenconsInterface {
    /// Keyboard input, written by the back end.
    pub r#in: [u8; XENCONS_IN_SIZE],
    /// Console output, written by the guest.
    pub out: [u8; XENCONS_OUT_SIZE],
    /// `in` consumer index (guest).
    pub in_cons: XenconsRingIdx,
    /// `in` producer index (back end).
    pub in_prod: XenconsRingIdx,
    /// `out` consumer index (back end).
    pub out_cons: XenconsRingIdx,
    /// `out` producer index (guest).
    pub out_prod: XenconsRingIdx,
}

/// The position in `in` of the byte with index `idx`.
pub const fn mask_in(idx: XenconsRingIdx) -> usize {
    idx as usize & (XENCONS_IN_SIZE - 1)
}

/// The position in `out` of the byte with index `idx`.
pub const fn mask_out(idx: XenconsRingIdx) -> usize {
    idx as usize & (XENCONS_OUT_SIZE - 1)
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<XenconsInterface>() == 3088);
    assert!(offset_of!(XenconsInterface, out) == 1024);
    assert!(offset_of!(XenconsInterface, in_cons) == 3072);
    assert!(offset_of!(XenconsInterface, out_prod) == 3084);
    assert!(XENCONS_IN_SIZE.is_power_of_two() && XENCONS_OUT_SIZE.is_power_of_two());
};
