//! Shared request/response rings (Xen's `io/ring.h`), typed and defensive.
//!
//! A ring is a region of one or more shared pages (`4096 << order` bytes): a
//! 64-byte header with four free-running `u32` indices — `req_prod`,
//! `req_event`, `rsp_prod`, `rsp_event` — followed by a power-of-two array of
//! slots, each the union of a request and a response. The front end produces
//! requests and consumes responses; the back end the reverse. A response
//! reuses the slot of a request already consumed, so the protocol is strictly
//! one response per request.
//!
//! The design, in the order a reader needs it:
//!
//! * [`index`] — the index and notification protocol alone (publish, check
//!   whether to notify, final check before sleeping), generic over an
//!   [`index::IndexCell`] so the very same functions run on shared memory and
//!   under loom. The fence placement that prevents lost wake-ups is there.
//! * [`bytes`] — the other kind of ring: a validated byte ring
//!   ([`bytes::ByteProducer`] / [`bytes::ByteConsumer`]) with the
//!   producer/consumer arithmetic, wrap-around, peer-index check and
//!   copy-once of vchan, the PV console and the XenStore page, once.
//! * [`FrontRing`] and [`BackRing`] — the two ends, typed by their entry
//!   types: both are the one [`Ring`] type with the side ([`Front`] /
//!   [`Back`]) as a parameter, so what the ends share (indices, publish,
//!   final check, latch) is written once and only the side's direction and
//!   peer-index bound differ. Entries are plain bytes (`zerocopy` types); reading one copies it
//!   once out of shared memory into a private value, which is all the caller
//!   ever sees (copy-once, XSA-155). Each end keeps its own indices
//!   privately — its producer index, what it last published, its consumer
//!   index and the last peer index it validated — and only ever *writes* its
//!   own indices to the header; the peer's indices are read once, validated,
//!   then used.
//! * Validation: a peer producer index more than the peer may legally be
//!   ahead (or behind our consumer index) is [`RingError::ProducerOverflow`].
//!   The front end allows the back end at most as many responses as it has
//!   published requests outstanding; the back end allows the front end at most
//!   the slots not holding unanswered requests (so it never consumes more than
//!   a ring's worth, however the index lies).
//! * Memory: both ends are generic over a
//!   [`SharedMemory`](crate::mem::SharedMemory) owner `M`. A driver stores
//!   `FrontRing<Share<B>, ..>` or `BackRing<Mapping<M>, ..>` and gets the
//!   pages back with `into_memory()` to revoke or unmap them; a loop on the
//!   stack may use a borrowed `SharedMem<'_>` or `&Share<B>`. No `unsafe`
//!   is needed for either.
//! * [`Outstanding`] — the front end's record of requests in flight: response
//!   ids in range, outstanding (not duplicated) and with the opcode that was
//!   sent; [`FrontRing::complete`] checks a response against it.
//!
//! Any violation by the peer is a typed [`RingError`] and *breaks* the ring:
//! the first error is kept ([`FrontRing::error`]) and every later call
//! returns [`RingError::Broken`], so a driver cannot carry on by accident
//! and a hostile peer can cause neither a panic nor an endless loop. Only
//! [`RingError::Full`] (no free slot; local flow control) leaves the ring
//! usable.
//!
//! [`FrontRing`] shows a front end's send / receive loop and [`BackRing`]
//! a back end's serve loop.

#![forbid(unsafe_code)]

pub mod bytes;
pub mod index;

mod back;
mod end;
mod front;
mod outstanding;
mod sring;

#[cfg(test)]
mod tests;

pub use back::BackRing;
pub use end::{Back, Front, Ring, Side};
pub use front::FrontRing;
pub use outstanding::Outstanding;
pub use sring::{entry_size, nr_entries, ring_bytes};

use crate::mem::OutOfBounds;

/// What went wrong on a ring.
///
/// Every variant but [`RingError::Full`] leaves the ring (or tracker) broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The shared region cannot hold a ring of these entries (too small for
    /// the header and one slot, or not 4-byte aligned).
    #[error("a shared region of {bytes} bytes cannot hold a ring of {entry_size}-byte entries")]
    Region {
        /// Size of the region.
        bytes: usize,
        /// Size of one slot.
        entry_size: usize,
    },
    /// No free slot to produce into. Not fatal: wait for the peer.
    #[error("ring full")]
    Full,
    /// The peer's producer index is further ahead of our consumer index than
    /// the peer may legally be, or behind it.
    #[error("peer producer index {prod:#x} is outside the {max} entries it may be ahead of consumer index {cons:#x}")]
    ProducerOverflow {
        /// The producer index read from shared memory.
        prod: u32,
        /// Our consumer index.
        cons: u32,
        /// How far ahead the producer may legally be.
        max: u32,
    },
    /// A response carries an id that no request could have had.
    #[error("response id {id} is out of range (ids are below {limit})")]
    BadId {
        /// The id received.
        id: u64,
        /// Number of ids.
        limit: u64,
    },
    /// A response for an id that is not outstanding (a duplicate, or never
    /// sent).
    #[error("response id {id} is not outstanding (duplicate or never sent)")]
    NotOutstanding {
        /// The id received.
        id: u64,
    },
    /// A response whose opcode is not the one its request was sent with.
    #[error("response id {id} has opcode {got}, but its request had {expected}")]
    WrongOpcode {
        /// The id received.
        id: u64,
        /// The opcode of the request.
        expected: u32,
        /// The opcode in the response.
        got: u32,
    },
    /// An access to the shared region failed (only possible with a region
    /// that changed size under the ring).
    #[error(transparent)]
    Memory(#[from] OutOfBounds),
    /// The ring is broken by an earlier error; see the ring's `error()`.
    #[error("ring is broken by an earlier protocol violation")]
    Broken,
}

impl RingError {
    /// Whether this error broke the ring (everything but [`RingError::Full`]).
    pub const fn is_fatal(&self) -> bool {
        !matches!(self, RingError::Full)
    }
}

/// The broken-state latch shared by both ends and the tracker.
pub(crate) type Latch = crate::latch::Latch<RingError>;

impl crate::latch::Fault for RingError {
    fn broken(_cause: &RingError) -> RingError {
        RingError::Broken
    }

    fn latches(&self) -> bool {
        self.is_fatal()
    }
}
