//! Loom model of the v1 grant entry protocol (`xenshare::grant::entry`).
//!
//! The granting guest and the hypervisor share one 32-bit word per entry
//! (`flags | domid << 16`) plus the `frame` word. Loom runs the real
//! `grant_access` / `try_end_access` / `pin` / `unpin` over
//! [`LoomWord`] under every interleaving and every weak-memory outcome the
//! C11 model allows, and checks:
//!
//! * (a) a revoke that returns `Ok` never coexists with a live pin: either the
//!   pin failed, or it was released before the revoke; and the granter's
//!   reuse of the page never races with the mapper's accesses;
//! * (b) a pinner that succeeds on a freshly published entry reads the new
//!   frame, never a stale one;
//! * (c) with two pinners (one read-only, one writable) and a revoker, the
//!   same holds, and once every pin is gone the busy bits are clear and a
//!   revoke succeeds.
//!
//! The hypervisor side mirrors `xenshare-sim`'s `acquire` / `release`: pin
//! counts behind a lock, `pin` on the first pin (or the first writable one),
//! `unpin` of `GTF_writing` / `GTF_reading` when the last such pin goes.
//!
//! Mutants show the model has teeth: a check-then-clear revoke (the XSA-396
//! race), a publication that stores the flags before the frame, and a word
//! whose orderings are all `Relaxed` must each be caught.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p xenshare --release --test loom_grant`
#![cfg(loom)]

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::time::Instant;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

use xenshare::grant::entry::{self, EntryWord, StillMapped, BUSY};
use xenshare::DomId;
use xenshare_abi::grant::{GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING};

/// The peer the entry is granted to.
const PEER: DomId = DomId(7);
/// Frame of an earlier, already revoked grant of the same ref.
const OLD_FRAME: u32 = 0x111;
/// Frame of the grant under test.
const NEW_FRAME: u32 = 0x222;
/// Page contents while granted.
const GRANTED: u32 = 0xA5A5;
/// What the mapper writes through a writable mapping.
const MAPPER_MARK: u32 = 0x4D4D;
/// What the granter writes once it has the page back (reuse).
const REUSED: u32 = 0x5EC2;

/// An entry word living in loom's model.
trait ModelWord: EntryWord + Send + Sync + 'static {
    fn new(v: u32) -> Self;
}

/// The faithful word: every operation with the ordering asked for.
struct LoomWord(AtomicU32);

impl EntryWord for LoomWord {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    fn store(&self, v: u32, order: Ordering) {
        self.0.store(v, order)
    }
    fn compare_exchange(
        &self,
        cur: u32,
        new: u32,
        ok: Ordering,
        err: Ordering,
    ) -> Result<u32, u32> {
        self.0.compare_exchange(cur, new, ok, err)
    }
    fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
        self.0.fetch_and(v, order)
    }
}

impl ModelWord for LoomWord {
    fn new(v: u32) -> Self {
        Self(AtomicU32::new(v))
    }
}

/// Mutant: drops every ordering to `Relaxed`, as if the protocol had no
/// barriers. The models must catch it.
struct RelaxedWord(AtomicU32);

impl EntryWord for RelaxedWord {
    fn load(&self, _: Ordering) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
    fn store(&self, v: u32, _: Ordering) {
        self.0.store(v, Ordering::Relaxed)
    }
    fn compare_exchange(&self, cur: u32, new: u32, _: Ordering, _: Ordering) -> Result<u32, u32> {
        self.0
            .compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed)
    }
    fn fetch_and(&self, v: u32, _: Ordering) -> u32 {
        self.0.fetch_and(v, Ordering::Relaxed)
    }
}

impl ModelWord for RelaxedWord {
    fn new(v: u32) -> Self {
        Self(AtomicU32::new(v))
    }
}

/// A revoke implementation under test.
type Revoke<W> = fn(&W) -> Result<(), StillMapped>;

/// Mutant: the XSA-396 check-then-revoke, a load and a separate store.
fn check_then_revoke<W: EntryWord>(w: &W) -> Result<(), StillMapped> {
    let cur = w.load(Ordering::Acquire);
    let flags = entry::flags_of(cur);
    if flags & BUSY != 0 {
        return Err(StillMapped { flags });
    }
    w.store(cur & 0xFFFF_0000, Ordering::Release);
    Ok(())
}

/// A grant publication under test.
type Publish<W> = fn(&W, &W, DomId, u32, bool) -> Result<(), entry::NotInvalid>;

/// Mutant: stores the flags word before the frame, each with the ordering
/// the real code uses.
fn flags_before_frame<W: EntryWord>(
    word: &W,
    frame_word: &W,
    domid: DomId,
    frame: u32,
    ro: bool,
) -> Result<(), entry::NotInvalid> {
    let flags = GTF_PERMIT_ACCESS | if ro { GTF_READONLY } else { 0 };
    word.store(entry::pack(flags, domid), Ordering::Release);
    frame_word.store(frame, Ordering::Relaxed);
    Ok(())
}

