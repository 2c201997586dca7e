//! The front end: a block device on a blkif ring.
//!
//! [`BlkFront`] owns what outlives a connection — the exporter, the event
//! handle, the granted ring pages and the persistent-grant pool — and
//! [`BlkFront::connect`] runs the handshake, returning a [`Disk`] that
//! borrows the ring. (The ring's shared memory belongs to a
//! [`crate::grant::Share`]; the `Disk` borrowing it is how the type system
//! makes sure the ring is never used after its pages are revoked.)
//!
//! I/O: `read_at` / `write_at` split an access into ring requests of up to
//! [`Disk::max_request_bytes`] (11 pages, or the indirect limit) and keep as
//! many in flight as the ring and the grant table allow; `submit_*` /
//! [`Disk::wait`] expose the same machinery one request at a time with any
//! number in flight; [`Disk::plug`] / [`Disk::unplug`] publish a batch of
//! them with one index update and at most one notification,
//! [`Disk::wait_all`] takes every finished one at once (one wake-up for
//! many), and [`Disk::recycle`] hands read buffers back for reuse;
//! [`Disk::wait_all_with`] takes them too but shows each read's data in
//! place (the persistent pages the back end filled) instead of copying it.
//! [`Disk::read_with`] reads without the second copy: it shows the caller
//! the persistent pages the back end filled, read-only, in place and in
//! order, for the length of one closure call each. Each
//! request's pages are either granted for that
//! request alone (zeroed, read-only for writes) and revoked when it
//! completes, or — with persistent grants — taken from a pool of pages
//! granted once, data being copied in and out.
//!
//! Hardening: responses are copied once; the ring checks the producer
//! index and [`Outstanding`] the id (in range, outstanding) and opcode. A
//! request's grants are revoked *before* its data is used; if the back end
//! still maps one, the disk breaks ([`BlkError::GrantStillMapped`]) and
//! the page is dropped into the exporter's quarantine — never reused (the
//! XSA-396 rule). After any violation or timeout every call returns
//! [`BlkError::Broken`].

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use xenshare_abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY, BLKIF_SEGS_PER_INDIRECT_FRAME,
    XEN_IO_PROTO_ABI_NATIVE,
};
use xenshare_abi::PAGE_SIZE;
use zerocopy::{FromZeros, IntoBytes};

use super::{
    dec, BlkError, Deadline, DeviceError, DiskInfo, Features, DEVTYPE, MAX_RING_ORDER, SECTOR,
    XS_RETRIES,
};
use crate::event::Channel;
use crate::grant::{Busy, Exporter, GrantError, Share};
use crate::latch::Latch;
use crate::mem::{PageBuf, ReadOnly, SharedMem};
use crate::platform::{EventChannels, GrantBackend};
use crate::ring::{nr_entries, ring_bytes, FrontRing, Outstanding, RingError};
use crate::store::client::{Client, Transport};
use crate::store::xenbus::{
    check_peer_live, frontend_path, read_bool, read_domid, read_str_opt, read_u64, read_u64_opt,
    wait_state, write_state, XenbusState,
};
use crate::types::{Access, DomId, GrantRef};

/// How a front end connects and behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontConfig {
    /// The device id (`virtual-device`), e.g. 51712 for xvda.
    pub devid: u32,
    /// Ring order wanted (capped by the back end's `max-ring-page-order`).
    pub ring_order: u32,
    /// Ask for persistent grants.
    pub persistent: bool,
    /// Use indirect requests when the back end offers them.
    pub indirect: bool,
    /// Most segments per indirect request.
    pub max_indirect_segments: u32,
    /// Pages in the persistent-grant pool at most.
    pub max_persistent_pages: usize,
    /// Bound on the handshake and on waiting for any response.
    pub timeout: Option<Duration>,
    /// Rounds to re-check the ring before sleeping on the event channel
    /// while waiting for answers ([`crate::event::SPIN_BEFORE_SLEEP`] by
    /// default; 0 sleeps at once). The count starts again whenever a new
    /// answer arrives, so a back end working through a batch keeps the
    /// front end awake; that is bounded: the answers awaited are finite.
    pub spin: u32,
    /// Requests a large [`Disk::read_at`] / [`Disk::write_at`] is split
    /// into, kept in flight together so the back end fills one while this
    /// side copies another (each at least 64 KiB and at most
    /// [`Disk::max_request_bytes`]; 1 sends each as one request if it fits).
    pub pipeline_depth: usize,
}

impl FrontConfig {
    /// Defaults for device `devid`: two-page ring, persistent grants and
    /// indirect requests (up to 256 segments) if offered, 30 s timeout.
    pub fn new(devid: u32) -> Self {
        Self {
            devid,
            ring_order: 1,
            persistent: true,
            indirect: true,
            max_indirect_segments: 256,
            max_persistent_pages: 1024,
            timeout: Some(Duration::from_secs(30)),
            spin: crate::event::SPIN_BEFORE_SLEEP,
            pipeline_depth: 4,
        }
    }
}

/// The kind of an I/O request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush the disk cache.
    Flush,
    /// Write barrier (no data).
    Barrier,
    /// Discard a range.
    Discard,
}

/// Identifies a submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u64);

/// A finished submitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The tag [`Disk`]'s `submit_*` returned.
    pub tag: Tag,
    /// What it was.
    pub kind: IoKind,
    /// Its outcome.
    pub result: Result<(), BlkError>,
    /// The data of a successful read (empty otherwise, and empty when
    /// [`Disk::wait_all_with`] showed it in place). Hand the vector back
    /// with [`Disk::recycle`] once done with it, and a later read fills it
    /// again instead of allocating.
    pub data: Vec<u8>,
}

/// A finished submitted request waiting to be taken.
struct Done {
    c: Completion,
    /// The request's length in bytes.
    len: usize,
    /// The persistent pool pages a successful read's data still lies in
    /// (out of the free list until shown or copied out): the copy into
    /// [`Completion::data`] is made only by a call that delivers it, and
    /// [`Disk::wait_all_with`] shows the pages in place instead.
    held: Option<Vec<usize>>,
}

/// Pages of one request.
enum Pages<B: GrantBackend> {
    None,
    /// Granted for this request alone.
    Share(Share<B>),
    /// Indices into the persistent pool.
    Pool(Vec<usize>),
}

/// Who gets a request's result.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// A chunk of the running `read_at` / `write_at`, at this buffer offset.
    Call(usize),
    /// A submitted request.
    Tag(Tag),
}

/// Where the data of the running synchronous call goes.
enum Sink<'s> {
    /// Nowhere (writes, flushes, submitted requests).
    None,
    /// Copied into the caller's buffer ([`Disk::read_at`]).
    Buf(&'s mut [u8]),
    /// Shown page by page, in order ([`Disk::read_with`]).
    View(ViewSink<'s>),
}

/// The function of a [`Disk::read_with`] and the chunks it has not seen.
struct ViewSink<'s> {
    f: &'s mut dyn FnMut(usize, SharedMem<'_, ReadOnly>),
    /// Position of the next chunk to show.
    next: usize,
    /// Chunks that finished before an earlier one (at most one per
    /// request of the call).
    held: Vec<Held>,
}

/// A finished chunk of a [`Disk::read_with`] waiting to be shown.
struct Held {
    pos: usize,
    len: usize,
    data: HeldData,
}

enum HeldData {
    /// Persistent pool pages, still out of the free list.
    Pool(Vec<usize>),
    /// Data copied out of pages granted for the request alone.
    Bytes(Vec<u8>),
}

struct Pending<B: GrantBackend> {
    kind: IoKind,
    len: usize,
    data: Pages<B>,
    indirect: Pages<B>,
    owner: Owner,
}

/// The persistent-grant pool: single read-write pages granted once.
struct Pool<B: GrantBackend> {
    pages: Vec<Share<B>>,
    free: Vec<usize>,
    cap: usize,
    /// Emptied index lists of finished requests, reused so that taking
    /// pages allocates nothing (at most `max_lists`, one per ring slot).
    lists: Vec<Vec<usize>>,
    max_lists: usize,
}

impl<B: GrantBackend> Pool<B> {
    /// `n` free pages, growing the pool up to its cap; `None` if the pool
    /// cannot hold `n` free pages right now.
    fn take(
        &mut self,
        exporter: &Exporter<B>,
        peer: DomId,
        n: usize,
    ) -> Result<Option<Vec<usize>>, GrantError> {
        while self.free.len() < n && self.pages.len() < self.cap {
            let s = exporter.share(peer, 1, Access::ReadWrite)?;
            self.free.push(self.pages.len());
            self.pages.push(s);
        }
        if self.free.len() < n {
            return Ok(None);
        }
        let at = self.free.len() - n;
        let mut v = self.lists.pop().unwrap_or_default();
        v.extend(self.free.drain(at..));
        Ok(Some(v))
    }

