//! The client library: a process joins the host daemon as a domain and gets
//! the same platform objects as an in-process sim `Domain`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags};
use xenshare::event::EventError;
use xenshare::grant::{Exporter, GntSt, GrantError, Importer, Revoked, TableBackend, TableView};
use xenshare::mem::SharedMem;
use xenshare::platform::{
    CopyDst, CopyOp, CopySrc, EventChannels, ForeignMapper, FrameAllocator, GrantBackend, PageSet,
    TableMemory,
};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::PAGE_SIZE;
use xenshare_sim::region::{Mapping, PageMap, Region, Stitched};

use crate::sock;
use crate::wire::{op, Reader, RemoteError, WireError, Writer, MAX_COPY_OPS, MAX_MAP_REFS};

/// The environment variable naming the host daemon's socket.
pub const ENV_HOST: &str = "XENSHARE_HOST";
/// The environment variable naming this process's domain id.
pub const ENV_DOMID: &str = "XENSHARE_DOMID";
/// The environment variable naming an inherited, already joined host
/// connection (a file descriptor number), as `xenshare exec` hands it down.
pub const ENV_HOST_FD: &str = "XENSHARE_HOST_FD";

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon's socket cannot be reached.
    #[error("cannot reach the xenshare host daemon at {path} ({err}); is `xenshare host --socket {path}` running?")]
    NoHost {
        /// The socket path.
        path: PathBuf,
        /// The error.
        err: rustix::io::Errno,
    },
    /// The connection failed.
    #[error("host connection: {0}")]
    Io(String),
    /// The daemon sent something malformed.
    #[error("bad reply from the host: {0}")]
    Wire(#[from] WireError),
    /// The daemon refused the request.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Setting up shared memory failed.
    #[error("memory: {0}")]
    Memory(#[from] xenshare_sim::region::RegionError),
    /// A required environment variable is missing or bad.
    #[error("{0}")]
    Env(String),
}

/// One RPC connection.
pub struct Conn {
    fd: Mutex<OwnedFd>,
}

impl Conn {
    /// Connects to the daemon at `path`.
    pub fn connect(path: &Path) -> Result<Arc<Conn>, ClientError> {
        let fd = sock::connect(path).map_err(|err| ClientError::NoHost {
            path: path.to_path_buf(),
            err,
        })?;
        Ok(Arc::new(Conn { fd: Mutex::new(fd) }))
    }

    /// Presents the host's privilege token (read from the file next to
    /// the host socket `host`), making this connection privileged.
    pub fn authenticate(&self, host: &Path) -> Result<(), ClientError> {
        let path = crate::toolstack::token_path(host);
        let token = crate::toolstack::Token::read(&path).map_err(|e| {
            ClientError::Env(format!(
                "this needs the host's privilege and {} cannot be read ({e}); only the host's owner may choose domain ids or inspect grants",
                path.display()
            ))
        })?;
        let mut w = Writer::new(op::AUTH);
        w.bytes(&token);
        self.call(&w, &[]).map(|_| ())
    }

    /// Sends a request and waits for its reply (body after the status
    /// opcode, and fds).
    pub fn call(
        &self,
        w: &Writer,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<sock::Packet, ClientError> {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        sock::send(fd.as_fd(), &w.0, fds).map_err(|e| ClientError::Io(e.to_string()))?;
        let p = sock::recv(fd.as_fd()).map_err(|e| ClientError::Io(e.to_string()))?;
        let mut r = Reader::new(&p.data)?;
        match r.op {
            op::OK => Ok(p),
            op::ERR => Err(RemoteError::decode(&mut r)?.into()),
            o => Err(WireError::BadOp(o).into()),
        }
    }

    /// Sends raw bytes as one message and returns the raw reply (tests).
    pub fn call_raw(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        sock::send(fd.as_fd(), data, &[]).map_err(|e| ClientError::Io(e.to_string()))?;
        let p = sock::recv(fd.as_fd()).map_err(|e| ClientError::Io(e.to_string()))?;
        Ok(p.data)
    }
}

fn body(p: &sock::Packet) -> Result<Reader<'_>, ClientError> {
    Ok(Reader::new(&p.data)?)
}

fn gnt(e: ClientError) -> GntSt {
    match e {
        ClientError::Remote(RemoteError::Gnt(s)) => s,
        _ => GntSt::GeneralError,
    }
}

fn evt_err(e: ClientError) -> EventError {
    match e {
        ClientError::Remote(RemoteError::Evt(e)) => e,
        ClientError::Io(_) => EventError::Closed,
        _ => EventError::Os(rustix::io::Errno::PROTO.raw_os_error()),
    }
}

/// This domain's grant table, mapped from the daemon's memfd.
#[derive(Clone)]
pub struct RemoteTable(Arc<Region>);

// SAFETY: the region is this domain's grant table, shared with the daemon
// that runs the pin protocol on it; `RemoteDomain::join` builds the one
// `TableBackend` over it.
unsafe impl TableMemory for RemoteTable {
    fn table(&self) -> SharedMem<'_> {
        self.0.mem()
    }
}

