//! A guest-owned v1 grant table and the backend that shares a domain's own
//! frames through it.
//!
//! One allocator owns the references. The reserved refs (0 console,
//! 1 xenstore, up to [`GNTTAB_NR_RESERVED_ENTRIES`]) are never in it; a ref
//! goes back into it only from a successful revocation, so a live ref can
//! never be granted twice. Even so, an entry is only ever published over an
//! invalid one ([`entry::grant_access`] swaps from invalid and fails
//! otherwise), so a broken invariant is detected instead of clearing a
//! mapper's busy bits.
//!
//! A [`TableShare`] (a live share) owns its frames in a way that leaks on
//! drop: only a proven revocation turns them back into pages. The table and
//! its backend are reachable from outside only as a read-only [`TableView`].
//!
//! ```compile_fail,E0616
//! # fn steal<F>(live: xenshare::grant::table::TableShare<F>) -> F {
//! live.frames // the frames of a live share cannot be taken out
//! # }
//! ```

use alloc::vec::Vec;
use core::mem::ManuallyDrop;

use xenshare_abi::grant::{GrantEntryV1, GNTTAB_NR_RESERVED_ENTRIES};

use super::entry::{self, StillMapped};
use super::few::Few;
use super::{GntSt, GrantError, Revoked};
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

/// Read-only queries on a grant table, for inspectors, tools and tests.
pub trait TableView: Send + Sync {
    /// Number of entries, reserved ones included.
    fn capacity(&self) -> u32;
    /// References currently free.
    fn free_count(&self) -> usize;
    /// A snapshot of entry `r`, or `None` past the end of the table.
    fn entry(&self, r: GrantRef) -> Option<TableEntry>;
    /// Snapshots of every entry that is not invalid (reserved ones included).
    fn active_entries(&self) -> Vec<TableEntry> {
        (0..self.capacity())
            .filter_map(|r| self.entry(GrantRef(r)))
            .filter(|e| e.flags != 0)
            .collect()
    }
}

/// A domain's grant table, in memory shared with the hypervisor.
pub struct GrantTable<T: TableMemory> {
    mem: T,
    nr_entries: u32,
    free: Mutex<Vec<GrantRef>>,
}

impl<T: TableMemory> GrantTable<T> {
    /// Takes over a table. Entries past the reserved ones are expected to be
    /// invalid; one that is not is never handed out.
    pub(crate) fn new(mem: T) -> Self {
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

    /// The header (`flags|domid`) word of entry `r`.
    fn header(&self, r: GrantRef) -> Option<&core::sync::atomic::AtomicU32> {
        if r.0 >= self.nr_entries {
            return None;
        }
        self.mem.table().atomic_u32(r.0 as usize * ENTRY_SIZE).ok()
    }

    /// Takes `gfns.len()` free references and publishes a grant of each
    /// frame on one, all or none.
    ///
    /// The allocator lock is held throughout, so no other share of this
    /// table publishes meanwhile. A free ref whose entry is not invalid
    /// (something else wrote the table) is dropped from the allocator for
    /// good and another one taken. If a publication still fails, the refs
    /// already published are revoked; should the peer already hold one of
    /// them, those refs are returned in the error, and the caller must not
    /// reuse the frames.
    pub(crate) fn grant_all(
        &self,
        peer: DomId,
        gfns: &[u32],
        readonly: bool,
    ) -> Result<Few<GrantRef>, GrantAllError> {
        let mut free = self.free.lock();
        let mut refs = Few::with_capacity(gfns.len());
        while refs.len() < gfns.len() {
            let Some(r) = free.pop() else {
                free.extend(refs.as_slice().iter().rev().copied());
                return Err(GrantAllError::Full);
            };
            match self.header(r) {
                Some(w) if entry::flags_of(w.load(core::sync::atomic::Ordering::Acquire)) == 0 => {
                    refs.push(r)
                }
                // Not ours to hand out any more: never put back.
                _ => {}
            }
        }
        let refs_slice = refs.as_slice();
        for (i, (&r, &gfn)) in refs_slice.iter().zip(gfns).enumerate() {
            let published = match self.words(r) {
                Some((w, f)) => entry::grant_access(w, f, peer, gfn, readonly).is_ok(),
                None => false,
            };
            if !published {
                // Only a writer outside this allocator can get here (the
                // `TableMemory` contract forbids one). Take back what was
                // published; `r` itself stays out of the allocator.
                let mut stuck = Vec::new();
                for &done in &refs_slice[..i] {
                    if self.try_end(done).is_ok() {
                        free.push(done);
                    } else {
                        stuck.push(done);
                    }
                }
                free.extend(refs_slice[i + 1..].iter().rev().copied());
                return Err(GrantAllError::Corrupt { stuck });
            }
        }
        Ok(refs)
    }

    /// Tries to end access on `r`.
    pub(crate) fn try_end(&self, r: GrantRef) -> Result<(), StillMapped> {
        match self.header(r) {
            Some(w) => entry::try_end_access(w),
            None => Ok(()),
        }
    }

    /// Returns refs proven revoked to the allocator.
    pub(crate) fn free_refs(&self, refs: &[GrantRef]) {
        let mut free = self.free.lock();
        free.extend(refs.iter().rev().copied());
    }
}

/// Why [`GrantTable::grant_all`] failed.
pub(crate) enum GrantAllError {
    /// Not enough free references.
    Full,
    /// An entry was written behind the allocator's back; `stuck` are refs
    /// of this batch a peer already holds.
    Corrupt { stuck: Vec<GrantRef> },
}

impl<T: TableMemory> TableView for GrantTable<T> {
    fn capacity(&self) -> u32 {
        self.nr_entries
    }

