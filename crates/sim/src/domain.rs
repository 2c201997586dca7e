//! A domain's view of the emulated hypervisor: the platform objects the core
//! runs on (grant export and import, event channels).

use std::sync::Arc;

use xenshare::event::EventError;
use xenshare::grant::{Exporter, GntSt, GrantError, Importer, Revoked, TableBackend, TableView};
use xenshare::mem::SharedMem;
use xenshare::platform::{CopyOp, ForeignMapper, GrantBackend, TableMemory};
use xenshare::{Access, DomId, GrantRef, Port};

use crate::evtchn::SimEvtchn;
use crate::hv::{ActiveGrant, DomainState, ExportNotify, Hypervisor, Notify, RevocationModel};
use crate::memory::{DomainMemory, FrameRun, SimFrames};
use crate::region::{Region, Stitched};

/// A domain's grant table memory.
#[derive(Clone)]
pub struct SimTable(Arc<Region>);

// SAFETY: the region is the table the emulated hypervisor consults for this
// domain (`DomainState::table`); `Domain::new` builds the one
// `TableBackend` over it, and the hypervisor only runs the pin protocol.
unsafe impl TableMemory for SimTable {
    fn table(&self) -> SharedMem<'_> {
        self.0.mem()
    }
}

/// The export backend of an emulated domain: the core's guest-owned table
/// backend, plus export-side unmap notifies (as Linux's gntalloc offers),
/// which fire when the domain lets go of the share or dies.
pub struct SimGrantBackend {
    table: TableBackend<SimTable, SimFrames>,
    dom: Arc<DomainState>,
    /// Revoked-while-mapped shares held back, as Linux's gntalloc keeps
    /// them on its deferred list ([`RevocationModel::KernelDefers`] only).
    deferred: Deferred,
}

type Deferred = Arc<std::sync::Mutex<Vec<TableLive>>>;

/// How many deferred shares one revocation retries on its way (the kernel
/// retries its deferred list from a timer; bounded work per call here).
const DEFERRED_RETRY: usize = 4;

impl SimGrantBackend {
    /// Retries up to `budget` deferred shares, freeing the ones the peer
    /// has let go of.
    fn retry_deferred(&self, budget: usize) {
        let mut list = crate::hv::lock(&self.deferred);
        let n = budget.min(list.len());
        for _ in 0..n {
            let live = list.remove(0);
            // SAFETY: every deferred share came from `self.table`.
            match unsafe { self.table.try_revoke(live) } {
                Ok(revoked) => drop(revoked), // back to the allocator, unreachable
                Err(live) => list.push(live),
            }
        }
    }
}

type TableLive = <TableBackend<SimTable, SimFrames> as GrantBackend>::Live;

// SAFETY: every primitive is the core's `TableBackend`, which keeps the
// contract; the extra export notify only clears a byte and sends an event.
unsafe impl GrantBackend for SimGrantBackend {
    type Pages = FrameRun;
    type Live = TableLive;

    fn domid(&self) -> DomId {
        self.table.domid()
    }

