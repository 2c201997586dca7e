//! Byte-exact Xen ABI: the `#[repr(C)]` layouts and constants of Xen's public
//! headers (and Linux's Xen uapi headers) that xenshare speaks.
//!
//! This crate is the `wire/` layer of xenshare: it holds only bytes, no logic.
//! Every size, offset and constant here is checked against Debian's
//! `libxen-dev` headers by a compiled C probe (`tests/c_probe.rs`).
//!
//! All Xen architectures are little-endian; the layouts are those of x86_64
//! and arm64. Pages shared between domains are always 4096 bytes.
//!
//! Xen's public headers: [`xen`], [`grant`], [`event`], [`ring`], [`vchan`],
//! [`console`], [`blkif`], [`netif`], [`xs`] (XenStore), [`xenbus`]. Linux's
//! `/dev/xen/{gntalloc,gntdev,evtchn}` ioctls: [`linux`]. Where Xen 4.17
//! (Debian 12, what the probe compiles against) and upstream differ, the
//! 4.17 layout is the one here and upstream-only items say so.
//!
//! # Example
//!
//! Decode a XenStore message header from bytes a peer sent (copy it out once,
//! then look at the owned value):
//!
//! ```
//! use xenshare_abi::xs::{XsdSockmsg, XSD_SOCKMSG_SIZE, XS_READ};
//! use zerocopy::FromBytes;
//!
//! let wire: [u8; XSD_SOCKMSG_SIZE] = [2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0];
//! let hdr = XsdSockmsg::read_from_bytes(&wire).expect("16 bytes");
//! assert_eq!((hdr.r#type, hdr.req_id, hdr.len), (XS_READ, 7, 5));
//! assert_eq!(xenshare_abi::grant::ENTRIES_PER_FRAME_V1, 512);
//! ```
#![no_std]

pub mod blkif;
pub mod console;
pub mod event;
pub mod grant;
pub mod linux;
pub mod netif;
pub mod ring;
pub mod vchan;
pub mod xen;
pub mod xenbus;
pub mod xs;

pub use xen::{DomId, PAGE_SHIFT, PAGE_SIZE};
