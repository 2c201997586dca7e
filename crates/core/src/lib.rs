//! xenshare core: Xen's inter-domain shared-memory protocols, written once,
//! platform-agnostic, `no_std` + `alloc`.
//!
//! The heart is [`grant`]: a grant API on which the MirageOS MSA02 / Linux
//! XSA-396 bug class cannot be written. Revoking a grant is fallible and the
//! failure cannot be ignored; a share owns its pages and memory is never
//! reused or freed while a peer may still map it (quarantine with bounded
//! reclaim). Event channels ([`event`]) and the other protocols sit on the same
//! platform seam ([`platform`]), which the emulator (`xenshare-sim`) and the
//! Linux `/dev/xen` backend implement.
//!
//! Memory another domain can change is never behind a Rust reference: it is
//! reached only through [`mem::SharedMem`], whose accessors are volatile or
//! atomic. Data from a peer is copied out once, then validated. `unsafe` lives
//! only in that memory layer (`mem`, the grant API's calls into the platform
//! seam): every other module (`event`, `ring`, `store`, `error`, `latch`,
//! `vchan`, `console`, `blk`, `net`) is `#![forbid(unsafe_code)]`. Rings
//! hold the owner of their memory ([`mem::SharedMemory`]: a
//! [`grant::Share`], a [`grant::Mapping`] or a borrowed window) and give it
//! back with `into_memory()`; the byte streams (vchan, console, the XenStore
//! page) share one validated byte ring, [`ring::bytes`].
//!
//! The split drivers ([`blk`], [`net`], [`console`], [`vchan`]) share three
//! pieces, each written once: [`store::xenbus`] (typed reads of a peer's
//! XenStore keys with one strictness, the wait for a peer's state, the
//! transaction retry policy, the toolstack's device creation), [`error`]
//! (the [`error::DeviceError`] core each device error wraps, keeping only
//! its protocol's own variants) and [`latch`] (the "broken after the first
//! violation" state of every ring and device end). Scoped grants and
//! mappings are [`grant::scoped`].
//!
//! # Example
//!
//! The rule at the bottom of the grant API, on one grant entry word: a grant
//! cannot be revoked while the peer has it mapped (the busy bits are set), and
//! the revocation says so instead of pretending. Applications use the safe
//! [`grant::Exporter`] / [`grant::Share`] on top of it (see `xenshare-sim`'s
//! example, and `cargo run -p xenshare-examples --example share_map`).
//!
//! ```
//! use core::sync::atomic::AtomicU32;
//! use xenshare::grant::entry::{grant_access, pin, try_end_access, unpin, BUSY};
//! use xenshare::DomId;
//!
//! let (word, frame) = (AtomicU32::new(0), AtomicU32::new(0));
//! // The guest grants frame 42 to domain 0, read-write.
//! grant_access(&word, &frame, DomId(0), 42, false).unwrap();
//! // The hypervisor pins it for dom0's mapping: GTF_reading | GTF_writing.
//! pin(&word, DomId(0), false).unwrap();
//! // Revocation fails while mapped: the caller must keep the page.
//! assert!(try_end_access(&word).is_err());
//! // dom0 unmaps; now the entry can be revoked, atomically.
//! unpin(&word, BUSY);
//! assert!(try_end_access(&word).is_ok());
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod blk;
pub mod console;
mod deadline;
pub mod error;
pub mod event;
pub mod grant;
pub mod latch;
pub mod mem;
pub mod net;
pub mod platform;
pub mod ring;
pub mod store;
mod sync;
pub mod types;
pub mod vchan;

pub use types::{Access, DomId, GrantRef, Port};
