//! Validated byte rings: the one producer/consumer algorithm behind vchan,
//! the PV console and the XenStore page.
//!
//! A byte ring is a power-of-two array of bytes and two free-running `u32`
//! indices, `prod` and `cons`, somewhere in shared memory. [`Layout`] says
//! where: the indices as offsets into an *index page* (a console or XenStore
//! interface page, vchan's control page) and the data as an offset into a
//! *data window* (the same page, or vchan's separately granted ring pages).
//!
//! Each end keeps its own index privately ([`ByteProducer`] the producer
//! index, [`ByteConsumer`] the consumer index) and only ever *writes* that
//! one to shared memory. The peer's index is read once per call
//! ([`ByteProducer::space`], [`ByteConsumer::ready`]) and checked before any
//! byte moves: `prod - cons` (wrapping) above the ring size means the peer's
//! index is ahead by more than the ring holds or behind what we published,
//! which is [`ByteRingError::Corrupt`]. Bytes are copied with the volatile
//! accessors of [`SharedMem`] in at most two runs (before and after the
//! wrap point), each byte fetched once, so a corrupt index can cause neither
//! an out-of-bounds access, a second fetch nor a loop.
//!
//! Ordering: the peer's index is loaded with acquire (the data it covers is
//! read, or the bytes it frees are overwritten, only after the load); our
//! index is stored with release (the data it covers is written, or read,
//! before). Moving data and publishing are separate steps, so a writer can
//! gather small writes into one index update ([`ByteProducer::push`] then
//! [`ByteProducer::publish`]), and vchan can publish through its notify
//! protocol ([`ByteProducer::publish_with`]); `write_some`/`read_some` do all
//! three steps for the simple users. Both ends are one type, [`ByteEnd`],
//! with the side as a parameter; only moving the data differs by side.
//!
//! No `unsafe` here: everything goes through [`SharedMem`].

use core::sync::atomic::{AtomicU32, Ordering};

use crate::mem::{OutOfBounds, Perm, SharedMem};

/// Where one byte ring lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Name used in errors (e.g. `"in"`, `"request"`, `"read"`).
    pub name: &'static str,
    /// Offset of the producer index in the index page.
    pub prod: usize,
    /// Offset of the consumer index in the index page.
    pub cons: usize,
    /// Offset of the byte array in the data window.
    pub data: usize,
    /// Size of the byte array: a power of two, at most 2^31.
    pub size: usize,
}

impl Layout {
    /// Checks that `size` is a power of two that free-running `u32` indices
    /// can tell apart (at most 2^31).
    pub const fn is_valid(&self) -> bool {
        self.size.is_power_of_two() && self.size <= 1 << 31
    }

    /// Bytes in flight between `prod` and `cons`, or
    /// [`ByteRingError::Corrupt`] if more than the ring holds.
    pub fn in_flight(&self, prod: u32, cons: u32) -> Result<usize, ByteRingError> {
        let used = prod.wrapping_sub(cons) as usize;
        if used > self.size {
            return Err(ByteRingError::Corrupt(self.name));
        }
        Ok(used)
    }

    /// Copies `src` into the ring at free-running index `at`, wrapping.
    fn copy_in(&self, data: SharedMem<'_>, at: u32, src: &[u8]) -> Result<(), ByteRingError> {
        let off = at as usize & (self.size - 1);
        let first = src.len().min(self.size - off);
        data.write(self.data + off, &src[..first])?;
        // The wrapped run, if any (most copies do not wrap; skipping the
        // empty second run saves a bounds check and a call on every write).
        if first < src.len() {
            data.write(self.data, &src[first..])?;
        }
        Ok(())
    }

    /// Copies bytes at free-running index `at` out of the ring, wrapping.
    fn copy_out<P: Perm>(
        &self,
        data: SharedMem<'_, P>,
        at: u32,
        dst: &mut [u8],
    ) -> Result<(), ByteRingError> {
        let off = at as usize & (self.size - 1);
        let first = dst.len().min(self.size - off);
        let (a, b) = dst.split_at_mut(first);
        data.read(self.data + off, a)?;
        if !b.is_empty() {
            data.read(self.data, b)?;
        }
        Ok(())
    }
}

