//! The shared-ring transport: XenStore over a guest's
//! `xenstore_domain_interface` page and an event channel, exactly as on Xen.
//!
//! The page holds two 1 KiB byte rings — requests (guest → server) and
//! responses (server → guest) — with free-running indices. [`XsRing`] is
//! one end of that page (guest or server), two
//! [`crate::ring::bytes`] rings: it keeps its own producer and consumer
//! indices privately, reads the peer's once per call and checks
//! `prod - cons <= 1024`; a violation is [`XsRingError::Corrupt`] and the end
//! stays broken. [`RingTransport`] is the guest's client transport on top.

use alloc::vec::Vec;
use core::mem::offset_of;
use core::sync::atomic::Ordering;
use core::time::Duration;

use xenshare_abi::xs::{XenstoreDomainInterface as Iface, XENSTORE_RING_SIZE as SIZE};

use super::client::{Transport, TransportError};
use super::wire::{Decoder, Message};
use crate::deadline::Deadline;
use crate::event::Channel;
use crate::latch::Latch;
use crate::mem::SharedMemory;
use crate::platform::EventChannels;
use crate::ring::bytes::{self, ByteConsumer, ByteProducer, ByteRingError, Layout};

/// A ring-level failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XsRingError {
    /// The peer's index is impossible (`prod - cons > 1024`).
    #[error("the peer corrupted the {0} ring indices")]
    Corrupt(&'static str),
    /// The page is too small or misaligned.
    #[error("the xenstore page is too small or misaligned")]
    BadPage,
}

/// Which end of the page this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The guest: writes requests, reads responses.
    Guest,
    /// The server (xenstored): reads requests, writes responses.
    Server,
}

const REQ: Layout = Layout {
    name: "request",
    prod: offset_of!(Iface, req_prod),
    cons: offset_of!(Iface, req_cons),
    data: offset_of!(Iface, req),
    size: SIZE,
};
const RSP: Layout = Layout {
    name: "response",
    prod: offset_of!(Iface, rsp_prod),
    cons: offset_of!(Iface, rsp_cons),
    data: offset_of!(Iface, rsp),
    size: SIZE,
};

const _: () = assert!(REQ.is_valid() && RSP.is_valid());

/// The store ring latch keeps the first corruption; later calls fail with
/// the direction they were made in (as [`XsRing::write_some`] and
/// [`XsRing::read_some`] say).
impl crate::latch::Fault for XsRingError {
    fn broken(cause: &XsRingError) -> XsRingError {
        *cause
    }
}

/// One end of a xenstore ring page, over the memory owner `M` (a
/// `SharedMem<'_>`, or the [`Mapping`](crate::grant::Mapping) a server
/// keeps per guest).
pub struct XsRing<M: SharedMemory> {
    page: M,
    out: ByteProducer,
    inp: ByteConsumer,
    broken: Latch<XsRingError>,
}

impl<M: SharedMemory> core::fmt::Debug for XsRing<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XsRing")
            .field("out", &self.out)
            .field("inp", &self.inp)
            .field("broken", &self.broken.cause())
            .finish()
    }
}

impl<M: SharedMemory> XsRing<M> {
    /// Takes one end of `page`. Indices need not start at zero: our own
    /// are read once here and then kept privately.
    pub fn new(page: M, end: End) -> Result<Self, XsRingError> {
        let (out, inp) = match end {
            End::Guest => (REQ, RSP),
            End::Server => (RSP, REQ),
        };
        let mem = page.shared();
        if mem.len() < core::mem::size_of::<Iface>() {
            return Err(XsRingError::BadPage);
        }
        let out_prod = bytes::load_index(mem, out.prod).map_err(|_| XsRingError::BadPage)?;
        let in_cons = bytes::load_index(mem, inp.cons).map_err(|_| XsRingError::BadPage)?;
        Ok(Self {
            page,
            out: ByteProducer::new(out, out_prod),
            inp: ByteConsumer::new(inp, in_cons),
            broken: Latch::new(),
        })
    }

    fn publish(&self, off: usize, v: u32) {
        if let Ok(a) = self.page.shared().atomic_u32(off) {
            a.store(v, Ordering::Release);
        }
    }

    fn fail(&mut self, e: ByteRingError) -> XsRingError {
        match e {
            ByteRingError::Corrupt(name) => self.broken.trip(XsRingError::Corrupt(name)),
            ByteRingError::Memory(_) => XsRingError::BadPage,
        }
    }

    /// Copies as much of `data` as fits into our outgoing ring; returns the
    /// bytes written (0 if full). The caller notifies the peer.
    pub fn write_some(&mut self, data: &[u8]) -> Result<usize, XsRingError> {
        if self.broken.is_tripped() {
            return Err(XsRingError::Corrupt(self.out.layout().name));
        }
        let mem = self.page.shared();
        let r = self.out.write_some(mem, mem, data);
        r.map_err(|e| self.fail(e))
    }

