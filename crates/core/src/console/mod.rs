//! The PV console: `xencons_interface` front and back ends.
//!
//! A console is one shared page holding two byte rings — `in` (1024 bytes,
//! back end → guest: keyboard input) and `out` (2048 bytes, guest → back
//! end: console output) — with four free-running `u32` indices, plus an
//! event channel that says "the indices moved" (xen-abi.md 5).
//!
//! * [`ring`] — the byte-ring algorithm, once for both directions: the
//!   peer's index is read once, `prod - cons` is checked against the ring
//!   size, bytes are copied out once. A violation is [`ConsoleError::Corrupt`].
//! * [`ConsoleFront`] — the guest side: writes `out`, reads `in`.
//! * [`ConsoleBack`] — the back-end side (xenconsoled's job): reads `out`,
//!   writes `in`, and pumps both directions to a host terminal through the
//!   [`ConsoleIo`] trait (stdio, a pty, memory — in `xenshare-devices`).
//! * [`xenbus`] — discovery. The *primary* console's page is allocated by the
//!   domain builder and pre-granted as reserved ref 0
//!   (`GNTTAB_RESERVED_CONSOLE`); the toolstack publishes
//!   `/local/domain/<id>/console/{ring-ref,port,type}` and there is no XenBus
//!   state machine. *Secondary* consoles live under
//!   `/local/domain/<id>/device/console/<N>/` and use the normal XenBus
//!   handshake: the front end grants a page through the safe grant API.
//!
//! Defensive rules: each side keeps private copies of the indices it owns
//! (`out_prod`/`in_cons` for the guest, `out_cons`/`in_prod` for the back
//! end) and only publishes them; the peer's index is read once per operation
//! and validated. Every violation moves the console to a broken state (all
//! further calls fail with [`ConsoleError::Broken`]) — never an
//! out-of-bounds access, a panic or an endless loop. A peer that floods the
//! event channel without moving any index is reported as
//! [`ConsoleError::EventFlood`] after [`SPURIOUS_EVENT_LIMIT`] wake-ups in a
//! row. A secondary console's front end gives its page back through
//! [`Share::try_unshare`](crate::grant::Share::try_unshare): a back end that
//! keeps it mapped only sends the page to quarantine.
//!
//! A back end that restarts attaches to the same page and takes its private
//! indices from the page (after validating them), so output written while no
//! back end was attached — up to the ring size — is delivered.

#![forbid(unsafe_code)]

mod back;
mod front;
pub mod ring;
pub mod xenbus;

pub use back::{ConsoleBack, PumpProgress};
pub use front::ConsoleFront;

pub use crate::error::DeviceError;
use crate::mem::{SharedMem, SharedMemory};

/// Consecutive wake-ups without any index movement after which the peer is
/// considered to be flooding the event channel.
pub const SPURIOUS_EVENT_LIMIT: u32 = 1024;

/// A failure of the host side of a console back end (the terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The terminal is gone (end of file, hang-up).
    #[error("host terminal closed")]
    Closed,
    /// The user asked to detach (Ctrl-] on an attached terminal).
    #[error("detached by the user")]
    Detached,
    /// An OS-level failure, as errno.
    #[error("host terminal error: errno {0}")]
    Os(i32),
}

/// The host side of a console back end: where guest output goes and where
/// keyboard input comes from. Both calls must not block for long.
pub trait ConsoleIo {
    /// Delivers guest output. Returns how many bytes were accepted; fewer
    /// than `data.len()` (even 0) is back-pressure — the rest is offered
    /// again later.
    fn write_output(&mut self, data: &[u8]) -> Result<usize, HostError>;
    /// Fetches keyboard input without blocking; `Ok(0)` when there is none.
    fn read_input(&mut self, buf: &mut [u8]) -> Result<usize, HostError>;
}

impl<T: ConsoleIo + ?Sized> ConsoleIo for &mut T {
    fn write_output(&mut self, data: &[u8]) -> Result<usize, HostError> {
        (**self).write_output(data)
    }
    fn read_input(&mut self, buf: &mut [u8]) -> Result<usize, HostError> {
        (**self).read_input(buf)
    }
}

/// Memory holding a console page: the primary page as the domain builder
/// made it ([`SharedMem`]), a secondary console's [`Share`](crate::grant::Share)
/// (front end) or a back end's [`Mapping`](crate::grant::Mapping) — any
/// [`SharedMemory`] owner that can move between threads.
pub trait ConsolePage: SharedMemory + Send {}

impl<T: SharedMemory + Send> ConsolePage for T {}

/// Errors of console set-up and I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// A failure every driver can have (grant, map, event channel,
    /// XenStore, a bad key, the peer's state, a timeout, closed).
    #[error(transparent)]
    Core(#[from] DeviceError),
    /// The host terminal failed.
    #[error("{0}")]
    Host(#[from] HostError),
    /// The memory given as a console page is smaller than `xencons_interface`.
    #[error("console page of {0} bytes is too small")]
    BadPage(usize),
    /// The peer corrupted the indices of the named ring (`"in"` or `"out"`);
    /// the console is now broken.
    #[error("peer corrupted the console {0} ring indices")]
    Corrupt(&'static str),
    /// The peer kept signalling the event channel without moving any index;
    /// the console is now broken.
    #[error("peer flooded the event channel ({0} wake-ups without progress)")]
    EventFlood(u32),
    /// The back end still maps the secondary console page after close: the
    /// page went to quarantine and will not be reused until it is released.
    #[error("back end kept the console page mapped after close; page quarantined")]
    GrantKept,
    /// An earlier protocol violation broke the console.
    #[error("console is broken after a protocol violation")]
    Broken,
}

crate::wrap_device_error!(ConsoleError);

impl crate::latch::Fault for ConsoleError {
    fn broken(_cause: &ConsoleError) -> ConsoleError {
        ConsoleError::Broken
    }

    /// A corrupted index or an event flood breaks the console; other
    /// errors (a timeout, the host terminal) do not.
    fn latches(&self) -> bool {
        matches!(
            self,
            ConsoleError::Corrupt(_) | ConsoleError::Broken | ConsoleError::EventFlood(_)
        )
    }
}

/// Checks that `mem` can hold a `xencons_interface`.
pub(crate) fn check_page(mem: SharedMem<'_>) -> Result<(), ConsoleError> {
    if mem.len() < core::mem::size_of::<xenshare_abi::console::XenconsInterface>() {
        return Err(ConsoleError::BadPage(mem.len()));
    }
    Ok(())
}
