//! Event channels: one-bit doorbells between two domains' ports.
//!
//! [`Channel`] owns a bound port of an [`EventChannels`] handle and closes it
//! on drop, so a port is never leaked or closed twice. Events coalesce and
//! carry no data: after a wake-up the receiver re-reads shared memory.

#![forbid(unsafe_code)]

use alloc::sync::Arc;
use core::time::Duration;

use crate::platform::EventChannels;
use crate::types::{DomId, Port};

/// How many rounds a waiter re-checks shared memory before it sleeps on an
/// event channel: about as long as one sleep and wake-up cost here (some
/// tens of microseconds; one round is a check and a `pause`).
///
/// Spinning at most as long as blocking costs is the competitive rule: a
/// peer that answers within the window saves both sides a system call and a
/// wake-up, and one that does not costs the waiter at most twice the
/// optimum. It is for waits on something owed: vchan's adaptive window
/// starts here and never shrinks below it, and the block front end waits
/// this long for answers to its requests ([`crate::blk::FrontConfig::spin`]).
/// A window of a few hundred rounds, shorter than the peer's own wake-up,
/// makes a busy front end sleep on nearly every wait (4 KiB random reads at
/// queue depth 32: 0.63–0.73 of `pread`'s IOPS with 200 rounds, 0.79–0.88
/// with 4096, measured).
pub const SPIN_BEFORE_SLEEP: u32 = 4096;

/// Errors of event-channel operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The port is not open on this handle.
    #[error("{0} is not bound on this handle")]
    NotBound(Port),
    /// The remote port is not unbound, or not offered to this domain.
    #[error("{port} of {dom} is not an unbound port offered to this domain")]
    NotOffered {
        /// Remote domain.
        dom: DomId,
        /// Remote port.
        port: Port,
    },
    /// No such domain.
    #[error("no such domain {0}")]
    NoDomain(DomId),
    /// The domain has no free ports.
    #[error("no free event channel ports")]
    NoFreePorts,
    /// The handle or domain is gone.
    #[error("event channel handle closed")]
    Closed,
    /// An OS-level failure, as errno.
    #[error("system error: errno {0}")]
    Os(i32),
}

/// A bound local port, closed on drop.
pub struct Channel<E: EventChannels> {
    evt: Arc<E>,
    port: Port,
    remote: DomId,
}

impl<E: EventChannels> core::fmt::Debug for Channel<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("port", &self.port)
            .field("remote", &self.remote)
            .finish()
    }
}

impl<E: EventChannels> Channel<E> {
    /// Allocates a port that `remote` may bind (the listening side).
    pub fn alloc_unbound(evt: &Arc<E>, remote: DomId) -> Result<Self, EventError> {
        let port = evt.alloc_unbound(remote)?;
        Ok(Self {
            evt: evt.clone(),
            port,
            remote,
        })
    }

    /// Binds to `remote`'s unbound `remote_port` (the connecting side).
    pub fn bind(evt: &Arc<E>, remote: DomId, remote_port: Port) -> Result<Self, EventError> {
        let port = evt.bind_interdomain(remote, remote_port)?;
        Ok(Self {
            evt: evt.clone(),
            port,
            remote,
        })
    }

    /// Takes ownership of `port`, already bound on `evt` by other means.
    /// On Xen the domain builder binds a guest's XenStore and console ports
    /// before the guest starts, and the guest finds them in `start_info`;
    /// a PV guest adopts them here. Like any other, the port is closed on
    /// drop.
    pub fn adopt(evt: &Arc<E>, port: Port, remote: DomId) -> Self {
        Self {
            evt: evt.clone(),
            port,
            remote,
        }
    }

    /// The local port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The remote domain.
    pub fn remote(&self) -> DomId {
        self.remote
    }

    /// The handle the port is bound on.
    pub fn handle(&self) -> &Arc<E> {
        &self.evt
    }

    /// Notifies the peer.
    pub fn notify(&self) -> Result<(), EventError> {
        self.evt.notify(self.port)
    }

    /// Re-enables delivery after a wake-up.
    pub fn unmask(&self) -> Result<(), EventError> {
        self.evt.unmask(self.port)
    }

    /// Waits until this handle has a pending port (this one or another bound
    /// on the same handle), up to `timeout`. Returns the port delivered.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError> {
        self.evt.wait(timeout)
    }
}

impl<E: EventChannels> Drop for Channel<E> {
    fn drop(&mut self) {
        // Closing can only fail if the handle or domain is already gone, in
        // which case the port is gone with it.
        let _ = self.evt.close(self.port);
    }
}
