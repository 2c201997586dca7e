//! The shared daemon: one [`Store`] behind a lock, plus an outgoing queue per
//! connection. Transports attach with [`Daemon::connect`], hand in whole
//! messages with [`Daemon::deliver`] and drain the connection's
//! [`OutQueue`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use xenshare::store::wire::{Decoder, Message, MsgType, WireError, HEADER_LEN};
use xenshare::DomId;

use crate::config::Config;
use crate::idmap::IdMap;
use crate::store::{ConnId, Output, Store};

/// The queue was closed: the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection closed")]
pub struct Closed;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the daemon down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct QueueState {
    q: VecDeque<Message>,
    /// Encoded size of everything in `q`.
    bytes: usize,
    /// Watch events dropped because the queue was over its byte cap.
    dropped: u64,
    closed: bool,
    /// The connection's reader is handling a request and will send what is
    /// queued itself: no need to wake a writer for it.
    busy: bool,
    /// Threads blocked on `data` / `space`: the condition variables are
    /// only signalled when someone waits (signalling costs a system call).
    data_waiters: usize,
    space_waiters: usize,
}

/// Called (under the daemon lock: keep it short, no calls back into the
/// daemon) when an idle queue gets its first message or is closed: the
/// event loop that owns the connection learns it has work.
pub(crate) type Notify = Box<dyn Fn() + Send + Sync>;

/// Messages waiting to go to one connection, in order.
#[derive(Default)]
pub struct OutQueue {
    state: Mutex<QueueState>,
    notify: Option<Notify>,
    /// Signalled when a message is queued (for `pop` / `wait_nonempty`).
    data: Condvar,
    /// Signalled when messages are taken (for `wait_below`). Separate from
    /// `data` so a reader draining its own replies does not wake the
    /// connection's idle writer thread on every request.
    space: Condvar,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("OutQueue")
            .field("len", &s.q.len())
            .field("bytes", &s.bytes)
            .field("dropped", &s.dropped)
            .field("closed", &s.closed)
            .finish()
    }
}

/// What became of a message offered to an [`OutQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// Queued (or the queue is closed and nothing more is sent).
    Queued,
    /// A watch event past the byte cap: dropped and counted, as C xenstored
    /// drops events for a connection that does not read them.
    Dropped,
    /// A reply past the cap and its headroom: the connection must go.
    Overflow,
}

fn encoded_len(m: &Message) -> usize {
    HEADER_LEN + m.payload.len()
}

impl OutQueue {
    /// Queues `m` unless the queue holds `cap` bytes or more (watch events)
    /// or `cap + headroom` bytes (replies, which are never dropped silently).
    fn push(&self, m: Message, cap: usize, headroom: usize) -> Pushed {
        let mut s = lock(&self.state);
        if s.closed {
            return Pushed::Queued;
        }
        let len = encoded_len(&m);
        let after = s.bytes.saturating_add(len);
        if m.ty == MsgType::WatchEvent {
            if after > cap {
                s.dropped += 1;
                return Pushed::Dropped;
            }
        } else if after > cap.saturating_add(headroom) {
            return Pushed::Overflow;
        }
        s.bytes = after;
        let was_empty = s.q.is_empty();
        s.q.push_back(m);
        if !s.busy {
            if s.data_waiters > 0 {
                self.data.notify_all();
            }
            if was_empty {
                if let Some(n) = &self.notify {
                    n();
                }
            }
        }
        Pushed::Queued
    }