    unsafe fn share_new(
        &self,
        peer: DomId,
        n: usize,
        access: Access,
    ) -> Result<Self::Live, GrantError> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.table.share_new(peer, n, access) }
    }

    unsafe fn share_pages(
        &self,
        peer: DomId,
        pages: FrameRun,
        access: Access,
    ) -> Result<Self::Live, (GrantError, Option<FrameRun>)> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.table.share_pages(peer, pages, access) }
    }

    fn refs(live: &Self::Live) -> &[GrantRef] {
        <TableBackend<SimTable, SimFrames> as GrantBackend>::refs(live)
    }

    fn live_mem(live: &Self::Live) -> SharedMem<'_> {
        <TableBackend<SimTable, SimFrames> as GrantBackend>::live_mem(live)
    }

    unsafe fn try_revoke(&self, live: Self::Live) -> Result<Revoked<FrameRun>, Self::Live> {
        // Letting go of a share is this side's "last local user going away":
        // the notify fires once, before the revocation is attempted.
        if let Some(first) = Self::refs(&live).first() {
            let n = self.dom.export_notifies.remove(first.0);
            if let Some(n) = n {
                self.dom.fire_export_notify(n);
            }
        }
        match self.dom.revocation {
            // SAFETY: `live` came from `self.table` (the caller's contract).
            RevocationModel::Proven => unsafe { self.table.try_revoke(live) },
            RevocationModel::KernelDefers => {
                self.retry_deferred(DEFERRED_RETRY);
                // SAFETY: as above.
                match unsafe { self.table.try_revoke(live) } {
                    // Freed to the "kernel": the caller never sees it again.
                    Ok(revoked) => drop(revoked),
                    Err(live) => crate::hv::lock(&self.deferred).push(live),
                }
                Ok(Revoked::Retired)
            }
        }
    }

    fn leak(&self, live: Self::Live) {
        self.table.leak(live)
    }

    fn table(&self) -> Option<&dyn TableView> {
        self.table.table()
    }

    fn set_unmap_notify(
        &self,
        live: &Self::Live,
        byte_offset: Option<usize>,
        port: Option<Port>,
    ) -> Result<(), GrantError> {
        let refs = Self::refs(live);
        let Some(first) = refs.first() else {
            return Err(GrantError::BadCount(0));
        };
        let page = byte_offset
            .map(|o| o / xenshare_abi::PAGE_SIZE)
            .unwrap_or(0);
        if page >= refs.len() {
            return Err(GrantError::BadCount(page));
        }
        let frame = self
            .table
            .table()
            .and_then(|t| t.entry(refs[page]))
            .map(|e| u64::from(e.frame))
            .ok_or(GrantError::Platform(GntSt::BadGntref))?;
        let offset = byte_offset.map(|o| (o % xenshare_abi::PAGE_SIZE) as u16);
        self.dom.export_notifies.insert(
            first.0,
            ExportNotify {
                frame,
                offset,
                port,
            },
        );
        Ok(())
    }
}
/// The exporter of an emulated domain.
pub type SimExporter = Exporter<SimGrantBackend>;
/// The importer of an emulated domain.
pub type SimImporter = Importer<SimMapper>;
/// A share made by an emulated domain.
pub type SimShare = xenshare::grant::Share<SimGrantBackend>;
/// A mapping made by an emulated domain.
pub type SimMapping = xenshare::grant::Mapping<SimMapper>;

/// An emulated domain. Dropping it does not destroy the domain; call
/// [`Domain::destroy`] (or [`Hypervisor::destroy_domain`]).
#[derive(Clone)]
pub struct Domain {
    state: Arc<DomainState>,
    hv: Hypervisor,
    exporter: SimExporter,
    importer: SimImporter,
    deferred: Deferred,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.state.id)
            .finish()
    }
}

impl Domain {
    pub(crate) fn new(state: Arc<DomainState>, hv: Hypervisor) -> Self {
        let deferred = Deferred::default();
        let backend = SimGrantBackend {
            // SAFETY: a domain's table gets exactly one allocator: this one,
            // built once per `DomainState` (the `Domain` handle is cloned,
            // never rebuilt).
            table: unsafe {
                TableBackend::new(
                    state.id,
                    SimTable(state.table.clone()),
                    SimFrames(state.mem.clone()),
                )
            },
            dom: state.clone(),
            deferred: deferred.clone(),
        };
        let exporter = Exporter::new(backend);
        let importer = Importer::new(SimMapper {
            dom: state.clone(),
            hv: hv.inner.clone(),
        });
        Self {
            state,
            hv,
            exporter,
            importer,
            deferred,
        }
    }

    /// Adversary set-up for stale-data tests (XSA-403): shares `runs` runs of
    /// four pages, fills them with `byte` and revokes them again, so the
    /// domain's free memory holds old data that later shares must not show.
    /// Returns how many of the runs came back as pages.
    pub fn dirty_free_memory(&self, runs: usize, byte: u8) -> usize {
        let dirty: Vec<_> = (0..runs)
            .filter_map(|_| self.exporter.share(self.id(), 4, Access::ReadWrite).ok())
            .collect();
        let mut back = 0;
        for s in dirty {
            let _ = s.mem().fill(0, s.mem().len(), byte);
            if let Ok(Revoked::Pages(p)) = s.try_unshare() {
                drop(p);
                back += 1;
            }
        }
        back
    }

    /// Revocations the emulated kernel holds back because the peer still
    /// maps the page ([`RevocationModel::KernelDefers`]; always 0 otherwise).
    pub fn deferred_revocations(&self) -> usize {
        crate::hv::lock(&self.deferred).len()
    }

