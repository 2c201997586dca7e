//! `libxengnttab.so.1` and `libxenevtchn.so.1` over the multi-process
//! emulator, so Xen's own unmodified C programs (libxenvchan,
//! vchan-socket-proxy, ...) run as domains of a `xenshare host` daemon;
//! plus the three `libxenctrl.so.4.17` functions vchan-socket-proxy
//! calls (see `ctrl`), with an unprivileged domain's answers.
//!
//! # One object, two sonames
//!
//! The daemon accepts one `JOIN` per connection and one connection per
//! domain, and an event channel port bound through `libxenevtchn` must be a
//! port of the same domain that `libxengntshr`'s unmap notify fires on. So
//! a process needs exactly one [`RemoteDomain`](xenshare_host::RemoteDomain), shared by both libraries.
//! This crate builds one shared object (soname `libxengnttab.so.1`) that
//! exports all three families; `xenshare exec` puts two *symlinks* to it,
//! `libxengnttab.so.1` and `libxenevtchn.so.1` (and `libxenctrl.so.4.17`),
//! first in `LD_LIBRARY_PATH`. glibc's loader recognises the second name as the same
//! file (same device and inode), loads it once and records both names, so
//! the version requirements of a program linked against Xen's real
//! libraries (`libxenevtchn.so.1` must define `VERS_1.0`) are satisfied by
//! one instance. (Copies instead of symlinks would load two instances and
//! the second join would be refused.)
//!
//! # Symbol versions
//!
//! The symbols carry the same versions as Xen 4.17's libraries (`VERS_1.0`,
//! `xengnttab_grant_copy` and `xenevtchn_restrict` at `VERS_1.1`,
//! `xengnttab_fd`, `xengntshr_fd` and `xenevtchn_fdopen` at `VERS_1.2`;
//! the `xc_*` functions at `VERS_4.17.0`).
//! rustc links every cdylib with its own anonymous version script, which
//! would make `#[no_mangle]` symbols unversioned; so each C function is a
//! plain `extern "C"` Rust function and the exported, versioned name is a
//! one-instruction assembler trampoline (`.symver name@@VERS_x`) that
//! tail-jumps to it (see the `export` module). `xen.map` defines the version nodes
//! and makes everything else local.
//!
//! # The unsafe boundary
//!
//! Every exported function is `unsafe extern "C"`: its caller (C code)
//! promises the pointer contracts written on it. No panic crosses the
//! boundary: each body runs under [`catch_unwind`](std::panic::catch_unwind)
//! and a panic becomes `-1`/`NULL` with `errno = EIO`.

mod ctrl;
mod evtchn;
mod export;
mod gnttab;
mod rt;
