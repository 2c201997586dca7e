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
//! atomic. Data from a peer is copied out once, then validated.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod blk;
pub mod console;
mod deadline;
pub mod event;
pub mod grant;
pub mod mem;
pub mod net;
pub mod platform;
pub mod ring;
pub mod store;
mod sync;
pub mod types;
pub mod vchan;

pub use types::{Access, DomId, GrantRef, Port};
