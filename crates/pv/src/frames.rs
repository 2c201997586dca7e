//! A pool of this domain's own pages for grants: the core's
//! [`FrameAllocator`] over a page-aligned arena of the image.
//!
//! The arena is part of the image (its `.bss`), so the builder has mapped it
//! at `VIRT_BASE + pfn * 4096` and its machine frames come from the p2m
//! list. Runs of contiguous pages are handed out from a bitmap; a run goes
//! back when its [`PoolFrames`] is dropped, which the core only does after
//! a proven revocation. A leaked run (a peer never let go) is never freed.

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use spin::Mutex;
use xenshare::mem::SharedMem;
use xenshare::platform::{FrameAllocator, PageSet};

use crate::mm::{self, PAGE};

/// Which pages of a pool are in use: one bit per page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunBitmap {
    words: Vec<u64>,
    pages: usize,
    used: usize,
}

impl RunBitmap {
    /// All `pages` free.
    pub fn new(pages: usize) -> Self {
        Self {
            words: vec![0; pages.div_ceil(64)],
            pages,
            used: 0,
        }
    }

    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, v: bool) {
        let m = 1u64 << (i % 64);
        if v {
            self.words[i / 64] |= m;
        } else {
            self.words[i / 64] &= !m;
        }
    }

    /// Takes the lowest run of `n` free pages; returns its first page.
    pub fn alloc(&mut self, n: usize) -> Option<usize> {
        if n == 0 || n > self.pages - self.used {
            return None;
        }
        let mut start = 0;
        while start + n <= self.pages {
            match (start..start + n).find(|&i| self.get(i)) {
                Some(busy) => start = busy + 1,
                None => {
                    for i in start..start + n {
                        self.set(i, true);
                    }
                    self.used += n;
                    return Some(start);
                }
            }
        }
        None
    }

    /// Frees `n` pages from `first`. Pages that were not in use are left
    /// alone (and not counted).
    pub fn free(&mut self, first: usize, n: usize) {
        for i in first..(first + n).min(self.pages) {
            if self.get(i) {
                self.set(i, false);
                self.used -= 1;
            }
        }
    }

    /// Pages in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Pages in the pool.
    pub fn pages(&self) -> usize {
        self.pages
    }
}

/// A pool of image pages.
pub struct FramePool {
    base: usize,
    map: Mutex<RunBitmap>,
}

impl FramePool {
    /// A pool over `pages` pages at `base`.
    ///
    /// # Safety
    ///
    /// `base..base + pages * 4096` must be page-aligned memory of the image
    /// (mapped by the builder, so [`mm::va_to_mfn`] knows its frames) that
    /// nothing else uses for the rest of the domain's life.
    pub unsafe fn new(base: usize, pages: usize) -> Self {
        Self {
            base,
            map: Mutex::new(RunBitmap::new(pages)),
        }
    }

    /// Pages in use and pages in the pool.
    pub fn usage(&self) -> (usize, usize) {
        let m = self.map.lock();
        (m.used(), m.pages())
    }
}

/// The allocator handle the grant backend owns.
#[derive(Clone, Copy)]
pub struct PoolAlloc(pub &'static FramePool);

/// A run of pool pages; freed into the pool on drop.
pub struct PoolFrames {
    pool: &'static FramePool,
    first: usize,
    n: usize,
}

impl core::fmt::Debug for PoolFrames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PoolFrames")
            .field("first", &self.first)
            .field("n", &self.n)
            .finish()
    }
}

impl PoolFrames {
    /// Virtual address of page `i`.
    fn va(&self, i: usize) -> usize {
        self.pool.base + (self.first + i) * PAGE
    }
}

impl PageSet for PoolFrames {
    fn page_count(&self) -> usize {
        self.n
    }

    fn mem(&self) -> SharedMem<'_> {
        // SAFETY: the run is pool memory owned by this value (the pool
        // never hands it out twice) for as long as it lives.
        unsafe {
            SharedMem::from_raw(
                NonNull::new(self.va(0) as *mut u8).unwrap_or(NonNull::dangling()),
                self.n * PAGE,
            )
        }
    }
}

impl Drop for PoolFrames {
    fn drop(&mut self) {
        self.pool.map.lock().free(self.first, self.n);
    }
}

// SAFETY: runs are disjoint pool pages (the bitmap hands each page out once
// until its run is dropped); `frame` is the p2m entry of the page's pfn in
// the builder's mapping, the machine frame a PV grant names; `leak` forgets
// the run, so its bits stay set for ever.
unsafe impl FrameAllocator for PoolAlloc {
    type Frames = PoolFrames;

    fn alloc(&self, n: usize) -> Option<PoolFrames> {
        let first = self.0.map.lock().alloc(n)?;
        Some(PoolFrames {
            pool: self.0,
            first,
            n,
        })
    }

    fn frame(frames: &PoolFrames, i: usize) -> u64 {
        // An unknown frame maps to u64::MAX, which the table refuses to
        // grant (it does not fit a v1 entry).
        mm::va_to_mfn(frames.va(i)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_contiguous_disjoint_and_reused_after_free() {
        let mut m = RunBitmap::new(200);
        assert_eq!(m.alloc(3), Some(0));
        assert_eq!(m.alloc(64), Some(3));
        assert_eq!(m.alloc(1), Some(67));
        assert_eq!(m.used(), 68);
        m.free(3, 64);
        assert_eq!(m.used(), 4);
        // A run that does not fit the 64-page hole goes past it ...
        assert_eq!(m.alloc(65), Some(68));
        // ... and the hole is reused by one that fits.
        assert_eq!(m.alloc(64), Some(3));
        assert_eq!(m.used(), 133);
        assert_eq!(m.alloc(0), None);
        assert_eq!(m.alloc(68), None, "67 pages left");
        assert_eq!(m.alloc(67), Some(133));
    }

    #[test]
    fn the_pool_runs_dry_and_double_free_is_harmless() {
        let mut m = RunBitmap::new(8);
        for i in 0..8 {
            assert_eq!(m.alloc(1), Some(i));
        }
        assert_eq!(m.alloc(1), None, "exhausted");
        m.free(2, 1);
        m.free(2, 1);
        assert_eq!(m.used(), 7, "a page freed twice is counted once");
        assert_eq!(m.alloc(2), None, "no run of two");
        assert_eq!(m.alloc(1), Some(2));
        m.free(6, 100);
        assert_eq!(m.used(), 6, "a free past the end stops at the end");
    }
}
