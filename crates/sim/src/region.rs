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
}

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
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).map_err(
            |err| RegionError::Os {
                what: "F_ADD_SEALS",
                err,
            },
        )?;
        Self::map(fd, len, true)
    }

    /// Maps a memfd received from another process: it must be sealed
    /// against shrinking (so the mapping can never fault) and a whole,
    /// non-zero number of pages. `writable: false` maps it read-only (an fd
    /// opened read-only can only be mapped so).
    pub fn from_fd(fd: OwnedFd, writable: bool) -> Result<Self, RegionError> {
        let seals = fcntl_get_seals(&fd).map_err(|_| RegionError::NotSealed)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed);
        }
        let st = fstat(&fd).map_err(|err| RegionError::Os { what: "fstat", err })?;
        let len = usize::try_from(st.st_size).map_err(|_| RegionError::BadSize(0))?;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len > (1 << 36) {
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
    /// Maps page `frame` of each `(fd, frame, writable)` one after the other.
    pub fn new(pages: &[(BorrowedFd<'_>, u64, bool)]) -> Result<Self, RegionError> {
        let len = pages.len() * PAGE_SIZE;
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
        let me = Self { ptr, len };
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
