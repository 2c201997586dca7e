//! A domain's RAM and its frame allocator.
//!
//! Two layouts, one interface:
//! * **single** — one memfd of `pages` frames with a first-fit allocator of
//!   contiguous runs. The in-process fast path: a run is a window straight
//!   into one mapping, no system call per share.
//! * **chunked** — for a domain living in another process (see the
//!   `xenshare-host` crate): RAM is a set of memfd chunks, one per
//!   allocation (a share of n pages is one chunk), each given a fresh,
//!   never-reused range of frame numbers. A chunk's fd can be passed to a
//!   mapper that was granted it, so a mapper only ever receives memory it
//!   was granted; a freed chunk is retired (its frames are never valid
//!   again) rather than reused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use xenshare::mem::SharedMem;
use xenshare::platform::{FrameAllocator, PageSet};
use xenshare_abi::PAGE_SIZE;

use crate::region::{Region, RegionError};

/// Frame numbers handed to chunks start here (frame 0 is never valid, and
/// they must fit the 32-bit frame field of a v1 grant entry).
const FIRST_CHUNK_GFN: u64 = 0x100;

/// Errors of chunked memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The memory is not chunked (or not single) for this operation.
    #[error("operation not supported by this memory layout")]
    WrongLayout,
    /// The domain's page limit would be exceeded.
    #[error("domain memory limit of {limit} pages reached")]
    Full {
        /// The limit.
        limit: u64,
    },
    /// The frame number space is exhausted.
    #[error("frame numbers exhausted")]
    NoFrames,
}

enum Layout {
    Single {
        region: Arc<Region>,
        used: Mutex<Vec<bool>>,
        /// No frame below this one is free (changed only under `used`'s
        /// lock): first-fit allocation starts its scan here instead of at
        /// frame 0, so with many frames held (10^5 granted pages) an
        /// allocation costs O(1), not a scan of every held frame, and
        /// still returns exactly the frames a scan from 0 would.
        first_free: AtomicU64,
    },
    Chunked {
        chunks: Mutex<Chunks>,
    },
}

#[derive(Default)]
struct Chunks {
    /// First frame -> chunk.
    map: BTreeMap<u64, Arc<Region>>,
    next_gfn: u64,
    pages: u64,
}

impl Chunks {
    fn find(&self, frame: u64) -> Option<(u64, &Arc<Region>)> {
        let (first, r) = self.map.range(..=frame).next_back()?;
        let pages = (r.len() / PAGE_SIZE) as u64;
        (frame < first + pages).then_some((*first, r))
    }
}

/// One frame located in its backing memfd.
#[derive(Clone)]
pub struct FramePage {
    /// The memfd mapping holding the frame.
    pub region: Arc<Region>,
    /// Page index of the frame inside `region`.
    pub page: u64,
}

impl FramePage {
    /// The frame's 4 KiB of memory.
    pub fn mem(&self) -> Option<SharedMem<'_>> {
        let off = usize::try_from(self.page).ok()?.checked_mul(PAGE_SIZE)?;
        self.region.mem().slice(off, PAGE_SIZE).ok()
    }
}

/// A domain's memory and its frame allocator.
pub struct DomainMemory {
    layout: Layout,
    pages: u64,
    leaked: AtomicU64,
}

impl DomainMemory {
    /// `pages` frames of zeroed memory in one memfd (the in-process layout).
    pub fn new(name: &str, pages: u64) -> Result<Self, RegionError> {
        let region = Region::new(name, pages as usize * PAGE_SIZE)?;
        Ok(Self {
            layout: Layout::Single {
                region: Arc::new(region),
                used: Mutex::new(vec![false; pages as usize]),
                first_free: AtomicU64::new(0),
            },
            pages,
            leaked: AtomicU64::new(0),
        })
    }

    /// Chunked memory of at most `pages` frames in total (the layout of a
    /// domain living in another process).
    pub fn new_chunked(pages: u64) -> Self {
        Self {
            layout: Layout::Chunked {
                chunks: Mutex::new(Chunks {
                    next_gfn: FIRST_CHUNK_GFN,
                    ..Chunks::default()
                }),
            },
            pages,
            leaked: AtomicU64::new(0),
        }
    }

