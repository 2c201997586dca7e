//! Shared set-up for the console tests: a hypervisor with dom0 and one
//! guest, an in-process xenstored, and the primary console wired as a
//! toolstack would.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xenshare::console::xenbus::{attach_primary, primary_front, publish_primary};
use xenshare::console::{ConsoleBack, ConsoleError, ConsoleFront, ConsoleIo};
use xenshare::grant::Mapping;
use xenshare::mem::SharedMem;
use xenshare::store::client::Client;
use xenshare::store::perms::{PermKind, Perms};
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn, SimMapper};
use xenshare_xenstored::inproc::{self, InProcTransport};
use xenshare_xenstored::{Config, Daemon};

pub type Front<'a> = ConsoleFront<SharedMem<'a>, SimEvtchn>;
pub type Back = ConsoleBack<Mapping<SimMapper>, SimEvtchn>;

/// Generous bound on anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(10);

pub struct World {
    pub hv: Hypervisor,
    pub dom0: Domain,
    pub guest: Domain,
    pub xs: Daemon,
}

pub fn world() -> World {
    let hv = Hypervisor::new();
    let cfg = DomainConfig {
        mem_pages: 256,
        ..Default::default()
    };
    let dom0 = hv.create_domain_with_id(DomId(0), cfg).unwrap();
    let guest = hv.create_domain(cfg).unwrap();
    let xs = Daemon::new(Config::default());
    let mut c0 = inproc::client(&xs, DomId(0));
    let home = format!("/local/domain/{}", guest.id().0);
    c0.mkdir(&home).unwrap();
    c0.set_perms(&home, &Perms::owned_by(guest.id(), PermKind::None))
        .unwrap();
    World {
        hv,
        dom0,
        guest,
        xs,
    }
}

impl World {
    pub fn xs(&self, d: &Domain) -> Client<InProcTransport> {
        inproc::client(&self.xs, d.id())
    }

    /// The domain builder and toolstack: the console page, pre-granted to
    /// dom0 as ref 0, a port for dom0, and the xenstore keys. Returns the
    /// guest's end.
    pub fn primary_front(&self) -> Front<'_> {
        let frame = self.guest.build_console_page(self.dom0.id()).unwrap();
        let page = self.guest.console_page().unwrap();
        let front = primary_front(page, &self.guest.evtchn().unwrap(), self.dom0.id()).unwrap();
        publish_primary(
            &mut self.xs(&self.dom0),
            self.guest.id(),
            self.dom0.id(),
            frame,
            front.port(),
        )
        .unwrap();
        front
    }

    /// A back end in dom0 attached to the guest's primary console.
    pub fn primary_back(&self) -> Result<Back, ConsoleError> {
        attach_primary(
            self.dom0.importer(),
            &self.dom0.evtchn().unwrap(),
            &mut self.xs(&self.dom0),
            self.guest.id(),
        )
    }
}

/// A back end pumping to `io` in its own thread until stopped.
pub struct BackThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Back, Result<(), ConsoleError>)>>,
}

impl BackThread {
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
        self.handle.take().unwrap().join().unwrap()
    }

    /// Waits (bounded) for the loop to end on its own.
    pub fn join_within(mut self, limit: Duration) -> (Back, Result<(), ConsoleError>) {
        let h = self.handle.take().unwrap();
        let deadline = Instant::now() + limit;
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "back end loop did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        h.join().unwrap()
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

/// A deterministic byte pattern covering every value.
pub fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len)
        .map(|i| (i * 7 + i / 256) as u8)
        .collect()
}
