//! The console world: a 256-page guest whose primary console is built and
//! published as a domain builder and toolstack would, a back end attached
//! to it in dom0, and a thread that pumps a back end until stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xenshare::console::{ConsoleError, ConsoleIo};
use xenshare_devices::console::sim::{attach_backend, setup_primary};

pub use crate::{pattern, World, T as SOON};

/// The guest's end of a console on the emulator.
pub type Front<'a> = xenshare_devices::console::sim::SimConsoleFront<'a>;
/// dom0's end of a console on the emulator.
pub type Back = xenshare_devices::console::sim::SimConsoleBack;

/// A machine with a 256-page guest, as the console tests use.
pub fn world() -> World {
    World::with_pages(256)
}

impl World {
    /// The domain builder and toolstack: the console page, pre-granted to
    /// dom0 as ref 0, a port for dom0, and the xenstore keys. Returns the
    /// guest's end.
    pub fn primary_front(&self) -> Front<'_> {
        setup_primary(&self.guest, &self.dom0, &mut self.xs(&self.dom0))
            .expect("setting up the primary console")
    }

    /// A back end in dom0 attached to the guest's primary console.
    pub fn primary_back(&self) -> Result<Back, ConsoleError> {
        attach_backend(&self.dom0, self.guest.id(), &mut self.xs(&self.dom0))
    }
}

/// A back end pumping to `io` in its own thread until stopped.
pub struct BackThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Back, Result<(), ConsoleError>)>>,
}

impl BackThread {
    /// Runs `back` against `io`, polling every 5 ms.
    pub fn spawn(mut back: Back, mut io: impl ConsoleIo + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let r = back.run(&mut io, Duration::from_millis(5), || {
                s.load(Ordering::Acquire)
            });
            (back, r)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread and returns the back end and how its loop ended.
    pub fn stop(mut self) -> (Back, Result<(), ConsoleError>) {
        self.stop.store(true, Ordering::Release);
        let h = self.handle.take().expect("joined once");
        h.join().expect("the back end thread panicked")
    }

    /// Waits (bounded) for the loop to end on its own.
    pub fn join_within(mut self, limit: Duration) -> (Back, Result<(), ConsoleError>) {
        let h = self.handle.take().expect("joined once");
        let deadline = Instant::now() + limit;
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "back end loop did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        h.join().expect("the back end thread panicked")
    }
}

impl Drop for BackThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
