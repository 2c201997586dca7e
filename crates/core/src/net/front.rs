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
//! and gathers `more_data` chains (every slot checked as it is taken, the
//! pages held until the frame is complete). [`Netfront::recv`] then copies
//! the frame out of its pages once; [`Netfront::recv_with`] lends it in
//! place to a closure ([`RxFrame`]: read-only windows of the pages) and
//! posts the pages again only after the closure returns. An answered rx page stays granted to the back end and is posted
//! again as it is (a persistent grant: it only ever holds what that back end
//! wrote), unless the grant table shows the back end still mapping it, in
//! which case it is revoked like a tx page. Rx pages are revoked on
//! [`Netfront::release`] and [`Netfront::rebuild`].

use crate::mem::{OutOfBounds, ReadOnly, SharedMem};
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

/// One answered rx slot of the frame being received: its page, still
/// granted to the back end, and where the fragment lies in it (checked to be
/// inside the page).
struct HeldFrag<B: GrantBackend> {
    share: Share<B>,
    off: usize,
    size: usize,
}

/// The frame being received: the answered slots of its chain so far, their
/// pages not yet re-posted (at most [`MAX_SLOTS`]).
struct Held<B: GrantBackend> {
    frags: Vec<HeldFrag<B>>,
    /// Bytes in `frags` (at most [`MAX_FRAME`]).
    len: usize,
    /// A slot was answered with an error status.
    failed: bool,
    /// The first slot said the checksum is left to us (NETRXF_csum_blank).
    csum_blank: bool,
    /// The chain's last slot (no NETRXF_more_data) is among `frags`.
    complete: bool,
}

impl<B: GrantBackend> Held<B> {
    fn new() -> Self {
        Self {
            frags: Vec::with_capacity(MAX_SLOTS),
            len: 0,
            failed: false,
            csum_blank: false,
            complete: false,
        }
    }

    /// Forgets the frame's bookkeeping (its pages must have been taken).
    fn reset(&mut self) {
        self.len = 0;
        self.failed = false;
        self.csum_blank = false;
        self.complete = false;
    }
}

