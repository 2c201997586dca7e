//! The hypervisor: domains, and Xen's grant-table rules on map, unmap and
//! copy.
//!
//! Each domain's grant table lives in memory the domain writes directly (as
//! a guest does on Xen); on every map or copy the hypervisor runs the core's
//! [`xenshare::grant::entry::pin`] compare-and-swap on the granter's entry,
//! keeps its own pin counts, and clears `GTF_reading`/`GTF_writing` only
//! when the last pin of that kind goes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use xenshare::grant::entry::{self, BUSY};
use xenshare::grant::GntSt;
use xenshare::mem::SharedMem;
use xenshare::{DomId, GrantRef, Port};
use xenshare_abi::grant::{ENTRIES_PER_FRAME_V1, GTF_READING, GTF_WRITING};
use xenshare_abi::PAGE_SIZE;

use crate::evtchn::EvtState;
use crate::memory::DomainMemory;
use crate::region::{Region, RegionError};

/// A slab: values in reusable numbered slots (Xen's maptrack handles).
pub(crate) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, v: T) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(v);
                i
            }
            None => {
                self.items.push(Some(v));
                (self.items.len() - 1) as u32
            }
        }
    }

    pub(crate) fn remove(&mut self, i: u32) -> Option<T> {
        let v = self.items.get_mut(i as usize)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some(v)
    }

    pub(crate) fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.items.get_mut(i as usize)?.as_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        self.len = 0;
        self.items.drain(..).flatten().collect()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section in the
/// emulator leaves its data consistent at each step.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of a new domain.
#[derive(Debug, Clone, Copy)]
pub struct DomainConfig {
    /// RAM in 4 KiB pages.
    pub mem_pages: u64,
    /// Grant table size in frames (512 entries each), at most 256 (Xen's
    /// default limit is 64; `gnttab_max_frames` raises it, and the scale
    /// benchmark needs 10^5 live entries in one table).
    pub grant_frames: u32,
    /// Most grants this domain may have mapped at once (maptrack size).
    pub max_maptrack: usize,
    /// How revocation behaves while a peer maps (what kind of platform the
    /// domain models).
    pub revocation: RevocationModel,
}

/// What a revocation of a still-mapped share does, per platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationModel {
    /// A guest that owns its grant table (the emulator's default, a
    /// unikernel): the busy bits are visible, `try_unshare` reports busy,
    /// and proven revocations give the pages back.
    #[default]
    Proven,
    /// Linux's gntalloc after XSA-396: the kernel owns the table, so a
    /// revocation always "succeeds" for the caller; a page the peer still
    /// maps goes on a deferred list and is freed only after the peer
    /// unmaps. The caller never gets memory back (`Revoked::Retired`).
    KernelDefers,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            mem_pages: 4096,
            grant_frames: 4,
            max_maptrack: 65536,
            revocation: RevocationModel::Proven,
        }
    }
}

/// Errors of domain management.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// Creating memory failed.
    #[error("cannot create domain memory: {0}")]
    Memory(#[from] RegionError),
    /// The id is taken or reserved.
    #[error("domain id {0} is in use or reserved")]
    DomIdTaken(DomId),
    /// No such domain.
    #[error("no such domain {0}")]
    NoDomain(DomId),
    /// A configuration value is out of range.
    #[error("bad domain configuration: {0}")]
    BadConfig(&'static str),
}

/// Hypervisor-private state of an active grant entry.
struct Pin {
    frame: u64,
    mapper: DomId,
    readers: u32,
    writers: u32,
}

/// Unmap-notify request on a mapping.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Notify {
    pub clear_byte: Option<u16>,
    pub port: Option<Port>,
}

struct MapRecord {
    granter: Arc<DomainState>,
    gref: GrantRef,
    writable: bool,
    frame: u64,
    notify: Notify,
}

pub(crate) struct HvInner {
    /// Live domains, indexed by domain id (ids are small: at most 0x7FF0
    /// slots, grown on demand), so a lookup on every map, copy and event
    /// is an index, not a hash.
    domains: RwLock<Vec<Option<Arc<DomainState>>>>,
    next_domid: AtomicU16,
}

