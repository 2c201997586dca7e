//! The front end's record of requests in flight, to check response ids.

use alloc::vec::Vec;
use core::fmt;

use super::{Latch, RingError};

/// Requests in flight, by id: a front end takes an id with
/// [`Outstanding::start`] for each request it sends (recording the opcode
/// and any context `T` it needs back, e.g. which pages the request granted),
/// and gives each response to [`crate::ring::FrontRing::complete`], which
/// accepts it only if its id is in range, currently outstanding (so never a
/// duplicate) and its opcode is the one sent.
///
/// A violation breaks the tracker as well as the ring: afterwards only
/// [`Outstanding::drain`] works, which hands back every context still in
/// flight so the driver can tear down (and, for grants, revoke — which may
/// fail while the peer still holds them).
pub struct Outstanding<T = ()> {
    slots: Vec<Option<(u32, T)>>,
    free: Vec<u32>,
    latch: Latch,
}

impl<T> fmt::Debug for Outstanding<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outstanding")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight())
            .field("error", &self.latch.cause())
            .finish()
    }
}

impl<T> Outstanding<T> {
    /// A tracker for ids `0..capacity` (usually the ring's size; at most
    /// `u32::MAX` ids are used).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(u32::MAX as usize);
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || None);
        // Popped from the end: ids are handed out lowest first.
        let free = (0..capacity as u32).rev().collect();
        Self {
            slots,
            free,
            latch: Latch::default(),
        }
    }

    /// Number of ids.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether `id` is in flight.
    pub fn is_outstanding(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// The opcode and context of an id in flight.
    pub fn get(&self, id: u64) -> Option<(u32, &T)> {
        let slot = self.slots.get(usize::try_from(id).ok()?)?;
        slot.as_ref().map(|(op, ctx)| (*op, ctx))
    }

    /// Takes a free id for a request with `opcode`, remembering `ctx` until
    /// its response. [`RingError::Full`] if every id is in flight.
    pub fn start(&mut self, opcode: u32, ctx: T) -> Result<u64, RingError> {
        self.latch.check()?;
        let id = self.free.pop().ok_or(RingError::Full)?;
        // Free ids always index an empty slot; the check keeps a logic error
        // from overwriting a live context.
        match self.slots.get_mut(id as usize) {
            Some(slot @ None) => {
                *slot = Some((opcode, ctx));
                Ok(u64::from(id))
            }
            _ => Err(self
                .latch
                .trip(RingError::NotOutstanding { id: u64::from(id) })),
        }
    }

    /// Gives back an id whose request was never sent (pushing it failed),
    /// with its context.
    pub fn cancel(&mut self, id: u64) -> Option<T> {
        let (_, ctx) = self.slots.get_mut(usize::try_from(id).ok()?)?.take()?;
        self.free.push(id as u32);
        Some(ctx)
    }

    /// Checks a response's `id` and `opcode` and ends its request, returning
    /// its context. On a violation the id stays in flight (its request's
    /// resources may still be in the peer's hands) and the tracker breaks.
    pub(crate) fn finish(&mut self, id: u64, opcode: u32) -> Result<T, RingError> {
        self.latch.check()?;
        let r = self.check(id, opcode);
        self.latch.guard(r)?;
        self.cancel(id).ok_or(RingError::NotOutstanding { id })
    }

    fn check(&self, id: u64, opcode: u32) -> Result<(), RingError> {
        let limit = self.slots.len() as u64;
        if id >= limit {
            return Err(RingError::BadId { id, limit });
        }
        match self.get(id) {
            None => Err(RingError::NotOutstanding { id }),
            Some((expected, _)) if expected != opcode => Err(RingError::WrongOpcode {
                id,
                expected,
                got: opcode,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Whether a violation has broken the tracker.
    pub fn is_broken(&self) -> bool {
        self.latch.is_tripped()
    }

    /// The violation that broke the tracker, if any.
    pub fn error(&self) -> Option<RingError> {
        self.latch.cause().copied()
    }

    /// Ends every request in flight, returning `(id, opcode, ctx)` for each,
    /// for teardown. Works on a broken tracker.
    pub fn drain(&mut self) -> Vec<(u64, u32, T)> {
        let mut out = Vec::with_capacity(self.in_flight());
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some((op, ctx)) = slot.take() {
                out.push((id as u64, op, ctx));
            }
        }
        self.free.clear();
        self.free.extend((0..self.slots.len() as u32).rev());
        out
    }
}