/// A chunk of this domain's RAM: a memfd of its own, registered with the
/// daemon. Retired (never reused) when dropped. Once registered, this
/// process keeps only the mapping, not the fd (the daemon holds the memfd),
/// so a pool of many small shares costs no fds here.
pub struct Chunk {
    region: Mapping,
    first: u64,
    conn: Arc<Conn>,
}

impl PageSet for Chunk {
    fn page_count(&self) -> usize {
        self.region.len() / PAGE_SIZE
    }
    fn mem(&self) -> SharedMem<'_> {
        self.region.mem()
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let mut w = Writer::new(op::RETIRE_CHUNK);
        w.u64(self.first);
        let _ = self.conn.call(&w, &[]);
    }
}

/// The frame allocator of a remote domain: one fresh memfd per allocation.
#[derive(Clone)]
pub struct RemoteFrames {
    conn: Arc<Conn>,
}

// SAFETY: every run is a fresh memfd of its own, registered with the daemon
// under fresh frame numbers; dropped runs are retired, never reissued.
unsafe impl FrameAllocator for RemoteFrames {
    type Frames = Chunk;

    fn alloc(&self, n: usize) -> Option<Chunk> {
        // Seals left open: the daemon seals against new writers before
        // handing the memory to a read-only mapper.
        let region = Region::new_share("xenshare-share", n.checked_mul(PAGE_SIZE)?).ok()?;
        let mut w = Writer::new(op::ADD_CHUNK);
        w.u64(n as u64);
        let p = self.conn.call(&w, &[region.fd()]).ok()?;
        let mut r = body(&p).ok()?;
        let first = r.u64().ok()?;
        Some(Chunk {
            region: region.into_mapping(),
            first,
            conn: self.conn.clone(),
        })
    }

    fn frame(frames: &Chunk, i: usize) -> u64 {
        frames.first + i as u64
    }
}

/// The export backend of a remote domain: the core's guest-owned table
/// backend over the mapped table, plus export-side unmap notifies kept by
/// the daemon (so they also fire when this process dies).
pub struct RemoteGrantBackend {
    table: TableBackend<RemoteTable, RemoteFrames>,
    conn: Arc<Conn>,
    notified: Mutex<Vec<GrantRef>>,
}

type Live = <TableBackend<RemoteTable, RemoteFrames> as GrantBackend>::Live;

// SAFETY: the primitives are the core's `TableBackend`. On top of it, a
// revocation never hands memory back: a chunk may have been mapped by another
// process (the daemon passed it the memfd), which can keep its own mmap after
// it "unmapped", so a revoked chunk is retired — its memfd closed here and its
// frames never reissued by the daemon — and `Revoked::Retired` comes back.
unsafe impl GrantBackend for RemoteGrantBackend {
    type Pages = Chunk;
    type Live = Live;

