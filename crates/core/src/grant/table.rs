//! A guest-owned v1 grant table and the backend that shares a domain's own
//! frames through it.
//!
//! One allocator owns the references. The reserved refs (0 console,
//! 1 xenstore, up to [`GNTTAB_NR_RESERVED_ENTRIES`]) are never in it; a ref
//! goes back into it only from a successful revocation, so a live ref can
//! never be granted twice.

use alloc::vec::Vec;

use xenshare_abi::grant::{GrantEntryV1, GNTTAB_NR_RESERVED_ENTRIES};

use super::entry::{self, StillMapped};
use super::{GntSt, GrantError};
use crate::mem::SharedMem;
use crate::platform::{FrameAllocator, GrantBackend, PageSet, TableMemory};
use crate::sync::Mutex;
use crate::types::{Access, DomId, GrantRef};

const ENTRY_SIZE: usize = core::mem::size_of::<GrantEntryV1>();

/// A snapshot of one table entry, for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// The reference.
    pub gref: GrantRef,
    /// `GTF_*` flags.
    pub flags: u16,
    /// The grantee.
    pub domid: DomId,
    /// The shared frame.
    pub frame: u32,
}

impl core::fmt::Display for TableEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:>6}  {:<30} {:>4}  {:#x}",
            self.gref.0,
            FlagsDisplay(self.flags),
            self.domid,
            self.frame
        )
    }
}

/// `GTF_*` flags in words: `permit_access|readonly|reading|writing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagsDisplay(pub u16);

impl core::fmt::Display for FlagsDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use xenshare_abi::grant::*;
        let ty = match self.0 & GTF_TYPE_MASK {
            GTF_INVALID => "invalid",
            GTF_PERMIT_ACCESS => "permit_access",
            GTF_ACCEPT_TRANSFER => "accept_transfer",
            _ => "transitive",
        };
        let mut s = alloc::string::String::from(ty);
        if self.0 & GTF_TYPE_MASK != GTF_ACCEPT_TRANSFER {
            for (bit, name) in [
                (GTF_READONLY, "readonly"),
                (GTF_READING, "reading"),
                (GTF_WRITING, "writing"),
            ] {
                if self.0 & bit != 0 {
                    s.push('|');
                    s.push_str(name);
                }
            }
        }
        f.pad(&s)
    }
}

/// A domain's grant table, in memory shared with the hypervisor.
pub struct GrantTable<T: TableMemory> {
    mem: T,
    nr_entries: u32,
    free: Mutex<Vec<GrantRef>>,
}

impl<T: TableMemory> GrantTable<T> {
    /// Takes over a table. Every entry past the reserved ones must be invalid.
    pub fn new(mem: T) -> Self {
        let nr_entries = (mem.table().len() / ENTRY_SIZE) as u32;
        // Popped from the back: lowest refs are handed out first.
        let free = (GNTTAB_NR_RESERVED_ENTRIES..nr_entries)
            .rev()
            .map(GrantRef)
            .collect();
        Self {
            mem,
            nr_entries,
            free: Mutex::new(free),
        }
    }

    /// Number of entries, reserved ones included.
    pub fn capacity(&self) -> u32 {
        self.nr_entries
    }

    /// References currently free.
    pub fn free_count(&self) -> usize {
        self.free.lock().len()
    }

    /// The table's memory.
    pub fn memory(&self) -> &T {
        &self.mem
    }

    fn words(
        &self,
        r: GrantRef,
    ) -> Option<(
        &core::sync::atomic::AtomicU32,
        &core::sync::atomic::AtomicU32,
    )> {
        if r.0 >= self.nr_entries {
            return None;
        }
        let table: SharedMem<'_> = self.mem.table();
        let off = r.0 as usize * ENTRY_SIZE;
        Some((table.atomic_u32(off).ok()?, table.atomic_u32(off + 4).ok()?))
    }

