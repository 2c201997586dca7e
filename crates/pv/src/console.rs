//! The primary console and XenStore, over the rings the domain builder made.
//!
//! Both pages are found from `start_info` (MFN → pfn through the M2P,
//! checked against the p2m list) and both ports are already bound: they are
//! adopted into their own event handles. The console is the core's
//! [`ConsoleFront`]; XenStore is the core's [`RingTransport`] under its
//! [`Client`]. A global console behind a spin lock serves [`print!`](crate::print) and
//! [`println!`](crate::println) and the panic handler.

use core::fmt;
use core::time::Duration;

use spin::Mutex;
use xenshare::console::ConsoleFront;
use xenshare::mem::SharedMem;
use xenshare::store::ring::RingTransport;
use xenshare::store::Client;
use xenshare::{DomId, Port};

use crate::events::PvEvents;
use crate::layout::StartInfo;
use crate::mm;

/// The guest's console front end.
pub type Console = ConsoleFront<SharedMem<'static>, PvEvents>;
/// The guest's XenStore client.
pub type XenStore = Client<RingTransport<xenshare::mem::SharedMem<'static>, PvEvents>>;

/// How long console output waits for xenconsoled to make room.
const CONSOLE_STALL: Duration = Duration::from_secs(5);

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

/// Why a builder ring could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The MFN is not one of this domain's mapped pages.
    NotMapped(&'static str, u64),
    /// The core refused the page or port.
    Setup(&'static str, alloc::string::String),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMapped(what, mfn) => write!(f, "{what} ring mfn {mfn:#x} is not mapped"),
            Self::Setup(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// Attaches the primary console and makes it the global one.
///
/// # Safety
///
/// Once, with the `start_info` of this domain, after [`crate::init`].
pub unsafe fn init_console(si: &StartInfo) -> Result<(), RingError> {
    // SAFETY: the console ring is a builder-mapped page of this domain.
    let page = unsafe { mm::builder_page(si.console_mfn) }
        .ok_or(RingError::NotMapped("console", si.console_mfn))?;
    let evt = PvEvents::new();
    let chan = evt
        .adopt(Port(si.console_evtchn), DomId::DOM0)
        .map_err(|e| RingError::Setup("console port", alloc::format!("{e}")))?;
    let front =
        Console::new(page, chan).map_err(|e| RingError::Setup("console", alloc::format!("{e}")))?;
    *CONSOLE.lock() = Some(front);
    Ok(())
}

/// Connects to XenStore over the builder's ring.
///
/// # Safety
///
/// Once, with the `start_info` of this domain, after [`crate::init`].
pub unsafe fn init_xenstore(si: &StartInfo) -> Result<XenStore, RingError> {
    // SAFETY: the XenStore ring is a builder-mapped page of this domain.
    let page = unsafe { mm::builder_page(si.store_mfn) }
        .ok_or(RingError::NotMapped("xenstore", si.store_mfn))?;
    let evt = PvEvents::new();
    let chan = evt
        .adopt(Port(si.store_evtchn), DomId::DOM0)
        .map_err(|e| RingError::Setup("xenstore port", alloc::format!("{e}")))?;
    let t = RingTransport::new(page, chan)
        .map_err(|e| RingError::Setup("xenstore", alloc::format!("{e}")))?;
    Ok(Client::new(t))
}

struct Writer<'a>(&'a mut Console);

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Output is best effort: a stuck console must not stop the guest.
        let _ = self.0.write_all(s.as_bytes(), Some(CONSOLE_STALL));
        Ok(())
    }
}

/// Writes formatted output to the console (nothing before it is attached).
pub fn write_fmt(args: fmt::Arguments<'_>) {
    if let Some(c) = CONSOLE.lock().as_mut() {
        let _ = fmt::write(&mut Writer(c), args);
    }
}

/// Like [`write_fmt`], but gives up instead of waiting if the console is
/// locked (for the panic handler: the panic may have happened while it was).
pub fn try_write_fmt(args: fmt::Arguments<'_>) {
    if let Some(mut g) = CONSOLE.try_lock() {
        if let Some(c) = g.as_mut() {
            let _ = fmt::write(&mut Writer(c), args);
        }
    }
}

/// Prints to the PV console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the PV console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
