//! The v1 grant entry protocol, both halves.
//!
//! The first 32-bit word of a `grant_entry_v1` is `flags | domid << 16`
//! (little-endian). The granting guest and the hypervisor only ever touch it
//! atomically:
//!
//! * the guest publishes a grant by writing `frame`, then (release) the word
//!   with the new type and domid in one compare-and-swap from an invalid
//!   entry (a live entry is never overwritten), and revokes it with one
//!   compare-and-swap loop that fails while `GTF_reading`/`GTF_writing` are set;
//! * the hypervisor pins an entry for a map or copy with its own
//!   compare-and-swap (checking type, domid and read-only), giving up after a
//!   few unstable attempts, and clears the busy bits when the last pin of a
//!   kind goes.
//!
//! Both halves are generic over [`EntryWord`] so the same code runs on real
//! shared memory and under loom.

use core::sync::atomic::{AtomicU32, Ordering};

use xenshare_abi::grant::{
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_SUB_PAGE, GTF_TYPE_MASK, GTF_WRITING,
};

use super::GntSt;
use crate::types::DomId;

/// How many times the hypervisor retries a pin whose entry keeps changing
/// before it reports the entry unstable (Xen gives up after a handful).
pub const PIN_RETRIES: u32 = 5;

/// The busy bits: set by the hypervisor while the grantee holds a pin.
pub const BUSY: u16 = GTF_READING | GTF_WRITING;

/// An atomic 32-bit word: the entry's `flags|domid` word, or its `frame`.
pub trait EntryWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, v: u32, order: Ordering);
    /// Atomic compare-and-swap; `Err` carries the value observed.
    fn compare_exchange(&self, cur: u32, new: u32, ok: Ordering, err: Ordering)
        -> Result<u32, u32>;
    /// Atomic AND, returning the old value.
    fn fetch_and(&self, v: u32, order: Ordering) -> u32;
}

impl EntryWord for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn store(&self, v: u32, order: Ordering) {
        AtomicU32::store(self, v, order)
    }
    fn compare_exchange(
        &self,
        cur: u32,
        new: u32,
        ok: Ordering,
        err: Ordering,
    ) -> Result<u32, u32> {
        AtomicU32::compare_exchange(self, cur, new, ok, err)
    }
    fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_and(self, v, order)
    }
}

/// Packs the header word of an entry.
pub const fn pack(flags: u16, domid: DomId) -> u32 {
    flags as u32 | (domid.0 as u32) << 16
}

/// The `flags` half of a header word.
pub const fn flags_of(word: u32) -> u16 {
    word as u16
}

/// The `domid` half of a header word.
pub const fn domid_of(word: u32) -> DomId {
    DomId((word >> 16) as u16)
}

/// The entry was not invalid, so nothing was published: re-granting a live
/// entry would silently clear the busy bits a mapper holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInvalid {
    /// The flags observed.
    pub flags: u16,
}

/// Guest: publishes a permit-access grant of `frame` to `domid`.
///
/// Only an invalid entry (no type, no busy bits) is ever written: the header
/// word is checked first, `frame` is written, and the header is then
/// published with a compare-and-swap from the value checked, with release
/// ordering, so type and domid become visible together and never with a
/// stale frame. If the entry is live (or changes under us) nothing is
/// published and [`NotInvalid`] is returned.
pub fn grant_access<W: EntryWord>(
    word: &W,
    frame_word: &W,
    domid: DomId,
    frame: u32,
    readonly: bool,
) -> Result<(), NotInvalid> {
    let cur = word.load(Ordering::Acquire);
    if flags_of(cur) != 0 {
        return Err(NotInvalid {
            flags: flags_of(cur),
        });
    }
    // The frame of an invalid entry is never read by the hypervisor, so
    // writing it before the header is harmless even if the swap then fails.
    frame_word.store(frame, Ordering::Relaxed);
    let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
    word.compare_exchange(
        cur,
        pack(flags, domid),
        Ordering::Release,
        Ordering::Relaxed,
    )
    .map(drop)
    .map_err(|seen| NotInvalid {
        flags: flags_of(seen),
    })
}

/// The grantee still has the entry pinned (mapped, or mid-copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillMapped {
    /// The flags observed.
    pub flags: u16,
}

/// Guest: ends access to an entry, atomically.
///
/// One compare-and-swap loop: each iteration tests the busy bits of the value
/// it observed and only then tries to clear the flags; a failed swap reloads
/// the new value and tests again. There is no check-then-revoke window (the
/// XSA-396 race). On success the entry is invalid and no new pin can start.
pub fn try_end_access<W: EntryWord>(word: &W) -> Result<(), StillMapped> {
    let mut cur = word.load(Ordering::Acquire);
    loop {
        let flags = flags_of(cur);
        if flags & BUSY != 0 {
            return Err(StillMapped { flags });
        }
        match word.compare_exchange(cur, cur & 0xFFFF_0000, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => cur = seen,
        }
    }
}

