//! The in-process transport: a client in the same process as the daemon,
//! for any domain id. Messages are handed over whole, without bytes.

use std::time::Duration;

use xenshare::store::client::{Transport, TransportError};
use xenshare::store::wire::{Message, PAYLOAD_MAX};
use xenshare::store::Client;
use xenshare::DomId;

use crate::daemon::{Connection, Daemon};

/// A connection to a [`Daemon`] in this process, speaking for `domid`.
/// Dropping it disconnects.
pub struct InProcTransport {
    daemon: Daemon,
    conn: Connection,
}

impl InProcTransport {
    /// Attaches a new connection for `domid`.
    pub fn connect(daemon: &Daemon, domid: DomId) -> InProcTransport {
        InProcTransport {
            daemon: daemon.clone(),
            conn: daemon.connect(domid),
        }
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Transport for InProcTransport {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        if self.conn.queue.is_closed() {
            return Err(TransportError::Closed);
        }
        if msg.payload.len() > PAYLOAD_MAX {
            return Err(TransportError::Wire(msg.header().err().unwrap_or(
                xenshare::store::wire::WireError::PayloadTooLong(u32::MAX),
            )));
        }
        self.daemon.deliver(self.conn.id, msg.clone());
        Ok(())
    }

    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError> {
        self.conn
            .queue
            .pop(timeout)
            .map_err(|_| TransportError::Closed)
    }
}

impl Drop for InProcTransport {
    fn drop(&mut self) {
        self.daemon.disconnect(self.conn.id);
    }
}

/// A client connected in-process to `daemon` as `domid`.
pub fn client(daemon: &Daemon, domid: DomId) -> Client<InProcTransport> {
    Client::new(InProcTransport::connect(daemon, domid))
}
