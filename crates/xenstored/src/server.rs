//! The Unix socket transport. One event loop per daemon (a single thread
//! waiting in `epoll`) serves every socket of that daemon and all their
//! connections, with non-blocking sockets, as C xenstored and oxenstored
//! do: no thread per connection. By default every connection is dom0, as
//! with C xenstored; [`serve_as`] binds a socket to another domain instead
//! (a domain's own socket in the multi-process emulator, standing in for
//! its shared ring) and can restrict who may connect.
//!
//! Fairness: each turn of the loop reads at most [`READ_CHUNK`] bytes from
//! a connection, so a client that floods requests gets no more than its
//! turn. A connection with [`Config::max_outstanding`] replies queued (or
//! [`Config::dom0_outstanding`] for dom0) is not read from until it takes
//! them, and output that the socket cannot take stays in the connection's
//! [`OutQueue`](crate::OutQueue), where the byte cap applies: a client that
//! never reads loses watch events and, past the reply headroom, its
//! connection, while everyone else is served.
//!
//! Cost per request: one `recv` with `MSG_PEEK`, one `send` of every reply
//! queued for the connection, one `recv` taking the handled bytes out after
//! the replies went (see `Loop::consume`), and a share of one `epoll_wait`;
//! no `epoll_ctl` unless a connection hits back-pressure, no eventfd write
//! for its own replies. After a turn with work, the loop may poll for
//! [`Config::poll_budget`] before it sleeps (off by default: with several
//! clients on two CPUs the poller takes CPU time its clients need).
//!
//! [`Config::poll_budget`]: crate::Config::poll_budget
//! [`Config::max_outstanding`]: crate::Config::max_outstanding
//! [`Config::dom0_outstanding`]: crate::Config::dom0_outstanding

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{epoll, eventfd, EventfdFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use xenshare::store::wire::Decoder;
use xenshare::DomId;

use crate::config::Config;
use crate::daemon::{Connection, Daemon};
use crate::idmap::IdMap;

/// Bytes read from one connection per turn of the loop.
pub const READ_CHUNK: usize = 16 * 1024;
/// Connections accepted from one listener per turn of the loop.
const ACCEPT_BATCH: usize = 64;
/// How long a listener rests after an accept error other than "nothing
/// pending" (out of descriptors is temporary: keep serving the others).
const ACCEPT_REST: Duration = Duration::from_millis(10);
/// Epoll key of the wake-up eventfd.
const WAKE: u64 = u64::MAX;
/// Epoll keys of listeners have this bit set (connection ids never do).
const LISTENER: u64 = 1 << 63;
/// Nothing is being handled (connection ids start at 1).
const NONE: u64 = 0;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests from socket handles to the loop.
enum Cmd {
    Listen {
        key: u64,
        listener: UnixListener,
        access: SocketAccess,
        /// Dropped when the listener is gone (wakes [`ServerHandle::join`]).
        gone: mpsc::Sender<()>,
    },
    Unlisten(u64),
}

#[derive(Default)]
struct Cmds {
    list: Vec<Cmd>,
    /// The loop has ended: nothing more is taken.
    dead: bool,
    /// Asked to end.
    stop: bool,
}

/// What the loop shares with other threads.
struct Shared {
    epoll: OwnedFd,
    /// Written to wake the loop from `epoll_wait`.
    wake: OwnedFd,
    /// The loop is in (or about to enter) `epoll_wait`: whoever gives it
    /// work must write `wake`.
    asleep: AtomicBool,
    /// Connections whose queue got output while idle (watch events
    /// caused by other connections, or the daemon closing them).
    ready: Mutex<Vec<u64>>,
    cmds: Mutex<Cmds>,
    /// The connection whose requests the loop is handling now: its replies
    /// are sent right after, no need to list it as ready.
    current: AtomicU64,
}

impl Shared {
    fn kick(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            // A full counter (never, in practice) still wakes the loop.
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }

    fn mark_ready(&self, id: u64) {
        if self.current.load(Ordering::SeqCst) == id {
            return;
        }
        lock(&self.ready).push(id);
        self.kick();
    }

    /// Hands `c` to the loop; false if the loop has ended.
    fn command(&self, c: Cmd) -> bool {
        let mut g = lock(&self.cmds);
        if g.dead {
            return false;
        }
        g.list.push(c);
        drop(g);
        self.kick();
        true
    }
}

/// The event loop thread of one daemon; it ends when the last socket
/// handle using it is dropped.
pub(crate) struct EventLoop {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_key: AtomicU64,
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        lock(&self.shared.cmds).stop = true;
        self.shared.asleep.store(true, Ordering::SeqCst);
        self.shared.kick();
        if let Some(t) = lock(&self.thread).take() {
            // The last handle may be dropped by the loop thread itself only
            // if a hook dropped it there; never join oneself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl EventLoop {
    /// The loop of `daemon`, started if it has none.
    fn of(daemon: &Daemon) -> io::Result<Arc<EventLoop>> {
        let mut slot = lock(&daemon.event_loop);
        if let Some(l) = slot.upgrade() {
            return Ok(l);
        }
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(WAKE),
            epoll::EventFlags::IN,
        )?;
        let shared = Arc::new(Shared {
            epoll,
            wake,
            asleep: AtomicBool::new(false),
            ready: Mutex::new(Vec::new()),
            cmds: Mutex::new(Cmds::default()),
            current: AtomicU64::new(NONE),
        });
        let state = Loop {
            shared: shared.clone(),
            daemon: daemon.clone(),
            listeners: IdMap::default(),
            clients: IdMap::default(),
            buf: vec![0; READ_CHUNK],
            ready: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("xenstored-loop".into())
            .spawn(move || state.run())?;
        let l = Arc::new(EventLoop {
            shared,
            thread: Mutex::new(Some(thread)),
            next_key: AtomicU64::new(1),
        });
        *slot = Arc::downgrade(&l);
        Ok(l)
    }
}

/// A socket served in the background; it stops (closing its connections
/// and removing its socket file) when dropped.
pub struct ServerHandle {
    daemon: Daemon,
    path: PathBuf,
    event_loop: Arc<EventLoop>,
    key: u64,
    /// Disconnected once the loop has let the listener go.
    gone: mpsc::Receiver<()>,
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

    /// Blocks until the server stops (it only stops when dropped or when
    /// its event loop ends).
    pub fn join(self) {
        let _ = self.gone.recv();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.event_loop.shared.command(Cmd::Unlisten(self.key)) {
            // The loop closes the listener and its connections, then lets
            // go of the sender (or ends, which drops it too).
            let _ = self.gone.recv();
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
    listener.set_nonblocking(true)?;
    let access = access.unwrap_or(SocketAccess {
        mode: 0,
        ..SocketAccess::default()
    });
    let event_loop = EventLoop::of(&daemon)?;
    let key = LISTENER | event_loop.next_key.fetch_add(1, Ordering::Relaxed);
    let (tx, gone) = mpsc::channel();
    let cmd = Cmd::Listen {
        key,
        listener,
        access,
        gone: tx,
    };
    if !event_loop.shared.command(cmd) {
        return Err(io::Error::other("the xenstored event loop has ended"));
    }
    Ok(ServerHandle {
        daemon,
        path,
        event_loop,
        key,
        gone,
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

struct Listener {
    sock: UnixListener,
    access: SocketAccess,
    _gone: mpsc::Sender<()>,
    /// Resting after an accept error, until then (not polled meanwhile).
    rest_until: Option<Instant>,
}

/// One socket connection.
struct Client {
    sock: UnixStream,
    /// The listener it came from.
    listener: u64,
    conn: Connection,
    dec: Decoder,
    /// Encoded output taken from the queue, from `sent` on not yet sent.
    out: Vec<u8>,
    sent: usize,
    /// Replies it may have queued before it is not read from.
    limit: usize,
    /// The events it is registered for.
    flags: epoll::EventFlags,
    /// Bytes already handled (read with `MSG_PEEK`) but still in the
    /// socket: they are taken out only after the replies went, see
    /// [`Loop::consume`].
    peeked: usize,
}

impl Client {
    fn pending(&self) -> bool {
        self.sent < self.out.len()
    }
}

/// Why a connection goes.
struct Gone;

/// The loop thread's state.
struct Loop {
    shared: Arc<Shared>,
    daemon: Daemon,
    listeners: IdMap<u64, Listener>,
    clients: IdMap<u64, Client>,
    buf: Vec<u8>,
    /// Spare list swapped with the shared ready list.
    ready: Vec<u64>,
}

/// Ends the loop's bookkeeping even if it panics: later commands are
/// refused and queued ones dropped (so no handle waits for them).
struct DeadOnExit(Arc<Shared>);

impl Drop for DeadOnExit {
    fn drop(&mut self) {
        let mut g = lock(&self.0.cmds);
        g.dead = true;
        g.list.clear();
    }
}

impl Loop {
    fn run(mut self) {
        let _dead = DeadOnExit(self.shared.clone());
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let mut flush: Vec<u64> = Vec::with_capacity(256);
        let budget = self.daemon.config().poll_budget;
        // Poll instead of sleeping until then (set after a turn with work).
        let mut poll_until: Option<Instant> = None;
        loop {
            if !self.commands() {
                break;
            }
            self.serve_ready();
            let rest = self.wake_rested();
            // Sleep unless work came in since the checks above; whoever
            // gives work after `asleep` is set writes the eventfd.
            self.shared.asleep.store(true, Ordering::SeqCst);
            let busy = !lock(&self.shared.ready).is_empty() || {
                let c = lock(&self.shared.cmds);
                c.stop || !c.list.is_empty()
            };
            let polling = poll_until.is_some_and(|t| Instant::now() < t);
            if !polling {
                poll_until = None;
            }
            let timeout = if busy || polling {
                Some(Duration::ZERO)
            } else {
                rest
            };
            let ts = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
            events.clear();
            let r = epoll::wait(
                &self.shared.epoll,
                rustix::buffer::spare_capacity(&mut events),
                ts.as_ref(),
            );
            self.shared.asleep.store(false, Ordering::SeqCst);
            match r {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                // Cannot happen with valid arguments; do not spin on it.
                Err(_) => std::thread::sleep(ACCEPT_REST),
            }
            // Requests of every ready connection first, then the replies
            // in one burst: each reply wakes its client, which would
            // otherwise pre-empt the loop between connections.
            for ev in &events {
                let (key, flags) = (ev.data.u64(), ev.flags);
                if key == WAKE {
                    let mut b = [0u8; 8];
                    let _ = rustix::io::read(&self.shared.wake, &mut b);
                } else if key & LISTENER != 0 {
                    self.accept(key);
                } else if self.take_requests(key, flags) {
                    flush.push(key);
                }
            }
            if !flush.is_empty() && !budget.is_zero() {
                poll_until = Some(Instant::now() + budget);
            }
            for key in flush.drain(..) {
                self.serve_client(key, epoll::EventFlags::empty());
            }
        }
        let clients: Vec<u64> = self.clients.keys().copied().collect();
        for id in clients {
            self.close(id);
        }
        self.listeners.clear();
    }

    /// Takes the pending commands; false when asked to stop.
    fn commands(&mut self) -> bool {
        let (list, stop) = {
            let mut g = lock(&self.shared.cmds);
            (std::mem::take(&mut g.list), g.stop)
        };
        for c in list {
            match c {
                Cmd::Listen {
                    key,
                    listener,
                    access,
                    gone,
                } => {
                    let added = epoll::add(
                        &self.shared.epoll,
                        &listener,
                        epoll::EventData::new_u64(key),
                        epoll::EventFlags::IN,
                    );
                    if added.is_ok() {
                        self.listeners.insert(
                            key,
                            Listener {
                                sock: listener,
                                access,
                                _gone: gone,
                                rest_until: None,
                            },
                        );
                    }
                }
                Cmd::Unlisten(key) => {
                    if let Some(l) = self.listeners.remove(&key) {
                        let _ = epoll::delete(&self.shared.epoll, &l.sock);
                    }
                    let mine: Vec<u64> = self
                        .clients
                        .iter()
                        .filter(|(_, c)| c.listener == key)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in mine {
                        self.close(id);
                    }
                }
            }
        }
        !stop
    }

    /// Sends what other threads (or other connections' requests) queued.
    fn serve_ready(&mut self) {
        std::mem::swap(&mut self.ready, &mut *lock(&self.shared.ready));
        let mut ready = std::mem::take(&mut self.ready);
        for id in ready.drain(..) {
            self.serve_client(id, epoll::EventFlags::empty());
        }
        self.ready = ready;
    }

    /// Puts rested listeners back; returns how long until the next one is
    /// due (`None`: none resting).
    fn wake_rested(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for (key, l) in &mut self.listeners {
            let Some(t) = l.rest_until else { continue };
            if t <= now {
                l.rest_until = None;
                let _ = epoll::add(
                    &self.shared.epoll,
                    &l.sock,
                    epoll::EventData::new_u64(*key),
                    epoll::EventFlags::IN,
                );
            } else {
                let left = t - now;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        next
    }

    fn accept(&mut self, key: u64) {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get_mut(&key) else {
                return;
            };
            let stream = match l.sock.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(_) => {
                    // Out of descriptors or memory: rest a little rather
                    // than spin on a listener that stays readable.
                    let _ = epoll::delete(&self.shared.epoll, &l.sock);
                    l.rest_until = Some(Instant::now() + ACCEPT_REST);
                    return;
                }
            };
            let access = l.access;
            if access.uid.is_some_and(|u| !peer_allowed(&stream, u)) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            self.add_client(key, stream, access.domid);
        }
    }

    fn add_client(&mut self, listener: u64, sock: UnixStream, domid: DomId) {
        if sock.set_nonblocking(true).is_err() {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        let conn = self.daemon.connect_with(domid, move |id| {
            let key = id.0;
            Some(Box::new(move || {
                if let Some(s) = shared.upgrade() {
                    s.mark_ready(key);
                }
            }))
        });
        let key = conn.id.0;
        let flags = epoll::EventFlags::IN;
        if epoll::add(
            &self.shared.epoll,
            &sock,
            epoll::EventData::new_u64(key),
            flags,
        )
        .is_err()
        {
            self.daemon.disconnect(conn.id);
            return;
        }
        let config = self.daemon.config();
        let limit = if domid == DomId::DOM0 {
            config.dom0_outstanding
        } else {
            config.max_outstanding
        }
        .max(1);
        self.clients.insert(
            key,
            Client {
                sock,
                listener,
                conn,
                dec: Decoder::new(),
                out: Vec::new(),
                sent: 0,
                limit,
                flags,
                peeked: 0,
            },
        );
    }

    /// One turn for connection `id`: read once if it may send requests,
    /// handle them, send what is queued, and register for what it waits
    /// for next.
    fn serve_client(&mut self, id: u64, flags: epoll::EventFlags) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let mut ok = Self::requests(&self.shared, &self.daemon, c, &mut self.buf, flags)
            .and_then(|()| Self::flush(c))
            .and_then(|()| Self::consume(c, &mut self.buf));
        if ok.is_ok() {
            ok = Self::rearm(&self.shared, c);
        }
        if ok.is_err() {
            self.close(id);
        }
    }

    /// Reads and handles what connection `id` sent, if it may send
    /// requests now; false if it is gone.
    fn take_requests(&mut self, id: u64, flags: epoll::EventFlags) -> bool {
        let Some(c) = self.clients.get_mut(&id) else {
            return false;
        };
        if Self::requests(&self.shared, &self.daemon, c, &mut self.buf, flags).is_err() {
            self.close(id);
            return false;
        }
        true
    }

    fn requests(
        shared: &Shared,
        daemon: &Daemon,
        c: &mut Client,
        buf: &mut [u8],
        flags: epoll::EventFlags,
    ) -> Result<(), Gone> {
        use epoll::EventFlags as F;
        if flags.intersects(F::IN | F::HUP | F::ERR) && c.conn.queue.len() < c.limit {
            Self::consume(c, buf)?;
            match rustix::net::recv(&c.sock, &mut *buf, RecvFlags::DONTWAIT | RecvFlags::PEEK) {
                Ok((0, _)) => return Err(Gone),
                Ok((n, _)) => {
                    c.dec.push(&buf[..n]);
                    c.peeked = n;
                    shared.current.store(c.conn.id.0, Ordering::SeqCst);
                    let r = daemon.deliver_decoded(c.conn.id, &mut c.dec);
                    shared.current.store(NONE, Ordering::SeqCst);
                    // Lost framing (a length over 4096): drop the client.
                    if r.is_err() {
                        return Err(Gone);
                    }
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(_) => return Err(Gone),
            }
        } else if flags.intersects(F::HUP | F::ERR) && !flags.contains(F::IN) {
            // Hung up while not read from (it was not taking its replies).
            return Err(Gone);
        }
        Ok(())
    }

    /// Takes the bytes handled earlier out of the socket. Requests are read
    /// with `MSG_PEEK` and taken out only once their replies are sent:
    /// taking a client's bytes frees its send buffer, and Linux then wakes
    /// every task sleeping on that client's socket, including the client
    /// itself asleep in `recv` waiting for its reply (a wake-up for
    /// nothing, which costs an inter-processor interrupt and two context
    /// switches). Taken after the reply, the client is awake already.
    fn consume(c: &mut Client, buf: &mut [u8]) -> Result<(), Gone> {
        while c.peeked > 0 {
            let want = c.peeked.min(buf.len());
            match rustix::net::recv(&c.sock, &mut buf[..want], RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err(Gone),
                Ok((n, _)) => c.peeked -= n.min(c.peeked),
                Err(Errno::INTR) => {}
                // Nobody else reads this socket: bytes seen must be there.
                Err(_) => return Err(Gone),
            }
        }
        Ok(())
    }

    /// Sends queued output until the socket is full or nothing is left.
    /// Output is taken from the queue only once the previous batch is out,
    /// so a client that does not read leaves its backlog in the queue,
    /// where the daemon's byte cap applies.
    fn flush(c: &mut Client) -> Result<(), Gone> {
        loop {
            if !c.pending() {
                if c.out.capacity() > 4 * READ_CHUNK {
                    // A big backlog went out: give its memory back.
                    c.out = Vec::new();
                }
                c.out.clear();
                c.sent = 0;
                if c.conn.queue.drain_encoded(&mut c.out).map_err(|_| Gone)? == 0 {
                    return Ok(());
                }
            }
            match rustix::net::send(
                &c.sock,
                &c.out[c.sent..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => c.sent += n,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(_) => return Err(Gone),
            }
        }
    }

    /// Registers `c` for reading while it may send requests and for
    /// writing while output waits.
    fn rearm(shared: &Shared, c: &mut Client) -> Result<(), Gone> {
        use epoll::EventFlags as F;
        let mut want = F::empty();
        if c.conn.queue.len() < c.limit {
            want |= F::IN;
        }
        if c.pending() {
            want |= F::OUT;
        }
        if want != c.flags {
            epoll::modify(
                &shared.epoll,
                &c.sock,
                epoll::EventData::new_u64(c.conn.id.0),
                want,
            )
            .map_err(|_| Gone)?;
            c.flags = want;
        }
        Ok(())
    }

    fn close(&mut self, id: u64) {
        if let Some(c) = self.clients.remove(&id) {
            let _ = epoll::delete(&self.shared.epoll, &c.sock);
            self.daemon.disconnect(c.conn.id);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
