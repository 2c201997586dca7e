//! The host daemon: one emulated [`Hypervisor`] for every domain process,
//! a xenstored, and the RPC socket domains join through.
//!
//! The daemon holds a `Domain` per joined process (created with
//! [`Hypervisor::create_remote_domain`]) and performs its hypercalls by
//! calling the same sim code an in-process domain uses. A connection is a
//! domain: when it closes (the process exited or was killed) the domain is
//! destroyed — its mappings are released (running their unmap notifies),
//! its ports closed (peers return to unbound).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use xenshare::grant::GntSt;
use xenshare::platform::{CopyDst, CopyOp, CopySrc, GrantPtr};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_sim::region::Region;
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn};

use crate::limits::{self, ConnSlot, DomainBudget, FdBudget, Kind};
use crate::sock;
use crate::toolstack::{token_path, Token, Toolstack};
use crate::wire::{
    op, Reader, RemoteError, WireError, Writer, MAX_COPY_OPS, MAX_FDS, MAX_MAP_REFS,
};

/// Capacity of a handle's wake-up pipe: one token per port of a domain
/// (2-level event channels) fits.
const WAKE_PIPE_BYTES: usize = xenshare_abi::event::EVTCHN_2L_NR_CHANNELS;

/// Settings of a host daemon.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The RPC socket domains join through.
    pub socket: PathBuf,
    /// The xenstored socket (default: the RPC socket's path plus `.xs`).
    pub xenstore_socket: Option<PathBuf>,
    /// Settings of each domain created on join.
    pub domain: DomainConfig,
    /// The smallest id given to a joiner that does not ask for one (at
    /// least 1: dom0 is the host itself).
    pub first_domid: DomId,
}

impl HostConfig {
    /// Defaults for a socket path.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            xenstore_socket: None,
            domain: DomainConfig {
                mem_pages: 1 << 18,
                grant_frames: 32,
                ..DomainConfig::default()
            },
            first_domid: DomId(1),
        }
    }

    /// The xenstored socket path.
    pub fn xenstore_path(&self) -> PathBuf {
        self.xenstore_socket.clone().unwrap_or_else(|| {
            let mut p = self.socket.clone().into_os_string();
            p.push(".xs");
            PathBuf::from(p)
        })
    }
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The RPC socket could not be created.
    #[error("cannot listen on {path}: {err}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// The error.
        err: rustix::io::Errno,
    },
    /// The privilege token could not be written.
    #[error("cannot write the host token {path}: {err}")]
    Token {
        /// The path.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// xenstored could not start.
    #[error("cannot start xenstored on {path}: {err}")]
    Xenstore {
        /// The path.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
}

type Registry = Arc<Mutex<HashMap<u16, Domain>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running host daemon (background threads); stops accepting when
/// dropped.
pub struct Host {
    hv: Hypervisor,
    domains: Registry,
    path: PathBuf,
    token_path: PathBuf,
    xs_path: PathBuf,
    _xs: xenshare_xenstored::ServerHandle,
    listener: Arc<OwnedFd>,
    accept: Option<thread::JoinHandle<()>>,
    stats: Arc<Stats>,
    fds: Arc<FdBudget>,
}

/// Counters of the daemon's accept loop.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transient accept failures survived (out of fds, aborted
    /// connections...).
    pub accept_errors: std::sync::atomic::AtomicU64,
    /// Connections closed at once because [`limits::MAX_CONNS`] were live.
    pub conns_refused: std::sync::atomic::AtomicU64,
    /// Connections being served now.
    pub live_conns: Arc<std::sync::atomic::AtomicUsize>,
}

