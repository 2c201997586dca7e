//! A XenStore transport over `/dev/xen/xenbus`.
//!
//! The device carries the XenStore wire protocol unchanged: whole
//! `xsd_sockmsg` messages are written, replies and watch events are read
//! back in the same framing, and the kernel relays them to xenstored (over
//! the shared ring, or to a xenstored in this domain). The core's
//! [`xenshare::store::Client`] runs on top; the daemon's Unix socket
//! (`/run/xenstored/socket`, in the domain running xenstored) is the other
//! transport, [`xenshare::store::UnixTransport`].

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use xenshare::store::client::{Transport, TransportError};
use xenshare::store::wire::{Decoder, Message};

use crate::{open_dev, wait_readable, OpenError};

/// An open `/dev/xen/xenbus`.
pub struct XenbusTransport {
    fd: OwnedFd,
    decoder: Decoder,
}

impl std::fmt::Debug for XenbusTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenbusTransport").finish()
    }
}

fn io(e: Errno) -> TransportError {
    TransportError::Io(format!("/dev/xen/xenbus: {e}"))
}

impl XenbusTransport {
    /// Opens `/dev/xen/xenbus`.
    pub fn open() -> Result<XenbusTransport, OpenError> {
        Ok(XenbusTransport {
            fd: open_dev(crate::XENBUS)?,
            decoder: Decoder::new(),
        })
    }
}

impl Transport for XenbusTransport {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        let bytes = msg.to_bytes()?;
        let mut done = 0;
        while done < bytes.len() {
            match rustix::io::write(&self.fd, &bytes[done..]) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let mut fds = [PollFd::new(&self.fd, PollFlags::OUT)];
                    let _ = rustix::event::poll(&mut fds, None);
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut buf = vec![0u8; 8192];
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(Some(m));
            }
            match rustix::io::read(&self.fd, &mut buf[..]) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    if !wait_readable(&self.fd, deadline).map_err(io)? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
}