    fn domid(&self) -> DomId {
        self.table.domid()
    }
    unsafe fn share_new(&self, peer: DomId, n: usize, access: Access) -> Result<Live, GrantError> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.table.share_new(peer, n, access) }
    }
    unsafe fn share_pages(
        &self,
        peer: DomId,
        pages: Chunk,
        access: Access,
    ) -> Result<Live, (GrantError, Option<Chunk>)> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.table.share_pages(peer, pages, access) }
    }
    fn refs(live: &Live) -> &[GrantRef] {
        <TableBackend<RemoteTable, RemoteFrames> as GrantBackend>::refs(live)
    }
    fn live_mem(live: &Live) -> SharedMem<'_> {
        <TableBackend<RemoteTable, RemoteFrames> as GrantBackend>::live_mem(live)
    }
    unsafe fn try_revoke(&self, live: Live) -> Result<Revoked<Chunk>, Live> {
        if let Some(first) = Self::refs(&live).first().copied() {
            let mut n = self.notified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = n.iter().position(|r| *r == first) {
                n.swap_remove(i);
                drop(n);
                let mut w = Writer::new(op::FIRE_EXPORT_NOTIFY);
                w.u32(first.0);
                let _ = self.conn.call(&w, &[]);
            }
        }
        // SAFETY: `live` came from `self.table` (the caller's contract).
        match unsafe { self.table.try_revoke(live) }? {
            // Dropping the chunk retires it (RETIRE_CHUNK to the daemon).
            Revoked::Pages(chunk) => drop(chunk),
            Revoked::Retired => {}
        }
        Ok(Revoked::Retired)
    }
    fn leak(&self, live: Live) {
        self.table.leak(live)
    }
    fn table(&self) -> Option<&dyn TableView> {
        self.table.table()
    }
    fn quarantine_changed(&self, refs: &[GrantRef], quarantined: bool) {
        // Only for the inspector: a lost report must not fail the exporter.
        for batch in refs.chunks(MAX_MAP_REFS) {
            let mut w = Writer::new(op::QUARANTINE);
            w.u8(u8::from(quarantined)).u16(batch.len() as u16);
            for r in batch {
                w.u32(r.0);
            }
            let _ = self.conn.call(&w, &[]);
        }
    }
    fn set_unmap_notify(
        &self,
        live: &Live,
        byte_offset: Option<usize>,
        port: Option<Port>,
    ) -> Result<(), GrantError> {
        let refs = Self::refs(live);
        let first = *refs.first().ok_or(GrantError::BadCount(0))?;
        let page = byte_offset.map(|o| o / PAGE_SIZE).unwrap_or(0);
        let r = *refs.get(page).ok_or(GrantError::BadCount(page))?;
        let frame = self
            .table
            .table()
            .and_then(|t| t.entry(r))
            .map(|e| u64::from(e.frame))
            .ok_or(GrantError::Platform(GntSt::BadGntref))?;
        let mut w = Writer::new(op::SET_EXPORT_NOTIFY);
        w.u32(first.0)
            .u64(frame)
            .opt_u32(byte_offset.map(|o| (o % PAGE_SIZE) as u32))
            .opt_u32(port.map(|p| p.0));
        self.conn
            .call(&w, &[])
            .map_err(|e| GrantError::Platform(gnt(e)))?;
        self.notified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(first);
        Ok(())
    }
}

/// One grant mapped by a remote domain: the page is mapped here as it
/// arrives and its memfd closed, so mapping many single-page shares (a
/// block front end's persistent pool) holds no fd per share.
pub struct RemoteHandle {
    handle: u32,
    page: PageMap,
}

/// The import platform of a remote domain: map, unmap and copy are RPCs;
/// mapped memory arrives as memfds and is mmapped here (read-only maps get
/// a read-only fd).
pub struct RemoteMapper {
    conn: Arc<Conn>,
    domid: DomId,
}

impl ForeignMapper for RemoteMapper {
    type Handle = RemoteHandle;
    type Window = Stitched;

    fn domid(&self) -> DomId {
        self.domid
    }