/// One domain as the hypervisor sees it.
pub struct DomainState {
    pub(crate) id: DomId,
    alive: AtomicBool,
    pub(crate) mem: Arc<DomainMemory>,
    pub(crate) table: Arc<Region>,
    nr_entries: u32,
    /// Active entries, indexed by grant ref (Xen's active grant table).
    pins: Mutex<Vec<Option<Pin>>>,
    /// This domain's mappings; the handle is the slot index (Xen's maptrack).
    maptrack: Mutex<Slab<MapRecord>>,
    max_maptrack: usize,
    pub(crate) evt: EvtState,
    pub(crate) revocation: RevocationModel,
    pub(crate) hv: Weak<HvInner>,
    /// Export-side unmap notifies (as gntalloc's): first ref of a share ->
    /// (frame, byte offset in that frame, port).
    pub(crate) export_notifies: ExportNotifies,
    /// The page the toolstack built for xenstore (never freed while alive).
    pub(crate) store_page: Mutex<Option<crate::memory::FrameRun>>,
    /// The page the toolstack built for the primary console (never freed while alive).
    pub(crate) console_page: Mutex<Option<crate::memory::FrameRun>>,
}

/// A domain's export-side unmap notifies, by the first ref of their share.
/// Every revocation asks for its share's notify; the count lets the common
/// case (no notify set at all) skip the lock.
#[derive(Default)]
pub(crate) struct ExportNotifies {
    map: Mutex<BTreeMap<u32, ExportNotify>>,
    /// `map.len()`, written under the lock.
    len: AtomicUsize,
}

impl ExportNotifies {
    /// Sets (or replaces) the notify of the share whose first ref is `first`.
    pub(crate) fn insert(&self, first: u32, n: ExportNotify) {
        let mut map = lock(&self.map);
        map.insert(first, n);
        self.len.store(map.len(), Ordering::Release);
    }

    /// Takes the notify of the share whose first ref is `first`, if any.
    pub(crate) fn remove(&self, first: u32) -> Option<ExportNotify> {
        // A notify set for this share happened before its revocation (the
        // share's owner set it), so it is counted here.
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut map = lock(&self.map);
        let n = map.remove(&first);
        self.len.store(map.len(), Ordering::Release);
        n
    }

    /// Takes every notify.
    fn drain(&self) -> Vec<ExportNotify> {
        let mut map = lock(&self.map);
        self.len.store(0, Ordering::Release);
        std::mem::take(&mut *map).into_values().collect()
    }
}

/// An export-side unmap notify: what to do when this domain lets go of a
/// share, or dies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportNotify {
    pub frame: u64,
    pub offset: Option<u16>,
    pub port: Option<Port>,
}

/// The emulated hypervisor.
#[derive(Clone)]
pub struct Hypervisor {
    pub(crate) inner: Arc<HvInner>,
}

