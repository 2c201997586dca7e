//! A XenStore client over any [`Transport`].
//!
//! The client is synchronous: each call sends one request and waits for the
//! reply with the same `req_id`. Watch events that arrive meanwhile are kept
//! in order and handed out by [`Client::next_event`] / [`Client::events`],
//! so nothing is lost between a request and the next wait.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use super::error::XsError;
use super::perms::Perms;
use super::wire::{split_fields, Message, MsgType, Request, WatchEvent, WireError};
use crate::DomId;

/// A transport failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// The byte stream broke framing.
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// An I/O error, described.
    #[error("i/o error: {0}")]
    Io(String),
}

/// Moves whole messages to and from a XenStore server.
///
/// Implementations: the Unix socket ([`UnixTransport`], std), the
/// in-process connection of the `xenshare-xenstored` crate, and later the
/// shared ring page.
pub trait Transport {
    /// Sends one message.
    fn send(&mut self, msg: &Message) -> Result<(), TransportError>;
    /// Receives one message; `Ok(None)` if `timeout` passed first. `None`
    /// waits forever.
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError>;
}

/// A client-side error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("xenstore error {0}")]
    Xs(XsError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The reply was not what the request type calls for.
    #[error("unexpected reply: {0}")]
    Protocol(&'static str),
    /// A wait ran out of time.
    #[error("timed out")]
    Timeout,
    /// A transaction still conflicted after the allowed retries.
    #[error("transaction conflicted {0} times")]
    TooManyRetries(u32),
}

impl From<XsError> for ClientError {
    fn from(e: XsError) -> Self {
        ClientError::Xs(e)
    }
}

impl ClientError {
    /// The xenstore error name, if the server sent one.
    pub fn xs(&self) -> Option<XsError> {
        match self {
            ClientError::Xs(e) => Some(*e),
            _ => None,
        }
    }
}

/// A transaction id (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TxId(pub u32);

impl TxId {
    /// No transaction.
    pub const NONE: TxId = TxId(0);
}

/// A XenStore client.
pub struct Client<T: Transport> {
    transport: T,
    next_req: u32,
    events: VecDeque<WatchEvent>,
}

impl<T: Transport> Client<T> {
    /// A client on `transport`.
    pub fn new(transport: T) -> Client<T> {
        Client {
            transport,
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends `req` and waits for its reply; error replies become
    /// [`ClientError::Xs`].
    pub fn request(&mut self, tx: TxId, req: &Request) -> Result<Vec<u8>, ClientError> {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let msg = req.to_message(id, tx.0);
        self.transport.send(&msg)?;
        loop {
            let Some(m) = self.transport.recv(None)? else {
                continue;
            };
            if m.ty == MsgType::WatchEvent {
                self.queue_event(&m)?;
                continue;
            }
            // A reply to an earlier request that was given up on.
            if m.req_id != id {
                continue;
            }
            if let Some(e) = m.as_error() {
                return Err(ClientError::Xs(e));
            }
            if m.ty != msg.ty {
                return Err(ClientError::Protocol("reply type differs from request"));
            }
            return Ok(m.payload);
        }
    }

    fn queue_event(&mut self, m: &Message) -> Result<(), ClientError> {
        let ev = WatchEvent::parse(m).map_err(|_| ClientError::Protocol("bad watch event"))?;
        self.events.push_back(ev);
        Ok(())
    }

    fn expect_ok(p: Vec<u8>) -> Result<(), ClientError> {
        if p == b"OK\0" || p == b"OK" {
            Ok(())
        } else {
            Err(ClientError::Protocol("expected OK"))
        }
    }

    fn strings(p: &[u8]) -> Result<Vec<String>, ClientError> {
        if p.is_empty() {
            return Ok(Vec::new());
        }
        split_fields(p)
            .map_err(|_| ClientError::Protocol("list not NUL-terminated"))?
            .into_iter()
            .map(|f| {
                core::str::from_utf8(f)
                    .map(String::from)
                    .map_err(|_| ClientError::Protocol("name not UTF-8"))
            })
            .collect()
    }

    /// Reads a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.read_in(TxId::NONE, path)
    }

    /// Reads a node's value inside a transaction.
    pub fn read_in(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, ClientError> {
        self.request(tx, &Request::Read(path.into()))
    }

    /// Reads a node, `None` if it does not exist.
    pub fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        none_if_absent(self.read(path))
    }

    /// Writes a node, creating missing parents.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), ClientError> {
        self.write_in(TxId::NONE, path, value)
    }

    /// Writes a node inside a transaction.
    pub fn write_in(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), ClientError> {
        let r = Request::Write {
            path: path.into(),
            value: value.to_vec(),
        };
        Self::expect_ok(self.request(tx, &r)?)
    }

    /// Lists a node's children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        self.directory_in(TxId::NONE, path)
    }

    /// Lists a node's children inside a transaction. Falls back to
    /// DIRECTORY_PART when the list does not fit in one reply.
    pub fn directory_in(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, ClientError> {
        match self.request(tx, &Request::Directory(path.into())) {
            Ok(p) => Self::strings(&p),
            Err(ClientError::Xs(XsError::E2BIG)) => self.directory_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn directory_parts(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, ClientError> {
        // The generation count detects a list changing between parts.
        'restart: for _ in 0..16 {
            let mut out = Vec::new();
            let mut offset = 0u32;
            let mut gen: Option<Vec<u8>> = None;
            loop {
                let r = Request::DirectoryPart {
                    path: path.into(),
                    offset,
                };
                let p = self.request(tx, &r)?;
                let nul = p
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(ClientError::Protocol("bad DIRECTORY_PART"))?;
                let g = p[..nul].to_vec();
                if gen.as_ref().is_some_and(|old| *old != g) {
                    continue 'restart;
                }
                gen = Some(g);
                let rest = &p[nul + 1..];
                // A trailing empty string marks the end of the list.
                let done = rest.is_empty() || rest.ends_with(&[0, 0]) || rest == [0];
                let names =
                    Self::strings(rest.strip_suffix(&[0]).filter(|_| done).unwrap_or(rest))?;
                for n in names {
                    if !n.is_empty() {
                        offset = offset.saturating_add(n.len() as u32 + 1);
                        out.push(n);
                    }
                }
                if done {
                    return Ok(out);
                }
            }
        }
        Err(ClientError::Xs(XsError::EAGAIN))
    }

    /// Creates a node (and parents) with an empty value; fine if it exists.
    pub fn mkdir(&mut self, path: &str) -> Result<(), ClientError> {
        self.mkdir_in(TxId::NONE, path)
    }

    /// [`Client::mkdir`] inside a transaction.
    pub fn mkdir_in(&mut self, tx: TxId, path: &str) -> Result<(), ClientError> {
        Self::expect_ok(self.request(tx, &Request::Mkdir(path.into()))?)
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), ClientError> {
        self.rm_in(TxId::NONE, path)
    }

    /// [`Client::rm`] inside a transaction.
    pub fn rm_in(&mut self, tx: TxId, path: &str) -> Result<(), ClientError> {
        Self::expect_ok(self.request(tx, &Request::Rm(path.into()))?)
    }

    /// A node's permissions.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms, ClientError> {
        let p = self.request(TxId::NONE, &Request::GetPerms(path.into()))?;
        Perms::parse_wire(&p).map_err(|_| ClientError::Protocol("bad permission list"))
    }

    /// Sets a node's permissions.
    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<(), ClientError> {
        self.set_perms_in(TxId::NONE, path, perms)
    }

    /// [`Client::set_perms`] inside a transaction.
    pub fn set_perms_in(&mut self, tx: TxId, path: &str, perms: &Perms) -> Result<(), ClientError> {
        let r = Request::SetPerms {
            path: path.into(),
            perms: perms.clone(),
        };
        Self::expect_ok(self.request(tx, &r)?)
    }

    /// Registers a watch. The server fires it once right away.
    pub fn watch(&mut self, path: &str, token: &[u8]) -> Result<(), ClientError> {
        let r = Request::Watch {
            path: path.into(),
            token: token.to_vec(),
        };
        Self::expect_ok(self.request(TxId::NONE, &r)?)
    }

    /// Removes a watch. Events already queued for it stay queued.
    pub fn unwatch(&mut self, path: &str, token: &[u8]) -> Result<(), ClientError> {
        let r = Request::Unwatch {
            path: path.into(),
            token: token.to_vec(),
        };
        Self::expect_ok(self.request(TxId::NONE, &r)?)
    }

    /// Removes all watches and transactions of this connection.
    pub fn reset_watches(&mut self) -> Result<(), ClientError> {
        Self::expect_ok(self.request(TxId::NONE, &Request::ResetWatches)?)
    }

    /// The next watch event: `Ok(None)` if `timeout` passes first.
    pub fn next_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<WatchEvent>, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(Some(ev));
        }
        loop {
            let Some(m) = self.transport.recv(timeout)? else {
                return Ok(None);
            };
            if m.ty == MsgType::WatchEvent {
                self.queue_event(&m)?;
                return Ok(self.events.pop_front());
            }
            // Stray replies (to abandoned requests) are dropped.
        }
    }

    /// Takes an already-received event without waiting.
    pub fn pending_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// An iterator over watch events, waiting up to `timeout` for each; it
    /// ends at the first timeout or error.
    pub fn events(&mut self, timeout: Option<Duration>) -> Events<'_, T> {
        Events {
            client: self,
            timeout,
        }
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, ClientError> {
        let p = self.request(TxId::NONE, &Request::TransactionStart)?;
        let s = p.strip_suffix(&[0]).unwrap_or(&p);
        core::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&id| id != 0)
            .map(TxId)
            .ok_or(ClientError::Protocol("bad transaction id"))
    }

    /// Ends a transaction: commit (`true`) or abort. A conflicting commit
    /// fails with `EAGAIN`.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), ClientError> {
        Self::expect_ok(self.request(tx, &Request::TransactionEnd(commit))?)
    }

    /// Runs `body` in a transaction and commits it, redoing everything when
    /// the commit conflicts (`EAGAIN`), at most `max_retries` extra times.
    /// If `body` fails the transaction is aborted and its error returned.
    pub fn transaction<R>(
        &mut self,
        max_retries: u32,
        mut body: impl FnMut(&mut Tx<'_, T>) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        for _ in 0..=max_retries {
            let id = self.transaction_start()?;
            let mut tx = Tx { client: self, id };
            match body(&mut tx) {
                Ok(r) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(r),
                    Err(ClientError::Xs(XsError::EAGAIN)) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    // The body's error is the one worth reporting.
                    let _ = self.transaction_end(id, false);
                    if e.xs() == Some(XsError::EAGAIN) {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(ClientError::TooManyRetries(max_retries + 1))
    }

    /// `/local/domain/<domid>` as the server reports it.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, ClientError> {
        let p = self.request(TxId::NONE, &Request::GetDomainPath(domid))?;
        let s = p.strip_suffix(&[0]).unwrap_or(&p);
        core::str::from_utf8(s)
            .map(String::from)
            .map_err(|_| ClientError::Protocol("path not UTF-8"))
    }

    /// Introduces a domain (dom0 only).
    pub fn introduce(&mut self, domid: DomId, gfn: i64, port: u32) -> Result<(), ClientError> {
        Self::expect_ok(self.request(TxId::NONE, &Request::Introduce { domid, gfn, port })?)
    }

    /// Releases a domain (dom0 only).
    pub fn release(&mut self, domid: DomId) -> Result<(), ClientError> {
        Self::expect_ok(self.request(TxId::NONE, &Request::Release(domid))?)
    }

    /// Whether a domain is introduced (dom0 only).
    pub fn is_domain_introduced(&mut self, domid: DomId) -> Result<bool, ClientError> {
        let p = self.request(TxId::NONE, &Request::IsDomainIntroduced(domid.0.into()))?;
        match p.strip_suffix(&[0]).unwrap_or(&p) {
            b"T" => Ok(true),
            b"F" => Ok(false),
            _ => Err(ClientError::Protocol("expected T or F")),
        }
    }
}

/// Operations inside a transaction started by [`Client::transaction`].
pub struct Tx<'a, T: Transport> {
    client: &'a mut Client<T>,
    id: TxId,
}