    /// The domain id.
    pub fn id(&self) -> DomId {
        self.state.id
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &Hypervisor {
        &self.hv
    }

    /// Shares this domain's pages (the safe grant API, export side).
    pub fn exporter(&self) -> &SimExporter {
        &self.exporter
    }

    /// Maps and copies other domains' grants (import side).
    pub fn importer(&self) -> &SimImporter {
        &self.importer
    }

    /// Opens an event channel handle.
    pub fn evtchn(&self) -> Result<Arc<SimEvtchn>, EventError> {
        SimEvtchn::open(self.state.clone()).map(Arc::new)
    }

    /// This domain's memory.
    pub fn memory(&self) -> &DomainMemory {
        &self.state.mem
    }

    /// Entries of this domain's table that peers hold pinned, with pin counts.
    pub fn active_grants(&self) -> Vec<ActiveGrant> {
        self.state.active_grants()
    }

    /// Whether a peer holds `gref` of this domain mapped (busy bits set).
    pub fn grant_busy(&self, gref: GrantRef) -> bool {
        self.state.entry_busy(gref)
    }

    /// Grants this domain currently has mapped.
    pub fn mapped_count(&self) -> usize {
        self.state.mapped_count()
    }

    /// Whether the domain is alive.
    pub fn is_alive(&self) -> bool {
        self.state.is_alive()
    }

    /// Destroys the domain (see [`Hypervisor::destroy_domain`]).
    pub fn destroy(&self) -> Result<(), crate::HvError> {
        self.hv.destroy_domain(self.state.id)
    }

    /// Builds this guest's xenstore page as a toolstack does: a zeroed frame
    /// pre-granted to `backend` (usually dom0, where xenstored runs) as
    /// reserved grant ref 1. Returns the frame number (what `XS_INTRODUCE`
    /// carries). Idempotent.
    pub fn build_xenstore_page(&self, backend: DomId) -> Result<u64, crate::HvError> {
        self.state
            .build_store_page(backend)
            .ok_or(crate::HvError::BadConfig(
                "no memory or grant entry for the xenstore page",
            ))
    }

    /// The guest's view of its xenstore page (`start_info.store_mfn` on PV,
    /// `HVM_PARAM_STORE_PFN` on HVM), once built.
    pub fn xenstore_page(&self) -> Option<SharedMem<'_>> {
        let frame = crate::hv::lock(&self.state.store_page)
            .as_ref()
            .map(|r| r.first())?;
        self.state.mem.frame_mem(frame)
    }

    /// Builds this guest's primary console page as a toolstack does: a
    /// zeroed frame pre-granted to `backend` (the console back end's domain)
    /// as reserved grant ref 0. Returns the frame number (what the
    /// toolstack writes as `console/ring-ref`). Idempotent.
    pub fn build_console_page(&self, backend: DomId) -> Result<u64, crate::HvError> {
        self.state
            .build_console_page(backend)
            .ok_or(crate::HvError::BadConfig(
                "no memory or grant entry for the console page",
            ))
    }