/// What went wrong on a byte ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ByteRingError {
    /// The peer's index is impossible (more than the ring size in flight).
    #[error("the peer corrupted the {0} ring indices")]
    Corrupt(&'static str),
    /// The index page or data window does not hold the layout.
    #[error(transparent)]
    Memory(#[from] OutOfBounds),
}

fn cell<'m>(idx: SharedMem<'m>, off: usize) -> Result<&'m AtomicU32, ByteRingError> {
    Ok(idx.atomic_u32(off)?)
}

/// Loads the index at `off` of `idx` once, with acquire (e.g. to take over
/// an end whose own index is already in use).
pub fn load_index(idx: SharedMem<'_>, off: usize) -> Result<u32, ByteRingError> {
    Ok(cell(idx, off)?.load(Ordering::Acquire))
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Producer {}
    impl Sealed for super::Consumer {}
}

/// Which end of a byte ring: [`Producer`] or [`Consumer`]. Sealed.
pub trait ByteSide: sealed::Sealed + Clone + core::fmt::Debug {
    /// True for the producing end.
    const PRODUCER: bool;
}

/// The producing end: owns `prod`, reads `cons`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {}

/// The consuming end: owns `cons`, reads `prod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {}

impl ByteSide for Producer {
    const PRODUCER: bool = true;
}

impl ByteSide for Consumer {
    const PRODUCER: bool = false;
}

/// One end `S` of a byte ring: the index it owns (private value and the
/// value last published) and the peer's index as last read and validated.
/// Use it as [`ByteProducer`] or [`ByteConsumer`].
#[derive(Debug, Clone)]
pub struct ByteEnd<S: ByteSide> {
    layout: Layout,
    own: u32,
    published: u32,
    seen: u32,
    _side: core::marker::PhantomData<S>,
}

/// The producing end of a byte ring: its private producer index, what it
/// last published, and the consumer index it last validated.
pub type ByteProducer = ByteEnd<Producer>;

/// The consuming end of a byte ring: its private consumer index, what it
/// last published, and the producer index it last validated.
pub type ByteConsumer = ByteEnd<Consumer>;

impl<S: ByteSide> ByteEnd<S> {
    /// An end whose indices (its own and the peer's as seen) stand at
    /// `start`.
    pub const fn new(layout: Layout, start: u32) -> Self {
        Self {
            layout,
            own: start,
            published: start,
            seen: start,
            _side: core::marker::PhantomData,
        }
    }

    /// The layout.
    pub const fn layout(&self) -> &Layout {
        &self.layout
    }

    const fn offsets(&self) -> (usize, usize) {
        if S::PRODUCER {
            (self.layout.prod, self.layout.cons)
        } else {
            (self.layout.cons, self.layout.prod)
        }
    }

    /// `(prod, cons)` with the peer's index at `peer`.
    const fn pair(&self, peer: u32) -> (u32, u32) {
        if S::PRODUCER {
            (self.own, peer)
        } else {
            (peer, self.own)
        }
    }

    /// Reads the peer's index once, validates it against ours and returns
    /// the bytes in flight.
    fn sync(&mut self, idx: SharedMem<'_>) -> Result<usize, ByteRingError> {
        let peer = load_index(idx, self.offsets().1)?;
        let (prod, cons) = self.pair(peer);
        let used = self.layout.in_flight(prod, cons)?;
        self.seen = peer;
        Ok(used)
    }

    /// Bytes in flight as of the peer index last validated.
    const fn known_in_flight(&self) -> usize {
        let (prod, cons) = self.pair(self.seen);
        prod.wrapping_sub(cons) as usize
    }

    /// Bytes moved (pushed or popped) but not yet published.
    pub const fn unpublished(&self) -> usize {
        self.own.wrapping_sub(self.published) as usize
    }

    /// Publishes our index through `store` (given our index cell and its
    /// new value; it must store with at least release ordering). Returns
    /// `None` if nothing was unpublished, else what `store` returned.
    pub fn publish_with<R>(
        &mut self,
        idx: SharedMem<'_>,
        store: impl FnOnce(&AtomicU32, u32) -> R,
    ) -> Result<Option<R>, ByteRingError> {
        if self.published == self.own {
            return Ok(None);
        }
        let c = cell(idx, self.offsets().0)?;
        self.published = self.own;
        Ok(Some(store(c, self.own)))
    }