impl Default for Hypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Hypervisor {
    /// A hypervisor with no domains.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HvInner {
                domains: RwLock::new(Vec::new()),
                next_domid: AtomicU16::new(1),
            }),
        }
    }

    /// Creates a domain with a chosen id (0 for the control domain).
    pub fn create_domain_with_id(
        &self,
        id: DomId,
        cfg: DomainConfig,
    ) -> Result<crate::Domain, HvError> {
        self.create(id, cfg, false)
    }

    /// Creates a domain whose code runs in another process (see the
    /// `xenshare-host` crate): its RAM is chunked — memfds the process
    /// registers one per allocation ([`DomainMemory::add_chunk`]) — and
    /// `cfg.mem_pages` limits their total. The grant and event rules are
    /// the same as for any domain.
    pub fn create_remote_domain(
        &self,
        id: DomId,
        cfg: DomainConfig,
    ) -> Result<crate::Domain, HvError> {
        self.create(id, cfg, true)
    }

    fn create(
        &self,
        id: DomId,
        cfg: DomainConfig,
        chunked: bool,
    ) -> Result<crate::Domain, HvError> {
        if !id.is_real() {
            return Err(HvError::DomIdTaken(id));
        }
        if cfg.mem_pages == 0 || cfg.mem_pages > (1 << 22) {
            return Err(HvError::BadConfig("mem_pages must be 1..=4194304"));
        }
        if cfg.grant_frames == 0 || cfg.grant_frames > 256 {
            return Err(HvError::BadConfig("grant_frames must be 1..=256"));
        }
        let mut doms = self
            .inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if doms.get(id.0 as usize).is_some_and(Option::is_some) {
            return Err(HvError::DomIdTaken(id));
        }
        let mem = Arc::new(if chunked {
            DomainMemory::new_chunked(cfg.mem_pages)
        } else {
            DomainMemory::new(&format!("xenshare-d{}-ram", id.0), cfg.mem_pages)?
        });
        let table = Arc::new(Region::new(
            &format!("xenshare-d{}-gnttab", id.0),
            cfg.grant_frames as usize * PAGE_SIZE,
        )?);
        let state = Arc::new(DomainState {
            id,
            revocation: cfg.revocation,
            alive: AtomicBool::new(true),
            mem,
            table,
            nr_entries: cfg.grant_frames * ENTRIES_PER_FRAME_V1 as u32,
            pins: Mutex::new(
                (0..cfg.grant_frames as usize * ENTRIES_PER_FRAME_V1)
                    .map(|_| None)
                    .collect(),
            ),
            maptrack: Mutex::new(Slab::default()),
            max_maptrack: cfg.max_maptrack,
            evt: EvtState::new(id)?,
            hv: Arc::downgrade(&self.inner),
            export_notifies: ExportNotifies::default(),
            store_page: Mutex::new(None),
            console_page: Mutex::new(None),
        });
        let slot = id.0 as usize;
        if doms.len() <= slot {
            doms.resize(slot + 1, None);
        }
        doms[slot] = Some(state.clone());
        Ok(crate::Domain::new(state, self.clone()))
    }

    /// Creates a domain with the next free id.
    pub fn create_domain(&self, cfg: DomainConfig) -> Result<crate::Domain, HvError> {
        loop {
            let id = self.inner.next_domid.fetch_add(1, Ordering::Relaxed);
            if !DomId(id).is_real() {
                return Err(HvError::BadConfig("domain ids exhausted"));
            }
            match self.create_domain_with_id(DomId(id), cfg) {
                Err(HvError::DomIdTaken(_)) => continue,
                other => return other,
            }
        }
    }

    /// The live domain ids.
    pub fn domains(&self) -> Vec<DomId> {
        let doms = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
        doms.iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .map(|(i, _)| DomId(i as u16))
            .collect()
    }

    /// Destroys a domain: releases every grant it has mapped (running their
    /// unmap notifies), closes its ports (peers return to unbound) and
    /// removes it. Memory it granted stays alive while others map it.
    pub fn destroy_domain(&self, id: DomId) -> Result<(), HvError> {
        let state = {
            let mut doms = self
                .inner
                .domains
                .write()
                .unwrap_or_else(|e| e.into_inner());
            doms.get_mut(id.0 as usize)
                .and_then(Option::take)
                .ok_or(HvError::NoDomain(id))?
        };
        state.destroy();
        Ok(())
    }
}

impl HvInner {
    pub(crate) fn lookup(&self, id: DomId) -> Option<Arc<DomainState>> {
        let doms = self.domains.read().unwrap_or_else(|e| e.into_inner());
        doms.get(id.0 as usize)?
            .as_ref()
            .filter(|d| d.is_alive())
            .cloned()
    }
}

/// What the hypervisor reports about an entry it has pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveGrant {
    /// The reference.
    pub gref: GrantRef,
    /// The mapping domain.
    pub mapper: DomId,
    /// Read-only pins.
    pub readers: u32,
    /// Writable pins.
    pub writers: u32,
}

impl DomainState {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(crate) fn hv(&self) -> Option<Arc<HvInner>> {
        self.hv.upgrade()
    }

    /// Looks up a live domain (itself included).
    pub(crate) fn domain(&self, id: DomId) -> Option<Arc<DomainState>> {
        self.hv()?.lookup(id)
    }

    fn entry_words(&self, gref: GrantRef) -> Option<(&AtomicU32, &AtomicU32)> {
        if gref.0 >= self.nr_entries {
            return None;
        }
        let t = self.table.mem();
        let off = gref.0 as usize * 8;
        Some((t.atomic_u32(off).ok()?, t.atomic_u32(off + 4).ok()?))
    }

    /// Pins (as granter) `gref` for `mapper`; returns the frame.
    fn acquire(&self, gref: GrantRef, mapper: DomId, readonly: bool) -> Result<u64, GntSt> {
        let (word, frame_word) = self.entry_words(gref).ok_or(GntSt::BadGntref)?;
        let mut pins = lock(&self.pins);
        let slot = pins.get_mut(gref.0 as usize).ok_or(GntSt::BadGntref)?;
        if let Some(p) = slot {
            if p.mapper != mapper {
                return Err(GntSt::GeneralError);
            }
            if !readonly && p.writers == 0 {
                entry::pin(word, mapper, false)?;
            }
            if readonly {
                p.readers += 1;
            } else {
                p.writers += 1;
            }
            return Ok(p.frame);
        }
        entry::pin(word, mapper, readonly)?;
        // The frame is read once, after the pin, and cached: a granter that
        // rewrites it later does not move existing mappings.
        let frame = u64::from(frame_word.load(Ordering::Acquire));
        if !self.mem.frame_exists(frame) {
            entry::unpin(word, BUSY);
            return Err(GntSt::BadPage);
        }
        *slot = Some(Pin {
            frame,
            mapper,
            readers: u32::from(readonly),
            writers: u32::from(!readonly),
        });
        Ok(frame)
    }

