//! Reading and writing: libxenvchan's ring algorithm with validated indices.

use alloc::string::String;
use core::sync::atomic::{fence, AtomicU32, AtomicU8, Ordering};
use core::time::Duration;

use xenshare_abi::vchan as abi;

use super::{notify, VchanError};
use crate::deadline::Deadline;
use crate::error::DeviceError;
use crate::event::Channel;
use crate::mem::{ReadOnly, SharedMem};
use crate::platform::EventChannels;
use crate::ring::bytes::{ByteConsumer, ByteProducer, ByteRingError, Layout};

/// Where one of our two rings lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RingLoc {
    /// Inside the control page.
    InPage { offset: usize, order: u16 },
    /// In the separately granted left or right pages.
    External { left: bool, order: u16 },
}

impl RingLoc {
    fn order(self) -> u16 {
        match self {
            RingLoc::InPage { order, .. } | RingLoc::External { order, .. } => order,
        }
    }
}

/// The memory of one end of a vchan (server shares or client mappings).
pub trait VchanSide {
    /// True for the server end.
    const SERVER: bool;
    /// The control page (None once released).
    fn ctrl(&self) -> Option<SharedMem<'_>>;
    /// The external left (client → server) or right ring pages, if this
    /// end may write them.
    fn external_rw(&self, left: bool) -> Option<SharedMem<'_>>;
    /// The external left or right ring pages, to read.
    fn external_ro(&self, left: bool) -> Option<SharedMem<'_, ReadOnly>>;
    /// Gives every share back (revoke or quarantine) or unmaps every page.
    fn release(&mut self);
}

// Offsets in the control page.
const LEFT_CONS: usize = 0;
const LEFT_PROD: usize = 4;
const RIGHT_CONS: usize = 8;
const RIGHT_PROD: usize = 12;
const CLI_LIVE: usize = abi::VCHAN_CLI_LIVE_OFFSET;
const SRV_LIVE: usize = abi::VCHAN_SRV_LIVE_OFFSET;
const CLI_NOTIFY: usize = 22;
const SRV_NOTIFY: usize = 23;

/// How long a blocking call spins re-checking the ring before it sleeps on
/// the event channel, in spin-loop rounds. A sleep and wake-up cost tens of
/// microseconds, so spinning pays while the peer answers within the window;
/// the window adapts (like an adaptive mutex): it doubles when a wait
/// succeeded late in it, and halves when the peer did not answer in time,
/// so a busy stream keeps both ends awake.
///
/// The window never shrinks below what one sleep and wake-up cost
/// ([`crate::event::SPIN_BEFORE_SLEEP`]). A shorter floor has a trap: once
/// both ends of a ping-pong have shrunk their windows below the peer's
/// wake-up time, each answer arrives after the waiter gave up and slept, so
/// every message pays two wake-ups and the windows never grow back; one
/// preemption on a busy machine was enough to fall in (round trip 20–37 µs
/// instead of 1.7 µs, measured).
const SPIN_START: u32 = crate::event::SPIN_BEFORE_SLEEP;
const SPIN_MIN: u32 = SPIN_START;
const SPIN_MAX: u32 = 1 << 18;

/// The longest single sleep of a blocking call with a timeout without a
/// clock (`no_std`), where each sleep is charged in full whether or not a
/// wake-up cut it short; with a clock only the overall deadline matters.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// One end of a vchan.
pub struct Vchan<S: VchanSide, E: EventChannels> {
    mem: S,
    chan: Channel<E>,
    rd: RingLoc,
    wr: RingLoc,
    /// The ring we read: our private consumer index and the producer
    /// index last validated.
    rx: ByteConsumer,
    /// The ring we write: our private producer index, the one last
    /// published to the peer (the private one runs ahead while a batch of
    /// small writes is being gathered), and the consumer index as last read
    /// and validated. Reading the shared header line costs a cache miss
    /// while the peer is writing it, so a batching write that the known free
    /// space already takes does not read it again. (Reads always re-read the
    /// producer.)
    tx: ByteProducer,
    /// Unpublished bytes at which a batch is published (0: publish every
    /// write), see [`Vchan::set_write_batch`].
    batch: usize,
    blocking: bool,
    timeout: Option<Duration>,
    /// The current adaptive spin window (see [`SPIN_START`]).
    spin: u32,
    broken: crate::latch::Latch<VchanError>,
    closed: bool,
    xs_path: Option<String>,
}