    /// Whether this memory is chunked.
    pub fn is_chunked(&self) -> bool {
        matches!(self.layout, Layout::Chunked { .. })
    }

    /// The page limit (single: the number of frames).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Frames currently allocated (leaked ones included).
    pub fn used_pages(&self) -> u64 {
        match &self.layout {
            Layout::Single { used, .. } => lock(used).iter().filter(|u| **u).count() as u64,
            Layout::Chunked { chunks } => lock(chunks).pages,
        }
    }

    /// Frames abandoned forever because a peer never released them.
    pub fn leaked_pages(&self) -> u64 {
        self.leaked.load(Ordering::Relaxed)
    }

    /// Whether a frame is allocated.
    pub fn is_allocated(&self, frame: u64) -> bool {
        match &self.layout {
            Layout::Single { used, .. } => lock(used).get(frame as usize).copied().unwrap_or(false),
            Layout::Chunked { chunks } => lock(chunks).find(frame).is_some(),
        }
    }

    /// Whether `frame` names memory of this domain (in range, or in a live
    /// chunk).
    pub fn frame_exists(&self, frame: u64) -> bool {
        match &self.layout {
            Layout::Single { .. } => frame < self.pages,
            Layout::Chunked { chunks } => lock(chunks).find(frame).is_some(),
        }
    }

    /// The backing memfd region of single memory (`None` when chunked).
    pub fn region(&self) -> Option<&Region> {
        match &self.layout {
            Layout::Single { region, .. } => Some(region),
            Layout::Chunked { .. } => None,
        }
    }

    /// One frame's memory, if it exists, borrowed from single memory
    /// (`None` when chunked: use [`DomainMemory::frame_page`]).
    pub fn frame_mem(&self, frame: u64) -> Option<SharedMem<'_>> {
        let off = usize::try_from(frame).ok()?.checked_mul(PAGE_SIZE)?;
        self.region()?.mem().slice(off, PAGE_SIZE).ok()
    }

    /// Where `frame` lives, in either layout.
    pub fn frame_page(&self, frame: u64) -> Option<FramePage> {
        match &self.layout {
            Layout::Single { region, .. } => (frame < self.pages).then(|| FramePage {
                region: region.clone(),
                page: frame,
            }),
            Layout::Chunked { chunks } => {
                let c = lock(chunks);
                let (first, r) = c.find(frame)?;
                Some(FramePage {
                    region: r.clone(),
                    page: frame - first,
                })
            }
        }
    }

    /// Adds a chunk (chunked memory only): gives it a fresh frame range,
    /// never used before, and returns its first frame.
    pub fn add_chunk(&self, region: Region) -> Result<u64, MemoryError> {
        let Layout::Chunked { chunks } = &self.layout else {
            return Err(MemoryError::WrongLayout);
        };
        let n = (region.len() / PAGE_SIZE) as u64;
        let mut c = lock(chunks);
        if c.pages + n > self.pages {
            return Err(MemoryError::Full { limit: self.pages });
        }
        let first = c.next_gfn;
        let end = first.checked_add(n).ok_or(MemoryError::NoFrames)?;
        if end > u64::from(u32::MAX) {
            return Err(MemoryError::NoFrames);
        }
        c.next_gfn = end;
        c.pages += n;
        c.map.insert(first, Arc::new(region));
        Ok(first)
    }

    /// Retires the chunk starting at `first` (chunked memory only): its
    /// frames are never valid again. Mappings already made keep their own
    /// reference to the memory. Returns false if there is no such chunk.
    pub fn retire_chunk(&self, first: u64) -> bool {
        self.take_chunk(first).is_some()
    }

    /// As [`DomainMemory::retire_chunk`], handing back the chunk's memory
    /// (still alive while mappings hold it), so a host can tell when its
    /// memfd is finally closed.
    pub fn take_chunk(&self, first: u64) -> Option<Arc<Region>> {
        let Layout::Chunked { chunks } = &self.layout else {
            return None;
        };
        let mut c = lock(chunks);
        let r = c.map.remove(&first)?;
        c.pages -= (r.len() / PAGE_SIZE) as u64;
        Some(r)
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves
/// its data consistent at each step.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An owned run of contiguous frames; freed (single) or retired (chunked)
/// on drop.
pub struct FrameRun {
    mem: Arc<DomainMemory>,
    first: u64,
    count: usize,
    /// The run's own chunk (chunked memory); `None` for a run of single
    /// memory, which lives at page `first` of `mem`'s one region (no second
    /// reference count to take and drop per allocation). Held so the chunk
    /// stays mapped while `view` is used.
    _chunk: Option<Arc<Region>>,
    /// The run's memory, resolved once at allocation: `mem()` is called on
    /// every access of a share (drivers call it per request) and used to
    /// redo the region lookup and slicing each time. Valid as long as the
    /// run holds `mem` (and `chunk`), which keep the region mapped; only
    /// ever handed out tied to a borrow of the run.
    view: SharedMem<'static>,
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

    #[inline]
    fn mem(&self) -> SharedMem<'_> {
        self.view
    }
}

