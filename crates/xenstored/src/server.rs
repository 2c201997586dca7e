//! The Unix socket transport. One reader and one writer thread per
//! connection. By default every connection is dom0, as with C xenstored;
//! [`serve_as`] binds a socket to another domain instead (a domain's own
//! socket in the multi-process emulator, standing in for its shared ring)
//! and can restrict who may connect.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use xenshare::store::wire::Decoder;
use xenshare::DomId;

use crate::config::Config;
use crate::daemon::{Connection, Daemon};

/// Who a socket speaks for and who may connect to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Every connection on the socket is this domain.
    pub domid: DomId,
    /// File mode of the socket (e.g. `0o600`: only the owner may connect).
    pub mode: u32,
    /// If set, connections from other users (by `SO_PEERCRED`) are closed
    /// at once; root is always allowed.
    pub uid: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            domid: DomId::DOM0,
            mode: 0o600,
            uid: None,
        }
    }
}

/// Live connections: a stream handle (to shut it down) and its threads.
type Streams = Arc<Mutex<Vec<(UnixStream, Vec<JoinHandle<()>>)>>>;

/// A socket server running in the background; it stops (and removes its
/// socket file) when dropped.
pub struct ServerHandle {
    daemon: Daemon,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// The listening socket, to wake the accept loop by shutting it down
    /// (connecting to the path would hang if the file was removed).
    listener: Option<std::os::fd::OwnedFd>,
    streams: Streams,
}

