//! Guests' shared-ring connections: the server end of each guest's
//! `xenstore_domain_interface` page, as C xenstored serves it.
//!
//! On `XS_INTRODUCE` the daemon reports the domain; [`RingServer`] then maps
//! the domain's page through reserved grant ref 1
//! (`GNTTAB_RESERVED_XENSTORE`, which the toolstack fills) and binds the
//! domain's event channel port. One thread serves every guest: it waits on
//! a single event channel handle, on which all guests' ports are bound,
//! and serves the guest whose port fired, or whose connection got output
//! (a watch event caused by someone else), in turns. No thread per guest.
//! Other threads wake it through a loopback port on the same handle; where
//! the platform cannot bind one, it looks at guests with output every
//! [`IDLE_WAIT`].
//!
//! A guest that corrupts its ring indices or sends a malformed message has
//! `error` set in its page (the server advertises
//! `XENSTORE_SERVER_FEATURE_ERROR`) and is disconnected; nobody else
//! notices. `XS_RELEASE` (or dropping the server) unbinds its port and
//! unmaps the page.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use xenshare::event::Channel;
use xenshare::grant::{Importer, Mapping};
use xenshare::platform::{EventChannels, ForeignMapper};
use xenshare::store::ring::{Backlog, End, XsRing};
use xenshare::store::wire::Decoder;
use xenshare::{DomId, GrantRef, Port};
use xenshare_abi::grant::GNTTAB_RESERVED_XENSTORE;
use xenshare_abi::xs::{
    XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_SERVER_FEATURE_ERROR,
};

use crate::daemon::{Connection, Daemon, DomainEvent};

/// Without a loopback port to be woken through, how often the ring thread
/// looks at guests with output waiting (this bounds watch-event latency
/// then; with the loopback port, output is sent at once).
pub const IDLE_WAIT: Duration = Duration::from_millis(2);

/// Turns in a row one guest gets while it keeps making progress, before
/// the others are looked at again.
const TURNS: usize = 8;

/// Why a guest could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The xenstore page could not be mapped.
    #[error("mapping the xenstore page of {0}: {1}")]
    Map(DomId, xenshare::grant::MapError),
    /// The event channel could not be bound.
    #[error("binding the xenstore event channel of {0}: {1}")]
    Event(DomId, xenshare::event::EventError),
    /// The page is unusable.
    #[error("xenstore page of {0}: {1}")]
    Ring(DomId, xenshare::store::ring::XsRingError),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the ring thread shares with the daemon's hooks and the handle.
#[derive(Default)]
struct Shared {
    /// Introduce / release events not yet handled.
    events: Mutex<Vec<DomainEvent>>,
    stop: AtomicBool,
    /// Guests whose connection got output (or was closed) while idle.
    ready: Mutex<Vec<u16>>,
    /// Guests attached now.
    attached: Mutex<BTreeSet<u16>>,
    /// The thread waits (or is about to): whoever gives it work rings.
    asleep: AtomicBool,
    /// Rings the loopback port, once the thread has one.
    bell: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Shared {
    fn kick(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            if let Some(ring) = self.bell.get() {
                ring();
            }
        }
    }

    fn has_work(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || !lock(&self.events).is_empty()
            || !lock(&self.ready).is_empty()
    }
}

/// One attached guest.
struct Guest<M: ForeignMapper, E: EventChannels> {
    /// The server end of the guest's page; it owns the mapping and keeps
    /// our own indices (`req_cons`, `rsp_prod`) privately, so a guest that
    /// rewrites them is caught ([`XsRing::own_indices_intact`]).
    ring: XsRing<Mapping<M>>,
    chan: Channel<E>,
    conn: Connection,
    dec: Decoder,
    /// At most one message staged outside the connection's queue: the
    /// queue holds the backlog, where the daemon's byte cap applies (a
    /// guest that never reads its ring loses watch events, the daemon
    /// does not grow).
    out: Backlog,
}

/// How a guest's turn ended.
enum Turn {
    /// Bytes moved (the guest was notified).
    Progress,
    Idle,
    /// The guest goes; with an error code for its page, if it broke the
    /// protocol.
    Gone(Option<u32>),
}

impl<M: ForeignMapper, E: EventChannels> Guest<M, E> {
    fn attach(
        daemon: &Daemon,
        importer: &Importer<M>,
        evt: &Arc<E>,
        shared: &Arc<Shared>,
        domid: DomId,
        port: Port,
    ) -> Result<Self, AttachError> {
        let mapping = importer
            .map_rw(domid, &[GrantRef(GNTTAB_RESERVED_XENSTORE)])
            .map_err(|e| AttachError::Map(domid, e))?;
        let ring = XsRing::new(mapping, End::Server).map_err(|e| AttachError::Ring(domid, e))?;
        ring.set_server_features(XENSTORE_SERVER_FEATURE_ERROR);
        let chan = Channel::bind(evt, domid, port).map_err(|e| AttachError::Event(domid, e))?;
        let weak = Arc::downgrade(shared);
        let conn = daemon.connect_with(domid, move |_| {
            Some(Box::new(move || {
                if let Some(s) = weak.upgrade() {
                    lock(&s.ready).push(domid.0);
                    s.kick();
                }
            }))
        });
        Ok(Guest {
            ring,
            chan,
            conn,
            dec: Decoder::new(),
            out: Backlog::default(),
        })
    }

