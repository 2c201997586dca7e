//! Scoped grants and mappings: share (or map), use, end access — in one
//! call, so the common case cannot forget the last step.
//!
//! [`Exporter::with_grant`] shares fresh pages, runs a closure over the
//! [`Share`] (publish its refs, fill or read its memory, wait for the peer),
//! then revokes. Revocation can fail while the peer still maps a page; that
//! outcome is part of the returned [`Scoped`] value, which is `#[must_use]`:
//! the caller gets the share back in [`Busy`] and decides (retry later, or
//! drop it into quarantine). It is never silently dropped.
//!
//! [`Importer::with_mapping`] / [`Importer::with_mapping_ro`] map a peer's
//! grants, run a closure over the memory and unmap. Unmapping our own
//! mapping always ends our access (a failed unmap hypercall is counted in
//! [`ImportStats`](super::ImportStats)), so these return the closure's value
//! directly.
//!
//! ```
//! # fn demo<B: xenshare::platform::GrantBackend>(
//! #     exporter: &xenshare::grant::Exporter<B>,
//! #     peer: xenshare::DomId,
//! # ) -> Result<(), xenshare::grant::GrantError> {
//! use xenshare::Access;
//!
//! let done = exporter.with_grant(peer, 1, Access::ReadOnly, |share| {
//!     share.mem().write(0, b"hello").map(|()| share.refs()[0])
//! })?;
//! match done.end {
//!     // Access ended: the pages are ours again (or retired for good).
//!     Ok(revoked) => drop(revoked),
//!     // The peer still maps the page: keep the share, or let it go to
//!     // quarantine, never reuse the memory.
//!     Err(busy) => drop(busy.into_inner()),
//! }
//! # let _ = done.value;
//! # Ok(())
//! # }
//! ```

use super::{Busy, Exporter, GrantError, Importer, MapError, Mapping, Revoked, Share};
use crate::mem::ReadOnly;
use crate::platform::{ForeignMapper, GrantBackend};
use crate::types::{Access, DomId, GrantRef};

/// What [`Exporter::with_grant`] returns: the closure's value and how the
/// grant ended. `end` is `Err(Busy(share))` when the peer still mapped a page
/// at revocation time.
#[must_use = "the peer may still map the pages: handle `end` (a Busy share must be kept or dropped into quarantine)"]
pub struct Scoped<R, B: GrantBackend> {
    /// What the closure returned.
    pub value: R,
    /// The revocation: the pages (or their retirement), or the share still
    /// mapped by the peer.
    pub end: Result<Revoked<B::Pages>, Busy<Share<B>>>,
}

impl<R: core::fmt::Debug, B: GrantBackend> core::fmt::Debug for Scoped<R, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Scoped")
            .field("value", &self.value)
            .field("peer_kept_mapping", &self.peer_kept_mapping())
            .finish()
    }
}

impl<R, B: GrantBackend> Scoped<R, B> {
    /// Whether the peer still mapped a page when access was to end.
    pub fn peer_kept_mapping(&self) -> bool {
        self.end.is_err()
    }
}

impl<B: GrantBackend> Exporter<B> {
    /// Shares `n` fresh zeroed pages with `peer`, runs `f` over the share,
    /// then revokes it; see the [module docs](super::scoped). Fails only if
    /// the sharing fails (then `f` does not run).
    pub fn with_grant<R>(
        &self,
        peer: DomId,
        n: usize,
        access: Access,
        f: impl FnOnce(&Share<B>) -> R,
    ) -> Result<Scoped<R, B>, GrantError> {
        let share = self.share(peer, n, access)?;
        let value = f(&share);
        Ok(Scoped {
            value,
            end: share.try_unshare(),
        })
    }
}

impl<M: ForeignMapper> Importer<M> {
    /// Maps `refs` of `dom` writable, runs `f` over the memory, then unmaps.
    pub fn with_mapping<R>(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        f: impl FnOnce(&Mapping<M>) -> R,
    ) -> Result<R, MapError> {
        let m = self.map_rw(dom, refs)?;
        Ok(f(&m))
    }

    /// Maps `refs` of `dom` read-only, runs `f` over the memory, then unmaps.
    pub fn with_mapping_ro<R>(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        f: impl FnOnce(&Mapping<M, ReadOnly>) -> R,
    ) -> Result<R, MapError> {
        let m = self.map_ro(dom, refs)?;
        Ok(f(&m))
    }
}
