//! The grant primitives are sealed: a live share that is dropped, abandoned
//! or unwound through a panic leaks, it never frees; an entry is only ever
//! published over an invalid one.
//!
//! The platform is a test double: a grant table in a plain buffer (the test
//! keeps a second handle on it to play the hypervisor's pin protocol), frames
//! that count how often they are freed, and table memory that can be told to
//! panic, as a buggy platform could mid-revocation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use xenshare::grant::entry::{self, BUSY};
use xenshare::grant::{Exporter, GrantError, Revoked, TableBackend};
use xenshare::mem::SharedMem;
use xenshare::platform::{FrameAllocator, PageSet, TableMemory};
use xenshare::{Access, DomId, GrantRef};

const PEER: DomId = DomId(7);
const ENTRIES: usize = 64;

/// A grant table in a buffer: two 32-bit words per entry.
struct Table {
    words: Arc<[AtomicU32]>,
    panic: Arc<AtomicBool>,
}

// SAFETY: the buffer is this test's grant table; one `TableBackend` is built
// over it, and otherwise only the test's "hypervisor" touches it, with the
// pin/unpin protocol.
unsafe impl TableMemory for Table {
    fn table(&self) -> SharedMem<'_> {
        if self.panic.load(Ordering::Relaxed) {
            panic!("platform failure while the table is in use");
        }
        let ptr = NonNull::new(self.words.as_ptr() as *mut u8).unwrap();
        // SAFETY: the buffer lives as long as `self`, is only accessed
        // atomically, and holds `ENTRIES` 8-byte entries.
        unsafe { SharedMem::from_raw(ptr, self.words.len() * 4) }
    }
}

/// One page; counts its frees.
struct Run {
    page: Box<[AtomicU64]>,
    frame: u64,
    freed: Arc<AtomicUsize>,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.freed.fetch_add(1, Ordering::SeqCst);
    }
}

impl PageSet for Run {
    fn page_count(&self) -> usize {
        1
    }
    fn mem(&self) -> SharedMem<'_> {
        let ptr = NonNull::new(self.page.as_ptr() as *mut u8).unwrap();
        // SAFETY: the page lives as long as `self` and is accessed through
        // the SharedMem only.
        unsafe { SharedMem::from_raw(ptr, 4096) }
    }
}

struct Frames {
    next: AtomicU64,
    freed: Arc<AtomicUsize>,
}

// SAFETY: every run is a fresh allocation with a fresh frame number.
unsafe impl FrameAllocator for Frames {
    type Frames = Run;
    fn alloc(&self, n: usize) -> Option<Run> {
        (n == 1).then(|| Run {
            page: (0..512).map(|_| AtomicU64::new(0)).collect(),
            frame: self.next.fetch_add(1, Ordering::Relaxed),
            freed: self.freed.clone(),
        })
    }
    fn frame(frames: &Run, _: usize) -> u64 {
        frames.frame
    }
}

struct World {
    exporter: Exporter<TableBackend<Table, Frames>>,
    /// The hypervisor's view of the table.
    hv: Arc<[AtomicU32]>,
    panic: Arc<AtomicBool>,
    freed: Arc<AtomicUsize>,
}

impl World {
    fn new() -> World {
        let panic = Arc::new(AtomicBool::new(false));
        let freed = Arc::new(AtomicUsize::new(0));
        let words: Arc<[AtomicU32]> = (0..ENTRIES * 2).map(|_| AtomicU32::new(0)).collect();
        let table = Table {
            words: words.clone(),
            panic: panic.clone(),
        };
        let frames = Frames {
            next: AtomicU64::new(0x1000),
            freed: freed.clone(),
        };
        // SAFETY: the only allocator over this fresh table.
        let backend = unsafe { TableBackend::new(DomId(1), table, frames) };
        World {
            exporter: Exporter::new(backend),
            hv: words,
            panic,
            freed,
        }
    }

    /// The peer maps `r` (the hypervisor pins the entry).
    fn peer_maps(&self, r: GrantRef) {
        entry::pin(&self.hv[r.0 as usize * 2], PEER, false).unwrap();
    }

    /// The peer unmaps `r`.
    fn peer_unmaps(&self, r: GrantRef) {
        entry::unpin(&self.hv[r.0 as usize * 2], BUSY);
    }

    fn freed(&self) -> usize {
        self.freed.load(Ordering::SeqCst)
    }
}

