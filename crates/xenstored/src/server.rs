//! The Unix socket transport. Every connection on it is dom0, as with C
//! xenstored. One reader and one writer thread per connection.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use xenshare::store::wire::Decoder;
use xenshare::DomId;

use crate::config::Config;
use crate::daemon::{Connection, Daemon};

/// Live connections: a stream handle (to shut it down) and its threads.
type Streams = Arc<Mutex<Vec<(UnixStream, Vec<JoinHandle<()>>)>>>;

/// A socket server running in the background; it stops (and removes its
/// socket file) when dropped.
pub struct ServerHandle {
    daemon: Daemon,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
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
        // Wake the blocking accept().
        let _ = UnixStream::connect(&self.path);
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

/// Serves an existing daemon on `path` in the background.
pub fn serve(daemon: Daemon, path: impl AsRef<Path>) -> io::Result<ServerHandle> {
    let path = path.as_ref().to_path_buf();
    let listener = bind(&path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Streams = Arc::default();
    let accept = {
        let (daemon, stop, streams) = (daemon.clone(), stop.clone(), streams.clone());
        thread::Builder::new()
            .name("xenstored-accept".into())
            .spawn(move || accept_loop(listener, daemon, stop, streams))?
    };
    Ok(ServerHandle {
        daemon,
        path,
        stop,
        accept: Some(accept),
        streams,
    })
}

/// Runs a daemon on `path` in the foreground, until the process ends.
pub fn run(config: Config, path: impl AsRef<Path>) -> io::Result<()> {
    spawn(config, path)?.join();
    Ok(())
}

fn accept_loop(listener: UnixListener, daemon: Daemon, stop: Arc<AtomicBool>, streams: Streams) {
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
        if let Ok(threads) = start_connection(&daemon, &stream) {
            let mut all = streams.lock().unwrap_or_else(|e| e.into_inner());
            // Forget connections that have finished.
            all.retain(|(_, t)| t.iter().any(|h| !h.is_finished()));
            all.push((stream, threads));
        }
    }
}

fn start_connection(daemon: &Daemon, stream: &UnixStream) -> io::Result<Vec<JoinHandle<()>>> {
    let conn = daemon.connect(DomId::DOM0);
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
