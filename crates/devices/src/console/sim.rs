//! The console on the emulator: what the domain builder, the toolstack and
//! xenconsoled do for a guest's primary console, and the demo guest that
//! `xenshare console --demo-guest` and `xenshare demo --full` boot.
//!
//! Here domains are threads of this process: the guest "kernel" is a
//! thread running [`demo_shell`] on the guest's side of the page, and the
//! back end pumps the page to a host terminal in the calling thread. For
//! consoles of domains that are processes of a multi-process host
//! (`xenshare host`), attached and detached at will, see
//! [`session`](super::session).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xenshare::console::xenbus::{attach_primary, primary_front, publish_primary};
use xenshare::console::{ConsoleBack, ConsoleError, ConsoleFront, ConsoleIo, HostError};
use xenshare::grant::Mapping;
use xenshare::mem::SharedMem;
use xenshare::store::client::{Client, Transport};
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, SimEvtchn, SimMapper};

use super::{demo_shell, GuestConsole, ShellExit};

/// The guest end of a primary console on the emulator.
pub type SimConsoleFront<'g> = ConsoleFront<SharedMem<'g>, SimEvtchn>;
/// The back end of a console on the emulator.
pub type SimConsoleBack = ConsoleBack<Mapping<SimMapper>, SimEvtchn>;

/// The domain builder and toolstack's part of `guest`'s primary console,
/// served from `backend`: builds the page (pre-granted to `backend` as
/// reserved ref 0), allocates the guest's port for `backend` on a fresh
/// guest handle, and publishes `console/{ring-ref,port,type}` with the
/// privileged client `xs`. Returns the guest's end of the console.
pub fn setup_primary<'g, T: Transport>(
    guest: &'g Domain,
    backend: &Domain,
    xs: &mut Client<T>,
) -> Result<SimConsoleFront<'g>, ConsoleError> {
    let frame = guest
        .build_console_page(backend.id())
        .map_err(|_| ConsoleError::BadPage(0))?;
    let page = guest.console_page().ok_or(ConsoleError::BadPage(0))?;
    let front = primary_front(page, &guest.evtchn()?, backend.id())?;
    publish_primary(xs, guest.id(), backend.id(), frame, front.port())?;
    Ok(front)
}

/// Attaches a back end running in `backend` to `guest`'s primary console
/// (xenconsoled's part), on a fresh event channel handle.
pub fn attach_backend<T: Transport>(
    backend: &Domain,
    guest: DomId,
    xs: &mut Client<T>,
) -> Result<SimConsoleBack, ConsoleError> {
    attach_primary(backend.importer(), &backend.evtchn()?, xs, guest)
}

/// The emulated machine the console demo runs on.
pub type DemoWorld = crate::machine::Machine;

impl DemoWorld {
    /// Boots the hypervisor, dom0 and a guest of `mem_pages` pages.
    pub fn boot(mem_pages: u64) -> Result<Self, String> {
        Self::boot_with(DomainConfig {
            mem_pages,
            ..Default::default()
        })
    }

    /// Boots the hypervisor, dom0 and a guest configured as `cfg`.
    pub fn boot_with(cfg: DomainConfig) -> Result<Self, String> {
        Self::new(cfg).map_err(|e| format!("booting the demo machine: {e}"))
    }
}

/// How a console session with the demo guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The guest's shell exited (`exit` / Ctrl-D).
    GuestExited,
    /// The user detached (Ctrl-]); the guest was stopped.
    Detached,
    /// The host terminal closed; the guest was stopped.
    TerminalClosed,
}

/// How long the guest waits for the back end between checks of its stop
/// flag, and the back end for events between polls of the terminal.
const GUEST_TICK: Duration = Duration::from_millis(50);
const BACK_POLL: Duration = Duration::from_millis(10);

/// Boots [`demo_shell`] as `world.guest`'s kernel on its primary console,
/// with the back end in dom0 pumping to `io` in this thread, until the
/// shell exits, the user detaches or the terminal closes.
pub fn run_demo_guest(
    world: &DemoWorld,
    io: &mut impl ConsoleIo,
    hostname: &str,
) -> Result<SessionEnd, ConsoleError> {
    let booted = Instant::now();
    let mut xs0 = world.client(&world.dom0);
    let front = setup_primary(&world.guest, &world.dom0, &mut xs0)?;
    let mut back = attach_backend(&world.dom0, world.guest.id(), &mut xs0)?;
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let guest = s.spawn(|| {
            let mut con = GuestConsole::new(front, GUEST_TICK);
            let r = demo_shell(&mut con, hostname, booted, &stop);
            done.store(true, Ordering::Release);
            r
        });
        let r = back.run(io, BACK_POLL, || done.load(Ordering::Acquire));
        let end = match r {
            Ok(()) => {
                // The shell's last words are in the ring: deliver them.
                while back.pump(io).map(|p| p.any()).unwrap_or(false) {}
                Ok(SessionEnd::GuestExited)
            }
            Err(ConsoleError::Host(HostError::Detached)) => Ok(SessionEnd::Detached),
            Err(ConsoleError::Host(HostError::Closed)) => Ok(SessionEnd::TerminalClosed),
            Err(e) => Err(e),
        };
        stop.store(true, Ordering::Release);
        let shell = guest.join().unwrap_or(Err(ConsoleError::Broken));
        match (end, shell) {
            (Err(e), _) => Err(e),
            (Ok(SessionEnd::GuestExited), Err(e)) => Err(e),
            (Ok(end), Ok(ShellExit::Exit | ShellExit::Stopped)) => Ok(end),
            // The shell failing after a detach is expected (its output has
            // nowhere to go).
            (Ok(end), Err(_)) => Ok(end),
        }
    })
}