#[test]
fn a_panic_during_revocation_leaks_instead_of_freeing() {
    let w = World::new();
    let share = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
    let r = share.refs()[0];
    w.peer_maps(r);
    w.panic.store(true, Ordering::Relaxed);
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let _ = share.try_unshare();
    }));
    assert!(unwound.is_err(), "the platform was meant to panic");
    assert_eq!(w.freed(), 0, "a share unwound through a panic was freed");
    // The entry is still granted and pinned: the peer's mapping is intact
    // and the frame was not handed to anyone else.
    w.panic.store(false, Ordering::Relaxed);
    let e = w.exporter.table().unwrap().entry(r).unwrap();
    assert_eq!(e.flags & BUSY, BUSY);
    // New shares never get that ref or that frame.
    for _ in 0..8 {
        let s = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
        assert_ne!(s.refs()[0], r);
        let f = w
            .exporter
            .table()
            .unwrap()
            .entry(s.refs()[0])
            .unwrap()
            .frame;
        assert_ne!(f, e.frame);
    }
    assert_eq!(
        w.freed(),
        8,
        "only the eight unmapped shares are freed, the leaked one never"
    );
}

#[test]
fn a_panic_while_dropping_into_quarantine_or_reclaiming_leaks() {
    let w = World::new();
    let share = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
    let r = share.refs()[0];
    w.peer_maps(r);
    drop(share); // busy: quarantined
    assert_eq!(w.exporter.quarantined(), 1);
    w.peer_unmaps(r);
    w.panic.store(true, Ordering::Relaxed);
    let unwound = catch_unwind(AssertUnwindSafe(|| w.exporter.reclaim(1)));
    assert!(unwound.is_err());
    assert_eq!(
        w.freed(),
        0,
        "a quarantined share unwound in reclaim was freed"
    );
    w.panic.store(false, Ordering::Relaxed);
    // Dropping a live share whose revocation panics leaks as well.
    let s = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
    w.panic.store(true, Ordering::Relaxed);
    let unwound = catch_unwind(AssertUnwindSafe(move || drop(s)));
    assert!(unwound.is_err());
    assert_eq!(w.freed(), 0);
}

#[test]
fn an_abandoned_share_leaks() {
    let w = World::new();
    let share = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
    let r = share.refs()[0];
    std::mem::forget(share);
    assert_eq!(w.freed(), 0);
    // Its ref stays granted and is never handed out again.
    let refs: Vec<_> = (0..ENTRIES - 9)
        .map(|_| w.exporter.share(PEER, 1, Access::ReadOnly).unwrap())
        .collect();
    assert!(refs.iter().all(|s| s.refs()[0] != r));
    assert!(matches!(
        w.exporter.share(PEER, 1, Access::ReadOnly),
        Err(GrantError::TableFull)
    ));
}

#[test]
fn pages_come_back_only_after_proven_revocation() {
    let w = World::new();
    let share = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
    let r = share.refs()[0];
    w.peer_maps(r);
    let share = match share.try_unshare() {
        Err(busy) => busy.into_inner(),
        Ok(_) => panic!("revoked while pinned"),
    };
    assert_eq!(w.freed(), 0);
    w.peer_unmaps(r);
    match share.try_unshare() {
        Ok(Revoked::Pages(p)) => drop(p),
        _ => panic!("an unpinned share must revoke with its pages"),
    }
    assert_eq!(w.freed(), 1);
    assert_eq!(w.exporter.stats().retired, 0);
}

#[test]
fn a_table_entry_written_behind_the_allocator_is_never_handed_out() {
    let w = World::new();
    // Something outside the allocator (a buggy toolstack) grants ref 8.
    assert!(entry::grant_access(&w.hv[16], &w.hv[17], DomId(9), 0x77, false).is_ok());
    entry::pin(&w.hv[16], DomId(9), false).unwrap();
    let s = w.exporter.share(PEER, 1, Access::ReadWrite).unwrap();
    assert_ne!(s.refs()[0], GrantRef(8), "a live entry was handed out");
    // The foreign entry is untouched: still pinned, same frame and domid.
    let e = w.exporter.table().unwrap().entry(GrantRef(8)).unwrap();
    assert_eq!((e.flags & BUSY, e.frame, e.domid), (BUSY, 0x77, DomId(9)));
}
