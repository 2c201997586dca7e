//! The back end (netback): serves a guest's rings against a host.
//!
//! [`Netback`] maps only the two ring pages. Guest data pages are never
//! mapped: tx data is copied out and rx data copied in with grant copy, so
//! the hypervisor checks every reference against the guest's grant table on
//! every copy and a reference the guest did not grant to us simply fails —
//! the packet is answered with `NETIF_RSP_ERROR`.
//!
//! Each tx chain is gathered slot by slot (copied once from the ring) and
//! checked as a whole before any data moves: no extra-info slots (not
//! negotiated), at most [`MAX_SLOTS`] slots, later fragments not adding up
//! to more than the first slot's total, every fragment inside its page. A
//! violation is answered (so the guest gets its pages back) and then breaks
//! the back end, as Linux netback's fatal tx errors disable the interface.
//!
//! Host frames come from a [`FrameIo`]; one that does not fit in the rx
//! pages the guest has posted waits (the back end asks to be notified once
//! enough are posted, by setting `req_event` that far ahead). Where the
//! host has frame buffers of its own ([`FrameIo::send_with`],
//! [`FrameIo::recv_with`]), the grant copy goes straight into or out of
//! them: each byte crosses memory once between the guest's page and the
//! host. A host thread
//! wakes a sleeping back end through its [`Doorbell`], a loopback event
//! channel, so one wait covers both the guest and the host.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use xenshare_abi::netif::{
    NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETRXF_MORE_DATA, NETTXF_CSUM_BLANK,
    NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
};
use xenshare_abi::PAGE_SIZE;

use super::xenbus::FrontendKeys;
use super::{
    slots_for, FrameIo, Latch, NetError, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, Offer, MAX_FRAME, MAX_SLOTS, MIN_FRAME,
};
use crate::event::Channel;
use crate::grant::GntSt;
use crate::grant::{Importer, Mapping};
use crate::platform::{CopyDst, CopyOp, CopySrc, EventChannels, ForeignMapper, GrantPtr};
use crate::ring::{BackRing, RingError};
use crate::types::{DomId, GrantRef};

type TxRing<M> = BackRing<Mapping<M>, NetifTxRequest, NetifTxResponse>;
type RxRing<M> = BackRing<Mapping<M>, NetifRxRequest, NetifRxResponse>;

/// tx slots handled per [`Netback::poll`] (fairness between directions).
const TX_BUDGET: usize = 256;
/// Host frames delivered per [`Netback::poll`].
const RX_BUDGET: usize = 64;

/// Counters of a [`Netback`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetbackStats {
    /// Guest frames delivered to the host.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest frames answered with an error (bad grant, runt).
    pub tx_errors: u64,
    /// Guest frames the host refused.
    pub tx_dropped: u64,
    /// Host frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Host frames dropped (too large for the guest's features, copy failed).
    pub rx_dropped: u64,
    /// Host-side errors (the [`FrameIo`] failed).
    pub host_errors: u64,
    /// Events sent to the front end.
    pub notifies: u64,
    /// Sleeps ended by the front end's event.
    pub guest_wakeups: u64,
    /// Sleeps ended by the [`Doorbell`] (a host frame).
    pub host_wakeups: u64,
    /// Sleeps that ran out their timeout.
    pub idle_timeouts: u64,
}

/// Wakes a sleeping [`Netback`] from another thread (the host side, when a
/// frame arrives). A loopback event channel of the back end's own domain.
pub struct Doorbell<E: EventChannels> {
    chan: Channel<E>,
}

impl<E: EventChannels> core::fmt::Debug for Doorbell<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Doorbell")
            .field("port", &self.chan.port())
            .finish()
    }
}

impl<E: EventChannels> Doorbell<E> {
    /// Wakes the back end (events coalesce: ringing twice is one wake-up).
    pub fn ring(&self) -> Result<(), NetError> {
        Ok(self.chan.notify()?)
    }
}

