//! Overall deadlines for blocking waits.
//!
//! A wait that a peer can interrupt (an event, a watch) must not restart its
//! timeout on every wake-up, or a peer that keeps waking us up without doing
//! anything would keep us blocked for ever. Every blocking call takes one
//! [`Deadline`] when it starts and waits only for what is left of it.
//!
//! With the `std` feature the deadline uses the monotonic clock; without
//! it, every wait slice is charged in full (an event flood makes a timeout
//! come sooner, never later).

#![forbid(unsafe_code)]

use core::time::Duration;

/// A wait budget: `std` uses the clock; `no_std` charges each wait slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    #[cfg(feature = "std")]
    end: Option<std::time::Instant>,
    #[cfg(not(feature = "std"))]
    left: Option<Duration>,
}

impl Deadline {
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        #[cfg(feature = "std")]
        {
            Self {
                end: timeout.map(|t| std::time::Instant::now() + t),
            }
        }
        #[cfg(not(feature = "std"))]
        {
            Self { left: timeout }
        }
    }

    /// Time left (`None`: unbounded); zero once expired.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        #[cfg(feature = "std")]
        {
            self.end
                .map(|e| e.saturating_duration_since(std::time::Instant::now()))
        }
        #[cfg(not(feature = "std"))]
        {
            self.left
        }
    }

    /// The next wait slice, at most `slice`; `None` once expired.
    pub(crate) fn slice(&self, slice: Duration) -> Option<Duration> {
        match self.remaining() {
            None => Some(slice),
            Some(r) if r.is_zero() => None,
            Some(r) => Some(r.min(slice)),
        }
    }

    /// The next wait: `Some(None)` to wait without a bound (no timeout was
    /// given), `Some(Some(d))` to wait at most `d`, `None` once expired.
    /// With a clock `d` is all the time left; without one it is at most
    /// `max`, since each wait is charged in full.
    pub(crate) fn next_wait(&self, max: Duration) -> Option<Option<Duration>> {
        match self.remaining() {
            None => Some(None),
            Some(r) if r.is_zero() => None,
            #[cfg(feature = "std")]
            Some(r) => {
                let _ = max;
                Some(Some(r))
            }
            #[cfg(not(feature = "std"))]
            Some(r) => Some(Some(r.min(max))),
        }
    }

    /// Records a wait made with a [`Deadline::next_wait`] result.
    pub(crate) fn charge_wait(&mut self, wait: Option<Duration>) {
        if let Some(d) = wait {
            self.charge(d);
        }
    }

    /// Records that a wait of `d` happened (only counted without a clock).
    pub(crate) fn charge(&mut self, d: Duration) {
        #[cfg(not(feature = "std"))]
        {
            self.left = self.left.map(|l| l.saturating_sub(d));
        }
        #[cfg(feature = "std")]
        let _ = d;
    }
}