    /// Drops one pin (as granter) of `gref`.
    fn release(&self, gref: GrantRef, writable: bool) {
        let Some((word, _)) = self.entry_words(gref) else {
            return;
        };
        let mut pins = lock(&self.pins);
        let Some(slot) = pins.get_mut(gref.0 as usize) else {
            return;
        };
        let Some(p) = slot.as_mut() else {
            return;
        };
        if writable {
            p.writers = p.writers.saturating_sub(1);
        } else {
            p.readers = p.readers.saturating_sub(1);
        }
        let mut clear = 0;
        if p.writers == 0 {
            clear |= GTF_WRITING;
        }
        if p.writers == 0 && p.readers == 0 {
            clear |= GTF_READING;
            *slot = None;
        }
        if clear != 0 {
            entry::unpin(word, clear);
        }
    }

    /// The entries this domain's peers have pinned.
    pub fn active_grants(&self) -> Vec<ActiveGrant> {
        let pins = lock(&self.pins);
        pins.iter()
            .enumerate()
            .filter_map(|(r, p)| {
                p.as_ref().map(|p| ActiveGrant {
                    gref: GrantRef(r as u32),
                    mapper: p.mapper,
                    readers: p.readers,
                    writers: p.writers,
                })
            })
            .collect()
    }

    /// Number of grants this domain has mapped.
    pub fn mapped_count(&self) -> usize {
        lock(&self.maptrack).len()
    }

