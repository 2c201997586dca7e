//! memfd-backed memory regions: guest RAM, grant tables, shared info.
//!
//! All of the emulator's `unsafe` mmap work lives here. Memory is a memfd so
//! that a later multi-process mode can pass it to other processes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use xenshare::mem::{ReadOnly, SharedMem};
use xenshare_abi::PAGE_SIZE;

/// Errors creating regions.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A system call failed.
    #[error("{what}: {err}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The error.
        err: rustix::io::Errno,
    },
    /// A size of zero or not a whole number of pages.
    #[error("bad region size {0}")]
    BadSize(usize),
    /// An fd from elsewhere is not a memfd sealed against shrinking.
    #[error("not a sealed memfd")]
    NotSealed,
    /// An fd from elsewhere is not a regular file in shared memory (tmpfs):
    /// a pipe, socket, device, hugetlbfs or disk file.
    #[error("not a shared-memory file (memfd)")]
    NotShmem,
    /// An fd from elsewhere does not have the size announced with it.
    #[error("memfd of {got} bytes where {want} were announced")]
    WrongSize {
        /// The announced size.
        want: usize,
        /// The file's size.
        got: usize,
    },
}

/// `TMPFS_MAGIC`: the file system memfds (without `MFD_HUGETLB`) live on.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Largest region accepted from another process, in bytes.
pub const MAX_FOREIGN_REGION: usize = 1 << 36;

