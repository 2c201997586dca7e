//! A ring kept together with the share or mapping its memory belongs to.
//!
//! [`crate::ring::FrontRing`] and [`crate::ring::BackRing`] borrow their
//! shared memory for a lifetime `'a`, which is right for a loop that owns
//! both on its stack but cannot be stored next to the owner in one driver
//! struct. [`RingIn`] is that struct, done once: the owner is boxed (so the
//! memory it describes never moves, even if a platform kept the pages inside
//! the owner value), the ring is built over a `'static` view of it, and the
//! two are only ever taken apart by dropping the ring first. The `'static`
//! view never leaves this type except inside the ring itself.

use alloc::boxed::Box;

use crate::grant::{Mapping, Share};
use crate::mem::SharedMem;
use crate::platform::{ForeignMapper, GrantBackend};

/// Something owning shared memory.
pub(crate) trait MemOwner {
    fn owned_mem(&self) -> SharedMem<'_>;
}

impl<B: GrantBackend> MemOwner for Share<B> {
    fn owned_mem(&self) -> SharedMem<'_> {
        self.mem()
    }
}

impl<M: ForeignMapper> MemOwner for Mapping<M> {
    fn owned_mem(&self) -> SharedMem<'_> {
        self.mem()
    }
}

/// A ring `R` over the memory of `O`. Field order matters: the ring is
/// dropped before its owner.
pub(crate) struct RingIn<R, O> {
    ring: R,
    owner: Box<O>,
}

impl<R, O: MemOwner> RingIn<R, O> {
    /// Builds the ring with `make` over the owner's memory.
    pub(crate) fn new<E>(
        owner: O,
        make: impl FnOnce(SharedMem<'static>) -> Result<R, E>,
    ) -> Result<Self, (E, O)> {
        let owner = Box::new(owner);
        let mem = owner.owned_mem();
        let (ptr, len) = (mem.as_ptr(), mem.len());
        let Some(ptr) = core::ptr::NonNull::new(ptr.cast_mut()) else {
            unreachable!("shared memory windows are never null")
        };
        // SAFETY: the window is the memory of `*owner`, valid for reads and
        // writes (by volatile/atomic access only) for as long as the owner
        // lives. The owner is boxed, never moved out of the box while the
        // ring exists, and `RingIn` drops the ring before the box (field
        // order; `into_owner` drops it explicitly first). The `'static` view
        // is only stored inside `ring`, which never hands it out beyond
        // `RingIn`'s borrow (crate-private type, no accessor returns it).
        let mem = unsafe { SharedMem::from_raw(ptr, len) };
        match make(mem) {
            Ok(ring) => Ok(Self { ring, owner }),
            Err(e) => Err((e, *owner)),
        }
    }
}

impl<R, O> RingIn<R, O> {
    pub(crate) fn ring(&mut self) -> &mut R {
        &mut self.ring
    }

    pub(crate) fn ring_ref(&self) -> &R {
        &self.ring
    }

    pub(crate) fn owner(&self) -> &O {
        &self.owner
    }

    /// Drops the ring, then gives the owner back.
    pub(crate) fn into_owner(self) -> O {
        let Self { ring, owner } = self;
        drop(ring);
        *owner
    }
}