    /// GNTTABOP_map_grant_ref, as this domain.
    pub(crate) fn map_grant(
        &self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<(u32, Arc<DomainState>, u64), GntSt> {
        let hv = self.hv().ok_or(GntSt::BadDomain)?;
        self.map_grant_in(&hv, dom, gref, readonly)
    }

    /// GNTTABOP_map_grant_ref, as this domain, of hypervisor `hv` (for a
    /// caller that holds it already).
    pub(crate) fn map_grant_in(
        &self,
        hv: &HvInner,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<(u32, Arc<DomainState>, u64), GntSt> {
        if !self.is_alive() {
            return Err(GntSt::BadDomain);
        }
        let granter = hv.lookup(dom).ok_or(GntSt::BadDomain)?;
        // One maptrack lock for the check and the insert. (Lock order:
        // the mapper's maptrack, then the granter's pins; nothing takes
        // them the other way round.)
        let mut mt = lock(&self.maptrack);
        if mt.len() >= self.max_maptrack {
            return Err(GntSt::NoSpace);
        }
        let frame = granter.acquire(gref, self.id, readonly)?;
        let handle = mt.insert(MapRecord {
            granter: granter.clone(),
            gref,
            writable: !readonly,
            frame,
            notify: Notify::default(),
        });
        Ok((handle, granter, frame))
    }

    /// GNTTABOP_unmap_grant_ref, as this domain.
    pub(crate) fn unmap_grant(&self, handle: u32) -> Result<(), GntSt> {
        let rec = lock(&self.maptrack)
            .remove(handle)
            .ok_or(GntSt::BadHandle)?;
        self.finish_unmap(rec);
        Ok(())
    }

    fn finish_unmap(&self, rec: MapRecord) {
        if let Some(off) = rec.notify.clear_byte {
            if rec.writable {
                if let Some(p) = rec.granter.mem.frame_page(rec.frame) {
                    if let Some(m) = p.mem() {
                        let _ = m.write(off as usize, &[0]);
                    }
                }
            }
        }
        rec.granter.release(rec.gref, rec.writable);
        if let Some(port) = rec.notify.port {
            let _ = self.evtchn_send(port);
        }
    }

    pub(crate) fn set_notify(&self, handle: u32, notify: Notify) -> Result<(), GntSt> {
        let mut mt = lock(&self.maptrack);
        let rec = mt.get_mut(handle).ok_or(GntSt::BadHandle)?;
        if notify.clear_byte.is_some() && !rec.writable {
            // As gntdev: clearing a byte needs a writable mapping.
            return Err(GntSt::PermissionDenied);
        }
        if notify.clear_byte.is_some_and(|o| o as usize >= PAGE_SIZE) {
            return Err(GntSt::BadVirtAddr);
        }
        rec.notify = notify;
        Ok(())
    }

    /// GNTTABOP_copy of a batch of segments, as this domain: each op gets
    /// its own status, as in Xen. The granting domain of consecutive ops is
    /// looked up once while it stays the same (a netback batch names one
    /// front end throughout).
    pub(crate) fn copy_batch(&self, ops: &mut [xenshare::platform::CopyOp<'_>]) {
        let mut cache: Option<(DomId, Arc<DomainState>)> = None;
        for op in ops.iter_mut() {
            op.status = self.copy_one(op, &mut cache);
        }
    }

    /// The live domain `dom`, through a one-entry cache kept for a batch.
    fn granter(
        &self,
        dom: DomId,
        cache: &mut Option<(DomId, Arc<DomainState>)>,
    ) -> Result<Arc<DomainState>, GntSt> {
        if let Some((id, g)) = cache {
            if *id == dom && g.is_alive() {
                return Ok(g.clone());
            }
        }
        let g = self.domain(dom).ok_or(GntSt::BadDomain)?;
        *cache = Some((dom, g.clone()));
        Ok(g)
    }

    /// GNTTABOP_copy of one segment, as this domain: both sides are pinned
    /// (transiently), the bytes copied straight from the source to the
    /// destination, then both unpinned.
    fn copy_one(
        &self,
        op: &mut xenshare::platform::CopyOp<'_>,
        cache: &mut Option<(DomId, Arc<DomainState>)>,
    ) -> GntSt {
        use xenshare::platform::{CopyDst, CopySrc};
        let len = op.len as usize;
        let check = |offset: u16| {
            if offset as usize + len > PAGE_SIZE {
                Err(GntSt::BadCopyArg)
            } else {
                Ok(())
            }
        };
        let mut pin = |p: &xenshare::platform::GrantPtr, readonly: bool| {
            check(p.offset)?;
            let g = self.granter(p.dom, cache)?;
            let f = g.acquire(p.gref, self.id, readonly)?;
            Ok::<_, GntSt>((g, f, p.offset, p.gref))
        };
        let src = match &op.src {
            CopySrc::Grant(p) => match pin(p, true) {
                Ok(s) => Some(s),
                Err(e) => return e,
            },
            CopySrc::Local(_) => None,
        };
        let dst = match &op.dst {
            CopyDst::Grant(p) => match pin(p, false) {
                Ok(d) => Some(d),
                Err(e) => {
                    if let Some((g, _, _, r)) = src {
                        g.release(r, false);
                    }
                    return e;
                }
            },
            CopyDst::Local(_) => None,
        };
        let src_page = src.as_ref().and_then(|(g, f, _, _)| g.mem.frame_page(*f));
        let dst_page = dst.as_ref().and_then(|(g, f, _, _)| g.mem.frame_page(*f));
        // The window of `len` bytes at `off` in a pinned frame.
        fn window(
            page: &Option<crate::memory::FramePage>,
            off: u16,
            len: usize,
        ) -> Option<SharedMem<'_>> {
            page.as_ref()?.mem()?.slice(off as usize, len).ok()
        }
        let status = match (&op.src, &mut op.dst) {
            (CopySrc::Local(b), CopyDst::Local(d)) => match (b.get(..len), d.get_mut(..len)) {
                (Some(b), Some(d)) => {
                    d.copy_from_slice(b);
                    GntSt::Okay
                }
                _ => GntSt::BadCopyArg,
            },
            (CopySrc::Local(b), CopyDst::Grant(p)) => {
                match (b.get(..len), window(&dst_page, p.offset, len)) {
                    (None, _) => GntSt::BadCopyArg,
                    (Some(b), Some(m)) if m.write(0, b).is_ok() => GntSt::Okay,
                    _ => GntSt::BadPage,
                }
            }
            (CopySrc::Grant(p), CopyDst::Local(d)) => {
                match (window(&src_page, p.offset, len), d.get_mut(..len)) {
                    (_, None) => GntSt::BadCopyArg,
                    (Some(m), Some(d)) => match m.read(0, d) {
                        Ok(()) => GntSt::Okay,
                        Err(_) => GntSt::BadPage,
                    },
                    (None, Some(_)) => GntSt::BadPage,
                }
            }
            (CopySrc::Grant(sp), CopyDst::Grant(dp)) => {
                // Both sides shared: through a page-sized buffer on the stack.
                let mut buf = [0u8; PAGE_SIZE];
                let buf = &mut buf[..len];
                match (
                    window(&src_page, sp.offset, len),
                    window(&dst_page, dp.offset, len),
                ) {
                    (Some(s), Some(d)) if s.read(0, buf).is_ok() && d.write(0, buf).is_ok() => {
                        GntSt::Okay
                    }
                    _ => GntSt::BadPage,
                }
            }
        };
        if let Some((g, _, _, r)) = src {
            g.release(r, false);
        }
        if let Some((g, _, _, r)) = dst {
            g.release(r, true);
        }
        status
    }

    /// The memory of `frame` of this domain.
    pub(crate) fn frame_window(&self, first: u64, count: usize) -> Option<SharedMem<'_>> {
        let off = usize::try_from(first).ok()?.checked_mul(PAGE_SIZE)?;
        self.mem
            .region()?
            .mem()
            .slice(off, count.checked_mul(PAGE_SIZE)?)
            .ok()
    }

    fn destroy(&self) {
        self.alive.store(false, Ordering::Release);
        let records: Vec<MapRecord> = lock(&self.maptrack).drain();
        // Notifies may send events through our ports: run them before the
        // ports close.
        for rec in records {
            self.finish_unmap(rec);
        }
        let notes: Vec<ExportNotify> = self.export_notifies.drain();
        for n in notes {
            self.fire_export_notify(n);
        }
        self.evt_destroy();
    }

    /// The toolstack's part of a guest's xenstore set-up: a zeroed page,
    /// pre-granted to `backend` as reserved ref 1 (`GNTTAB_RESERVED_XENSTORE`).
    /// Returns its frame number.
    pub(crate) fn build_store_page(&self, backend: DomId) -> Option<u64> {
        use xenshare::platform::{FrameAllocator, PageSet};
        let mut slot = lock(&self.store_page);
        if let Some(run) = slot.as_ref() {
            return Some(run.first());
        }
        let run = crate::memory::SimFrames(self.mem.clone()).alloc(1)?;
        run.mem().fill(0, PAGE_SIZE, 0).ok()?;
        let frame = run.first();
        let (w, f) = self.entry_words(GrantRef(xenshare_abi::grant::GNTTAB_RESERVED_XENSTORE))?;
        entry::grant_access(w, f, backend, u32::try_from(frame).ok()?, false).ok()?;
        *slot = Some(run);
        Some(frame)
    }

    /// The toolstack's part of a guest's primary console: a zeroed page,
    /// pre-granted to `backend` as reserved ref 0 (`GNTTAB_RESERVED_CONSOLE`).
    /// Returns its frame number.
    pub(crate) fn build_console_page(&self, backend: DomId) -> Option<u64> {
        use xenshare::platform::{FrameAllocator, PageSet};
        let mut slot = lock(&self.console_page);
        if let Some(run) = slot.as_ref() {
            return Some(run.first());
        }
        let run = crate::memory::SimFrames(self.mem.clone()).alloc(1)?;
        run.mem().fill(0, PAGE_SIZE, 0).ok()?;
        let frame = run.first();
        let (w, f) = self.entry_words(GrantRef(xenshare_abi::grant::GNTTAB_RESERVED_CONSOLE))?;
        entry::grant_access(w, f, backend, u32::try_from(frame).ok()?, false).ok()?;
        *slot = Some(run);
        Some(frame)
    }

    /// Runs an export-side notify: clear the byte, then send the event.
    pub(crate) fn fire_export_notify(&self, n: ExportNotify) {
        if let (Some(off), Some(p)) = (n.offset, self.mem.frame_page(n.frame)) {
            if let Some(m) = p.mem() {
                let _ = m.write(off as usize, &[0]);
            }
        }
        if let Some(p) = n.port {
            let _ = self.evtchn_send(p);
        }
    }

    /// Whether `gref` of this domain currently has `GTF_reading` or
    /// `GTF_writing` set (for tests and the inspector).
    pub fn entry_busy(&self, gref: GrantRef) -> bool {
        self.entry_words(gref)
            .map(|(w, _)| {
                entry::flags_of(w.load(Ordering::Acquire)) & (GTF_READING | GTF_WRITING) != 0
            })
            .unwrap_or(false)
    }
}
