//! Threads: a back end bridged to a host, and a complete guest.
//!
//! Each thread does its own XenBus handshake ([`Netback::connect`],
//! [`Netfront::connect`]), which waits for the peer, so the two can be
//! started in either order. Both stop on a flag; the guest then closes its
//! netfront (revoking every grant) and the back end, seeing the front end
//! close, unmaps and closes too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use xenshare::grant::{Exporter, Importer};
use xenshare::net::back::RunExit;
use xenshare::net::xenbus::DEVTYPE;
use xenshare::net::{
    CloseReport, Mac, NetError, Netback, NetbackStats, Netfront, NetfrontConfig, NetfrontStats,
};
use xenshare::platform::{EventChannels, ForeignMapper, GrantBackend};
use xenshare::store::client::{Client, Transport};
use xenshare::store::xenbus::backend_path;
use xenshare::DomId;

use super::guest::{Guest, GuestConfig};
use super::host::HostFrames;

/// How long a closing front end waits for the back end to let go.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a back-end thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendExit {
    /// Why it stopped serving.
    pub reason: RunExit,
    /// Its counters.
    pub stats: NetbackStats,
}

/// A running back-end thread.
#[derive(Debug)]
pub struct BackendThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<BackendExit, NetError>>,
}

impl BackendThread {
    /// Whether the thread has ended (front end closed, or an error).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Asks the thread to stop without waiting for it (it notices within
    /// a poll interval once serving; a handshake still waiting for the
    /// front end runs to its timeout first).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops the thread (if still serving) and returns how it ended.
    pub fn stop(self) -> Result<BackendExit, NetError> {
        self.stop.store(true, Ordering::Release);
        self.join()
    }

    /// Waits for the thread to end by itself (the front end closing).
    pub fn join(self) -> Result<BackendExit, NetError> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(NetError::Broken("back-end thread panicked".into())))
    }
}

/// Starts a back end for device `devid` of `frontend`, bridged to `io`:
/// it handshakes (waiting up to `timeout` for the front end), serves until
/// stopped or the front end closes, then unmaps and goes Closed. A front
/// end that breaks the protocol ends the thread with that error (after the
/// back end disconnected).
pub fn spawn_backend<M, E, F, T>(
    importer: Importer<M>,
    evt: Arc<E>,
    xs: Client<T>,
    frontend: DomId,
    devid: u32,
    io: F,
    timeout: Duration,
) -> BackendThread
where
    M: ForeignMapper,
    E: EventChannels,
    F: HostFrames,
    T: Transport + Send + 'static,
{
    let back_dir = backend_path(importer.domid(), DEVTYPE, frontend, devid);
    spawn_backend_at(importer, evt, xs, back_dir, frontend, io, timeout)
}

/// [`spawn_backend`] for the back-end directory `back_dir` (of any type,
/// such as the private one of [`super::vif::attach_vif`]).
pub fn spawn_backend_at<M, E, F, T>(
    importer: Importer<M>,
    evt: Arc<E>,
    mut xs: Client<T>,
    back_dir: String,
    frontend: DomId,
    mut io: F,
    timeout: Duration,
) -> BackendThread
where
    M: ForeignMapper,
    E: EventChannels,
    F: HostFrames,
    T: Transport + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut nb = Netback::connect_at(&importer, &evt, &mut xs, &back_dir, frontend, timeout)?;
        let bell = nb.doorbell();
        io.set_waker(Arc::new(move || {
            // Ringing fails only once the back end is gone.
            let _ = bell.ring();
        }));
        let r = nb.run(&mut io, &mut xs, &s);
        let stats = nb.stats();
        let closed = nb.disconnect(&mut xs);
        let reason = r?;
        closed?;
        Ok(BackendExit { reason, stats })
    });
    BackendThread { stop, handle }
}

/// How a guest thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestExit {
    /// The netfront's counters.
    pub stats: NetfrontStats,
    /// What closing did with the grants.
    pub close: CloseReport,
    /// The error that broke the netfront, if any.
    pub error: Option<NetError>,
}

/// A running guest.
#[derive(Debug)]
pub struct GuestThread {
    stop: Arc<AtomicBool>,
    ready: mpsc::Receiver<Mac>,
    handle: JoinHandle<Result<GuestExit, NetError>>,
}

impl GuestThread {
    /// Waits until the guest's interface is up; returns its MAC. `None` if
    /// it did not come up within `timeout` (see [`GuestThread::stop`] for
    /// the error).
    pub fn wait_ready(&self, timeout: Duration) -> Option<Mac> {
        self.ready.recv_timeout(timeout).ok()
    }

    /// Stops the guest, closes its netfront and returns how it ended.
    pub fn stop(self) -> Result<GuestExit, NetError> {
        self.stop.store(true, Ordering::Release);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(NetError::Broken("guest thread panicked".into())))
    }
}

/// Starts a guest on device `devid` of the exporter's domain: netfront
/// handshake (waiting up to `timeout` for the back end), then smoltcp with
/// `cfg` until stopped; then the netfront is closed.
pub fn spawn_guest<B, E, T>(
    exporter: Exporter<B>,
    evt: Arc<E>,
    mut xs: Client<T>,
    devid: u32,
    nf_cfg: NetfrontConfig,
    cfg: GuestConfig,
    timeout: Duration,
) -> GuestThread
where
    B: GrantBackend,
    E: EventChannels,
    T: Transport + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (tx, ready) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let nf = Netfront::connect(&exporter, &evt, &mut xs, devid, nf_cfg, timeout)?;
        let mac = nf.mac();
        let mut guest = Guest::new(nf, cfg);
        // The receiver may have given up waiting; the guest runs anyway.
        let _ = tx.send(mac);
        let r = guest.run(&s);
        let nf = guest.into_netfront();
        let stats = nf.stats();
        let close = nf.close(&mut xs, CLOSE_WAIT)?;
        Ok(GuestExit {
            stats,
            close,
            error: r.err(),
        })
    });
    GuestThread {
        stop,
        ready,
        handle,
    }
}