    /// Gives a request's pages back to the free list, keeping its list.
    fn put(&mut self, mut v: Vec<usize>) {
        self.free.append(&mut v);
        if self.lists.len() < self.max_lists {
            self.lists.push(v);
        }
    }

    fn page(&self, idx: usize) -> Option<SharedMem<'_>> {
        self.pages.get(idx).map(|s| s.mem())
    }

    fn gref(&self, idx: usize) -> GrantRef {
        self.pages
            .get(idx)
            .and_then(|s| s.refs().first().copied())
            .unwrap_or_default()
    }
}

/// Calls `f` with the position and a read-only view of each of the pool
/// pages `idx` that hold `len` bytes of data, in order; false (and `f` not
/// called for the rest) if a page cannot be viewed.
fn show_pool<B: GrantBackend>(
    pool: &Pool<B>,
    idx: &[usize],
    len: usize,
    mut f: impl FnMut(usize, SharedMem<'_, ReadOnly>),
) -> bool {
    for (i, &k) in idx.iter().enumerate() {
        let n = len.saturating_sub(i * PAGE_SIZE).min(PAGE_SIZE);
        let Some(m) = pool.page(k).and_then(|m| m.slice(0, n).ok()) else {
            return false;
        };
        f(i * PAGE_SIZE, m.read_only());
    }
    true
}

/// Calls `f` with the position and a read-only view of each page-sized
/// piece of `b`, shown through a private page (made on first use); false
/// (and `f` not called for the rest) if the page cannot be written.
fn show_bytes(
    scratch: &mut Option<PageBuf>,
    b: &[u8],
    mut f: impl FnMut(usize, SharedMem<'_, ReadOnly>),
) -> bool {
    let page = scratch.get_or_insert_with(|| PageBuf::new(1));
    for (i, c) in b.chunks(PAGE_SIZE).enumerate() {
        let m = page.mem();
        let Ok(w) = m.write(0, c).and_then(|()| m.slice(0, c.len())) else {
            return false;
        };
        f(i * PAGE_SIZE, w.read_only());
    }
    true
}

/// Copies the data of a finished read still held in pool pages into its
/// completion (into a recycled buffer if one is spare) and gives the pages
/// back to the pool. A page that cannot be read fails the completion, as
/// in [`Disk::read_at`].
fn copy_out_held<B: GrantBackend>(pool: &mut Pool<B>, spare: &mut Vec<Vec<u8>>, d: &mut Done) {
    let Some(v) = d.held.take() else {
        return;
    };
    let mut data = spare.pop().unwrap_or_default();
    data.resize(d.len, 0);
    let ok = data.chunks_mut(PAGE_SIZE).enumerate().all(|(i, dst)| {
        v.get(i)
            .and_then(|&k| pool.page(k))
            .is_some_and(|m| m.read(0, dst).is_ok())
    });
    pool.put(v);
    if ok {
        d.c.data = data;
    } else {
        d.c.result = Err(BlkError::Core(DeviceError::Closed));
    }
}

/// The per-connection state a [`Disk`] works on.
struct Io<B: GrantBackend, E: EventChannels> {
    exporter: Exporter<B>,
    backend: DomId,
    chan: Channel<E>,
    info: DiskInfo,
    cfg: FrontConfig,
    inflight: Outstanding<Pending<B>>,
    pool: Pool<B>,
    completed: VecDeque<Done>,
    next_tag: u64,
    broken: Latch<BlkError>,
    closed: bool,
    /// Where a new [`Disk`] may re-attach to the ring: set when a `Disk` is
    /// dropped with nothing in flight (then every private index equals
    /// `rsp_cons`, so attaching there restores the ring exactly).
    resume: Option<u32>,
    /// Chunks of the running synchronous call still in flight.
    call_left: usize,
    /// Between [`Disk::plug`] and [`Disk::unplug`]: requests go on the ring
    /// unpublished, to be published (and notified) together.
    plugged: bool,
    /// Read buffers handed back with [`Disk::recycle`], reused for the
    /// data of later completions (at most [`SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
    /// The first error of the running synchronous call.
    call_err: Option<BlkError>,
    /// A synchronous call or a [`Disk::wait_all_with`] is running (still
    /// set at the next call's start only if that one unwound: see
    /// [`BlkError::Interrupted`]).
    in_call: bool,
    /// The page [`Disk::read_with`] shows data through when it had to be
    /// copied out of per-request grants (made on first use).
    scratch: Option<PageBuf>,
}

/// A block front end; see the module docs.
pub struct BlkFront<B: GrantBackend, E: EventChannels> {
    exporter: Exporter<B>,
    evt: Arc<E>,
    cfg: FrontConfig,
    dir: String,
    ring: Option<Share<B>>,
    io: Option<Io<B, E>>,
}

impl<B: GrantBackend, E: EventChannels> core::fmt::Debug for BlkFront<B, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkFront")
            .field("dir", &self.dir)
            .field("connected", &self.io.is_some())
            .finish()
    }
}

/// Outcome of [`BlkFront::release`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Shares revoked.
    pub revoked: usize,
    /// Shares the back end still maps, now in quarantine.
    pub quarantined: usize,
}

fn release_share<B: GrantBackend>(s: Share<B>, r: &mut ReleaseReport) {
    match s.try_unshare() {
        Ok(pages) => {
            drop(pages);
            r.revoked += 1;
        }
        Err(Busy(s)) => {
            // Dropping a live share quarantines it: never reused.
            drop(s);
            r.quarantined += 1;
        }
    }
}

/// The back end's feature keys as they read now.
fn read_features<T: Transport>(xs: &mut Client<T>, back: &str) -> Result<Features, BlkError> {
    Ok(Features {
        flush: read_bool(xs, back, "feature-flush-cache")?,
        barrier: read_bool(xs, back, "feature-barrier")?,
        discard: read_bool(xs, back, "feature-discard")?,
        discard_granularity: read_u64_opt(xs, back, "discard-granularity")?.unwrap_or(0),
        discard_alignment: read_u64_opt(xs, back, "discard-alignment")?.unwrap_or(0),
        max_indirect_segments: read_u64_opt(xs, back, "feature-max-indirect-segments")?
            .unwrap_or(0)
            .min(u64::from(u16::MAX)) as u32,
        persistent: read_bool(xs, back, "feature-persistent")?,
        max_ring_order: read_u64_opt(xs, back, "max-ring-page-order")?
            .unwrap_or(0)
            .min(u64::from(MAX_RING_ORDER)) as u32,
    })
}

impl<B: GrantBackend, E: EventChannels> BlkFront<B, E> {
    /// A front end for device `cfg.devid` of this domain, granting through
    /// `exporter` and waiting on `evt` (a handle dedicated to this device).
    pub fn new(exporter: Exporter<B>, evt: Arc<E>, cfg: FrontConfig) -> Self {
        let dir = frontend_path(exporter.domid(), DEVTYPE, cfg.devid);
        Self {
            exporter,
            evt,
            cfg,
            dir,
            ring: None,
            io: None,
        }
    }

    /// The front end's XenStore directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Revokes (or quarantines, if the back end still maps them) every
    /// grant of the last connection: ring, pool and requests in flight.
    pub fn release(&mut self) -> ReleaseReport {
        let mut r = ReleaseReport::default();
        if let Some(mut io) = self.io.take() {
            for (_, _, p) in io.inflight.drain() {
                for pages in [p.data, p.indirect] {
                    match pages {
                        Pages::Share(s) => release_share(s, &mut r),
                        Pages::Pool(_) | Pages::None => {}
                    }
                }
            }
            for s in io.pool.pages.drain(..) {
                release_share(s, &mut r);
            }
            drop(io);
        }
        if let Some(s) = self.ring.take() {
            release_share(s, &mut r);
        }
        r
    }