    /// A snapshot of entry `r`, or `None` past the end of the table.
    pub fn entry(&self, r: GrantRef) -> Option<TableEntry> {
        let (w, f) = self.words(r)?;
        let word = w.load(core::sync::atomic::Ordering::Acquire);
        Some(TableEntry {
            gref: r,
            flags: entry::flags_of(word),
            domid: entry::domid_of(word),
            frame: f.load(core::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Snapshots of every entry that is not invalid (reserved ones included).
    pub fn active_entries(&self) -> Vec<TableEntry> {
        (0..self.nr_entries)
            .filter_map(|r| self.entry(GrantRef(r)))
            .filter(|e| e.flags != 0)
            .collect()
    }

    /// Takes `n` free references, all or none.
    pub(crate) fn alloc_refs(&self, n: usize) -> Result<Vec<GrantRef>, GrantError> {
        let mut free = self.free.lock();
        if free.len() < n {
            return Err(GrantError::TableFull);
        }
        let at = free.len() - n;
        let mut refs = free.split_off(at);
        refs.reverse();
        Ok(refs)
    }

    /// Publishes a grant on a ref this table handed out and that is not live.
    pub(crate) fn grant(&self, r: GrantRef, peer: DomId, frame: u32, readonly: bool) {
        if let Some((w, f)) = self.words(r) {
            entry::grant_access(w, f, peer, frame, readonly);
        }
    }

    /// Tries to end access on `r`.
    pub(crate) fn try_end(&self, r: GrantRef) -> Result<(), StillMapped> {
        match self.words(r) {
            Some((w, _)) => entry::try_end_access(w),
            None => Ok(()),
        }
    }

    /// Returns refs proven revoked to the allocator.
    pub(crate) fn free_refs(&self, refs: Vec<GrantRef>) {
        let mut free = self.free.lock();
        free.extend(refs.into_iter().rev());
    }
}

/// A live share of a [`TableBackend`]: its refs and the frames they grant.
pub struct TableShare<F> {
    refs: Vec<GrantRef>,
    frames: F,
}

/// The export backend for platforms where the guest owns its grant table.
pub struct TableBackend<T: TableMemory, A: FrameAllocator> {
    domid: DomId,
    table: GrantTable<T>,
    frames: A,
}

impl<T: TableMemory, A: FrameAllocator> TableBackend<T, A> {
    /// A backend for domain `domid` over its table and its frame allocator.
    pub fn new(domid: DomId, table: T, frames: A) -> Self {
        Self {
            domid,
            table: GrantTable::new(table),
            frames,
        }
    }

    /// The grant table.
    pub fn table(&self) -> &GrantTable<T> {
        &self.table
    }

    /// The frame allocator.
    pub fn frames(&self) -> &A {
        &self.frames
    }
}

impl<T: TableMemory, A: FrameAllocator> GrantBackend for TableBackend<T, A> {
    type Pages = A::Frames;
    type Live = TableShare<A::Frames>;

    fn domid(&self) -> DomId {
        self.domid
    }

    fn share_new(&self, peer: DomId, n: usize, access: Access) -> Result<Self::Live, GrantError> {
        let frames = self
            .frames
            .alloc(n)
            .ok_or(GrantError::OutOfMemory { pages: n })?;
        // Zeroed here as well as by the exporter: a frame fresh from the
        // allocator may hold another share's old data (XSA-403).
        frames
            .mem()
            .fill(0, frames.mem().len(), 0)
            .map_err(|_| GrantError::Platform(GntSt::BadPage))?;
        self.share_pages(peer, frames, access).map_err(|(e, _)| e)
    }

    fn share_pages(
        &self,
        peer: DomId,
        frames: Self::Pages,
        access: Access,
    ) -> Result<Self::Live, (GrantError, Self::Pages)> {
        let n = frames.page_count();
        let mut gfns = Vec::with_capacity(n);
        for i in 0..n {
            match u32::try_from(A::frame(&frames, i)) {
                Ok(f) => gfns.push(f),
                Err(_) => return Err((GrantError::Platform(GntSt::AddressTooBig), frames)),
            }
        }
        let refs = match self.table.alloc_refs(n) {
            Ok(r) => r,
            Err(e) => return Err((e, frames)),
        };
        for (r, f) in refs.iter().zip(gfns) {
            self.table.grant(*r, peer, f, access.is_readonly());
        }
        Ok(TableShare { refs, frames })
    }

    fn refs(live: &Self::Live) -> &[GrantRef] {
        &live.refs
    }

    fn live_mem(live: &Self::Live) -> SharedMem<'_> {
        live.frames.mem()
    }

    fn try_revoke(&self, live: Self::Live) -> Result<Self::Pages, Self::Live> {
        // Every entry is tried even after a busy one, so the peer loses
        // access to all pages it has already let go of.
        let mut all = true;
        for r in &live.refs {
            if self.table.try_end(*r).is_err() {
                all = false;
            }
        }
        if !all {
            return Err(live);
        }
        let TableShare { refs, frames } = live;
        self.table.free_refs(refs);
        Ok(frames)
    }

    fn leak(&self, live: Self::Live) {
        // The refs are simply never returned to the allocator.
        self.frames.leak(live.frames);
    }
}