impl<S: VchanSide, E: EventChannels> core::fmt::Debug for Vchan<S, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vchan")
            .field("server", &S::SERVER)
            .field("read_order", &self.rd.order())
            .field("write_order", &self.wr.order())
            .field("port", &self.chan.port())
            .field("broken", &self.broken.cause())
            .finish()
    }
}

impl<S: VchanSide, E: EventChannels> Vchan<S, E> {
    pub(crate) fn new(
        mem: S,
        chan: Channel<E>,
        rd: RingLoc,
        wr: RingLoc,
        xs_path: Option<String>,
    ) -> Self {
        let (rd_prod, rd_cons, wr_prod, wr_cons, ..) = Self::offsets();
        let layout = |name, prod, cons, loc: RingLoc| Layout {
            name,
            prod,
            cons,
            data: 0,
            size: 1 << loc.order(),
        };
        Self {
            mem,
            chan,
            rd,
            wr,
            rx: ByteConsumer::new(layout("read", rd_prod, rd_cons, rd), 0),
            tx: ByteProducer::new(layout("write", wr_prod, wr_cons, wr), 0),
            batch: 0,
            blocking: true,
            timeout: None,
            spin: SPIN_START,
            broken: crate::latch::Latch::new(),
            closed: false,
            xs_path,
        }
    }

