//! The export side over `/dev/xen/gntalloc`.
//!
//! `share_new` is `IOCTL_GNTALLOC_ALLOC_GREF` (the kernel allocates zeroed
//! pages and grants them) followed by one `mmap(MAP_SHARED)` of the pages.
//! Revocation is `IOCTL_GNTALLOC_DEALLOC_GREF` plus `munmap`.
//!
//! # Revoked-and-deferred: gntalloc never reports "busy"
//!
//! On a guest-owned grant table the granter itself runs the compare-and-swap
//! that ends access, so it can see "the peer still maps this page" and keep
//! the share (the core's `Busy` + quarantine). Under Linux the kernel owns
//! the grant table. When the last local user of a gntalloc page goes
//! (dealloc plus munmap), the kernel tries to end foreign access itself; if
//! the peer still has the page mapped, a post-XSA-396 kernel keeps the page
//! and the grant entry back on its own deferred list and frees them only
//! after the peer unmaps. Nothing of this is visible to userspace.
//!
//! So [`GntallocBackend::try_revoke`] always succeeds: the share is
//! *revoked-and-deferred*. The caller gets a [`GntallocPages`] marker, not
//! memory: the pages have gone back to the kernel and can never be reused
//! by this process, and the kernel will not reuse them while the peer maps
//! them. The peer keeps seeing the old contents (and can still write them)
//! until it unmaps; it never sees memory of a later share. The conformance
//! test `msa02_revoke_while_mapped` checks exactly that on real Xen.
//! Exporter statistics therefore count such a share as `revoked`, never as
//! `quarantined`.

use std::os::fd::{AsFd, OwnedFd};

use xenshare::grant::{GrantError, Revoked};
use xenshare::mem::SharedMem;
use xenshare::platform::{GrantBackend, PageSet};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::linux::{UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT};
use xenshare_abi::PAGE_SIZE;

use crate::sys::{self, Mmap};
use crate::{open_dev, OpenError};

/// Shares this domain's pages through `/dev/xen/gntalloc`.
pub struct GntallocBackend {
    fd: OwnedFd,
    domid: DomId,
}

impl std::fmt::Debug for GntallocBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GntallocBackend")
            .field("domid", &self.domid)
            .finish()
    }
}

/// A live gntalloc share: its grant refs and the pages, mapped here.
pub struct GntallocShare {
    refs: Vec<GrantRef>,
    index: u64,
    map: Mmap,
}

/// The page type of gntalloc shares. A revoked gntalloc share never gives
/// pages back: they went to the kernel (which holds them until the peer
/// unmaps), so revocation reports [`Revoked::Retired`] and no value of this
/// type is ever handed out ([`GrantBackend::share_pages`] is unsupported on
/// gntalloc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GntallocPages {
    pages: usize,
}

impl PageSet for GntallocPages {
    fn page_count(&self) -> usize {
        self.pages
    }

    fn mem(&self) -> SharedMem<'_> {
        sys::empty_mem()
    }
}

impl GntallocBackend {
    /// Opens `/dev/xen/gntalloc` for domain `domid` (this domain).
    pub fn open(domid: DomId) -> Result<GntallocBackend, OpenError> {
        Ok(GntallocBackend {
            fd: open_dev(crate::GNTALLOC)?,
            domid,
        })
    }
}

fn os(e: rustix::io::Errno) -> GrantError {
    GrantError::Os(e.raw_os_error())
}

// SAFETY: the kernel owns the grant table and the pages. Dropping a live
// share only unmaps our view; the gntalloc entry stays until dealloc or the
// fd closes, and the kernel then ends foreign access or defers the free while
// the peer maps. Revocation never hands memory back (`Revoked::Retired`).
unsafe impl GrantBackend for GntallocBackend {
    type Pages = GntallocPages;
    type Live = GntallocShare;

    fn domid(&self) -> DomId {
        self.domid
    }

    unsafe fn share_new(
        &self,
        peer: DomId,
        n: usize,
        access: Access,
    ) -> Result<GntallocShare, GrantError> {
        let count = u32::try_from(n).map_err(|_| GrantError::BadCount(n))?;
        if n == 0 {
            return Err(GrantError::BadCount(n));
        }
        let (index, refs) =
            sys::gntalloc_alloc(self.fd.as_fd(), peer, !access.is_readonly(), count).map_err(
                |e| match e {
                    // The module's global page limit.
                    rustix::io::Errno::NOSPC => GrantError::TableFull,
                    rustix::io::Errno::NOMEM => GrantError::OutOfMemory { pages: n },
                    e => os(e),
                },
            )?;
        if refs.len() != n {
            let _ = sys::gntalloc_dealloc(self.fd.as_fd(), index, count);
            return Err(GrantError::Os(rustix::io::Errno::IO.raw_os_error()));
        }
        let map = match Mmap::device(self.fd.as_fd(), n, index, true) {
            Ok(m) => m,
            Err(e) => {
                let _ = sys::gntalloc_dealloc(self.fd.as_fd(), index, count);
                return Err(os(e));
            }
        };
        // The kernel hands out zeroed pages; zero again so that no stale
        // byte can ever reach a peer (XSA-403), whatever the kernel does.
        let mem = map.mem();
        mem.fill(0, mem.len(), 0)
            .map_err(|_| GrantError::BadCount(n))?;
        Ok(GntallocShare { refs, index, map })
    }

    unsafe fn share_pages(
        &self,
        _peer: DomId,
        pages: GntallocPages,
        _access: Access,
    ) -> Result<GntallocShare, (GrantError, Option<GntallocPages>)> {
        Err((
            GrantError::Unsupported("gntalloc shares only pages it allocates itself"),
            Some(pages),
        ))
    }

    fn refs(live: &GntallocShare) -> &[GrantRef] {
        &live.refs
    }

    fn live_mem(live: &GntallocShare) -> SharedMem<'_> {
        live.map.mem()
    }

    /// Always succeeds unless the kernel refuses the dealloc itself: see the
    /// module docs (revoked-and-deferred).
    unsafe fn try_revoke(
        &self,
        live: GntallocShare,
    ) -> Result<Revoked<GntallocPages>, GntallocShare> {
        let count = live.refs.len() as u32;
        if sys::gntalloc_dealloc(self.fd.as_fd(), live.index, count).is_err() {
            // Still on this fd's list: keep the share (and its mapping), the
            // core will retry.
            return Err(live);
        }
        // The last local user goes: the unmap notify fires and the kernel
        // ends foreign access, or defers it while the peer still maps.
        drop(live.map);
        Ok(Revoked::Retired)
    }

    fn set_unmap_notify(
        &self,
        live: &GntallocShare,
        byte_offset: Option<usize>,
        port: Option<Port>,
    ) -> Result<(), GrantError> {
        let len = live.refs.len() * PAGE_SIZE;
        let off = match byte_offset {
            Some(o) if o >= len => {
                return Err(GrantError::Os(rustix::io::Errno::INVAL.raw_os_error()))
            }
            Some(o) => o as u64,
            None => 0,
        };
        let mut action = 0;
        if byte_offset.is_some() {
            action |= UNMAP_NOTIFY_CLEAR_BYTE;
        }
        if port.is_some() {
            action |= UNMAP_NOTIFY_SEND_EVENT;
        }
        sys::set_unmap_notify(
            self.fd.as_fd(),
            live.index + off,
            action,
            port.unwrap_or_default(),
        )
        .map_err(os)
    }
}
