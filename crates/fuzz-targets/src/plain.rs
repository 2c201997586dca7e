//! Shared memory over a plain private buffer, standing in for a page the
//! peer shares with us. The fuzzer plays the peer by writing it through the
//! same [`SharedMem`] accessors.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use xenshare::mem::SharedMem;

/// A zeroed, 8-byte aligned buffer that is only ever accessed through
/// [`SharedMem`].
#[derive(Debug)]
pub struct PlainMem {
    words: Box<[AtomicU64]>,
    len: usize,
}

impl PlainMem {
    /// `len` zero bytes (rounded up to whole words internally).
    pub fn new(len: usize) -> Self {
        let words = (0..len.div_ceil(8).max(1))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self { words, len }
    }

    /// The buffer as shared memory.
    pub fn mem(&self) -> SharedMem<'_> {
        let ptr = NonNull::from(&self.words[0]).cast::<u8>();
        // SAFETY: the buffer is `len` bytes (or more) long, lives as long as
        // the returned borrow of `self`, and is made of atomics, so writes
        // through a pointer derived from a shared reference are allowed
        // (interior mutability); nothing reaches it except through
        // `SharedMem`'s volatile and atomic accessors.
        unsafe { SharedMem::from_raw(ptr, self.len) }
    }

    /// A private copy of the whole buffer.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // In bounds by construction.
        let _ = self.mem().read(0, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mem_round_trips() {
        let p = PlainMem::new(4096);
        p.mem().write(100, b"abc").unwrap();
        assert_eq!(&p.snapshot()[100..103], b"abc");
        assert!(p.mem().atomic_u32(4092).is_ok());
        assert!(p.mem().atomic_u32(4096).is_err());
    }
}