    fn map_batch(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        access: Access,
        out: &mut Vec<Result<RemoteHandle, GntSt>>,
    ) {
        // A reply carries at most MAX_FDS memfds: the daemon answers for a
        // prefix of the refs when they need more, and we ask for the rest.
        let mut rest = refs;
        while !rest.is_empty() {
            let batch = &rest[..rest.len().min(MAX_MAP_REFS)];
            let mut w = Writer::new(op::MAP);
            w.u16(dom.0)
                .u8(u8::from(access.is_readonly()))
                .u16(batch.len() as u16);
            for r in batch {
                w.u32(r.0);
            }
            let res = self.conn.call(&w, &[]).and_then(|p| {
                let fds = p.fds;
                let mut r = Reader::new(&p.data)?;
                let n = r.u16()? as usize;
                if n == 0 || n > batch.len() {
                    return Err(WireError::BadField("map count").into());
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let st = GntSt::from_raw(r.u16()? as i16);
                    let (h, idx, page) = (r.u32()?, r.u16()? as usize, r.u64()?);
                    v.push(if st.is_ok() {
                        let mapped = fds
                            .get(idx)
                            .map(|fd| PageMap::new(fd.as_fd(), page, !access.is_readonly()));
                        match mapped {
                            Some(Ok(page)) => Ok(RemoteHandle { handle: h, page }),
                            Some(Err(_)) | None => {
                                let mut w = Writer::new(op::UNMAP);
                                w.u32(h);
                                let _ = self.conn.call(&w, &[]);
                                Err(GntSt::GeneralError)
                            }
                        }
                    } else {
                        Err(st)
                    });
                }
                r.end()?;
                Ok(v)
            });
            match res {
                Ok(v) => {
                    rest = &rest[v.len()..];
                    out.extend(v);
                }
                Err(e) => {
                    let st = gnt(e);
                    out.extend(batch.iter().map(|_| Err(st)));
                    rest = &rest[batch.len()..];
                }
            }
        }
    }

    fn unmap(&self, h: RemoteHandle) -> Result<(), GntSt> {
        let mut w = Writer::new(op::UNMAP);
        w.u32(h.handle);
        self.conn.call(&w, &[]).map(|_| ()).map_err(gnt)
    }

    fn window(&self, hs: &[RemoteHandle]) -> Result<Stitched, GntSt> {
        let pages: Vec<&PageMap> = hs.iter().map(|h| &h.page).collect();
        Stitched::from_page_maps(&pages).map_err(|_| GntSt::NoSpace)
    }

    unsafe fn window_mem(w: &Stitched) -> SharedMem<'_> {
        // Read-only handles were mmapped read-only (by the stitching, from
        // a read-only fd), so even a contract breach faults instead of
        // writing the granter's page.
        w.mem()
    }

    fn set_unmap_notify(
        &self,
        h: &RemoteHandle,
        clear_byte: Option<u16>,
        port: Option<Port>,
    ) -> Result<(), GntSt> {
        let mut w = Writer::new(op::SET_UNMAP_NOTIFY);
        w.u32(h.handle)
            .opt_u32(clear_byte.map(u32::from))
            .opt_u32(port.map(|p| p.0));
        self.conn.call(&w, &[]).map(|_| ()).map_err(gnt)
    }

    fn copy(&self, ops: &mut [CopyOp<'_>]) {
        for batch in ops.chunks_mut(MAX_COPY_OPS) {
            let mut w = Writer::new(op::COPY);
            w.u16(batch.len() as u16);
            let mut bad_local = false;
            for o in batch.iter() {
                w.u16(o.len);
                match &o.src {
                    CopySrc::Grant(p) => {
                        w.u8(1).u16(p.dom.0).u32(p.gref.0).u16(p.offset);
                    }
                    CopySrc::Local(b) => {
                        let Some(b) = b.get(..o.len as usize) else {
                            bad_local = true;
                            break;
                        };
                        w.u8(0).bytes(b);
                    }
                }
                match &o.dst {
                    CopyDst::Grant(p) => {
                        w.u8(1).u16(p.dom.0).u32(p.gref.0).u16(p.offset);
                    }
                    CopyDst::Local(b) => {
                        if b.len() < o.len as usize {
                            bad_local = true;
                        }
                        w.u8(0);
                    }
                }
            }
            if bad_local {
                batch.iter_mut().for_each(|o| o.status = GntSt::BadCopyArg);
                continue;
            }
            let res = self.conn.call(&w, &[]).and_then(|p| {
                let mut r = Reader::new(&p.data)?;
                let n = r.u16()? as usize;
                if n != batch.len() {
                    return Err(WireError::BadField("copy count").into());
                }
                for o in batch.iter_mut() {
                    o.status = GntSt::from_raw(r.u16()? as i16);
                    let data = r.bytes(PAGE_SIZE)?;
                    if let CopyDst::Local(b) = &mut o.dst {
                        if o.status.is_ok() {
                            match b.get_mut(..data.len()) {
                                Some(d) if data.len() == o.len as usize => d.copy_from_slice(data),
                                _ => o.status = GntSt::GeneralError,
                            }
                        }
                    }
                }
                Ok(())
            });
            if let Err(e) = res {
                let st = gnt(e);
                batch.iter_mut().for_each(|o| o.status = st);
            }
        }
    }
}

