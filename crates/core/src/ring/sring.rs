//! The shared ring itself: header indices and entry slots in a [`SharedMem`].

use core::mem::{align_of, offset_of, size_of};
use core::sync::atomic::AtomicU32;

use xenshare_abi::ring::{ring_size, SringHeader, SRING_HEADER_SIZE};
use xenshare_abi::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::RingError;
use crate::mem::SharedMem;

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

/// The shared part of a ring, with its geometry checked once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sring<'a> {
    pub(crate) req_prod: &'a AtomicU32,
    pub(crate) req_event: &'a AtomicU32,
    pub(crate) rsp_prod: &'a AtomicU32,
    pub(crate) rsp_event: &'a AtomicU32,
    pvt: SharedMem<'a>,
    mem: SharedMem<'a>,
    nr_ents: u32,
    entry_size: usize,
}

impl<'a> Sring<'a> {
    /// Checks that `mem` can hold a ring of `Req`/`Rsp` and finds its header.
    pub(crate) fn new<Req, Rsp>(mem: SharedMem<'a>) -> Result<Self, RingError> {
        let entry_size = entry_size::<Req, Rsp>();
        let nr = nr_entries::<Req, Rsp>(mem.len());
        let bad = RingError::Region {
            bytes: mem.len(),
            entry_size,
        };
        if nr == 0 || nr > MAX_ENTRIES {
            return Err(bad);
        }
        let word = |off: usize| mem.atomic_u32(off).map_err(|_| bad);
        Ok(Self {
            req_prod: word(offset_of!(SringHeader, req_prod))?,
            req_event: word(offset_of!(SringHeader, req_event))?,
            rsp_prod: word(offset_of!(SringHeader, rsp_prod))?,
            rsp_event: word(offset_of!(SringHeader, rsp_event))?,
            pvt: mem
                .slice(offset_of!(SringHeader, pvt), 4)
                .map_err(|_| bad)?,
            mem,
            nr_ents: nr as u32,
            entry_size,
        })
    }

    pub(crate) fn nr_ents(&self) -> u32 {
        self.nr_ents
    }

    /// The protocol-private header bytes (`pvt`, e.g. netif's smartpoll flag).
    pub(crate) fn pvt(&self) -> SharedMem<'a> {
        self.pvt
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
        self.mem.write_obj(0, &header)?;
        Ok(())
    }

    fn offset(&self, idx: u32) -> usize {
        SRING_HEADER_SIZE + (idx & (self.nr_ents - 1)) as usize * self.entry_size
    }

    /// Copies the entry at `idx` out of shared memory, once.
    pub(crate) fn read<T: FromBytes + IntoBytes>(&self, idx: u32) -> Result<T, RingError> {
        Ok(self.mem.read_obj(self.offset(idx))?)
    }

    /// Copies `v` into the slot of `idx`.
    pub(crate) fn write<T: IntoBytes + Immutable>(&self, idx: u32, v: &T) -> Result<(), RingError> {
        Ok(self.mem.write_obj(self.offset(idx), v)?)
    }
}