/// What is wrong with a tx chain.
enum ChainFault {
    /// A protocol violation: answer and break.
    Fatal(&'static str),
    /// A bad packet: answer with an error and carry on.
    Drop,
}

/// A netif back end.
pub struct Netback<M: ForeignMapper, E: EventChannels> {
    tx: TxRing<M>,
    rx: RxRing<M>,
    importer: Importer<M>,
    chan: Channel<E>,
    rx_chan: Option<Channel<E>>,
    bell_wait: Channel<E>,
    bell: Arc<Doorbell<E>>,
    frontend: DomId,
    front_sg: bool,
    chain: Vec<NetifTxRequest>,
    txbuf: FrameBuf,
    rxbuf: FrameBuf,
    pending: Option<Pending>,
    /// Events a publish asked for: (tx ring, rx ring).
    notify_due: (bool, bool),
    latch: Latch,
    stats: NetbackStats,
    paths: Option<(String, String)>,
}

impl<M: ForeignMapper, E: EventChannels> core::fmt::Debug for Netback<M, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Netback")
            .field("frontend", &self.frontend)
            .field("port", &self.chan.port())
            .field("stats", &self.stats)
            .field("error", &self.latch.cause())
            .finish()
    }
}

/// A frame-sized buffer whose bytes start on a 64-byte boundary: a copy
/// into a destination that is not 64-byte aligned (such as a plain `Vec`)
/// runs at a tenth of the speed on common x86 CPUs (`rep movsb`).
struct FrameBuf {
    buf: Vec<u8>,
    off: usize,
}

impl FrameBuf {
    const ALIGN: usize = 64;

    fn new() -> Self {
        let buf = vec![0; MAX_FRAME + Self::ALIGN];
        let off = buf.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN);
        Self { buf, off }
    }
}

impl core::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.off..self.off + MAX_FRAME]
    }
}

impl core::ops::DerefMut for FrameBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + MAX_FRAME]
    }
}

/// A placeholder for the unused tail of a grant-copy batch on the stack
/// (never handed to the platform).
fn unused_op<'a>() -> CopyOp<'a> {
    CopyOp {
        src: CopySrc::Local(&[]),
        dst: CopyDst::Local(&mut []),
        len: 0,
        status: GntSt::Okay,
    }
}

/// A host frame waiting for the guest to post enough rx pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Still first in line at the host (this many bytes).
    InHost(usize),
    /// In the back end's `rxbuf` (this many bytes).
    InBuf(usize),
}

impl Pending {
    fn len(self) -> usize {
        match self {
            Pending::InHost(n) | Pending::InBuf(n) => n,
        }
    }
}