    fn ctrl(&self) -> Result<SharedMem<'_>, VchanError> {
        ctrl(&self.mem)
    }

    fn u8_at(&self, off: usize) -> Result<&AtomicU8, VchanError> {
        self.ctrl()?
            .atomic_u8(off)
            .map_err(|_| VchanError::Core(DeviceError::Closed))
    }

    /// (read ring producer, write ring consumer, our notify byte, peer's notify byte)
    const fn offsets() -> (usize, usize, usize, usize, usize, usize) {
        if S::SERVER {
            // Server reads left, writes right.
            (
                LEFT_PROD, LEFT_CONS, RIGHT_PROD, RIGHT_CONS, SRV_NOTIFY, CLI_NOTIFY,
            )
        } else {
            (
                RIGHT_PROD, RIGHT_CONS, LEFT_PROD, LEFT_CONS, CLI_NOTIFY, SRV_NOTIFY,
            )
        }
    }

    fn check(&self) -> Result<(), VchanError> {
        if self.closed {
            Err(VchanError::Core(DeviceError::Closed))
        } else {
            self.broken.check()
        }
    }

    /// A byte-ring error: a bad peer index breaks the vchan; memory that
    /// is gone means it was closed.
    fn ring_err(&mut self, e: ByteRingError) -> VchanError {
        ring_err(&mut self.broken, e)
    }

    /// Size of the ring this end reads.
    pub fn read_ring_size(&self) -> usize {
        1 << self.rd.order()
    }

    /// Size of the ring this end writes.
    pub fn write_ring_size(&self) -> usize {
        1 << self.wr.order()
    }

    /// The local event channel port.
    pub fn port(&self) -> crate::Port {
        self.chan.port()
    }

    /// Chooses blocking (the default) or non-blocking reads and writes.
    pub fn set_blocking(&mut self, blocking: bool) {
        self.blocking = blocking;
    }

    /// Bounds blocking calls (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Bytes waiting to be read.
    pub fn data_ready(&mut self) -> Result<usize, VchanError> {
        self.check()?;
        // Acquire: the ring bytes below `prod` are read after this load.
        let r = self.rx.ready(ctrl(&self.mem)?);
        r.map_err(|e| self.ring_err(e))
    }

    /// Bytes that can be written without waiting.
    pub fn buffer_space(&mut self) -> Result<usize, VchanError> {
        self.check()?;
        // Acquire: our ring writes below `cons + size` come after this load,
        // so they cannot overwrite bytes the peer is still reading.
        let r = self.tx.space(ctrl(&self.mem)?);
        r.map_err(|e| self.ring_err(e))
    }

    /// Gathers small writes: bytes written are published to the peer (its
    /// producer index moved, and the peer woken if it asked) only once
    /// `bytes` of them are unpublished, on [`Vchan::flush`], before this end
    /// waits for anything, and on close. A burst of small writes then costs
    /// one index update and at most one notification instead of one each.
    /// 0 (the default) publishes every write at once, as libxenvchan does.
    /// With batching on, the caller must flush when it wants the peer to
    /// see the data (as with a buffered writer).
    pub fn set_write_batch(&mut self, bytes: usize) {
        self.batch = bytes.min(self.write_ring_size());
    }

    /// Publishes every byte written so far and wakes the peer if it asked.
    pub fn flush(&mut self) -> Result<(), VchanError> {
        self.check()?;
        self.publish()
    }

    fn publish(&mut self) -> Result<(), VchanError> {
        if self.tx.unpublished() == 0 {
            return Ok(());
        }
        if self.batch != 0 && !self.is_open() {
            return Err(VchanError::Core(DeviceError::Closed));
        }
        let ctrl = ctrl(&self.mem)?;
        let ours = our_flag::<S>(ctrl)?;
        let r = self.tx.publish_with(ctrl, |idx, new| {
            notify::publish_and_check(idx, new, ours, abi::VCHAN_NOTIFY_WRITE)
        });
        self.wake_if(r)
    }

    /// Sends the event if publishing an index found the peer's request
    /// for it (see [`notify::publish_and_check`]).
    fn wake_if(&mut self, r: Result<Option<bool>, ByteRingError>) -> Result<(), VchanError> {
        match r {
            Ok(Some(true)) => Ok(self.chan.notify()?),
            Ok(_) => Ok(()),
            Err(e) => Err(self.ring_err(e)),
        }
    }

    /// Whether the peer is there: the server reports the client's live byte
    /// (2 = not connected yet counts as open), the client the server's.
    pub fn is_open(&self) -> bool {
        !self.closed && ctrl(&self.mem).is_ok_and(peer_live::<S>)
    }

    /// True once a client has connected (server side) or always (client).
    pub fn is_connected(&self) -> bool {
        if !S::SERVER {
            return self.is_open();
        }
        self.u8_at(CLI_LIVE)
            .map(|b| b.load(Ordering::Acquire) == abi::VCHAN_LIVE_CONNECTED)
            .unwrap_or(false)
    }

    fn request_notify(&self, bit: u8) -> Result<(), VchanError> {
        let (.., peer) = Self::offsets();
        notify::request::<AtomicU32, _>(self.u8_at(peer)?, bit);
        Ok(())
    }

    /// The whole of a write that need not wait: if the ring has room for
    /// at least `min` bytes (at least one), copies as much of `data` as fits
    /// and publishes it once a batch is full (waking the peer if it asked);
    /// `None` if there is not enough room. `live` first checks that the
    /// peer is there.
    ///
    /// One view of the control page and one of the ring serve the whole
    /// call: finding a view is a lookup in the platform's grant or mapping
    /// state, and before this a 64-byte write found five of them, which
    /// cost more than the rest of the write.
    fn put(&mut self, data: &[u8], min: usize, live: bool) -> Result<Option<usize>, VchanError> {
        let published = {
            // Without batching every write re-reads the peer's index, so a
            // corrupt index is reported by the very next write, as
            // libxenvchan would see it; a batching write that the known
            // free space takes reads neither the header line nor (until it
            // publishes) even builds the control page's view.
            let mut space = if self.batch == 0 {
                0
            } else {
                self.tx.known_space()
            };
            let header = if live || space < data.len() {
                Some(ctrl(&self.mem)?)
            } else {
                None
            };
            if let Some(ctrl) = header {
                if live && !peer_live::<S>(ctrl) {
                    return Err(VchanError::Core(DeviceError::Closed));
                }
                if space < data.len() {
                    space = self
                        .tx
                        .space(ctrl)
                        .map_err(|e| ring_err(&mut self.broken, e))?;
                }
            }
            if space == 0 || space < min {
                return Ok(None);
            }
            let n = space.min(data.len());
            let ring = write_ring(&self.mem, self.wr)?;
            moved(self.tx.push(ring, &data[..n]), n, &mut self.broken)?;
            if self.tx.unpublished() < self.batch {
                return Ok(Some(n));
            }
            let ctrl = match header {
                Some(c) => c,
                None => ctrl(&self.mem)?,
            };
            // A batching writer learns of a closed peer when it publishes.
            if self.batch != 0 && !peer_live::<S>(ctrl) {
                return Err(VchanError::Core(DeviceError::Closed));
            }
            let ours = our_flag::<S>(ctrl)?;
            let r = self.tx.publish_with(ctrl, |idx, new| {
                notify::publish_and_check(idx, new, ours, abi::VCHAN_NOTIFY_WRITE)
            });
            (n, r)
        };
        self.wake_if(published.1)?;
        Ok(Some(published.0))
    }

    /// The whole of a read that need not wait: if at least `min` bytes
    /// (at least one) are ready, copies up to `out.len()` of them (each
    /// fetched once), gives their room back and wakes the peer if it asked;
    /// `None` if fewer are ready. Every call re-reads the peer's producer
    /// index, so a corrupt index is reported by the very next read, as
    /// libxenvchan would see it. Like [`Vchan::put`], one view of the
    /// control page and one of the ring serve the call.
    fn take(&mut self, out: &mut [u8], min: usize) -> Result<Option<usize>, VchanError> {
        let taken = {
            let ctrl = ctrl(&self.mem)?;
            // Acquire: the ring bytes below `prod` are read after this load.
            let ready = self
                .rx
                .ready(ctrl)
                .map_err(|e| ring_err(&mut self.broken, e))?;
            if ready == 0 || ready < min {
                return Ok(None);
            }
            let n = ready.min(out.len());
            let ring = read_ring(&self.mem, self.rd)?;
            moved(self.rx.pop(ring, &mut out[..n]), n, &mut self.broken)?;
            let ours = our_flag::<S>(ctrl)?;
            let r = self.rx.publish_with(ctrl, |idx, new| {
                notify::publish_and_check(idx, new, ours, abi::VCHAN_NOTIFY_READ)
            });
            (n, r)
        };
        self.wake_if(taken.1)?;
        Ok(Some(taken.0))
    }

    /// Waits for an event on this vchan's handle (up to `timeout`) and
    /// re-enables it. Returns false on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, VchanError> {
        match self.chan.wait(timeout)? {
            Some(p) => {
                self.chan.handle().unmask(p)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Blocks until `check` holds, the peer goes away, or the timeout
    /// passes. It first spins without asking the peer for a notification
    /// (so a peer answering quickly needs no event, hence no system call on
    /// either side), then asks for `bit`, re-checks (no lost wake-up), and
    /// sleeps on the event channel.
    ///
    /// The timeout is one overall deadline taken when the call starts: a
    /// wake-up that brings nothing (a peer ringing the doorbell without
    /// writing) only costs what it took, it never restarts the wait.
    fn block_until(
        &mut self,
        bit: u8,
        mut check: impl FnMut(&mut Self) -> Result<bool, VchanError>,
    ) -> Result<bool, VchanError> {
        let mut deadline = Deadline::new(self.timeout);
        let window = self.spin;
        for i in 0..window {
            if check(self)? {
                if i > window / 2 {
                    self.spin = (window * 2).min(SPIN_MAX);
                }
                return Ok(true);
            }
            if !self.is_open() {
                return check(self);
            }
            core::hint::spin_loop();
        }
        self.spin = (window / 2).max(SPIN_MIN);
        loop {
            self.request_notify(bit)?;
            if check(self)? {
                return Ok(true);
            }
            if !self.is_open() {
                return check(self);
            }
            let Some(w) = deadline.next_wait(WAIT_SLICE) else {
                return Err(VchanError::Core(DeviceError::Timeout));
            };
            self.wait(w)?;
            deadline.charge_wait(w);
        }
    }

    /// Stream read: copies up to `buf.len()` bytes. Blocking mode waits for at
    /// least one byte; returns 0 at end of stream (peer closed and drained).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        self.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(n) = self.take(buf, 1)? {
            return Ok(n);
        }
        self.publish()?;
        if self.blocking {
            self.block_until(abi::VCHAN_NOTIFY_WRITE, |v| v.data_ready().map(|r| r > 0))?;
        } else {
            self.request_notify(abi::VCHAN_NOTIFY_WRITE)?;
        }
        Ok(self.take(buf, 1)?.unwrap_or(0))
    }

    /// Stream write: copies as much of `buf` as fits. Blocking mode waits for
    /// room for at least one byte. Writing to a closed peer is an error.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, VchanError> {
        self.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        // A batching writer learns of a closed peer when it publishes; the
        // live byte shares the header's cache line with the peer's index,
        // so reading it on every small write would cost a miss each.
        // A batching writer's common case, kept small enough to inline:
        // the known free space takes the bytes and no publish is due, so
        // only the ring's view is needed.
        if self.batch != 0
            && self.tx.known_space() >= buf.len()
            && self.tx.unpublished() + buf.len() < self.batch
        {
            let ring = write_ring(&self.mem, self.wr)?;
            moved(self.tx.push(ring, buf), buf.len(), &mut self.broken)?;
            return Ok(buf.len());
        }
        if let Some(n) = self.put(buf, 1, self.batch == 0)? {
            return Ok(n);
        }
        self.publish()?;
        if self.blocking {
            if !self.block_until(abi::VCHAN_NOTIFY_READ, |v| v.buffer_space().map(|s| s > 0))? {
                return Err(VchanError::Core(DeviceError::Closed));
            }
        } else {
            self.request_notify(abi::VCHAN_NOTIFY_READ)?;
        }
        Ok(self.put(buf, 1, false)?.unwrap_or(0))
    }

    /// Packet receive: fills all of `buf` or nothing. Non-blocking mode
    /// returns 0 if not all bytes are there yet; blocking mode returns 0 only
    /// when the peer closed before sending them.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        self.check()?;
        if buf.len() > self.read_ring_size() {
            return Err(VchanError::TooBig {
                len: buf.len(),
                ring: self.read_ring_size(),
            });
        }
        let want = buf.len();
        if want == 0 {
            // Still re-reads (and validates) the peer's index, as `read` does.
            self.data_ready()?;
            return Ok(0);
        }
        if let Some(n) = self.take(buf, want)? {
            return Ok(n);
        }
        self.publish()?;
        if self.blocking {
            if !self.block_until(abi::VCHAN_NOTIFY_WRITE, |v| {
                v.data_ready().map(|r| r >= want)
            })? {
                return Ok(0);
            }
        } else {
            self.request_notify(abi::VCHAN_NOTIFY_WRITE)?;
        }
        Ok(self.take(buf, want)?.unwrap_or(0))
    }

    /// Packet send: writes all of `buf` or nothing.
    pub fn send(&mut self, buf: &[u8]) -> Result<usize, VchanError> {
        self.check()?;
        if buf.len() > self.write_ring_size() {
            return Err(VchanError::TooBig {
                len: buf.len(),
                ring: self.write_ring_size(),
            });
        }
        let want = buf.len();
        if want == 0 {
            if !self.is_open() {
                return Err(VchanError::Core(DeviceError::Closed));
            }
            // Without batching even an empty send re-reads (and validates)
            // the peer's index, as every send does and libxenvchan would.
            if self.batch == 0 {
                self.buffer_space()?;
            }
            return Ok(0);
        }
        if let Some(n) = self.put(buf, want, true)? {
            return Ok(n);
        }
        self.publish()?;
        if self.blocking {
            if !self.block_until(abi::VCHAN_NOTIFY_READ, |v| {
                v.buffer_space().map(|s| s >= want)
            })? {
                return Err(VchanError::Core(DeviceError::Closed));
            }
        } else {
            self.request_notify(abi::VCHAN_NOTIFY_READ)?;
        }
        Ok(self.put(buf, want, false)?.unwrap_or(0))
    }

    pub(crate) fn connect_client(&self) -> Result<(), VchanError> {
        self.u8_at(CLI_LIVE)?
            .store(abi::VCHAN_LIVE_CONNECTED, Ordering::Release);
        self.request_notify(abi::VCHAN_NOTIFY_WRITE)?;
        self.chan.notify()?;
        Ok(())
    }

    /// Closes this end: marks it dead, wakes the peer and gives back every
    /// grant or mapping (a share the peer still maps goes to quarantine).
    /// The XenStore keys of a server are left to the caller
    /// ([`Vchan::xs_path`]), since removing them needs the XenStore client.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        // Bytes gathered by write batching still reach the peer.
        if !self.broken.is_tripped() {
            let _ = self.publish();
        }
        let off = if S::SERVER { SRV_LIVE } else { CLI_LIVE };
        if let Ok(b) = self.u8_at(off) {
            b.store(abi::VCHAN_LIVE_CLOSED, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        let _ = self.chan.notify();
        self.mem.release();
        self.closed = true;
    }

    /// The XenStore directory a server published (to remove after close).
    pub fn xs_path(&self) -> Option<&str> {
        self.xs_path.as_deref()
    }

    /// The side's memory (shares or mappings), e.g. for inspection.
    pub fn side(&self) -> &S {
        &self.mem
    }
}