    /// Publishes our index (a release store).
    pub fn publish(&mut self, idx: SharedMem<'_>) -> Result<(), ByteRingError> {
        self.publish_with(idx, |c, v| c.store(v, Ordering::Release))?;
        Ok(())
    }
}

impl ByteEnd<Producer> {
    /// The private producer index (bytes pushed, published or not).
    pub const fn prod(&self) -> u32 {
        self.own
    }

    /// Reads the consumer index once, validates it against our private
    /// producer index and returns the free space.
    pub fn space(&mut self, idx: SharedMem<'_>) -> Result<usize, ByteRingError> {
        Ok(self.layout.size - self.sync(idx)?)
    }

    /// Free space as of the consumer index last validated (no shared
    /// memory access; never more than there really is).
    pub const fn known_space(&self) -> usize {
        self.layout.size - self.known_in_flight()
    }

    /// Copies as much of `src` as the known free space takes into the ring
    /// (in `data`) and returns how much. Not yet visible to the peer: see
    /// [`ByteEnd::publish`].
    pub fn push(&mut self, data: SharedMem<'_>, src: &[u8]) -> Result<usize, ByteRingError> {
        let n = self.known_space().min(src.len());
        if n == 0 {
            return Ok(0);
        }
        self.layout.copy_in(data, self.own, &src[..n])?;
        self.own = self.own.wrapping_add(n as u32);
        Ok(n)
    }

    /// Validates the consumer index, copies what fits and publishes it:
    /// the whole write of a simple user. Returns the bytes written (0 if
    /// the ring is full).
    pub fn write_some(
        &mut self,
        idx: SharedMem<'_>,
        data: SharedMem<'_>,
        src: &[u8],
    ) -> Result<usize, ByteRingError> {
        if self.space(idx)? == 0 || src.is_empty() {
            return Ok(0);
        }
        let n = self.push(data, src)?;
        self.publish(idx)?;
        Ok(n)
    }
}

impl ByteEnd<Consumer> {
    /// The private consumer index.
    pub const fn cons(&self) -> u32 {
        self.own
    }

    /// Reads the producer index once, validates it against our private
    /// consumer index and returns the bytes ready.
    pub fn ready(&mut self, idx: SharedMem<'_>) -> Result<usize, ByteRingError> {
        self.sync(idx)
    }

    /// Bytes ready as of the producer index last validated.
    pub const fn known_ready(&self) -> usize {
        self.known_in_flight()
    }

    /// Copies up to `dst.len()` of the known ready bytes out of the ring
    /// (each fetched once) and returns how many. The producer may reuse
    /// their room only after [`ByteEnd::publish`].
    pub fn pop<P: Perm>(
        &mut self,
        data: SharedMem<'_, P>,
        dst: &mut [u8],
    ) -> Result<usize, ByteRingError> {
        let n = self.known_ready().min(dst.len());
        if n == 0 {
            return Ok(0);
        }
        self.layout.copy_out(data, self.own, &mut dst[..n])?;
        self.own = self.own.wrapping_add(n as u32);
        Ok(n)
    }