/// Copies `frame` (1..=[`MAX_FRAME`] bytes) into the next posted rx pages,
/// as many as it needs (the caller checked they are posted), as one
/// grant-copy batch built on the stack (no allocation per frame), and
/// answers them: each slot with its fragment's size, or all with
/// `NETIF_RSP_ERROR` if the copy failed. Returns whether it succeeded.
fn deliver<M: ForeignMapper>(
    rx: &mut RxRing<M>,
    importer: &Importer<M>,
    frontend: DomId,
    frame: &[u8],
) -> Result<bool, RingError> {
    let len = frame.len();
    let need = slots_for(len).min(MAX_SLOTS);
    let mut all = [NetifRxRequest::default(); MAX_SLOTS];
    let mut got = 0;
    for slot in all.iter_mut().take(need) {
        match rx.next_request()? {
            Some(r) => *slot = r,
            None => break,
        }
        got += 1;
    }
    let reqs = &all[..got];
    let mut ops: [CopyOp<'_>; MAX_SLOTS] = core::array::from_fn(|_| unused_op());
    for ((op, r), chunk) in ops.iter_mut().zip(reqs).zip(frame.chunks(PAGE_SIZE)) {
        *op = CopyOp {
            src: CopySrc::Local(chunk),
            dst: CopyDst::Grant(GrantPtr {
                dom: frontend,
                gref: GrantRef(r.gref),
                offset: 0,
            }),
            len: chunk.len() as u16,
            status: GntSt::Okay,
        };
    }
    let n = got.min(len.div_ceil(PAGE_SIZE));
    let ok = got == need;
    if ok {
        importer.copy(&mut ops[..n]);
    }
    let ok = ok && ops[..n].iter().all(|o| o.status.is_ok());
    for (i, r) in reqs.iter().enumerate() {
        let chunk = (len - i * PAGE_SIZE).min(PAGE_SIZE);
        let rsp = NetifRxResponse {
            id: r.id,
            offset: 0,
            flags: if i + 1 < got { NETRXF_MORE_DATA } else { 0 },
            status: if ok { chunk as i16 } else { NETIF_RSP_ERROR },
        };
        rx.push_response(&rsp)?;
    }
    Ok(ok)
}

impl<M: ForeignMapper, E: EventChannels> Netback<M, E> {
    /// Maps the front end's rings and binds its port, from the keys it
    /// published. Refuses a front end that did not ask for rx-copy.
    pub fn attach(
        importer: &Importer<M>,
        evt: &Arc<E>,
        frontend: DomId,
        keys: &FrontendKeys,
    ) -> Result<Self, NetError> {
        if !keys.request_rx_copy {
            return Err(NetError::NoRequestRxCopy);
        }
        let map = |r| importer.map_rw(frontend, &[r]);
        let tx = TxRing::attach(map(keys.tx_ring_ref)?)?;
        let rx = RxRing::attach(map(keys.rx_ring_ref)?)?;
        let chan = Channel::bind(evt, frontend, keys.event_channel)?;
        let rx_chan = match keys.event_channel_rx {
            Some(p) => Some(Channel::bind(evt, frontend, p)?),
            None => None,
        };
        let bell_wait = Channel::alloc_unbound(evt, DomId::SELF)?;
        let bell = Arc::new(Doorbell {
            chan: Channel::bind(evt, DomId::SELF, bell_wait.port())?,
        });
        Ok(Self {
            tx,
            rx,
            importer: importer.clone(),
            chan,
            rx_chan,
            bell_wait,
            bell,
            frontend,
            front_sg: keys.sg,
            chain: Vec::with_capacity(MAX_SLOTS),
            txbuf: FrameBuf::new(),
            rxbuf: FrameBuf::new(),
            pending: None,
            notify_due: (false, false),
            latch: Latch::default(),
            stats: NetbackStats::default(),
            paths: None,
        })
    }

    /// The front end's and back end's XenStore directories (after
    /// `connect`).
    pub fn paths(&self) -> Option<(&str, &str)> {
        self.paths.as_ref().map(|(f, b)| (f.as_str(), b.as_str()))
    }

    /// A doorbell for the host side to wake [`Netback::wait`].
    pub fn doorbell(&self) -> Arc<Doorbell<E>> {
        self.bell.clone()
    }

    /// The front end's domain.
    pub fn frontend(&self) -> DomId {
        self.frontend
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetbackStats {
        self.stats
    }

    /// The error that broke the back end, if any.
    pub fn error(&self) -> Option<&NetError> {
        self.latch.cause()
    }

    /// Whether an error has broken the back end.
    pub fn is_broken(&self) -> bool {
        self.latch.is_tripped()
    }

    fn trip(&mut self, e: impl Into<NetError>) -> NetError {
        self.latch.trip(e.into())
    }

    /// Serves both rings once: forwards guest frames to `io` and delivers
    /// frames from `io` into the guest's posted pages. Returns whether
    /// anything was done.
    ///
    /// Unless the front end split its channels, both rings share one, so
    /// a round that answers tx requests and delivers rx frames sends one
    /// event, not one per ring:
    /// Linux's netfront counts an event that finds no new work as spurious
    /// and, after a few in a row, delays the next ones (its "late EOI",
    /// up to a second), rx and tx alike on a shared channel. A second event
    /// right behind the first is exactly such an event: the first one's
    /// handler has already taken both rings' responses.
    pub fn poll<F: FrameIo>(&mut self, io: &mut F) -> Result<bool, NetError> {
        self.latch.check()?;
        let r = match self.serve_tx(io) {
            Ok(a) => self.serve_rx(io).map(|b| a || b),
            Err(e) => Err(e),
        };
        // Even after an error: the guest gets what was answered.
        let sent = self.flush_notify();
        let work = r?;
        sent?;
        Ok(work)
    }

    /// Sends the events publishes asked for, if any.
    fn flush_notify(&mut self) -> Result<(), NetError> {
        let (tx, rx) = core::mem::take(&mut self.notify_due);
        match &self.rx_chan {
            Some(rc) => {
                if rx {
                    self.stats.notifies += 1;
                    rc.notify()?;
                }
                if tx {
                    self.stats.notifies += 1;
                    self.chan.notify()?;
                }
            }
            None if tx || rx => {
                self.stats.notifies += 1;
                self.chan.notify()?;
            }
            None => {}
        }
        Ok(())
    }

    fn publish_tx(&mut self) -> Result<(), NetError> {
        match self.tx.push_responses_and_check_notify() {
            Ok(notify) => {
                self.notify_due.0 |= notify;
                Ok(())
            }
            Err(e) => Err(self.trip(e)),
        }
    }

    fn serve_tx<F: FrameIo>(&mut self, io: &mut F) -> Result<bool, NetError> {
        let mut work = false;
        for _ in 0..TX_BUDGET {
            let req = match self.tx.next_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(self.trip(e)),
            };
            work = true;
            self.chain.push(req);
            if req.flags & NETTXF_MORE_DATA != 0 {
                if self.chain.len() >= MAX_SLOTS {
                    return self
                        .fatal_chain(req.id, "tx chain longer than XEN_NETIF_NR_SLOTS_MIN slots");
                }
                // The rest of the chain may not be published yet: it stays
                // in `chain` until it is.
                continue;
            }
            self.finish_chain(io)?;
        }
        if work {
            self.publish_tx()?;
        }
        Ok(work)
    }

    /// Answers every slot of the current chain with `status`.
    fn answer_chain(&mut self, status: i16) -> Result<(), NetError> {
        let chain = core::mem::take(&mut self.chain);
        for slot in &chain {
            let rsp = NetifTxResponse {
                id: slot.id,
                status,
            };
            if let Err(e) = self.tx.push_response(&rsp) {
                return Err(self.trip(e));
            }
        }
        self.chain = chain;
        self.chain.clear();
        Ok(())
    }

    fn fatal_chain(&mut self, id: u16, why: &'static str) -> Result<bool, NetError> {
        // Answer first so the guest can take its pages back.
        self.answer_chain(NETIF_RSP_ERROR)?;
        self.publish_tx()?;
        self.flush_notify()?;
        Err(self.trip(NetError::BadTxRequest { id, why }))
    }

    /// Checks a complete chain (private copies) and returns its fragments'
    /// sizes (the first `chain.len()` entries; no allocation per frame).
    fn check_chain(chain: &[NetifTxRequest]) -> Result<[usize; MAX_SLOTS], ChainFault> {
        let Some(first) = chain.first() else {
            return Err(ChainFault::Fatal("empty tx chain"));
        };
        if chain.len() > MAX_SLOTS {
            return Err(ChainFault::Fatal(
                "tx chain longer than XEN_NETIF_NR_SLOTS_MIN slots",
            ));
        }
        if chain.iter().any(|s| s.flags & NETTXF_EXTRA_INFO != 0) {
            return Err(ChainFault::Fatal("extra info slot not negotiated"));
        }
        let total = usize::from(first.size);
        let rest: usize = chain[1..].iter().map(|s| usize::from(s.size)).sum();
        if rest >= total && chain.len() > 1 {
            return Err(ChainFault::Fatal(
                "fragment sizes add up to more than the frame",
            ));
        }
        let mut sizes = [0usize; MAX_SLOTS];
        sizes[0] = total - rest.min(total);
        for (size, s) in sizes[1..].iter_mut().zip(&chain[1..]) {
            *size = usize::from(s.size);
        }
        for (slot, size) in chain.iter().zip(&sizes) {
            if usize::from(slot.offset) + size > PAGE_SIZE {
                return Err(ChainFault::Fatal("offset + size beyond the page"));
            }
        }
        if total < MIN_FRAME {
            return Err(ChainFault::Drop);
        }
        Ok(sizes)
    }

    fn finish_chain<F: FrameIo>(&mut self, io: &mut F) -> Result<(), NetError> {
        let first_id = self.chain.first().map(|s| s.id).unwrap_or(0);
        let sizes = match Self::check_chain(&self.chain) {
            Ok(s) => s,
            Err(ChainFault::Fatal(why)) => return self.fatal_chain(first_id, why).map(drop),
            Err(ChainFault::Drop) => {
                self.stats.tx_errors += 1;
                return self.answer_chain(NETIF_RSP_ERROR);
            }
        };
        let n = self.chain.len();
        let total: usize = sizes[..n].iter().sum();
        // Linux's netfront leaves IPv4 TCP/UDP checksums to "the hardware"
        // (NETTXF_csum_blank); nothing after us would fill them in.
        let blank = self
            .chain
            .first()
            .is_some_and(|s| s.flags & NETTXF_CSUM_BLANK != 0);
        // What the host's `fill` call found: `None` if it was never called.
        let mut filled = None;
        let (importer, chain, frontend) = (&self.importer, &self.chain, self.frontend);
        // The frame is grant-copied straight into the host's buffer where
        // the host has one (else into `txbuf`), as one batch built on the
        // stack: no allocation per frame.
        let fill = |buf: &mut [u8]| {
            // A host handing over less room than asked for gets nothing.
            let Some(buf) = buf.get_mut(..total) else {
                filled = Some(false);
                return false;
            };
            let copied = {
                let mut ops: [CopyOp<'_>; MAX_SLOTS] = core::array::from_fn(|_| unused_op());
                let mut rest = &mut buf[..];
                for ((op, slot), &size) in ops.iter_mut().zip(chain).zip(&sizes) {
                    let (head, tail) = core::mem::take(&mut rest).split_at_mut(size);
                    rest = tail;
                    *op = CopyOp {
                        src: CopySrc::Grant(GrantPtr {
                            dom: frontend,
                            gref: GrantRef(slot.gref),
                            offset: slot.offset,
                        }),
                        dst: CopyDst::Local(head),
                        len: size as u16,
                        status: GntSt::Okay,
                    };
                }
                importer.copy(&mut ops[..n]);
                ops[..n].iter().all(|o| o.status.is_ok())
            };
            // A reference not granted to us (or not readable) is the guest's
            // problem, answered as such; so are headers that cannot be
            // parsed for a blank checksum (dropped, as Linux's netback does).
            let ok = copied && !(blank && super::csum::complete(buf).is_err());
            filled = Some(ok);
            ok
        };
        let sent = io.send_with(total, &mut self.txbuf, fill);
        let status = match (sent, filled) {
            (Ok(true), _) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += total as u64;
                NETIF_RSP_OKAY
            }
            (Ok(false), _) | (Err(_), Some(false)) => {
                self.stats.tx_errors += 1;
                NETIF_RSP_ERROR
            }
            (Err(_), _) => {
                self.stats.tx_dropped += 1;
                NETIF_RSP_DROPPED
            }
        };
        self.answer_chain(status)
    }

    /// Counts a host frame that [`deliver`] copied (`ok`) or failed to.
    fn count_rx(&mut self, len: usize, ok: bool) {
        if ok {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += len as u64;
        } else {
            self.stats.rx_dropped += 1;
        }
    }

    fn serve_rx<F: FrameIo>(&mut self, io: &mut F) -> Result<bool, NetError> {
        let mut work = false;
        for _ in 0..RX_BUDGET {
            let avail = match self.rx.unconsumed_requests() {
                Ok(n) => n as usize,
                Err(e) => return Err(self.trip(e)),
            };
            match self.pending.take() {
                Some(Pending::InBuf(len)) => {
                    if avail < slots_for(len) {
                        self.pending = Some(Pending::InBuf(len));
                        break;
                    }
                    let Some(frame) = self.rxbuf.get(..len).filter(|_| self.fits(len)) else {
                        self.stats.rx_dropped += 1;
                        continue;
                    };
                    work = true;
                    match deliver(&mut self.rx, &self.importer, self.frontend, frame) {
                        Ok(ok) => self.count_rx(len, ok),
                        Err(e) => return Err(self.trip(e)),
                    }
                    continue;
                }
                Some(Pending::InHost(len)) if avail < slots_for(len) => {
                    self.pending = Some(Pending::InHost(len));
                    break;
                }
                _ => {}
            }
            // The host hands over its own copy of the frame, grant-copied
            // from there into the guest's pages (no copy into `rxbuf`).
            let sg = self.front_sg;
            let (rx, importer, frontend) = (&mut self.rx, &self.importer, self.frontend);
            let mut delivered = None;
            let offer = io.recv_with(&mut self.rxbuf, |frame| {
                let len = frame.len();
                if !Self::fits_sg(len, sg) {
                    // Taken, and dropped (`delivered` stays `None`).
                    return true;
                }
                if avail < slots_for(len) {
                    return false;
                }
                delivered = Some(deliver(rx, importer, frontend, frame).map(|ok| (len, ok)));
                true
            });
            match offer {
                Err(_) => {
                    self.stats.host_errors += 1;
                    break;
                }
                Ok(Offer::Empty) => break,
                Ok(Offer::Kept(len)) => {
                    self.pending = Some(Pending::InHost(len));
                    break;
                }
                Ok(Offer::InScratch(len)) => {
                    self.pending = Some(Pending::InBuf(len));
                    break;
                }
                Ok(Offer::Taken) => match delivered {
                    None => self.stats.rx_dropped += 1,
                    Some(Ok((len, ok))) => {
                        work = true;
                        self.count_rx(len, ok);
                    }
                    Some(Err(e)) => return Err(self.trip(e)),
                },
            }
        }
        if work {
            match self.rx.push_responses_and_check_notify() {
                Ok(notify) => self.notify_due.1 |= notify,
                Err(e) => return Err(self.trip(e)),
            }
        }
        Ok(work)
    }

    /// Whether a host frame of `len` bytes can go to this front end.
    fn fits(&self, len: usize) -> bool {
        Self::fits_sg(len, self.front_sg)
    }

    /// Whether a host frame of `len` bytes can go to a front end with
    /// (`sg`) or without scatter-gather.
    fn fits_sg(len: usize, sg: bool) -> bool {
        len != 0 && len <= MAX_FRAME && (len <= PAGE_SIZE || sg)
    }

    /// Sleeps until the front end or the [`Doorbell`] signals (or `timeout`;
    /// `None`: forever), unless work is already waiting. Returns whether it
    /// was woken.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, NetError> {
        self.latch.check()?;
        match self.tx.final_check_for_requests() {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => return Err(self.trip(e)),
        }
        if let Some(len) = self.pending.map(Pending::len) {
            // Ask to be woken once enough rx pages are posted for the frame.
            let need = slots_for(len) as u32;
            match self.rx.final_check_for_requests_at_least(need) {
                Ok(true) => return Ok(true),
                Ok(_) => {}
                Err(e) => return Err(self.trip(e)),
            }
        }
        match self.chan.wait(timeout)? {
            Some(port) => {
                let rx_port = self.rx_chan.as_ref().map(|c| c.port());
                if port == self.chan.port() || Some(port) == rx_port {
                    self.stats.guest_wakeups += 1;
                } else if port == self.bell_wait.port() {
                    self.stats.host_wakeups += 1;
                }
                self.chan.handle().unmask(port)?;
                Ok(true)
            }
            None => {
                self.stats.idle_timeouts += 1;
                Ok(false)
            }
        }
    }

    /// Unmaps the rings and closes the ports.
    pub fn release(self) {
        let Self {
            tx,
            rx,
            chan,
            rx_chan,
            bell_wait,
            ..
        } = self;
        drop(tx);
        drop(rx);
        drop(chan);
        drop(rx_chan);
        drop(bell_wait);
    }
}

