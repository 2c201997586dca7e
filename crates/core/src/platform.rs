//! The platform seam: what a platform (the emulator, Linux's `/dev/xen`, a
//! future unikernel) must provide for the core's protocols.
//!
//! The traits are deliberately small. Policy — revocation rules, quarantine,
//! batch rollback, validation of peer data — lives in the core, written once;
//! a platform only performs the primitive operations.
//!
//! The primitives that could reuse memory a peer still maps, or write memory
//! mapped read-only, are sealed: the traits are `unsafe` to implement (the
//! implementor promises the contract written on each), and their dangerous
//! methods are `unsafe` to call. Safe code reaches them only through
//! [`crate::grant::Exporter`] and [`crate::grant::Importer`], which keep the
//! contracts; a backend is never handed out, only a read-only
//! [`crate::grant::TableView`].
//!
//! The MSA02 bug in three lines does not compile: there is no way to reach the
//! backend from an exporter, and its share primitive is `unsafe` anyway.
//!
//! ```compile_fail,E0599
//! # use xenshare::{grant::Exporter, platform::GrantBackend, Access, DomId};
//! # fn msa02<B: GrantBackend>(ex: &Exporter<B>) {
//! let live = ex.backend().share_new(DomId(1), 1, Access::ReadWrite).unwrap();
//! drop(live); // would free pages the peer may still map
//! # }
//! ```
//!
//! ```compile_fail,E0133
//! # use xenshare::{platform::GrantBackend, Access, DomId};
//! # fn msa02<B: GrantBackend>(backend: &B) {
//! let live = backend.share_new(DomId(1), 1, Access::ReadWrite).unwrap();
//! # }
//! ```

use alloc::vec::Vec;
use core::time::Duration;

use crate::event::EventError;
use crate::grant::{GntSt, GrantError, Revoked, TableView};
use crate::mem::SharedMem;
use crate::types::{Access, DomId, GrantRef, Port};

/// A set of whole pages in memory (a run of frames, a mapped batch).
pub trait PageSet: Send + 'static {
    /// Number of 4 KiB pages.
    fn page_count(&self) -> usize;
    /// The pages as one contiguous shared-memory window.
    fn mem(&self) -> SharedMem<'_>;
}

