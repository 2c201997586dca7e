//! The back end: serves a [`BlockStorage`] to one front end.
//!
//! [`BlkBack::run`] is one whole connection: publish features and go to
//! InitWait, wait for the front end's Initialised, read and check its keys,
//! map the ring, bind the event channel, publish the disk (`sectors`,
//! `sector-size`, `info`) and go to Connected, serve until the front end
//! closes (or the caller asks to stop, or the front end breaks the ring),
//! then unmap everything and go to Closing / Closed. Call it again to serve
//! the next connection.
//!
//! Every request is copied once out of the ring, parsed and validated by
//! [`super::wire`], and answered — a request that names a grant the front
//! end did not give us, a sector outside the disk or a malformed segment
//! gets `BLKIF_RSP_ERROR`, never a panic. With persistent grants
//! negotiated, pages are mapped once and kept, up to a bound, and released
//! when the connection ends; the storage then reads and writes those pages
//! themselves ([`BlockStorage::read_to_shared`] /
//! [`BlockStorage::write_from_shared`]: `preadv` / `pwritev` for a file),
//! with no bounce buffer and no allocation per request. Otherwise (or when
//! the pool is full) data moves by grant copy through one reused buffer, and
//! the hypervisor checks every grant on every copy. Only ring-level violations — a producer index
//! the front end could not legally have written — break the connection.

use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use xenshare_abi::blkif::{
    BlkifRequest, BlkifResponse, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SEGS_PER_INDIRECT_FRAME, VDISK_READONLY,
    XEN_IO_PROTO_ABI_NATIVE,
};

use super::wire::{self, DataOp, Limits, Reject, Request, Segment};
use super::{
    dec, BlkError, BlockStorage, DeviceError, SharedRead, StorageError, DEVTYPE, MAX_RING_ORDER,
    SECTOR, XS_RETRIES,
};
use crate::event::Channel;
use crate::grant::{Importer, Mapping};
use crate::mem::SharedMem;
use crate::platform::{CopyDst, CopyOp, CopySrc, EventChannels, ForeignMapper, GrantPtr};
use crate::ring::BackRing;
use crate::store::client::{Client, Transport};
use crate::store::xenbus::{
    backend_path, read_bool, read_str_opt, read_u64, read_u64_opt, wait_state, write_state,
    XenbusState,
};
use crate::types::{DomId, GrantRef, Port};

/// Requests served between two looks at the stop flag and the front end's
/// state, so teardown works however busy the front end keeps the ring.
const BATCH: u32 = 64;

/// Most reads handed to the storage in one [`BlockStorage::read_batch_to_shared`]
/// call. Small enough that the front end (which sleeps until three quarters of its
/// requests are answered) is woken while the back end still has requests
/// to serve, so both ends work at once.
const READ_BATCH: usize = 8;

/// Windows of one batch of reads: every segment of [`READ_BATCH`] requests.
const BATCH_WINDOWS: usize = READ_BATCH * xenshare_abi::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;

/// A direct read with every page mapped persistently, checked and waiting
/// to go to the storage with others.
struct QueuedRead {
    id: u64,
    operation: u8,
    offset: u64,
    len: u64,
    segs: wire::Inline<Segment, { xenshare_abi::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST }>,
}

/// Grant copies handed to the hypervisor at once on the copy path (a
/// request without persistent grants; 1 MiB is 256 segments, 8 batches).
const COPY_BATCH: usize = 64;

/// What a back end offers and how it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackConfig {
    /// The front end's domain.
    pub frontend: DomId,
    /// The device id (the `virtual-device` number, e.g. 51712 for xvda).
    pub devid: u32,
    /// The type directory of the back end's XenStore path
    /// (`backend/<type>/<fe>/<devid>`). [`DEVTYPE`] (`vbd`) by default; a
    /// userspace back end on a dom0 that also runs Linux's `xen-blkback`
    /// uses a private name (QEMU uses `qdisk`), or the kernel claims the
    /// device. The front end only follows its `backend` key, so any name
    /// works for it.
    pub backend_type: &'static str,
    /// Offer `feature-flush-cache`.
    pub flush: bool,
    /// Offer `feature-barrier`.
    pub barrier: bool,
    /// Offer `feature-discard`.
    pub discard: bool,
    /// `feature-max-indirect-segments` (0: do not offer indirect requests).
    pub max_indirect_segments: u16,
    /// Offer `feature-persistent`.
    pub persistent: bool,
    /// Most pages kept mapped for persistent grants (beyond that, copy).
    pub max_persistent_grants: usize,
    /// `max-ring-page-order` (at most [`MAX_RING_ORDER`]).
    pub max_ring_order: u32,
    /// Bound on handshake waits (`None`: wait until stopped).
    pub timeout: Option<Duration>,
    /// How often an idle back end checks the stop flag and XenStore.
    pub poll_interval: Duration,
    /// Rounds to re-check the ring for requests before sleeping on the
    /// event channel (200 by default; 0 sleeps at once). Short on purpose:
    /// unlike the front end, which spins for answers it is owed, the back
    /// end would spin for requests nobody may send, and on shared cores
    /// that spin takes the CPU its peers need (the block tests, eight
    /// threads on two cores, took 16.5 s instead of 10.7 s with 4096
    /// rounds, for no gain in the IOPS bench).
    pub spin: u32,
}

