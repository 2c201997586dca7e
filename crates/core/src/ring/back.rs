//! The back end: consumes requests, produces responses.

use core::fmt;
use core::marker::PhantomData;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::index;
use super::sring::Sring;
use super::{Latch, RingError};
use crate::mem::{SharedMem, SharedMemory};

/// The back end of a shared ring of `Req` requests and `Rsp` responses.
///
/// All of its indices are private: `rsp_prod_pvt` (next response slot), the
/// response index it last published, `req_cons` (next request to consume)
/// and the last request producer index it validated. The back end never
/// initialises the header; the front end does.
///
/// A back end's loop: drain with [`BackRing::next_request`] (each request is
/// a private copy, validate it before use), answer each with
/// [`BackRing::push_response`], publish with
/// [`BackRing::push_responses_and_check_notify`] (notify if it says so), and
/// sleep only after [`BackRing::final_check_for_requests`] returned `false`.
///
/// ```no_run
/// use xenshare::mem::SharedMem;
/// use xenshare::ring::{BackRing, RingError};
///
/// // Requests and responses as plain words: [id, op, sector] and [id, status].
/// fn serve(
///     mapped: SharedMem<'_>,
///     notify: impl Fn(),
///     sleep: impl Fn(),
/// ) -> Result<(), RingError> {
///     let mut ring = BackRing::<_, [u64; 3], [u64; 2]>::attach(mapped)?;
///     loop {
///         while let Some([id, op, _sector]) = ring.next_request()? {
///             // Validate the private copy; answer even a bad request.
///             let status = if op <= 2 { 0 } else { u64::MAX };
///             ring.push_response(&[id, status])?;
///         }
///         if ring.push_responses_and_check_notify()? {
///             notify();
///         }
///         if !ring.final_check_for_requests()? {
///             sleep(); // until the front end's next event
///         }
///     }
/// }
/// ```
pub struct BackRing<M, Req, Rsp> {
    sring: Sring<M>,
    rsp_prod_pvt: u32,
    rsp_published: u32,
    req_cons: u32,
    req_prod_seen: u32,
    latch: Latch,
    _entries: PhantomData<fn(Rsp) -> Req>,
}

impl<M, Req, Rsp> fmt::Debug for BackRing<M, Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("size", &self.sring.nr_ents())
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("rsp_published", &self.rsp_published)
            .field("req_cons", &self.req_cons)
            .field("req_prod_seen", &self.req_prod_seen)
            .field("error", &self.latch.cause())
            .finish()
    }
}