/// A read's result with "no such node" (`ENOENT`) as `None`.
fn none_if_absent(r: Result<Vec<u8>, ClientError>) -> Result<Option<Vec<u8>>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Xs(XsError::ENOENT)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl<T: Transport> Tx<'_, T> {
    /// The transaction id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// Reads a node.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.client.read_in(self.id, path)
    }

    /// Reads a node, `None` if absent.
    pub fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        none_if_absent(self.read(path))
    }

    /// Writes a node.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), ClientError> {
        self.client.write_in(self.id, path, value)
    }

    /// Lists children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        self.client.directory_in(self.id, path)
    }

    /// Creates a node.
    pub fn mkdir(&mut self, path: &str) -> Result<(), ClientError> {
        self.client.mkdir_in(self.id, path)
    }

    /// Removes a subtree.
    pub fn rm(&mut self, path: &str) -> Result<(), ClientError> {
        self.client.rm_in(self.id, path)
    }

    /// Sets permissions.
    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<(), ClientError> {
        self.client.set_perms_in(self.id, path, perms)
    }
}

/// Iterator returned by [`Client::events`].
pub struct Events<'a, T: Transport> {
    client: &'a mut Client<T>,
    timeout: Option<Duration>,
}

impl<T: Transport> Iterator for Events<'_, T> {
    type Item = WatchEvent;

    fn next(&mut self) -> Option<WatchEvent> {
        self.client.next_event(self.timeout).ok().flatten()
    }
}

