//! The front end (netfront): a guest's network interface.
//!
//! [`Netfront`] owns its two ring pages and every data page it has granted.
//! Each page granted to the back end is a [`Share`] recorded in an
//! [`Outstanding`] tracker under the request's id, so a response can only
//! retire a page that is really in flight. Retiring a tx page is revoking:
//! the share is [`Share::try_unshare`]d and only a successful revocation
//! returns the page to the private pool (to be zeroed and re-granted by the
//! grant API). A back end that still holds the page gets it quarantined and
//! the device broken.
//!
//! Sending grants `ceil(len / 4096)` pages read-only and posts one tx chain;
//! receiving keeps up to [`NetfrontConfig::rx_buffers`] writable pages posted
//! and reassembles `more_data` chains, copying each fragment out of its page
//! once. An answered rx page stays granted to the back end and is posted
//! again as it is (a persistent grant: it only ever holds what that back end
//! wrote), unless the grant table shows the back end still mapping it, in
//! which case it is revoked like a tx page. Rx pages are revoked on
//! [`Netfront::release`] and [`Netfront::rebuild`].

use crate::mem::SharedMem;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use xenshare_abi::grant::{GTF_READING, GTF_WRITING};
use xenshare_abi::netif::{
    NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED,
    NETRXF_MORE_DATA, NETTXF_MORE_DATA,
};
use xenshare_abi::PAGE_SIZE;

use super::xenbus::FrontendKeys;
use super::{
    slots_for, Latch, Mac, NetError, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, MAX_FRAME, MAX_FRAME_NO_SG, MAX_SLOTS,
};
use crate::event::Channel;
use crate::grant::{Exporter, Share};
use crate::platform::{EventChannels, GrantBackend};
use crate::ring::{FrontRing, Outstanding, RingError};
use crate::types::{Access, DomId, GrantRef};

type TxRing<B> = FrontRing<Share<B>, NetifTxRequest, NetifTxResponse>;
type RxRing<B> = FrontRing<Share<B>, NetifRxRequest, NetifRxResponse>;

/// The only "opcode" netif has; [`Outstanding`] checks it trivially.
const OP: u32 = 0;

/// Front end settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetfrontConfig {
    /// Receive pages kept posted (`MAX_SLOTS..=256`): enough for the
    /// largest frame plus headroom for bursts.
    pub rx_buffers: usize,
    /// Offer / use scatter-gather (multi-page frames) when the back end does.
    pub sg: bool,
}

impl Default for NetfrontConfig {
    fn default() -> Self {
        Self {
            rx_buffers: 256,
            sg: true,
        }
    }
}

/// Counters of a [`Netfront`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetfrontStats {
    /// Frames handed to the back end.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// tx slots the back end answered with an error or dropped.
    pub tx_errors: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received frames dropped because the back end reported an error.
    pub rx_errors: u64,
    /// Pages this front end ever granted afresh (not from its pool).
    pub pages_allocated: u64,
    /// Shares sent to quarantine because the back end kept them.
    pub quarantined: u64,
}

/// What [`Netfront::release`] / [`Netfront::close`] did with the grants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// Shares revoked (pages back to this domain).
    pub revoked: usize,
    /// Shares the back end still held: quarantined, never reused.
    pub quarantined: usize,
}

/// A frame being reassembled from an rx chain.
#[derive(Debug, Default)]
struct Partial {
    /// The frame's buffer: its first `len` bytes are the frame so far; the
    /// rest are left over from an earlier frame (this side's own memory,
    /// overwritten or cut off before the frame is handed out).
    data: Vec<u8>,
    len: usize,
    slots: usize,
    failed: bool,
    /// The first slot said the checksum is left to us (NETRXF_csum_blank).
    csum_blank: bool,
}

/// Most revoked pages kept for reuse.
const POOL_MAX: usize = 512;

/// Most frame buffers kept from [`Netfront::recycle_frame`].
const FRAME_POOL_MAX: usize = 64;

/// Largest capacity of a frame buffer kept for reuse.
const FRAME_BUF_MAX: usize = 2 * MAX_FRAME;

/// Most received frames held for [`Netfront::recv`]: reaping stops there
/// (the rest wait on the ring), so a back end answering as fast as pages
/// are re-posted cannot make one call queue frames without bound.
const READY_MAX: usize = 64;