/// A shared, writable mapping of a whole memfd.
pub struct Region {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory reached only through SharedMem's
// volatile/atomic accessors; the pointer stays valid until drop.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a zero-filled memfd of `len` bytes and maps it. The memfd
    /// is sealed against shrinking and growing, so another process it is
    /// passed to cannot make our mapping fault.
    pub fn new(name: &str, len: usize) -> Result<Self, RegionError> {
        Self::create(
            name,
            len,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
    }

    /// As [`Region::new`], but the seal set is left open (not
    /// `F_SEAL_SEAL`): a memfd another process may later seal against new
    /// writers (`F_SEAL_FUTURE_WRITE`, see [`Region::seal_future_write`])
    /// before it hands the memory to a read-only mapper.
    pub fn new_share(name: &str, len: usize) -> Result<Self, RegionError> {
        Self::create(name, len, SealFlags::SHRINK | SealFlags::GROW)
    }

    fn create(name: &str, len: usize, seals: SealFlags) -> Result<Self, RegionError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::BadSize(len));
        }
        let fd =
            memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(|err| {
                RegionError::Os {
                    what: "memfd_create",
                    err,
                }
            })?;
        ftruncate(&fd, len as u64).map_err(|err| RegionError::Os {
            what: "ftruncate",
            err,
        })?;
        fcntl_add_seals(&fd, seals).map_err(|err| RegionError::Os {
            what: "F_ADD_SEALS",
            err,
        })?;
        Self::map(fd, len, true)
    }

    /// Seals the memory against every new writer, in every process
    /// (`F_SEAL_FUTURE_WRITE`): no new writable shared mapping, no
    /// `write`/`fallocate` through any fd (even one reopened read-write
    /// through `/proc/self/fd`), and read-only shared mappings cannot be
    /// `mprotect`ed writable. Mappings that were writable before (the
    /// owner's, this one) stay writable. Irreversible.
    pub fn seal_future_write(&self) -> Result<(), RegionError> {
        let seals = fcntl_get_seals(&self.fd).map_err(|err| RegionError::Os {
            what: "F_GET_SEALS",
            err,
        })?;
        if seals.contains(SealFlags::FUTURE_WRITE) || seals.contains(SealFlags::WRITE) {
            return Ok(());
        }
        fcntl_add_seals(&self.fd, SealFlags::FUTURE_WRITE).map_err(|err| RegionError::Os {
            what: "F_SEAL_FUTURE_WRITE",
            err,
        })
    }

    /// Whether no new writer can appear (sealed `F_SEAL_FUTURE_WRITE` or
    /// `F_SEAL_WRITE`).
    pub fn is_write_sealed(&self) -> bool {
        fcntl_get_seals(&self.fd)
            .is_ok_and(|s| s.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE))
    }

    /// Gives up the fd, keeping the mapping (the memory stays mapped until
    /// the [`Mapping`] is dropped): a process that registered the memfd
    /// elsewhere need not hold one fd per region.
    pub fn into_mapping(self) -> Mapping {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so the fd is moved out exactly
        // once and the mapping's ownership passes to the Mapping.
        let fd = unsafe { std::ptr::read(&me.fd) };
        drop(fd);
        Mapping {
            ptr: me.ptr,
            len: me.len,
        }
    }

    /// Maps a memfd received from another process: it must be sealed
    /// against shrinking (so the mapping can never fault) and a whole,
    /// non-zero number of pages. `writable: false` maps it read-only (an fd
    /// opened read-only can only be mapped so).
    pub fn from_fd(fd: OwnedFd, writable: bool) -> Result<Self, RegionError> {
        Self::from_fd_sized(fd, writable, None)
    }

    /// As [`Region::from_fd`], also requiring the file to be exactly `want`
    /// bytes when given. The fd must be a regular file on tmpfs (a memfd:
    /// not a pipe, socket, device, disk file or hugetlbfs file, whose
    /// mappings can fault) carrying `F_SEAL_SHRINK` (so its owner cannot
    /// truncate it under our mapping: SIGBUS).
    pub fn from_fd_sized(
        fd: OwnedFd,
        writable: bool,
        want: Option<usize>,
    ) -> Result<Self, RegionError> {
        let st = fstat(&fd).map_err(|err| RegionError::Os { what: "fstat", err })?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(RegionError::NotShmem);
        }
        let fs = rustix::fs::fstatfs(&fd).map_err(|err| RegionError::Os {
            what: "fstatfs",
            err,
        })?;
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        if i64::from(fs.f_type) != TMPFS_MAGIC {
            return Err(RegionError::NotShmem);
        }
        let seals = fcntl_get_seals(&fd).map_err(|_| RegionError::NotSealed)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed);
        }
        let len = usize::try_from(st.st_size).map_err(|_| RegionError::BadSize(0))?;
        if let Some(want) = want {
            if len != want {
                return Err(RegionError::WrongSize { want, got: len });
            }
        }
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len > MAX_FOREIGN_REGION {
            return Err(RegionError::BadSize(len));
        }
        Self::map(fd, len, writable)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool) -> Result<Self, RegionError> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh shared mapping of a memfd at an address the
        // kernel chooses; nothing else is affected.
        let p = unsafe { mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, &fd, 0) }
            .map_err(|err| RegionError::Os { what: "mmap", err })?;
        let ptr = NonNull::new(p.cast()).ok_or(RegionError::BadSize(len))?;
        Ok(Self {
            fd,
            ptr,
            len,
            writable,
        })
    }

    /// Whether the mapping is writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// A new fd for the same memory that can only be mapped read-only
    /// (reopened through `/proc/self/fd`), to give to a read-only mapper.
    pub fn reopen_readonly(&self) -> Result<OwnedFd, RegionError> {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|err| RegionError::Os {
            what: "reopen read-only",
            err,
        })
    }

    /// The whole region, writable. A region mapped read-only has no
    /// writable window: it gives an empty one (every access is out of
    /// bounds); use [`Region::mem_ro`].
    pub fn mem(&self) -> SharedMem<'_> {
        let len = if self.writable { self.len } else { 0 };
        // SAFETY: the mapping is valid until `self` is dropped, writable
        // for its whole length when `writable` (else the window is empty),
        // and is only reached through volatile/atomic accessors.
        unsafe { SharedMem::from_raw(self.ptr, len) }
    }

    /// The whole region, read-only.
    pub fn mem_ro(&self) -> SharedMem<'_, ReadOnly> {
        // SAFETY: the mapping is readable until `self` is dropped.
        unsafe { SharedMem::from_raw_read_only(self.ptr, self.len) }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range in `new` and no SharedMem can
        // outlive `self` (they borrow it).
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A shared mapping whose fd was closed (see [`Region::into_mapping`]).
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: as for Region.
unsafe impl Send for Mapping {}
// SAFETY: as for Region.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The whole mapping (writable: only writable regions are turned into
    /// mappings by their owners).
    pub fn mem(&self) -> SharedMem<'_> {
        // SAFETY: the mapping is valid until `self` is dropped.
        unsafe { SharedMem::from_raw(self.ptr, self.len) }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping came from a Region that gave it up to us.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One page of a memfd mapped on its own, so the fd can be closed at once:
/// a process mapping many single-page shares then holds no fd per share.
/// [`Stitched::from_page_maps`] makes windows of such pages.
pub struct PageMap {
    ptr: NonNull<u8>,
    writable: bool,
}

// SAFETY: as for Region.
unsafe impl Send for PageMap {}
// SAFETY: as for Region.
unsafe impl Sync for PageMap {}