    /// Connects to the back end named in the front end's directory: waits
    /// for it to publish its features (InitWait), grants and initialises
    /// the ring, allocates the event channel, writes ring-ref(s),
    /// event-channel, protocol and feature-persistent with state
    /// Initialised in one transaction, waits for Connected, reads the disk
    /// description and the features (again: Linux's blkback offers flush,
    /// discard and persistent grants only when it connects) and goes
    /// Connected. Any previous connection's grants are
    /// released first.
    pub fn connect<T: Transport>(
        &mut self,
        xs: &mut Client<T>,
    ) -> Result<Disk<'_, B, E>, BlkError> {
        self.release();
        let cfg = self.cfg;
        let dir = self.dir.clone();
        let never = || false;
        let back = read_str_opt(xs, &dir, "backend")?.ok_or_else(|| {
            DeviceError::bad_key(
                "backend",
                "missing (the toolstack did not create the device)",
            )
        })?;
        let backend = read_domid(xs, &dir, "backend-id")?;
        wait_state(xs, &back, cfg.timeout, &never, |s| {
            Ok::<_, DeviceError>(matches!(
                s,
                XenbusState::InitWait | XenbusState::Initialised
            ))
        })?;
        // Only the ring order matters before Connected: Linux's blkback
        // publishes `max-ring-page-order` (and the indirect limit) at
        // InitWait but flush, barrier, discard and persistent grants only in
        // its `connect()`, together with `sectors`; every feature is read
        // again below once the back end is Connected.
        let early = read_features(xs, &back)?;
        let order = cfg.ring_order.min(early.max_ring_order);
        let ring_share = self
            .exporter
            .share(backend, 1 << order, Access::ReadWrite)?;
        FrontRing::<_, BlkifRequest, BlkifResponse>::init(ring_share.mem())?;
        let chan = Channel::alloc_unbound(&self.evt, backend)?;
        let refs: Vec<GrantRef> = ring_share.refs().to_vec();
        let want_persistent = cfg.persistent;
        xs.transaction(XS_RETRIES, |tx| {
            if order == 0 {
                tx.write(&alloc::format!("{dir}/ring-ref"), &dec(refs[0].0))?;
            } else {
                tx.write(&alloc::format!("{dir}/ring-page-order"), &dec(order))?;
                tx.write(&alloc::format!("{dir}/num-ring-pages"), &dec(1u32 << order))?;
                for (i, r) in refs.iter().enumerate() {
                    tx.write(&alloc::format!("{dir}/ring-ref{i}"), &dec(r.0))?;
                }
            }
            tx.write(&alloc::format!("{dir}/event-channel"), &dec(chan.port().0))?;
            tx.write(
                &alloc::format!("{dir}/protocol"),
                XEN_IO_PROTO_ABI_NATIVE.as_bytes(),
            )?;
            tx.write(
                &alloc::format!("{dir}/feature-persistent"),
                &dec(u8::from(want_persistent)),
            )?;
            tx.write(
                &alloc::format!("{dir}/state"),
                &dec(XenbusState::Initialised.as_u32()),
            )?;
            Ok(())
        })?;
        // From here on the ring pages are the back end's to map: keep them
        // owned by `self` so they are released (or quarantined) properly.
        self.ring = Some(ring_share);
        let st = wait_state(xs, &back, cfg.timeout, &never, |s| {
            check_peer_live(s).map(|s| s == XenbusState::Connected)
        })?;
        debug_assert_eq!(st, XenbusState::Connected);
        let features = Features {
            max_ring_order: early.max_ring_order,
            ..read_features(xs, &back)?
        };
        let sectors = read_u64(xs, &back, "sectors")?;
        let sector_size = read_u64(xs, &back, "sector-size")?;
        let info = read_u64_opt(xs, &back, "info")?.unwrap_or(0);
        if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err(
                DeviceError::bad_key("sector-size", "not a power of two in 512..=65536").into(),
            );
        }
        if sectors.checked_mul(SECTOR).is_none() {
            return Err(DeviceError::bad_key("sectors", "disk size overflows").into());
        }
        let persistent = want_persistent && features.persistent;
        let ring_size = nr_entries::<BlkifRequest, BlkifResponse>(ring_bytes(order)) as u32;
        let pool_cap = cfg
            .max_persistent_pages
            .max(2 * BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let mut max_segments = BLKIF_MAX_SEGMENTS_PER_REQUEST as u32;
        if cfg.indirect && features.max_indirect_segments > max_segments {
            let mut m = features
                .max_indirect_segments
                .min(cfg.max_indirect_segments)
                .min((BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME) as u32);
            if persistent {
                // One request must always fit the pool: data + indirect pages.
                m = m.min((pool_cap - BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) as u32);
            }
            max_segments = m.max(max_segments);
        }
        let info = DiskInfo {
            sectors,
            sector_size: sector_size as u32,
            info: info as u32,
            features,
            persistent,
            ring_order: order,
            ring_size,
            max_segments,
        };
        write_state(xs, &dir, XenbusState::Connected)?;
        self.io = Some(Io {
            exporter: self.exporter.clone(),
            backend,
            chan,
            info,
            cfg,
            inflight: Outstanding::new(ring_size as usize),
            pool: Pool {
                pages: Vec::new(),
                free: Vec::new(),
                cap: pool_cap,
                lists: Vec::new(),
                max_lists: ring_size as usize,
            },
            completed: VecDeque::new(),
            next_tag: 0,
            broken: Latch::new(),
            closed: false,
            resume: Some(0),
            call_left: 0,
            call_err: None,
            in_call: false,
            plugged: false,
            spare: Vec::new(),
            scratch: None,
        });
        self.disk()
    }

    /// The connected disk again, after an earlier [`Disk`] handle was
    /// dropped (not closed). Fails if there is no connection, if it was
    /// closed, or if the last handle was dropped with requests in flight
    /// (their ring state is gone; the connection is then broken).
    pub fn disk(&mut self) -> Result<Disk<'_, B, E>, BlkError> {
        let (Some(ring), Some(io)) = (self.ring.as_ref(), self.io.as_mut()) else {
            return Err(BlkError::Core(DeviceError::Closed));
        };
        if io.closed {
            return Err(BlkError::Core(DeviceError::Closed));
        }
        io.broken.check()?;
        let Some(at) = io.resume.take() else {
            return Err(BlkError::Broken(String::from(
                "a disk handle was dropped with requests in flight",
            )));
        };
        // With nothing in flight every private index of the ring equals
        // `at` (at connect: 0, the state `init` left before the ring was
        // published), so attaching there restores it exactly.
        let ring = FrontRing::attach_at(ring, at)?;
        Ok(Disk { ring, io })
    }
}

impl<B: GrantBackend, E: EventChannels> Drop for BlkFront<B, E> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Internal outcome of trying to submit.
enum Submit {
    Done,
    /// No ring slot, id or pages right now; retry after a completion.
    /// Carries the error to report if nothing is in flight to wait for.
    Later(BlkError),
}

/// A connected block device. See the module docs.
///
/// Dropping it without [`Disk::close`] keeps the connection: get it back
/// with [`BlkFront::disk`] (only if nothing was in flight).
pub struct Disk<'f, B: GrantBackend, E: EventChannels> {
    ring: FrontRing<&'f Share<B>, BlkifRequest, BlkifResponse>,
    io: &'f mut Io<B, E>,
}

impl<B: GrantBackend, E: EventChannels> Drop for Disk<'_, B, E> {
    fn drop(&mut self) {
        let quiet = self.io.inflight.in_flight() == 0
            && self.ring.unpublished_requests() == 0
            && self.ring.req_prod_pvt() == self.ring.rsp_cons();
        if quiet && !self.ring.is_broken() {
            self.io.resume = Some(self.ring.rsp_cons());
        } else {
            self.io.resume = None;
        }
    }
}

impl<B: GrantBackend, E: EventChannels> core::fmt::Debug for Disk<'_, B, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Disk")
            .field("info", &self.io.info)
            .field("in_flight", &self.io.inflight.in_flight())
            .field("broken", &self.io.broken.cause())
            .finish()
    }
}

/// The smallest piece a large transfer is split into.
const PIPELINE_MIN: usize = 64 * 1024;
/// Recycled read buffers kept at most ([`Disk::recycle`]).
const SPARE_BUFFERS: usize = 64;