/// Accepts connections until the listener is shut down. Running out of
/// fds (ours or the system's), an aborted connection, or a failed thread
/// spawn are transient: the loop backs off briefly and goes on, so a
/// domain that exhausted the fds and died does not stop later joins.
fn accept_loop(l: &OwnedFd, shared: &Arc<Shared>) {
    use rustix::io::Errno;
    use std::sync::atomic::Ordering;
    let mut backoff = std::time::Duration::from_millis(1);
    loop {
        match rustix::net::accept_with(l, rustix::net::SocketFlags::CLOEXEC) {
            Ok(fd) => {
                backoff = std::time::Duration::from_millis(1);
                let Some(slot) = ConnSlot::take(&shared.stats.live_conns, limits::MAX_CONNS) else {
                    shared.stats.conns_refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let s = shared.clone();
                if thread::Builder::new()
                    .name("xenshare-host-conn".into())
                    .spawn(move || serve_conn(s, fd, slot))
                    .is_err()
                {
                    shared.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(Errno::INTR) => {}
            // The listener was shut down (the Host was dropped) or is gone.
            Err(Errno::INVAL | Errno::BADF | Errno::NOTSOCK) => return,
            Err(_) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, EPROTO,
                // EPERM...: retry after a short, growing pause.
                shared.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_millis(100));
            }
        }
    }
}

impl Host {
    /// Starts a daemon in the background.
    pub fn spawn(cfg: HostConfig) -> Result<Host, HostError> {
        let xs_path = cfg.xenstore_path();
        let uid = rustix::process::getuid().as_raw();
        // Dom0's socket: the host's user only.
        let xs = xenshare_xenstored::serve_as(
            xenshare_xenstored::Daemon::new(xenshare_xenstored::Config::default()),
            &xs_path,
            xenshare_xenstored::SocketAccess {
                domid: DomId::DOM0,
                mode: 0o600,
                uid: Some(uid),
            },
        )
        .map_err(|err| HostError::Xenstore {
            path: xs_path.clone(),
            err,
        })?;
        let tpath = token_path(&cfg.socket);
        let token = Token::create(&tpath).map_err(|err| HostError::Token {
            path: tpath.clone(),
            err,
        })?;
        let listener = Arc::new(sock::listen(&cfg.socket).map_err(|err| HostError::Listen {
            path: cfg.socket.clone(),
            err,
        })?);
        // One memfd per shared chunk: use all the fds we are allowed.
        limits::raise_nofile();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600)).map_err(
                |err| HostError::Listen {
                    path: cfg.socket.clone(),
                    err: rustix::io::Errno::from_io_error(&err).unwrap_or(rustix::io::Errno::PERM),
                },
            )?;
        }
        let toolstack = Toolstack::new(xs.daemon().clone(), &cfg.socket);
        let hv = Hypervisor::new();
        let domains: Registry = Arc::default();
        let stats = Arc::new(Stats::default());
        let fds = FdBudget::from_rlimit();
        let shared = Arc::new(Shared {
            hv: hv.clone(),
            domains: domains.clone(),
            quarantined: Mutex::default(),
            cfg: cfg.clone(),
            fds: fds.clone(),
            stats: stats.clone(),
            uid,
            token,
            toolstack,
        });
        let l = listener.clone();
        let accept = thread::Builder::new()
            .name("xenshare-host-accept".into())
            .spawn(move || accept_loop(&l, &shared))
            .map_err(|err| HostError::Xenstore {
                path: xs_path.clone(),
                err,
            })?;
        Ok(Host {
            hv,
            domains,
            token_path: tpath,
            path: cfg.socket,
            xs_path,
            _xs: xs,
            listener,
            accept: Some(accept),
            stats,
            fds,
        })
    }

    /// File descriptors held for domains now (chunk memfds, wake-up
    /// sockets), out of a budget set by `RLIMIT_NOFILE`.
    pub fn fds_held(&self) -> usize {
        self.fds.used()
    }

    /// Counters of the accept loop (for tests and monitoring).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The hypervisor (for in-process inspection).
    pub fn hypervisor(&self) -> &Hypervisor {
        &self.hv
    }

    /// A joined domain, by id.
    pub fn domain(&self, id: DomId) -> Option<Domain> {
        lock(&self.domains).get(&id.0).cloned()
    }

    /// The RPC socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file holding the host's privilege token.
    pub fn token_path(&self) -> &Path {
        &self.token_path
    }

    /// The xenstored socket (dom0's).
    pub fn xenstore_path(&self) -> &Path {
        &self.xs_path
    }

    /// Blocks until the accept loop ends (in practice: forever).
    pub fn join(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.token_path);
    }
}