impl PageMap {
    /// Maps page `page` of `fd` (read-only unless `writable`).
    pub fn new(fd: BorrowedFd<'_>, page: u64, writable: bool) -> Result<Self, RegionError> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let off = page
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(RegionError::BadSize(0))?;
        // SAFETY: a fresh shared mapping at an address the kernel chooses.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                prot,
                MapFlags::SHARED,
                fd,
                off,
            )
        }
        .map_err(|err| RegionError::Os { what: "mmap", err })?;
        let ptr = NonNull::new(p.cast()).ok_or(RegionError::BadSize(PAGE_SIZE))?;
        Ok(Self { ptr, writable })
    }

    /// Whether the page is mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

impl Drop for PageMap {
    fn drop(&mut self) {
        // SAFETY: the page mapping is ours.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), PAGE_SIZE) };
    }
}

/// A fresh contiguous virtual window made of pages of memfds, for mapping
/// a batch of grants whose frames are not adjacent.
pub struct Stitched {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: as for Region.
unsafe impl Send for Stitched {}
// SAFETY: as for Region.
unsafe impl Sync for Stitched {}

impl Stitched {
    /// Reserves `pages` pages of fresh, inaccessible address space, to be
    /// filled page by page with `MAP_FIXED`/`MREMAP_FIXED` (unmapped whole
    /// on drop, filled or not).
    fn reserve(pages: usize) -> Result<Self, RegionError> {
        let len = pages * PAGE_SIZE;
        if len == 0 {
            return Err(RegionError::BadSize(0));
        }
        // SAFETY: reserving fresh address space the kernel chooses.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }
        .map_err(|err| RegionError::Os {
            what: "mmap reserve",
            err,
        })?;
        let Some(ptr) = NonNull::new(base.cast::<u8>()) else {
            return Err(RegionError::BadSize(len));
        };
        Ok(Self { ptr, len })
    }

    /// Maps page `frame` of each `(fd, frame, writable)` one after the other.
    pub fn new(pages: &[(BorrowedFd<'_>, u64, bool)]) -> Result<Self, RegionError> {
        let me = Self::reserve(pages.len())?;
        for (i, (fd, frame, writable)) in pages.iter().enumerate() {
            let prot = if *writable {
                ProtFlags::READ | ProtFlags::WRITE
            } else {
                ProtFlags::READ
            };
            // SAFETY: MAP_FIXED over a page of the reservation we own (it is
            // inside `me`, which unmaps the whole range on drop).
            unsafe {
                mmap(
                    me.ptr.as_ptr().add(i * PAGE_SIZE).cast(),
                    PAGE_SIZE,
                    prot,
                    MapFlags::SHARED | MapFlags::FIXED,
                    fd,
                    frame * PAGE_SIZE as u64,
                )
            }
            .map_err(|err| RegionError::Os {
                what: "mmap page",
                err,
            })?;
        }
        Ok(me)
    }

    /// A window of the pages of `pages`, one after the other: each page is
    /// mapped again (`mremap` of a shared mapping with an old size of 0
    /// makes a second mapping of the same memory, with the same
    /// protection), so no fd is needed.
    pub fn from_page_maps(pages: &[&PageMap]) -> Result<Self, RegionError> {
        let me = Self::reserve(pages.len())?;
        for (i, p) in pages.iter().enumerate() {
            // SAFETY: the source is a live shared one-page mapping (old
            // size 0 duplicates it, leaving it in place); the destination is
            // a page of the reservation we own (inside `me`, which unmaps
            // the whole range on drop).
            unsafe {
                rustix::mm::mremap_fixed(
                    p.ptr.as_ptr().cast(),
                    0,
                    PAGE_SIZE,
                    rustix::mm::MremapFlags::MAYMOVE,
                    me.ptr.as_ptr().add(i * PAGE_SIZE).cast(),
                )
            }
            .map_err(|err| RegionError::Os {
                what: "mremap page",
                err,
            })?;
        }
        Ok(me)
    }

    /// The window. Pages stitched read-only fault if written: only
    /// `ForeignMapper::window_mem` hands this out, under its contract that
    /// read-only windows are never written (a `Mapping<_, ReadOnly>` only
    /// shows a read-only view).
    pub fn mem(&self) -> SharedMem<'_> {
        // SAFETY: valid mapping until drop; see above for read-only pages.
        unsafe { SharedMem::from_raw(self.ptr, self.len) }
    }
}

impl Drop for Stitched {
    fn drop(&mut self) {
        // SAFETY: the whole reservation is ours.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