impl BackConfig {
    /// Everything offered, for `frontend`'s device `devid`.
    pub fn new(frontend: DomId, devid: u32) -> Self {
        Self {
            frontend,
            devid,
            backend_type: DEVTYPE,
            flush: true,
            barrier: true,
            discard: true,
            max_indirect_segments: 256,
            persistent: true,
            max_persistent_grants: 2048,
            max_ring_order: MAX_RING_ORDER,
            timeout: None,
            poll_interval: Duration::from_millis(20),
            spin: 200,
        }
    }
}

/// Why [`BlkBack::run`] returned normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackExit {
    /// The front end closed the device.
    FrontendClosed,
    /// The caller's stop flag was set.
    Stopped,
}

/// Counters of a back end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackStats {
    /// Requests answered OKAY.
    pub ok: u64,
    /// Requests answered ERROR or EOPNOTSUPP.
    pub failed: u64,
    /// Connections served.
    pub connections: u64,
    /// Pages mapped persistently right now.
    pub persistent_mapped: u64,
    /// Requests that came as `BLKIF_OP_INDIRECT`.
    pub indirect: u64,
    /// Flush and barrier requests.
    pub flushes: u64,
    /// Most segments seen in one request.
    pub max_segments: u64,
    /// Ring pages of the last connection.
    pub ring_pages: u64,
    /// Whether the last connection negotiated persistent grants.
    pub persistent: bool,
}

/// A block back end for one device of one front end.
pub struct BlkBack<S: BlockStorage, M: ForeignMapper, E: EventChannels> {
    importer: Importer<M>,
    evt: Arc<E>,
    storage: S,
    cfg: BackConfig,
    dir: String,
    buf: Vec<u8>,
    /// The indirect pages of the request being served, copied once.
    ind_copy: Vec<u8>,
    /// Its segment list, parsed from `ind_copy`.
    ind_segs: Vec<Segment>,
    /// Reads waiting to go to the storage together (at most [`READ_BATCH`]).
    queued: Vec<QueuedRead>,
    stats: BackStats,
    last_error: Option<BlkError>,
}

impl<S: BlockStorage, M: ForeignMapper, E: EventChannels> core::fmt::Debug for BlkBack<S, M, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkBack")
            .field("dir", &self.dir)
            .field("stats", &self.stats)
            .field("last_error", &self.last_error)
            .finish()
    }
}

/// What the front end asked for at connect time.
struct FrontKeys {
    refs: Vec<GrantRef>,
    port: Port,
    persistent: bool,
}

impl<S: BlockStorage, M: ForeignMapper, E: EventChannels> BlkBack<S, M, E> {
    /// A back end serving `storage` through `importer` (this domain's
    /// import side) and `evt` (an event handle dedicated to this device).
    pub fn new(importer: Importer<M>, evt: Arc<E>, storage: S, cfg: BackConfig) -> Self {
        let dir = backend_path(importer.domid(), cfg.backend_type, cfg.frontend, cfg.devid);
        Self {
            importer,
            evt,
            storage,
            cfg,
            dir,
            buf: Vec::new(),
            ind_copy: Vec::new(),
            ind_segs: Vec::new(),
            queued: Vec::new(),
            stats: BackStats::default(),
            last_error: None,
        }
    }

    /// The back end's XenStore directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, mutably.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Counters.
    pub fn stats(&self) -> BackStats {
        self.stats
    }

    /// The error that ended the last connection, if any.
    pub fn last_error(&self) -> Option<&BlkError> {
        self.last_error.as_ref()
    }

    fn limits(&self) -> Limits {
        Limits {
            max_indirect_segments: self.cfg.max_indirect_segments,
            discard: self.cfg.discard,
            flush: self.cfg.flush,
            barrier: self.cfg.barrier,
        }
    }