    fn wait_data<'a>(
        &self,
        mut s: MutexGuard<'a, QueueState>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, QueueState> {
        s.data_waiters += 1;
        let mut s = match timeout {
            None => self.data.wait(s).unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                self.data
                    .wait_timeout(s, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        s.data_waiters -= 1;
        s
    }

    fn taken(&self, s: &QueueState) {
        if s.space_waiters > 0 {
            self.space.notify_all();
        }
    }

    /// Takes the next message, waiting up to `timeout` (`None`: forever).
    /// `Ok(None)` on timeout; `Err(Closed)` once closed (queued messages are
    /// dropped: a closed connection gets nothing more).
    pub fn pop(&self, timeout: Option<Duration>) -> Result<Option<Message>, Closed> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return Err(Closed);
            }
            if let Some(m) = s.q.pop_front() {
                s.bytes = s.bytes.saturating_sub(encoded_len(&m));
                self.taken(&s);
                return Ok(Some(m));
            }
            s = match deadline {
                None => self.wait_data(s, None),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    self.wait_data(s, Some(left))
                }
            };
        }
    }

    /// Takes every queued message at once, without waiting.
    pub fn take_all(&self) -> Result<Vec<Message>, Closed> {
        let mut s = lock(&self.state);
        if s.closed {
            return Err(Closed);
        }
        let v: Vec<Message> = s.q.drain(..).collect();
        s.bytes = 0;
        if !v.is_empty() {
            self.taken(&s);
        }
        Ok(v)
    }

    /// Encodes every queued message onto the end of `out` and empties the
    /// queue, without waiting. Returns how many there were; `Err` if the
    /// queue is closed or a message cannot be encoded (the connection must
    /// go, as nothing after it could be sent in order).
    pub fn drain_encoded(&self, out: &mut Vec<u8>) -> Result<usize, Closed> {
        let mut s = lock(&self.state);
        if s.closed {
            return Err(Closed);
        }
        let n = s.q.len();
        let ok = s.q.drain(..).all(|m| m.encode_into(out).is_ok());
        s.bytes = 0;
        if n > 0 {
            self.taken(&s);
        }
        if ok {
            Ok(n)
        } else {
            Err(Closed)
        }
    }

    /// Marks the connection's own reader as busy handling a request (it
    /// sends the replies itself), or idle again; going idle with messages
    /// queued wakes [`OutQueue::wait_nonempty`].
    pub fn set_busy(&self, busy: bool) {
        let mut s = lock(&self.state);
        s.busy = busy;
        if !busy && !s.q.is_empty() && s.data_waiters > 0 {
            self.data.notify_all();
        }
    }

    /// Waits until a message is queued while the reader is idle (without
    /// taking it).
    pub fn wait_nonempty(&self) -> Result<(), Closed> {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return Err(Closed);
            }
            if !s.q.is_empty() && !s.busy {
                return Ok(());
            }
            s = self.wait_data(s, None);
        }
    }

    /// Waits until fewer than `limit` messages are queued (the reader's
    /// back-pressure: a client that does not read its replies is not read
    /// from). `Err(Closed)` if the queue closes.
    pub fn wait_below(&self, limit: usize) -> Result<(), Closed> {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return Err(Closed);
            }
            if s.q.len() < limit {
                return Ok(());
            }
            s.space_waiters += 1;
            s = self
                .space
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.space_waiters -= 1;
        }
    }

    /// Closes the queue and wakes every waiter.
    pub fn close(&self) {
        let mut s = lock(&self.state);
        let was_closed = s.closed;
        s.closed = true;
        s.q.clear();
        s.bytes = 0;
        self.data.notify_all();
        self.space.notify_all();
        if !was_closed {
            if let Some(n) = &self.notify {
                n();
            }
        }
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        lock(&self.state).q.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoded bytes of the queued messages.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// Watch events dropped so far because this connection did not read
    /// its output.
    pub fn dropped_events(&self) -> u64 {
        lock(&self.state).dropped
    }
}

/// A domain lifecycle event, for transports that serve guests over rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainEvent {
    /// XS_INTRODUCE: map the domain's page `gfn` and bind `port`.
    Introduced {
        /// The domain.
        domid: DomId,
        /// Frame of its xenstore page.
        gfn: i64,
        /// Its xenstore event channel.
        port: u32,
    },
    /// XS_RELEASE: the domain's connections are closed.
    Released(DomId),
}

type Hook = Box<dyn FnMut(DomainEvent) + Send>;

struct Inner {
    store: Store,
    queues: IdMap<ConnId, Arc<OutQueue>>,
    hooks: Vec<Hook>,
    /// Watch events dropped for connections over their output cap, in total.
    dropped_events: u64,
}