/// The hypervisor's per-entry pin counts (Xen's active entry).
#[derive(Default)]
struct Active {
    readers: u32,
    writers: u32,
}

/// One grant entry, the page it grants, and the hypervisor's view of it.
struct Entry<W> {
    word: W,
    frame: W,
    page: UnsafeCell<u32>,
    active: Mutex<Active>,
}

impl<W: ModelWord> Entry<W> {
    /// An entry of `PEER` that was granted with [`OLD_FRAME`] and revoked
    /// (domid kept, flags clear), its page filled with [`GRANTED`].
    fn revoked() -> Self {
        Self {
            word: W::new(entry::pack(0, PEER)),
            frame: W::new(OLD_FRAME),
            page: UnsafeCell::new(GRANTED),
            active: Mutex::new(Active::default()),
        }
    }

    /// An entry granted writable to `PEER` with [`NEW_FRAME`].
    fn granted() -> Self {
        let e = Self::revoked();
        assert!(entry::grant_access(&e.word, &e.frame, PEER, NEW_FRAME, false).is_ok());
        e
    }

    /// Hypervisor map: pins on the first pin or the first writable pin;
    /// returns the frame read after pinning.
    fn acquire(&self, readonly: bool) -> Option<u32> {
        let mut a = self.active.lock().unwrap();
        if a.readers + a.writers == 0 || (!readonly && a.writers == 0) {
            entry::pin(&self.word, PEER, readonly).ok()?;
        }
        if readonly {
            a.readers += 1;
        } else {
            a.writers += 1;
        }
        // Relaxed on purpose: the pin's acquire must be what orders it.
        Some(self.frame.load(Ordering::Relaxed))
    }

    /// Hypervisor unmap: clears the busy bits the last pins of a kind held.
    fn release(&self, readonly: bool) {
        let mut a = self.active.lock().unwrap();
        if readonly {
            a.readers -= 1;
        } else {
            a.writers -= 1;
        }
        let mut clear = 0;
        if a.writers == 0 {
            clear |= GTF_WRITING;
        }
        if a.writers + a.readers == 0 {
            clear |= GTF_READING;
        }
        if clear != 0 {
            entry::unpin(&self.word, clear);
        }
    }

    fn read_page(&self) -> u32 {
        // SAFETY: loom's UnsafeCell checks this access for races itself;
        // the pointer is valid for the cell's lifetime.
        self.page.with(|p| unsafe { *p })
    }

    fn write_page(&self, v: u32) {
        // SAFETY: as in `read_page`; loom reports any concurrent access.
        self.page.with_mut(|p| unsafe { *p = v })
    }

    fn flags(&self) -> u16 {
        entry::flags_of(self.word.load(Ordering::Relaxed))
    }
}

/// Runs `f` under loom and prints how many executions it explored.
fn explore(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counter = runs.clone();
    let start = Instant::now();
    loom::model(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "loom_grant {name}: {runs} executions in {:.2?}",
        start.elapsed()
    );
}

/// Runs a model that must fail and checks that it does.
fn expect_caught(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let caught = panic::catch_unwind(AssertUnwindSafe(|| loom::model(f))).is_err();
    assert!(caught, "the model did not catch the mutant `{name}`");
    eprintln!("loom_grant {name}: mutant caught (the panic above is expected)");
}

/// (a) A malicious peer that never unmaps: revoke and pin cannot both win.
fn revoke_vs_pin_keep_mapping<W: ModelWord>(revoke: Revoke<W>) {
    let e = Arc::new(Entry::<W>::granted());
    let hv = {
        let e = e.clone();
        thread::spawn(move || match e.acquire(false) {
            Some(_) => {
                assert_eq!(e.read_page(), GRANTED, "mapper saw the page reused");
                true
            }
            None => false,
        })
    };
    let revoked = revoke(&e.word).is_ok();
    if revoked {
        e.write_page(REUSED);
    }
    let pinned = hv.join().unwrap();
    assert!(
        !(revoked && pinned),
        "revoke succeeded while the peer holds a pin"
    );
    assert!(revoked || pinned, "revoke failed with nothing pinned");
    if pinned {
        assert_ne!(e.flags() & BUSY, 0, "a live pin lost its busy bits");
    }
}