impl<B: GrantBackend, E: EventChannels> Disk<'_, B, E> {
    /// The disk as the back end described it, and what was negotiated.
    pub fn info(&self) -> &DiskInfo {
        &self.io.info
    }

    /// The error that broke the disk, if any.
    pub fn error(&self) -> Option<&BlkError> {
        self.io.broken.cause()
    }

    /// Whether a violation, a kept grant or a timeout broke the disk.
    pub fn is_broken(&self) -> bool {
        self.io.broken.is_tripped()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.io.inflight.in_flight()
    }

    /// The counters of the exporter this disk grants through (live shares,
    /// quarantine, busy results...).
    pub fn grant_stats(&self) -> crate::grant::GrantStats {
        self.io.exporter.stats()
    }

    /// Pages in the persistent-grant pool.
    pub fn pool_pages(&self) -> usize {
        self.io.pool.pages.len()
    }

    /// The most data one ring request carries.
    pub fn max_request_bytes(&self) -> usize {
        self.io.info.max_segments as usize * PAGE_SIZE
    }

    fn live(&self) -> Result<(), BlkError> {
        if self.io.closed {
            return Err(BlkError::Core(DeviceError::Closed));
        }
        self.io.broken.check()
    }

    fn fail(&mut self, e: BlkError) -> BlkError {
        self.io.broken.trip(e)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), BlkError> {
        let align = self.io.info.sector_size;
        if !offset.is_multiple_of(u64::from(align)) || !len.is_multiple_of(u64::from(align)) {
            return Err(BlkError::Misaligned { offset, len, align });
        }
        let size = self.io.info.size_bytes();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BlkError::OutOfRange { offset, len, size }),
        }
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of the sector
    /// size), with as many requests in flight as resources allow.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.live()?;
        self.check_range(offset, buf.len() as u64)?;
        self.sync_call(
            IoKind::Read,
            offset,
            buf.len(),
            |_| None,
            &mut Sink::Buf(buf),
        )
    }

    /// Reads `len` bytes at `offset` (both multiples of the sector size)
    /// without copying them into a buffer: `f` is called once per page, in
    /// disk order, with the page's position in the read (0, 4096, ...) and
    /// a read-only view of its bytes (4 KiB; the last one may be shorter).
    /// With persistent grants the views are the pages the back end's
    /// storage filled — the data is never copied on this side; otherwise
    /// each request's pages are copied out once before their grants are
    /// revoked (and shown only if revocation then succeeds), as for
    /// [`Disk::read_at`].
    ///
    /// A view cannot outlive the call of `f` it was passed to, and a page
    /// goes back to the pool (to be filled by a later request) only after
    /// `f` has returned. With persistent grants the back end keeps every
    /// pool page mapped, so a hostile back end can change a view's bytes
    /// while `f` reads them, exactly as it can change them while
    /// [`Disk::read_at`] copies them out: read each byte once (copy it out
    /// with [`SharedMem::read`] before parsing it), as with any shared
    /// memory. Requests that finish out of order are held back until
    /// every earlier page has been shown. Once a request fails, no further
    /// page is shown (held ones neither; their pool pages go back) and the
    /// call returns the error; pages shown before the failure arrived stay
    /// shown, so `f` has seen a prefix of the range at most.
    /// If `f` panics, the unwinding leaves the call's other requests in
    /// flight, so the disk is broken: the next call returns
    /// [`BlkError::Interrupted`].
    ///
    /// ```
    /// use xenshare::blk::{BlkError, Disk};
    /// use xenshare::platform::{EventChannels, GrantBackend};
    ///
    /// /// The sum of the bytes of the first 64 KiB, read in place.
    /// fn sum<B: GrantBackend, E: EventChannels>(disk: &mut Disk<'_, B, E>) -> Result<u64, BlkError> {
    ///     let mut sum = 0u64;
    ///     let mut copy = [0u8; 4096];
    ///     disk.read_with(0, 64 * 1024, |_pos, page| {
    ///         let bytes = &mut copy[..page.len()];
    ///         if page.read(0, bytes).is_ok() {
    ///             sum += bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
    ///         }
    ///     })?;
    ///     Ok(sum)
    /// }
    /// ```
    ///
    /// A view cannot be kept past its call (the page may be filled again
    /// by a later request):
    ///
    /// ```compile_fail
    /// use xenshare::blk::{BlkError, Disk};
    /// use xenshare::mem::{ReadOnly, SharedMem};
    /// use xenshare::platform::{EventChannels, GrantBackend};
    ///
    /// fn keep<'v, B: GrantBackend, E: EventChannels>(
    ///     disk: &mut Disk<'_, B, E>,
    ///     kept: &mut Vec<SharedMem<'v, ReadOnly>>,
    /// ) -> Result<(), BlkError> {
    ///     disk.read_with(0, 4096, |_pos, page| kept.push(page))
    /// }
    /// ```
    pub fn read_with<F>(&mut self, offset: u64, len: usize, mut f: F) -> Result<(), BlkError>
    where
        F: FnMut(usize, SharedMem<'_, ReadOnly>),
    {
        self.live()?;
        self.check_range(offset, len as u64)?;
        let mut sink = Sink::View(ViewSink {
            f: &mut f,
            next: 0,
            held: Vec::new(),
        });
        self.sync_call(IoKind::Read, offset, len, |_| None, &mut sink)
    }

    /// Shows `h` to the view sink if it is next in order, then every held
    /// chunk that follows on; otherwise holds it. Shown pool pages go back
    /// to the pool.
    fn deliver(&mut self, v: &mut ViewSink<'_>, h: Held) {
        if h.pos != v.next {
            v.held.push(h);
            return;
        }
        let mut h = h;
        loop {
            self.show(v, &h);
            v.next = h.pos + h.len;
            if let HeldData::Pool(p) = h.data {
                self.io.pool.put(p);
            } else if let HeldData::Bytes(b) = h.data {
                self.recycle(b);
            }
            match v.held.iter().position(|x| x.pos == v.next) {
                Some(i) => h = v.held.swap_remove(i),
                None => return,
            }
        }
    }

    /// Calls the view sink's function for each page of `h`.
    fn show(&mut self, v: &mut ViewSink<'_>, h: &Held) {
        let f = |pos: usize, m: SharedMem<'_, ReadOnly>| (v.f)(h.pos + pos, m);
        match &h.data {
            HeldData::Pool(p) => {
                show_pool(&self.io.pool, p, h.len, f);
            }
            HeldData::Bytes(b) => {
                show_bytes(&mut self.io.scratch, b, f);
            }
        }
    }

    /// Writes `buf` at `offset` (both multiples of the sector size).
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.live()?;
        self.check_range(offset, buf.len() as u64)?;
        if self.io.info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        self.sync_call(
            IoKind::Write,
            offset,
            buf.len(),
            |r| Some(&buf[r]),
            &mut Sink::None,
        )
    }

    /// Makes every completed write durable: `BLKIF_OP_FLUSH_DISKCACHE`, or
    /// a barrier if that is all the back end offers.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.live()?;
        let kind = self.flush_kind()?;
        self.sync_call(kind, 0, 0, |_| None, &mut Sink::None)
    }

    /// A write barrier (`BLKIF_OP_WRITE_BARRIER`, no data).
    pub fn barrier(&mut self) -> Result<(), BlkError> {
        self.live()?;
        if !self.io.info.features.barrier {
            return Err(BlkError::NotSupported("barrier"));
        }
        self.sync_call(IoKind::Barrier, 0, 0, |_| None, &mut Sink::None)
    }

    /// Discards `len` bytes at `offset`; later reads return zeroes.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlkError> {
        self.live()?;
        self.check_discard(offset, len)?;
        let len = usize::try_from(len).map_err(|_| BlkError::OutOfRange {
            offset,
            len,
            size: self.io.info.size_bytes(),
        })?;
        self.sync_call(IoKind::Discard, offset, len, |_| None, &mut Sink::None)
    }

    fn flush_kind(&self) -> Result<IoKind, BlkError> {
        let f = &self.io.info.features;
        if f.flush {
            Ok(IoKind::Flush)
        } else if f.barrier {
            Ok(IoKind::Barrier)
        } else {
            Err(BlkError::NotSupported("flush"))
        }
    }

    fn check_discard(&self, offset: u64, len: u64) -> Result<(), BlkError> {
        if !self.io.info.features.discard {
            return Err(BlkError::NotSupported("discard"));
        }
        if self.io.info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        self.check_range(offset, len)
    }

    /// Runs one synchronous call: chunks submitted as resources allow, then
    /// every chunk waited for (even after an error, so no request still
    /// targets the sink when this returns).
    fn sync_call<'b>(
        &mut self,
        kind: IoKind,
        offset: u64,
        len: usize,
        src: impl Fn(core::ops::Range<usize>) -> Option<&'b [u8]>,
        sink: &mut Sink<'_>,
    ) -> Result<(), BlkError> {
        // Answers are matched to a call by position alone (`Owner::Call`),
        // so requests left in flight by a call that unwound would be taken
        // for this call's: never go on after one.
        self.not_interrupted()?;
        self.io.in_call = true;
        let r = self.sync_call_inner(kind, offset, len, src, sink);
        self.io.in_call = false;
        // Chunks held back for in-order delivery after a failed chunk are
        // never shown: their pool pages go back.
        if let Sink::View(v) = sink {
            for h in v.held.drain(..) {
                if let HeldData::Pool(p) = h.data {
                    self.io.pool.put(p);
                }
            }
        }
        r
    }

    fn sync_call_inner<'b>(
        &mut self,
        kind: IoKind,
        offset: u64,
        len: usize,
        src: impl Fn(core::ops::Range<usize>) -> Option<&'b [u8]>,
        sink: &mut Sink<'_>,
    ) -> Result<(), BlkError> {
        self.io.call_left = 0;
        self.io.call_err = None;
        // A large transfer goes as several requests in flight, so the back
        // end works on one while this side copies another, not in turns.
        let max = match kind {
            IoKind::Read | IoKind::Write => self.max_request_bytes().min(
                len.div_ceil(self.io.cfg.pipeline_depth.max(1))
                    .next_multiple_of(PAGE_SIZE)
                    .max(PIPELINE_MIN),
            ),
            _ => usize::MAX,
        };
        let mut pos = 0;
        let mut first = true;
        let mut submit_err = None;
        while first || pos < len {
            first = false;
            let n = (len - pos).min(max);
            let r = self.submit_blocking(
                kind,
                offset + pos as u64,
                n,
                src(pos..pos + n),
                Owner::Call(pos),
                sink,
            );
            if let Err(e) = r {
                submit_err = Some(e);
                break;
            }
            self.io.call_left += 1;
            pos += n;
        }
        while self.io.call_left > 0 {
            self.reap(sink)?;
        }
        if let Some(e) = submit_err {
            return Err(e);
        }
        match self.io.call_err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn submit_blocking(
        &mut self,
        kind: IoKind,
        offset: u64,
        len: usize,
        src: Option<&[u8]>,
        owner: Owner,
        sink: &mut Sink<'_>,
    ) -> Result<(), BlkError> {
        loop {
            match self.try_submit(kind, offset, len, src, owner)? {
                Submit::Done => return Ok(()),
                Submit::Later(e) => {
                    if self.io.inflight.in_flight() == 0 {
                        return Err(e);
                    }
                    self.reap(sink)?;
                }
            }
        }
    }

    fn op_of(&self, kind: IoKind, npages: usize) -> u8 {
        match kind {
            IoKind::Read | IoKind::Write if npages > BLKIF_MAX_SEGMENTS_PER_REQUEST => {
                BLKIF_OP_INDIRECT
            }
            IoKind::Read => BLKIF_OP_READ,
            IoKind::Write => BLKIF_OP_WRITE,
            IoKind::Flush => BLKIF_OP_FLUSH_DISKCACHE,
            IoKind::Barrier => BLKIF_OP_WRITE_BARRIER,
            IoKind::Discard => BLKIF_OP_DISCARD,
        }
    }

    /// Pages for a request: from the pool, or freshly granted.
    fn pages(&mut self, n: usize, access: Access) -> Result<Option<Pages<B>>, BlkError> {
        if n == 0 {
            return Ok(Some(Pages::None));
        }
        let io = &mut *self.io;
        if io.info.persistent {
            return match io.pool.take(&io.exporter, io.backend, n) {
                Ok(Some(v)) => Ok(Some(Pages::Pool(v))),
                Ok(None) => Ok(None),
                Err(GrantError::TableFull | GrantError::OutOfMemory { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        match io.exporter.share(io.backend, n, access) {
            Ok(s) => Ok(Some(Pages::Share(s))),
            Err(GrantError::TableFull | GrantError::OutOfMemory { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Disk::pages`], copying out finished reads still held in pool
    /// pages (nobody took them yet) when the pool is short.
    fn pages_or_release_held(
        &mut self,
        n: usize,
        access: Access,
    ) -> Result<Option<Pages<B>>, BlkError> {
        match self.pages(n, access)? {
            None if self.release_held() => self.pages(n, access),
            p => Ok(p),
        }
    }

    fn page_mem<'p>(pool: &'p Pool<B>, pages: &'p Pages<B>, i: usize) -> Option<SharedMem<'p>> {
        match pages {
            Pages::None => None,
            Pages::Share(s) => s.mem().slice(i * PAGE_SIZE, PAGE_SIZE).ok(),
            Pages::Pool(v) => v.get(i).and_then(|&idx| pool.page(idx)),
        }
    }

    fn page_ref(pool: &Pool<B>, pages: &Pages<B>, i: usize) -> GrantRef {
        match pages {
            Pages::None => GrantRef::default(),
            Pages::Share(s) => s.refs().get(i).copied().unwrap_or_default(),
            Pages::Pool(v) => v.get(i).map(|&idx| pool.gref(idx)).unwrap_or_default(),
        }
    }

    fn give_back(&mut self, pages: Pages<B>) {
        if let Pages::Pool(v) = pages {
            self.io.pool.put(v);
        }
    }

    fn try_submit(
        &mut self,
        kind: IoKind,
        offset: u64,
        len: usize,
        src: Option<&[u8]>,
        owner: Owner,
    ) -> Result<Submit, BlkError> {
        self.live()?;
        if self.ring.is_full() || self.io.inflight.in_flight() >= self.io.inflight.capacity() {
            return Ok(Submit::Later(BlkError::Core(DeviceError::Ring(
                RingError::Full,
            ))));
        }
        let has_data = matches!(kind, IoKind::Read | IoKind::Write);
        let npages = if has_data { len.div_ceil(PAGE_SIZE) } else { 0 };
        let op = self.op_of(kind, npages);
        let nind = if op == BLKIF_OP_INDIRECT {
            npages.div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME)
        } else {
            0
        };
        let access = if kind == IoKind::Write {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let exhausted = || BlkError::Core(DeviceError::Grant(GrantError::TableFull));
        let Some(data) = self.pages_or_release_held(npages, access)? else {
            return Ok(Submit::Later(exhausted()));
        };
        let Some(indirect) = self.pages_or_release_held(nind, Access::ReadOnly)? else {
            self.give_back(data);
            return Ok(Submit::Later(exhausted()));
        };
        let sector = offset / SECTOR;
        let handle = self.io.cfg.devid as u16;
        let mut req = BlkifRequest::new_zeroed();
        let built = self.fill(&mut req, kind, op, sector, len, src, &data, &indirect);
        if let Err(e) = built {
            self.give_back(data);
            self.give_back(indirect);
            return Err(self.fail(e));
        }
        req.operation = op;
        if op != BLKIF_OP_INDIRECT && op != BLKIF_OP_DISCARD {
            req.handle = handle;
        }
        let pending = Pending {
            kind,
            len,
            data,
            indirect,
            owner,
        };
        // The operation the response must name: for an indirect request
        // the inner one (what Linux's blkback answers; see `finish`).
        let expect = match (op, kind) {
            (BLKIF_OP_INDIRECT, IoKind::Write) => BLKIF_OP_WRITE,
            (BLKIF_OP_INDIRECT, _) => BLKIF_OP_READ,
            _ => op,
        };
        let id = match self.io.inflight.start(u32::from(expect), pending) {
            Ok(id) => id,
            Err(e) => return Err(self.fail(e.into())),
        };
        // `id` sits at offset 8 in every request layout.
        req.id = id;
        if let Err(e) = self.ring.push_request(&req) {
            if let Some(p) = self.io.inflight.cancel(id) {
                self.give_back(p.data);
                self.give_back(p.indirect);
            }
            return Err(self.fail(e.into()));
        }
        if !self.io.plugged {
            self.publish()?;
        }
        Ok(Submit::Done)
    }

    /// Publishes every request put on the ring and notifies the back end
    /// if it asked to be (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`): one index
    /// update and at most one notification however many requests.
    fn publish(&mut self) -> Result<(), BlkError> {
        if self.ring.unpublished_requests() == 0 {
            return Ok(());
        }
        match self.ring.push_requests_and_check_notify() {
            Ok(true) => {
                if let Err(e) = self.io.chan.notify() {
                    return Err(self.fail(e.into()));
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(self.fail(e.into())),
        }
    }

    /// Fills `req` (and the granted pages) for one request.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        req: &mut BlkifRequest,
        kind: IoKind,
        op: u8,
        sector: u64,
        len: usize,
        src: Option<&[u8]>,
        data: &Pages<B>,
        indirect: &Pages<B>,
    ) -> Result<(), BlkError> {
        let pool = &self.io.pool;
        let mem_err = |_| BlkError::Core(DeviceError::Grant(GrantError::BadCount(0)));
        let npages = len.div_ceil(PAGE_SIZE);
        let seg = |i: usize| {
            let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
            BlkifRequestSegment {
                gref: Self::page_ref(pool, data, i).0,
                first_sect: 0,
                last_sect: (bytes / SECTOR as usize) as u8 - 1,
                _pad: [0; 2],
            }
        };
        if kind == IoKind::Write {
            let src = src.unwrap_or(&[]);
            for i in 0..npages {
                let chunk = &src[i * PAGE_SIZE..((i + 1) * PAGE_SIZE).min(len)];
                let m = Self::page_mem(pool, data, i).ok_or(BlkError::Core(DeviceError::Closed))?;
                m.write(0, chunk).map_err(mem_err)?;
            }
        }
        match op {
            BLKIF_OP_DISCARD => {
                let d = BlkifRequestDiscard {
                    operation: BLKIF_OP_DISCARD,
                    handle: self.io.cfg.devid as u16,
                    sector_number: sector,
                    nr_sectors: (len as u64) / SECTOR,
                    ..Default::default()
                };
                req.as_mut_bytes()[..core::mem::size_of::<BlkifRequestDiscard>()]
                    .copy_from_slice(d.as_bytes());
            }
            BLKIF_OP_INDIRECT => {
                let mut grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
                for (i, g) in grefs
                    .iter_mut()
                    .enumerate()
                    .take(npages.div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME))
                {
                    *g = Self::page_ref(pool, indirect, i).0;
                }
                for i in 0..npages {
                    let page = i / BLKIF_SEGS_PER_INDIRECT_FRAME;
                    let at = (i % BLKIF_SEGS_PER_INDIRECT_FRAME)
                        * core::mem::size_of::<BlkifRequestSegment>();
                    let m = Self::page_mem(pool, indirect, page)
                        .ok_or(BlkError::Core(DeviceError::Closed))?;
                    m.write_obj(at, &seg(i)).map_err(mem_err)?;
                }
                let r = BlkifRequestIndirect {
                    operation: BLKIF_OP_INDIRECT,
                    indirect_op: if kind == IoKind::Write {
                        BLKIF_OP_WRITE
                    } else {
                        BLKIF_OP_READ
                    },
                    nr_segments: npages as u16,
                    sector_number: sector,
                    handle: self.io.cfg.devid as u16,
                    indirect_grefs: grefs,
                    ..Default::default()
                };
                req.as_mut_bytes()[..core::mem::size_of::<BlkifRequestIndirect>()]
                    .copy_from_slice(r.as_bytes());
            }
            _ => {
                req.nr_segments = npages as u8;
                req.sector_number = sector;
                for (i, s) in req.seg.iter_mut().enumerate().take(npages) {
                    *s = seg(i);
                }
            }
        }
        Ok(())
    }

    /// Waits for at least one response and processes every one available.
    fn reap(&mut self, sink: &mut Sink<'_>) -> Result<usize, BlkError> {
        self.reap_at_least(sink, 1)
    }

    /// Waits until `need` responses (at most as many as are in flight) have
    /// arrived, sleeping for one notification for all of them rather than
    /// one per response, and processes every one available.
    fn reap_at_least(&mut self, sink: &mut Sink<'_>, need: usize) -> Result<usize, BlkError> {
        self.live()?;
        // Requests held back by `plug` go out before any wait for their
        // answers (as Linux flushes a plug before sleeping).
        self.publish()?;
        const SLICE: Duration = Duration::from_millis(50);
        let mut deadline = Deadline::new(self.io.cfg.timeout);
        let mut n = 0;
        let need = need.clamp(1, self.io.inflight.in_flight().max(1));
        loop {
            loop {
                let rsp = match self.ring.next_response() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Err(self.fail(e.into())),
                };
                self.finish(rsp, sink)?;
                n += 1;
            }
            if n >= need || (n > 0 && self.io.inflight.in_flight() == 0) {
                return Ok(n);
            }
            // Every response counted toward `need` answers a request that
            // was in flight, so the rest are still owed. The spin restarts
            // on progress (at most `more` times, as the count only grows
            // until it reaches `more`).
            let more = (need - n) as u32;
            let (mut spun, mut seen) = (0, 0);
            while spun < self.io.cfg.spin {
                match self.ring.unconsumed_responses() {
                    Ok(k) if k >= more => break,
                    Ok(k) if k > seen => (seen, spun) = (k, 0),
                    Ok(_) => {}
                    Err(e) => return Err(self.fail(e.into())),
                }
                core::hint::spin_loop();
                spun += 1;
            }
            match self.ring.final_check_for_responses_at_least(more) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Err(self.fail(e.into())),
            }
            let Some(slice) = deadline.slice(SLICE) else {
                return Err(self.fail(BlkError::Core(DeviceError::Timeout)));
            };
            let woke = match self.io.chan.wait(Some(slice)) {
                Ok(w) => w,
                Err(e) => return Err(self.fail(e.into())),
            };
            deadline.charge(slice);
            if woke.is_some() {
                if let Err(e) = self.io.chan.unmask() {
                    return Err(self.fail(e.into()));
                }
            }
        }
    }

    /// Revokes a request's own grants; `Err` counts the ones the back end
    /// still maps (now in quarantine).
    fn revoke(pages: Pages<B>) -> Result<Option<B::Pages>, usize> {
        match pages {
            Pages::Share(s) => match s.try_unshare() {
                Ok(revoked) => Ok(revoked.pages()),
                Err(Busy(s)) => {
                    drop(s);
                    Err(1)
                }
            },
            Pages::Pool(_) | Pages::None => Ok(None),
        }
    }

    /// Handles one response: checks it, ends its grants, delivers the result.
    fn finish(&mut self, rsp: BlkifResponse, sink: &mut Sink<'_>) -> Result<(), BlkError> {
        // Back ends that echo BLKIF_OP_INDIRECT (rather than the inner
        // operation, as Linux's blkback does) are accepted for requests that
        // really were indirect.
        let op = match self.io.inflight.get(rsp.id) {
            Some((inner, p))
                if rsp.operation == BLKIF_OP_INDIRECT && !matches!(p.indirect, Pages::None) =>
            {
                inner
            }
            _ => u32::from(rsp.operation),
        };
        let p = match self.ring.complete(&mut self.io.inflight, rsp.id, op) {
            Ok(p) => p,
            Err(e) => return Err(self.fail(e.into())),
        };
        let Pending {
            kind,
            len,
            data,
            indirect,
            owner,
        } = p;
        let mut result = match rsp.status {
            BLKIF_RSP_OKAY => Ok(()),
            BLKIF_RSP_EOPNOTSUPP => Err(BlkError::NotSupported("operation refused by back end")),
            s => Err(BlkError::Io(s)),
        };
        // Read data is copied out once while the grant is still ours to
        // read (platforms that retire revoked memory give nothing back to
        // read from afterwards); it is only delivered if revocation then
        // proves the back end let go.
        let mut data_out = Vec::new();
        if result.is_ok() && kind == IoKind::Read {
            let read_page = |i: usize, dst: &mut [u8]| -> bool {
                let m = match &data {
                    Pages::Share(s) => s.mem().slice(i * PAGE_SIZE, PAGE_SIZE).ok(),
                    Pages::Pool(v) => v.get(i).and_then(|&idx| self.io.pool.page(idx)),
                    Pages::None => None,
                };
                m.is_some_and(|m| m.read(0, dst).is_ok())
            };
            let copy_into = |dst: &mut [u8]| -> bool {
                dst.chunks_mut(PAGE_SIZE)
                    .enumerate()
                    .all(|(i, c)| read_page(i, c))
            };
            let ok = match owner {
                Owner::Call(off) => match sink {
                    Sink::Buf(b) if off + len <= b.len() => copy_into(&mut b[off..off + len]),
                    // Persistent pages are shown in place (below); pages
                    // granted for this request alone are copied out once
                    // now, before revocation, like any read.
                    Sink::View(_) if matches!(data, Pages::Pool(_)) => true,
                    Sink::View(_) => {
                        data_out = self.io.spare.pop().unwrap_or_default();
                        data_out.resize(len, 0);
                        copy_into(&mut data_out)
                    }
                    _ => false,
                },
                // Left in the pool pages until delivered (`Done::held`).
                Owner::Tag(_) if matches!(data, Pages::Pool(_)) => true,
                Owner::Tag(_) => {
                    // A recycled buffer of the right size is overwritten
                    // whole; only a grown tail is zeroed first.
                    data_out = self.io.spare.pop().unwrap_or_default();
                    data_out.resize(len, 0);
                    copy_into(&mut data_out)
                }
            };
            if !ok {
                result = Err(BlkError::Core(DeviceError::Closed));
                data_out.clear();
            }
        }
        let mut kept = 0;
        match indirect {
            // Indirect pages taken from the pool go back to it like data
            // pages (they were once dropped here, so every indirect request
            // leaked a pool page until the pool hit its cap).
            Pages::Pool(v) => {
                self.io.pool.put(v);
            }
            other => {
                if let Err(n) = Self::revoke(other) {
                    kept += n;
                }
            }
        }
        let (mut pool_pages, own) = match data {
            Pages::Pool(v) => (Some(v), None),
            other => match Self::revoke(other) {
                Ok(p) => (None, p),
                Err(n) => {
                    kept += n;
                    (None, None)
                }
            },
        };
        if kept > 0 {
            // XSA-396: the back end answered but kept our page. Never use
            // that data, never reuse the page; the disk is done.
            let e = self.fail(BlkError::GrantStillMapped(kept));
            result = Err(e);
            data_out.clear();
        }
        drop(own);
        match (owner, &mut *sink) {
            (Owner::Call(off), Sink::View(v)) if kind == IoKind::Read => {
                let data = match pool_pages.take() {
                    Some(p) => HeldData::Pool(p),
                    None => HeldData::Bytes(core::mem::take(&mut data_out)),
                };
                let held = Held {
                    pos: off,
                    len,
                    data,
                };
                if result.is_ok() && self.io.call_err.is_none() {
                    self.deliver(v, held);
                } else if let HeldData::Pool(p) = held.data {
                    self.io.pool.put(p);
                }
            }
            (Owner::Tag(_), _) if kind == IoKind::Read && result.is_ok() => {}
            _ => {
                if let Some(v) = pool_pages.take() {
                    self.io.pool.put(v);
                }
            }
        }
        match owner {
            Owner::Call(_) => {
                self.io.call_left = self.io.call_left.saturating_sub(1);
                if let Err(e) = result {
                    self.io.call_err.get_or_insert(e);
                }
            }
            Owner::Tag(tag) => self.io.completed.push_back(Done {
                c: Completion {
                    tag,
                    kind,
                    result,
                    data: data_out,
                },
                len,
                held: pool_pages,
            }),
        }
        match self.io.broken.cause() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn submit(
        &mut self,
        kind: IoKind,
        offset: u64,
        len: usize,
        src: Option<&[u8]>,
    ) -> Result<Tag, BlkError> {
        self.not_interrupted()?;
        self.live()?;
        let tag = Tag(self.io.next_tag);
        self.submit_blocking(kind, offset, len, src, Owner::Tag(tag), &mut Sink::None)?;
        self.io.next_tag += 1;
        Ok(tag)
    }

    fn check_one(&self, len: usize) -> Result<(), BlkError> {
        let max = self.max_request_bytes();
        if len > max {
            return Err(BlkError::TooLarge { len, max });
        }
        if len == 0 {
            return Err(BlkError::Misaligned {
                offset: 0,
                len: 0,
                align: self.io.info.sector_size,
            });
        }
        Ok(())
    }

    /// Submits one read request of `len` bytes at `offset` (at most
    /// [`Disk::max_request_bytes`]); its data arrives in the [`Completion`].
    /// Blocks only while the ring or the grant table is full.
    pub fn submit_read(&mut self, offset: u64, len: usize) -> Result<Tag, BlkError> {
        self.live()?;
        self.check_range(offset, len as u64)?;
        self.check_one(len)?;
        self.submit(IoKind::Read, offset, len, None)
    }

    /// Submits one write request (at most [`Disk::max_request_bytes`]).
    pub fn submit_write(&mut self, offset: u64, data: &[u8]) -> Result<Tag, BlkError> {
        self.live()?;
        self.check_range(offset, data.len() as u64)?;
        self.check_one(data.len())?;
        if self.io.info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        self.submit(IoKind::Write, offset, data.len(), Some(data))
    }

    /// Submits a flush.
    pub fn submit_flush(&mut self) -> Result<Tag, BlkError> {
        self.live()?;
        let kind = self.flush_kind()?;
        self.submit(kind, 0, 0, None)
    }

    /// Submits a discard.
    pub fn submit_discard(&mut self, offset: u64, len: u64) -> Result<Tag, BlkError> {
        self.live()?;
        self.check_discard(offset, len)?;
        let n = usize::try_from(len).map_err(|_| BlkError::TooLarge {
            len: usize::MAX,
            max: usize::MAX,
        })?;
        self.submit(IoKind::Discard, offset, n, None)
    }

    /// The next finished submitted request taken off the queue, its data
    /// (if still in pool pages) copied out.
    fn next_done(&mut self) -> Option<Completion> {
        let mut d = self.io.completed.pop_front()?;
        copy_out_held(&mut self.io.pool, &mut self.io.spare, &mut d);
        Some(d.c)
    }

    /// Copies out the data of every finished read still held in pool
    /// pages, so the pages can serve new requests; true if there was any.
    fn release_held(&mut self) -> bool {
        let io = &mut *self.io;
        let mut any = false;
        for d in io.completed.iter_mut().filter(|d| d.held.is_some()) {
            copy_out_held(&mut io.pool, &mut io.spare, d);
            any = true;
        }
        any
    }

    /// Fails with [`BlkError::Interrupted`] (and breaks the disk) if an
    /// earlier call unwound out of a caller's closure.
    fn not_interrupted(&mut self) -> Result<(), BlkError> {
        if self.io.in_call {
            return Err(self.fail(BlkError::Interrupted));
        }
        Ok(())
    }

    /// A finished submitted request, without waiting.
    pub fn poll(&mut self) -> Result<Option<Completion>, BlkError> {
        self.not_interrupted()?;
        if let Some(c) = self.next_done() {
            return Ok(Some(c));
        }
        self.live()?;
        loop {
            let rsp = match self.ring.next_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(self.fail(e.into())),
            };
            self.finish(rsp, &mut Sink::None)?;
        }
        Ok(self.next_done())
    }

    /// Holds back the publishing of requests submitted from now on, so
    /// that [`Disk::unplug`] publishes them together with one ring-index
    /// update and at most one notification (Linux's plugging). Waiting for
    /// any response ([`Disk::wait`], [`Disk::wait_all`], a `submit_*` that
    /// finds the ring full, `read_at`...) publishes them first, so a
    /// forgotten `unplug` delays requests but never loses them.
    pub fn plug(&mut self) {
        self.io.plugged = true;
    }

    /// Ends [`Disk::plug`]: publishes every request submitted since and
    /// notifies the back end at most once.
    pub fn unplug(&mut self) -> Result<(), BlkError> {
        self.io.plugged = false;
        self.not_interrupted()?;
        self.live()?;
        self.publish()
    }

    /// Gives a [`Completion::data`] buffer back: a later read's data goes
    /// into it instead of a fresh allocation (a few are kept; the rest are
    /// freed).
    pub fn recycle(&mut self, data: Vec<u8>) {
        // Kept with its length: a read of that size overwrites every byte
        // (or empties the vector on failure), so nothing is zeroed.
        if self.io.spare.len() < SPARE_BUFFERS && data.capacity() > 0 {
            self.io.spare.push(data);
        }
    }

    /// Waits until at least one submitted request has finished and moves
    /// every finished one into `out` (in completion order): one wait and
    /// one pass over the ring for many completions. Returns how many were
    /// added; 0 if none is in flight or finished.
    ///
    /// With many requests in flight it sleeps until three quarters of them
    /// have finished (one notification for the lot, the last quarter still
    /// keeping the back end busy while the caller submits more) rather
    /// than waking for each response.
    pub fn wait_all(&mut self, out: &mut Vec<Completion>) -> Result<usize, BlkError> {
        self.not_interrupted()?;
        self.wait_some()?;
        let n = self.io.completed.len();
        while let Some(c) = self.next_done() {
            out.push(c);
        }
        Ok(n)
    }

    /// [`Disk::wait_all`]'s wait: if nothing is finished yet, until three
    /// quarters of the requests in flight are. (Waking at half cost more
    /// wake-ups on both ends: 4 KiB random reads at 32 in flight were
    /// 0.38–0.42 of `pread` at half, 0.45–0.58 at three quarters,
    /// alternating runs on a loaded 2-core VM; seven eighths was no
    /// better and more variable.)
    fn wait_some(&mut self) -> Result<(), BlkError> {
        if self.io.completed.is_empty() && self.io.inflight.in_flight() > 0 {
            let need = self.io.inflight.in_flight() * 3 / 4;
            self.reap_at_least(&mut Sink::None, need)?;
        }
        Ok(())
    }

    /// Like [`Disk::wait_all`], but the data of each successful read is not
    /// copied into [`Completion::data`] (left empty): `f` is shown it in
    /// place instead, before the completion goes into `out`. `f` is called
    /// once per page of the read, in order, with the request's tag, the
    /// page's position in the read (0, 4096, ...) and a read-only view of
    /// its bytes (4 KiB; the last one may be shorter). Failed reads and
    /// other requests show nothing.
    ///
    /// With persistent grants the views are the pool pages the back end's
    /// storage filled, so the data is never copied on this side; a page
    /// goes back to the pool (to be filled again) only after `f` has
    /// returned for it. Without them, each request's pages were copied out
    /// once before their grants were revoked, and the copy is shown only
    /// if revocation succeeded (a back end that kept a page mapped fails
    /// the request with [`BlkError::GrantStillMapped`] and shows nothing),
    /// as for [`Disk::read_with`]. A hostile back end can change a pool
    /// page while `f` reads it, as with [`Disk::read_with`]: read each
    /// byte once.
    ///
    /// If `f` panics, the completion being shown is lost and the disk is
    /// broken: the next call returns [`BlkError::Interrupted`].
    ///
    /// ```
    /// use xenshare::blk::{BlkError, Completion, Disk};
    /// use xenshare::platform::{EventChannels, GrantBackend};
    ///
    /// /// Reads the first byte of 32 blocks, 32 requests in flight.
    /// fn first_bytes<B: GrantBackend, E: EventChannels>(
    ///     disk: &mut Disk<'_, B, E>,
    /// ) -> Result<Vec<(u64, u8)>, BlkError> {
    ///     let mut tags = Vec::new();
    ///     disk.plug();
    ///     for block in 0..32u64 {
    ///         tags.push((disk.submit_read(block * 4096, 4096)?, block));
    ///     }
    ///     disk.unplug()?;
    ///     let (mut firsts, mut done) = (Vec::new(), Vec::<Completion>::new());
    ///     while done.len() < tags.len() {
    ///         disk.wait_all_with(&mut done, |tag, _pos, page| {
    ///             let mut b = [0u8; 1];
    ///             if page.read(0, &mut b).is_ok() {
    ///                 if let Some(&(_, block)) = tags.iter().find(|(t, _)| *t == tag) {
    ///                     firsts.push((block, b[0]));
    ///                 }
    ///             }
    ///         })?;
    ///     }
    ///     for c in done {
    ///         c.result?;
    ///     }
    ///     Ok(firsts)
    /// }
    /// ```
    ///
    /// A view cannot be kept past its call (the page may be filled again
    /// by a later request):
    ///
    /// ```compile_fail,E0521
    /// use xenshare::blk::{BlkError, Completion, Disk};
    /// use xenshare::mem::{ReadOnly, SharedMem};
    /// use xenshare::platform::{EventChannels, GrantBackend};
    ///
    /// fn keep<'v, B: GrantBackend, E: EventChannels>(
    ///     disk: &mut Disk<'_, B, E>,
    ///     done: &mut Vec<Completion>,
    ///     kept: &mut Vec<SharedMem<'v, ReadOnly>>,
    /// ) -> Result<usize, BlkError> {
    ///     disk.wait_all_with(done, |_tag, _pos, page| kept.push(page))
    /// }
    /// ```
    pub fn wait_all_with<F>(
        &mut self,
        out: &mut Vec<Completion>,
        mut f: F,
    ) -> Result<usize, BlkError>
    where
        F: FnMut(Tag, usize, SharedMem<'_, ReadOnly>),
    {
        self.not_interrupted()?;
        self.wait_some()?;
        let n = self.io.completed.len();
        // Cleared only if no call of `f` unwinds (see `not_interrupted`).
        self.io.in_call = true;
        while let Some(Done { mut c, held, len }) = self.io.completed.pop_front() {
            let tag = c.tag;
            let shown = match held {
                Some(v) => {
                    let ok = show_pool(&self.io.pool, &v, len, |pos, m| f(tag, pos, m));
                    self.io.pool.put(v);
                    ok
                }
                None if !c.data.is_empty() => {
                    let data = core::mem::take(&mut c.data);
                    let ok = show_bytes(&mut self.io.scratch, &data, |pos, m| f(tag, pos, m));
                    self.recycle(data);
                    ok
                }
                None => true,
            };
            if !shown {
                c.result = Err(BlkError::Core(DeviceError::Closed));
            }
            out.push(c);
        }
        self.io.in_call = false;
        Ok(n)
    }

    /// Waits for the next finished submitted request; `None` if none is in
    /// flight.
    pub fn wait(&mut self) -> Result<Option<Completion>, BlkError> {
        self.not_interrupted()?;
        loop {
            if let Some(c) = self.next_done() {
                return Ok(Some(c));
            }
            if self.io.inflight.in_flight() == 0 {
                return Ok(None);
            }
            self.reap(&mut Sink::None)?;
        }
    }

    /// Closes the device: waits for requests in flight (unless broken),
    /// goes Closing, waits for the back end to leave Connected, goes
    /// Closed, waits for the back end to be Closed (Linux's blkback unmaps
    /// only then), and releases every request and pool grant (revoked, or
    /// quarantined if the back end still maps it). The ring pages are
    /// released by [`BlkFront::release`] (or the next connect, or drop).
    pub fn close<T: Transport>(mut self, xs: &mut Client<T>) -> Result<(), BlkError> {
        let mut first_err = None;
        if !self.io.broken.is_tripped() && !self.io.closed {
            while self.io.inflight.in_flight() > 0 {
                if let Err(e) = self.reap(&mut Sink::None) {
                    first_err = Some(e);
                    break;
                }
            }
        }
        self.io.closed = true;
        let dir = frontend_path(self.io.exporter.domid(), DEVTYPE, self.io.cfg.devid);
        let back = read_str_opt(xs, &dir, "backend")?;
        write_state(xs, &dir, XenbusState::Closing)?;
        if let Some(back) = &back {
            let never = || false;
            let waited = wait_state(xs, back, self.io.cfg.timeout, &never, |s| {
                Ok(!matches!(
                    s,
                    XenbusState::Connected | XenbusState::Initialised | XenbusState::Reconfiguring
                ))
            });
            if let Err(e) = waited {
                first_err.get_or_insert(e);
            }
        }
        // Linux's blkback unmaps the ring and the persistent grants only
        // when the front end goes Closed (its Closing merely echoes), so
        // go Closed first and revoke once the back end is Closed too (or
        // gone): revoking earlier would find every pool page still mapped.
        // Our grants stay owned (never reused) until then.
        write_state(xs, &dir, XenbusState::Closed)?;
        if let (Some(back), None) = (back.as_deref(), first_err.as_ref()) {
            let never = || false;
            // Closed; or already waiting for the next front end (a back
            // end that serves connection after connection goes Closed and
            // straight on to InitWait), or gone: unmapped in every case.
            let waited = wait_state(xs, back, self.io.cfg.timeout, &never, |s| {
                Ok(matches!(
                    s,
                    XenbusState::Closed
                        | XenbusState::Unknown
                        | XenbusState::Initialising
                        | XenbusState::InitWait
                ))
            });
            if let Err(e) = waited {
                first_err.get_or_insert(e);
            }
        }
        let mut r = ReleaseReport::default();
        for (_, _, p) in self.io.inflight.drain() {
            for pages in [p.data, p.indirect] {
                if let Pages::Share(s) = pages {
                    release_share(s, &mut r);
                }
            }
        }
        for s in self.io.pool.pages.drain(..) {
            release_share(s, &mut r);
        }
        self.io.pool.free.clear();
        match first_err {
            Some(e) => Err(e),
            None if r.quarantined > 0 => Err(BlkError::GrantStillMapped(r.quarantined)),
            None => Ok(()),
        }
    }
}
