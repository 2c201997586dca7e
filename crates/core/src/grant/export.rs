//! The export side: sharing pages with another domain is handing over
//! ownership until the peer provably gives them back.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{GrantError, Revoked, TableView};
use crate::mem::SharedMem;
use crate::platform::{GrantBackend, PageSet};
use crate::sync::Mutex;
use crate::types::{Access, DomId, GrantRef, Port};

/// A revocation failed because the peer still maps (or is copying) a page.
/// The share comes back: keep it, retry later, or drop it into quarantine.
#[must_use = "a busy share must be kept or dropped into quarantine, never forgotten"]
pub struct Busy<T>(pub T);

impl<T> Busy<T> {
    /// The share that could not be revoked.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Busy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Busy(peer still maps the grant)")
    }
}

impl<T> fmt::Display for Busy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the peer still maps the grant; its pages stay owned by the share")
    }
}

impl<T> core::error::Error for Busy<T> {}

/// Counters of an [`Exporter`].
///
/// Invariant: `granted == live + revoked + quarantined + reclaimed + leaked`.
/// `retired` counts the revocations (of `revoked` and `reclaimed`) whose
/// memory the platform could not prove unreachable and so retired instead
/// of handing it back: the cost of a platform that cannot take access away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantStats {
    /// Shares ever granted.
    pub granted: u64,
    /// Shares currently owned by a [`Share`].
    pub live: u64,
    /// Shares revoked by [`Share::try_unshare`].
    pub revoked: u64,
    /// Shares waiting in quarantine for the peer to let go.
    pub quarantined: u64,
    /// Shares freed from quarantine by [`Exporter::reclaim`].
    pub reclaimed: u64,
    /// Shares given up at teardown because the peer never let go: their
    /// memory is never reused.
    pub leaked: u64,
    /// Failed revocation attempts (busy results), all causes.
    pub busy_results: u64,
    /// Revocations whose memory was retired rather than handed back.
    pub retired: u64,
}

/// What one [`Exporter::reclaim`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Shares freed in this pass.
    pub reclaimed: usize,
    /// Shares tried and still busy.
    pub still_busy: usize,
    /// Shares left in quarantine after the pass.
    pub remaining: usize,
}

struct Quarantined<L> {
    live: L,
    peer: DomId,
    attempts: u32,
}

#[derive(Default)]
struct Counters {
    granted: AtomicU64,
    live: AtomicU64,
    revoked: AtomicU64,
    reclaimed: AtomicU64,
    leaked: AtomicU64,
    busy: AtomicU64,
    retired: AtomicU64,
}

struct Inner<B: GrantBackend> {
    backend: B,
    quarantine: Mutex<VecDeque<Quarantined<B::Live>>>,
    /// The quarantine's length, stored under its lock after every change:
    /// `share` checks it without taking the lock (nothing to retry is the
    /// common case).
    queued: AtomicUsize,
    counters: Counters,
}

/// Shares this domain's pages with other domains.
///
/// Cheap to clone; shares keep the exporter's state alive.
pub struct Exporter<B: GrantBackend> {
    inner: Arc<Inner<B>>,
}

impl<B: GrantBackend> Clone for Exporter<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// How many quarantined shares a `share` call retries on its way (bounded,
/// so sharing stays cheap while a hostile peer sits on many grants).
const OPPORTUNISTIC_RECLAIM: usize = 2;