    /// Moves bytes both ways once: takes requests while no replies wait
    /// for ring space, then sends what is queued until the ring is full.
    fn turn(&mut self, daemon: &Daemon, buf: &mut [u8]) -> Turn {
        let Guest {
            ring,
            chan,
            conn,
            dec,
            out,
        } = self;
        let r = if ring.own_indices_intact() {
            move_bytes(daemon, conn, dec, out, ring, buf)
        } else {
            Turn::Gone(Some(XENSTORE_ERROR_RINGIDX))
        };
        match r {
            Turn::Gone(Some(code)) => {
                ring.set_error(code);
                let _ = chan.notify();
                Turn::Gone(Some(code))
            }
            Turn::Progress => {
                let _ = chan.notify();
                Turn::Progress
            }
            other => other,
        }
    }
}

fn move_bytes<R: xenshare::mem::SharedMemory>(
    daemon: &Daemon,
    conn: &Connection,
    dec: &mut Decoder,
    out: &mut Backlog,
    ring: &mut XsRing<R>,
    buf: &mut [u8],
) -> Turn {
    let mut progress = false;
    // Requests are only taken while no replies are pending: a guest that
    // does not read its replies stops being served, not the daemon.
    if out.is_empty() {
        match ring.read_some(buf) {
            Ok(0) => {}
            Ok(n) => {
                dec.push(&buf[..n]);
                progress = true;
            }
            Err(_) => return Turn::Gone(Some(XENSTORE_ERROR_RINGIDX)),
        }
        if daemon.deliver_decoded(conn.id, dec).is_err() {
            return Turn::Gone(Some(XENSTORE_ERROR_PROTO));
        }
    }
    loop {
        if out.is_empty() {
            match conn.queue.pop(Some(Duration::ZERO)) {
                Ok(Some(m)) => {
                    if out.push(&m).is_err() {
                        return Turn::Gone(None);
                    }
                }
                Ok(None) => break,
                // Released or disconnected by the daemon.
                Err(_) => return Turn::Gone(None),
            }
        }
        match out.flush(ring) {
            Ok(true) => progress = true,
            Ok(false) => break,
            Err(_) => return Turn::Gone(Some(XENSTORE_ERROR_RINGIDX)),
        }
        if !out.is_empty() {
            break;
        }
    }
    if progress {
        Turn::Progress
    } else {
        Turn::Idle
    }
}

/// The ring thread's state.
struct Loop<M: ForeignMapper, E: EventChannels> {
    shared: Arc<Shared>,
    daemon: Daemon,
    importer: Importer<M>,
    evt: Option<Arc<E>>,
    /// The loopback port pair ringing this thread, if the platform has it.
    bell: Option<(Arc<Channel<E>>, Channel<E>)>,
    guests: HashMap<u16, Guest<M, E>>,
    /// Local port -> guest.
    ports: HashMap<u32, u16>,
    buf: [u8; 1024],
}

impl<M: ForeignMapper, E: EventChannels> Loop<M, E> {
    /// Opens the event channel handle (and the loopback port on it) if
    /// not yet open.
    fn open(&mut self, open_evt: &dyn Fn() -> Option<Arc<E>>) -> Option<Arc<E>> {
        if self.evt.is_none() {
            let evt = open_evt()?;
            // The receiving end, then a port bound to it from this same
            // domain: notifying the second raises the first on our handle.
            let rx = Channel::alloc_unbound(&evt, DomId::SELF).ok();
            let tx = rx
                .as_ref()
                .and_then(|rx| Channel::bind(&evt, DomId::SELF, rx.port()).ok());
            if let (Some(rx), Some(tx)) = (rx, tx) {
                let tx = Arc::new(tx);
                let ring = tx.clone();
                let _ = self.shared.bell.set(Box::new(move || {
                    let _ = ring.notify();
                }));
                self.bell = Some((tx, rx));
            }
            self.evt = Some(evt);
        }
        self.evt.clone()
    }

    fn remove(&mut self, domid: u16) {
        if let Some(g) = self.guests.remove(&domid) {
            self.ports.remove(&g.chan.port().0);
            self.daemon.disconnect(g.conn.id);
            lock(&self.shared.attached).remove(&domid);
        }
    }