fn ctrl<S: VchanSide>(mem: &S) -> Result<SharedMem<'_>, VchanError> {
    mem.ctrl().ok_or(VchanError::Core(DeviceError::Closed))
}

/// A byte-ring error: a bad peer index breaks the vchan (latched in
/// `broken`); memory that is gone means it was closed. A function of the
/// latch alone, so the hot paths can call it while they hold a view of
/// the memory.
fn ring_err(broken: &mut crate::latch::Latch<VchanError>, e: ByteRingError) -> VchanError {
    match e {
        ByteRingError::Corrupt(which) => broken.trip(VchanError::Corrupt(which)),
        ByteRingError::Memory(_) => VchanError::Core(DeviceError::Closed),
    }
}

/// Checks that a ring copy moved all `n` bytes the validated index
/// promised: fewer means the memory is gone (closed); a ring error is
/// latched as [`ring_err`] says.
fn moved(
    r: Result<usize, ByteRingError>,
    n: usize,
    broken: &mut crate::latch::Latch<VchanError>,
) -> Result<(), VchanError> {
    match r {
        Ok(k) if k == n => Ok(()),
        Ok(_) => Err(VchanError::Core(DeviceError::Closed)),
        Err(e) => Err(ring_err(broken, e)),
    }
}

/// Whether the peer's live byte says it is there (the server reads the
/// client's, 2 = not connected yet counting as there; the client the
/// server's).
fn peer_live<S: VchanSide>(ctrl: SharedMem<'_>) -> bool {
    let off = if S::SERVER { CLI_LIVE } else { SRV_LIVE };
    ctrl.load_u8(off, Ordering::Acquire).is_ok_and(|b| b != 0)
}

