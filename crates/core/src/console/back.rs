//! The back-end side of a console: reads `out`, writes `in`, and pumps both
//! directions to a host terminal.

use core::time::Duration;

use xenshare_abi::console::XENCONS_OUT_SIZE;

use super::ring::{End, IN, OUT};
#[cfg(doc)]
use super::SPURIOUS_EVENT_LIMIT;
use super::{ConsoleError, ConsoleIo, ConsolePage};
use crate::event::Channel;
use crate::platform::EventChannels;
use crate::types::Port;

/// Ring-fulls of output one [`ConsoleBack::pump`] moves at most.
const OUTPUT_ROUNDS: usize = 4;

/// What one [`ConsoleBack::pump`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PumpProgress {
    /// Guest output bytes delivered to the host.
    pub output: usize,
    /// Host input bytes given to the guest.
    pub input: usize,
}

impl PumpProgress {
    /// True if any byte moved.
    pub fn any(self) -> bool {
        self.output > 0 || self.input > 0
    }
}

/// The back end of a console page (xenconsoled's role).
///
/// Owns the mapped page (`P`, usually a [`Mapping`](crate::grant::Mapping)
/// of the guest's grant) and the bound event channel. Its own indices
/// (`out_cons`, `in_prod`) are kept privately; they start from the page, so
/// a restarted back end continues where the last one stopped. Guest output
/// the host terminal has not yet accepted is held in a private buffer: it is
/// copied out of the ring once and never re-read from shared memory.
pub struct ConsoleBack<P: ConsolePage, E: EventChannels> {
    end: End<P, E>,
    pending: [u8; XENCONS_OUT_SIZE],
    pending_at: usize,
    pending_end: usize,
}

impl<P: ConsolePage, E: EventChannels> core::fmt::Debug for ConsoleBack<P, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.end.fmt_as(f, "ConsoleBack", "in_prod", "out_cons")
    }
}

impl<P: ConsolePage, E: EventChannels> ConsoleBack<P, E> {
    /// Attaches to a mapped console page, signalling through `chan`.
    ///
    /// The private indices are taken from the page once and validated
    /// against the guest's: a page whose indices are already inconsistent is
    /// refused with [`ConsoleError::Corrupt`].
    pub fn attach(page: P, chan: Channel<E>) -> Result<Self, ConsoleError> {
        let back = Self {
            end: End::attach(page, chan, IN, OUT)?,
            pending: [0; XENCONS_OUT_SIZE],
            pending_at: 0,
            pending_end: 0,
        };
        // Tell the guest we are here: it may be waiting for room.
        back.end.notify()?;
        Ok(back)
    }

    /// The local event channel port.
    pub fn port(&self) -> Port {
        self.end.port()
    }

    /// True after a protocol violation.
    pub fn is_broken(&self) -> bool {
        self.end.is_broken()
    }

    /// Kicks the guest (it re-reads the indices; events carry no data).
    pub fn notify(&self) -> Result<(), ConsoleError> {
        self.end.notify()
    }

    /// Takes the back end apart; undelivered output in the private buffer
    /// is dropped.
    pub fn into_parts(self) -> (P, Channel<E>) {
        self.end.into_parts()
    }

    /// Reads up to `buf.len()` bytes of guest output and notifies the guest
    /// that room was freed; returns the bytes read.
    ///
    /// Bytes already taken into the private buffer by [`ConsoleBack::pump`]
    /// come first.
    pub fn read_output(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.end.live()?;
        let held = self.pending_end - self.pending_at;
        if held > 0 {
            let n = held.min(buf.len());
            buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
            self.pending_at += n;
            return Ok(n);
        }
        self.end.recv(buf, true)
    }

    /// Writes as much of `data` as fits in `in` and notifies the guest;
    /// returns the bytes written (0 when full).
    pub fn write_input(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        self.end.send(data)
    }

    /// Room left in `in`.
    pub fn input_space(&mut self) -> Result<usize, ConsoleError> {
        Ok(IN.size - self.end.tx_used()?)
    }

    /// Moves what it can, without blocking: guest output to `io` (what
    /// `io` does not accept stays buffered), then as much host input as
    /// the `in` ring has room for.
    pub fn pump(&mut self, io: &mut impl ConsoleIo) -> Result<PumpProgress, ConsoleError> {
        self.end.live()?;
        let mut progress = PumpProgress::default();
        // Output: refill the private buffer from the ring when it is empty;
        // a few rounds at most, so input is never starved by a busy guest.
        for _ in 0..OUTPUT_ROUNDS {
            if self.pending_at == self.pending_end {
                let n = self.end.recv(&mut self.pending, false)?;
                self.pending_at = 0;
                self.pending_end = n;
                if n == 0 {
                    break;
                }
            }
            let n = io.write_output(&self.pending[self.pending_at..self.pending_end])?;
            let n = n.min(self.pending_end - self.pending_at);
            self.pending_at += n;
            progress.output += n;
            if n == 0 {
                break;
            }
        }
        // Input: only as much as fits, so nothing is held back here.
        let space = self.input_space()?;
        if space > 0 {
            let mut buf = [0u8; IN.size];
            let n = io.read_input(&mut buf[..space])?;
            let n = n.min(space);
            if n > 0 {
                let w = self.write_input(&buf[..n])?;
                progress.input += w;
            }
        }
        if progress.any() {
            self.end.progress();
        }
        Ok(progress)
    }

    /// Waits up to `timeout` for an event and re-enables delivery. Returns
    /// false on timeout. [`SPURIOUS_EVENT_LIMIT`] wake-ups in a row without
    /// progress is an event flood, which breaks the console.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ConsoleError> {
        self.end.wait(timeout)
    }

    /// Pumps until `stop` returns true or an error: after an idle pump it
    /// sleeps on the event channel for at most `poll` (host input is polled
    /// at that interval). Returns `Ok(())` when stopped; a detach or a
    /// closed terminal comes back as [`ConsoleError::Host`].
    pub fn run(
        &mut self,
        io: &mut impl ConsoleIo,
        poll: Duration,
        mut stop: impl FnMut() -> bool,
    ) -> Result<(), ConsoleError> {
        loop {
            if stop() {
                return Ok(());
            }
            if !self.pump(io)?.any() {
                self.wait(Some(poll))?;
            }
        }
    }
}