impl FrameRun {
    /// The run of `count` frames from `first` of `mem` (inside `chunk` for
    /// chunked memory), with its view resolved; `None` if the frames are
    /// not inside their region.
    fn new(
        mem: Arc<DomainMemory>,
        first: u64,
        count: usize,
        chunk: Option<Arc<Region>>,
    ) -> Option<FrameRun> {
        let view = {
            let (region, offset) = match (&chunk, &mem.layout) {
                (Some(chunk), _) => (&**chunk, 0),
                (None, Layout::Single { region, .. }) => (&**region, usize::try_from(first).ok()?),
                (None, Layout::Chunked { .. }) => return None,
            };
            let m = region
                .mem()
                .slice(
                    offset.checked_mul(PAGE_SIZE)?,
                    count.checked_mul(PAGE_SIZE)?,
                )
                .ok()?;
            // SAFETY: the region is mmap'd for as long as it lives, and the
            // run keeps it alive (`mem` owns a single region, `chunk` a
            // chunk) for as long as the view is kept; `mem()` hands the
            // view out only tied to a borrow of the run.
            unsafe { m.detach::<'static>() }
        };
        Some(FrameRun {
            mem,
            first,
            count,
            _chunk: chunk,
            view,
        })
    }
}

impl Drop for FrameRun {
    fn drop(&mut self) {
        match &self.mem.layout {
            Layout::Single {
                used, first_free, ..
            } => {
                let mut used = lock(used);
                for f in self.first..self.first + self.count as u64 {
                    if let Some(u) = used.get_mut(f as usize) {
                        *u = false;
                    }
                }
                // Changed only under `used`'s lock: a plain load and store.
                if self.first < first_free.load(Ordering::Relaxed) {
                    first_free.store(self.first, Ordering::Relaxed);
                }
            }
            Layout::Chunked { .. } => {
                self.mem.retire_chunk(self.first);
            }
        }
    }
}

/// The frame allocator of a domain (a handle on its memory).
#[derive(Clone)]
pub struct SimFrames(pub Arc<DomainMemory>);

// SAFETY: runs are marked used (or are fresh chunks) until dropped, `frame`
// is the run's own frame number in this domain's memory, and a leaked run is
// forgotten with its used marks set (chunks: never reissued).
unsafe impl FrameAllocator for SimFrames {
    type Frames = FrameRun;

    fn alloc(&self, n: usize) -> Option<FrameRun> {
        if n == 0 {
            return None;
        }
        match &self.0.layout {
            Layout::Single {
                used, first_free, ..
            } => {
                let mut used = lock(used);
                let start = first_free.load(Ordering::Relaxed) as usize;
                let mut run = 0;
                for i in start..used.len() {
                    if used[i] {
                        run = 0;
                        continue;
                    }
                    run += 1;
                    if run == n {
                        let first = i + 1 - n;
                        used[first..=i].iter_mut().for_each(|u| *u = true);
                        if first == start {
                            first_free.store((i + 1) as u64, Ordering::Relaxed);
                        }
                        return FrameRun::new(self.0.clone(), first as u64, n, None);
                    }
                }
                None
            }
            Layout::Chunked { .. } => {
                let region = Region::new("xenshare-chunk", n.checked_mul(PAGE_SIZE)?).ok()?;
                let first = self.0.add_chunk(region).ok()?;
                let page = self.0.frame_page(first)?;
                FrameRun::new(self.0.clone(), first, n, Some(page.region))
            }
        }
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
