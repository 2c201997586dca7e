//! xenshare-devices: the `std` side of the split drivers.
//!
//! The protocols (blkif, netif, console rings and their XenBus handshakes)
//! live in the core crate, `no_std`, generic over small storage / network /
//! terminal traits. This crate implements those traits on a Linux host —
//! a raw image file for block back ends, a TAP interface for net back ends,
//! a pty or stdio for console back ends — and carries the guest-side TCP/IP
//! stack (smoltcp) for net front ends.

pub mod blk;
pub mod console;
pub mod machine;
pub mod net;
