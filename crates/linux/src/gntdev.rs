//! The import side over `/dev/xen/gntdev`.
//!
//! A batch is one `IOCTL_GNTDEV_MAP_GRANT_REF` (which only reserves a slot
//! range) and one `mmap` of the whole range, which is where the kernel
//! really maps the grants. So errors for bad refs surface at `mmap`, and for
//! the whole batch at once: every element of a failed batch reports the same
//! status ([`GntSt::GeneralError`] for the kernel's `EINVAL`; the Xen status
//! of the failing element is not passed to userspace).
//!
//! The handles of a batch share it: the batch is unmapped (`munmap`, then
//! `IOCTL_GNTDEV_UNMAP_GRANT_REF`) when its last handle and window are gone.
//! The core's [`xenshare::grant::Mapping`] always releases all of them
//! together, so through the safe API this is the same as unmapping each
//! grant. One more difference to the emulator: gntdev keeps **one** unmap
//! notify per batch, so a later `set_unmap_notify` on any page of a batch
//! replaces an earlier one on another page.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use rustix::io::Errno;
use xenshare::grant::GntSt;
use xenshare::mem::SharedMem;
use xenshare::platform::{CopyDst, CopyOp, CopySrc, ForeignMapper, GrantPtr};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::grant::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use xenshare_abi::linux::{
    GntdevCopyForeign, GntdevGrantCopySegment, UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT,
};
use xenshare_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

use crate::sys::{self, Mmap};
use crate::{open_dev, OpenError};

/// How often a batch map is retried when the kernel says `EAGAIN` (a
/// paged-out frame), as libxengnttab does.
const EAGAIN_RETRIES: u32 = 5;

/// Maps other domains' grants through `/dev/xen/gntdev`.
pub struct GntdevMapper {
    fd: Arc<OwnedFd>,
    domid: DomId,
    last_errno: AtomicI32,
}

impl std::fmt::Debug for GntdevMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GntdevMapper")
            .field("domid", &self.domid)
            .finish()
    }
}

/// One mapped batch: its slot range and its mmap.
struct Batch {
    fd: Arc<OwnedFd>,
    index: u64,
    count: usize,
    writable: bool,
    map: Option<Mmap>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        // munmap first (this unmaps the grants and runs the unmap notify),
        // then release the slot range.
        drop(self.map.take());
        let _ = sys::gntdev_unmap(self.fd.as_fd(), self.index, self.count as u32);
    }
}

/// One mapped grant: a page of a batch.
pub struct GntdevHandle {
    batch: Arc<Batch>,
    page: usize,
}

impl std::fmt::Debug for GntdevHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GntdevHandle")
            .field("index", &self.batch.index)
            .field("page", &self.page)
            .finish()
    }
}

/// A contiguous view over consecutive pages of one batch.
pub struct GntdevWindow {
    batch: Arc<Batch>,
    first: usize,
    count: usize,
}

fn status_of(e: Errno) -> GntSt {
    match e {
        Errno::AGAIN => GntSt::Eagain,
        Errno::NOMEM | Errno::NOSPC | Errno::TOOBIG => GntSt::NoSpace,
        Errno::FAULT => GntSt::BadVirtAddr,
        Errno::PERM | Errno::ACCESS => GntSt::PermissionDenied,
        // EINVAL: the hypervisor refused at least one grant.
        _ => GntSt::GeneralError,
    }
}

impl GntdevMapper {
    /// Opens `/dev/xen/gntdev` for domain `domid` (this domain).
    pub fn open(domid: DomId) -> Result<GntdevMapper, OpenError> {
        Ok(GntdevMapper {
            fd: Arc::new(open_dev(crate::GNTDEV)?),
            domid,
            last_errno: AtomicI32::new(0),
        })
    }

    /// The errno of the last failed kernel call (0 if none), for
    /// diagnostics: a refused batch's status does not carry it.
    pub fn last_errno(&self) -> i32 {
        self.last_errno.load(Ordering::Relaxed)
    }

    fn note(&self, e: Errno) -> Errno {
        self.last_errno.store(e.raw_os_error(), Ordering::Relaxed);
        e
    }

    fn map_one_batch(&self, dom: DomId, refs: &[GrantRef], writable: bool) -> Result<Batch, Errno> {
        let mut tries = 0;
        loop {
            let index = sys::gntdev_map(self.fd.as_fd(), dom, refs).map_err(|e| self.note(e))?;
            match Mmap::device(self.fd.as_fd(), refs.len(), index, writable) {
                Ok(map) => {
                    return Ok(Batch {
                        fd: self.fd.clone(),
                        index,
                        count: refs.len(),
                        writable,
                        map: Some(map),
                    })
                }
                Err(e) => {
                    self.note(e);
                    let _ = sys::gntdev_unmap(self.fd.as_fd(), index, refs.len() as u32);
                    tries += 1;
                    if e != Errno::AGAIN || tries > EAGAIN_RETRIES {
                        return Err(e);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1 << tries));
                }
            }
        }
    }

    fn copy_local(op: &mut CopyOp<'_>) -> GntSt {
        let len = op.len as usize;
        match (&op.src, &mut op.dst) {
            (CopySrc::Local(s), CopyDst::Local(d)) if s.len() >= len && d.len() >= len => {
                d[..len].copy_from_slice(&s[..len]);
                GntSt::Okay
            }
            _ => GntSt::BadCopyArg,
        }
    }
}

