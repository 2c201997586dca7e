//! A domain's RAM: a memfd of frames with a first-fit allocator of
//! contiguous runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use xenshare::mem::SharedMem;
use xenshare::platform::{FrameAllocator, PageSet};
use xenshare_abi::PAGE_SIZE;

use crate::region::{Region, RegionError};

/// A domain's memory and its frame allocator.
pub struct DomainMemory {
    region: Region,
    pages: u64,
    used: Mutex<Vec<bool>>,
    leaked: AtomicU64,
}

impl DomainMemory {
    /// `pages` frames of zeroed memory.
    pub fn new(name: &str, pages: u64) -> Result<Self, RegionError> {
        let region = Region::new(name, pages as usize * PAGE_SIZE)?;
        Ok(Self {
            region,
            pages,
            used: Mutex::new(vec![false; pages as usize]),
            leaked: AtomicU64::new(0),
        })
    }

    /// Number of frames.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Frames currently allocated (leaked ones included).
    pub fn used_pages(&self) -> u64 {
        self.lock().iter().filter(|u| **u).count() as u64
    }

    /// Frames abandoned forever because a peer never released them.
    pub fn leaked_pages(&self) -> u64 {
        self.leaked.load(Ordering::Relaxed)
    }

    /// Whether a frame is allocated.
    pub fn is_allocated(&self, frame: u64) -> bool {
        self.lock().get(frame as usize).copied().unwrap_or(false)
    }

    /// The backing memfd region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// One frame's memory, if it exists.
    pub fn frame_mem(&self, frame: u64) -> Option<SharedMem<'_>> {
        let off = usize::try_from(frame).ok()?.checked_mul(PAGE_SIZE)?;
        self.region.mem().slice(off, PAGE_SIZE).ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        // A panic while holding this lock cannot leave the bitmap half
        // updated (single assignments), so poisoning is ignored.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An owned run of contiguous frames; freed on drop.
pub struct FrameRun {
    mem: Arc<DomainMemory>,
    first: u64,
    count: usize,
}

impl FrameRun {
    /// The first frame number.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The frame numbers.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.first..self.first + self.count as u64
    }
}

impl std::fmt::Debug for FrameRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FrameRun({}..{})",
            self.first,
            self.first + self.count as u64
        )
    }
}

impl PageSet for FrameRun {
    fn page_count(&self) -> usize {
        self.count
    }

    fn mem(&self) -> SharedMem<'_> {
        let whole = self.mem.region.mem();
        match whole.slice(self.first as usize * PAGE_SIZE, self.count * PAGE_SIZE) {
            Ok(m) => m,
            // The allocator only hands out runs inside the region.
            Err(_) => unreachable!("frame run outside its domain's memory"),
        }
    }
}

impl Drop for FrameRun {
    fn drop(&mut self) {
        let mut used = self.mem.lock();
        for f in self.first..self.first + self.count as u64 {
            if let Some(u) = used.get_mut(f as usize) {
                *u = false;
            }
        }
    }
}

/// The frame allocator of a domain (a handle on its memory).
#[derive(Clone)]
pub struct SimFrames(pub Arc<DomainMemory>);

impl FrameAllocator for SimFrames {
    type Frames = FrameRun;

    fn alloc(&self, n: usize) -> Option<FrameRun> {
        if n == 0 {
            return None;
        }
        let mut used = self.0.lock();
        let mut run = 0;
        for i in 0..used.len() {
            if used[i] {
                run = 0;
                continue;
            }
            run += 1;
            if run == n {
                let first = i + 1 - n;
                used[first..=i].iter_mut().for_each(|u| *u = true);
                return Some(FrameRun {
                    mem: self.0.clone(),
                    first: first as u64,
                    count: n,
                });
            }
        }
        None
    }

    fn frame(frames: &FrameRun, i: usize) -> u64 {
        frames.first + i as u64
    }

    fn leak(&self, frames: FrameRun) {
        self.0
            .leaked
            .fetch_add(frames.count as u64, Ordering::Relaxed);
        std::mem::forget(frames);
    }
}
