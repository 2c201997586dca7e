//! The client library: a process joins the host daemon as a domain and gets
//! the same platform objects as an in-process sim `Domain`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags};
use xenshare::event::EventError;
use xenshare::grant::{
    Exporter, GntSt, GrantError, GrantTable, Importer, TableBackend, TableEntry,
};
use xenshare::mem::SharedMem;
use xenshare::platform::{
    CopyDst, CopyOp, CopySrc, EventChannels, ForeignMapper, FrameAllocator, GrantBackend, PageSet,
    TableMemory,
};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::event::{port_word_bit, SHARED_INFO_MASK_OFFSET, SHARED_INFO_PENDING_OFFSET};
use xenshare_abi::PAGE_SIZE;
use xenshare_sim::region::{Region, Stitched};
use xenshare_sim::ActiveGrant;

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

impl TableMemory for RemoteTable {
    fn table(&self) -> SharedMem<'_> {
        self.0.mem()
    }
}

/// A chunk of this domain's RAM: a memfd of its own, registered with the
/// daemon. Retired (never reused) when dropped.
pub struct Chunk {
    region: Region,
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

impl FrameAllocator for RemoteFrames {
    type Frames = Chunk;

    fn alloc(&self, n: usize) -> Option<Chunk> {
        let region = Region::new("xenshare-share", n.checked_mul(PAGE_SIZE)?).ok()?;
        let w = Writer::new(op::ADD_CHUNK);
        let p = self.conn.call(&w, &[region.fd()]).ok()?;
        let mut r = body(&p).ok()?;
        let first = r.u64().ok()?;
        Some(Chunk {
            region,
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

impl RemoteGrantBackend {
    /// The grant table.
    pub fn table(&self) -> &GrantTable<RemoteTable> {
        self.table.table()
    }
}

impl GrantBackend for RemoteGrantBackend {
    type Pages = Chunk;
    type Live = Live;

    fn domid(&self) -> DomId {
        self.table.domid()
    }
    fn share_new(&self, peer: DomId, n: usize, access: Access) -> Result<Live, GrantError> {
        self.table.share_new(peer, n, access)
    }
    fn share_pages(
        &self,
        peer: DomId,
        pages: Chunk,
        access: Access,
    ) -> Result<Live, (GrantError, Chunk)> {
        self.table.share_pages(peer, pages, access)
    }
    fn refs(live: &Live) -> &[GrantRef] {
        <TableBackend<RemoteTable, RemoteFrames> as GrantBackend>::refs(live)
    }
    fn live_mem(live: &Live) -> SharedMem<'_> {
        <TableBackend<RemoteTable, RemoteFrames> as GrantBackend>::live_mem(live)
    }
    fn try_revoke(&self, live: Live) -> Result<Chunk, Live> {
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
        self.table.try_revoke(live)
    }
    fn leak(&self, live: Live) {
        self.table.leak(live)
    }
    fn quarantine_changed(&self, refs: &[GrantRef], quarantined: bool) {
        // Only for the inspector: a lost report must not fail the exporter.
        let mut w = Writer::new(op::QUARANTINE);
        w.u8(u8::from(quarantined))
            .u16(refs.len().min(u16::MAX as usize) as u16);
        for r in refs.iter().take(u16::MAX as usize) {
            w.u32(r.0);
        }
        let _ = self.conn.call(&w, &[]);
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
            .entry(r)
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

/// One grant mapped by a remote domain.
pub struct RemoteHandle {
    handle: u32,
    fd: Arc<OwnedFd>,
    page: u64,
    writable: bool,
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
        for batch in refs.chunks(MAX_MAP_REFS) {
            let mut w = Writer::new(op::MAP);
            w.u16(dom.0)
                .u8(u8::from(access.is_readonly()))
                .u16(batch.len() as u16);
            for r in batch {
                w.u32(r.0);
            }
            let res = self.conn.call(&w, &[]).and_then(|p| {
                let fds: Vec<Arc<OwnedFd>> = p.fds.into_iter().map(Arc::new).collect();
                let mut r = Reader::new(&p.data)?;
                let n = r.u16()? as usize;
                if n != batch.len() {
                    return Err(WireError::BadField("map count").into());
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let st = GntSt::from_raw(r.u16()? as i16);
                    let (h, idx, page) = (r.u32()?, r.u16()? as usize, r.u64()?);
                    v.push(if st.is_ok() {
                        match fds.get(idx) {
                            Some(fd) => Ok(RemoteHandle {
                                handle: h,
                                fd: fd.clone(),
                                page,
                                writable: !access.is_readonly(),
                            }),
                            None => Err(GntSt::GeneralError),
                        }
                    } else {
                        Err(st)
                    });
                }
                Ok(v)
            });
            match res {
                Ok(v) => out.extend(v),
                Err(e) => {
                    let st = gnt(e);
                    out.extend(batch.iter().map(|_| Err(st)));
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
        let pages: Vec<_> = hs
            .iter()
            .map(|h| (h.fd.as_fd(), h.page, h.writable))
            .collect();
        Stitched::new(&pages).map_err(|_| GntSt::NoSpace)
    }

    fn window_mem(w: &Stitched) -> SharedMem<'_> {
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
/// pending and mask bitmaps are read here, in the `shared_info` memfd the
/// daemon shares with this process, and the daemon signals this handle's
/// eventfd when one of its ports becomes deliverable.
pub struct RemoteEvtchn {
    conn: Arc<Conn>,
    domid: DomId,
    id: u32,
    efd: OwnedFd,
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
    fn word(&self, base: usize, port: u32) -> Option<(&std::sync::atomic::AtomicU64, u64)> {
        let (w, b) = port_word_bit(port);
        let a = self.shinfo.mem().atomic_u64(base + w * 8).ok()?;
        Some((a, 1u64 << b))
    }

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

    fn wake(&self) {
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
    }

    /// The eventfd signalled when a port of this handle becomes deliverable.
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.efd.as_fd()
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
        if let Some((m, b)) = self.word(SHARED_INFO_MASK_OFFSET, port.0) {
            let was = m.fetch_and(!b, Ordering::AcqRel);
            let pending = self
                .word(SHARED_INFO_PENDING_OFFSET, port.0)
                .is_some_and(|(p, pb)| p.load(Ordering::Acquire) & pb != 0);
            if was & b != 0 && pending {
                self.wake();
            }
        }
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
        self.rpc(op::EVT_CLOSE, port.0, 0).map(|_| ())
    }
    fn poll(&self) -> Result<Option<Port>, EventError> {
        let ports = self.ports().clone();
        if let Some(p) = xenshare_sim::evtchn::deliver_one(self.shinfo.mem(), &ports) {
            return Ok(Some(p));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(EventError::Closed);
        }
        Ok(None)
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError> {
        xenshare_sim::evtchn::wait_on_eventfd(self.efd.as_fd(), timeout, || self.poll())
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
            table: TableBackend::new(id, RemoteTable(table), RemoteFrames { conn: conn.clone() }),
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
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let p = self.conn.call(&Writer::new(op::EVT_OPEN), &[efd.as_fd()])?;
        let id = body(&p)?.u32()?;
        Ok(Arc::new(RemoteEvtchn {
            conn: self.conn.clone(),
            domid: self.id,
            id,
            efd,
            shinfo: self.shinfo.clone(),
            ports: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }))
    }
}

/// One domain's grant table as the daemon sees it.
#[derive(Debug, Clone)]
pub struct GrantReport {
    /// The domain.
    pub domid: DomId,
    /// Entries in use (not invalid).
    pub entries: Vec<TableEntry>,
    /// Entries peers hold pinned, with pin counts.
    pub pins: Vec<ActiveGrant>,
    /// Pages of RAM in live chunks.
    pub used_pages: u64,
    /// Grants this domain has mapped.
    pub mapped: u32,
    /// References of shares waiting in the domain's quarantine (the peer
    /// still maps them), as the domain reported them.
    pub quarantined: Vec<GrantRef>,
}

/// Asks the daemon at `host` for the grant tables of `domid` (or all
/// joined domains).
pub fn grant_reports(host: &Path, domid: Option<DomId>) -> Result<Vec<GrantReport>, ClientError> {
    let conn = Conn::connect(host)?;
    conn.authenticate(host)?;
    let mut w = Writer::new(op::GRANTS);
    w.u32(domid.map(|d| u32::from(d.0)).unwrap_or(u32::MAX));
    let p = conn.call(&w, &[])?;
    let mut r = body(&p)?;
    let n = r.u16()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let domid = DomId(r.u16()?);
        let ne = r.u32()?;
        let mut entries = Vec::new();
        for _ in 0..ne.min(1 << 20) {
            entries.push(TableEntry {
                gref: GrantRef(r.u32()?),
                flags: r.u16()?,
                domid: DomId(r.u16()?),
                frame: r.u32()?,
            });
        }
        let np = r.u32()?;
        let mut pins = Vec::new();
        for _ in 0..np.min(1 << 20) {
            pins.push(ActiveGrant {
                gref: GrantRef(r.u32()?),
                mapper: DomId(r.u16()?),
                readers: r.u32()?,
                writers: r.u32()?,
            });
        }
        let used_pages = r.u64()?;
        let mapped = r.u32()?;
        let nq = r.u32()?;
        let mut quarantined = Vec::new();
        for _ in 0..nq.min(1 << 20) {
            quarantined.push(GrantRef(r.u32()?));
        }
        out.push(GrantReport {
            domid,
            entries,
            pins,
            used_pages,
            mapped,
            quarantined,
        });
    }
    Ok(out)
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
