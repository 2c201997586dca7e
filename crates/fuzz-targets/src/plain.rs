//! Shared memory over a plain private buffer, standing in for a page the
//! peer shares with us. The fuzzer plays the peer by writing it through the
//! same [`SharedMem`] accessors.

use xenshare::mem::{PageBuf, SharedMem};

/// A zeroed, page-aligned buffer that is only ever accessed through
/// [`SharedMem`] (the core's [`PageBuf`], cut to `len` bytes).
#[derive(Debug)]
pub struct PlainMem {
    buf: PageBuf,
    len: usize,
}

impl PlainMem {
    /// `len` zero bytes (whole pages underneath).
    pub fn new(len: usize) -> Self {
        Self {
            buf: PageBuf::new(len.div_ceil(4096).max(1)),
            len,
        }
    }

    /// The buffer as shared memory, exactly `len` bytes long.
    pub fn mem(&self) -> SharedMem<'_> {
        let whole = self.buf.mem();
        // `len` fits in the pages allocated for it, so the cut cannot fail.
        whole.slice(0, self.len).unwrap_or(whole)
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
