//! The guest side of a console: writes `out`, reads `in`.

use core::time::Duration;

use super::ring::{End, IN, OUT};
#[cfg(doc)]
use super::SPURIOUS_EVENT_LIMIT;
use super::{ConsoleError, ConsolePage};
use crate::deadline::Deadline;
use crate::error::DeviceError;
use crate::event::Channel;
use crate::platform::EventChannels;
use crate::types::Port;

/// The longest single sleep of a timed wait without a clock (`no_std`),
/// where each sleep is charged in full.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// The guest end of a console page.
///
/// Owns the page (`P`: the builder's page for the primary console, a
/// [`Share`](crate::grant::Share) for a secondary one) and the event channel.
/// Its own indices (`out_prod`, `in_cons`) are kept privately and only
/// published. It is the console end it shares with the back end (in
/// `console::ring`), producing into `out` and consuming `in`.
pub struct ConsoleFront<P: ConsolePage, E: EventChannels> {
    end: End<P, E>,
}

impl<P: ConsolePage, E: EventChannels> core::fmt::Debug for ConsoleFront<P, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.end.fmt_as(f, "ConsoleFront", "out_prod", "in_cons")
    }
}

impl<P: ConsolePage, E: EventChannels> ConsoleFront<P, E> {
    /// Starts the guest end on `page`, signalling through `chan`.
    ///
    /// The private indices start from what the page holds for this side
    /// (zero on a fresh page; the last published values when a guest
    /// re-attaches), checked against the back end's.
    pub fn new(page: P, chan: Channel<E>) -> Result<Self, ConsoleError> {
        Ok(Self {
            end: End::attach(page, chan, OUT, IN)?,
        })
    }

    /// The local event channel port.
    pub fn port(&self) -> Port {
        self.end.port()
    }

    /// The page.
    pub fn page(&self) -> &P {
        self.end.page()
    }

    /// True after a protocol violation.
    pub fn is_broken(&self) -> bool {
        self.end.is_broken()
    }

    /// Kicks the back end (it re-reads the indices; events carry no data).
    pub fn notify(&self) -> Result<(), ConsoleError> {
        self.end.notify()
    }

    /// Takes the console apart (for closing a secondary console).
    pub fn into_parts(self) -> (P, Channel<E>) {
        self.end.into_parts()
    }

    /// Writes as much of `data` as fits in `out` without waiting and
    /// notifies the back end; returns the bytes written (0 when full).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        self.end.send(data)
    }

    /// Reads up to `buf.len()` bytes of input without waiting and notifies
    /// the back end that room was freed; returns the bytes read (0: none).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.end.recv(buf, true)
    }

    /// Bytes of output not yet consumed by the back end.
    pub fn output_pending(&mut self) -> Result<usize, ConsoleError> {
        self.end.tx_used()
    }

    /// Bytes of input waiting to be read.
    pub fn input_ready(&mut self) -> Result<usize, ConsoleError> {
        self.end.rx_ready()
    }

    /// Waits up to `timeout` for an event and re-enables delivery. Returns
    /// false on timeout. Counts wake-ups: [`SPURIOUS_EVENT_LIMIT`] in a row
    /// without progress is an event flood, which breaks the console.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ConsoleError> {
        self.end.wait(timeout)
    }

    /// Writes all of `data`, waiting for the back end to make room; gives
    /// up when the back end makes no room for `timeout` (the clock restarts
    /// only when bytes go out, never on an event that brought no room). On
    /// `ConsoleError::Core(DeviceError::Timeout)` part of the data may have been written.
    pub fn write_all(
        &mut self,
        mut data: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), ConsoleError> {
        let mut deadline = Deadline::new(timeout);
        while !data.is_empty() {
            let n = self.write(data)?;
            data = &data[n..];
            if n > 0 {
                deadline = Deadline::new(timeout);
                continue;
            }
            let Some(w) = deadline.next_wait(WAIT_SLICE) else {
                return Err(DeviceError::Timeout.into());
            };
            self.wait(w)?;
            deadline.charge_wait(w);
        }
        Ok(())
    }

    /// Reads at least one byte, waiting up to `timeout` in all (`None`:
    /// forever): events that bring no data do not extend it. Returns
    /// `ConsoleError::Core(DeviceError::Timeout)` if nothing came.
    pub fn read_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<usize, ConsoleError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut deadline = Deadline::new(timeout);
        loop {
            let n = self.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let Some(w) = deadline.next_wait(WAIT_SLICE) else {
                return Err(DeviceError::Timeout.into());
            };
            self.wait(w)?;
            deadline.charge_wait(w);
        }
    }
}