/// The export side: sharing this domain's pages with another domain.
///
/// Implemented by [`crate::grant::TableBackend`] for platforms where the
/// guest owns its grant table (the emulator, a unikernel), by the Linux
/// platform over `/dev/xen/gntalloc` and by the multi-process emulator.
///
/// # Safety
///
/// Implementors promise:
/// * dropping a `Live` never frees or reuses its memory or its grant
///   references (a dropped live share leaks, so a panic that unwinds through
///   any method leaks too);
/// * `try_revoke` returns [`Revoked::Pages`] only after proving that no peer
///   can reach any page of the share any more (every entry revoked by the
///   compare-and-swap of [`crate::grant::entry::try_end_access`], or the
///   platform's equivalent), and [`Revoked::Retired`] when access was ended
///   but the memory cannot be proven unreachable (it must then never be
///   reused by anyone);
/// * a grant reference is handed out only while it is not live;
/// * `live_mem` is the share's own memory, writable by this domain.
pub unsafe trait GrantBackend: Send + Sync + 'static {
    /// Pages owned by the caller, returned after a successful revocation.
    type Pages: PageSet;
    /// A granted share the peer may be using. Dropping it leaks.
    type Live: Send + 'static;

    /// The domain this backend grants from.
    fn domid(&self) -> DomId;

    /// Allocates `n` zeroed pages and grants them to `peer`.
    ///
    /// # Safety
    ///
    /// The returned share may only be given back to this same backend
    /// ([`GrantBackend::try_revoke`], [`GrantBackend::leak`]).
    unsafe fn share_new(
        &self,
        peer: DomId,
        n: usize,
        access: Access,
    ) -> Result<Self::Live, GrantError>;

    /// Grants pages the caller already owns (already zeroed by the core).
    /// On failure the pages come back with the error, unless a peer may
    /// already reach them (a grant table written behind the allocator's
    /// back): then they are retired and `None` comes back.
    ///
    /// # Safety
    ///
    /// As for [`GrantBackend::share_new`].
    unsafe fn share_pages(
        &self,
        peer: DomId,
        pages: Self::Pages,
        access: Access,
    ) -> Result<Self::Live, (GrantError, Option<Self::Pages>)>;

    /// The grant references of a live share, one per page, in page order.
    fn refs(live: &Self::Live) -> &[GrantRef];

    /// The memory of a live share.
    fn live_mem(live: &Self::Live) -> SharedMem<'_>;

    /// Tries to end the peer's access to every page of `live`. Succeeds only
    /// if every entry was proven revoked; otherwise the share comes back.
    /// On success the pages come back when they are provably unreachable,
    /// or are retired for good when the platform cannot prove it.
    ///
    /// # Safety
    ///
    /// `live` must have come from this backend's `share_new`/`share_pages`.
    unsafe fn try_revoke(&self, live: Self::Live) -> Result<Revoked<Self::Pages>, Self::Live>;

    /// Gives up on a share that can never be revoked (its owner is going
    /// away): its memory and references must never be reused.
    fn leak(&self, live: Self::Live) {
        core::mem::forget(live);
    }

    /// A read-only view of the grant table this backend shares through, if
    /// it owns one (the emulator and a unikernel do; Linux's gntalloc keeps
    /// the table in the kernel).
    fn table(&self) -> Option<&dyn TableView> {
        None
    }

    /// Told when a share enters (`true`) or leaves (`false`) the exporter's
    /// quarantine, so a platform can show it (the multi-process host's grant
    /// inspector does). Default: nothing.
    fn quarantine_changed(&self, refs: &[GrantRef], quarantined: bool) {
        let _ = (refs, quarantined);
    }

    /// Asks for `byte_offset` (within the share) to be cleared and/or `port`
    /// notified when this side's last use of the share goes away (process
    /// death included). Optional; the default reports it unsupported.
    fn set_unmap_notify(
        &self,
        live: &Self::Live,
        byte_offset: Option<usize>,
        port: Option<Port>,
    ) -> Result<(), GrantError> {
        let _ = (live, byte_offset, port);
        Err(GrantError::Unsupported("unmap notify on shares"))
    }
}

/// Frames of a domain's own memory, for [`crate::grant::TableBackend`].
///
/// # Safety
///
/// Implementors promise that every run handed out is memory of this domain
/// that nothing else owns until the run is dropped, that `frame` names the
/// frames the run's `mem` really is (a grant of that frame number shows the
/// peer exactly this memory), and that a leaked run is never handed out again.
pub unsafe trait FrameAllocator: Send + Sync + 'static {
    /// An owned run of contiguous frames; dropping it frees them.
    type Frames: PageSet;
    /// Allocates `n` contiguous frames (contents unspecified).
    fn alloc(&self, n: usize) -> Option<Self::Frames>;
    /// The frame number (GFN) of page `i` of `frames`.
    fn frame(frames: &Self::Frames, i: usize) -> u64;
    /// Called when a run is abandoned because a peer never released it:
    /// the frames must stay allocated forever.
    fn leak(&self, frames: Self::Frames) {
        core::mem::forget(frames);
    }
}

/// Memory holding a domain's v1 grant table, shared with the hypervisor.
///
/// # Safety
///
/// Implementors promise that `table` is the grant table the hypervisor (or
/// emulator) consults for this domain, and that it is written by nobody but
/// the one [`crate::grant::TableBackend`] built over this value and the
/// hypervisor's pin/unpin protocol.
pub unsafe trait TableMemory: Send + Sync + 'static {
    /// The table: a whole number of 4 KiB frames of 8-byte entries, 8-aligned.
    fn table(&self) -> SharedMem<'_>;
}

/// Grant-copy operand naming a grant of another domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantPtr {
    /// The granting domain.
    pub dom: DomId,
    /// The grant reference in its table.
    pub gref: GrantRef,
    /// Byte offset in the granted page.
    pub offset: u16,
}

/// Source of a grant copy.
#[derive(Debug)]
pub enum CopySrc<'a> {
    /// A page granted by another domain.
    Grant(GrantPtr),
    /// Local memory.
    Local(&'a [u8]),
}

/// Destination of a grant copy.
#[derive(Debug)]
pub enum CopyDst<'a> {
    /// A page granted (writable) by another domain.
    Grant(GrantPtr),
    /// Local memory.
    Local(&'a mut [u8]),
}

