//! The console byte rings, and the state both ends of a console share.
//!
//! A console page holds two [`crate::ring::bytes`] rings; [`IN`] and [`OUT`]
//! are their layouts. The free functions ([`produce`], [`consume`], ...)
//! run one step of the validated byte ring for a caller that keeps its own
//! index (the fuzz target does); [`ConsoleFront`](super::ConsoleFront) and
//! [`ConsoleBack`](super::ConsoleBack) are both an `End`: the page, the
//! event channel, the ring this side produces into and the one it consumes
//! from, and the broken / event-flood state. They differ only in which ring
//! is which, and in what the back end adds (its pump and output buffer).

use core::mem::offset_of;
use core::time::Duration;

use xenshare_abi::console::{XenconsInterface, XENCONS_IN_SIZE, XENCONS_OUT_SIZE};

use super::{check_page, ConsoleError, ConsolePage, SPURIOUS_EVENT_LIMIT};
use crate::event::Channel;
use crate::latch::Latch;
use crate::mem::SharedMem;
use crate::platform::EventChannels;
use crate::ring::bytes::{self, ByteConsumer, ByteProducer, ByteRingError, Layout};
use crate::types::Port;

/// One direction of the console page (a byte-ring [`Layout`] in the page).
pub type Dir = Layout;