#[cfg(feature = "std")]
pub use unix::UnixTransport;

#[cfg(feature = "std")]
mod unix {
    use super::{Transport, TransportError};
    use crate::store::wire::{Decoder, Message};
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::Duration;

    /// The Unix socket transport (what `XENSTORED_PATH` names).
    pub struct UnixTransport {
        stream: UnixStream,
        decoder: Decoder,
        /// The read timeout last set on the socket (saves a system call per
        /// request when it does not change).
        timeout: Option<Option<Duration>>,
    }

    fn io(e: std::io::Error) -> TransportError {
        TransportError::Io(e.to_string())
    }

    impl UnixTransport {
        /// Connects to the daemon's socket.
        pub fn connect(path: impl AsRef<Path>) -> Result<UnixTransport, TransportError> {
            Ok(UnixTransport::from_stream(
                UnixStream::connect(path).map_err(io)?,
            ))
        }

        /// Wraps a connected stream.
        pub fn from_stream(stream: UnixStream) -> UnixTransport {
            UnixTransport {
                stream,
                decoder: Decoder::new(),
                timeout: None,
            }
        }
    }

    impl Transport for UnixTransport {
        fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
            let bytes = msg.to_bytes()?;
            self.stream.write_all(&bytes).map_err(io)
        }

        fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError> {
            // A zero timeout means "forever" to set_read_timeout.
            let timeout = timeout.map(|t| t.max(Duration::from_micros(1)));
            if self.timeout != Some(timeout) {
                self.stream.set_read_timeout(timeout).map_err(io)?;
                self.timeout = Some(timeout);
            }
            let mut buf = [0u8; 8192];
            loop {
                if let Some(m) = self.decoder.next_message()? {
                    return Ok(Some(m));
                }
                match self.stream.read(&mut buf) {
                    Ok(0) => return Err(TransportError::Closed),
                    Ok(n) => self.decoder.push(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return Ok(None)
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            }
        }
    }
}
