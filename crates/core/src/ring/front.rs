//! The front end: produces requests, consumes responses.

use core::fmt;
use core::marker::PhantomData;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::index;
use super::outstanding::Outstanding;
use super::sring::Sring;
use super::{Latch, RingError};
use crate::mem::{SharedMem, SharedMemory};

/// The front end of a shared ring of `Req` requests and `Rsp` responses.
///
/// All of its indices are private: `req_prod_pvt` (next slot to fill),
/// the request index it last published, `rsp_cons` (next response to
/// consume) and the last response producer index it validated. The shared
/// header is only written (`req_prod`, `rsp_event`) or read once and checked
/// (`rsp_prod`, `req_event`).
///
/// ```no_run
/// use xenshare::mem::SharedMem;
/// use xenshare::ring::{FrontRing, Outstanding, RingError};
/// use zerocopy::{FromBytes, Immutable, IntoBytes};
///
/// #[repr(C)]
/// #[derive(FromBytes, IntoBytes, Immutable)]
/// struct Req { id: u64, op: u8, _pad: [u8; 7], sector: u64 }
/// #[repr(C)]
/// #[derive(FromBytes, IntoBytes, Immutable)]
/// struct Rsp { id: u64, op: u8, _pad: u8, status: i16, _pad2: u32 }
///
/// fn run(mem: SharedMem<'_>, notify: impl Fn()) -> Result<(), RingError> {
///     let mut ring = FrontRing::<_, Req, Rsp>::init(mem)?;
///     let mut inflight = Outstanding::<u64>::new(ring.size() as usize);
///     // Send: take an id, fill a slot, publish, notify if the back end asked.
///     let id = inflight.start(0, 1234)?;
///     ring.push_request(&Req { id, op: 0, _pad: [0; 7], sector: 1234 })?;
///     if ring.push_requests_and_check_notify()? {
///         notify();
///     }
///     // On an event: drain, then re-check before sleeping.
///     loop {
///         while let Some(rsp) = ring.next_response()? {
///             // `rsp` is a private copy; check it against what was sent.
///             let sector = ring.complete(&mut inflight, rsp.id, rsp.op.into())?;
///             let _ = (sector, rsp.status);
///         }
///         if !ring.final_check_for_responses()? {
///             break; // sleep until the next event
///         }
///     }
///     Ok(())
/// }
/// ```
pub struct FrontRing<M, Req, Rsp> {
    sring: Sring<M>,
    req_prod_pvt: u32,
    req_published: u32,
    rsp_cons: u32,
    rsp_prod_seen: u32,
    latch: Latch,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<M, Req, Rsp> fmt::Debug for FrontRing<M, Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("size", &self.sring.nr_ents())
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("req_published", &self.req_published)
            .field("rsp_cons", &self.rsp_cons)
            .field("rsp_prod_seen", &self.rsp_prod_seen)
            .field("error", &self.latch.cause())
            .finish()
    }
}