struct Shared {
    hv: Hypervisor,
    domains: Registry,
    /// Per domain, the refs its exporter reports quarantined.
    quarantined: Mutex<HashMap<u16, std::collections::BTreeSet<u32>>>,
    cfg: HostConfig,
    fds: Arc<FdBudget>,
    stats: Arc<Stats>,
    /// The host's user.
    uid: u32,
    token: Token,
    toolstack: Toolstack,
}

struct Conn {
    shared: Arc<Shared>,
    dom: Option<Domain>,
    /// The joined domain's own xenstored socket.
    xs_path: String,
    /// The peer's user (`SO_PEERCRED`), if known.
    peer_uid: Option<u32>,
    /// Presented the host's token, as the host's user (or root).
    privileged: bool,
    evts: HashMap<u32, Arc<SimEvtchn>>,
    next_evt: u32,
    budget: DomainBudget,
    /// Retired chunks of this domain that peers still map (their memfds
    /// are still open, counted in `budget`).
    retired: Vec<std::sync::Weak<Region>>,
}

fn serve_conn(shared: Arc<Shared>, fd: OwnedFd, _slot: ConnSlot) {
    let budget = DomainBudget::new(shared.fds.clone());
    let peer_uid = rustix::net::sockopt::socket_peercred(&fd)
        .ok()
        .map(|c| c.uid.as_raw());
    let mut c = Conn {
        shared,
        dom: None,
        xs_path: String::new(),
        peer_uid,
        privileged: false,
        evts: HashMap::new(),
        next_evt: 1,
        budget,
        retired: Vec::new(),
    };
    loop {
        let pkt = match sock::recv(fd.as_fd()) {
            Ok(p) => p,
            Err(sock::RecvError::Truncated) => {
                let w = RemoteError::Refused("message too large".into()).encode();
                if sock::send(fd.as_fd(), &w.0, &[]).is_err() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let (w, fds) = match c.handle(&pkt.data, pkt.fds) {
            Ok(x) => x,
            Err(e) => (e.encode(), Vec::new()),
        };
        if sock::send(fd.as_fd(), &w.0, &sock::borrow_all(&fds)).is_err() {
            break;
        }
    }
    c.die();
}

fn bad(e: WireError) -> RemoteError {
    RemoteError::Refused(format!("malformed request: {e}"))
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, RemoteError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| RemoteError::Refused(format!("dup: {e}")))
}

fn domid16(v: u32) -> Result<DomId, RemoteError> {
    u16::try_from(v)
        .ok()
        .map(DomId)
        .filter(|d| d.is_real())
        .ok_or_else(|| RemoteError::Refused(format!("bad domain id {v}")))
}

type Reply = (Writer, Vec<OwnedFd>);

impl Conn {
    fn die(&mut self) {
        if let Some(d) = self.dom.take() {
            lock(&self.shared.domains).remove(&d.id().0);
            lock(&self.shared.quarantined).remove(&d.id().0);
            // The toolstack first: until the domain itself is destroyed its
            // id stays taken, so a new domain with the same id cannot have
            // its socket or home removed by this clean-up.
            self.shared.toolstack.destroy(d.id());
            let _ = d.destroy();
        }
        self.evts.clear();
    }

    fn need_privilege(&self, what: &str) -> Result<(), RemoteError> {
        if self.privileged {
            Ok(())
        } else {
            Err(RemoteError::Refused(format!(
                "{what} is for the host's owner (present the host token first)"
            )))
        }
    }

    /// JOIN: a new domain for this connection. `want` is `u32::MAX` (any
    /// id, assigned here) or a chosen id (privileged callers only; never
    /// 0, which is the host).
    fn join(&mut self, want: u32) -> Result<Reply, RemoteError> {
        if self.dom.is_some() {
            return Err(RemoteError::Refused("already joined".into()));
        }
        let hv = &self.shared.hv;
        let cfg = self.shared.cfg.domain;
        let dom = if want == u32::MAX {
            let mut id = self.shared.cfg.first_domid.0.max(1);
            loop {
                if !DomId(id).is_real() {
                    return Err(RemoteError::Refused("no free domain id".into()));
                }
                if let Ok(d) = hv.create_remote_domain(DomId(id), cfg) {
                    break d;
                }
                id += 1;
            }
        } else {
            self.need_privilege("choosing a domain id")?;
            let id = domid16(want)?;
            if id == DomId::DOM0 {
                return Err(RemoteError::Refused(
                    "domain 0 is the host itself; nobody joins as dom0".into(),
                ));
            }
            // A domain that just exited may still be being torn down by its
            // connection's thread: give it a moment (bounded) before
            // refusing an id that is really taken.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                match hv.create_remote_domain(id, cfg) {
                    Ok(d) => break d,
                    Err(xenshare_sim::HvError::DomIdTaken(_))
                        if std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(RemoteError::Refused(format!("domain {}: {e}", id.0))),
                }
            }
        };
        let uid = self.peer_uid.unwrap_or(self.shared.uid);
        let xs = match self.shared.toolstack.create(dom.id(), uid) {
            Ok(p) => p,
            Err(e) => {
                let _ = dom.destroy();
                self.shared.toolstack.destroy(dom.id());
                return Err(RemoteError::Refused(e.to_string()));
            }
        };
        self.xs_path = xs.to_string_lossy().into_owned();
        lock(&self.shared.domains).insert(dom.id().0, dom.clone());
        self.dom = Some(dom);
        self.join_reply()
    }

    /// The JOIN reply: domain id, its xenstored socket, and the grant
    /// table and shared-info memfds.
    fn join_reply(&self) -> Result<Reply, RemoteError> {
        let dom = self.dom()?;
        let out = vec![
            dup(dom.grant_table_region().fd())?,
            dup(dom.shared_info_region().fd())?,
        ];
        let mut w = Writer::new(op::OK);
        w.u16(dom.id().0).bytes(self.xs_path.as_bytes());
        Ok((w, out))
    }

    fn dom(&self) -> Result<&Domain, RemoteError> {
        self.dom
            .as_ref()
            .ok_or_else(|| RemoteError::Refused("not joined as a domain".into()))
    }

    fn evt(&self, h: u32) -> Result<&Arc<SimEvtchn>, RemoteError> {
        self.evts
            .get(&h)
            .ok_or_else(|| RemoteError::Refused(format!("no event channel handle {h}")))
    }

    fn handle(&mut self, data: &[u8], mut fds: Vec<OwnedFd>) -> Result<Reply, RemoteError> {
        let mut r = Reader::new(data).map_err(bad)?;
        let reply = self.dispatch(&mut r, &mut fds)?;
        Ok(reply)
    }

    fn dispatch(
        &mut self,
        r: &mut Reader<'_>,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Reply, RemoteError> {
        let fd_count = |fds: &Vec<OwnedFd>, n: usize| {
            if fds.len() == n {
                Ok(())
            } else {
                Err(RemoteError::Refused(format!(
                    "expected {n} fds, got {}",
                    fds.len()
                )))
            }
        };
        let ok = || Writer::new(op::OK);
        match r.op {
            op::JOIN => {
                let want = r.u32().map_err(bad)?;
                r.end().map_err(bad)?;
                fd_count(fds, 0)?;
                self.join(want)
            }
            op::ATTACH => {
                r.end().map_err(bad)?;
                fd_count(fds, 0)?;
                self.join_reply()
            }
            op::AUTH => {
                let token = r.bytes(crate::toolstack::TOKEN_LEN + 1).map_err(bad)?;
                r.end().map_err(bad)?;
                fd_count(fds, 0)?;
                let ours = self
                    .peer_uid
                    .is_some_and(|u| u == self.shared.uid || u == 0);
                if !ours || !self.shared.token.matches(token) {
                    return Err(RemoteError::Refused("not the host's token".into()));
                }
                self.privileged = true;
                Ok((ok(), Vec::new()))
            }
            op::ADD_CHUNK => {
                let pages = r.u64().map_err(bad)?;
                r.end().map_err(bad)?;
                fd_count(fds, 1)?;
                let fd = fds
                    .pop()
                    .ok_or_else(|| RemoteError::Refused("no fd".into()))?;
                self.add_chunk(fd, pages)
            }
            op::RETIRE_CHUNK => {
                let first = r.u64().map_err(bad)?;
                r.end().map_err(bad)?;
                let region =
                    self.dom()?.memory().take_chunk(first).ok_or_else(|| {
                        RemoteError::Refused(format!("no chunk at frame {first}"))
                    })?;
                // Peers' mappings live in their own processes (their own
                // mmaps); the daemon's mappings hold no memory. Whatever
                // still holds the region here (a copy or map in flight)
                // keeps its memfd open: it stays on this domain's budget
                // until it goes.
                let weak = Arc::downgrade(&region);
                drop(region);
                if weak.strong_count() == 0 {
                    self.budget.give(Kind::Chunk);
                } else {
                    self.retired.push(weak);
                }
                Ok((ok(), Vec::new()))
            }
            op::MAP => {
                let granter = domid16(u32::from(r.u16().map_err(bad)?))?;
                let ro = r.bool().map_err(bad)?;
                let n = r.u16().map_err(bad)? as usize;
                if n == 0 || n > MAX_MAP_REFS {
                    return Err(bad(WireError::BadField("ref count")));
                }
                let mut refs = Vec::with_capacity(n);
                for _ in 0..n {
                    refs.push(GrantRef(r.u32().map_err(bad)?));
                }
                r.end().map_err(bad)?;
                fd_count(fds, 0)?;
                self.map(granter, ro, &refs)
            }
            op::UNMAP => {
                let h = r.u32().map_err(bad)?;
                r.end().map_err(bad)?;
                self.dom()?.raw_unmap(h).map_err(RemoteError::Gnt)?;
                Ok((ok(), Vec::new()))
            }
            op::SET_UNMAP_NOTIFY => {
                let h = r.u32().map_err(bad)?;
                let byte = r.opt_u32().map_err(bad)?;
                let port = r.opt_u32().map_err(bad)?;
                r.end().map_err(bad)?;
                let byte = byte
                    .map(|b| u16::try_from(b).map_err(|_| RemoteError::Gnt(GntSt::BadVirtAddr)))
                    .transpose()?;
                self.dom()?
                    .host_set_unmap_notify(h, byte, port.map(Port))
                    .map_err(RemoteError::Gnt)?;
                Ok((ok(), Vec::new()))
            }
            op::SET_EXPORT_NOTIFY => {
                let first = GrantRef(r.u32().map_err(bad)?);
                self.check_ref(first.0)?;
                let frame = r.u64().map_err(bad)?;
                let off = r.opt_u32().map_err(bad)?;
                let port = r.opt_u32().map_err(bad)?;
                r.end().map_err(bad)?;
                let off = off
                    .map(|b| u16::try_from(b).map_err(|_| RemoteError::Gnt(GntSt::BadVirtAddr)))
                    .transpose()?;
                self.dom()?
                    .host_set_export_notify(first, frame, off, port.map(Port))
                    .map_err(RemoteError::Gnt)?;
                Ok((ok(), Vec::new()))
            }
            op::FIRE_EXPORT_NOTIFY => {
                let first = GrantRef(r.u32().map_err(bad)?);
                r.end().map_err(bad)?;
                self.dom()?.host_fire_export_notify(first);
                Ok((ok(), Vec::new()))
            }
            op::COPY => self.copy(r),
            op::EVT_OPEN => {
                r.end().map_err(bad)?;
                fd_count(fds, 0)?;
                self.evt_open()
            }
            op::EVT_CLOSE_HANDLE => {
                let h = r.u32().map_err(bad)?;
                r.end().map_err(bad)?;
                self.evts
                    .remove(&h)
                    .ok_or_else(|| RemoteError::Refused(format!("no event channel handle {h}")))?;
                self.budget.give(Kind::EvtHandle);
                Ok((ok(), Vec::new()))
            }
            op::EVT_ALLOC_UNBOUND | op::EVT_BIND | op::EVT_NOTIFY | op::EVT_CLOSE => {
                use xenshare::platform::EventChannels;
                let h = r.u32().map_err(bad)?;
                let a = r.u32().map_err(bad)?;
                let b = r.u32().map_err(bad)?;
                r.end().map_err(bad)?;
                let e = self.evt(h)?;
                let mut w = ok();
                match r.op {
                    op::EVT_ALLOC_UNBOUND => {
                        w.u32(e.alloc_unbound(domid_any(a)?)?.0);
                    }
                    op::EVT_BIND => {
                        w.u32(e.bind_interdomain(domid_any(a)?, Port(b))?.0);
                    }
                    op::EVT_NOTIFY => e.notify(Port(a))?,
                    // 1: the port's delivery was not taken; its token is
                    // on the domain's pipe for it to take back.
                    _ => {
                        w.u32(u32::from(e.close_reporting(Port(a))?));
                    }
                }
                Ok((w, Vec::new()))
            }
            op::GRANTS => {
                self.need_privilege("the grant inspector")?;
                let want = r.u32().map_err(bad)?;
                let at = crate::inspect::Cursor::decode(r).map_err(bad)?;
                r.end().map_err(bad)?;
                let doms: Vec<Domain> = {
                    let all = lock(&self.shared.domains);
                    let mut v: Vec<Domain> = all
                        .values()
                        .filter(|d| want == u32::MAX || u32::from(d.id().0) == want)
                        .cloned()
                        .collect();
                    v.sort_by_key(|d| d.id());
                    v
                };
                if want != u32::MAX && doms.is_empty() {
                    return Err(RemoteError::Refused(format!("no domain {want} has joined")));
                }
                let mut w = ok();
                let q = lock(&self.shared.quarantined).clone();
                crate::inspect::write_page(&mut w, &doms, &q, at);
                Ok((w, Vec::new()))
            }
            op::QUARANTINE => {
                let on = r.bool().map_err(bad)?;
                let n = r.u16().map_err(bad)?;
                if usize::from(n) > MAX_MAP_REFS {
                    return Err(bad(WireError::BadField("quarantine count")));
                }
                let mut refs = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let g = r.u32().map_err(bad)?;
                    self.check_ref(g)?;
                    refs.push(g);
                }
                r.end().map_err(bad)?;
                let id = self.dom()?.id().0;
                let mut all = lock(&self.shared.quarantined);
                let set = all.entry(id).or_default();
                for g in refs {
                    if on {
                        set.insert(g);
                    } else {
                        set.remove(&g);
                    }
                }
                Ok((ok(), Vec::new()))
            }
            other => Err(bad(WireError::BadOp(other))),
        }
    }

    /// Refuses a grant ref outside this domain's table (what the domain
    /// can make us record per ref is then bounded by the table size).
    fn check_ref(&self, gref: u32) -> Result<(), RemoteError> {
        let entries = self.dom()?.grant_table_region().len() / 8;
        if (gref as usize) < entries {
            Ok(())
        } else {
            Err(RemoteError::Gnt(GntSt::BadGntref))
        }
    }

    /// Registers a chunk of the domain's memory: `fd` must be a sealed
    /// memfd of exactly `pages` pages (see [`Region::from_fd_sized`]).
    fn add_chunk(&mut self, fd: OwnedFd, pages: u64) -> Result<Reply, RemoteError> {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(xenshare_abi::PAGE_SIZE))
            .filter(|l| *l > 0 && *l <= xenshare_sim::region::MAX_FOREIGN_REGION)
            .ok_or_else(|| RemoteError::Refused(format!("bad chunk size of {pages} pages")))?;
        self.dom()?;
        if self.budget.take(Kind::Chunk).is_err() {
            // Retired chunks whose last mapping went give their place back.
            let before = self.retired.len();
            self.retired.retain(|w| w.strong_count() > 0);
            for _ in self.retired.len()..before {
                self.budget.give(Kind::Chunk);
            }
            self.budget.take(Kind::Chunk)?;
        }
        let added = Region::from_fd_sized(fd, true, Some(len))
            .map_err(|e| RemoteError::Refused(format!("bad chunk: {e}")))
            .and_then(|region| {
                self.dom()?
                    .memory()
                    .add_chunk(region)
                    .map_err(|e| RemoteError::Refused(e.to_string()))
            });
        match added {
            Ok(first) => {
                let mut w = Writer::new(op::OK);
                w.u64(first);
                Ok((w, Vec::new()))
            }
            Err(e) => {
                self.budget.give(Kind::Chunk);
                Err(e)
            }
        }
    }

    /// Opens an event channel handle. The daemon makes its wake-up pipe:
    /// one token (byte) per delivered port not yet taken, so the domain's
    /// end is readable exactly while it has something to take (see
    /// [`xenshare_sim::evtchn`]). The daemon keeps the non-blocking write
    /// end, a file description the domain never holds (so nothing it does
    /// can make a write block), and a read end (so a write never finds the
    /// pipe without readers); the domain gets a duplicate read end.
    fn evt_open(&mut self) -> Result<Reply, RemoteError> {
        use rustix::pipe::{pipe_with, PipeFlags};
        self.dom()?;
        self.budget.take(Kind::EvtHandle)?;
        let made = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).and_then(|(read, write)| {
            // One page holds a token for every port a domain can have
            // (small writes share the page), and bounds what a domain
            // that never reads makes the kernel hold for it.
            let _ = rustix::pipe::fcntl_setpipe_size(&write, WAKE_PIPE_BYTES);
            let theirs = rustix::io::fcntl_dupfd_cloexec(&read, 0)?;
            Ok((read, write, theirs))
        });
        let (read, write, theirs) = match made {
            Ok(p) => p,
            Err(e) => {
                self.budget.give(Kind::EvtHandle);
                return Err(RemoteError::Refused(format!("wake-up pipe: {e}")));
            }
        };
        let h = match self.dom() {
            Ok(d) => d.evtchn_with_wake_pipe(write, read),
            Err(e) => {
                self.budget.give(Kind::EvtHandle);
                return Err(e);
            }
        };
        let id = self.next_evt;
        self.next_evt = self.next_evt.wrapping_add(1).max(1);
        self.evts.insert(id, h);
        let mut w = Writer::new(op::OK);
        w.u32(id);
        Ok((w, vec![theirs]))
    }

    /// Maps grants for the domain. One reply carries at most [`MAX_FDS`]
    /// memfds: when the refs need more, the reply covers a prefix of them
    /// (its count says how many) and the client asks again for the rest.
    ///
    /// A read-only map seals the granter's memfd against new writers
    /// (`F_SEAL_FUTURE_WRITE`) before any fd of it leaves the daemon: an
    /// fd, even reopened read-write through `/proc/self/fd`, then gives no
    /// way to write the granter's memory (no writable shared mmap, no
    /// `write`, no `mprotect` to writable, no hole punching). The granter's
    /// and the daemon's existing mappings stay writable. A chunk so sealed
    /// cannot be mapped writable by another process any more.
    fn map(&mut self, granter: DomId, ro: bool, refs: &[GrantRef]) -> Result<Reply, RemoteError> {
        let dom = self.dom()?;
        let access = if ro {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let mut body = Writer(Vec::new());
        let mut out: Vec<OwnedFd> = Vec::new();
        let mut regions: Vec<Arc<Region>> = Vec::new();
        let mut done = 0usize;
        let fail = |body: &mut Writer, st: GntSt| {
            body.u16(st.to_raw() as u16).u32(0).u16(0).u64(0);
        };
        for gref in refs {
            match dom.host_map(granter, *gref, access) {
                Ok((h, page)) => {
                    let idx = match regions.iter().position(|x| Arc::ptr_eq(x, &page.region)) {
                        Some(i) => i,
                        None if regions.len() == MAX_FDS => {
                            // Full: this ref and the rest go in the next reply.
                            let _ = dom.raw_unmap(h);
                            break;
                        }
                        None => {
                            let fd = if ro {
                                page.region
                                    .seal_future_write()
                                    .and_then(|()| page.region.reopen_readonly())
                                    .map_err(|_| GntSt::NoSpace)
                            } else if page.region.is_write_sealed() {
                                Err(GntSt::PermissionDenied)
                            } else {
                                rustix::io::fcntl_dupfd_cloexec(page.region.fd(), 0)
                                    .map_err(|_| GntSt::NoSpace)
                            };
                            match fd {
                                Ok(fd) => {
                                    out.push(fd);
                                    regions.push(page.region.clone());
                                    regions.len() - 1
                                }
                                Err(st) => {
                                    let _ = dom.raw_unmap(h);
                                    fail(&mut body, st);
                                    done += 1;
                                    continue;
                                }
                            }
                        }
                    };
                    body.u16(0).u32(h).u16(idx as u16).u64(page.page);
                }
                Err(st) => fail(&mut body, st),
            }
            done += 1;
        }
        let mut w = Writer::new(op::OK);
        w.u16(done as u16);
        w.0.extend_from_slice(&body.0);
        Ok((w, out))
    }

    fn copy(&mut self, r: &mut Reader<'_>) -> Result<Reply, RemoteError> {
        let n = r.u16().map_err(bad)? as usize;
        if n == 0 || n > MAX_COPY_OPS {
            return Err(bad(WireError::BadField("copy count")));
        }
        enum Side<'a> {
            Grant(GrantPtr),
            Local(&'a [u8]),
        }
        let grant = |r: &mut Reader<'_>| -> Result<GrantPtr, RemoteError> {
            let dom = domid16(u32::from(r.u16().map_err(bad)?))?;
            let gref = GrantRef(r.u32().map_err(bad)?);
            let offset = r.u16().map_err(bad)?;
            Ok(GrantPtr { dom, gref, offset })
        };
        let mut specs = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u16().map_err(bad)?;
            if len as usize > xenshare_abi::PAGE_SIZE {
                return Err(bad(WireError::BadField("copy length")));
            }
            let src = if r.bool().map_err(bad)? {
                Side::Grant(grant(r)?)
            } else {
                let b = r.bytes(xenshare_abi::PAGE_SIZE).map_err(bad)?;
                if b.len() != len as usize {
                    return Err(bad(WireError::BadField("copy source length")));
                }
                Side::Local(b)
            };
            let dst = if r.bool().map_err(bad)? {
                Some(grant(r)?)
            } else {
                None
            };
            specs.push((len, src, dst));
        }
        r.end().map_err(bad)?;
        let dom = self.dom()?;
        let mut bufs: Vec<Vec<u8>> = specs
            .iter()
            .map(|(len, _, d)| {
                if d.is_none() {
                    vec![0u8; *len as usize]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let mut ops: Vec<CopyOp<'_>> = specs
            .iter()
            .zip(bufs.iter_mut())
            .map(|((len, src, dst), buf)| CopyOp {
                src: match src {
                    Side::Grant(p) => CopySrc::Grant(*p),
                    Side::Local(b) => CopySrc::Local(b),
                },
                dst: match dst {
                    Some(p) => CopyDst::Grant(*p),
                    None => CopyDst::Local(buf.as_mut_slice()),
                },
                len: *len,
                status: GntSt::Okay,
            })
            .collect();
        dom.importer().copy(&mut ops);
        let statuses: Vec<GntSt> = ops.iter().map(|o| o.status).collect();
        drop(ops);
        let mut w = Writer::new(op::OK);
        w.u16(n as u16);
        for (st, buf) in statuses.iter().zip(bufs.iter()) {
            w.u16(st.to_raw() as u16);
            w.bytes(if st.is_ok() { buf } else { &[] });
        }
        Ok((w, Vec::new()))
    }
}

fn domid_any(v: u32) -> Result<DomId, RemoteError> {
    if v == u32::from(DomId::SELF.0) {
        return Ok(DomId::SELF);
    }
    domid16(v)
}
