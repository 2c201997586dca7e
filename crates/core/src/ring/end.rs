//! What both ends of a ring share: one type, [`Ring`], with the side as a
//! type parameter.
//!
//! Each end produces into one direction and consumes the other, with the
//! same private indices (its producer index, what it last published, its
//! consumer index, the last peer producer index it validated), the same
//! publish / notify / final-check steps from [`super::index`] and the same
//! broken-state latch. Only the choice of header indices (a front end
//! produces on `req_prod` and consumes `rsp_prod`; a back end the reverse)
//! and the bound on the peer's producer index differ by side; those are in
//! `front.rs` and `back.rs`, as methods of [`FrontRing`](super::FrontRing)
//! and [`BackRing`](super::BackRing).

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::AtomicU32;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::index;
use super::sring::{Cells, Sring};
use super::{Latch, RingError};
use crate::mem::{SharedMem, SharedMemory};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Front {}
    impl Sealed for super::Back {}
}

/// Which end of a ring: [`Front`] or [`Back`]. Sealed.
pub trait Side: sealed::Sealed + 'static {
    /// True for the front end (produces requests).
    const FRONT: bool;
    /// The type's name and its four private indices, for `Debug`.
    const NAMES: [&'static str; 5];
}

/// The front end: produces requests, consumes responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {}

/// The back end: consumes requests, produces responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Back {}

impl Side for Front {
    const FRONT: bool = true;
    const NAMES: [&'static str; 5] = [
        "FrontRing",
        "req_prod_pvt",
        "req_published",
        "rsp_cons",
        "rsp_prod_seen",
    ];
}

impl Side for Back {
    const FRONT: bool = false;
    const NAMES: [&'static str; 5] = [
        "BackRing",
        "rsp_prod_pvt",
        "rsp_published",
        "req_cons",
        "req_prod_seen",
    ];
}

/// One end `S` of a shared ring of `Req` requests and `Rsp` responses in
/// the memory of `M`. Use it as [`FrontRing`](super::FrontRing) or
/// [`BackRing`](super::BackRing); the methods common to both are here.
pub struct Ring<M, Req, Rsp, S: Side> {
    pub(super) sring: Sring<M>,
    /// Our producer index: the next slot to fill.
    pub(super) prod_pvt: u32,
    /// Our producer index as last published.
    pub(super) published: u32,
    /// Our consumer index: the next entry to consume.
    pub(super) cons: u32,
    /// The peer's producer index as last read and validated.
    pub(super) prod_seen: u32,
    pub(super) latch: Latch,
    _entries: PhantomData<fn(Req, Rsp) -> S>,
}

impl<M, Req, Rsp, S: Side> fmt::Debug for Ring<M, Req, Rsp, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [name, prod_pvt, published, cons, seen] = S::NAMES;
        f.debug_struct(name)
            .field("size", &self.sring.nr_ents())
            .field(prod_pvt, &self.prod_pvt)
            .field(published, &self.published)
            .field(cons, &self.cons)
            .field(seen, &self.prod_seen)
            .field("error", &self.latch.cause().copied())
            .finish()
    }
}

/// The header indices of one side: the producer index it writes and the
/// event index the peer arms for it; the peer's producer index and the event
/// index it arms itself.
struct Indices<'m> {
    own_prod: &'m AtomicU32,
    own_event: &'m AtomicU32,
    peer_prod: &'m AtomicU32,
    peer_event: &'m AtomicU32,
}

impl<'m> Indices<'m> {
    fn of<S: Side>(c: Cells<'m>) -> Self {
        if S::FRONT {
            Self {
                own_prod: c.req_prod,
                own_event: c.req_event,
                peer_prod: c.rsp_prod,
                peer_event: c.rsp_event,
            }
        } else {
            Self {
                own_prod: c.rsp_prod,
                own_event: c.rsp_event,
                peer_prod: c.req_prod,
                peer_event: c.req_event,
            }
        }
    }
}

