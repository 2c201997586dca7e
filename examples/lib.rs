//! Runnable examples of xenshare's main APIs. The programs are this
//! package's examples; run one with
//! `cargo run -p xenshare-examples --example NAME`:
//!
//! | example | shows |
//! |---|---|
//! | `share_map` | share a page, map it from another domain, and take it back the MSA02-safe way: `try_unshare` → `Busy` → keep the share or let it go to quarantine; `Revoked::Pages` versus `Revoked::Retired` |
//! | `vchan_echo` | a vchan echo server and client; on real Xen (when `/dev/xen` is present) through `xenshare-linux`, else on the emulator |
//! | `xenstore_watch` | register a XenStore watch and receive its events |
//! | `blkfront_read` | read a block device through blkfront, served by a file-backed blkback |
//!
//! Every example runs on the emulator without privileges and ends with exit
//! status 0 only if what it shows really happened; `.ci/run` runs them all.
//! This library itself is empty.