    /// Serves one connection, start to end (see the module docs). Returns
    /// when the front end closes or `stop` is set; a front end that breaks
    /// the ring ends it with the error (the back end unmaps everything and
    /// goes to Closing first).
    pub fn run<T: Transport>(
        &mut self,
        xs: &mut Client<T>,
        stop: &AtomicBool,
    ) -> Result<BackExit, BlkError> {
        let r = self.run_inner(xs, stop);
        if let Err(e) = &r {
            self.last_error = Some(e.clone());
        }
        r
    }

    fn run_inner<T: Transport>(
        &mut self,
        xs: &mut Client<T>,
        stop: &AtomicBool,
    ) -> Result<BackExit, BlkError> {
        let dir = self.dir.clone();
        let front = read_str_opt(xs, &dir, "frontend")?.ok_or_else(|| {
            DeviceError::bad_key(
                "frontend",
                "missing (the toolstack did not create the device)",
            )
        })?;
        self.publish_features(xs)?;
        let stopped = || stop.load(Ordering::Relaxed);
        let waited = wait_state(xs, &front, self.cfg.timeout, &stopped, |s| {
            Ok(s == XenbusState::Initialised)
        });
        match waited {
            Ok(_) => {}
            Err(BlkError::Core(DeviceError::Closed)) => {
                self.close_states(xs, &front, false);
                return Ok(BackExit::Stopped);
            }
            Err(e) => return Err(e),
        }
        let keys = match self.read_front_keys(xs, &front) {
            Ok(k) => k,
            Err(e) => {
                self.close_states(xs, &front, false);
                return Err(e);
            }
        };
        let served = self.connect_and_serve(xs, &front, &keys, stop);
        // Everything the front end granted is unmapped by now.
        let wait_front = matches!(served, Ok(BackExit::FrontendClosed));
        self.close_states(xs, &front, wait_front);
        served
    }

    fn publish_features<T: Transport>(&self, xs: &mut Client<T>) -> Result<(), BlkError> {
        let d = &self.dir;
        let c = &self.cfg;
        let flag = |b: bool| dec(u8::from(b));
        let gran = u64::from(self.storage.sector_size());
        xs.transaction(XS_RETRIES, |tx| {
            tx.write(&alloc::format!("{d}/feature-flush-cache"), &flag(c.flush))?;
            tx.write(&alloc::format!("{d}/feature-barrier"), &flag(c.barrier))?;
            tx.write(&alloc::format!("{d}/feature-discard"), &flag(c.discard))?;
            if c.discard {
                tx.write(&alloc::format!("{d}/discard-granularity"), &dec(gran))?;
                tx.write(&alloc::format!("{d}/discard-alignment"), b"0")?;
                tx.write(&alloc::format!("{d}/discard-secure"), b"0")?;
            }
            if c.max_indirect_segments > 0 {
                tx.write(
                    &alloc::format!("{d}/feature-max-indirect-segments"),
                    &dec(c.max_indirect_segments),
                )?;
            }
            tx.write(
                &alloc::format!("{d}/feature-persistent"),
                &flag(c.persistent),
            )?;
            tx.write(
                &alloc::format!("{d}/max-ring-page-order"),
                &dec(c.max_ring_order.min(MAX_RING_ORDER)),
            )?;
            tx.write(
                &alloc::format!("{d}/state"),
                &dec(XenbusState::InitWait.as_u32()),
            )?;
            Ok(())
        })?;
        Ok(())
    }

