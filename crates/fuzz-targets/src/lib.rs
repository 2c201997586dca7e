//! Fuzz target bodies for xenshare's peer-facing code.
//!
//! Every function here takes the fuzzer's bytes, builds whatever emulated
//! state it needs (a plain buffer standing in for a shared page, or the
//! in-process hypervisor of `xenshare-sim`), plays the hostile peer with
//! those bytes, and *asserts invariants* — a broken invariant panics, which
//! the fuzzer reports as a crash. They are ordinary library code that builds
//! on stable Rust:
//!
//! * the cargo-fuzz crate in `fuzz/` (nightly, not a workspace member) calls
//!   them from `fuzz_target!`;
//! * `tests/replay_corpora.rs` replays every committed corpus file of every
//!   target through the same function, so `cargo test` runs the corpora in
//!   CI without nightly.
//!
//! | target          | code under test                                        |
//! |-----------------|--------------------------------------------------------|
//! | [`xs_wire`]     | XenStore header / message / request decoding           |
//! | [`xenstored`]   | the daemon, fed raw bytes from one connection          |
//! | [`ring`]        | `FrontRing` / `BackRing` consumers over a peer's page  |
//! | [`vchan`]       | vchan indices and orders in a peer's control page      |
//! | [`blkback`]     | blkback request parsing and serving, indirect included |
//! | [`netback`]     | netback tx chains                                      |
//! | [`netfront`]    | netfront rx responses                                  |
//! | [`console`]     | the console byte rings                                 |
//!
//! Inputs are read with [`Input`], which never fails: once the bytes run out
//! every read yields zero, so any byte string is a valid input.

mod blk;
mod cons;
mod input;
mod netb;
mod netf;
mod plain;
mod rings;
mod seeds;
mod vch;
mod wire;
mod world;
mod xsd;

pub use input::Input;
pub use plain::PlainMem;
pub use seeds::seeds;

/// XenStore wire decoding: header, stream decoder, requests, watch events.
pub fn xs_wire(data: &[u8]) {
    wire::run(data)
}

/// xenstored: a sequence of raw requests from one connection.
pub fn xenstored(data: &[u8]) {
    xsd::run(data)
}

/// Front and back ring consumers over a page the peer writes.
pub fn ring(data: &[u8]) {
    rings::run(data)
}

/// vchan: a peer that controls the indices and ring orders.
pub fn vchan(data: &[u8]) {
    vch::run(data)
}

/// blkback: requests (direct, indirect, discard) from a hostile front end.
pub fn blkback(data: &[u8]) {
    blk::run(data)
}

/// netback: tx chains from a hostile front end.
pub fn netback(data: &[u8]) {
    netb::run(data)
}

/// netfront: rx responses from a hostile back end.
pub fn netfront(data: &[u8]) {
    netf::run(data)
}

/// The console rings against a peer that owns the other index.
pub fn console(data: &[u8]) {
    cons::run(data)
}

/// A target body.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("xs_wire", xs_wire),
    ("xenstored", xenstored),
    ("ring", ring),
    ("vchan", vchan),
    ("blkback", blkback),
    ("netback", netback),
    ("netfront", netfront),
    ("console", console),
];