impl<B: GrantBackend> Exporter<B> {
    /// An exporter over a platform backend.
    pub fn new(backend: B) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                quarantine: Mutex::new(VecDeque::new()),
                queued: AtomicUsize::new(0),
                counters: Counters::default(),
            }),
        }
    }

    /// A read-only view of the grant table, where the platform owns one.
    /// (The backend itself is never handed out: its primitives could
    /// reuse memory a peer still maps.)
    pub fn table(&self) -> Option<&dyn TableView> {
        self.inner.backend.table()
    }

    /// The domain sharing.
    pub fn domid(&self) -> DomId {
        self.inner.backend.domid()
    }

    /// Shares `n` fresh zeroed pages with `peer`.
    ///
    /// If the table or memory is exhausted, quarantine is reclaimed in full
    /// once and the share retried.
    pub fn share(&self, peer: DomId, n: usize, access: Access) -> Result<Share<B>, GrantError> {
        if n == 0 {
            return Err(GrantError::BadCount(n));
        }
        if !peer.is_real() {
            return Err(GrantError::BadPeer(peer));
        }
        self.reclaim(OPPORTUNISTIC_RECLAIM);
        let backend = &self.inner.backend;
        // SAFETY: the live share goes straight into a `Share`, which gives
        // it back only to this backend.
        let live = match unsafe { backend.share_new(peer, n, access) } {
            Ok(l) => l,
            Err(GrantError::TableFull | GrantError::OutOfMemory { .. })
                if self.quarantined() > 0 =>
            {
                self.reclaim(usize::MAX);
                // SAFETY: as above.
                unsafe { backend.share_new(peer, n, access) }?
            }
            Err(e) => return Err(e),
        };
        Ok(self.wrap(live, peer, access))
    }

    /// Shares pages the caller owns (for example pages that came back from
    /// [`Share::try_unshare`]). They are zeroed first: whatever they held is
    /// never shown to the new peer.
    ///
    /// On failure the pages come back with the error, unless the platform
    /// had to retire them (`None`).
    pub fn share_pages(
        &self,
        peer: DomId,
        pages: B::Pages,
        access: Access,
    ) -> Result<Share<B>, (GrantError, Option<B::Pages>)> {
        if !peer.is_real() {
            return Err((GrantError::BadPeer(peer), Some(pages)));
        }
        let mem = pages.mem();
        if mem.fill(0, mem.len(), 0).is_err() {
            return Err((GrantError::BadCount(pages.page_count()), Some(pages)));
        }
        // SAFETY: the live share goes straight into a `Share`.
        let live = unsafe { self.inner.backend.share_pages(peer, pages, access) }?;
        Ok(self.wrap(live, peer, access))
    }

    /// [`Exporter::share_pages`] with `data` written at the start of the
    /// pages and only the rest zeroed (for a page the caller fills anyway:
    /// one pass over it, not two). The peer sees `data` and zeros, never
    /// what the pages held before. `data` longer than the pages is
    /// [`GrantError::BadCount`].
    pub fn share_pages_with(
        &self,
        peer: DomId,
        pages: B::Pages,
        access: Access,
        data: &[u8],
    ) -> Result<Share<B>, (GrantError, Option<B::Pages>)> {
        if !peer.is_real() {
            return Err((GrantError::BadPeer(peer), Some(pages)));
        }
        let mem = pages.mem();
        let rest = mem.len().checked_sub(data.len());
        let filled = rest.is_some_and(|rest| {
            mem.write(0, data).is_ok() && mem.fill(data.len(), rest, 0).is_ok()
        });
        if !filled {
            return Err((GrantError::BadCount(pages.page_count()), Some(pages)));
        }
        // SAFETY: the live share goes straight into a `Share`.
        let live = unsafe { self.inner.backend.share_pages(peer, pages, access) }?;
        Ok(self.wrap(live, peer, access))
    }

    fn wrap(&self, live: B::Live, peer: DomId, access: Access) -> Share<B> {
        let c = &self.inner.counters;
        c.granted.fetch_add(1, Ordering::Relaxed);
        c.live.fetch_add(1, Ordering::Relaxed);
        Share {
            live: Some(live),
            owner: self.inner.clone(),
            peer,
            access,
        }
    }

    /// Retries up to `budget` quarantined shares (oldest first) and frees
    /// those the peers have let go of.
    pub fn reclaim(&self, budget: usize) -> ReclaimReport {
        self.inner.reclaim(budget)
    }

    /// Shares currently in quarantine.
    pub fn quarantined(&self) -> usize {
        self.inner.quarantine.lock().len()
    }

    /// The peers and refs of the quarantined shares (for inspection).
    pub fn quarantine_snapshot(&self) -> alloc::vec::Vec<(DomId, alloc::vec::Vec<GrantRef>, u32)> {
        self.inner
            .quarantine
            .lock()
            .iter()
            .map(|q| (q.peer, B::refs(&q.live).to_vec(), q.attempts))
            .collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GrantStats {
        self.inner.stats()
    }
}

impl<B: GrantBackend> Inner<B> {
    fn stats(&self) -> GrantStats {
        let c = &self.counters;
        GrantStats {
            granted: c.granted.load(Ordering::Relaxed),
            live: c.live.load(Ordering::Relaxed),
            revoked: c.revoked.load(Ordering::Relaxed),
            quarantined: self.quarantine.lock().len() as u64,
            reclaimed: c.reclaimed.load(Ordering::Relaxed),
            leaked: c.leaked.load(Ordering::Relaxed),
            busy_results: c.busy.load(Ordering::Relaxed),
            retired: c.retired.load(Ordering::Relaxed),
        }
    }