/// Our notify byte: the peer sets bits in it to ask us for events.
fn our_flag<S: VchanSide>(ctrl: SharedMem<'_>) -> Result<&AtomicU8, VchanError> {
    let off = if S::SERVER { SRV_NOTIFY } else { CLI_NOTIFY };
    ctrl.atomic_u8(off)
        .map_err(|_| VchanError::Core(DeviceError::Closed))
}

/// The ring this end writes.
fn write_ring<S: VchanSide>(mem: &S, loc: RingLoc) -> Result<SharedMem<'_>, VchanError> {
    let size = 1usize << loc.order();
    let m = match loc {
        RingLoc::InPage { offset, .. } => ctrl(mem)?.slice(offset, size).ok(),
        RingLoc::External { left, .. } => mem.external_rw(left).and_then(|m| m.slice(0, size).ok()),
    };
    m.ok_or(VchanError::Core(DeviceError::Closed))
}

/// The ring this end reads (the client maps it read-only).
fn read_ring<S: VchanSide>(mem: &S, loc: RingLoc) -> Result<SharedMem<'_, ReadOnly>, VchanError> {
    let size = 1usize << loc.order();
    let m = match loc {
        RingLoc::InPage { offset, .. } => ctrl(mem)?
            .slice(offset, size)
            .ok()
            .map(SharedMem::read_only),
        RingLoc::External { left, .. } => mem.external_ro(left).and_then(|m| m.slice(0, size).ok()),
    };
    m.ok_or(VchanError::Core(DeviceError::Closed))
}

impl<S: VchanSide, E: EventChannels> Drop for Vchan<S, E> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(feature = "std")]
mod stdio {
    use super::*;

    fn to_io(e: VchanError) -> std::io::Error {
        use std::io::ErrorKind as K;
        let kind = match e {
            VchanError::Core(DeviceError::Timeout) => K::TimedOut,
            VchanError::Core(DeviceError::Closed) => K::BrokenPipe,
            VchanError::Corrupt(_) | VchanError::Broken => K::InvalidData,
            _ => K::Other,
        };
        std::io::Error::new(kind, e)
    }

    impl<S: VchanSide, E: EventChannels> std::io::Read for Vchan<S, E> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match Vchan::read(self, buf) {
                Ok(0) if !self.blocking && self.is_open() && !buf.is_empty() => {
                    Err(std::io::ErrorKind::WouldBlock.into())
                }
                r => r.map_err(to_io),
            }
        }
    }

    impl<S: VchanSide, E: EventChannels> std::io::Write for Vchan<S, E> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match Vchan::write(self, buf) {
                Ok(0) if !buf.is_empty() => Err(std::io::ErrorKind::WouldBlock.into()),
                r => r.map_err(to_io),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Vchan::flush(self).map_err(to_io)
        }
    }
}