impl ServerHandle {
    /// The daemon behind the socket (to attach in-process connections).
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks until the server stops (it only stops when dropped or on an
    /// accept error).
    pub fn join(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(): a shut-down listener fails it at once.
        if let Some(l) = &self.listener {
            let _ = rustix::net::shutdown(l, rustix::net::Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, threads) in conns {
            let _ = s.shutdown(Shutdown::Both);
            for t in threads {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    // A stale socket from an earlier run is replaced, anything else is not.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Starts a new daemon serving `path` in the background.
pub fn spawn(config: Config, path: impl AsRef<Path>) -> io::Result<ServerHandle> {
    serve(Daemon::new(config), path)
}

/// Serves an existing daemon on `path` in the background (dom0, the
/// socket's mode left to the umask).
pub fn serve(daemon: Daemon, path: impl AsRef<Path>) -> io::Result<ServerHandle> {
    serve_inner(daemon, path.as_ref(), None)
}

/// Serves `daemon` on `path` for the domain and users in `access`.
pub fn serve_as(
    daemon: Daemon,
    path: impl AsRef<Path>,
    access: SocketAccess,
) -> io::Result<ServerHandle> {
    serve_inner(daemon, path.as_ref(), Some(access))
}

fn serve_inner(
    daemon: Daemon,
    path: &Path,
    access: Option<SocketAccess>,
) -> io::Result<ServerHandle> {
    let path = path.to_path_buf();
    let listener = bind(&path)?;
    if let Some(a) = access {
        // Connections are checked by uid too, so the moment between bind
        // and chmod grants nothing.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(a.mode))?;
    }
    let access = access.unwrap_or(SocketAccess {
        mode: 0,
        ..SocketAccess::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Streams = Arc::default();
    let wake = std::os::fd::OwnedFd::from(listener.try_clone()?);
    let accept = {
        let (daemon, stop, streams) = (daemon.clone(), stop.clone(), streams.clone());
        thread::Builder::new()
            .name("xenstored-accept".into())
            .spawn(move || accept_loop(listener, daemon, access, stop, streams))?
    };
    Ok(ServerHandle {
        daemon,
        path,
        stop,
        accept: Some(accept),
        listener: Some(wake),
        streams,
    })
}

/// Runs a daemon on `path` in the foreground, until the process ends.
pub fn run(config: Config, path: impl AsRef<Path>) -> io::Result<()> {
    spawn(config, path)?.join();
    Ok(())
}

/// True if the peer of `s` is `uid` or root.
fn peer_allowed(s: &UnixStream, uid: u32) -> bool {
    rustix::net::sockopt::socket_peercred(s)
        .map(|c| {
            let peer = c.uid.as_raw();
            peer == uid || peer == 0
        })
        .unwrap_or(false)
}

fn accept_loop(
    listener: UnixListener,
    daemon: Daemon,
    access: SocketAccess,
    stop: Arc<AtomicBool>,
    streams: Streams,
) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Running out of descriptors is temporary; keep serving.
            Err(_) => {
                thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        if access.uid.is_some_and(|u| !peer_allowed(&stream, u)) {
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        if let Ok(threads) = start_connection(&daemon, &stream, access.domid) {
            let mut all = streams.lock().unwrap_or_else(|e| e.into_inner());
            // Forget connections that have finished.
            all.retain(|(_, t)| t.iter().any(|h| !h.is_finished()));
            all.push((stream, threads));
        }
    }
}

fn start_connection(
    daemon: &Daemon,
    stream: &UnixStream,
    domid: DomId,
) -> io::Result<Vec<JoinHandle<()>>> {
    let conn = daemon.connect(domid);
    let rd = stream.try_clone()?;
    let wr = Arc::new(Mutex::new(stream.try_clone()?));
    let (d, c, w) = (daemon.clone(), conn.clone(), wr.clone());
    let reader = thread::Builder::new()
        .name(format!("xenstored-rd-{}", conn.id.0))
        .spawn(move || reader(d, c, rd, w));
    let reader = match reader {
        Ok(h) => h,
        Err(e) => {
            daemon.disconnect(conn.id);
            return Err(e);
        }
    };
    let writer = thread::Builder::new()
        .name(format!("xenstored-wr-{}", conn.id.0))
        .spawn(move || writer(conn, wr));
    match writer {
        Ok(w) => Ok(vec![reader, w]),
        Err(e) => {
            let _ = stream.shutdown(Shutdown::Both);
            Err(e)
        }
    }
}

/// Sends everything queued for `conn`, in order. Whoever holds the stream
/// lock drains the queue, so replies and watch events never interleave out
/// of order whichever thread sends them.
fn flush(conn: &Connection, wr: &Mutex<UnixStream>, out: &mut Vec<u8>) -> bool {
    let mut s = wr.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(msgs) = conn.queue.take_all() else {
        return false;
    };
    if msgs.is_empty() {
        return true;
    }
    out.clear();
    for m in msgs {
        if m.encode_into(out).is_err() {
            return false;
        }
    }
    s.write_all(out).is_ok()
}

fn reader(daemon: Daemon, conn: Connection, mut s: UnixStream, wr: Arc<Mutex<UnixStream>>) {
    let limit = if conn.domid == DomId::DOM0 {
        daemon.config().dom0_outstanding
    } else {
        daemon.config().max_outstanding
    };
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::with_capacity(8192);
    loop {
        if conn.queue.wait_below(limit.max(1)).is_err() {
            break;
        }
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        conn.queue.set_busy(true);
        // Lost framing (length over 4096): drop the client.
        if daemon.deliver_bytes(conn.id, &mut dec, &buf[..n]).is_err() {
            break;
        }
        // Replies go out from this thread: no hand-off to the writer (two
        // context switches saved per request).
        let sent = flush(&conn, &wr, &mut out);
        conn.queue.set_busy(false);
        if !sent {
            break;
        }
    }
    daemon.disconnect(conn.id);
    let _ = s.shutdown(Shutdown::Both);
}

/// Sends what arrives while the reader is idle: watch events caused by
/// other connections.
fn writer(conn: Connection, wr: Arc<Mutex<UnixStream>>) {
    let mut out = Vec::with_capacity(8192);
    while conn.queue.wait_nonempty().is_ok() {
        if !flush(&conn, &wr, &mut out) {
            break;
        }
    }
    conn.queue.close();
    let s = wr.lock().unwrap_or_else(|e| e.into_inner());
    let _ = s.shutdown(Shutdown::Both);
}
