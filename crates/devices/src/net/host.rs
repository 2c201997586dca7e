//! Host-side frame queues.
//!
//! A [`FrameQueue`] is a bounded FIFO of frames with a condition variable
//! for blocking readers and an optional waker called when a frame lands in
//! an empty queue (a back end's [`Doorbell`](xenshare::net::Doorbell)). Two
//! queues make an in-memory link: [`MemFrameIo`] is the back end's end,
//! [`HostPort`] the host's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xenshare::net::{FrameIo, Offer};

/// Called when a frame arrives for the back end.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The host side of a back end: a [`FrameIo`] that can wake the back end
/// when a frame arrives from the host.
pub trait HostFrames: FrameIo + Send + 'static {
    /// Installs the function to call when a host frame arrives.
    fn set_waker(&mut self, waker: Waker);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Alignment of a frame's bytes inside its buffer: copies into a
/// destination that is not 64-byte aligned run at a tenth of the speed
/// (glibc's `rep movsb` on this class of CPU).
const FRAME_ALIGN: usize = 64;

/// Spare buffers a queue keeps for reuse (each up to a frame's size, so
/// at most about 8 MiB): enough for a burst of 128 frames in a row.
const SPARE_MAX: usize = 128;

/// One queued frame: `len` bytes at `off` in `buf`.
struct Frame {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Frame {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }

    /// Room for `len` bytes in `buf` (a spare or a new one), at a 64-byte
    /// aligned offset; the bytes are whatever `buf` held.
    fn room(mut buf: Vec<u8>, len: usize) -> Self {
        if buf.capacity() < len + FRAME_ALIGN {
            buf.reserve(len + FRAME_ALIGN - buf.len());
        }
        // The buffer does not move from here on (enough capacity).
        let off = buf.as_ptr().align_offset(FRAME_ALIGN).min(FRAME_ALIGN);
        if buf.len() < off + len {
            buf.resize(off + len, 0);
        }
        Self { buf, off, len }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }

    /// A copy of `src` in `buf` (a spare or a new one), at a 64-byte aligned
    /// offset.
    fn copy_of(buf: Vec<u8>, src: &[u8]) -> Self {
        let mut f = Self::room(buf, src.len());
        f.bytes_mut().copy_from_slice(src);
        f
    }
}

/// What the queue's lock guards.
struct Slots {
    frames: VecDeque<Frame>,
    spare: Vec<Vec<u8>>,
    /// Threads waiting on the condition variable (none: no wake-up call).
    waiters: usize,
}