fn foreign(p: &GrantPtr) -> u64 {
    let f = GntdevCopyForeign {
        r#ref: p.gref.0,
        offset: p.offset,
        domid: p.dom.0,
    };
    u64::read_from_bytes(f.as_bytes()).unwrap_or(0)
}

/// A grant side of a copy segment: its `GNTCOPY_*_GREF` flag, its
/// encoded reference, and whether `len` bytes fit in the page from its
/// offset. (A local side is `(0, address, buffer holds len)`.)
fn grant_side(p: &GrantPtr, flag: u16, len: usize) -> (u16, u64, bool) {
    (flag, foreign(p), p.offset as usize + len <= PAGE_SIZE)
}

impl ForeignMapper for GntdevMapper {
    type Handle = GntdevHandle;
    type Window = GntdevWindow;

    fn domid(&self) -> DomId {
        self.domid
    }

    fn map_batch(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        access: Access,
        out: &mut Vec<Result<GntdevHandle, GntSt>>,
    ) {
        if refs.is_empty() {
            return;
        }
        match self.map_one_batch(dom, refs, !access.is_readonly()) {
            Ok(batch) => {
                let batch = Arc::new(batch);
                out.extend((0..refs.len()).map(|page| {
                    Ok(GntdevHandle {
                        batch: batch.clone(),
                        page,
                    })
                }));
            }
            Err(e) => {
                let st = status_of(e);
                out.extend(refs.iter().map(|_| Err(st)));
            }
        }
    }

    fn unmap(&self, handle: GntdevHandle) -> Result<(), GntSt> {
        // The batch is unmapped when its last handle and window are gone.
        drop(handle);
        Ok(())
    }

    fn window(&self, handles: &[GntdevHandle]) -> Result<GntdevWindow, GntSt> {
        let first = handles.first().ok_or(GntSt::GeneralError)?;
        let consecutive = handles
            .iter()
            .enumerate()
            .all(|(i, h)| Arc::ptr_eq(&h.batch, &first.batch) && h.page == first.page + i);
        if !consecutive || first.batch.map.is_none() {
            return Err(GntSt::GeneralError);
        }
        Ok(GntdevWindow {
            batch: first.batch.clone(),
            first: first.page,
            count: handles.len(),
        })
    }

    unsafe fn window_mem(w: &GntdevWindow) -> SharedMem<'_> {
        let Some(map) = &w.batch.map else {
            return sys::empty_mem();
        };
        map.mem()
            .slice(w.first * PAGE_SIZE, w.count * PAGE_SIZE)
            .unwrap_or_else(|_| sys::empty_mem())
    }

    fn set_unmap_notify(
        &self,
        h: &GntdevHandle,
        clear_byte: Option<u16>,
        port: Option<Port>,
    ) -> Result<(), GntSt> {
        if clear_byte.is_some() && !h.batch.writable {
            // gntdev refuses (EINVAL); say why, as the emulator does.
            return Err(GntSt::PermissionDenied);
        }
        let in_page = u64::from(clear_byte.unwrap_or(0));
        if in_page >= PAGE_SIZE as u64 {
            return Err(GntSt::BadVirtAddr);
        }
        let mut action = 0;
        if clear_byte.is_some() {
            action |= UNMAP_NOTIFY_CLEAR_BYTE;
        }
        if port.is_some() {
            action |= UNMAP_NOTIFY_SEND_EVENT;
        }
        let index = h.batch.index + (h.page * PAGE_SIZE) as u64 + in_page;
        sys::set_unmap_notify(self.fd.as_fd(), index, action, port.unwrap_or_default())
            .map_err(|e| status_of(self.note(e)))
    }

    fn copy(&self, ops: &mut [CopyOp<'_>]) {
        let mut segs = Vec::with_capacity(ops.len());
        let mut which = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter_mut().enumerate() {
            let len = op.len as usize;
            let (src_flag, source, src_ok) = match &op.src {
                CopySrc::Grant(p) => grant_side(p, GNTCOPY_SOURCE_GREF, len),
                CopySrc::Local(b) => (0, b.as_ptr() as u64, b.len() >= len),
            };
            let (dst_flag, dest, dst_ok) = match &mut op.dst {
                CopyDst::Grant(p) => grant_side(p, GNTCOPY_DEST_GREF, len),
                CopyDst::Local(b) => (0, b.as_mut_ptr() as u64, b.len() >= len),
            };
            let ok = src_ok && dst_ok;
            let seg = GntdevGrantCopySegment {
                source,
                dest,
                len: op.len,
                flags: src_flag | dst_flag,
                ..Default::default()
            };
            if !ok {
                op.status = GntSt::BadCopyArg;
            } else if seg.flags == 0 {
                // Local to local: gntdev refuses it; Xen would copy.
                op.status = Self::copy_local(op);
            } else {
                segs.push(seg);
                which.push(i);
            }
        }
        if segs.is_empty() {
            return;
        }
        // SAFETY: every local side of `segs` was taken from the op's slice
        // and checked to hold at least `len` bytes above; the destination
        // slices are `&mut` borrows held by `ops` for this whole call.
        let r = unsafe { sys::gntdev_grant_copy(self.fd.as_fd(), &mut segs) };
        for (seg, i) in segs.iter().zip(which) {
            let st = match r {
                Ok(()) => GntSt::from_raw(seg.status),
                Err(e) => status_of(self.note(e)),
            };
            if let Some(op) = ops.get_mut(i) {
                op.status = st;
            }
        }
    }
}