#[cfg(feature = "std")]
mod with_std {
    use super::*;
    use crate::net::xenbus::{frontend_of, BackendFeatures, DEVTYPE};
    use crate::store::client::{Client, Transport};
    use crate::store::xenbus::{
        backend_path, read_state, wait_for_state, write_state, XenbusState,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// Why [`Netback::run`] returned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum RunExit {
        /// The stop flag was set.
        Stopped,
        /// The front end is closing, closed or gone.
        FrontendClosed,
    }

    /// How often [`Netback::run`] looks at the front end's state.
    const STATE_POLL: Duration = Duration::from_millis(100);

    impl<M: ForeignMapper, E: EventChannels> Netback<M, E> {
        /// The whole back-end handshake for device `devid` of `frontend`:
        /// waits (up to `timeout`) for a front end left attached to an
        /// earlier back end to reset, publishes the features, goes InitWait,
        /// waits (up to `timeout`) for the front end to connect, reads its
        /// keys, maps the rings, binds the port and goes Connected.
        pub fn connect<T: Transport>(
            importer: &Importer<M>,
            evt: &Arc<E>,
            xs: &mut Client<T>,
            frontend: DomId,
            devid: u32,
            timeout: Duration,
        ) -> Result<Self, NetError> {
            let back_dir = backend_path(importer.domid(), DEVTYPE, frontend, devid);
            Self::connect_at(importer, evt, xs, &back_dir, frontend, timeout)
        }

