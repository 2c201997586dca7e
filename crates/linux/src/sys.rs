//! The system calls that need `unsafe`, each behind a small safe (or
//! narrowly `unsafe`) wrapper: ioctls on the `/dev/xen` devices and
//! `mmap`/`munmap` of their memory. Nothing outside this module calls
//! `rustix::ioctl` or `rustix::mm`.

use core::ffi::c_void;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use rustix::mm::{MapFlags, ProtFlags};
use xenshare::mem::SharedMem;
use xenshare::{DomId, GrantRef, Port};
use xenshare_abi::linux as uapi;
use xenshare_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

/// An ioctl whose argument is a caller-owned buffer and whose output is the
/// ioctl's return value (the evtchn binds return the new port that way).
struct RawIoctl {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: `RawIoctl` only forwards the opcode and the pointer; the caller of
// `ioctl_raw` guarantees that the buffer matches what the opcode makes the
// kernel read and write. Every such ioctl may write (IS_MUTATING).
unsafe impl Ioctl for RawIoctl {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Issues `opcode` on `fd` with `arg`.
///
/// # Safety
///
/// `arg` must be valid for every read and write the kernel makes for
/// `opcode` on this device (the size the opcode encodes, or more for the
/// variable-length requests), and any pointers inside it must be valid too.
unsafe fn ioctl_raw(fd: BorrowedFd<'_>, opcode: u32, arg: *mut c_void) -> Result<i32, Errno> {
    // SAFETY: forwarded to the caller's contract.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            RawIoctl {
                opcode: Opcode::from(opcode),
                arg,
            },
        )
    }
}

/// An 8-byte aligned, zeroed argument buffer of at least `bytes` bytes.
fn arg_buf(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.div_ceil(8)]
}