/// An event channel handle of a remote domain. Ports are bound by RPC; the
/// mask bitmap and the emulator's delivered bitmap (see
/// [`xenshare_sim::evtchn`]) are used here, in the `shared_info` memfd the
/// daemon shares with this process.
///
/// Wake-ups: every delivered port comes with one token, queued before the
/// port is marked delivered, and every port taken takes one token, so the
/// handle's fd is readable exactly while a port waits, as Linux's
/// `/dev/xen/evtchn` is. The daemon's tokens are bytes in a pipe it made
/// for the handle (this process holds a read end); tokens of this
/// process's own deliveries (an unmask finding the port pending) go to a
/// local semaphore eventfd. One epoll fd watches both:
/// [`RemoteEvtchn::wake_fd`].
pub struct RemoteEvtchn {
    conn: Arc<Conn>,
    domid: DomId,
    id: u32,
    pipe: OwnedFd,
    local: OwnedFd,
    epoll: OwnedFd,
    shinfo: Arc<Region>,
    ports: Mutex<Vec<Port>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for RemoteEvtchn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEvtchn")
            .field("dom", &self.domid)
            .field("id", &self.id)
            .finish()
    }
}

impl RemoteEvtchn {
    fn ports(&self) -> std::sync::MutexGuard<'_, Vec<Port>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rpc(&self, o: u8, a: u32, b: u32) -> Result<u32, EventError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EventError::Closed);
        }
        let mut w = Writer::new(o);
        w.u32(self.id).u32(a).u32(b);
        let p = self.conn.call(&w, &[]).map_err(|e| {
            if matches!(e, ClientError::Io(_)) {
                self.closed.store(true, Ordering::Release);
            }
            evt_err(e)
        })?;
        let mut r = body(&p).map_err(evt_err)?;
        Ok(r.u32().unwrap_or(0))
    }

    /// Queues a token of this process's own delivery.
    fn token(&self) {
        let _ = rustix::io::write(&self.local, &1u64.to_ne_bytes());
    }

    /// Takes one token, the daemon's or our own (they stand for the same
    /// thing: one delivered port). Never blocks: both fds are
    /// non-blocking, and the pipe's read end is ours alone to read.
    fn untoken(&self) {
        let mut b = [0u8; 8];
        if rustix::io::read(&self.pipe, &mut b[..1]).is_ok_and(|n| n == 1) {
            return;
        }
        let _ = rustix::io::read(&self.local, &mut b);
    }

    /// An fd readable exactly while a port of this handle is delivered and
    /// not yet taken (an epoll fd over the daemon's pipe and a local
    /// eventfd): poll it, then [`EventChannels::poll`] takes the port.
    /// Do not read it.
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    fn wait_wake(&self, left: Option<Duration>) -> Result<(), EventError> {
        xenshare_sim::evtchn::poll_readable(self.epoll.as_fd(), left)
            .map_err(|e| EventError::Os(e.raw_os_error()))
    }
}