        /// [`Netback::connect`] for a back-end directory of any type (a
        /// userspace back end on real Xen uses a private type, as QEMU's
        /// does, so that the kernel's netback leaves the device alone; the
        /// front end only follows its `backend` key).
        pub fn connect_at<T: Transport>(
            importer: &Importer<M>,
            evt: &Arc<E>,
            xs: &mut Client<T>,
            back_dir: &str,
            frontend: DomId,
            timeout: Duration,
        ) -> Result<Self, NetError> {
            let back_dir = String::from(back_dir);
            let front_dir = frontend_of(xs, &back_dir)?;
            // A front end still attached to an earlier back end (after a
            // back-end restart) has stale keys: wait for it to reset
            // (`Netfront::reconnect` goes Closing, then Initialising) before
            // offering this back end, so the old rings are never mapped.
            wait_for_state(xs, &front_dir, timeout, |s| {
                !matches!(
                    s,
                    XenbusState::Initialised | XenbusState::Connected | XenbusState::Closing
                )
            })?;
            BackendFeatures::OURS.publish(xs, &back_dir)?;
            write_state(xs, &back_dir, XenbusState::InitWait)?;
            let st = wait_for_state(xs, &front_dir, timeout, |s| {
                s == XenbusState::Initialised || s >= XenbusState::Connected
            })?;
            if st >= XenbusState::Closing {
                return Err(NetError::PeerClosed);
            }
            let attached = FrontendKeys::read(xs, &front_dir)
                .and_then(|keys| Self::attach(importer, evt, frontend, &keys));
            let mut nb = match attached {
                Ok(nb) => nb,
                Err(e) => {
                    let _ = write_state(xs, &back_dir, XenbusState::Closing);
                    return Err(e);
                }
            };
            write_state(xs, &back_dir, XenbusState::Connected)?;
            nb.paths = Some((front_dir, back_dir));
            Ok(nb)
        }

