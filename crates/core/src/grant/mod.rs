//! The safe grant API.
//!
//! * [`entry`] — the v1 entry protocol, both halves: the granting guest's
//!   publish and revoke (one compare-and-swap loop), and the hypervisor's pin
//!   rules. The emulator runs the hypervisor half; loom checks the race.
//! * [`table`] — a guest-owned grant table: one ref allocator (reserved refs
//!   never handed out; a ref freed only after it was proven revoked) and the
//!   [`TableBackend`] that shares a domain's own frames through it.
//! * [`export`] — [`Exporter`] and [`Share`]: sharing pages is ownership.
//!   [`Share::try_unshare`] gives the pages back only on success and the
//!   share back ([`Busy`]) otherwise; a dropped live share goes to a
//!   quarantine that [`Exporter::reclaim`] retries with a bounded budget.
//! * [`import`] — [`Importer`] and [`Mapping`]: batch maps with every status
//!   checked and partial batches rolled back; mappings unmap on drop; grant
//!   copy.
//! * [`scoped`] — [`Exporter::with_grant`] and [`Importer::with_mapping`]:
//!   share or map, run a closure, end access, in one call; a peer that kept
//!   the mapping is a [`Scoped`] result the caller must handle.
//!
//! This is the API on which MirageOS MSA02 and Linux XSA-396 cannot be
//! written: "the peer still maps it" is a value the caller must handle, and
//! memory is never freed or reused while a peer can reach it.
//!
//! `grant` is part of the memory layer, with [`crate::mem`] and the
//! platforms: it is the one protocol-facing module that calls the unsafe
//! platform primitives ([`GrantBackend`](crate::platform::GrantBackend)'s
//! share and revoke, [`ForeignMapper`](crate::platform::ForeignMapper)'s
//! window), each call with its `// SAFETY:` argument. Everything built on it
//! (`ring`, `store`, `vchan`, `console`, `blk`, `net`, `event`) is
//! `#![forbid(unsafe_code)]`: a [`Share`] or [`Mapping`] is a
//! [`SharedMemory`](crate::mem::SharedMemory) owner a ring can hold.

pub mod entry;
pub mod export;
mod few;
pub mod import;
pub mod scoped;
pub mod table;

pub use export::{Busy, Exporter, GrantStats, ReclaimReport, Share};
pub use import::{ImportStats, Importer, Mapping};
pub use scoped::Scoped;
pub use table::{FlagsDisplay, GrantTable, TableBackend, TableEntry, TableView};

/// A successful revocation: no peer can start a new access to the pages.
///
/// Whether the memory can be used again depends on the platform. Where the
/// end of every mapping is proven (a guest-owned grant table: the emulator
/// in one process, a unikernel) the pages come back. Where a peer may still
/// hold the memory by other means the platform cannot take away (Linux's
/// gntalloc defers the free to the kernel; a process of the multi-process
/// emulator that was given the page's fd may keep its own mmap), the memory
/// is retired: never handed back, never reused. Code that pools pages must
/// handle both.
#[must_use = "revoked pages must be kept, freed or re-shared; a retired share must not be counted as pages"]
#[derive(Debug)]
pub enum Revoked<P> {
    /// The pages are the caller's again.
    Pages(P),
    /// Access ended, but the memory is retired for good.
    Retired,
}

impl<P> Revoked<P> {
    /// The pages, if they came back.
    pub fn pages(self) -> Option<P> {
        match self {
            Self::Pages(p) => Some(p),
            Self::Retired => None,
        }
    }

    /// True if the memory was retired.
    pub fn is_retired(&self) -> bool {
        matches!(self, Self::Retired)
    }
}

use core::fmt;

use xenshare_abi::grant as abi;

/// A grant operation status (`GNTST_*`), as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GntSt {
    /// `GNTST_okay`.
    Okay,
    /// `GNTST_general_error`: bad flags, wrong domain, read-only, unstable entry.
    GeneralError,
    /// `GNTST_bad_domain`.
    BadDomain,
    /// `GNTST_bad_gntref`.
    BadGntref,
    /// `GNTST_bad_handle`.
    BadHandle,
    /// `GNTST_bad_virt_addr`.
    BadVirtAddr,
    /// `GNTST_bad_dev_addr`.
    BadDevAddr,
    /// `GNTST_no_device_space`.
    NoDeviceSpace,
    /// `GNTST_permission_denied`.
    PermissionDenied,
    /// `GNTST_bad_page`.
    BadPage,
    /// `GNTST_bad_copy_arg`.
    BadCopyArg,
    /// `GNTST_address_too_big`.
    AddressTooBig,
    /// `GNTST_eagain`.
    Eagain,
    /// `GNTST_no_space`.
    NoSpace,
    /// A code this crate does not know.
    Unknown(i16),
}