/// One attached connection: its id, its domain and its outgoing queue.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Id to pass to [`Daemon::deliver`].
    pub id: ConnId,
    /// The domain it speaks for.
    pub domid: DomId,
    /// Replies and watch events for it.
    pub queue: Arc<OutQueue>,
}

/// A XenStore daemon shared by all transports (cheap to clone).
#[derive(Clone)]
pub struct Daemon {
    inner: Arc<Mutex<Inner>>,
    config: Arc<Config>,
    /// The socket event loop serving this daemon, while any of its
    /// sockets is open (one loop for all of them).
    pub(crate) event_loop: Arc<Mutex<Weak<crate::server::EventLoop>>>,
}

impl Daemon {
    /// A daemon with a fresh store.
    pub fn new(config: Config) -> Daemon {
        Daemon {
            inner: Arc::new(Mutex::new(Inner {
                store: Store::new(config.clone()),
                queues: IdMap::default(),
                hooks: Vec::new(),
                dropped_events: 0,
            })),
            config: Arc::new(config),
            event_loop: Arc::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Attaches a connection for domain `domid` (0 = privileged).
    pub fn connect(&self, domid: DomId) -> Connection {
        self.connect_with(domid, |_| None)
    }

    /// Attaches a connection whose queue calls the notifier `make` returns
    /// (given the new id) when it gets work while idle.
    pub(crate) fn connect_with(
        &self,
        domid: DomId,
        make: impl FnOnce(ConnId) -> Option<Notify>,
    ) -> Connection {
        let mut g = lock(&self.inner);
        let id = g.store.connect(domid);
        let queue = Arc::new(OutQueue {
            notify: make(id),
            ..OutQueue::default()
        });
        g.queues.insert(id, queue.clone());
        Connection { id, domid, queue }
    }

    /// Delivers every whole message buffered in `dec` for `conn`, under
    /// one hold of the daemon lock. Returns how many; `Err` as for
    /// [`Daemon::deliver_bytes`].
    pub(crate) fn deliver_decoded(
        &self,
        conn: ConnId,
        dec: &mut Decoder,
    ) -> Result<usize, WireError> {
        let mut g = lock(&self.inner);
        let mut n = 0;
        while let Some(m) = dec.next_message()? {
            let outputs = g.store.handle(conn, m);
            self.route(&mut g, outputs);
            n += 1;
        }
        Ok(n)
    }

    /// Handles one whole request from `conn`. Replies and events land in the
    /// connections' queues in order.
    pub fn deliver(&self, conn: ConnId, msg: Message) {
        let mut g = lock(&self.inner);
        let outputs = g.store.handle(conn, msg);
        self.route(&mut g, outputs);
    }

    /// Handles raw bytes received from `conn`'s byte stream: appends them
    /// to the connection's `dec` and delivers every whole message in order.
    /// Returns how many were delivered. `Err` means the stream lost its
    /// framing (a length over 4096): the transport must drop the connection
    /// (messages before the bad header have been delivered).
    pub fn deliver_bytes(
        &self,
        conn: ConnId,
        dec: &mut Decoder,
        bytes: &[u8],
    ) -> Result<usize, WireError> {
        dec.push(bytes);
        let mut n = 0;
        while let Some(m) = dec.next_message()? {
            self.deliver(conn, m);
            n += 1;
        }
        Ok(n)
    }

    /// Detaches a connection (idempotent).
    pub fn disconnect(&self, conn: ConnId) {
        let mut g = lock(&self.inner);
        g.store.disconnect(conn);
        if let Some(q) = g.queues.remove(&conn) {
            q.close();
        }
    }

    /// Introduces `domid` without a shared ring (its connections come over
    /// a socket bound to it): `@introduceDomain` fires.
    pub fn introduce_domain(&self, domid: DomId) -> Result<(), xenshare::store::XsError> {
        let mut g = lock(&self.inner);
        let out = g.store.introduce_domain(domid)?;
        self.route(&mut g, out);
        Ok(())
    }

    /// Releases `domid`: its connections are closed, `@releaseDomain`
    /// fires.
    pub fn release_domain(&self, domid: DomId) -> Result<(), xenshare::store::XsError> {
        let mut g = lock(&self.inner);
        let out = g.store.release_domain(domid)?;
        self.route(&mut g, out);
        Ok(())
    }

    /// Calls `hook` for every later introduce / release, under the daemon
    /// lock (keep it short; it must not call back into the daemon).
    pub fn on_domain_event(&self, hook: impl FnMut(DomainEvent) + Send + 'static) {
        lock(&self.inner).hooks.push(Box::new(hook));
    }

    /// Watch events dropped so far, over all connections, because their
    /// connection did not read its output (XSA-349).
    pub fn dropped_events(&self) -> u64 {
        lock(&self.inner).dropped_events
    }

    /// The live connections of `domid`, with their outgoing queues.
    pub fn connections_of(&self, domid: DomId) -> Vec<Connection> {
        let g = lock(&self.inner);
        g.queues
            .iter()
            .filter_map(|(id, q)| {
                let d = g.store.conn_domid(*id)?;
                (d == domid).then(|| Connection {
                    id: *id,
                    domid: d,
                    queue: q.clone(),
                })
            })
            .collect()
    }

    /// Runs `f` on the store, for inspection.
    pub fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.inner).store)
    }

    fn route(&self, g: &mut Inner, outputs: Vec<Output>) {
        let mut dead = Vec::new();
        for o in outputs {
            match o {
                Output::Send(c, m) => {
                    if let Some(q) = g.queues.get(&c) {
                        // A connection that lets this much pile up is not
                        // reading: its watch events go; if even its replies
                        // do not fit, it goes.
                        match q.push(m, self.config.max_queued_bytes, self.config.reply_headroom) {
                            Pushed::Queued => {}
                            Pushed::Dropped => g.dropped_events += 1,
                            Pushed::Overflow => dead.push(c),
                        }
                    }
                }
                Output::Close(c) => dead.push(c),
                Output::Introduced { domid, gfn, port } => {
                    for h in &mut g.hooks {
                        h(DomainEvent::Introduced { domid, gfn, port });
                    }
                }
                Output::Released(d) => {
                    for h in &mut g.hooks {
                        h(DomainEvent::Released(d));
                    }
                }
            }
        }
        for c in dead {
            g.store.disconnect(c);
            if let Some(q) = g.queues.remove(&c) {
                q.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenshare::store::wire::{MsgType, Request};

    #[test]
    fn deliver_bytes_reassembles_pieces_and_stops_at_a_bad_length() {
        let d = Daemon::new(Config::default());
        let c = d.connect(DomId::DOM0);
        let mut dec = Decoder::new();
        let mut bytes = Request::Mkdir("/a".into())
            .to_message(7, 0)
            .to_bytes()
            .unwrap();
        bytes.extend(
            Request::Read("/a".into())
                .to_message(8, 0)
                .to_bytes()
                .unwrap(),
        );
        // One byte short of both messages, then the rest.
        let cut = bytes.len() - 1;
        assert_eq!(d.deliver_bytes(c.id, &mut dec, &bytes[..cut]), Ok(1));
        assert_eq!(d.deliver_bytes(c.id, &mut dec, &bytes[cut..]), Ok(1));
        let replies = c.queue.take_all().unwrap();
        let ids: Vec<(u32, MsgType)> = replies.iter().map(|m| (m.req_id, m.ty)).collect();
        assert_eq!(ids, [(7, MsgType::Mkdir), (8, MsgType::Read)]);
        // A header announcing more than 4096 bytes: framing is lost.
        let mut bad = [0u8; 16];
        bad[12..16].copy_from_slice(&4097u32.to_ne_bytes());
        assert_eq!(
            d.deliver_bytes(c.id, &mut dec, &bad),
            Err(WireError::PayloadTooLong(4097))
        );
        assert!(c.queue.take_all().unwrap().is_empty());
    }
}