    /// The guest's view of its primary console page (`start_info.console.domU.mfn`
    /// on PV, `HVM_PARAM_CONSOLE_PFN` on HVM), once built.
    pub fn console_page(&self) -> Option<SharedMem<'_>> {
        let frame = crate::hv::lock(&self.state.console_page)
            .as_ref()
            .map(|r| r.first())?;
        self.state.mem.frame_mem(frame)
    }

    /// Raw hypervisor map of one grant, returning the status as Xen would
    /// (for tests and adversaries that need the hypercall, not the safe API).
    pub fn raw_map(&self, dom: DomId, gref: GrantRef, access: Access) -> Result<u32, GntSt> {
        self.state
            .map_grant(dom, gref, access.is_readonly())
            .map(|(h, _, _)| h)
    }

    /// Raw hypervisor unmap of a handle from [`Domain::raw_map`].
    pub fn raw_unmap(&self, handle: u32) -> Result<(), GntSt> {
        self.state.unmap_grant(handle)
    }

    /// For a multi-process host: maps one grant as this domain (Xen's
    /// rules, as [`Domain::raw_map`]) and returns the maptrack handle with
    /// the memfd page holding the granted frame, to pass to this domain's
    /// process.
    pub fn host_map(
        &self,
        dom: DomId,
        gref: GrantRef,
        access: Access,
    ) -> Result<(u32, crate::memory::FramePage), GntSt> {
        let (h, granter, frame) = self.state.map_grant(dom, gref, access.is_readonly())?;
        match granter.mem.frame_page(frame) {
            Some(p) => Ok((h, p)),
            None => {
                let _ = self.state.unmap_grant(h);
                Err(GntSt::BadPage)
            }
        }
    }

    /// For a multi-process host: sets the unmap notify of a handle from
    /// [`Domain::host_map`] (run on unmap or when this domain dies).
    pub fn host_set_unmap_notify(
        &self,
        handle: u32,
        clear_byte: Option<u16>,
        port: Option<Port>,
    ) -> Result<(), GntSt> {
        self.state.set_notify(handle, Notify { clear_byte, port })
    }

    /// For a multi-process host: records an export-side notify for the
    /// share whose first ref is `first_ref` and whose notified page is
    /// `frame` (run when the domain lets go of the share, or dies).
    pub fn host_set_export_notify(
        &self,
        first_ref: GrantRef,
        frame: u64,
        offset: Option<u16>,
        port: Option<Port>,
    ) -> Result<(), GntSt> {
        if offset.is_some_and(|o| o as usize >= xenshare_abi::PAGE_SIZE) {
            return Err(GntSt::BadVirtAddr);
        }
        if !self.state.mem.frame_exists(frame) {
            return Err(GntSt::BadPage);
        }
        self.state.export_notifies.insert(
            first_ref.0,
            ExportNotify {
                frame,
                offset,
                port,
            },
        );
        Ok(())
    }

    /// For a multi-process host: the domain lets go of the share whose
    /// first ref is `first_ref`: runs its export notify, if any.
    pub fn host_fire_export_notify(&self, first_ref: GrantRef) {
        let n = self.state.export_notifies.remove(first_ref.0);
        if let Some(n) = n {
            self.state.fire_export_notify(n);
        }
    }

    /// For a multi-process host: opens an event channel handle whose
    /// wake-up tokens are bytes written, never blocking, to a pipe whose
    /// read end the domain's process holds: `write` is the pipe's
    /// non-blocking write end, `read` a read end the host keeps (so a write
    /// never finds the pipe without readers).
    pub fn evtchn_with_wake_pipe(
        &self,
        write: std::os::fd::OwnedFd,
        read: std::os::fd::OwnedFd,
    ) -> Arc<SimEvtchn> {
        Arc::new(SimEvtchn::open_with_pipe(self.state.clone(), write, read))
    }

    /// Entries in this domain's event channel handle list: live handles
    /// plus dead ones not yet pruned (bounded by about twice the live ones).
    pub fn evtchn_handle_slots(&self) -> usize {
        self.state.evt.handle_slots()
    }

    /// The memfd region of this domain's grant table (to pass to its
    /// process, which writes the table itself).
    pub fn grant_table_region(&self) -> &Region {
        &self.state.table
    }

    /// The memfd region of this domain's `shared_info` page (event pending
    /// and mask bitmaps).
    pub fn shared_info_region(&self) -> &Region {
        self.state.evt.shared_info()
    }
}

/// One grant mapped by an emulated domain.
pub struct SimHandle {
    handle: u32,
    granter: Arc<DomainState>,
    frame: u64,
    writable: bool,
}

/// A contiguous view of a mapped batch: either straight into the granter's
/// memory (adjacent frames, the common case) or a stitched mmap.
pub struct SimWindow {
    /// What keeps the memory mapped (held for its drop only).
    _keep: WindowKeep,
    /// The window's memory, resolved once when the window is made: drivers
    /// ask a mapping for its memory on every access, and that used to
    /// redo the granter's region lookup and slicing each time. Valid while
    /// `keep` lives; handed out only tied to a borrow of the window.
    view: SharedMem<'static>,
}

/// What keeps a [`SimWindow`]'s memory mapped. Never read: it is held for
/// its drop.
#[allow(dead_code)]
enum WindowKeep {
    /// Adjacent frames of one granter: its memory.
    Direct(Arc<DomainState>),
    /// Adjacent frames of one chunk of a chunked granter: the chunk.
    Chunk(Arc<Region>),
    /// Pages mapped one by one into a fresh reservation.
    Stitched(Stitched),
}

