//! The one "broken" latch of every ring, tracker and device end.
//!
//! A peer that breaks a protocol once is not trusted again: the end that
//! saw the violation keeps its first cause and fails every later call, so a
//! driver cannot carry on by accident. Rings, the id tracker, netfront /
//! netback, blkfront, the console ends and vchan all keep such a state; this
//! is its one implementation. What differs by protocol is said by the error
//! type through [`Fault`]: which errors break the end, and what later calls
//! return.
//!
//! ```
//! use xenshare::latch::{Fault, Latch};
//!
//! #[derive(Debug, Clone, PartialEq)]
//! enum E { Busy, Bad(u32), Broken }
//! impl Fault for E {
//!     fn broken(_cause: &E) -> E { E::Broken }
//!     fn latches(&self) -> bool { !matches!(self, E::Busy) }
//! }
//!
//! let mut l = Latch::<E>::new();
//! assert_eq!(l.trip(E::Busy), E::Busy); // transient: not latched
//! assert!(l.check().is_ok());
//! l.trip(E::Bad(1));
//! l.trip(E::Bad(2)); // the first cause is kept
//! assert_eq!(l.cause(), Some(&E::Bad(1)));
//! assert_eq!(l.check(), Err(E::Broken));
//! ```

#![forbid(unsafe_code)]

/// An error type that can break an end; see the [module docs](self).
pub trait Fault: Clone {
    /// What every call returns once the end is broken by `cause`.
    fn broken(cause: &Self) -> Self;

    /// Whether this error breaks the end (default: every error does).
    fn latches(&self) -> bool {
        true
    }
}

/// Healthy until the first breaking error, then broken for good (until
/// [`Latch::reset`] by an end that rebuilt everything, e.g. a reconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latch<E>(Option<E>);

impl<E> Default for Latch<E> {
    fn default() -> Self {
        Self(None)
    }
}

impl<E: Fault> Latch<E> {
    /// A healthy latch.
    pub const fn new() -> Self {
        Self(None)
    }

    /// `Ok` while healthy; once tripped, the error type's
    /// [`Fault::broken`] for the first cause.
    pub fn check(&self) -> Result<(), E> {
        match &self.0 {
            None => Ok(()),
            Some(cause) => Err(E::broken(cause)),
        }
    }

    /// Latches `e` if it [breaks](Fault::latches) the end, keeping the
    /// first cause; returns `e` for the caller to pass on.
    pub fn trip(&mut self, e: E) -> E {
        if self.0.is_none() && e.latches() {
            self.0 = Some(e.clone());
        }
        e
    }

    /// Runs `r` through the latch: an error is [tripped](Latch::trip).
    pub fn guard<T>(&mut self, r: Result<T, E>) -> Result<T, E> {
        r.map_err(|e| self.trip(e))
    }

    /// The first cause, if tripped.
    pub fn cause(&self) -> Option<&E> {
        self.0.as_ref()
    }

    /// Whether an error has broken the end.
    pub fn is_tripped(&self) -> bool {
        self.0.is_some()
    }

    /// Back to healthy, for an end that replaced everything the cause
    /// concerned (a reconnect with new rings and grants).
    pub fn reset(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingError;

    #[test]
    fn keeps_the_first_fatal_cause_and_ignores_transient_errors() {
        let mut l = Latch::<RingError>::new();
        assert_eq!(l.trip(RingError::Full), RingError::Full);
        assert!(!l.is_tripped() && l.check().is_ok());
        let first = RingError::NotOutstanding { id: 3 };
        assert_eq!(l.guard::<()>(Err(first)), Err(first));
        l.trip(RingError::BadId { id: 9, limit: 4 });
        assert!(l.is_tripped());
        assert_eq!(l.cause(), Some(&first));
        assert_eq!(l.check(), Err(RingError::Broken));
        l.reset();
        assert!(l.check().is_ok() && l.cause().is_none());
    }
}