impl<M, Req, Rsp, S> Ring<M, Req, Rsp, S>
where
    M: SharedMemory,
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
    S: Side,
{
    /// An end over a checked ring with every private index at `start`.
    pub(super) fn with(sring: Sring<M>, start: u32) -> Self {
        Self {
            sring,
            prod_pvt: start,
            published: start,
            cons: start,
            prod_seen: start,
            latch: Latch::default(),
            _entries: PhantomData,
        }
    }

    fn indices(&mut self) -> Result<Indices<'_>, RingError> {
        let c = self.latch.guard(self.sring.cells())?;
        Ok(Indices::of::<S>(c))
    }

    /// Number of slots (a power of two).
    pub fn size(&self) -> u32 {
        self.sring.nr_ents()
    }

    /// Copies `v` into our next slot if `room` (else [`RingError::Full`]).
    pub(super) fn produce<T: IntoBytes + Immutable>(
        &mut self,
        v: &T,
        room: bool,
    ) -> Result<(), RingError> {
        self.latch.check()?;
        if !room {
            return Err(RingError::Full);
        }
        let r = self.sring.write(self.prod_pvt, v);
        self.latch.guard(r)?;
        self.prod_pvt = self.prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes what we produced (`RING_PUSH_*`).
    pub(super) fn publish(&mut self) -> Result<(), RingError> {
        self.latch.check()?;
        let new = self.prod_pvt;
        index::publish(self.indices()?.own_prod, new);
        self.published = new;
        Ok(())
    }

    /// Publishes what we produced and returns whether the peer asked to be
    /// notified (`RING_PUSH_*_AND_CHECK_NOTIFY`).
    pub(super) fn publish_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.latch.check()?;
        let (old, new) = (self.published, self.prod_pvt);
        let i = self.indices()?;
        let notify = index::publish_and_check_notify(i.own_prod, i.own_event, old, new);
        self.published = new;
        Ok(notify)
    }

    /// Reads the peer's producer index once.
    pub(super) fn load_peer(&mut self) -> Result<u32, RingError> {
        Ok(index::load_producer(self.indices()?.peer_prod))
    }

    /// `FINAL_CHECK_FOR_*` at our consumer index: the peer producer index
    /// observed (validate it like any other).
    pub(super) fn final_check(&mut self) -> Result<u32, RingError> {
        let cons = self.cons;
        let i = self.indices()?;
        Ok(index::final_check(i.peer_prod, i.peer_event, cons))
    }

    /// Asks the peer to notify once its producer index reaches `at`.
    pub(super) fn arm_event(&mut self, at: u32) -> Result<(), RingError> {
        index::arm_event(self.indices()?.peer_event, at);
        Ok(())
    }

    /// Accepts the peer's producer index `prod` if it is at most `max`
    /// ahead of our consumer index (and not behind it); else breaks the ring.
    pub(super) fn accept(&mut self, prod: u32, max: u32) -> Result<(), RingError> {
        if !index::producer_ok(prod, self.cons, max) {
            return Err(self.latch.trip(RingError::ProducerOverflow {
                prod,
                cons: self.cons,
                max,
            }));
        }
        self.prod_seen = prod;
        Ok(())
    }

    /// Copies the entry at our consumer index out of shared memory, once,
    /// and moves past it.
    pub(super) fn consume<T: FromBytes + IntoBytes>(&mut self) -> Result<T, RingError> {
        let r = self.sring.read(self.cons);
        let v = self.latch.guard(r)?;
        self.cons = self.cons.wrapping_add(1);
        Ok(v)
    }

    /// The protocol-private bytes of the header (`pvt`).
    pub fn pvt(&self) -> Result<SharedMem<'_>, RingError> {
        self.sring.pvt()
    }
}

impl<M, Req, Rsp, S: Side> Ring<M, Req, Rsp, S> {
    /// The memory the ring lives in (a share, a mapping, a window).
    pub fn memory(&self) -> &M {
        self.sring.memory()
    }

    /// Ends the ring and gives its memory back (e.g. to revoke a share or
    /// unmap a mapping). Shared memory is not touched.
    pub fn into_memory(self) -> M {
        self.sring.into_memory()
    }

    /// Whether an error has broken the ring.
    pub fn is_broken(&self) -> bool {
        self.latch.cause().is_some()
    }

    /// The error that broke the ring, if any.
    pub fn error(&self) -> Option<RingError> {
        self.latch.cause().copied()
    }

    /// Breaks the ring with `err` (for violations the driver finds in the
    /// contents of an entry). Returns `err`, to be propagated.
    /// [`RingError::Full`] does not break it.
    pub fn fail(&mut self, err: RingError) -> RingError {
        self.latch.trip(err)
    }
}