    /// Validates the producer index, copies what is ready and gives the
    /// room back: the whole read of a simple user. Returns the bytes read
    /// (0 if the ring is empty).
    pub fn read_some<P: Perm>(
        &mut self,
        idx: SharedMem<'_>,
        data: SharedMem<'_, P>,
        dst: &mut [u8],
    ) -> Result<usize, ByteRingError> {
        if self.ready(idx)? == 0 || dst.is_empty() {
            return Ok(0);
        }
        let n = self.pop(data, dst)?;
        self.publish(idx)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageBuf;

    const L: Layout = Layout {
        name: "t",
        prod: 0,
        cons: 4,
        data: 64,
        size: 256,
    };

    #[test]
    fn bytes_wrap_and_arrive_in_order_from_any_start() {
        let page = PageBuf::new(1);
        let m = page.mem();
        for start in [0, 100, u32::MAX - 300] {
            m.atomic_u32(L.prod)
                .unwrap()
                .store(start, Ordering::Relaxed);
            m.atomic_u32(L.cons)
                .unwrap()
                .store(start, Ordering::Relaxed);
            let (mut p, mut c) = (ByteProducer::new(L, start), ByteConsumer::new(L, start));
            let (mut next, mut expect) = (0u8, 0u8);
            for round in 0..300usize {
                let len = 1 + (round * 37) % (L.size + 5);
                let data: std::vec::Vec<u8> =
                    (0..len).map(|i| next.wrapping_add(i as u8)).collect();
                let n = p.write_some(m, m, &data).unwrap();
                assert!(n <= L.size && n <= len);
                next = next.wrapping_add(n as u8);
                let mut out = std::vec![0u8; 1 + (round * 13) % L.size];
                let k = c.read_some(m, m, &mut out).unwrap();
                for &b in &out[..k] {
                    assert_eq!(b, expect);
                    expect = expect.wrapping_add(1);
                }
            }
            assert_eq!(p.prod().wrapping_sub(c.cons()) as usize, {
                let mut q = c.clone();
                q.ready(m).unwrap()
            });
        }
    }

    #[test]
    fn peer_index_too_far_ahead_or_behind_is_corrupt() {
        let page = PageBuf::new(1);
        let m = page.mem();
        let mut c = ByteConsumer::new(L, 10);
        m.atomic_u32(L.prod)
            .unwrap()
            .store(10 + 257, Ordering::Relaxed);
        assert_eq!(c.ready(m), Err(ByteRingError::Corrupt("t")));
        m.atomic_u32(L.prod).unwrap().store(9, Ordering::Relaxed);
        assert_eq!(c.ready(m), Err(ByteRingError::Corrupt("t")));
        m.atomic_u32(L.prod)
            .unwrap()
            .store(10 + 256, Ordering::Relaxed);
        assert_eq!(c.ready(m), Ok(256));

        let mut p = ByteProducer::new(L, 10);
        m.atomic_u32(L.cons).unwrap().store(11, Ordering::Relaxed);
        assert_eq!(p.space(m), Err(ByteRingError::Corrupt("t")));
        assert_eq!(p.write_some(m, m, b"x"), Err(ByteRingError::Corrupt("t")));
        m.atomic_u32(L.cons)
            .unwrap()
            .store(10u32.wrapping_sub(256), Ordering::Relaxed);
        assert_eq!(p.space(m), Ok(0));
        assert_eq!(p.write_some(m, m, b"x"), Ok(0));
    }

    #[test]
    fn pushed_bytes_stay_private_until_published() {
        let page = PageBuf::new(1);
        let m = page.mem();
        let (mut p, mut c) = (ByteProducer::new(L, 0), ByteConsumer::new(L, 0));
        assert_eq!(p.space(m), Ok(256));
        assert_eq!(p.push(m, b"abc").unwrap(), 3);
        assert_eq!(p.push(m, b"de").unwrap(), 2);
        assert_eq!(p.unpublished(), 5);
        assert_eq!(c.ready(m), Ok(0));
        let stored = p.publish_with(m, |cell, v| {
            cell.store(v, Ordering::Release);
            v
        });
        assert_eq!(stored, Ok(Some(5)));
        assert_eq!(p.publish_with(m, |_, v| v), Ok(None));
        let mut out = [0u8; 8];
        assert_eq!(c.read_some(m, m, &mut out), Ok(5));
        assert_eq!(&out[..5], b"abcde");
        assert_eq!(load_index(m, L.cons), Ok(5));
    }

    #[test]
    fn a_layout_outside_the_memory_is_an_error_not_a_panic() {
        let page = PageBuf::new(1);
        let m = page.mem().slice(0, 128).unwrap();
        let mut p = ByteProducer::new(L, 0);
        assert_eq!(p.space(m), Ok(256));
        assert!(matches!(
            p.write_some(m, m, &[1; 200]),
            Err(ByteRingError::Memory(_))
        ));
    }
}