impl Drop for RemoteEvtchn {
    fn drop(&mut self) {
        let mut w = Writer::new(op::EVT_CLOSE_HANDLE);
        w.u32(self.id);
        let _ = self.conn.call(&w, &[]);
    }
}

impl EventChannels for RemoteEvtchn {
    fn domid(&self) -> DomId {
        self.domid
    }
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, EventError> {
        let p = Port(self.rpc(op::EVT_ALLOC_UNBOUND, u32::from(remote.0), 0)?);
        self.ports().push(p);
        Ok(p)
    }
    fn bind_interdomain(&self, remote: DomId, rport: Port) -> Result<Port, EventError> {
        let p = Port(self.rpc(op::EVT_BIND, u32::from(remote.0), rport.0)?);
        self.ports().push(p);
        Ok(p)
    }
    fn notify(&self, port: Port) -> Result<(), EventError> {
        if !self.ports().contains(&port) {
            return Err(EventError::NotBound(port));
        }
        self.rpc(op::EVT_NOTIFY, port.0, 0).map(|_| ())
    }
    fn unmask(&self, port: Port) -> Result<(), EventError> {
        if !self.ports().contains(&port) {
            return Err(EventError::NotBound(port));
        }
        xenshare_sim::evtchn::unmask_and_redeliver(self.shinfo.mem(), port.0, || self.token());
        Ok(())
    }
    fn close(&self, port: Port) -> Result<(), EventError> {
        {
            let mut ports = self.ports();
            let i = ports
                .iter()
                .position(|p| *p == port)
                .ok_or(EventError::NotBound(port))?;
            ports.swap_remove(i);
        }
        // The daemon says whether the port's delivery was left untaken;
        // its token is then ours to take back.
        if self.rpc(op::EVT_CLOSE, port.0, 0)? != 0 {
            self.untoken();
        }
        Ok(())
    }
    fn poll(&self) -> Result<Option<Port>, EventError> {
        let ports = self.ports().clone();
        if let Some(p) = xenshare_sim::evtchn::deliver_one(self.shinfo.mem(), &ports) {
            self.untoken();
            return Ok(Some(p));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(EventError::Closed);
        }
        Ok(None)
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            // The fd stays readable while a port waits: nothing to drain.
            if let Some(p) = self.poll()? {
                return Ok(Some(p));
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Ok(None),
                },
                None => None,
            };
            self.wait_wake(left)?;
        }
    }
}

/// The exporter of a remote domain.
pub type RemoteExporter = Exporter<RemoteGrantBackend>;
/// The importer of a remote domain.
pub type RemoteImporter = Importer<RemoteMapper>;

/// A domain living in this process, joined to a host daemon.
#[derive(Clone)]
pub struct RemoteDomain {
    conn: Arc<Conn>,
    id: DomId,
    exporter: RemoteExporter,
    importer: RemoteImporter,
    shinfo: Arc<Region>,
    xs_path: PathBuf,
}

impl std::fmt::Debug for RemoteDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDomain")
            .field("id", &self.id)
            .finish()
    }
}

impl RemoteDomain {
    /// Joins the host daemon at `host` as a new domain: `None` lets the
    /// daemon assign the id; a chosen id needs the host's privilege (the
    /// token file next to the socket). The domain lives until this process
    /// exits.
    pub fn join(host: impl AsRef<Path>, domid: Option<DomId>) -> Result<RemoteDomain, ClientError> {
        let conn = Conn::connect(host.as_ref())?;
        if domid.is_some() {
            conn.authenticate(host.as_ref())?;
        }
        let mut w = Writer::new(op::JOIN);
        w.u32(domid.map(|d| u32::from(d.0)).unwrap_or(u32::MAX));
        Self::from_reply(conn, &w)
    }

