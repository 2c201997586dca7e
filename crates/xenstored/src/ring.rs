//! Guests' shared-ring connections: the server end of each guest's
//! `xenstore_domain_interface` page, as C xenstored serves it.
//!
//! On `XS_INTRODUCE` the daemon reports the domain; [`RingServer`] then maps
//! the domain's page through reserved grant ref 1
//! (`GNTTAB_RESERVED_XENSTORE`, which the toolstack fills), binds the
//! domain's event channel port, and runs one thread per guest moving bytes
//! between the ring and the daemon. A guest that corrupts its ring indices
//! or sends a malformed message has `error` set in its page (the server
//! advertises `XENSTORE_SERVER_FEATURE_ERROR`) and is disconnected; nobody
//! else notices. `XS_RELEASE` (or dropping the server) stops the thread and
//! unmaps the page.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use xenshare::event::Channel;
use xenshare::grant::Importer;
use xenshare::platform::{EventChannels, ForeignMapper};
use xenshare::store::ring::{Backlog, End, XsRing};
use xenshare::store::wire::Decoder;
use xenshare::{DomId, GrantRef, Port};
use xenshare_abi::grant::GNTTAB_RESERVED_XENSTORE;
use xenshare_abi::xs::{
    XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_SERVER_FEATURE_ERROR,
};

use crate::daemon::{Daemon, DomainEvent};

/// How long an idle guest thread sleeps between looks at its outgoing
/// queue (replies are sent at once; this bounds watch-event latency).
const IDLE_WAIT: Duration = Duration::from_millis(2);

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

/// One guest's connection thread.
pub struct GuestLink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    domid: DomId,
}

impl GuestLink {
    /// Maps `domid`'s xenstore page, binds `port` and starts serving.
    pub fn attach<M: ForeignMapper, E: EventChannels>(
        daemon: &Daemon,
        importer: &Importer<M>,
        evt: &Arc<E>,
        domid: DomId,
        port: Port,
    ) -> Result<GuestLink, AttachError> {
        let mapping = importer
            .map_rw(domid, &[GrantRef(GNTTAB_RESERVED_XENSTORE)])
            .map_err(|e| AttachError::Map(domid, e))?;
        let chan = Channel::bind(evt, domid, port).map_err(|e| AttachError::Event(domid, e))?;
        // Check the page before the thread owns it.
        XsRing::new(mapping.mem(), End::Server).map_err(|e| AttachError::Ring(domid, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conn = daemon.connect(domid);
        let (d, s) = (daemon.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("xenstored-d{}", domid.0))
            .spawn(move || {
                let Ok(mut ring) = XsRing::new(mapping.mem(), End::Server) else {
                    d.disconnect(conn.id);
                    return;
                };
                ring.set_server_features(XENSTORE_SERVER_FEATURE_ERROR);
                serve(&d, &conn, &mut ring, &chan, &s);
                d.disconnect(conn.id);
                drop(mapping);
            })
            .map_err(|e| {
                AttachError::Event(
                    domid,
                    xenshare::event::EventError::Os(e.raw_os_error().unwrap_or(0)),
                )
            })?;
        Ok(GuestLink {
            stop,
            thread: Some(thread),
            domid,
        })
    }

    /// The guest.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// True while the guest's thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for GuestLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve<E: EventChannels>(
    d: &Daemon,
    conn: &crate::daemon::Connection,
    ring: &mut XsRing<'_>,
    chan: &Channel<E>,
    stop: &AtomicBool,
) {
    let mut dec = Decoder::new();
    let mut out = Backlog::default();
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Acquire) {
        let mut progress = false;
        // Requests are only taken while no replies are pending: a guest that
        // does not read its replies stops being served, not the daemon.
        if out.is_empty() {
            match ring.read_some(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    dec.push(&buf[..n]);
                    progress = true;
                }
                Err(_) => {
                    ring.set_error(XENSTORE_ERROR_RINGIDX);
                    let _ = chan.notify();
                    return;
                }
            }
            loop {
                match dec.next_message() {
                    Ok(Some(m)) => d.deliver(conn.id, m),
                    Ok(None) => break,
                    Err(_) => {
                        ring.set_error(XENSTORE_ERROR_PROTO);
                        let _ = chan.notify();
                        return;
                    }
                }
            }
        }
        // At most one message is staged outside the connection's queue: the
        // queue holds the backlog, where the daemon's byte cap applies (a
        // guest that never reads its ring loses watch events, the daemon
        // does not grow).
        loop {
            if out.is_empty() {
                match conn.queue.pop(Some(Duration::ZERO)) {
                    Ok(Some(m)) => {
                        if out.push(&m).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    // Released or disconnected by the daemon.
                    Err(_) => return,
                }
            }
            match out.flush(ring) {
                Ok(true) => progress = true,
                Ok(false) => break,
                Err(_) => {
                    ring.set_error(XENSTORE_ERROR_RINGIDX);
                    let _ = chan.notify();
                    return;
                }
            }
            if !out.is_empty() {
                break;
            }
        }
        if progress {
            let _ = chan.notify();
            continue;
        }
        match chan.wait(Some(IDLE_WAIT)) {
            Ok(Some(p)) => {
                let _ = chan.handle().unmask(p);
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// Serves every introduced guest over its shared ring, using this
/// (privileged) domain's importer and event channels.
pub struct RingServer {
    links: Arc<Mutex<HashMap<u16, GuestLink>>>,
    manager: Option<JoinHandle<()>>,
    tx: Option<mpsc::Sender<DomainEvent>>,
}

impl RingServer {
    /// Starts following `daemon`'s introduce / release events. `open_evt`
    /// opens an event channel handle for each guest (one handle per guest,
    /// so each guest thread waits on its own events only). Failures to
    /// attach are reported through `on_error`.
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
        let (tx, rx) = mpsc::channel::<DomainEvent>();
        let hook_tx = Mutex::new(tx.clone());
        // The hook runs under the daemon lock: it only forwards.
        daemon.on_domain_event(move |ev| {
            if let Ok(t) = hook_tx.lock() {
                let _ = t.send(ev);
            }
        });
        let links: Arc<Mutex<HashMap<u16, GuestLink>>> = Arc::default();
        let (l, d) = (links.clone(), daemon.clone());
        let manager = std::thread::Builder::new()
            .name("xenstored-rings".into())
            .spawn(move || {
                for ev in rx {
                    match ev {
                        DomainEvent::Introduced { domid, port, .. } => {
                            let Some(evt) = open_evt() else {
                                continue;
                            };
                            match GuestLink::attach(&d, &importer, &evt, domid, Port(port)) {
                                Ok(link) => {
                                    l.lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .insert(domid.0, link);
                                }
                                Err(e) => on_error(e),
                            }
                        }
                        DomainEvent::Released(domid) => {
                            let link = l.lock().unwrap_or_else(|e| e.into_inner()).remove(&domid.0);
                            drop(link);
                        }
                    }
                }
            })
            .ok();
        RingServer {
            links,
            manager,
            tx: Some(tx),
        }
    }

    /// Guests currently attached and running.
    pub fn attached(&self) -> Vec<DomId> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<DomId> = links
            .values()
            .filter(|l| l.is_running())
            .map(|l| l.domid())
            .collect();
        v.sort();
        v
    }
}

impl Drop for RingServer {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // The manager ends when every sender (ours and the daemon hook's) is
        // gone; the hook lives as long as the daemon, so do not wait for it.
        drop(self.manager.take());
    }
}
