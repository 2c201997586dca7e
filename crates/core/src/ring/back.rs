//! The back end: consumes requests, produces responses.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::end::{Back, Ring};
use super::index;
use super::sring::Sring;
use super::RingError;
use crate::mem::SharedMemory;

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
pub type BackRing<M, Req, Rsp> = Ring<M, Req, Rsp, Back>;

impl<M, Req, Rsp> Ring<M, Req, Rsp, Back>
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
        Ok(Self::with(Sring::new::<Req, Rsp>(mem)?, start))
    }

    /// The next response slot to fill (private `rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.prod_pvt
    }

    /// The next request to consume (private `req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.cons
    }

    /// Requests consumed and not yet answered: the responses that may be
    /// pushed now.
    pub fn unanswered(&self) -> u32 {
        self.cons.wrapping_sub(self.prod_pvt)
    }

    /// Responses pushed but not yet published.
    pub fn unpublished_responses(&self) -> u32 {
        self.prod_pvt.wrapping_sub(self.published)
    }

    /// Validates the front end's `req_prod`. The front end can only have
    /// filled the slots that do not hold requests we consumed but have not
    /// answered, so `req_prod` may be ahead of `req_cons` by at most
    /// `size - unanswered` — the same bound as Xen's
    /// `req_prod - rsp_prod_pvt <= size` — and never behind it.
    fn refresh(&mut self, prod: u32) -> Result<(), RingError> {
        let max = index::max_ahead(self.size(), self.unanswered());
        self.accept(prod, max)
    }

    /// Requests published and not yet consumed
    /// (`RING_HAS_UNCONSUMED_REQUESTS`, with its clamp), after validating
    /// `req_prod`.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.latch.check()?;
        let prod = self.load_peer()?;
        self.refresh(prod)?;
        Ok(self.pending())
    }

    fn pending(&self) -> u32 {
        index::unconsumed_requests(self.size(), self.prod_seen, self.cons, self.prod_pvt)
    }

    /// Consumes the next request, copied once out of shared memory, or
    /// `None` if none is published. Validate it before acting on it.
    pub fn next_request(&mut self) -> Result<Option<Req>, RingError> {
        self.latch.check()?;
        if self.pending() == 0 {
            let prod = self.load_peer()?;
            self.refresh(prod)?;
            if self.pending() == 0 {
                return Ok(None);
            }
        }
        self.consume().map(Some)
    }

    /// Before sleeping: returns whether requests are waiting; if none, first
    /// asks the front end to notify on the next one
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). On `false`, sleep until an event.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.latch.check()?;
        if self.pending() != 0 {
            return Ok(true);
        }
        let prod = self.final_check()?;
        self.refresh(prod)?;
        Ok(self.pending() != 0)
    }

    /// Before sleeping until at least `need` requests are published (e.g.
    /// enough rx buffers for a frame): returns whether they already are; if
    /// not, first asks the front end to notify when `req_prod` reaches
    /// `req_cons + need` (the event index written, then a full fence, then
    /// `req_prod` re-read and validated). On `false`, sleep until an event.
    pub fn final_check_for_requests_at_least(&mut self, need: u32) -> Result<bool, RingError> {
        self.latch.check()?;
        self.arm_event(self.cons.wrapping_add(need))?;
        let prod = self.load_peer()?;
        self.refresh(prod)?;
        Ok(self.pending() >= need)
    }

    /// Copies `rsp` into the slot of the oldest unanswered request.
    /// [`RingError::Full`] if every consumed request is already answered.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        let room = self.unanswered() != 0;
        self.produce(rsp, room)
    }

    /// Publishes pushed responses without checking whether to notify
    /// (`RING_PUSH_RESPONSES`).
    pub fn push_responses(&mut self) -> Result<(), RingError> {
        self.publish()
    }

    /// Publishes pushed responses and returns whether the front end asked
    /// to be notified of them (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn push_responses_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.publish_and_check_notify()
    }
}