impl GntSt {
    /// Decodes a raw status.
    pub const fn from_raw(v: i16) -> Self {
        match v {
            abi::GNTST_OKAY => Self::Okay,
            abi::GNTST_GENERAL_ERROR => Self::GeneralError,
            abi::GNTST_BAD_DOMAIN => Self::BadDomain,
            abi::GNTST_BAD_GNTREF => Self::BadGntref,
            abi::GNTST_BAD_HANDLE => Self::BadHandle,
            abi::GNTST_BAD_VIRT_ADDR => Self::BadVirtAddr,
            abi::GNTST_BAD_DEV_ADDR => Self::BadDevAddr,
            abi::GNTST_NO_DEVICE_SPACE => Self::NoDeviceSpace,
            abi::GNTST_PERMISSION_DENIED => Self::PermissionDenied,
            abi::GNTST_BAD_PAGE => Self::BadPage,
            abi::GNTST_BAD_COPY_ARG => Self::BadCopyArg,
            abi::GNTST_ADDRESS_TOO_BIG => Self::AddressTooBig,
            abi::GNTST_EAGAIN => Self::Eagain,
            abi::GNTST_NO_SPACE => Self::NoSpace,
            other => Self::Unknown(other),
        }
    }

    /// The raw `GNTST_*` value.
    pub const fn to_raw(self) -> i16 {
        match self {
            Self::Okay => abi::GNTST_OKAY,
            Self::GeneralError => abi::GNTST_GENERAL_ERROR,
            Self::BadDomain => abi::GNTST_BAD_DOMAIN,
            Self::BadGntref => abi::GNTST_BAD_GNTREF,
            Self::BadHandle => abi::GNTST_BAD_HANDLE,
            Self::BadVirtAddr => abi::GNTST_BAD_VIRT_ADDR,
            Self::BadDevAddr => abi::GNTST_BAD_DEV_ADDR,
            Self::NoDeviceSpace => abi::GNTST_NO_DEVICE_SPACE,
            Self::PermissionDenied => abi::GNTST_PERMISSION_DENIED,
            Self::BadPage => abi::GNTST_BAD_PAGE,
            Self::BadCopyArg => abi::GNTST_BAD_COPY_ARG,
            Self::AddressTooBig => abi::GNTST_ADDRESS_TOO_BIG,
            Self::Eagain => abi::GNTST_EAGAIN,
            Self::NoSpace => abi::GNTST_NO_SPACE,
            Self::Unknown(v) => v,
        }
    }

    /// Xen's message for the status.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Okay => "okay",
            Self::GeneralError => "undefined error",
            Self::BadDomain => "unrecognised domain id",
            Self::BadGntref => "invalid grant reference",
            Self::BadHandle => "invalid mapping handle",
            Self::BadVirtAddr => "invalid virtual address",
            Self::BadDevAddr => "invalid device address",
            Self::NoDeviceSpace => "no spare translation slot in the I/O MMU",
            Self::PermissionDenied => "permission denied",
            Self::BadPage => "bad page",
            Self::BadCopyArg => "copy arguments cross page boundary",
            Self::AddressTooBig => "page address size too large",
            Self::Eagain => "operation not done; try again",
            Self::NoSpace => "out of space",
            Self::Unknown(_) => "unknown status",
        }
    }

    /// True for [`GntSt::Okay`].
    pub const fn is_ok(self) -> bool {
        matches!(self, Self::Okay)
    }
}

impl fmt::Display for GntSt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (GNTST {})", self.message(), self.to_raw())
    }
}

impl core::error::Error for GntSt {}

/// Errors of the export side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Every grant reference of the table is in use (or quarantined).
    #[error("grant table full: no free grant reference")]
    TableFull,
    /// The domain has no free memory for the pages.
    #[error("out of memory: cannot allocate {pages} contiguous page(s)")]
    OutOfMemory {
        /// Pages asked for.
        pages: usize,
    },
    /// A share must have at least one page, and at most the platform's limit.
    #[error("invalid page count {0}")]
    BadCount(usize),
    /// The peer is not a domain one can grant to.
    #[error("cannot grant to {0}")]
    BadPeer(crate::DomId),
    /// The platform refused the operation.
    #[error("platform error: {0}")]
    Platform(GntSt),
    /// The platform does not support this operation.
    #[error("not supported on this platform: {0}")]
    Unsupported(&'static str),
    /// The grant table was written behind the allocator's back (an entry it
    /// owned was not invalid); the affected refs are never handed out again.
    #[error("grant table corrupt: an entry owned by the allocator was live")]
    TableCorrupt,
    /// An OS-level failure (Linux platform), as errno.
    #[error("system error: errno {0}")]
    Os(i32),
}

/// Errors of the import side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A map was asked for no pages.
    #[error("a mapping needs at least one grant reference")]
    Empty,
    /// Mapping `gref` (element `index` of the batch) failed; everything else
    /// of the batch was unmapped again.
    #[error("mapping {gref} of {dom} (batch element {index}) failed: {status}")]
    Refused {
        /// The granting domain.
        dom: crate::DomId,
        /// The reference that failed.
        gref: crate::GrantRef,
        /// Its position in the batch.
        index: usize,
        /// The hypervisor's status.
        status: GntSt,
    },
    /// The batch mapped but could not be made contiguous.
    #[error("cannot make a contiguous window: {0}")]
    Window(GntSt),
    /// A byte offset is outside the mapping.
    #[error("offset {offset} is outside a mapping of {len} bytes")]
    BadOffset {
        /// The offset asked for.
        offset: usize,
        /// Size of the mapping.
        len: usize,
    },
    /// Unmap notify failed.
    #[error("unmap notify refused: {0}")]
    Notify(GntSt),
}