/// The `in` ring: back end → guest (keyboard input).
pub const IN: Dir = Layout {
    name: "in",
    data: offset_of!(XenconsInterface, r#in),
    size: XENCONS_IN_SIZE,
    cons: offset_of!(XenconsInterface, in_cons),
    prod: offset_of!(XenconsInterface, in_prod),
};

/// The `out` ring: guest → back end (console output).
pub const OUT: Dir = Layout {
    name: "out",
    data: offset_of!(XenconsInterface, out),
    size: XENCONS_OUT_SIZE,
    cons: offset_of!(XenconsInterface, out_cons),
    prod: offset_of!(XenconsInterface, out_prod),
};

const _: () = assert!(IN.is_valid() && OUT.is_valid());

/// A byte-ring error as the console reports it: a bad peer index is
/// [`ConsoleError::Corrupt`]; memory that no longer holds the page (it was
/// size-checked when the console was made) stops the console.
fn err(e: ByteRingError) -> ConsoleError {
    match e {
        ByteRingError::Corrupt(name) => ConsoleError::Corrupt(name),
        ByteRingError::Memory(_) => ConsoleError::Broken,
    }
}

/// Loads the index at `off` once (the peer's, or a snapshot at attach).
pub fn load(mem: SharedMem<'_>, off: usize) -> Result<u32, ConsoleError> {
    bytes::load_index(mem, off).map_err(err)
}

/// Checks an index pair: at most `size` bytes may be in flight.
pub fn check(d: &Dir, prod: u32, cons: u32) -> Result<usize, ConsoleError> {
    d.in_flight(prod, cons).map_err(err)
}

/// Bytes in flight, as seen by the producer holding private `prod`.
pub fn used_by_producer(mem: SharedMem<'_>, d: &Dir, prod: u32) -> Result<usize, ConsoleError> {
    let space = ByteProducer::new(*d, prod).space(mem).map_err(err)?;
    Ok(d.size - space)
}

/// Bytes ready, as seen by the consumer holding private `cons`.
pub fn ready_for_consumer(mem: SharedMem<'_>, d: &Dir, cons: u32) -> Result<usize, ConsoleError> {
    ByteConsumer::new(*d, cons).ready(mem).map_err(err)
}

/// Producer: copies as much of `data` as fits after private index `prod`,
/// publishes the new producer index, and returns the bytes written.
pub fn produce(mem: SharedMem<'_>, d: &Dir, prod: u32, data: &[u8]) -> Result<usize, ConsoleError> {
    ByteProducer::new(*d, prod)
        .write_some(mem, mem, data)
        .map_err(err)
}

/// Consumer: copies up to `out.len()` ready bytes after private index
/// `cons` (each byte fetched once), publishes the new consumer index, and
/// returns the bytes read.
pub fn consume(
    mem: SharedMem<'_>,
    d: &Dir,
    cons: u32,
    out: &mut [u8],
) -> Result<usize, ConsoleError> {
    ByteConsumer::new(*d, cons)
        .read_some(mem, mem, out)
        .map_err(err)
}

/// One end of a console page: produces into `tx`, consumes from `rx`.
pub(crate) struct End<P: ConsolePage, E: EventChannels> {
    page: P,
    chan: Channel<E>,
    tx: ByteProducer,
    rx: ByteConsumer,
    spurious: u32,
    latch: Latch<ConsoleError>,
}

impl<P: ConsolePage, E: EventChannels> End<P, E> {
    /// Takes this side's indices from the page once (zero on a fresh page,
    /// the last published values on a re-attach) and validates both rings
    /// against the peer's indices.
    pub(crate) fn attach(
        page: P,
        chan: Channel<E>,
        tx: Dir,
        rx: Dir,
    ) -> Result<Self, ConsoleError> {
        let mem = page.shared();
        check_page(mem)?;
        let tx_prod = load(mem, tx.prod)?;
        let rx_cons = load(mem, rx.cons)?;
        check(&tx, tx_prod, load(mem, tx.cons)?)?;
        check(&rx, load(mem, rx.prod)?, rx_cons)?;
        Ok(Self {
            page,
            chan,
            tx: ByteProducer::new(tx, tx_prod),
            rx: ByteConsumer::new(rx, rx_cons),
            spurious: 0,
            latch: Latch::new(),
        })
    }

    pub(crate) fn port(&self) -> Port {
        self.chan.port()
    }

    pub(crate) fn page(&self) -> &P {
        &self.page
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.latch.is_tripped()
    }

    pub(crate) fn notify(&self) -> Result<(), ConsoleError> {
        Ok(self.chan.notify()?)
    }

    pub(crate) fn into_parts(self) -> (P, Channel<E>) {
        (self.page, self.chan)
    }

    pub(crate) fn live(&self) -> Result<(), ConsoleError> {
        self.latch.check()
    }

    fn fail<T>(&mut self, r: Result<T, ConsoleError>) -> Result<T, ConsoleError> {
        self.latch.guard(r)
    }

    /// Some index moved: the next wake-up is not spurious.
    pub(crate) fn progress(&mut self) {
        self.spurious = 0;
    }

    /// Writes as much of `data` as fits and notifies the peer; returns
    /// the bytes written (0 when full).
    pub(crate) fn send(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        self.live()?;
        let mem = self.page.shared();
        let r = self.tx.write_some(mem, mem, data).map_err(err);
        let n = self.fail(r)?;
        if n > 0 {
            self.spurious = 0;
            self.chan.notify()?;
        }
        Ok(n)
    }

    /// Reads up to `buf.len()` bytes and notifies the peer that room was
    /// freed; returns the bytes read (0: none). `progress`: whether bytes
    /// read count as progress against an event flood.
    pub(crate) fn recv(&mut self, buf: &mut [u8], progress: bool) -> Result<usize, ConsoleError> {
        self.live()?;
        let mem = self.page.shared();
        let r = self.rx.read_some(mem, mem, buf).map_err(err);
        let n = self.fail(r)?;
        if n > 0 {
            if progress {
                self.spurious = 0;
            }
            self.chan.notify()?;
        }
        Ok(n)
    }

    /// Bytes we produced that the peer has not consumed yet.
    pub(crate) fn tx_used(&mut self) -> Result<usize, ConsoleError> {
        self.live()?;
        let r = self.tx.space(self.page.shared()).map_err(err);
        let space = self.fail(r)?;
        Ok(self.tx.layout().size - space)
    }

    /// Bytes waiting for us.
    pub(crate) fn rx_ready(&mut self) -> Result<usize, ConsoleError> {
        self.live()?;
        let r = self.rx.ready(self.page.shared()).map_err(err);
        self.fail(r)
    }

    /// Waits up to `timeout` for an event and re-enables delivery. Returns
    /// false on timeout. [`SPURIOUS_EVENT_LIMIT`] wake-ups in a row without
    /// progress is an event flood, which breaks the console.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ConsoleError> {
        self.live()?;
        match self.chan.wait(timeout)? {
            Some(p) => {
                self.chan.handle().unmask(p)?;
                self.spurious += 1;
                if self.spurious > SPURIOUS_EVENT_LIMIT {
                    return Err(self.latch.trip(ConsoleError::EventFlood(self.spurious)));
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl<P: ConsolePage, E: EventChannels> End<P, E> {
    /// Debug output of a console end named `name`, its own indices named
    /// `tx` (producer) and `rx` (consumer) from that side's point of view.
    pub(crate) fn fmt_as(
        &self,
        f: &mut core::fmt::Formatter<'_>,
        name: &str,
        tx: &str,
        rx: &str,
    ) -> core::fmt::Result {
        f.debug_struct(name)
            .field("port", &self.chan.port())
            .field(tx, &self.tx.prod())
            .field(rx, &self.rx.cons())
            .field("broken", &self.latch.cause())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageBuf;
    use core::sync::atomic::Ordering;

    fn page(buf: &PageBuf) -> SharedMem<'_> {
        buf.mem()
    }

    #[test]
    fn bytes_wrap_both_rings() {
        let buf = PageBuf::new(1);
        let m = page(&buf);
        for d in [IN, OUT] {
            let (mut p, mut c) = (u32::MAX - 700, u32::MAX - 700);
            m.atomic_u32(d.prod).unwrap().store(p, Ordering::Relaxed);
            m.atomic_u32(d.cons).unwrap().store(c, Ordering::Relaxed);
            let mut next = 0u8;
            let mut expect = 0u8;
            for round in 0..200usize {
                let len = 1 + (round * 37) % (d.size + 5);
                let data: std::vec::Vec<u8> =
                    (0..len).map(|i| next.wrapping_add(i as u8)).collect();
                let n = produce(m, &d, p, &data).unwrap();
                assert!(n <= d.size);
                next = next.wrapping_add(n as u8);
                p = p.wrapping_add(n as u32);
                let mut out = std::vec![0u8; 1 + (round * 13) % d.size];
                let k = consume(m, &d, c, &mut out).unwrap();
                for &b in &out[..k] {
                    assert_eq!(b, expect);
                    expect = expect.wrapping_add(1);
                }
                c = c.wrapping_add(k as u32);
            }
        }
    }

    #[test]
    fn corrupt_peer_index_is_an_error() {
        let buf = PageBuf::new(1);
        let m = page(&buf);
        m.atomic_u32(OUT.cons).unwrap().store(5, Ordering::Relaxed);
        assert_eq!(produce(m, &OUT, 0, b"x"), Err(ConsoleError::Corrupt("out")));
        m.atomic_u32(IN.prod)
            .unwrap()
            .store(1025, Ordering::Relaxed);
        assert_eq!(
            consume(m, &IN, 0, &mut [0; 8]),
            Err(ConsoleError::Corrupt("in"))
        );
        m.atomic_u32(IN.prod)
            .unwrap()
            .store(1024, Ordering::Relaxed);
        assert_eq!(consume(m, &IN, 0, &mut [0; 8]), Ok(8));
    }
}