/// A netif front end.
pub struct Netfront<B: GrantBackend, E: EventChannels> {
    tx: TxRing<B>,
    rx: RxRing<B>,
    tx_inflight: Outstanding<Share<B>>,
    rx_inflight: Outstanding<Share<B>>,
    /// Answered rx pages, still granted to the back end: posted again
    /// without a new grant (at most `rx_buffers` of them).
    rx_spare: Vec<Share<B>>,
    /// A tx frame's pages between granting and posting (empty between
    /// calls; kept for its capacity).
    stage: Vec<(Share<B>, usize)>,
    pool: Vec<B::Pages>,
    exporter: Exporter<B>,
    chan: Channel<E>,
    backend: DomId,
    mac: Mac,
    cfg: NetfrontConfig,
    backend_sg: bool,
    partial: Partial,
    ready: VecDeque<Vec<u8>>,
    frame_pool: Vec<Vec<u8>>,
    latch: Latch,
    connected: bool,
    paths: Option<(String, String)>,
    stats: NetfrontStats,
}

impl<B: GrantBackend, E: EventChannels> core::fmt::Debug for Netfront<B, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Netfront")
            .field("backend", &self.backend)
            .field("mac", &self.mac)
            .field("port", &self.chan.port())
            .field("tx_in_flight", &self.tx_inflight.in_flight())
            .field("rx_posted", &self.rx_inflight.in_flight())
            .field("error", &self.latch.cause())
            .finish()
    }
}

impl<B: GrantBackend, E: EventChannels> Netfront<B, E> {
    /// Creates the rings (granted to `backend`), allocates the event channel
    /// and posts the receive pages. Nothing is published; see
    /// [`Netfront::keys`] (or use [`Netfront::connect`]). `backend_sg` is
    /// whether the back end offered `feature-sg`.
    pub fn new(
        exporter: &Exporter<B>,
        evt: &Arc<E>,
        backend: DomId,
        mac: Mac,
        backend_sg: bool,
        cfg: NetfrontConfig,
    ) -> Result<Self, NetError> {
        if !(MAX_SLOTS..=256).contains(&cfg.rx_buffers) {
            return Err(NetError::Config("rx_buffers must be in 18..=256"));
        }
        let tx = TxRing::init(exporter.share(backend, 1, Access::ReadWrite)?)?;
        let rx = RxRing::init(exporter.share(backend, 1, Access::ReadWrite)?)?;
        let chan = Channel::alloc_unbound(evt, backend)?;
        let mut nf = Self {
            tx_inflight: Outstanding::new(tx.size() as usize),
            rx_inflight: Outstanding::new(rx.size() as usize),
            rx_spare: Vec::new(),
            stage: Vec::with_capacity(MAX_SLOTS),
            tx,
            rx,
            pool: Vec::new(),
            exporter: exporter.clone(),
            chan,
            backend,
            mac,
            cfg,
            backend_sg,
            partial: Partial::default(),
            ready: VecDeque::new(),
            frame_pool: Vec::new(),
            latch: Latch::default(),
            connected: false,
            paths: None,
            stats: NetfrontStats::default(),
        };
        nf.refill()?;
        Ok(nf)
    }

    /// The keys to publish for the back end.
    pub fn keys(&self) -> FrontendKeys {
        let first = |s: &Share<B>| s.refs().first().copied().unwrap_or(GrantRef(0));
        FrontendKeys {
            tx_ring_ref: first(self.tx.memory()),
            rx_ring_ref: first(self.rx.memory()),
            event_channel: self.chan.port(),
            event_channel_rx: None,
            request_rx_copy: true,
            sg: self.cfg.sg,
            rx_notify: true,
        }
    }

