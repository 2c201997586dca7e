//! Byte-exact Xen ABI: the `#[repr(C)]` layouts and constants of Xen's public
//! headers (and Linux's Xen uapi headers) that xenshare speaks.
//!
//! This crate is the `wire/` layer of xenshare: it holds only bytes, no logic.
//! Every size, offset and constant here is checked against Debian's
//! `libxen-dev` headers by a compiled C probe (`tests/c_probe.rs`).
//!
//! All Xen architectures are little-endian; the layouts are those of x86_64
//! and arm64. Pages shared between domains are always 4096 bytes.
#![no_std]

pub mod event;
pub mod grant;
pub mod ring;
pub mod xen;

pub use xen::{DomId, PAGE_SHIFT, PAGE_SIZE};
