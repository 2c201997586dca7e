//! The front end: produces requests, consumes responses.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::end::{Front, Ring};
use super::index;
use super::outstanding::Outstanding;
use super::sring::Sring;
use super::RingError;
use crate::mem::SharedMemory;

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
pub type FrontRing<M, Req, Rsp> = Ring<M, Req, Rsp, Front>;

impl<M, Req, Rsp> Ring<M, Req, Rsp, Front>
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

    /// The next request slot to fill (private `req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.prod_pvt
    }

    /// The next response to consume (private `rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.cons
    }

    /// Slots free for new requests: those not holding a request whose
    /// response has not been consumed yet.
    pub fn free_requests(&self) -> u32 {
        index::free_slots(self.size(), self.prod_pvt, self.cons)
    }

    /// Whether no request can be pushed until responses are consumed.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests pushed but not yet published.
    pub fn unpublished_requests(&self) -> u32 {
        self.prod_pvt.wrapping_sub(self.published)
    }

    /// Copies `req` into the next free slot. The back end sees it only once
    /// it is published ([`FrontRing::push_requests_and_check_notify`]).
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        let room = !self.is_full();
        self.produce(req, room)
    }

    /// Publishes pushed requests without checking whether to notify
    /// (`RING_PUSH_REQUESTS`).
    pub fn push_requests(&mut self) -> Result<(), RingError> {
        self.publish()
    }

    /// Publishes pushed requests and returns whether the back end asked to
    /// be notified of them (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`). Send the
    /// event when this is true.
    pub fn push_requests_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.publish_and_check_notify()
    }

    /// Validates a `rsp_prod` just read from the back end. It may be ahead of
    /// `rsp_cons` by at most the published requests still unanswered.
    fn refresh(&mut self, prod: u32) -> Result<(), RingError> {
        let max = self.published.wrapping_sub(self.cons);
        self.accept(prod, max)
    }

    /// Responses published and not yet consumed
    /// (`RING_HAS_UNCONSUMED_RESPONSES`), after validating `rsp_prod`.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.latch.check()?;
        let prod = self.load_peer()?;
        self.refresh(prod)?;
        Ok(self.prod_seen.wrapping_sub(self.cons))
    }

    /// Consumes the next response, copied once out of shared memory, or
    /// `None` if none is published. Check it (e.g. with
    /// [`FrontRing::complete`]) before acting on it.
    pub fn next_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.latch.check()?;
        if self.cons == self.prod_seen {
            let prod = self.load_peer()?;
            self.refresh(prod)?;
            if self.cons == self.prod_seen {
                return Ok(None);
            }
        }
        self.consume().map(Some)
    }

    /// Before sleeping: returns whether responses are waiting; if none,
    /// first asks the back end to notify on the next one
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). On `false`, sleep until an event.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.latch.check()?;
        if self.cons != self.prod_seen {
            return Ok(true);
        }
        let prod = self.final_check()?;
        self.refresh(prod)?;
        Ok(self.prod_seen != self.cons)
    }

    /// Before sleeping until at least `need` responses are published
    /// (interrupt moderation: one wake-up for a batch): returns whether
    /// they already are; if not, first asks the back end to notify when
    /// `rsp_prod` reaches `rsp_cons + need` (the event index written, then a
    /// full fence, then `rsp_prod` re-read and validated). Ask only for as
    /// many as are in flight, or no notification comes. On `false`, sleep
    /// until an event.
    pub fn final_check_for_responses_at_least(&mut self, need: u32) -> Result<bool, RingError> {
        self.latch.check()?;
        if self.prod_seen.wrapping_sub(self.cons) >= need {
            return Ok(true);
        }
        self.arm_event(self.cons.wrapping_add(need))?;
        let prod = self.load_peer()?;
        self.refresh(prod)?;
        Ok(self.prod_seen.wrapping_sub(self.cons) >= need)
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
        self.latch.check()?;
        let r = inflight.finish(id, opcode);
        self.latch.guard(r)
    }
}