    /// The MAC address (from the toolstack's `mac` key).
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The front end's and back end's XenStore directories (after
    /// `connect`).
    pub fn paths(&self) -> Option<(&str, &str)> {
        self.paths.as_ref().map(|(f, b)| (f.as_str(), b.as_str()))
    }

    /// The back end's domain.
    pub fn backend(&self) -> DomId {
        self.backend
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetfrontStats {
        self.stats
    }

    /// The error that broke the device, if any.
    pub fn error(&self) -> Option<&NetError> {
        self.latch.cause()
    }

    /// Whether an error has broken the device.
    pub fn is_broken(&self) -> bool {
        self.latch.is_tripped()
    }

    /// Carrier: the back end connected and nothing broke.
    pub fn carrier(&self) -> bool {
        self.connected && !self.is_broken()
    }

    /// Marks the back end connected (done by [`Netfront::connect`]; for
    /// hand-made handshakes).
    pub fn set_connected(&mut self, up: bool) {
        self.connected = up;
    }

    /// Largest frame [`Netfront::send`] accepts.
    pub fn max_frame(&self) -> usize {
        if self.cfg.sg && self.backend_sg {
            MAX_FRAME
        } else {
            MAX_FRAME_NO_SG
        }
    }

    /// Frames of [`MAX_FRAME`] size that fit on the tx ring right now.
    pub fn tx_room(&self) -> usize {
        let free = self.tx.free_requests() as usize;
        let ids = self.tx_inflight.capacity() - self.tx_inflight.in_flight();
        free.min(ids)
    }

    fn trip(&mut self, e: impl Into<NetError>) -> NetError {
        self.latch.trip(e.into())
    }

    /// A page granted to the back end holding `data` (at most a page) and
    /// zeros after it: from the pool if possible.
    fn fresh_share(&mut self, access: Access, data: &[u8]) -> Result<Share<B>, NetError> {
        match self.pool.pop() {
            Some(p) => self
                .exporter
                .share_pages_with(self.backend, p, access, data)
                .map_err(|(e, p)| {
                    self.pool.extend(p);
                    NetError::from(e)
                }),
            None => {
                let s = self.exporter.share(self.backend, 1, access)?;
                self.stats.pages_allocated += 1;
                s.mem().write(0, data).map_err(RingError::from)?;
                Ok(s)
            }
        }
    }

    /// Whether the back end maps `share`'s page (or is copying into it)
    /// right now, as far as the platform shows: `GTF_reading` /
    /// `GTF_writing` on its grant entry. A platform without a table view
    /// (Linux's gntalloc) shows nothing.
    fn peer_holds(&self, share: &Share<B>) -> bool {
        let Some(table) = self.exporter.table() else {
            return false;
        };
        share.refs().iter().any(|&r| {
            table
                .entry(r)
                .is_some_and(|e| e.flags & (GTF_READING | GTF_WRITING) != 0)
        })
    }

    /// Revokes a share whose response arrived: its pages if they came back
    /// (`None` where the platform retires revoked memory). A share the back
    /// end still holds goes to quarantine and breaks the device.
    fn revoke(&mut self, share: Share<B>) -> Result<Option<B::Pages>, NetError> {
        let gref = share.refs().first().copied().unwrap_or(GrantRef(0));
        match share.try_unshare() {
            Ok(revoked) => Ok(revoked.pages()),
            Err(busy) => {
                // Dropping a busy share moves it to quarantine: never reused.
                drop(busy.into_inner());
                self.stats.quarantined += 1;
                Err(self.trip(NetError::GrantStillInUse { gref }))
            }
        }
    }

    fn recycle(&mut self, pages: Option<B::Pages>) {
        if self.pool.len() < POOL_MAX {
            self.pool.extend(pages);
        }
    }

    /// Queues one Ethernet frame for the back end. [`NetError::TxFull`] if
    /// the ring has no room now (wait and retry); [`NetError::FrameSize`]
    /// for an empty frame or one above [`Netfront::max_frame`].
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.latch.check()?;
        let max = self.max_frame();
        if frame.is_empty() || frame.len() > max {
            return Err(NetError::FrameSize {
                len: frame.len(),
                max,
            });
        }
        self.reap_tx()?;
        let n = slots_for(frame.len());
        if self.tx_room() < n {
            return Err(NetError::TxFull);
        }
        // All pages first: a failure here leaves nothing half-posted. They
        // wait in a vector kept from frame to frame (no allocation).
        let mut shares = core::mem::take(&mut self.stage);
        shares.clear();
        for chunk in frame.chunks(PAGE_SIZE) {
            match self.fresh_share(Access::ReadOnly, chunk) {
                Ok(s) => shares.push((s, chunk.len())),
                Err(e) => {
                    // Not posted: revoked as they drop.
                    shares.clear();
                    self.stage = shares;
                    return Err(e);
                }
            }
        }
        for (i, (share, chunk_len)) in shares.drain(..).enumerate() {
            let gref = share.refs().first().copied().unwrap_or(GrantRef(0));
            let id = match self.tx_inflight.start(OP, share) {
                Ok(id) => id,
                Err(e) => return Err(self.trip(e)),
            };
            let req = NetifTxRequest {
                gref: gref.0,
                offset: 0,
                flags: if i + 1 < n { NETTXF_MORE_DATA } else { 0 },
                id: id as u16,
                // The first slot carries the whole frame's size.
                size: if i == 0 { frame.len() } else { chunk_len } as u16,
            };
            if let Err(e) = self.tx.push_request(&req) {
                return Err(self.trip(e));
            }
        }
        self.stage = shares;
        match self.tx.push_requests_and_check_notify() {
            Ok(true) => self.chan.notify()?,
            Ok(false) => {}
            Err(e) => return Err(self.trip(e)),
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    /// Retires answered tx slots.
    fn reap_tx(&mut self) -> Result<(), NetError> {
        loop {
            let rsp = match self.tx.next_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.trip(e)),
            };
            let share = match self.tx.complete(&mut self.tx_inflight, rsp.id.into(), OP) {
                Ok(s) => s,
                Err(e) => return Err(self.trip(e)),
            };
            let known = match rsp.status {
                NETIF_RSP_OKAY => true,
                NETIF_RSP_ERROR | NETIF_RSP_DROPPED => {
                    self.stats.tx_errors += 1;
                    true
                }
                // NETIF_RSP_NULL answers extra-info slots, which we never send.
                _ => false,
            };
            let pages = self.revoke(share)?;
            self.recycle(pages);
            if !known {
                return Err(self.trip(NetError::BadTxStatus {
                    id: rsp.id,
                    status: rsp.status,
                }));
            }
        }
    }

    /// Takes answered rx slots, reassembles frames, and re-posts pages.
    ///
    /// Pages are re-posted every quarter ring (at least a largest frame's
    /// worth) rather than only at the end, so the back end fills the fresh
    /// ones while this side is still copying out the rest: the two work
    /// side by side instead of taking turns.
    fn reap_rx(&mut self) -> Result<(), NetError> {
        let batch = (self.cfg.rx_buffers / 4).max(MAX_SLOTS);
        loop {
            if self.cfg.rx_buffers - self.rx_inflight.in_flight().min(self.cfg.rx_buffers) >= batch
            {
                self.refill()?;
            }
            if self.ready.len() >= READY_MAX && self.partial.slots == 0 {
                break;
            }
            let rsp = match self.rx.next_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(self.trip(e)),
            };
            let share = match self.rx.complete(&mut self.rx_inflight, rsp.id.into(), OP) {
                Ok(s) => s,
                Err(e) => return Err(self.trip(e)),
            };
            // Copy once; only the private copy is looked at after.
            let r = self.take_fragment(&rsp, share.mem());
            if self.peer_holds(&share) {
                // The back end still maps the page after answering for it:
                // revoked, or quarantined and the device broken.
                let pages = match self.revoke(share) {
                    Ok(p) => p,
                    Err(e) => {
                        // Nothing read from a kept page is delivered.
                        self.partial = Partial::default();
                        return Err(e);
                    }
                };
                self.recycle(pages);
            } else {
                // Posted again as it is, still granted to the same back end.
                self.rx_spare.push(share);
            }
            if let Some(data) = r? {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += data.len() as u64;
                self.ready.push_back(data);
            }
        }
        self.refill()
    }