/// Hypervisor: takes a pin on an entry for `mapper` (map or copy).
///
/// Checks, on each observed value: the type is permit-access (and not
/// sub-page), the domid is the mapper, and a writable pin needs a writable
/// grant. Then sets `GTF_reading` (plus `GTF_writing` for a writable pin)
/// with compare-and-swap, retrying at most [`PIN_RETRIES`] times.
pub fn pin<W: EntryWord>(word: &W, mapper: DomId, readonly: bool) -> Result<(), GntSt> {
    let mut cur = word.load(Ordering::Acquire);
    for _ in 0..PIN_RETRIES {
        let flags = flags_of(cur);
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || flags & GTF_SUB_PAGE != 0 {
            return Err(GntSt::GeneralError);
        }
        if domid_of(cur) != mapper {
            return Err(GntSt::GeneralError);
        }
        if !readonly && flags & GTF_READONLY != 0 {
            return Err(GntSt::GeneralError);
        }
        let add = GTF_READING | if readonly { 0 } else { GTF_WRITING };
        let new = cur | add as u32;
        if new == cur {
            return Ok(());
        }
        match word.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => cur = seen,
        }
    }
    Err(GntSt::GeneralError)
}

/// Hypervisor: clears busy bits when pins go (`GTF_writing` when no writable
/// pin remains, `GTF_reading` when no pin remains).
pub fn unpin<W: EntryWord>(word: &W, clear: u16) {
    word.fetch_and(!(clear as u32 & BUSY as u32), Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> (AtomicU32, AtomicU32) {
        (AtomicU32::new(0), AtomicU32::new(0))
    }

    #[test]
    fn revoke_fails_while_pinned_and_succeeds_after() {
        let (w, f) = entry();
        grant_access(&w, &f, DomId(3), 77, false).unwrap();
        assert_eq!(f.load(Ordering::Relaxed), 77);
        pin(&w, DomId(3), false).unwrap();
        assert_eq!(
            try_end_access(&w),
            Err(StillMapped {
                flags: GTF_PERMIT_ACCESS | BUSY
            })
        );
        unpin(&w, BUSY);
        assert_eq!(try_end_access(&w), Ok(()));
        // Once revoked, no pin can start.
        assert_eq!(pin(&w, DomId(3), true), Err(GntSt::GeneralError));
    }

    #[test]
    fn pin_checks_domid_and_readonly() {
        let (w, f) = entry();
        grant_access(&w, &f, DomId(3), 1, true).unwrap();
        assert_eq!(pin(&w, DomId(4), true), Err(GntSt::GeneralError));
        assert_eq!(pin(&w, DomId(3), false), Err(GntSt::GeneralError));
        assert_eq!(pin(&w, DomId(3), true), Ok(()));
        assert_eq!(flags_of(w.load(Ordering::Relaxed)) & GTF_WRITING, 0);
    }

    #[test]
    fn granting_over_a_live_entry_fails_and_keeps_the_pin() {
        let (w, f) = entry();
        grant_access(&w, &f, DomId(3), 10, false).unwrap();
        pin(&w, DomId(3), false).unwrap();
        // A second publication (a stray second allocator, a double grant)
        // must neither clear the busy bits nor move the frame.
        assert_eq!(
            grant_access(&w, &f, DomId(4), 99, true),
            Err(NotInvalid {
                flags: GTF_PERMIT_ACCESS | BUSY
            })
        );
        assert_eq!(f.load(Ordering::Relaxed), 10);
        assert_eq!(
            flags_of(w.load(Ordering::Relaxed)),
            GTF_PERMIT_ACCESS | BUSY
        );
        assert_eq!(domid_of(w.load(Ordering::Relaxed)), DomId(3));
        // Even an idle live entry is not re-granted.
        unpin(&w, BUSY);
        assert!(grant_access(&w, &f, DomId(4), 99, true).is_err());
        // Once revoked it can be granted again (the domid half may be stale).
        try_end_access(&w).unwrap();
        grant_access(&w, &f, DomId(4), 99, true).unwrap();
        assert_eq!(domid_of(w.load(Ordering::Relaxed)), DomId(4));
    }

    #[test]
    fn unstable_entry_gives_up() {
        struct Flapping(AtomicU32);
        impl EntryWord for Flapping {
            fn load(&self, o: Ordering) -> u32 {
                self.0.load(o)
            }
            fn store(&self, v: u32, o: Ordering) {
                self.0.store(v, o)
            }
            fn compare_exchange(
                &self,
                _: u32,
                _: u32,
                _: Ordering,
                _: Ordering,
            ) -> Result<u32, u32> {
                Err(self.0.load(Ordering::Relaxed))
            }
            fn fetch_and(&self, v: u32, o: Ordering) -> u32 {
                self.0.fetch_and(v, o)
            }
        }
        let w = Flapping(AtomicU32::new(pack(GTF_PERMIT_ACCESS, DomId(1))));
        assert_eq!(pin(&w, DomId(1), true), Err(GntSt::GeneralError));
    }
}