    fn read_front_keys<T: Transport>(
        &self,
        xs: &mut Client<T>,
        front: &str,
    ) -> Result<FrontKeys, BlkError> {
        let bad = |key: &str, why| BlkError::from(DeviceError::bad_key(key, why));
        let order = match read_u64_opt(xs, front, "ring-page-order")? {
            None => 0,
            Some(o) if o <= u64::from(self.cfg.max_ring_order.min(MAX_RING_ORDER)) => o as u32,
            Some(_) => return Err(bad("ring-page-order", "above max-ring-page-order")),
        };
        let mut refs = Vec::new();
        if read_u64_opt(xs, front, "ring-page-order")?.is_none() {
            refs.push(read_u64(xs, front, "ring-ref")?);
        } else {
            for i in 0..(1u32 << order) {
                refs.push(read_u64(xs, front, &alloc::format!("ring-ref{i}"))?);
            }
        }
        let refs = refs
            .into_iter()
            .map(|r| u32::try_from(r).map(GrantRef))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("ring-ref", "out of range"))?;
        let port = read_u64(xs, front, "event-channel")?;
        let port = u32::try_from(port).map_err(|_| bad("event-channel", "out of range"))?;
        if let Some(p) = read_str_opt(xs, front, "protocol")? {
            if p != XEN_IO_PROTO_ABI_NATIVE {
                return Err(bad("protocol", "unsupported ABI (only the native layout)"));
            }
        }
        let persistent = self.cfg.persistent && read_bool(xs, front, "feature-persistent")?;
        Ok(FrontKeys {
            refs,
            port: Port(port),
            persistent,
        })
    }

    fn connect_and_serve<T: Transport>(
        &mut self,
        xs: &mut Client<T>,
        front: &str,
        keys: &FrontKeys,
        stop: &AtomicBool,
    ) -> Result<BackExit, BlkError> {
        let fe = self.cfg.frontend;
        let map = self.importer.map_rw(fe, &keys.refs)?;
        let ring = BackRing::<_, BlkifRequest, BlkifResponse>::attach(&map)?;
        let chan = Channel::bind(&self.evt, fe, keys.port)?;
        let d = self.dir.clone();
        let size = self.storage.size();
        let ss = self.storage.sector_size();
        let info = if self.storage.read_only() {
            VDISK_READONLY
        } else {
            0
        };
        xs.transaction(XS_RETRIES, |tx| {
            tx.write(&alloc::format!("{d}/sectors"), &dec(size / SECTOR))?;
            tx.write(&alloc::format!("{d}/sector-size"), &dec(ss))?;
            tx.write(&alloc::format!("{d}/physical-sector-size"), &dec(ss))?;
            tx.write(&alloc::format!("{d}/info"), &dec(info))?;
            tx.write(
                &alloc::format!("{d}/state"),
                &dec(XenbusState::Connected.as_u32()),
            )?;
            Ok(())
        })?;
        self.stats.connections += 1;
        self.stats.ring_pages = keys.refs.len() as u64;
        self.stats.persistent = keys.persistent;
        let key = alloc::format!("{front}/state");
        let token = alloc::format!("blkback:{key}");
        xs.watch(&key, token.as_bytes())?;
        let mut persistent = BTreeMap::new();
        let r = self.serve(xs, front, &token, ring, &chan, keys, &mut persistent, stop);
        let _ = xs.unwatch(&key, token.as_bytes());
        drop(persistent);
        self.stats.persistent_mapped = 0;
        drop(chan);
        drop(map);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn serve<T: Transport>(
        &mut self,
        xs: &mut Client<T>,
        front: &str,
        token: &str,
        mut ring: BackRing<&Mapping<M>, BlkifRequest, BlkifResponse>,
        chan: &Channel<E>,
        keys: &FrontKeys,
        pmaps: &mut BTreeMap<u32, Mapping<M>>,
        stop: &AtomicBool,
    ) -> Result<BackExit, BlkError> {
        let limits = self.limits();
        // Reads a connection that ended in an error left queued name its
        // grants and ids: never serve them on this one.
        self.queued.clear();
        loop {
            // A bounded batch: a front end that keeps the ring full must not
            // keep us from seeing a stop request or its own state change.
            let mut handled = 0u32;
            while handled < BATCH {
                let Some(raw) = ring.next_request()? else {
                    break;
                };
                // Reads into persistently mapped pages go to the storage
                // together; anything else is served after them, in order.
                if keys.persistent && self.queue_read(&raw, &limits, pmaps) {
                    handled += 1;
                    if self.queued.len() >= READ_BATCH {
                        self.flush_reads(pmaps, &mut ring, chan)?;
                    }
                    continue;
                }
                self.flush_reads(pmaps, &mut ring, chan)?;
                let status = self.handle(&raw, &limits, keys.persistent, pmaps);
                if status == BLKIF_RSP_OKAY {
                    self.stats.ok += 1;
                } else {
                    self.stats.failed += 1;
                }
                ring.push_response(&BlkifResponse {
                    id: raw.id,
                    operation: wire::response_operation(&raw),
                    status,
                    ..Default::default()
                })?;
                handled += 1;
                if handled.is_multiple_of(4) && ring.push_responses_and_check_notify()? {
                    chan.notify()?;
                }
            }
            self.flush_reads(pmaps, &mut ring, chan)?;
            if ring.push_responses_and_check_notify()? {
                chan.notify()?;
            }
            if let Some(exit) = self.control(xs, front, token, stop)? {
                return Ok(exit);
            }
            if handled == BATCH {
                // The batch ran out, the ring may not have.
                continue;
            }
            // Give a busy front end a moment before paying for a sleep.
            let mut spun = 0;
            while spun < self.cfg.spin && ring.unconsumed_requests()? == 0 {
                core::hint::spin_loop();
                spun += 1;
            }
            if ring.final_check_for_requests()? {
                continue;
            }
            if chan.wait(Some(self.cfg.poll_interval))?.is_some() {
                chan.unmask()?;
            }
        }
    }

    /// Takes `raw` into the batch of reads if it is a direct read of
    /// sectors inside the disk whose pages are (now) all mapped
    /// persistently; false leaves it to [`Self::handle`] (which answers
    /// whatever is wrong with it).
    fn queue_read(
        &mut self,
        raw: &BlkifRequest,
        limits: &Limits,
        pmaps: &mut BTreeMap<u32, Mapping<M>>,
    ) -> bool {
        let Ok(Request::Data {
            op: DataOp::Read,
            sector,
            segs,
            ..
        }) = wire::parse(raw, limits)
        else {
            return false;
        };
        if segs.is_empty() {
            return false;
        }
        let Ok((offset, len)) = self.range(sector, wire::total_sectors(&segs)) else {
            return false;
        };
        if !self.map_persistently(&segs, pmaps) {
            return false;
        }
        self.count(DataOp::Read, segs.len());
        self.stats.persistent_mapped = pmaps.len() as u64;
        self.queued.push(QueuedRead {
            id: raw.id,
            operation: wire::response_operation(raw),
            offset,
            len,
            segs,
        });
        true
    }

    /// Reads up to [`READ_BATCH`] queued reads with one storage call and
    /// queues their answers.
    fn read_chunk(
        &mut self,
        chunk: &[QueuedRead],
        pmaps: &BTreeMap<u32, Mapping<M>>,
        ring: &mut BackRing<&Mapping<M>, BlkifRequest, BlkifResponse>,
    ) -> Result<(), BlkError> {
        let window = |s: &Segment| {
            let m = pmaps.get(&s.gref.0)?;
            m.mem().slice(s.offset(), s.len()).ok()
        };
        // The windows of every read, one after another (a window that does
        // not slice ends its read's list early, and the storage refuses a
        // list shorter than the read). Any window fills the array's unused
        // slots; with none at all, every read gets an empty list.
        let filler = chunk.iter().flat_map(|q| q.segs.iter()).find_map(window);
        let mut store;
        let mut spans = [(0usize, 0usize); READ_BATCH];
        let windows: &[SharedMem<'_>] = match filler {
            Some(f) => {
                store = [f; BATCH_WINDOWS];
                let mut n = 0;
                for (q, span) in chunk.iter().zip(spans.iter_mut()) {
                    let start = n;
                    for w in q.segs.iter().map_while(window) {
                        // Inline segments: at most BATCH_WINDOWS in all.
                        if let Some(slot) = store.get_mut(n) {
                            *slot = w;
                            n += 1;
                        }
                    }
                    *span = (start, n);
                }
                &store[..n]
            }
            None => &[],
        };
        let mut reads: [SharedRead<'_, '_>; READ_BATCH] = core::array::from_fn(|_| SharedRead {
            offset: 0,
            len: 0,
            dst: &[],
            result: Err(StorageError::Unsupported("read not done")),
        });
        for ((q, span), read) in chunk.iter().zip(spans).zip(reads.iter_mut()) {
            read.offset = q.offset;
            read.len = q.len;
            read.dst = windows.get(span.0..span.1).unwrap_or(&[]);
        }
        // `chunk` holds at most READ_BATCH reads (a `chunks` piece).
        let Some(reads) = reads.get_mut(..chunk.len()) else {
            return Ok(());
        };
        self.storage.read_batch_to_shared(reads);
        let mut r = Ok(());
        for (q, read) in chunk.iter().zip(reads.iter()) {
            let status = if read.result.is_ok() {
                self.stats.ok += 1;
                BLKIF_RSP_OKAY
            } else {
                self.stats.failed += 1;
                BLKIF_RSP_ERROR
            };
            r = r.and(ring.push_response(&BlkifResponse {
                id: q.id,
                operation: q.operation,
                status,
                ..Default::default()
            }));
        }
        Ok(r?)
    }

    /// Hands the queued reads to the storage in one call and answers each.
    /// Allocates nothing: the windows and the reads are arrays on the
    /// stack, and the queue keeps its capacity.
    fn flush_reads(
        &mut self,
        pmaps: &BTreeMap<u32, Mapping<M>>,
        ring: &mut BackRing<&Mapping<M>, BlkifRequest, BlkifResponse>,
        chan: &Channel<E>,
    ) -> Result<(), BlkError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let mut queued = core::mem::take(&mut self.queued);
        // The serve loop flushes at READ_BATCH; chunks only for safety.
        let mut r = Ok(());
        for chunk in queued.chunks(READ_BATCH) {
            r = r.and(self.read_chunk(chunk, pmaps, ring));
        }
        queued.clear();
        self.queued = queued;
        r?;
        if ring.push_responses_and_check_notify()? {
            chan.notify()?;
        }
        Ok(())
    }

    /// The checks between batches: the caller's stop flag, then the front
    /// end's state (a watch event on it, read without waiting).
    fn control<T: Transport>(
        &self,
        xs: &mut Client<T>,
        front: &str,
        token: &str,
        stop: &AtomicBool,
    ) -> Result<Option<BackExit>, BlkError> {
        if stop.load(Ordering::Relaxed) {
            return Ok(Some(BackExit::Stopped));
        }
        // Bounded too: a front end rewriting its state key cannot hold us here.
        for _ in 0..BATCH {
            let Some(ev) = xs.next_event(Some(Duration::ZERO))? else {
                break;
            };
            if ev.token == token.as_bytes() {
                let s = crate::store::xenbus::read_state(xs, front)?;
                if matches!(
                    s,
                    XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
                ) {
                    return Ok(Some(BackExit::FrontendClosed));
                }
            }
        }
        Ok(None)
    }

    /// Answers one request as the serve loop does — parse, validate, move
    /// the data by grant copy (or, with `persistent`, through mappings made
    /// for this call and dropped at its end) — outside any connection, and
    /// returns the `BLKIF_RSP_*` status. For fuzzing and tests of the
    /// request path without a ring and a handshake.
    #[doc(hidden)]
    pub fn answer(&mut self, raw: &BlkifRequest, persistent: bool) -> i16 {
        let limits = self.limits();
        let mut pmaps = BTreeMap::new();
        self.handle(raw, &limits, persistent, &mut pmaps)
    }

    /// Answers one request; never fails the connection.
    fn handle(
        &mut self,
        raw: &BlkifRequest,
        limits: &Limits,
        persistent: bool,
        pmaps: &mut BTreeMap<u32, Mapping<M>>,
    ) -> i16 {
        let r = match wire::parse(raw, limits) {
            Ok(Request::Data {
                op, sector, segs, ..
            }) => {
                self.count(op, segs.len());
                self.data(op, sector, &segs, persistent, pmaps)
            }
            Ok(Request::Indirect {
                op,
                sector,
                nr_segments,
                pages,
                ..
            }) => {
                self.stats.indirect += 1;
                self.count(op, usize::from(nr_segments));
                // The segment list lives in a vector kept across requests.
                let mut segs = core::mem::take(&mut self.ind_segs);
                let r = self
                    .indirect_segments(&pages, usize::from(nr_segments), &mut segs)
                    .and_then(|()| self.data(op, sector, &segs, persistent, pmaps));
                self.ind_segs = segs;
                r
            }
            Ok(Request::Discard {
                sector, nr_sectors, ..
            }) => self.discard(sector, nr_sectors),
            Err(e) => Err(e),
        };
        self.stats.persistent_mapped = pmaps.len() as u64;
        match r {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(Reject::Unsupported(_)) => BLKIF_RSP_EOPNOTSUPP,
            Err(_) => BLKIF_RSP_ERROR,
        }
    }

    fn count(&mut self, op: DataOp, segments: usize) {
        if matches!(op, DataOp::Flush | DataOp::Barrier) {
            self.stats.flushes += 1;
        }
        self.stats.max_segments = self.stats.max_segments.max(segments as u64);
    }

    /// The byte range of `sectors` sectors at `sector`, checked against
    /// the disk and its sector size.
    fn range(&self, sector: u64, sectors: u64) -> Result<(u64, u64), Reject> {
        let off = sector.checked_mul(SECTOR).ok_or(Reject::Range)?;
        let len = sectors.checked_mul(SECTOR).ok_or(Reject::Range)?;
        let end = off.checked_add(len).ok_or(Reject::Range)?;
        let ss = u64::from(self.storage.sector_size().max(1));
        if end > self.storage.size() || !off.is_multiple_of(ss) || !len.is_multiple_of(ss) {
            return Err(Reject::Range);
        }
        Ok((off, len))
    }

    fn discard(&mut self, sector: u64, nr_sectors: u64) -> Result<(), Reject> {
        let (off, len) = self.range(sector, nr_sectors)?;
        if self.storage.read_only() {
            return Err(Reject::ReadOnly);
        }
        if len == 0 {
            return Ok(());
        }
        self.storage.discard(off, len).map_err(|_| Reject::Range)
    }

    /// Copies the indirect pages once (into a buffer kept across
    /// requests, with one grant-copy batch built on the stack), then parses
    /// the segment list into `segs`.
    fn indirect_segments(
        &mut self,
        pages: &[GrantRef],
        n: usize,
        segs: &mut Vec<Segment>,
    ) -> Result<(), Reject> {
        let seg_size = core::mem::size_of::<xenshare_abi::blkif::BlkifRequestSegment>();
        let mut copy = core::mem::take(&mut self.ind_copy);
        copy.resize(n * seg_size, 0);
        let fe = self.cfg.frontend;
        let per_page = BLKIF_SEGS_PER_INDIRECT_FRAME * seg_size;
        let mut ops: [CopyOp<'_>; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST] =
            core::array::from_fn(|_| CopyOp {
                src: CopySrc::Local(&[]),
                dst: CopyDst::Local(&mut []),
                len: 0,
                status: crate::grant::GntSt::Okay,
            });
        let mut used = 0;
        for ((op, chunk), gref) in ops.iter_mut().zip(copy.chunks_mut(per_page)).zip(pages) {
            *op = CopyOp {
                len: chunk.len() as u16,
                src: CopySrc::Grant(GrantPtr {
                    dom: fe,
                    gref: *gref,
                    offset: 0,
                }),
                dst: CopyDst::Local(chunk),
                status: crate::grant::GntSt::Okay,
            };
            used += 1;
        }
        self.importer.copy(&mut ops[..used]);
        let copied = ops[..used].iter().all(|o| o.status.is_ok());
        let r = if copied {
            wire::parse_indirect_segments_into(&copy, n, segs)
        } else {
            Err(Reject::Grant)
        };
        self.ind_copy = copy;
        r
    }

    /// A persistent mapping of `gref`, made on first use (bounded).
    fn persistent_map<'m>(
        importer: &Importer<M>,
        fe: DomId,
        max: usize,
        pmaps: &'m mut BTreeMap<u32, Mapping<M>>,
        gref: GrantRef,
    ) -> Option<&'m Mapping<M>> {
        // One tree walk: a 1 MiB request looks up 256 pages.
        let full = pmaps.len() >= max;
        match pmaps.entry(gref.0) {
            Entry::Occupied(e) => Some(e.into_mut()),
            Entry::Vacant(_) if full => None,
            Entry::Vacant(e) => Some(e.insert(importer.map_rw(fe, &[gref]).ok()?)),
        }
    }

    fn data(
        &mut self,
        op: DataOp,
        sector: u64,
        segs: &[Segment],
        persistent: bool,
        pmaps: &mut BTreeMap<u32, Mapping<M>>,
    ) -> Result<(), Reject> {
        // A request without data (Linux's empty FLUSH_DISKCACHE) names no
        // range: Linux's blkback checks the sector only when there are
        // sectors, and Linux's blkfront fills in whatever position the
        // block layer gave the flush, which can lie past the end of the disk.
        let (off, len) = if segs.is_empty() {
            (0, 0)
        } else {
            self.range(sector, wire::total_sectors(segs))?
        };
        if op.writes() && self.storage.read_only() {
            return Err(Reject::ReadOnly);
        }
        if op == DataOp::Barrier {
            self.storage.flush().map_err(|_| Reject::Range)?;
        }
        if !segs.is_empty() && persistent && self.map_persistently(segs, pmaps) {
            // Zero copy: the storage reads into or writes from the front
            // end's pages themselves.
            let windows = segs.iter().map_while(|s| {
                let m = pmaps.get(&s.gref.0)?;
                m.mem().slice(s.offset(), s.len()).ok()
            });
            let r = if op.writes() {
                self.storage
                    .write_from_shared(off, len, &mut windows.map(SharedMem::read_only))
            } else {
                self.storage.read_to_shared(off, len, &mut { windows })
            };
            r.map_err(|_| Reject::Range)?;
        } else if !segs.is_empty() {
            let len = usize::try_from(len).map_err(|_| Reject::Range)?;
            let mut buf = core::mem::take(&mut self.buf);
            buf.resize(len, 0);
            let r = if op.writes() {
                self.move_segments(segs, &mut buf, false, persistent, pmaps)
                    .and_then(|()| self.storage.write_at(off, &buf).map_err(|_| Reject::Range))
            } else {
                self.storage
                    .read_at(off, &mut buf)
                    .map_err(|_| Reject::Range)
                    .and_then(|()| self.move_segments(segs, &mut buf, true, persistent, pmaps))
            };
            self.buf = buf;
            r?;
        }
        if matches!(op, DataOp::Flush | DataOp::Barrier) {
            self.storage.flush().map_err(|_| Reject::Range)?;
        }
        Ok(())
    }

    /// Maps every segment's page persistently (those not mapped yet).
    /// False if the pool is full or a grant cannot be mapped: the request
    /// then goes by grant copy, which reports a bad grant. (Each segment
    /// lies inside its page, [`wire`] checked; a window that still failed
    /// to slice would end the window list early, and the storage refuses a
    /// list shorter than the request.)
    fn map_persistently(&self, segs: &[Segment], pmaps: &mut BTreeMap<u32, Mapping<M>>) -> bool {
        let fe = self.cfg.frontend;
        let max = self.cfg.max_persistent_grants;
        segs.iter()
            .all(|s| Self::persistent_map(&self.importer, fe, max, pmaps, s.gref).is_some())
    }

    /// Moves data between `buf` and the segments' pages: `to_front` for
    /// reads. Persistently mapped pages are copied directly; the rest by
    /// grant copy, which checks every grant.
    fn move_segments(
        &mut self,
        segs: &[Segment],
        buf: &mut [u8],
        to_front: bool,
        persistent: bool,
        pmaps: &mut BTreeMap<u32, Mapping<M>>,
    ) -> Result<(), Reject> {
        let fe = self.cfg.frontend;
        // Grant copies go in batches built on the stack (no allocation per
        // request); `buf` is handed out in disjoint slices, segment order.
        let mut ops: [CopyOp<'_>; COPY_BATCH] = core::array::from_fn(|_| CopyOp {
            src: CopySrc::Local(&[]),
            dst: CopyDst::Local(&mut []),
            len: 0,
            status: crate::grant::GntSt::Okay,
        });
        let mut queued = 0;
        let flush = |ops: &mut [CopyOp<'_>]| {
            self.importer.copy(ops);
            if ops.iter().all(|o| o.status.is_ok()) {
                Ok(())
            } else {
                Err(Reject::Grant)
            }
        };
        let mut rest: &mut [u8] = buf;
        for s in segs {
            let (chunk, tail) = core::mem::take(&mut rest).split_at_mut(s.len());
            rest = tail;
            let mapped = if persistent {
                Self::persistent_map(
                    &self.importer,
                    fe,
                    self.cfg.max_persistent_grants,
                    pmaps,
                    s.gref,
                )
            } else {
                None
            };
            if let Some(m) = mapped {
                let mem = m.mem();
                let r = if to_front {
                    mem.write(s.offset(), chunk)
                } else {
                    mem.read(s.offset(), chunk)
                };
                r.map_err(|_| Reject::Grant)?;
                continue;
            }
            let ptr = GrantPtr {
                dom: fe,
                gref: s.gref,
                offset: s.offset() as u16,
            };
            let (src, dst) = if to_front {
                (CopySrc::Local(chunk), CopyDst::Grant(ptr))
            } else {
                (CopySrc::Grant(ptr), CopyDst::Local(chunk))
            };
            ops[queued] = CopyOp {
                src,
                dst,
                len: s.len() as u16,
                status: crate::grant::GntSt::Okay,
            };
            queued += 1;
            if queued == COPY_BATCH {
                flush(&mut ops[..])?;
                queued = 0;
            }
        }
        flush(&mut ops[..queued])
    }

    /// Closing / Closed after a connection (or a failed handshake).
    fn close_states<T: Transport>(&self, xs: &mut Client<T>, front: &str, wait_front: bool) {
        let _ = write_state(xs, &self.dir, XenbusState::Closing);
        if wait_front {
            let never = || false;
            let _ = wait_state(
                xs,
                front,
                Some(self.cfg.timeout.unwrap_or(Duration::from_secs(5))),
                &never,
                |s| Ok::<_, DeviceError>(matches!(s, XenbusState::Closed | XenbusState::Unknown)),
            );
        }
        let _ = write_state(xs, &self.dir, XenbusState::Closed);
    }
}