/// (a) A peer that maps, writes, and unmaps while the guest revokes: if
/// both succeed, the unmap came first, and every page access is ordered.
fn revoke_vs_pin_then_unmap<W: ModelWord>(revoke: Revoke<W>) {
    let e = Arc::new(Entry::<W>::granted());
    let holding = Arc::new(AtomicBool::new(false));
    let hv = {
        let (e, holding) = (e.clone(), holding.clone());
        thread::spawn(move || {
            if e.acquire(false).is_none() {
                return false;
            }
            holding.store(true, Ordering::SeqCst);
            assert_eq!(e.read_page(), GRANTED, "mapper saw the page reused");
            e.write_page(MAPPER_MARK);
            holding.store(false, Ordering::SeqCst);
            e.release(false);
            true
        })
    };
    let revoked = revoke(&e.word).is_ok();
    if revoked {
        assert!(
            !holding.load(Ordering::SeqCst),
            "revoke succeeded while the peer holds a pin"
        );
        let seen = e.read_page();
        assert!(seen == GRANTED || seen == MAPPER_MARK);
        e.write_page(REUSED);
    }
    let pinned = hv.join().unwrap();
    assert!(revoked || pinned, "revoke failed with nothing pinned");
    assert_eq!(e.flags() & BUSY, 0, "busy bits left after the unmap");
}

/// (b) Publishing races with a pin: a successful pin sees the new frame.
fn publish_vs_pin<W: ModelWord>(publish: Publish<W>) {
    let e = Arc::new(Entry::<W>::revoked());
    let hv = {
        let e = e.clone();
        thread::spawn(move || {
            if let Some(frame) = e.acquire(false) {
                assert_eq!(
                    frame, NEW_FRAME,
                    "pinned a fresh grant but read a stale frame"
                );
            }
        })
    };
    assert!(
        publish(&e.word, &e.frame, PEER, NEW_FRAME, false).is_ok(),
        "a revoked entry must be grantable"
    );
    hv.join().unwrap();
}

/// (c) Two mappings (read-only and writable) and a revoker.
fn two_pinners_one_revoker<W: ModelWord>() {
    let e = Arc::new(Entry::<W>::granted());
    let holders = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let mapper = |i: usize, readonly: bool| {
        let (e, holders) = (e.clone(), holders.clone());
        thread::spawn(move || {
            if e.acquire(readonly).is_none() {
                return false;
            }
            holders[i].store(true, Ordering::SeqCst);
            assert_eq!(e.read_page(), GRANTED, "mapper saw the page reused");
            holders[i].store(false, Ordering::SeqCst);
            e.release(readonly);
            true
        })
    };
    let ro = mapper(0, true);
    let rw = mapper(1, false);
    let revoked = entry::try_end_access(&e.word).is_ok();
    if revoked {
        assert!(
            !holders[0].load(Ordering::SeqCst) && !holders[1].load(Ordering::SeqCst),
            "revoke succeeded while a pin is held"
        );
        e.write_page(REUSED);
    }
    let pinned = [ro.join().unwrap(), rw.join().unwrap()];
    assert!(
        revoked || pinned.iter().any(|p| *p),
        "revoke failed with nothing pinned"
    );
    assert_eq!(e.flags() & BUSY, 0, "busy bits left after every unmap");
    if !revoked {
        assert!(
            entry::try_end_access(&e.word).is_ok(),
            "revoke still fails after every unmap"
        );
    }
    assert_eq!(e.flags(), 0, "entry not invalid after the revoke");
}

#[test]
fn a_revoke_vs_pin_peer_keeps_mapping() {
    explore("a/keep-mapping", || {
        revoke_vs_pin_keep_mapping::<LoomWord>(entry::try_end_access)
    });
}

#[test]
fn a_revoke_vs_pin_peer_unmaps() {
    explore("a/unmap", || {
        revoke_vs_pin_then_unmap::<LoomWord>(entry::try_end_access)
    });
}

#[test]
fn b_grant_publishes_frame_before_flags() {
    explore("b/publish", || {
        publish_vs_pin::<LoomWord>(entry::grant_access)
    });
}

#[test]
fn c_two_pinners_one_revoker() {
    explore("c/two-pinners", two_pinners_one_revoker::<LoomWord>);
}

#[test]
fn mutant_check_then_revoke_is_caught() {
    expect_caught("check-then-revoke", || {
        revoke_vs_pin_keep_mapping::<LoomWord>(check_then_revoke)
    });
}

#[test]
fn mutant_relaxed_publication_is_caught() {
    expect_caught("relaxed publication", || {
        publish_vs_pin::<RelaxedWord>(entry::grant_access)
    });
}

#[test]
fn mutant_flags_before_frame_is_caught() {
    expect_caught("flags before frame", || {
        publish_vs_pin::<LoomWord>(flags_before_frame)
    });
}

#[test]
fn mutant_relaxed_unpin_is_caught() {
    expect_caught("relaxed unpin/revoke", || {
        revoke_vs_pin_then_unmap::<RelaxedWord>(entry::try_end_access)
    });
}