    /// Validates one rx response (a private copy) and appends its data;
    /// returns the frame it completed, if any (delivered by the caller once
    /// the page is proven revoked).
    fn take_fragment(
        &mut self,
        rsp: &NetifRxResponse,
        mem: SharedMem<'_>,
    ) -> Result<Option<Vec<u8>>, NetError> {
        let bad = |why| NetError::BadRxResponse {
            id: rsp.id,
            offset: rsp.offset,
            flags: rsp.flags,
            status: rsp.status,
            why,
        };
        const KNOWN: u16 = NETRXF_DATA_VALIDATED | NETRXF_CSUM_BLANK | NETRXF_MORE_DATA;
        if rsp.flags & !KNOWN != 0 {
            return Err(self.trip(bad(
                "flags not negotiated (extra info, gso prefix or unknown)",
            )));
        }
        let more = rsp.flags & NETRXF_MORE_DATA != 0;
        if more && !self.cfg.sg {
            return Err(self.trip(bad("multi-slot frame without feature-sg")));
        }
        if self.partial.slots == 0 {
            self.partial.csum_blank = rsp.flags & NETRXF_CSUM_BLANK != 0;
            // One buffer for the whole frame, from the frames given back if
            // any: growing it slot by slot reallocates and, for large
            // frames, faults in fresh pages every time. Four pages hold a
            // jumbo frame; a larger one doubles from there (reserving a
            // whole MAX_FRAME for every multi-slot frame halved the rate of
            // 9000-byte frames). A buffer from the pool keeps its length:
            // its old bytes are overwritten, not zeroed first, and what is
            // left of them past the frame is cut off before it is handed out.
            let mut data = self.frame_pool.pop().unwrap_or_default();
            let want = if more { 4 * PAGE_SIZE } else { PAGE_SIZE };
            data.reserve(want.saturating_sub(data.len()));
            self.partial.data = data;
            self.partial.len = 0;
        }
        self.partial.slots += 1;
        if self.partial.slots > MAX_SLOTS {
            return Err(self.trip(bad("frame uses more slots than allowed")));
        }
        if rsp.status < 0 {
            self.partial.failed = true;
        } else {
            let (off, size) = (usize::from(rsp.offset), rsp.status as usize);
            if off + size > PAGE_SIZE {
                return Err(self.trip(bad("offset + size beyond the page")));
            }
            let have = self.partial.len;
            if have + size > MAX_FRAME {
                return Err(self.trip(bad("frame longer than the largest frame")));
            }
            let data = &mut self.partial.data;
            if data.len() < have + size {
                data.resize(have + size, 0);
            }
            let r = mem.read(off, &mut data[have..have + size]);
            if let Err(e) = r {
                return Err(self.trip(RingError::from(e)));
            }
            self.partial.len = have + size;
        }
        if !more {
            let p = core::mem::take(&mut self.partial);
            let mut data = p.data;
            data.truncate(p.len);
            if p.failed
                || data.is_empty()
                || (p.csum_blank && super::csum::complete(&mut data).is_err())
            {
                self.stats.rx_errors += 1;
                self.recycle_frame(data);
            } else {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// Posts receive pages up to the configured number.
    fn refill(&mut self) -> Result<(), NetError> {
        let mut posted = false;
        while self.rx_inflight.in_flight() < self.cfg.rx_buffers && self.rx.free_requests() > 0 {
            let share = match self.rx_spare.pop() {
                Some(s) => s,
                None => match self.fresh_share(Access::ReadWrite, &[]) {
                    Ok(s) => s,
                    // Out of grant refs or memory: post fewer, try later.
                    Err(_) => break,
                },
            };
            let gref = share.refs().first().copied().unwrap_or(GrantRef(0));
            let id = match self.rx_inflight.start(OP, share) {
                Ok(id) => id,
                Err(e) => return Err(self.trip(e)),
            };
            let req = NetifRxRequest {
                id: id as u16,
                pad: 0,
                gref: gref.0,
            };
            if let Err(e) = self.rx.push_request(&req) {
                return Err(self.trip(e));
            }
            posted = true;
        }
        if posted {
            match self.rx.push_requests_and_check_notify() {
                Ok(true) => self.chan.notify()?,
                Ok(false) => {}
                Err(e) => return Err(self.trip(e)),
            }
        }
        Ok(())
    }

    /// Processes every response waiting on both rings.
    pub fn poll(&mut self) -> Result<(), NetError> {
        self.latch.check()?;
        self.reap_tx()?;
        self.reap_rx()
    }

    /// The next received frame, if any (never blocks).
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        if let Some(f) = self.ready.pop_front() {
            return Ok(Some(f));
        }
        self.poll()?;
        Ok(self.ready.pop_front())
    }

    /// Gives a frame [`Netfront::recv`] returned back for reuse: the next
    /// frames are assembled in it instead of a fresh allocation (up to 64
    /// buffers of up to 128 KiB are kept; others are freed).
    pub fn recycle_frame(&mut self, frame: Vec<u8>) {
        if self.frame_pool.len() < FRAME_POOL_MAX && frame.capacity() <= FRAME_BUF_MAX {
            self.frame_pool.push(frame);
        }
    }

    /// Sleeps until the back end signals (or `timeout`; `None`: forever),
    /// unless responses are already waiting. Returns whether it was woken.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, NetError> {
        self.latch.check()?;
        if !self.ready.is_empty() {
            return Ok(true);
        }
        for r in [
            self.tx.final_check_for_responses(),
            self.rx.final_check_for_responses(),
        ] {
            match r {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return Err(self.trip(e)),
            }
        }
        match self.chan.wait(timeout)? {
            Some(port) => {
                self.chan.handle().unmask(port)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Revokes `share`, counting it in `report`; a share the peer still
    /// holds goes to quarantine (never reused). Returns the pages if they
    /// came back.
    fn give_back(share: Share<B>, report: &mut CloseReport) -> Option<B::Pages> {
        match share.try_unshare() {
            Ok(revoked) => {
                report.revoked += 1;
                revoked.pages()
            }
            Err(busy) => {
                drop(busy.into_inner());
                report.quarantined += 1;
                None
            }
        }
    }

    /// Drops the current connection and prepares a fresh one to `backend`
    /// (for a back-end restart; see `Netfront::reconnect`): every in-flight
    /// tx and rx page and both old rings are revoked — or quarantined if
    /// the old back end still maps them, never reused — and new rings, a
    /// new event channel and new rx pages are granted to `backend`. Frames
    /// already received and not yet taken are kept; a half-received frame
    /// is dropped. The device stays not connected (and, if it was broken,
    /// broken) until the new handshake completes; nothing is published.
    ///
    /// On error the old connection is gone all the same: nothing still
    /// granted is lost (it is owned by `self` or quarantined), and the
    /// device is left broken.
    pub fn rebuild(&mut self, backend: DomId, backend_sg: bool) -> Result<CloseReport, NetError> {
        self.connected = false;
        let mut report = CloseReport::default();
        let mut back = Vec::new();
        for (_, _, s) in self.tx_inflight.drain() {
            back.extend(Self::give_back(s, &mut report));
        }
        for (_, _, s) in self.rx_inflight.drain() {
            back.extend(Self::give_back(s, &mut report));
        }
        for s in core::mem::take(&mut self.rx_spare) {
            back.extend(Self::give_back(s, &mut report));
        }
        for p in back {
            self.recycle(Some(p));
        }
        self.partial = Partial::default();
        let fresh = (|| {
            let tx = TxRing::init(self.exporter.share(backend, 1, Access::ReadWrite)?)?;
            let rx = RxRing::init(self.exporter.share(backend, 1, Access::ReadWrite)?)?;
            let chan = Channel::alloc_unbound(self.chan.handle(), backend)?;
            Ok::<_, NetError>((tx, rx, chan))
        })();
        let (tx, rx, chan) = match fresh {
            Ok(f) => f,
            Err(e) => {
                // The old rings stay owned (and are revoked on release).
                self.stats.quarantined += report.quarantined as u64;
                return Err(self.trip(e));
            }
        };
        let old_tx = core::mem::replace(&mut self.tx, tx);
        let old_rx = core::mem::replace(&mut self.rx, rx);
        drop(core::mem::replace(&mut self.chan, chan));
        for s in [old_tx.into_memory(), old_rx.into_memory()] {
            let p = Self::give_back(s, &mut report);
            self.recycle(p);
        }
        self.stats.quarantined += report.quarantined as u64;
        self.tx_inflight = Outstanding::new(self.tx.size() as usize);
        self.rx_inflight = Outstanding::new(self.rx.size() as usize);
        self.backend = backend;
        self.backend_sg = backend_sg;
        self.refill()?;
        Ok(report)
    }

    /// Gives every grant back: in-flight tx and rx pages and the rings are
    /// revoked, or quarantined if the back end still holds them. Consumes
    /// the front end; no XenStore traffic (see [`Netfront::close`]).
    pub fn release(self) -> CloseReport {
        let Self {
            tx,
            rx,
            mut tx_inflight,
            mut rx_inflight,
            rx_spare,
            chan,
            ..
        } = self;
        let mut report = CloseReport::default();
        let mut give_back = |share: Share<B>| match share.try_unshare() {
            Ok(_) => report.revoked += 1,
            Err(busy) => {
                drop(busy.into_inner());
                report.quarantined += 1;
            }
        };
        for (_, _, s) in tx_inflight.drain() {
            give_back(s);
        }
        for (_, _, s) in rx_inflight.drain() {
            give_back(s);
        }
        for s in rx_spare {
            give_back(s);
        }
        give_back(tx.into_memory());
        give_back(rx.into_memory());
        drop(chan);
        report
    }
}

#[cfg(feature = "std")]
mod with_std {
    use super::*;
    use crate::net::xenbus::{backend_of, read_mac, BackendFeatures, DEVTYPE};
    use crate::store::client::{Client, Transport};
    use crate::store::xenbus::{
        frontend_path, read_state, wait_for_state, write_state, XenbusState,
    };
    use std::time::Instant;

    impl<B: GrantBackend, E: EventChannels> Netfront<B, E> {
        /// The whole front-end handshake for device `devid` of this domain:
        /// reads `backend`, `backend-id` and `mac` from its own directory,
        /// waits (up to `timeout`) for the back end's InitWait, refuses a back
        /// end without `feature-rx-copy`, creates rings, port and rx pages,
        /// writes its keys in one transaction, goes Connected, and waits for
        /// the back end to connect.
        pub fn connect<T: Transport>(
            exporter: &Exporter<B>,
            evt: &Arc<E>,
            xs: &mut Client<T>,
            devid: u32,
            cfg: NetfrontConfig,
            timeout: Duration,
        ) -> Result<Self, NetError> {
            let front_dir = frontend_path(exporter.domid(), DEVTYPE, devid);
            let (back_dir, backend) = backend_of(xs, &front_dir)?;
            let mac = read_mac(xs, &front_dir)?;
            let st = wait_for_state(xs, &back_dir, timeout, |s| {
                s >= XenbusState::InitWait && s <= XenbusState::Closed
            })?;
            if st >= XenbusState::Closing {
                return Err(NetError::PeerClosed);
            }
            let features = BackendFeatures::read(xs, &back_dir)?;
            if !features.rx_copy {
                write_state(xs, &front_dir, XenbusState::Closing)?;
                return Err(NetError::NoRxCopy);
            }
            let mut nf = Self::new(exporter, evt, backend, mac, features.sg, cfg)?;
            nf.keys().publish(xs, &front_dir)?;
            write_state(xs, &front_dir, XenbusState::Connected)?;
            nf.paths = Some((front_dir, back_dir.clone()));
            let st = wait_for_state(xs, &back_dir, timeout, |s| s >= XenbusState::Connected)?;
            if st != XenbusState::Connected {
                return Err(NetError::PeerClosed);
            }
            nf.connected = true;
            Ok(nf)
        }

        /// Looks at the back end's XenBus state and notices a back end that
        /// went away (Closing, Closed, its directory gone, or reset to
        /// Initialising / InitWait by a restart): the device is then marked
        /// not connected and broken with [`NetError::PeerClosed`], which is
        /// returned; call [`Netfront::reconnect`] to attach to the next back
        /// end. `Ok(())` while the back end is Connected.
        /// Does nothing for a front end not set up by
        /// [`Netfront::connect`].
        pub fn check_backend<T: Transport>(&mut self, xs: &mut Client<T>) -> Result<(), NetError> {
            let Some((_, back)) = &self.paths else {
                return Ok(());
            };
            let s = read_state(xs, back)?;
            if s == XenbusState::Connected {
                return Ok(());
            }
            self.connected = false;
            Err(self.trip(NetError::PeerClosed))
        }

        /// Whether the device lost its back end ([`NetError::PeerClosed`]
        /// broke it), so [`Netfront::reconnect`] is the way forward.
        pub fn backend_gone(&self) -> bool {
            matches!(self.latch.cause(), Some(NetError::PeerClosed))
        }

        /// Re-attaches to a restarted back end (the old one stopped, or was
        /// destroyed and a new one attached to the device).
        ///
        /// Goes Closing and waits (up to `timeout`) for the old back end to
        /// leave Connected, then stops using the old rings: every tx and rx
        /// page and both rings are revoked; grants the old back end still
        /// maps are quarantined (never reused) and counted in the returned
        /// report. It then re-reads `backend` / `backend-id` (the back end
        /// may live in a new domain), grants new rings, rx pages and a new
        /// event channel to it, goes Initialising, waits (up to `timeout`)
        /// for the new back end's InitWait and runs the rest of the
        /// handshake as [`Netfront::connect`] does. On success the device
        /// is connected and usable again; frames received before the
        /// restart and not yet taken are kept, frames in flight are lost
        /// (as on a real link). On error it stays broken and the call may
        /// be retried.
        pub fn reconnect<T: Transport>(
            &mut self,
            xs: &mut Client<T>,
            timeout: Duration,
        ) -> Result<CloseReport, NetError> {
            let Some((front_dir, old_back)) = self.paths.clone() else {
                return Err(NetError::Config(
                    "reconnect needs a front end set up by Netfront::connect",
                ));
            };
            self.connected = false;
            if self.latch.cause().is_none() {
                self.latch.trip(NetError::PeerClosed);
            }
            write_state(xs, &front_dir, XenbusState::Closing)?;
            // A dead back end never answers: carry on after the timeout (its
            // grants are then quarantined, not reused).
            let _ = wait_for_state(xs, &old_back, timeout, |s| {
                s != XenbusState::Connected && s != XenbusState::Initialised
            });
            let (back_dir, backend) = backend_of(xs, &front_dir)?;
            let report = self.rebuild(backend, false)?;
            self.paths = Some((front_dir.clone(), back_dir.clone()));
            write_state(xs, &front_dir, XenbusState::Initialising)?;
            wait_for_state(xs, &back_dir, timeout, |s| s == XenbusState::InitWait)?;
            let features = BackendFeatures::read(xs, &back_dir)?;
            if !features.rx_copy {
                write_state(xs, &front_dir, XenbusState::Closing)?;
                return Err(NetError::NoRxCopy);
            }
            self.backend_sg = features.sg;
            self.keys().publish(xs, &front_dir)?;
            write_state(xs, &front_dir, XenbusState::Connected)?;
            let st = wait_for_state(xs, &back_dir, timeout, |s| s >= XenbusState::Connected)?;
            if st != XenbusState::Connected {
                return Err(NetError::PeerClosed);
            }
            self.latch.reset();
            self.connected = true;
            Ok(report)
        }

        /// Closes the device: Closing, waits (up to `timeout`) for the back
        /// end to let go, revokes every grant (quarantining any still held),
        /// then Closed.
        pub fn close<T: Transport>(
            self,
            xs: &mut Client<T>,
            timeout: Duration,
        ) -> Result<CloseReport, NetError> {
            let paths = self.paths.clone();
            if let Some((front, back)) = &paths {
                write_state(xs, front, XenbusState::Closing)?;
                // A dead or hostile back end never answers: carry on.
                let _ = wait_for_state(xs, back, timeout, |s| {
                    s >= XenbusState::Closing || s == XenbusState::Unknown
                });
            }
            let report = self.release();
            if let Some((front, _)) = &paths {
                write_state(xs, front, XenbusState::Closed)?;
            }
            Ok(report)
        }

        /// Like [`Netfront::recv`], waiting up to `timeout` for a frame.
        pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, NetError> {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(f) = self.recv()? {
                    return Ok(Some(f));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                self.wait(Some(left))?;
            }
        }

        /// Like [`Netfront::send`], waiting up to `timeout` for ring room.
        pub fn send_timeout(&mut self, frame: &[u8], timeout: Duration) -> Result<(), NetError> {
            let deadline = Instant::now() + timeout;
            loop {
                match self.send(frame) {
                    Err(NetError::TxFull) => {}
                    r => return r,
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(crate::error::DeviceError::Timeout.into());
                }
                self.wait(Some(left))?;
            }
        }
    }
}