    /// Revokes a live share of this exporter. A panic inside the backend
    /// drops `live` while unwinding, which leaks it (the backend contract).
    fn revoke(&self, live: B::Live) -> Result<Revoked<B::Pages>, B::Live> {
        // SAFETY: every `B::Live` this exporter holds came from its backend.
        let r = unsafe { self.backend.try_revoke(live) };
        if let Ok(Revoked::Retired) = r {
            self.counters.retired.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn reclaim(&self, budget: usize) -> ReclaimReport {
        let mut report = ReclaimReport::default();
        let queued = self.queued.load(Ordering::Acquire);
        if queued == 0 || budget == 0 {
            // Nothing to try (every `share` passes here): no lock. A share
            // entering quarantine concurrently is retried next time.
            report.remaining = queued;
            return report;
        }
        let mut n = budget.min(queued);
        while n > 0 {
            n -= 1;
            // The lock is not held across the revoke: the backend may block
            // briefly, and other shares must stay usable meanwhile.
            let Some(mut q) = self.pop_quarantined() else {
                break;
            };
            let refs = B::refs(&q.live).to_vec();
            match self.revoke(q.live) {
                Ok(pages) => {
                    self.backend.quarantine_changed(&refs, false);
                    drop(pages);
                    self.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
                    report.reclaimed += 1;
                }
                Err(live) => {
                    self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    q.live = live;
                    q.attempts = q.attempts.saturating_add(1);
                    self.push_quarantined(q);
                    report.still_busy += 1;
                }
            }
        }
        report.remaining = self.quarantine.lock().len();
        report
    }

    fn quarantine(&self, live: B::Live, peer: DomId) {
        self.counters.live.fetch_sub(1, Ordering::Relaxed);
        self.backend.quarantine_changed(B::refs(&live), true);
        self.push_quarantined(Quarantined {
            live,
            peer,
            attempts: 0,
        });
    }

    fn push_quarantined(&self, q: Quarantined<B::Live>) {
        let mut queue = self.quarantine.lock();
        queue.push_back(q);
        self.queued.store(queue.len(), Ordering::Release);
    }

    fn pop_quarantined(&self) -> Option<Quarantined<B::Live>> {
        let mut queue = self.quarantine.lock();
        let q = queue.pop_front();
        self.queued.store(queue.len(), Ordering::Release);
        q
    }
}

impl<B: GrantBackend> Drop for Inner<B> {
    fn drop(&mut self) {
        // Last chance: whatever the peers still hold is leaked, never freed.
        let pending = core::mem::take(&mut *self.quarantine.lock());
        self.queued.store(0, Ordering::Release);
        for q in pending {
            match self.revoke(q.live) {
                Ok(pages) => drop(pages),
                Err(live) => {
                    self.counters.leaked.fetch_add(1, Ordering::Relaxed);
                    self.backend.leak(live);
                }
            }
        }
    }
}

/// Pages shared with one peer. The share owns them: they go back to the
/// caller only through a successful [`Share::try_unshare`]. Dropping a share
/// frees its memory only if revocation succeeds there and then; otherwise it
/// moves to the exporter's quarantine.
pub struct Share<B: GrantBackend> {
    live: Option<B::Live>,
    owner: Arc<Inner<B>>,
    peer: DomId,
    access: Access,
}

impl<B: GrantBackend> fmt::Debug for Share<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("peer", &self.peer)
            .field("access", &self.access)
            .field("refs", &self.refs())
            .finish()
    }
}

impl<B: GrantBackend> Share<B> {
    fn live(&self) -> &B::Live {
        // `live` is only None transiently inside try_unshare and drop.
        match &self.live {
            Some(l) => l,
            None => unreachable!("a Share always holds its live grant"),
        }
    }

    /// The grant references, one per page; send these to the peer.
    pub fn refs(&self) -> &[GrantRef] {
        B::refs(self.live())
    }

    /// The shared pages. The peer may change them at any time.
    pub fn mem(&self) -> SharedMem<'_> {
        B::live_mem(self.live())
    }

    /// The domain the pages are shared with.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// What the peer may do with the pages.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Asks for a byte to be cleared and/or an event sent when this side's
    /// use of the share ends (including death of this domain).
    pub fn set_unmap_notify(
        &self,
        byte_offset: Option<usize>,
        port: Option<Port>,
    ) -> Result<(), GrantError> {
        self.owner
            .backend
            .set_unmap_notify(self.live(), byte_offset, port)
    }

    /// Ends the peer's access. On success the pages are the caller's again
    /// ([`Revoked::Pages`]) or, on a platform that cannot prove the peer lost
    /// the memory, retired for good ([`Revoked::Retired`]); while the peer
    /// still maps any page, the share comes back unchanged in [`Busy`]
    /// (every page the peer already released is revoked anyway).
    pub fn try_unshare(mut self) -> Result<Revoked<B::Pages>, Busy<Self>> {
        let Some(live) = self.live.take() else {
            unreachable!("a Share always holds its live grant")
        };
        match self.owner.revoke(live) {
            Ok(pages) => {
                let c = &self.owner.counters;
                c.live.fetch_sub(1, Ordering::Relaxed);
                c.revoked.fetch_add(1, Ordering::Relaxed);
                Ok(pages)
            }
            Err(live) => {
                self.owner.counters.busy.fetch_add(1, Ordering::Relaxed);
                self.live = Some(live);
                Err(Busy(self))
            }
        }
    }
}

impl<B: GrantBackend> crate::mem::SharedMemory for Share<B> {
    fn shared(&self) -> SharedMem<'_> {
        self.mem()
    }
}

impl<B: GrantBackend> Drop for Share<B> {
    /// Tries to revoke once (as Linux's `gnttab_end_foreign_access` does);
    /// if the peer still maps a page, the share moves to quarantine. Memory
    /// is freed only after a proven revocation.
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            match self.owner.revoke(live) {
                Ok(pages) => {
                    let c = &self.owner.counters;
                    c.live.fetch_sub(1, Ordering::Relaxed);
                    c.revoked.fetch_add(1, Ordering::Relaxed);
                    drop(pages);
                }
                Err(live) => {
                    self.owner.counters.busy.fetch_add(1, Ordering::Relaxed);
                    self.owner.quarantine(live, self.peer);
                }
            }
        }
    }
}
