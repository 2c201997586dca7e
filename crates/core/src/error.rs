//! The error core every split driver shares.
//!
//! Block, network, console and vchan all fail in the same ways below their
//! own protocol: sharing or mapping pages, event channels, XenStore, the
//! request/response ring, a peer's XenStore key, the peer's XenBus state, a
//! wait that ran out, a device closed by this side. Those failures are one
//! type, [`DeviceError`]; each device's error enum wraps it in a `Core`
//! variant (`#[error(transparent)]`) and keeps only what is specific to its
//! protocol. [`wrap_device_error!`](crate::wrap_device_error) adds the
//! `From` impls so `?` works on a [`GrantError`], [`MapError`],
//! [`EventError`], [`ClientError`] or [`RingError`] in driver code.
//!
//! A test matches a core failure as, e.g.,
//! `BlkError::Core(DeviceError::BadKey { .. })`.

#![forbid(unsafe_code)]

use alloc::string::{String, ToString};

use crate::event::EventError;
use crate::grant::{GrantError, MapError};
use crate::ring::RingError;
use crate::store::client::ClientError;
use crate::store::xenbus::XenbusState;

/// A failure every split driver can have; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Sharing pages failed.
    #[error("grant: {0}")]
    Grant(#[from] GrantError),
    /// Mapping the peer's pages failed.
    #[error("map: {0}")]
    Map(#[from] MapError),
    /// An event channel operation failed.
    #[error("event channel: {0}")]
    Event(#[from] EventError),
    /// A XenStore operation failed.
    #[error("xenstore: {0}")]
    Store(#[from] ClientError),
    /// The peer broke the request/response ring protocol (bad index, id or
    /// opcode).
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// A XenStore key of the peer (or of the toolstack) is missing or
    /// malformed.
    #[error("bad xenstore key {key}: {why}")]
    BadKey {
        /// The key, relative to the device directory.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The peer left the handshake (went to Closing / Closed) or is in a
    /// state this end cannot work with.
    #[error("peer is in xenbus state {0:?}")]
    PeerState(XenbusState),
    /// Nothing happened within the configured timeout.
    #[error("timed out")]
    Timeout,
    /// The device was closed by this side, or asked to stop.
    #[error("device closed")]
    Closed,
}

impl DeviceError {
    /// A [`DeviceError::BadKey`] for `key`.
    pub fn bad_key(key: &str, why: &'static str) -> DeviceError {
        DeviceError::BadKey {
            key: key.to_string(),
            why,
        }
    }
}

/// Implements `From<E>` for a device error enum with a
/// `Core(DeviceError)` variant, for every `E` that converts into
/// [`DeviceError`] (grant, map, event channel, XenStore client and ring
/// errors), so `?` works on them in driver code.
#[macro_export]
macro_rules! wrap_device_error {
    ($t:ty) => {
        $crate::wrap_device_error!(@one $t, $crate::grant::GrantError);
        $crate::wrap_device_error!(@one $t, $crate::grant::MapError);
        $crate::wrap_device_error!(@one $t, $crate::event::EventError);
        $crate::wrap_device_error!(@one $t, $crate::store::client::ClientError);
        $crate::wrap_device_error!(@one $t, $crate::ring::RingError);
    };
    (@one $t:ty, $e:ty) => {
        impl From<$e> for $t {
            fn from(e: $e) -> Self {
                <$t>::from($crate::error::DeviceError::from(e))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum ToyError {
        #[error(transparent)]
        Core(#[from] DeviceError),
    }
    crate::wrap_device_error!(ToyError);

    fn store() -> Result<(), ClientError> {
        Err(ClientError::Timeout)
    }

    fn toy() -> Result<(), ToyError> {
        store()?;
        Ok(())
    }

    #[test]
    fn question_mark_goes_through_the_core() {
        assert!(matches!(
            toy(),
            Err(ToyError::Core(DeviceError::Store(ClientError::Timeout)))
        ));
        let e = DeviceError::bad_key("ring-ref", "missing");
        assert_eq!(alloc::format!("{e}"), "bad xenstore key ring-ref: missing");
    }
}
