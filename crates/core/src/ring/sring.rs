//! The shared ring itself: header indices and entry slots in a [`SharedMem`].

use core::mem::{align_of, offset_of, size_of};
use core::sync::atomic::AtomicU32;

use xenshare_abi::ring::{ring_size, SringHeader, SRING_HEADER_SIZE};
use xenshare_abi::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::RingError;
use crate::mem::{SharedMem, SharedMemory};

/// Bytes in a ring of order `order` (`PAGE_SIZE << order`): rings of more
/// than one page are granted as `1 << order` contiguous pages.
pub const fn ring_bytes(order: u32) -> usize {
    PAGE_SIZE << order
}

/// Size of one slot of a ring of `Req`/`Rsp`: a slot is the C union of the
/// two, so the larger size rounded up to the stricter alignment.
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() {
        size_of::<Req>()
    } else {
        size_of::<Rsp>()
    };
    let align = if align_of::<Req>() > align_of::<Rsp>() {
        align_of::<Req>()
    } else {
        align_of::<Rsp>()
    };
    size.div_ceil(align) * align
}

/// Slots in a ring of `bytes` bytes of `Req`/`Rsp` (`__RING_SIZE`): a power
/// of two, or 0 if not even one fits.
pub const fn nr_entries<Req, Rsp>(bytes: usize) -> usize {
    ring_size(bytes, entry_size::<Req, Rsp>())
}

/// A ring larger than this would let indices a full turn apart look equal.
const MAX_ENTRIES: usize = 1 << 31;

/// The shared part of a ring, with its geometry checked once, over the
/// memory owner `M`.
#[derive(Debug)]
pub(crate) struct Sring<M> {
    mem: M,
    nr_ents: u32,
    entry_size: usize,
}

/// The four header indices, borrowed from the ring's memory for one call.
pub(crate) struct Cells<'m> {
    pub(crate) req_prod: &'m AtomicU32,
    pub(crate) req_event: &'m AtomicU32,
    pub(crate) rsp_prod: &'m AtomicU32,
    pub(crate) rsp_event: &'m AtomicU32,
}

const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);
const PVT: usize = offset_of!(SringHeader, pvt);

impl<M: SharedMemory> Sring<M> {
    /// Checks that `mem` can hold a ring of `Req`/`Rsp` and finds its header.
    pub(crate) fn new<Req, Rsp>(mem: M) -> Result<Self, RingError> {
        let entry_size = entry_size::<Req, Rsp>();
        let window = mem.shared();
        let nr = nr_entries::<Req, Rsp>(window.len());
        let bad = RingError::Region {
            bytes: window.len(),
            entry_size,
        };
        if nr == 0 || nr > MAX_ENTRIES {
            return Err(bad);
        }
        // The header words must be reachable (4-aligned region).
        for off in [REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT] {
            window.atomic_u32(off).map_err(|_| bad)?;
        }
        Ok(Self {
            mem,
            nr_ents: nr as u32,
            entry_size,
        })
    }

    /// The header indices (checked again: the memory owner promises the
    /// same window every time, but a broken promise is an error, not UB).
    pub(crate) fn cells(&self) -> Result<Cells<'_>, RingError> {
        let m = self.mem.shared();
        Ok(Cells {
            req_prod: m.atomic_u32(REQ_PROD)?,
            req_event: m.atomic_u32(REQ_EVENT)?,
            rsp_prod: m.atomic_u32(RSP_PROD)?,
            rsp_event: m.atomic_u32(RSP_EVENT)?,
        })
    }

    /// The protocol-private header bytes (`pvt`, e.g. netif's smartpoll flag).
    pub(crate) fn pvt(&self) -> Result<SharedMem<'_>, RingError> {
        Ok(self.mem.shared().slice(PVT, 4)?)
    }

    /// `SHARED_RING_INIT`: both producers at `start`, both events one past
    /// it, and the rest of the header zero.
    pub(crate) fn init(&self, start: u32) -> Result<(), RingError> {
        let next = start.wrapping_add(1);
        let header = SringHeader {
            req_prod: start,
            req_event: next,
            rsp_prod: start,
            rsp_event: next,
            pvt: [0; 4],
            _pad: [0; 44],
        };
        self.mem.shared().write_obj(0, &header)?;
        Ok(())
    }

    fn offset(&self, idx: u32) -> usize {
        SRING_HEADER_SIZE + (idx & (self.nr_ents - 1)) as usize * self.entry_size
    }

    /// Copies the entry at `idx` out of shared memory, once.
    pub(crate) fn read<T: FromBytes + IntoBytes>(&self, idx: u32) -> Result<T, RingError> {
        Ok(self.mem.shared().read_obj(self.offset(idx))?)
    }

    /// Copies `v` into the slot of `idx`.
    pub(crate) fn write<T: IntoBytes + Immutable>(&self, idx: u32, v: &T) -> Result<(), RingError> {
        Ok(self.mem.shared().write_obj(self.offset(idx), v)?)
    }
}

impl<M> Sring<M> {
    pub(crate) fn nr_ents(&self) -> u32 {
        self.nr_ents
    }

    /// The memory owner, borrowed.
    pub(crate) fn memory(&self) -> &M {
        &self.mem
    }

    /// Gives the memory owner back.
    pub(crate) fn into_memory(self) -> M {
        self.mem
    }
}