    fn free_count(&self) -> usize {
        self.free.lock().len()
    }

    fn entry(&self, r: GrantRef) -> Option<TableEntry> {
        let (w, f) = self.words(r)?;
        let word = w.load(core::sync::atomic::Ordering::Acquire);
        Some(TableEntry {
            gref: r,
            flags: entry::flags_of(word),
            domid: entry::domid_of(word),
            frame: f.load(core::sync::atomic::Ordering::Relaxed),
        })
    }
}

/// A live share of a [`TableBackend`]: its refs and the frames they grant.
///
/// Dropping it leaks both (the frames stay allocated, the refs never go
/// back to the allocator): only [`GrantBackend::try_revoke`] gives them back.
pub struct TableShare<F> {
    refs: Few<GrantRef>,
    frames: ManuallyDrop<F>,
}

/// The export backend for platforms where the guest owns its grant table.
pub struct TableBackend<T: TableMemory, A: FrameAllocator> {
    domid: DomId,
    table: GrantTable<T>,
    frames: A,
}

impl<T: TableMemory, A: FrameAllocator> TableBackend<T, A> {
    /// A backend for domain `domid` over its table and its frame allocator.
    ///
    /// # Safety
    ///
    /// This must be the only allocator over that table for as long as it
    /// lives (no second `TableBackend` over the same grant table): two
    /// allocators could hand out the same ref twice.
    pub unsafe fn new(domid: DomId, table: T, frames: A) -> Self {
        Self {
            domid,
            table: GrantTable::new(table),
            frames,
        }
    }

    /// The frame allocator.
    pub fn frames(&self) -> &A {
        &self.frames
    }
}

// SAFETY: a `TableShare` leaks on drop (`ManuallyDrop` frames, refs never
// freed); `try_revoke` gives frames back only after every entry was ended by
// `try_end_access`'s compare-and-swap, and refs return to the one allocator
// only then; `grant_all` publishes only over invalid entries.
unsafe impl<T: TableMemory, A: FrameAllocator> GrantBackend for TableBackend<T, A> {
    type Pages = A::Frames;
    type Live = TableShare<A::Frames>;

    fn domid(&self) -> DomId {
        self.domid
    }

    unsafe fn share_new(
        &self,
        peer: DomId,
        n: usize,
        access: Access,
    ) -> Result<Self::Live, GrantError> {
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
        // SAFETY: our own primitive, same backend; the live share is returned.
        unsafe { self.share_pages(peer, frames, access) }.map_err(|(e, _)| e)
    }

    unsafe fn share_pages(
        &self,
        peer: DomId,
        frames: Self::Pages,
        access: Access,
    ) -> Result<Self::Live, (GrantError, Option<Self::Pages>)> {
        let n = frames.page_count();
        // One page (the common case) needs no list of frame numbers.
        let mut one = [0u32; 1];
        let mut many = Vec::new();
        let gfns: &mut [u32] = if n == 1 {
            &mut one
        } else {
            many.resize(n, 0);
            &mut many
        };
        for (i, g) in gfns.iter_mut().enumerate() {
            match u32::try_from(A::frame(&frames, i)) {
                Ok(f) => *g = f,
                Err(_) => return Err((GrantError::Platform(GntSt::AddressTooBig), Some(frames))),
            }
        }
        match self.table.grant_all(peer, gfns, access.is_readonly()) {
            Ok(refs) => Ok(TableShare {
                refs,
                frames: ManuallyDrop::new(frames),
            }),
            Err(GrantAllError::Full) => Err((GrantError::TableFull, Some(frames))),
            Err(GrantAllError::Corrupt { stuck }) if stuck.is_empty() => {
                Err((GrantError::TableCorrupt, Some(frames)))
            }
            Err(GrantAllError::Corrupt { .. }) => {
                // A peer holds part of the batch: the frames are never reused.
                self.frames.leak(frames);
                Err((GrantError::TableCorrupt, None))
            }
        }
    }

    fn refs(live: &Self::Live) -> &[GrantRef] {
        live.refs.as_slice()
    }

    fn live_mem(live: &Self::Live) -> SharedMem<'_> {
        live.frames.mem()
    }

    unsafe fn try_revoke(&self, live: Self::Live) -> Result<Revoked<Self::Pages>, Self::Live> {
        // Every entry is tried even after a busy one, so the peer loses
        // access to all pages it has already let go of.
        let mut all = true;
        for r in live.refs.as_slice() {
            if self.table.try_end(*r).is_err() {
                all = false;
            }
        }
        if !all {
            return Err(live);
        }
        let TableShare { refs, frames } = live;
        self.table.free_refs(refs.as_slice());
        Ok(Revoked::Pages(ManuallyDrop::into_inner(frames)))
    }

    fn leak(&self, live: Self::Live) {
        // The refs are simply never returned to the allocator.
        self.frames.leak(ManuallyDrop::into_inner(live.frames));
    }

    fn table(&self) -> Option<&dyn TableView> {
        Some(&self.table)
    }
}