    fn domain_events(
        &mut self,
        open_evt: &dyn Fn() -> Option<Arc<E>>,
        on_error: &dyn Fn(AttachError),
    ) {
        let events = std::mem::take(&mut *lock(&self.shared.events));
        for ev in events {
            match ev {
                DomainEvent::Introduced { domid, port, .. } => {
                    // A re-introduced guest starts over.
                    self.remove(domid.0);
                    let Some(evt) = self.open(open_evt) else {
                        continue;
                    };
                    match Guest::attach(
                        &self.daemon,
                        &self.importer,
                        &evt,
                        &self.shared,
                        domid,
                        Port(port),
                    ) {
                        Ok(g) => {
                            self.ports.insert(g.chan.port().0, domid.0);
                            self.guests.insert(domid.0, g);
                            lock(&self.shared.attached).insert(domid.0);
                            // Requests may be waiting already.
                            lock(&self.shared.ready).push(domid.0);
                        }
                        Err(e) => on_error(e),
                    }
                }
                DomainEvent::Released(domid) => self.remove(domid.0),
            }
        }
    }

    /// Turns for `domid` while it makes progress (up to [`TURNS`]); true
    /// if it may have more to do.
    fn serve(&mut self, domid: u16) -> bool {
        let Some(g) = self.guests.get_mut(&domid) else {
            return false;
        };
        for _ in 0..TURNS {
            match g.turn(&self.daemon, &mut self.buf) {
                Turn::Progress => continue,
                Turn::Idle => return false,
                Turn::Gone(_) => {
                    // The turn has set the page's error already.
                    self.remove(domid);
                    return false;
                }
            }
        }
        true
    }

    fn run(mut self, open_evt: &dyn Fn() -> Option<Arc<E>>, on_error: &dyn Fn(AttachError)) {
        let mut again: Vec<u16> = Vec::new();
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            self.domain_events(open_evt, on_error);
            let mut ready = std::mem::take(&mut *lock(&self.shared.ready));
            ready.append(&mut again);
            ready.sort_unstable();
            ready.dedup();
            for d in ready {
                if self.serve(d) {
                    again.push(d);
                }
            }
            let Some(evt) = self.evt.clone() else {
                // No handle yet: only domain events can bring work.
                self.shared.asleep.store(true, Ordering::SeqCst);
                if !self.shared.has_work() {
                    std::thread::sleep(IDLE_WAIT);
                }
                self.shared.asleep.store(false, Ordering::SeqCst);
                continue;
            };
            // Without a bell, guests with output waiting are looked at
            // every IDLE_WAIT; with one, whoever queues output rings it.
            let timeout = if !again.is_empty() {
                Some(Duration::ZERO)
            } else if self.bell.is_some() {
                None
            } else {
                again.extend(
                    self.guests
                        .iter()
                        .filter(|(_, g)| !g.out.is_empty() || !g.conn.queue.is_empty())
                        .map(|(d, _)| *d),
                );
                Some(IDLE_WAIT)
            };
            self.shared.asleep.store(true, Ordering::SeqCst);
            let timeout = if self.shared.has_work() {
                Some(Duration::ZERO)
            } else {
                timeout
            };
            let first = evt.wait(timeout);
            self.shared.asleep.store(false, Ordering::SeqCst);
            let mut port = match first {
                Ok(p) => p,
                Err(_) => {
                    std::thread::sleep(IDLE_WAIT);
                    continue;
                }
            };
            while let Some(p) = port {
                if let Some(d) = self.ports.get(&p.0) {
                    again.push(*d);
                }
                let _ = evt.unmask(p);
                port = evt.poll().ok().flatten();
            }
        }
        let all: Vec<u16> = self.guests.keys().copied().collect();
        for d in all {
            self.remove(d);
        }
    }
}

/// Serves every introduced guest over its shared ring, using this
/// (privileged) domain's importer and event channels, from one thread.
pub struct RingServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RingServer {
    /// Starts following `daemon`'s introduce / release events. `open_evt`
    /// opens the event channel handle the thread waits on (once; again
    /// at the next introduction if it failed). Failures to attach are
    /// reported through `on_error`.
    pub fn start<M, E>(
        daemon: &Daemon,
        importer: Importer<M>,
        open_evt: impl Fn() -> Option<Arc<E>> + Send + 'static,
        on_error: impl Fn(AttachError) + Send + 'static,
    ) -> RingServer
    where
        M: ForeignMapper,
        E: EventChannels,
    {
        let shared = Arc::new(Shared::default());
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        // The hook runs under the daemon lock: it only hands over.
        daemon.on_domain_event(move |ev| {
            if let Some(s) = weak.upgrade() {
                lock(&s.events).push(ev);
                s.kick();
            }
        });
        let state = Loop {
            shared: shared.clone(),
            daemon: daemon.clone(),
            importer,
            evt: None,
            bell: None,
            guests: HashMap::new(),
            ports: HashMap::new(),
            buf: [0; 1024],
        };
        let thread = std::thread::Builder::new()
            .name("xenstored-rings".into())
            .spawn(move || state.run(&open_evt, &on_error))
            .ok();
        RingServer { shared, thread }
    }

    /// Guests currently attached.
    pub fn attached(&self) -> Vec<DomId> {
        lock(&self.shared.attached)
            .iter()
            .map(|d| DomId(*d))
            .collect()
    }
}

impl Drop for RingServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.asleep.store(true, Ordering::SeqCst);
        self.shared.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