    fn from_reply(conn: Arc<Conn>, w: &Writer) -> Result<RemoteDomain, ClientError> {
        let p = conn.call(w, &[])?;
        let mut r = body(&p)?;
        let id = DomId(r.u16()?);
        let xs = String::from_utf8_lossy(r.bytes(4096)?).into_owned();
        let mut fds = p.fds.into_iter();
        let (Some(table_fd), Some(shinfo_fd), None) = (fds.next(), fds.next(), fds.next()) else {
            return Err(WireError::BadField("join fds").into());
        };
        let table = Arc::new(Region::from_fd(table_fd, true)?);
        let shinfo = Arc::new(Region::from_fd(shinfo_fd, true)?);
        let backend = RemoteGrantBackend {
            // SAFETY: the table region was just mapped from the daemon's
            // memfd for this join; this is its only allocator.
            table: unsafe {
                TableBackend::new(id, RemoteTable(table), RemoteFrames { conn: conn.clone() })
            },
            conn: conn.clone(),
            notified: Mutex::new(Vec::new()),
        };
        Ok(RemoteDomain {
            exporter: Exporter::new(backend),
            importer: Importer::new(RemoteMapper {
                conn: conn.clone(),
                domid: id,
            }),
            conn,
            id,
            shinfo,
            xs_path: PathBuf::from(xs),
        })
    }

    /// Takes over the joined host connection `xenshare exec` handed down
    /// (`XENSHARE_HOST_FD`), at most once per process. `Ok(None)` if there
    /// is none.
    pub fn attach_inherited() -> Result<Option<RemoteDomain>, ClientError> {
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let Ok(v) = std::env::var(ENV_HOST_FD) else {
            return Ok(None);
        };
        let raw: i32 =
            v.trim().parse().ok().filter(|n| *n > 2).ok_or_else(|| {
                ClientError::Env(format!("{ENV_HOST_FD}={v} is not a descriptor"))
            })?;
        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(ClientError::Env(format!(
                "the host connection in {ENV_HOST_FD} is already in use by this process"
            )));
        }
        // Check it is a Unix socket before owning it.
        // SAFETY: `raw` is only borrowed for this fstat; if it is not open
        // fstat fails with EBADF.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let st = rustix::fs::fstat(borrowed)
            .map_err(|e| ClientError::Env(format!("{ENV_HOST_FD}={raw}: {e}")))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(ClientError::Env(format!(
                "{ENV_HOST_FD}={raw} is not a socket"
            )));
        }
        // SAFETY: the descriptor is open (fstat succeeded), was handed to
        // this process for this purpose by `xenshare exec`, and TAKEN
        // ensures it is owned once.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // Not inherited any further.
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let conn = Arc::new(Conn { fd: Mutex::new(fd) });
        Self::from_reply(conn, &Writer::new(op::ATTACH)).map(Some)
    }

    /// The domain this process runs as: the connection `xenshare exec`
    /// handed down if there is one, else a new domain joined through
    /// `XENSHARE_HOST` (with the id in `XENSHARE_DOMID` if set, which needs
    /// the host's privilege).
    pub fn join_from_env() -> Result<RemoteDomain, ClientError> {
        if let Some(d) = Self::attach_inherited()? {
            return Ok(d);
        }
        let host = std::env::var_os(ENV_HOST).ok_or_else(|| {
            ClientError::Env(format!("{ENV_HOST} is not set: run under `xenshare exec` or set it to the host daemon's socket"))
        })?;
        let domid = match std::env::var(ENV_DOMID) {
            Ok(s) => Some(DomId(s.trim().parse().map_err(|_| {
                ClientError::Env(format!("{ENV_DOMID}={s} is not a domain id"))
            })?)),
            Err(_) => None,
        };
        Self::join(host, domid)
    }

    /// The domain id.
    pub fn id(&self) -> DomId {
        self.id
    }

    /// Shares this domain's pages (export side of the safe grant API).
    pub fn exporter(&self) -> &RemoteExporter {
        &self.exporter
    }

    /// Maps and copies other domains' grants.
    pub fn importer(&self) -> &RemoteImporter {
        &self.importer
    }

    /// This domain's own xenstored socket (its connections are this
    /// domain).
    pub fn xenstore_path(&self) -> &Path {
        &self.xs_path
    }

    /// Opens an event channel handle.
    pub fn evtchn(&self) -> Result<Arc<RemoteEvtchn>, ClientError> {
        use rustix::event::epoll;
        let io = |e: rustix::io::Errno| ClientError::Io(e.to_string());
        let local = eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )
        .map_err(io)?;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io)?;
        let p = self.conn.call(&Writer::new(op::EVT_OPEN), &[])?;
        let id = body(&p)?.u32()?;
        let mut fds = p.fds.into_iter();
        let (Some(pipe), None) = (fds.next(), fds.next()) else {
            // The daemon opened the handle: give it back.
            let mut w = Writer::new(op::EVT_CLOSE_HANDLE);
            w.u32(id);
            let _ = self.conn.call(&w, &[]);
            return Err(WireError::BadField("event channel fds").into());
        };
        for (fd, key) in [(pipe.as_fd(), 0u64), (local.as_fd(), 1)] {
            epoll::add(
                &ep,
                fd,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::IN,
            )
            .map_err(io)?;
        }
        Ok(Arc::new(RemoteEvtchn {
            conn: self.conn.clone(),
            domid: self.id,
            id,
            pipe,
            local,
            epoll: ep,
            shinfo: self.shinfo.clone(),
            ports: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }))
    }
}