/// One grant-copy operation (`GNTTABOP_copy`); `status` is filled in.
#[derive(Debug)]
pub struct CopyOp<'a> {
    /// Where to copy from.
    pub src: CopySrc<'a>,
    /// Where to copy to.
    pub dst: CopyDst<'a>,
    /// Bytes to copy; neither grant side may cross its page.
    pub len: u16,
    /// Out: the result.
    pub status: GntSt,
}

/// The import side: mapping and copying other domains' grants.
pub trait ForeignMapper: Send + Sync + 'static {
    /// One mapped grant.
    type Handle: Send + 'static;
    /// A contiguous view over a batch of mapped grants.
    type Window: Send + 'static;

    /// The domain doing the mapping.
    fn domid(&self) -> DomId;

    /// Maps each of `refs` of `dom` (one `GNTTABOP_map_grant_ref` each) and
    /// pushes one result per ref onto `out`, in order. A platform that maps
    /// a batch all-or-nothing reports the same error for every element.
    fn map_batch(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        access: Access,
        out: &mut Vec<Result<Self::Handle, GntSt>>,
    );

    /// Maps one grant (a batch of one, without the list). The default goes
    /// through [`ForeignMapper::map_batch`]; a platform whose single map
    /// needs no list overrides it (the importer maps one-page grants, the
    /// common case, through this).
    fn map_one(&self, dom: DomId, gref: GrantRef, access: Access) -> Result<Self::Handle, GntSt> {
        let mut out = Vec::with_capacity(1);
        self.map_batch(dom, core::slice::from_ref(&gref), access, &mut out);
        if out.len() == 1 {
            return out.pop().unwrap_or(Err(GntSt::GeneralError));
        }
        // A platform that reported more or fewer results than asked is
        // broken: undo whatever it mapped.
        for h in out.into_iter().flatten() {
            let _ = self.unmap(h);
        }
        Err(GntSt::GeneralError)
    }

    /// Unmaps one grant.
    fn unmap(&self, handle: Self::Handle) -> Result<(), GntSt>;

    /// Makes a contiguous window over `handles` (all from one successful batch).
    fn window(&self, handles: &[Self::Handle]) -> Result<Self::Window, GntSt>;

    /// The memory of a window.
    ///
    /// # Safety
    ///
    /// The caller writes through the returned window only if every handle of
    /// the window was mapped [`Access::ReadWrite`]. ([`crate::grant::Mapping`]
    /// keeps this by type: a read-only mapping only ever shows a
    /// [`crate::mem::ReadOnly`] window.)
    unsafe fn window_mem(window: &Self::Window) -> SharedMem<'_>;

    /// Asks for a byte of the mapped page to be cleared and/or `port` to be
    /// notified when the mapping goes away (unmap, or death of this domain).
    fn set_unmap_notify(
        &self,
        handle: &Self::Handle,
        clear_byte: Option<u16>,
        port: Option<Port>,
    ) -> Result<(), GntSt>;

    /// Performs grant copies, filling in every `status`.
    fn copy(&self, ops: &mut [CopyOp<'_>]);
}

/// Event channels of one domain, as one handle (like an open
/// `/dev/xen/evtchn`): ports bound through a handle are delivered to it.
pub trait EventChannels: Send + Sync + 'static {
    /// The domain owning the ports.
    fn domid(&self) -> DomId;
    /// Allocates a port that `remote` may bind to.
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, EventError>;
    /// Binds a fresh local port to `remote`'s unbound `remote_port`.
    /// The new port starts pending, as on Xen.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, EventError>;
    /// Notifies the remote end of `port`.
    fn notify(&self, port: Port) -> Result<(), EventError>;
    /// Re-enables delivery of `port` after it was returned by `poll`/`wait`.
    fn unmask(&self, port: Port) -> Result<(), EventError>;
    /// Closes `port`; an interdomain peer returns to unbound.
    fn close(&self, port: Port) -> Result<(), EventError>;
    /// Returns a pending port of this handle, if any, without blocking.
    /// A returned port is masked until [`EventChannels::unmask`].
    fn poll(&self) -> Result<Option<Port>, EventError>;
    /// Like `poll`, but blocks up to `timeout` (`None`: forever).
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError>;
}