        /// Serves until `stop` is set or the front end closes; checks the
        /// front end's state every 100 ms. Returns an error if the front end
        /// broke the protocol (the back end is then broken; call
        /// [`Netback::disconnect`]).
        pub fn run<F: FrameIo, T: Transport>(
            &mut self,
            io: &mut F,
            xs: &mut Client<T>,
            stop: &AtomicBool,
        ) -> Result<RunExit, NetError> {
            let mut next_check = Instant::now();
            loop {
                if stop.load(Ordering::Acquire) {
                    return Ok(RunExit::Stopped);
                }
                if Instant::now() >= next_check {
                    next_check = Instant::now() + STATE_POLL;
                    if let Some((front, _)) = &self.paths {
                        let s = read_state(xs, front)?;
                        if s >= XenbusState::Closing || s == XenbusState::Unknown {
                            return Ok(RunExit::FrontendClosed);
                        }
                    }
                }
                if !self.poll(io)? {
                    self.wait(Some(Duration::from_millis(20)))?;
                }
            }
        }

        /// Unmaps everything, then Closing and Closed.
        pub fn disconnect<T: Transport>(self, xs: &mut Client<T>) -> Result<(), NetError> {
            let paths = self.paths.clone();
            self.release();
            if let Some((_, back)) = paths {
                write_state(xs, &back, XenbusState::Closing)?;
                write_state(xs, &back, XenbusState::Closed)?;
            }
            Ok(())
        }
    }
}

#[cfg(feature = "std")]
pub use with_std::RunExit;