impl<M, Req, Rsp> FrontRing<M, Req, Rsp>
where
    M: SharedMemory,
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    /// Initialises the shared ring in `mem` (`SHARED_RING_INIT`: producers
    /// 0, events 1, header padding zeroed) and returns its front end. Do this
    /// before the back end is told where the ring is.
    pub fn init(mem: M) -> Result<Self, RingError> {
        let sring = Sring::new::<Req, Rsp>(mem)?;
        sring.init(0)?;
        Ok(Self::with(sring, 0))
    }

    /// Takes over the front end of an already initialised ring whose
    /// indices all stand at `start` (`FRONT_RING_ATTACH`). Shared memory is
    /// not touched.
    pub fn attach_at(mem: M, start: u32) -> Result<Self, RingError> {
        Ok(Self::with(Sring::new::<Req, Rsp>(mem)?, start))
    }

    fn with(sring: Sring<M>, start: u32) -> Self {
        Self {
            sring,
            req_prod_pvt: start,
            req_published: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            latch: Latch::default(),
            _entries: PhantomData,
        }
    }

    /// Number of slots (a power of two).
    pub fn size(&self) -> u32 {
        self.sring.nr_ents()
    }

    /// The next request slot to fill (private `req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// The next response to consume (private `rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// Slots free for new requests: those not holding a request whose
    /// response has not been consumed yet.
    pub fn free_requests(&self) -> u32 {
        index::free_slots(self.size(), self.req_prod_pvt, self.rsp_cons)
    }

    /// Whether no request can be pushed until responses are consumed.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests pushed but not yet published.
    pub fn unpublished_requests(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_published)
    }

    /// Copies `req` into the next free slot. The back end sees it only once
    /// it is published ([`FrontRing::push_requests_and_check_notify`]).
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        self.latch.live()?;
        if self.is_full() {
            return Err(RingError::Full);
        }
        let r = self.sring.write(self.req_prod_pvt, req);
        self.latch.check(r)?;
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes pushed requests without checking whether to notify
    /// (`RING_PUSH_REQUESTS`).
    pub fn push_requests(&mut self) -> Result<(), RingError> {
        self.latch.live()?;
        let c = self.latch.check(self.sring.cells())?;
        index::publish(c.req_prod, self.req_prod_pvt);
        self.req_published = self.req_prod_pvt;
        Ok(())
    }

    /// Publishes pushed requests and returns whether the back end asked to
    /// be notified of them (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`). Send the
    /// event when this is true.
    pub fn push_requests_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.latch.live()?;
        let (old, new) = (self.req_published, self.req_prod_pvt);
        let c = self.latch.check(self.sring.cells())?;
        let notify = index::publish_and_check_notify(c.req_prod, c.req_event, old, new);
        self.req_published = new;
        Ok(notify)
    }

    /// Validates a `rsp_prod` just read from the back end. It may be ahead of
    /// `rsp_cons` by at most the published requests still unanswered.
    fn refresh(&mut self, prod: u32) -> Result<(), RingError> {
        let max = self.req_published.wrapping_sub(self.rsp_cons);
        if !index::producer_ok(prod, self.rsp_cons, max) {
            return Err(self.latch.trip(RingError::ProducerOverflow {
                prod,
                cons: self.rsp_cons,
                max,
            }));
        }
        self.rsp_prod_seen = prod;
        Ok(())
    }

    /// Responses published and not yet consumed
    /// (`RING_HAS_UNCONSUMED_RESPONSES`), after validating `rsp_prod`.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.latch.live()?;
        let c = self.latch.check(self.sring.cells())?;
        self.refresh(index::load_producer(c.rsp_prod))?;
        Ok(self.rsp_prod_seen.wrapping_sub(self.rsp_cons))
    }

    /// Consumes the next response, copied once out of shared memory, or
    /// `None` if none is published. Check it (e.g. with
    /// [`FrontRing::complete`]) before acting on it.
    pub fn next_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.latch.live()?;
        if self.rsp_cons == self.rsp_prod_seen {
            let c = self.latch.check(self.sring.cells())?;
            self.refresh(index::load_producer(c.rsp_prod))?;
            if self.rsp_cons == self.rsp_prod_seen {
                return Ok(None);
            }
        }
        let r = self.sring.read(self.rsp_cons);
        let rsp = self.latch.check(r)?;
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Before sleeping: returns whether responses are waiting; if none,
    /// first asks the back end to notify on the next one
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). On `false`, sleep until an event.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.latch.live()?;
        if self.rsp_cons != self.rsp_prod_seen {
            return Ok(true);
        }
        let c = self.latch.check(self.sring.cells())?;
        let prod = index::final_check(c.rsp_prod, c.rsp_event, self.rsp_cons);
        self.refresh(prod)?;
        Ok(self.rsp_prod_seen != self.rsp_cons)
    }

    /// Checks a response's `id` and `opcode` against `inflight` and returns
    /// the context its request was started with. A bad id, a duplicate or a
    /// wrong opcode breaks the ring (and the tracker).
    pub fn complete<T>(
        &mut self,
        inflight: &mut Outstanding<T>,
        id: u64,
        opcode: u32,
    ) -> Result<T, RingError> {
        self.latch.live()?;
        let r = inflight.finish(id, opcode);
        self.latch.check(r)
    }

    /// The protocol-private bytes of the header (`pvt`).
    pub fn pvt(&self) -> Result<SharedMem<'_>, RingError> {
        self.sring.pvt()
    }
}

impl<M, Req, Rsp> FrontRing<M, Req, Rsp> {
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
        self.latch.cause()
    }

    /// Breaks the ring with `err` (for violations the driver finds in
    /// response contents). Returns `err`, to be propagated. [`RingError::Full`]
    /// does not break it.
    pub fn fail(&mut self, err: RingError) -> RingError {
        self.latch.trip(err)
    }
}