/// `IOCTL_GNTALLOC_ALLOC_GREF`: allocates `count` zeroed pages granted to
/// `peer`; returns the mmap offset and one grant ref per page.
pub(crate) fn gntalloc_alloc(
    fd: BorrowedFd<'_>,
    peer: DomId,
    writable: bool,
    count: u32,
) -> Result<(u64, Vec<GrantRef>), Errno> {
    let n = count as usize;
    let head = uapi::IoctlGntallocAllocGref {
        domid: peer.0,
        flags: if writable {
            uapi::GNTALLOC_FLAG_WRITABLE
        } else {
            0
        },
        count,
        ..Default::default()
    };
    let size = (16 + 4 * n).max(size_of::<uapi::IoctlGntallocAllocGref>());
    let mut buf = arg_buf(size);
    let bytes = buf.as_mut_bytes();
    bytes[..16].copy_from_slice(&head.as_bytes()[..16]);
    // SAFETY: the buffer holds the 16-byte header plus `count` u32 grant
    // refs (at least the 24 bytes the opcode encodes): exactly what the
    // driver reads and writes back.
    unsafe {
        ioctl_raw(
            fd,
            uapi::IOCTL_GNTALLOC_ALLOC_GREF,
            bytes.as_mut_ptr().cast(),
        )?
    };
    let bytes = buf.as_bytes();
    let index = u64::read_from_bytes(&bytes[8..16]).map_err(|_| Errno::INVAL)?;
    let refs = bytes[16..16 + 4 * n]
        .chunks_exact(4)
        .map(|c| GrantRef(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    Ok((index, refs))
}

/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub(crate) fn gntalloc_dealloc(fd: BorrowedFd<'_>, index: u64, count: u32) -> Result<(), Errno> {
    let mut arg = uapi::IoctlGntallocDeallocGref {
        index,
        count,
        ..Default::default()
    };
    // SAFETY: the argument is the 16-byte struct the opcode encodes.
    unsafe { ioctl_raw(fd, uapi::IOCTL_GNTALLOC_DEALLOC_GREF, (&raw mut arg).cast())? };
    Ok(())
}

/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY` / `IOCTL_GNTDEV_SET_UNMAP_NOTIFY` (same
/// number and layout; the device decides which applies).
pub(crate) fn set_unmap_notify(
    fd: BorrowedFd<'_>,
    index: u64,
    action: u32,
    port: Port,
) -> Result<(), Errno> {
    let mut arg = uapi::IoctlUnmapNotify {
        index,
        action,
        event_channel_port: port.0,
    };
    // SAFETY: the argument is the 16-byte struct the opcode encodes.
    unsafe {
        ioctl_raw(
            fd,
            uapi::IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
            (&raw mut arg).cast(),
        )?
    };
    Ok(())
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`: reserves a slot range for `refs` of `dom`;
/// returns its mmap offset. (The grants are only mapped at `mmap`.)
pub(crate) fn gntdev_map(fd: BorrowedFd<'_>, dom: DomId, refs: &[GrantRef]) -> Result<u64, Errno> {
    let count = u32::try_from(refs.len()).map_err(|_| Errno::TOOBIG)?;
    let size = (16 + 8 * refs.len()).max(size_of::<uapi::IoctlGntdevMapGrantRef>());
    let mut buf = arg_buf(size);
    let bytes = buf.as_mut_bytes();
    bytes[..4].copy_from_slice(&count.to_ne_bytes());
    for (i, r) in refs.iter().enumerate() {
        let one = uapi::IoctlGntdevGrantRef {
            domid: u32::from(dom.0),
            r#ref: r.0,
        };
        bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(one.as_bytes());
    }
    // SAFETY: the buffer is the 16-byte header plus `count` 8-byte grant
    // refs (at least the 24 bytes the opcode encodes).
    unsafe {
        ioctl_raw(
            fd,
            uapi::IOCTL_GNTDEV_MAP_GRANT_REF,
            bytes.as_mut_ptr().cast(),
        )?
    };
    u64::read_from_bytes(&buf.as_bytes()[8..16]).map_err(|_| Errno::INVAL)
}

/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`: releases a slot range.
pub(crate) fn gntdev_unmap(fd: BorrowedFd<'_>, index: u64, count: u32) -> Result<(), Errno> {
    let mut arg = uapi::IoctlGntdevUnmapGrantRef {
        index,
        count,
        pad: 0,
    };
    // SAFETY: the argument is the 16-byte struct the opcode encodes.
    unsafe {
        ioctl_raw(
            fd,
            uapi::IOCTL_GNTDEV_UNMAP_GRANT_REF,
            (&raw mut arg).cast(),
        )?
    };
    Ok(())
}

/// `IOCTL_GNTDEV_GRANT_COPY` over `segs`; the kernel fills in each status.
///
/// # Safety
///
/// Every local (non-grant) `source` of `segs` must be the address of
/// `len` readable bytes, and every local `dest` the address of `len`
/// writable bytes that nothing else accesses during the call.
pub(crate) unsafe fn gntdev_grant_copy(
    fd: BorrowedFd<'_>,
    segs: &mut [uapi::GntdevGrantCopySegment],
) -> Result<(), Errno> {
    let mut arg = uapi::IoctlGntdevGrantCopy {
        count: u32::try_from(segs.len()).map_err(|_| Errno::TOOBIG)?,
        segments: segs.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: the argument is the 16-byte struct the opcode encodes; it
    // points at `segs`, valid for the call; the local buffers the segments
    // name are valid by the caller's contract.
    unsafe { ioctl_raw(fd, uapi::IOCTL_GNTDEV_GRANT_COPY, (&raw mut arg).cast())? };
    Ok(())
}

/// An evtchn ioctl whose argument is one or two `u32`s and whose result is
/// the ioctl's return value (the new port for the binds).
pub(crate) fn evtchn_ioctl(fd: BorrowedFd<'_>, opcode: u32, a: u32, b: u32) -> Result<u32, Errno> {
    let mut arg = [a, b];
    // SAFETY: the evtchn arguments are at most 8 bytes ({u32, u32}); the
    // buffer is 8 bytes, so any of them fits.
    let r = unsafe { ioctl_raw(fd, opcode, arg.as_mut_ptr().cast())? };
    u32::try_from(r).map_err(|_| Errno::INVAL)
}

/// A shared mapping of a device's memory, unmapped on drop.
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory shared with another domain, reached only
// through `SharedMem`'s volatile/atomic accessors; the pointer stays valid
// until drop, whichever thread drops it.
unsafe impl Send for Mmap {}
// SAFETY: as above: no plain (racy) access is made through `&Mmap`.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `pages` pages of `fd` at byte offset `offset` (`MAP_SHARED`).
    pub(crate) fn device(
        fd: BorrowedFd<'_>,
        pages: usize,
        offset: u64,
        writable: bool,
    ) -> Result<Mmap, Errno> {
        let len = pages.checked_mul(PAGE_SIZE).ok_or(Errno::TOOBIG)?;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses; it
        // replaces nothing. The device decides what memory backs it.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Errno::FAULT)?;
        Ok(Mmap { ptr, len })
    }

    /// The mapped memory.
    pub(crate) fn mem(&self) -> SharedMem<'_> {
        // SAFETY: the mapping is valid for reads (and writes, if writable;
        // callers of read-only mappings only read) until `self` is dropped,
        // and it is only reached through SharedMem's volatile/atomic access.
        unsafe { SharedMem::from_raw(self.ptr, self.len) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: exactly the range mapped in `device`; every SharedMem
        // over it borrows `self`, so none is left.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An empty window, for pages that are no longer reachable from userspace.
pub(crate) fn empty_mem() -> SharedMem<'static> {
    // SAFETY: a zero-length region: no byte is ever accessed through it.
    unsafe { SharedMem::from_raw(NonNull::dangling(), 0) }
}
