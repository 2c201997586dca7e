//! vchan: a bidirectional byte stream between two domains, wire-compatible
//! with Xen's libxenvchan.
//!
//! The server grants a control page (a 24-byte [`VchanInterface`] header,
//! then `grants[]`) and, for rings of order 12 and above, separately granted
//! ring pages; rings of order 10 and 11 live inside the control page. The
//! left ring carries client → server bytes, the right ring server → client.
//! An event channel wakes the peer, but only when it asked for it through the
//! notify bits; the live bytes say whether each side is there, and are
//! cleared by unmap-notify when a side dies.
//!
//! Defensive rules: ring orders are read once at connect and kept privately
//! (a peer changing them later changes nothing); our own indices are kept
//! privately and only published; the peer's index is validated on every read
//! (`prod - cons` never above the ring size) — a violation is a typed error
//! that moves the vchan to a broken state instead of libxenvchan's silent
//! stall. Closing revokes every grant through the safe grant API: a client
//! that keeps its mappings only sends the pages to quarantine.
//!
//! [`VchanInterface`]: xenshare_abi::vchan::VchanInterface

#![forbid(unsafe_code)]

mod io;
pub mod notify;
mod setup;

pub use io::{Vchan, VchanSide};
pub use setup::{client_init, server_init, ClientMem, ServerMem, VchanOrders};

pub use crate::error::DeviceError;
use crate::store::error::XsError;

/// Errors of vchan set-up and I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VchanError {
    /// A failure every driver can have: grant, map, event channel,
    /// XenStore, a bad key (missing, zero or not a decimal number), a
    /// timeout, or closed (by this side, or the peer left the stream).
    #[error(transparent)]
    Core(#[from] DeviceError),
    /// XenStore refused a write for a quota of this domain (the error it
    /// sent: `ENOSPC` for nodes, memory or entries, `E2BIG` for watches,
    /// `ENOMEM` for memory). Set-up itself needs no transaction, so the
    /// transaction quota is never the cause.
    #[error("xenstore quota exceeded ({0:?}): the domain owns too much in XenStore")]
    StoreQuota(XsError),
    /// The server's ring orders are invalid.
    #[error("invalid ring orders left {left} right {right}: {why}")]
    BadOrders {
        /// Left ring order.
        left: u16,
        /// Right ring order.
        right: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// Requested ring sizes are out of range.
    #[error("ring size {0} out of range (at most 1 MiB)")]
    BadSize(usize),
    /// The peer corrupted the shared indices; the vchan is now broken.
    #[error("peer corrupted the {0} ring indices")]
    Corrupt(&'static str),
    /// A packet larger than the ring can never be sent or received whole.
    #[error("packet of {len} bytes cannot fit a ring of {ring} bytes")]
    TooBig {
        /// Packet size.
        len: usize,
        /// Ring size.
        ring: usize,
    },
    /// An earlier protocol violation broke the vchan.
    #[error("vchan is broken after a protocol violation")]
    Broken,
}

crate::wrap_device_error!(VchanError);

impl crate::latch::Fault for VchanError {
    fn broken(_cause: &VchanError) -> VchanError {
        VchanError::Broken
    }

    /// Only corrupted indices break a vchan; a timeout, a closed peer or a
    /// packet too big for the ring do not.
    fn latches(&self) -> bool {
        matches!(self, VchanError::Corrupt(_) | VchanError::Broken)
    }
}