impl<M, Req, Rsp> BackRing<M, Req, Rsp>
where
    M: SharedMemory,
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    /// Attaches to a ring the front end initialised (`BACK_RING_INIT`):
    /// indices start at 0. Shared memory is not touched.
    pub fn attach(mem: M) -> Result<Self, RingError> {
        Self::attach_at(mem, 0)
    }

    /// Attaches with all private indices at `start` (`BACK_RING_ATTACH`,
    /// e.g. to resume a ring already in use).
    pub fn attach_at(mem: M, start: u32) -> Result<Self, RingError> {
        Ok(Self {
            sring: Sring::new::<Req, Rsp>(mem)?,
            rsp_prod_pvt: start,
            rsp_published: start,
            req_cons: start,
            req_prod_seen: start,
            latch: Latch::default(),
            _entries: PhantomData,
        })
    }

    /// Number of slots (a power of two).
    pub fn size(&self) -> u32 {
        self.sring.nr_ents()
    }

    /// The next response slot to fill (private `rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// The next request to consume (private `req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Requests consumed and not yet answered: the responses that may be
    /// pushed now.
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Responses pushed but not yet published.
    pub fn unpublished_responses(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_published)
    }

    /// Validates the front end's `req_prod`. The front end can only have
    /// filled the slots that do not hold requests we consumed but have not
    /// answered, so `req_prod` may be ahead of `req_cons` by at most
    /// `size - unanswered` — the same bound as Xen's
    /// `req_prod - rsp_prod_pvt <= size` — and never behind it.
    fn refresh(&mut self, prod: u32) -> Result<(), RingError> {
        let max = index::max_ahead(self.size(), self.unanswered());
        if !index::producer_ok(prod, self.req_cons, max) {
            return Err(self.latch.trip(RingError::ProducerOverflow {
                prod,
                cons: self.req_cons,
                max,
            }));
        }
        self.req_prod_seen = prod;
        Ok(())
    }

    /// Requests published and not yet consumed
    /// (`RING_HAS_UNCONSUMED_REQUESTS`, with its clamp), after validating
    /// `req_prod`.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.latch.live()?;
        let c = self.latch.check(self.sring.cells())?;
        self.refresh(index::load_producer(c.req_prod))?;
        Ok(self.pending())
    }

    fn pending(&self) -> u32 {
        index::unconsumed_requests(
            self.size(),
            self.req_prod_seen,
            self.req_cons,
            self.rsp_prod_pvt,
        )
    }

    /// Consumes the next request, copied once out of shared memory, or
    /// `None` if none is published. Validate it before acting on it.
    pub fn next_request(&mut self) -> Result<Option<Req>, RingError> {
        self.latch.live()?;
        if self.pending() == 0 {
            let c = self.latch.check(self.sring.cells())?;
            self.refresh(index::load_producer(c.req_prod))?;
            if self.pending() == 0 {
                return Ok(None);
            }
        }
        let r = self.sring.read(self.req_cons);
        let req = self.latch.check(r)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Before sleeping: returns whether requests are waiting; if none, first
    /// asks the front end to notify on the next one
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). On `false`, sleep until an event.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.latch.live()?;
        if self.pending() != 0 {
            return Ok(true);
        }
        let c = self.latch.check(self.sring.cells())?;
        let prod = index::final_check(c.req_prod, c.req_event, self.req_cons);
        self.refresh(prod)?;
        Ok(self.pending() != 0)
    }

    /// Copies `rsp` into the slot of the oldest unanswered request.
    /// [`RingError::Full`] if every consumed request is already answered.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.latch.live()?;
        if self.unanswered() == 0 {
            return Err(RingError::Full);
        }
        let r = self.sring.write(self.rsp_prod_pvt, rsp);
        self.latch.check(r)?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes pushed responses without checking whether to notify
    /// (`RING_PUSH_RESPONSES`).
    pub fn push_responses(&mut self) -> Result<(), RingError> {
        self.latch.live()?;
        let c = self.latch.check(self.sring.cells())?;
        index::publish(c.rsp_prod, self.rsp_prod_pvt);
        self.rsp_published = self.rsp_prod_pvt;
        Ok(())
    }

    /// Publishes pushed responses and returns whether the front end asked
    /// to be notified of them (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn push_responses_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.latch.live()?;
        let (old, new) = (self.rsp_published, self.rsp_prod_pvt);
        let c = self.latch.check(self.sring.cells())?;
        let notify = index::publish_and_check_notify(c.rsp_prod, c.rsp_event, old, new);
        self.rsp_published = new;
        Ok(notify)
    }

    /// Before sleeping until at least `need` requests are published (e.g.
    /// enough rx buffers for a frame): returns whether they already are; if
    /// not, first asks the front end to notify when `req_prod` reaches
    /// `req_cons + need` (the event index written, then a full fence, then
    /// `req_prod` re-read and validated). On `false`, sleep until an event.
    pub fn final_check_for_requests_at_least(&mut self, need: u32) -> Result<bool, RingError> {
        self.latch.live()?;
        let c = self.latch.check(self.sring.cells())?;
        index::arm_event(c.req_event, self.req_cons.wrapping_add(need));
        self.refresh(index::load_producer(c.req_prod))?;
        Ok(self.pending() >= need)
    }

    /// The protocol-private bytes of the header (`pvt`).
    pub fn pvt(&self) -> Result<SharedMem<'_>, RingError> {
        self.sring.pvt()
    }
}

impl<M, Req, Rsp> BackRing<M, Req, Rsp> {
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

    /// Breaks the ring with `err` (for violations the driver finds in a
    /// request). Returns `err`, to be propagated. [`RingError::Full`] does
    /// not break it.
    pub fn fail(&mut self, err: RingError) -> RingError {
        self.latch.trip(err)
    }
}