/// One piece of a received frame (see [`RxFrame::fragments`]).
#[derive(Debug, Clone, Copy)]
pub enum RxFragment<'a> {
    /// The bytes where the back end copied them, in an rx page: shared
    /// memory, read once (a back end that kept a mapping could change it).
    Shared(SharedMem<'a, ReadOnly>),
    /// A private copy.
    Private(&'a [u8]),
}

impl RxFragment<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            RxFragment::Shared(m) => m.len(),
            RxFragment::Private(b) => b.len(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `dst.len()` bytes at `offset` out of it.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        match self {
            RxFragment::Shared(m) => m.read(offset, dst),
            RxFragment::Private(b) => {
                let src = offset
                    .checked_add(dst.len())
                    .and_then(|end| b.get(offset..end))
                    .ok_or(OutOfBounds {
                        offset,
                        len: dst.len(),
                        size: b.len(),
                    })?;
                dst.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// A received frame as [`Netfront::recv_with`] lends it to its closure:
/// normally read-only windows onto the rx pages the back end copied it into
/// (no copy made), else a private copy. It cannot outlive the call: the
/// pages go back to the back end when the closure returns.
#[derive(Debug, Clone, Copy)]
pub struct RxFrame<'a> {
    /// In place: the first `n` entries are the fragments, in order.
    pieces: [Option<SharedMem<'a, ReadOnly>>; MAX_SLOTS],
    n: usize,
    /// A private copy (then `n` is 0).
    private: Option<&'a [u8]>,
    len: usize,
}

impl<'a> RxFrame<'a> {
    fn private(data: &'a [u8]) -> Self {
        Self {
            pieces: [None; MAX_SLOTS],
            n: 0,
            private: Some(data),
            len: data.len(),
        }
    }

    /// Read-only windows onto the held fragments (`len` bytes in all).
    fn in_pages<B: GrantBackend>(
        frags: &'a [HeldFrag<B>],
        len: usize,
    ) -> Result<Self, OutOfBounds> {
        let mut pieces = [None; MAX_SLOTS];
        for (p, f) in pieces.iter_mut().zip(frags) {
            *p = Some(f.share.mem().slice(f.off, f.size)?.read_only());
        }
        Ok(Self {
            pieces,
            n: frags.len().min(MAX_SLOTS),
            private: None,
            len,
        })
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty (never, for a delivered frame).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are still in the rx pages (shared memory) rather
    /// than a private copy.
    pub fn in_place(&self) -> bool {
        self.private.is_none()
    }

    /// The frame's pieces in order (one per rx slot in place; one in all
    /// for a private copy).
    pub fn fragments(&self) -> impl Iterator<Item = RxFragment<'a>> + '_ {
        self.pieces[..self.n]
            .iter()
            .flatten()
            .map(|m| RxFragment::Shared(*m))
            .chain(self.private.map(RxFragment::Private))
    }

    /// Copies `dst.len()` bytes at `offset` of the frame out (across
    /// fragments).
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let oob = OutOfBounds {
            offset,
            len: dst.len(),
            size: self.len,
        };
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(oob);
        }
        let (mut skip, mut done) = (offset, 0);
        for frag in self.fragments() {
            if done == dst.len() {
                break;
            }
            let flen = frag.len();
            if skip >= flen {
                skip -= flen;
                continue;
            }
            let n = (flen - skip).min(dst.len() - done);
            frag.read(skip, &mut dst[done..done + n])?;
            done += n;
            skip = 0;
        }
        if done == dst.len() {
            Ok(())
        } else {
            Err(oob)
        }
    }

    /// Appends the whole frame to `out`.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + self.len, 0);
        // Cannot fail: the destination is exactly the frame's length.
        let _ = self.read(0, &mut out[at..]);
    }
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
    held: Held<B>,
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
            held: Held::new(),
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

    /// Whether a quarter of the rx pages (at least a largest frame's worth)
    /// wait to be posted again.
    fn refill_due(&self) -> bool {
        let batch = (self.cfg.rx_buffers / 4).max(MAX_SLOTS);
        self.cfg.rx_buffers - self.rx_inflight.in_flight().min(self.cfg.rx_buffers) >= batch
    }

    /// Takes answered rx slots, copies frames out, and re-posts pages.
    ///
    /// Pages are re-posted every quarter ring (at least a largest frame's
    /// worth) rather than only at the end, so the back end fills the fresh
    /// ones while this side is still copying out the rest: the two work
    /// side by side instead of taking turns.
    fn reap_rx(&mut self) -> Result<(), NetError> {
        loop {
            if self.refill_due() {
                self.refill()?;
            }
            if self.ready.len() >= READY_MAX || !self.gather()? {
                break;
            }
            // Copy once; only the private copy is looked at after.
            let copied = self.copy_held();
            // Pages the back end still maps are revoked (or quarantined,
            // breaking the device): nothing read from a kept page is
            // delivered.
            self.release_held()?;
            if let Some(data) = copied? {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += data.len() as u64;
                self.ready.push_back(data);
            }
        }
        self.refill()
    }

    /// Takes answered rx slots into `held` until one frame's chain is
    /// complete (`true`) or no answer is waiting (`false`: the slots taken
    /// so far stay held for the next call). Every slot is checked as it is
    /// taken; a violation releases the held pages and breaks the device.
    fn gather(&mut self) -> Result<bool, NetError> {
        while !self.held.complete {
            let rsp = match self.rx.next_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(false),
                Err(e) => return Err(self.trip(e)),
            };
            let share = match self.rx.complete(&mut self.rx_inflight, rsp.id.into(), OP) {
                Ok(s) => s,
                Err(e) => return Err(self.trip(e)),
            };
            let checked = self.check_fragment(&rsp);
            let (off, size) = *checked.as_ref().unwrap_or(&(0, 0));
            self.held.frags.push(HeldFrag { share, off, size });
            if let Err(e) = checked {
                // The device is broken; the pages go back as usual (the
                // first cause is the one kept).
                let _ = self.release_held();
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Checks one rx response (a private copy of the slot) against the
    /// frame held so far and counts it in; returns where its data lies in
    /// its page (`(0, 0)` for a slot answered with an error).
    fn check_fragment(&mut self, rsp: &NetifRxResponse) -> Result<(usize, usize), NetError> {
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
        if self.held.frags.is_empty() {
            self.held.csum_blank = rsp.flags & NETRXF_CSUM_BLANK != 0;
        }
        if self.held.frags.len() >= MAX_SLOTS {
            return Err(self.trip(bad("frame uses more slots than allowed")));
        }
        let place = if rsp.status < 0 {
            self.held.failed = true;
            (0, 0)
        } else {
            let (off, size) = (usize::from(rsp.offset), rsp.status as usize);
            if off + size > PAGE_SIZE {
                return Err(self.trip(bad("offset + size beyond the page")));
            }
            if self.held.len + size > MAX_FRAME {
                return Err(self.trip(bad("frame longer than the largest frame")));
            }
            self.held.len += size;
            (off, size)
        };
        self.held.complete = !more;
        Ok(place)
    }

    /// A private copy of the complete frame in `held`, or `None` (counted
    /// as an rx error) if the back end failed a slot, the frame is empty,
    /// or its blank checksum cannot be completed. The pages stay held.
    fn copy_held(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        let len = self.held.len;
        if self.held.failed || len == 0 {
            self.stats.rx_errors += 1;
            return Ok(None);
        }
        // One buffer for the whole frame, from the frames given back if
        // any. A pooled buffer keeps its length: its old bytes are
        // overwritten, not zeroed first.
        let mut data = self.frame_pool.pop().unwrap_or_default();
        if data.len() < len {
            data.resize(len, 0);
        }
        data.truncate(len);
        let mut at = 0;
        for f in &self.held.frags {
            let r = f.share.mem().read(f.off, &mut data[at..at + f.size]);
            if let Err(e) = r {
                return Err(self.trip(RingError::from(e)));
            }
            at += f.size;
        }
        if self.held.csum_blank && super::csum::complete(&mut data).is_err() {
            self.stats.rx_errors += 1;
            self.recycle_frame(data);
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Whether the back end maps (or is writing) any page of the frame in
    /// `held`, as far as the platform shows.
    fn peer_holds_any_held(&self) -> bool {
        self.held.frags.iter().any(|f| self.peer_holds(&f.share))
    }

    /// Gives the pages of the frame in `held` back to the rx pool: each
    /// stays granted and is posted again, unless the grant table shows the
    /// back end still mapping it, which is revoked (or quarantined,
    /// breaking the device: the error is returned).
    fn release_held(&mut self) -> Result<(), NetError> {
        self.held.reset();
        let mut r = Ok(());
        while let Some(f) = self.held.frags.pop() {
            if self.peer_holds(&f.share) {
                match self.revoke(f.share) {
                    Ok(pages) => self.recycle(pages),
                    Err(e) => r = r.and(Err(e)),
                }
            } else {
                // Posted again as it is, still granted to the same back end.
                self.rx_spare.push(f.share);
            }
        }
        r
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

    /// Hands the next received frame, if any, to `f` without copying it
    /// out of the rx pages (never blocks): `Ok(None)` if no frame is
    /// waiting, else what `f` returned. See [`Netfront::recv_with`] for the
    /// waiting form.
    ///
    /// `f` gets an [`RxFrame`]: normally read-only windows onto the rx pages
    /// the back end copied the frame into ([`RxFrame::in_place`]), checked
    /// like every response (offset and size inside the page, flags
    /// negotiated, at most [`MAX_SLOTS`] slots and [`MAX_FRAME`] bytes).
    /// The pages are posted to the back end again only after `f` returns.
    /// They are shared memory: a back end that kept a mapping of one could
    /// change its bytes while `f` reads them, so `f` should read each byte
    /// once (copy out what it validates), as with any
    /// [`SharedMem`]. If the grant table shows the
    /// back end mapping a page before `f` runs, the frame is copied out
    /// first and the page revoked, exactly as [`Netfront::recv`] does; if
    /// it shows one after `f` returned, the page is revoked or quarantined
    /// and the error returned (the device is then broken).
    ///
    /// A frame [`Netfront::recv`] already copied out (it stops at 64), or
    /// one with a checksum left blank by the back end (completed here, so
    /// changed), is lent from its private copy instead. Frames come in
    /// order either way.
    ///
    /// ```
    /// use xenshare::net::{NetError, Netfront};
    /// use xenshare::platform::{EventChannels, GrantBackend};
    ///
    /// /// The next frame's first 14 bytes (its Ethernet header), if any.
    /// fn header<B: GrantBackend, E: EventChannels>(
    ///     nf: &mut Netfront<B, E>,
    /// ) -> Result<Option<[u8; 14]>, NetError> {
    ///     let got = nf.try_recv_with(|frame| {
    ///         let mut h = [0u8; 14];
    ///         frame.read(0, &mut h).ok().map(|()| h)
    ///     })?;
    ///     Ok(got.flatten())
    /// }
    /// ```
    ///
    /// A frame cannot be kept past its call (its pages are posted to the
    /// back end again right after):
    ///
    /// ```compile_fail,E0521
    /// use xenshare::net::{NetError, Netfront, RxFrame};
    /// use xenshare::platform::{EventChannels, GrantBackend};
    ///
    /// fn keep<'v, B: GrantBackend, E: EventChannels>(
    ///     nf: &mut Netfront<B, E>,
    ///     kept: &mut Vec<RxFrame<'v>>,
    /// ) -> Result<(), NetError> {
    ///     nf.try_recv_with(|frame| kept.push(frame))?;
    ///     Ok(())
    /// }
    /// ```
    pub fn try_recv_with<R>(
        &mut self,
        f: impl FnOnce(RxFrame<'_>) -> R,
    ) -> Result<Option<R>, NetError> {
        self.latch.check()?;
        if let Some(data) = self.ready.pop_front() {
            let r = f(RxFrame::private(&data));
            self.recycle_frame(data);
            return Ok(Some(r));
        }
        self.reap_tx()?;
        loop {
            if self.refill_due() {
                self.refill()?;
            }
            if !self.gather()? {
                self.refill()?;
                return Ok(None);
            }
            let len = self.held.len;
            if self.held.failed || len == 0 || self.held.csum_blank || self.peer_holds_any_held() {
                // Copied out (or dropped) and released as `recv` does.
                let copied = self.copy_held();
                self.release_held()?;
                let Some(data) = copied? else {
                    continue;
                };
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += data.len() as u64;
                let r = f(RxFrame::private(&data));
                self.recycle_frame(data);
                return Ok(Some(r));
            }
            let r = match RxFrame::in_pages(&self.held.frags, len) {
                Ok(frame) => Ok(f(frame)),
                Err(e) => Err(RingError::from(e)),
            };
            // Only now may the back end have the pages again.
            let released = self.release_held();
            let r = match r {
                Ok(r) => r,
                Err(e) => return Err(self.trip(e)),
            };
            released?;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += len as u64;
            return Ok(Some(r));
        }
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
        // A half-received frame is dropped.
        for f in self.held.frags.drain(..) {
            back.extend(Self::give_back(f.share, &mut report));
        }
        self.held.reset();
        for p in back {
            self.recycle(Some(p));
        }
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
            held,
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
        for f in held.frags {
            give_back(f.share);
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

        /// Like [`Netfront::try_recv_with`], waiting up to `timeout` (one
        /// deadline, not restarted by wake-ups) for a frame: hands the next
        /// frame to `f` in place in the rx pages, which are posted again
        /// only after `f` returns. `Ok(None)` if none came in time.
        pub fn recv_with<R>(
            &mut self,
            timeout: Duration,
            f: impl FnOnce(RxFrame<'_>) -> R,
        ) -> Result<Option<R>, NetError> {
            let deadline = Instant::now() + timeout;
            let mut f = Some(f);
            loop {
                let r = self.try_recv_with(|frame| f.take().map(|f| f(frame)))?;
                if let Some(r) = r.flatten() {
                    return Ok(Some(r));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A privately copied frame reads like one in place: any window inside
    /// it, nothing past its end, and an offset that would overflow is an
    /// error, not a panic.
    #[test]
    fn a_private_frame_reads_windows_and_refuses_past_its_end() {
        let data: Vec<u8> = (0..100u8).collect();
        let f = RxFrame::private(&data);
        assert!(!f.in_place());
        assert_eq!((f.len(), f.fragments().count()), (100, 1));
        let mut b = [0u8; 10];
        f.read(90, &mut b).unwrap();
        assert_eq!(b[..], data[90..]);
        assert!(f.read(91, &mut b).is_err());
        assert!(f.read(usize::MAX, &mut b).is_err());
        let frag = f.fragments().next().unwrap();
        assert!(frag.read(usize::MAX - 3, &mut b).is_err());
        let mut all = vec![7u8];
        f.copy_to(&mut all);
        assert_eq!((all[0], &all[1..]), (7, &data[..]));
    }
}