/// The import platform of an emulated domain.
pub struct SimMapper {
    dom: Arc<DomainState>,
    /// The hypervisor, held strongly (as the `Domain` handle does), so a
    /// map looks the granter up without upgrading the domain's weak link.
    hv: Arc<crate::hv::HvInner>,
}

impl ForeignMapper for SimMapper {
    type Handle = SimHandle;
    type Window = SimWindow;

    fn domid(&self) -> DomId {
        self.dom.id
    }

    fn map_batch(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        access: Access,
        out: &mut Vec<Result<SimHandle, GntSt>>,
    ) {
        for r in refs {
            out.push(self.map_one(dom, *r, access));
        }
    }

    fn map_one(&self, dom: DomId, gref: GrantRef, access: Access) -> Result<SimHandle, GntSt> {
        self.dom
            .map_grant_in(&self.hv, dom, gref, access.is_readonly())
            .map(|(handle, granter, frame)| SimHandle {
                handle,
                granter,
                frame,
                writable: !access.is_readonly(),
            })
    }

    fn unmap(&self, h: SimHandle) -> Result<(), GntSt> {
        self.dom.unmap_grant(h.handle)
    }

    fn window(&self, hs: &[SimHandle]) -> Result<SimWindow, GntSt> {
        let Some(first) = hs.first() else {
            return Err(GntSt::GeneralError);
        };
        let adjacent = hs.iter().enumerate().all(|(i, h)| {
            Arc::ptr_eq(&h.granter, &first.granter) && h.frame == first.frame + i as u64
        });
        if adjacent && !first.granter.mem.is_chunked() {
            let granter = first.granter.clone();
            let view = granter
                .frame_window(first.frame, hs.len())
                .ok_or(GntSt::BadPage)?;
            // SAFETY: the granter's single memory region stays mmap'd at
            // its address for as long as the granter's state lives, which
            // the window holds beside the view.
            let view = unsafe { view.detach::<'static>() };
            return Ok(SimWindow {
                _keep: WindowKeep::Direct(granter),
                view,
            });
        }
        let mut pages = Vec::with_capacity(hs.len());
        for h in hs {
            pages.push((
                h.granter.mem.frame_page(h.frame).ok_or(GntSt::BadPage)?,
                h.writable,
            ));
        }
        if adjacent {
            let (p0, _) = &pages[0];
            let same = pages.iter().enumerate().all(|(i, (p, _))| {
                Arc::ptr_eq(&p.region, &p0.region) && p.page == p0.page + i as u64
            });
            if same {
                let region = p0.region.clone();
                let view = region
                    .mem()
                    .slice(
                        p0.page as usize * xenshare_abi::PAGE_SIZE,
                        hs.len() * xenshare_abi::PAGE_SIZE,
                    )
                    .map_err(|_| GntSt::BadPage)?;
                // SAFETY: a chunk stays mmap'd at its address for as long
                // as it lives, which the window holds beside the view.
                let view = unsafe { view.detach::<'static>() };
                return Ok(SimWindow {
                    _keep: WindowKeep::Chunk(region),
                    view,
                });
            }
        }
        let fds: Vec<_> = pages
            .iter()
            .map(|(p, w)| (p.region.fd(), p.page, *w))
            .collect();
        let st = Stitched::new(&fds).map_err(|_| GntSt::NoSpace)?;
        // SAFETY: a stitched reservation stays mapped at its address until
        // it is dropped (moving the handle moves no pages), and the window
        // holds it beside the view.
        let view = unsafe { st.mem().detach::<'static>() };
        Ok(SimWindow {
            _keep: WindowKeep::Stitched(st),
            view,
        })
    }

    #[inline]
    unsafe fn window_mem(w: &SimWindow) -> SharedMem<'_> {
        w.view
    }

    fn set_unmap_notify(
        &self,
        h: &SimHandle,
        clear_byte: Option<u16>,
        port: Option<Port>,
    ) -> Result<(), GntSt> {
        self.dom.set_notify(h.handle, Notify { clear_byte, port })
    }

    fn copy(&self, ops: &mut [CopyOp<'_>]) {
        self.dom.copy_batch(ops);
    }
}