/// A bounded queue of frames.
pub struct FrameQueue {
    slots: Mutex<Slots>,
    cv: Condvar,
    cap: usize,
    waker: Mutex<Option<Waker>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for FrameQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameQueue")
            .field("len", &self.len())
            .field("cap", &self.cap)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl FrameQueue {
    /// A queue holding at most `cap` frames (more are dropped, as a NIC
    /// drops on a full ring).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(Slots {
                frames: VecDeque::new(),
                spare: Vec::new(),
                waiters: 0,
            }),
            cv: Condvar::new(),
            cap: cap.max(1),
            waker: Mutex::new(None),
            dropped: AtomicU64::new(0),
        })
    }

    /// Installs the waker.
    pub fn set_waker(&self, w: Waker) {
        *lock(&self.waker) = Some(w);
    }

    /// Appends a frame; `false` (and counted) if the queue is full.
    pub fn push(&self, frame: Vec<u8>) -> bool {
        let len = frame.len();
        self.push_frame(|_| Frame {
            buf: frame,
            off: 0,
            len,
        })
    }

    /// Appends a copy of `frame`, made in a recycled buffer where one is
    /// spare (no allocation per frame in a steady flow); `false` (and
    /// counted) if the queue is full.
    pub fn push_copy(&self, frame: &[u8]) -> bool {
        self.push_frame(|spare| Frame::copy_of(spare.pop().unwrap_or_default(), frame))
    }

    /// Appends a frame of `len` bytes that `fill` writes straight into a
    /// queue buffer (a recycled one where one is spare), outside the lock.
    /// `Ok(false)` if `fill` returned `false` (nothing queued); `Err` if the
    /// queue is full (counted), after `fill` wrote `scratch` for its
    /// verdict — `Ok(false)` if it was negative.
    pub fn push_with(
        &self,
        len: usize,
        scratch: &mut [u8],
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<bool, QueueFull> {
        let spare = {
            let mut q = lock(&self.slots);
            (q.frames.len() < self.cap).then(|| q.spare.pop().unwrap_or_default())
        };
        let Some(spare) = spare else {
            if scratch.get_mut(..len).is_some_and(|buf| !fill(buf)) {
                return Ok(false);
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(QueueFull);
        };
        let mut frame = Frame::room(spare, len);
        if !fill(frame.bytes_mut()) {
            self.recycle(frame.buf);
            return Ok(false);
        }
        if self.push_frame(|_| frame) {
            Ok(true)
        } else {
            Err(QueueFull)
        }
    }

    /// Hands the oldest frame, if any, to `take` without copying it; a
    /// frame `take` declines (`false`) stays first in line. The queue
    /// has one consumer: nothing else takes frames while `take` runs
    /// (while it runs, producers may fill the queue to its capacity, so a
    /// declined frame may make it one over).
    pub fn offer(&self, take: impl FnOnce(&[u8]) -> bool) -> Offer {
        let Some(frame) = self.take() else {
            return Offer::Empty;
        };
        if take(frame.bytes()) {
            self.recycle(frame.buf);
            Offer::Taken
        } else {
            let len = frame.len;
            lock(&self.slots).frames.push_front(frame);
            Offer::Kept(len)
        }
    }

    fn push_frame(&self, make: impl FnOnce(&mut Vec<Vec<u8>>) -> Frame) -> bool {
        let (was_empty, waiters) = {
            let mut q = lock(&self.slots);
            if q.frames.len() >= self.cap {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let e = q.frames.is_empty();
            let f = make(&mut q.spare);
            q.frames.push_back(f);
            (e, q.waiters)
        };
        self.wake_after_push(was_empty, waiters);
        true
    }

    /// After a frame was queued: wakes the threads waiting on the queue
    /// (`waiters` of them) and, if the queue `was_empty`, calls the waker.
    fn wake_after_push(&self, was_empty: bool, waiters: usize) {
        if waiters > 0 {
            self.cv.notify_all();
        }
        // A consumer that found the queue empty may be asleep; one that did
        // not will see this frame before it sleeps.
        if was_empty {
            if let Some(w) = lock(&self.waker).clone() {
                w();
            }
        }
    }

    /// Keeps `buf` for a later [`FrameQueue::push_copy`] (up to a few).
    pub fn recycle(&self, buf: Vec<u8>) {
        let mut q = lock(&self.slots);
        if q.spare.len() < SPARE_MAX.min(self.cap) {
            q.spare.push(buf);
        }
    }

    /// Takes the oldest frame, if any.
    pub fn pop(&self) -> Option<Vec<u8>> {
        let f = self.take()?;
        Some(self.frame_vec(f))
    }

    /// Takes the oldest frame out.
    fn take(&self) -> Option<Frame> {
        let mut q = lock(&self.slots);
        let f = q.frames.pop_front();
        let wake = f.is_some() && self.room_wake(&q);
        drop(q);
        if wake {
            self.cv.notify_all();
        }
        f
    }

    /// Whether a frame just taken should wake the threads waiting on the
    /// queue's condition variable: producers blocked in
    /// [`FrameQueue::push_copy_timeout`] are woken once the queue is down
    /// to half its capacity (not on every frame taken, as a NIC restarts
    /// a stopped transmit queue only once enough descriptors are free).
    fn room_wake(&self, q: &Slots) -> bool {
        q.waiters > 0 && q.frames.len() <= self.cap / 2
    }

    /// Appends a copy of `frame`, first waiting up to `timeout` (one
    /// deadline) while the queue is full; `false` (nothing queued, nothing
    /// counted) if it stayed full. The copy is made outside the lock, into
    /// a recycled buffer taken when room was found (a consumer is never
    /// held up by it), so with one producer the queue holds at most its
    /// capacity (plus a frame the back end put back first in line); each
    /// further producer may take it one over.
    pub fn push_copy_timeout(&self, frame: &[u8], timeout: Duration) -> bool {
        let room = self.wait_until(timeout, |q| {
            (q.frames.len() < self.cap).then(|| q.spare.pop().unwrap_or_default())
        });
        let Some(spare) = room else {
            return false;
        };
        let f = Frame::copy_of(spare, frame);
        let (was_empty, waiters) = {
            let mut q = lock(&self.slots);
            let e = q.frames.is_empty();
            q.frames.push_back(f);
            (e, q.waiters)
        };
        self.wake_after_push(was_empty, waiters);
        true
    }

    /// The frame as a vector of its own (its buffer if the frame fills
    /// it, else a copy and the buffer is recycled).
    fn frame_vec(&self, f: Frame) -> Vec<u8> {
        if f.off == 0 {
            let mut v = f.buf;
            v.truncate(f.len);
            return v;
        }
        let v = f.bytes().to_vec();
        self.recycle(f.buf);
        v
    }

    /// Hands the oldest frame, if any, to `f` and keeps its buffer for
    /// reuse (no allocation, no copy beyond what `f` does).
    pub fn pop_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let frame = self.take()?;
        let r = f(frame.bytes());
        self.recycle(frame.buf);
        Some(r)
    }

    /// Waits (one deadline `timeout` from now, not restarted by wake-ups)
    /// until `ready`, run under the lock, returns something.
    fn wait_until<R>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&mut Slots) -> Option<R>,
    ) -> Option<R> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.slots);
        loop {
            if let Some(r) = ready(&mut q) {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            q.waiters += 1;
            q = self
                .cv
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            q.waiters -= 1;
        }
    }

    /// Waits up to `timeout` for a frame and takes it out of the queue.
    fn pop_frame_timeout(&self, timeout: Duration) -> Option<Frame> {
        let mut wake = false;
        let f = self.wait_until(timeout, |q| {
            let f = q.frames.pop_front();
            wake = f.is_some() && self.room_wake(q);
            f
        });
        if wake {
            self.cv.notify_all();
        }
        f
    }

    /// Takes the oldest frame, waiting up to `timeout` for one.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let f = self.pop_frame_timeout(timeout)?;
        Some(self.frame_vec(f))
    }

    /// Like [`FrameQueue::pop_with`], waiting up to `timeout` for a frame.
    pub fn pop_timeout_with<R>(&self, timeout: Duration, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let frame = self.pop_frame_timeout(timeout)?;
        let r = f(frame.bytes());
        self.recycle(frame.buf);
        Some(r)
    }

    /// Waits up to `timeout` until a frame is waiting (without taking it).
    pub fn wait_nonempty(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |q| (!q.frames.is_empty()).then_some(()))
            .is_some()
    }

    /// Copies the oldest frame into `buf` and returns its length, or `None`
    /// if no frame waits. A frame longer than `buf` is dropped, as an
    /// oversize frame on a wire, and the next one is tried.
    pub fn pop_into(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let copied = self.pop_with(|f| {
                let dst = buf.get_mut(..f.len())?;
                dst.copy_from_slice(f);
                Some(f.len())
            });
            match copied {
                None => return None,
                Some(Some(n)) => return Some(n),
                Some(None) => {}
            }
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        lock(&self.slots).frames.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The queue the frame would not fit in is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host queue full: frame dropped")]
pub struct QueueFull;

/// The back end's end of an in-memory link.
#[derive(Debug, Clone)]
pub struct MemFrameIo {
    to_host: Arc<FrameQueue>,
    to_guest: Arc<FrameQueue>,
}

/// The host's end of an in-memory link: what a test or the demo drives.
#[derive(Debug, Clone)]
pub struct HostPort {
    to_host: Arc<FrameQueue>,
    to_guest: Arc<FrameQueue>,
}

/// An in-memory link of `cap` frames each way.
pub fn mem_link(cap: usize) -> (MemFrameIo, HostPort) {
    mem_link_caps(cap, cap)
}

/// An in-memory link holding up to `to_host` frames from the guest and
/// `to_guest` frames towards it.
pub fn mem_link_caps(to_host: usize, to_guest: usize) -> (MemFrameIo, HostPort) {
    let to_host = FrameQueue::new(to_host);
    let to_guest = FrameQueue::new(to_guest);
    (
        MemFrameIo {
            to_host: to_host.clone(),
            to_guest: to_guest.clone(),
        },
        HostPort { to_host, to_guest },
    )
}

impl FrameIo for MemFrameIo {
    type Error = QueueFull;

    fn send(&mut self, frame: &[u8]) -> Result<(), QueueFull> {
        if self.to_host.push_copy(frame) {
            Ok(())
        } else {
            Err(QueueFull)
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, QueueFull> {
        Ok(self.to_guest.pop_into(buf))
    }

    /// Fills a queue buffer in place (the back end's grant copy lands in
    /// it directly).
    fn send_with(
        &mut self,
        len: usize,
        scratch: &mut [u8],
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<bool, QueueFull> {
        self.to_host.push_with(len, scratch, fill)
    }

    /// Offers the queued frame itself (the back end grant-copies from it).
    fn recv_with(
        &mut self,
        _scratch: &mut [u8],
        take: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Offer, QueueFull> {
        Ok(self.to_guest.offer(take))
    }
}

impl HostFrames for MemFrameIo {
    fn set_waker(&mut self, waker: Waker) {
        self.to_guest.set_waker(waker);
    }
}

impl HostPort {
    /// Sends a frame towards the guest; `false` if the queue was full.
    pub fn send(&self, frame: &[u8]) -> bool {
        self.to_guest.push_copy(frame)
    }

    /// Sends a frame towards the guest, waiting up to `timeout` while the
    /// queue is full (a host that must not lose frames); `false` if it
    /// stayed full. Blocked senders resume once the back end has taken the
    /// queue down to half.
    pub fn send_timeout(&self, frame: &[u8], timeout: Duration) -> bool {
        self.to_guest.push_copy_timeout(frame, timeout)
    }

    /// The next frame from the guest, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.to_host.pop_timeout(timeout)
    }

    /// Hands the next frame from the guest to `f`, waiting up to `timeout`
    /// for one; its buffer is kept for reuse (no allocation per frame).
    pub fn recv_timeout_with<R>(&self, timeout: Duration, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.to_host.pop_timeout_with(timeout, f)
    }

    /// The next frame from the guest, if one is waiting.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        self.to_host.pop()
    }

    /// Waits up to `timeout` until a frame from the guest is waiting.
    pub fn wait_frame(&self, timeout: Duration) -> bool {
        self.to_host.wait_nonempty(timeout)
    }

    /// Frames dropped towards the guest because the queue was full.
    pub fn dropped_to_guest(&self) -> u64 {
        self.to_guest.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_frames_start_aligned_and_reuse_a_bounded_set_of_buffers() {
        let q = FrameQueue::new(8);
        for round in 0..3u8 {
            for len in [1usize, 63, 65535, 100] {
                let f: Vec<u8> = (0..len).map(|i| (i as u8) ^ round).collect();
                assert!(q.push_copy(&f));
                let ptr = lock(&q.slots).frames.back().map(|fr| fr.bytes().as_ptr());
                assert_eq!(ptr.map(|p| p as usize % FRAME_ALIGN), Some(0));
                assert_eq!(q.pop_with(|got| got == f.as_slice()), Some(true));
            }
        }
        // One buffer served every frame above; spares never exceed the cap.
        assert_eq!(lock(&q.slots).spare.len(), 1);
        for _ in 0..20 {
            q.recycle(Vec::new());
        }
        assert_eq!(lock(&q.slots).spare.len(), 8);
        // A queued copy and a plain pop give the frame back byte-exact.
        assert!(q.push_copy(b"frame"));
        assert_eq!(q.pop().as_deref(), Some(&b"frame"[..]));
        assert!(q.pop().is_none());
    }

    #[test]
    fn push_with_fills_an_aligned_queue_buffer_in_place_or_queues_nothing() {
        let q = FrameQueue::new(2);
        let mut scratch = [0u8; 16];
        // Filled in place: the queued bytes are what `fill` wrote, aligned.
        let r = q.push_with(100, &mut scratch, |b| {
            assert_eq!(b.as_ptr() as usize % FRAME_ALIGN, 0);
            b.fill(0x42);
            true
        });
        assert_eq!(r, Ok(true));
        assert_eq!(
            scratch, [0; 16],
            "scratch untouched when the queue has room"
        );
        // A refused fill queues nothing and keeps the buffer for reuse.
        assert_eq!(q.push_with(10, &mut scratch, |_| false), Ok(false));
        assert_eq!(q.len(), 1);
        assert_eq!(lock(&q.slots).spare.len(), 1);
        assert_eq!(q.pop_with(|f| f == [0x42; 100]), Some(true));
        // Full: `fill` still gives its verdict (in `scratch`); a good frame
        // is dropped and counted, a refused one is not counted.
        assert!(q.push_copy(b"a") && q.push_copy(b"b"));
        let r = q.push_with(8, &mut scratch, |b| {
            b.fill(7);
            true
        });
        assert_eq!(r, Err(QueueFull));
        assert_eq!(scratch[..8], [7; 8]);
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.push_with(8, &mut scratch, |_| false), Ok(false));
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn offer_keeps_a_declined_frame_first_in_line() {
        let q = FrameQueue::new(4);
        assert_eq!(q.offer(|_| true), Offer::Empty);
        assert!(q.push_copy(b"first") && q.push_copy(b"second"));
        assert_eq!(q.offer(|f| f != b"first"), Offer::Kept(5));
        assert_eq!(q.len(), 2);
        let mut seen = Vec::new();
        assert_eq!(
            q.offer(|f| {
                seen.extend_from_slice(f);
                true
            }),
            Offer::Taken
        );
        assert_eq!(seen, b"first");
        assert_eq!(q.pop().as_deref(), Some(&b"second"[..]));
    }

    /// A producer blocked on a full queue resumes once consumers have
    /// taken it down to half (by `offer`, the back end's way, or `pop`);
    /// one that finds no room before its deadline gives up without
    /// queueing (or counting) the frame.
    #[test]
    fn a_blocked_sender_resumes_once_the_queue_is_half_empty() {
        let q = FrameQueue::new(4);
        for f in [b"a", b"b", b"c", b"d"] {
            assert!(q.push_copy(f));
        }
        assert!(!q.push_copy_timeout(b"x", Duration::from_millis(20)));
        assert_eq!((q.len(), q.dropped()), (4, 0));
        let q2 = q.clone();
        let late =
            std::thread::spawn(move || q2.push_copy_timeout(b"late", Duration::from_secs(30)));
        assert_eq!(q.offer(|f| f == b"a"), Offer::Taken);
        assert_eq!(q.pop().as_deref(), Some(&b"b"[..]));
        assert!(late.join().unwrap(), "the sender was never let in");
        for want in [&b"c"[..], b"d", b"late"] {
            assert_eq!(
                q.pop_timeout(Duration::from_secs(30)).as_deref(),
                Some(want)
            );
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let q = FrameQueue::new(2);
        assert!(q.push_copy(b"a") && q.push_copy(b"b"));
        assert!(!q.push_copy(b"c"));
        assert_eq!(q.dropped(), 1);
        assert_eq!(
            q.pop_timeout(Duration::from_secs(30)).as_deref(),
            Some(&b"a"[..])
        );
    }
}
