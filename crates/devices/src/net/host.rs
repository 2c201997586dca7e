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

use xenshare::net::FrameIo;

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

/// A bounded queue of frames.
pub struct FrameQueue {
    frames: Mutex<VecDeque<Vec<u8>>>,
    cv: Condvar,
    cap: usize,
    waker: Mutex<Option<Waker>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for FrameQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameQueue")
            .field("len", &lock(&self.frames).len())
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
            frames: Mutex::new(VecDeque::new()),
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
        let was_empty = {
            let mut q = lock(&self.frames);
            if q.len() >= self.cap {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let e = q.is_empty();
            q.push_back(frame);
            e
        };
        self.cv.notify_all();
        // A consumer that found the queue empty may be asleep; one that did
        // not will see this frame before it sleeps.
        if was_empty {
            if let Some(w) = lock(&self.waker).clone() {
                w();
            }
        }
        true
    }

    /// Takes the oldest frame, if any.
    pub fn pop(&self) -> Option<Vec<u8>> {
        lock(&self.frames).pop_front()
    }

    /// Takes the oldest frame, waiting up to `timeout` for one.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.frames);
        loop {
            if let Some(f) = q.pop_front() {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            q = self
                .cv
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Waits up to `timeout` until a frame is waiting (without taking it).
    pub fn wait_nonempty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.frames);
        loop {
            if !q.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .cv
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        lock(&self.frames).len()
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
    let to_host = FrameQueue::new(cap);
    let to_guest = FrameQueue::new(cap);
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
        if self.to_host.push(frame.to_vec()) {
            Ok(())
        } else {
            Err(QueueFull)
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, QueueFull> {
        loop {
            let Some(f) = self.to_guest.pop() else {
                return Ok(None);
            };
            // Longer than the back end's buffer: dropped, like an oversize
            // frame on a wire.
            if let Some(dst) = buf.get_mut(..f.len()) {
                dst.copy_from_slice(&f);
                return Ok(Some(f.len()));
            }
        }
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
        self.to_guest.push(frame.to_vec())
    }

    /// The next frame from the guest, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.to_host.pop_timeout(timeout)
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