    /// Copies available bytes of the incoming ring into `buf`; returns how
    /// many (0 if empty). The caller notifies the peer.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, XsRingError> {
        if self.broken.is_tripped() {
            return Err(XsRingError::Corrupt(self.inp.layout().name));
        }
        let mem = self.page.shared();
        let r = self.inp.read_some(mem, mem, buf);
        r.map_err(|e| self.fail(e))
    }

    /// True if a broken index was seen.
    pub fn is_broken(&self) -> bool {
        self.broken.is_tripped()
    }

    /// Whether the indices this end owns still read, in the page, as this
    /// end last published them. A peer that rewrites them (our producer
    /// index on the outgoing ring, our consumer index on the incoming one)
    /// has corrupted the page.
    pub fn own_indices_intact(&self) -> bool {
        let mem = self.page.shared();
        let at = |off| bytes::load_index(mem, off).ok();
        at(self.out.layout().prod) == Some(self.out.prod())
            && at(self.inp.layout().cons) == Some(self.inp.cons())
    }

    /// Records an error code in the page's `error` field (server side, when
    /// the server advertises `XENSTORE_SERVER_FEATURE_ERROR`).
    pub fn set_error(&self, code: u32) {
        self.publish(offset_of!(Iface, error), code);
    }

    /// Sets the page's `server_features` (server side).
    pub fn set_server_features(&self, features: u32) {
        self.publish(offset_of!(Iface, server_features), features);
    }

    /// The page's memory owner.
    pub fn memory(&self) -> &M {
        &self.page
    }

    /// Ends the ring and gives its memory back.
    pub fn into_memory(self) -> M {
        self.page
    }
}

/// A guest's XenStore transport over its ring page and event channel.
pub struct RingTransport<M: SharedMemory, E: EventChannels> {
    ring: XsRing<M>,
    chan: Channel<E>,
    decoder: Decoder,
}

impl<M: SharedMemory, E: EventChannels> RingTransport<M, E> {
    /// A transport over the guest's page and its (bound) xenstore channel.
    pub fn new(page: M, chan: Channel<E>) -> Result<Self, XsRingError> {
        Ok(Self {
            ring: XsRing::new(page, End::Guest)?,
            chan,
            decoder: Decoder::new(),
        })
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, TransportError> {
        let io = |e: crate::event::EventError| TransportError::Io(alloc::format!("{e}"));
        match self.chan.wait(timeout).map_err(io)? {
            Some(p) => {
                self.chan.handle().unmask(p).map_err(io)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn ring_err(e: XsRingError) -> TransportError {
    TransportError::Io(alloc::format!("{e}"))
}

/// The longest single sleep of a timed wait without a clock (`no_std`),
/// where each sleep is charged in full.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// How long a full request ring is waited on before the transport gives up.
const SEND_STALL: Duration = Duration::from_secs(30);

impl<M: SharedMemory, E: EventChannels> Transport for RingTransport<M, E> {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        let bytes = msg.to_bytes()?;
        let mut done = 0;
        // The stall clock restarts when bytes go in, never on an event
        // that brought no room.
        let mut stall = Deadline::new(Some(SEND_STALL));
        while done < bytes.len() {
            let n = self.ring.write_some(&bytes[done..]).map_err(ring_err)?;
            done += n;
            let _ = self.chan.notify();
            if n > 0 {
                stall = Deadline::new(Some(SEND_STALL));
                continue;
            }
            let Some(w) = stall.next_wait(WAIT_SLICE) else {
                return Err(TransportError::Io(
                    "xenstore request ring stayed full".into(),
                ));
            };
            self.wait(w)?;
            stall.charge_wait(w);
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError> {
        let mut buf = [0u8; SIZE];
        // One overall deadline: wake-ups that bring no bytes do not extend it.
        let mut deadline = Deadline::new(timeout);
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(Some(m));
            }
            let n = self.ring.read_some(&mut buf).map_err(ring_err)?;
            if n > 0 {
                self.decoder.push(&buf[..n]);
                let _ = self.chan.notify();
                continue;
            }
            let Some(w) = deadline.next_wait(WAIT_SLICE) else {
                return Ok(None);
            };
            self.wait(w)?;
            deadline.charge_wait(w);
        }
    }
}

/// Pending bytes of a server's outgoing stream, kept across partial writes.
#[derive(Default)]
pub struct Backlog {
    bytes: Vec<u8>,
    at: usize,
}

impl Backlog {
    /// Queues a message's bytes.
    pub fn push(&mut self, msg: &Message) -> Result<(), TransportError> {
        if self.at == self.bytes.len() {
            self.bytes.clear();
            self.at = 0;
        }
        msg.encode_into(&mut self.bytes)?;
        Ok(())
    }

    /// Writes what fits into `ring`; returns true if anything was written.
    pub fn flush<M: SharedMemory>(&mut self, ring: &mut XsRing<M>) -> Result<bool, XsRingError> {
        let mut any = false;
        while self.at < self.bytes.len() {
            let n = ring.write_some(&self.bytes[self.at..])?;
            if n == 0 {
                break;
            }
            self.at += n;
            any = true;
        }
        Ok(any)
    }

    /// True if nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }
}