pub use crate::inspect::GrantReport;

/// Asks the daemon at `host` for the grant tables of `domid` (or all
/// joined domains), page by page.
pub fn grant_reports(host: &Path, domid: Option<DomId>) -> Result<Vec<GrantReport>, ClientError> {
    let conn = Conn::connect(host)?;
    conn.authenticate(host)?;
    let mut out = Vec::new();
    let mut at = crate::inspect::Cursor::default();
    for _ in 0..crate::inspect::MAX_PAGES {
        let mut w = Writer::new(op::GRANTS);
        w.u32(domid.map(|d| u32::from(d.0)).unwrap_or(u32::MAX));
        at.encode(&mut w);
        let p = conn.call(&w, &[])?;
        let mut r = body(&p)?;
        match crate::inspect::read_page(&mut r, &mut out)? {
            Some(next) => at = next,
            None => return Ok(out),
        }
    }
    Err(WireError::BadField("grant report never ends").into())
}

/// A domain held by a launcher (`xenshare exec`): the joined host
/// connection, to be handed to the program that runs as the domain. The
/// domain lives while any process holds the connection.
#[derive(Debug)]
pub struct Lease {
    fd: OwnedFd,
    id: DomId,
    xs_path: PathBuf,
}

impl Lease {
    /// Joins `host` as a new domain (see [`RemoteDomain::join`]) without
    /// mapping anything in this process.
    pub fn join(host: &Path, domid: Option<DomId>) -> Result<Lease, ClientError> {
        let conn = Conn::connect(host)?;
        if domid.is_some() {
            conn.authenticate(host)?;
        }
        let mut w = Writer::new(op::JOIN);
        w.u32(domid.map(|d| u32::from(d.0)).unwrap_or(u32::MAX));
        let p = conn.call(&w, &[])?;
        let mut r = body(&p)?;
        let id = DomId(r.u16()?);
        let xs = String::from_utf8_lossy(r.bytes(4096)?).into_owned();
        drop(p.fds);
        let fd = Arc::try_unwrap(conn)
            .map_err(|_| ClientError::Io("connection still shared".into()))?
            .fd
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        Ok(Lease {
            fd,
            id,
            xs_path: PathBuf::from(xs),
        })
    }

    /// The domain id the host assigned.
    pub fn id(&self) -> DomId {
        self.id
    }

    /// The domain's own xenstored socket.
    pub fn xenstore_path(&self) -> &Path {
        &self.xs_path
    }

    /// The connection's descriptor, made inheritable by programs this
    /// process starts (to pass as `XENSHARE_HOST_FD`).
    pub fn inheritable_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, ClientError> {
        rustix::io::fcntl_setfd(&self.fd, rustix::io::FdFlags::empty())
            .map_err(|e| ClientError::Io(e.to_string()))?;
        Ok(self.fd.as_fd())
    }
}
