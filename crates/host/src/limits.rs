//! What one domain process can make the host daemon hold, and the
//! daemon's file descriptor budget.
//!
//! Every resource a request makes the daemon allocate is counted against
//! the requesting domain ([`DomainBudget`]) and, for file descriptors,
//! against the whole daemon ([`FdBudget`]): a hostile domain gets a clear
//! refusal when it reaches its share, and other domains (and new joiners)
//! keep working.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::wire::RemoteError;

/// Most connections served at once (each is a thread; domains and
/// inspectors alike). Further connections are closed at once.
pub const MAX_CONNS: usize = 512;
/// Most event channel handles one domain may hold open in the daemon.
pub const MAX_EVT_HANDLES: usize = 256;
/// Most memory chunks (one memfd each, held open by the daemon) one domain
/// may have registered at once.
pub const MAX_CHUNKS: usize = 8192;
/// File descriptors the daemon keeps for itself (listeners, xenstored
/// connections, replies in flight) out of its `RLIMIT_NOFILE`.
pub const FD_RESERVE: usize = 256;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (what a
/// process that holds one fd per shared memory chunk needs) and returns
/// the soft limit now in force.
pub fn raise_nofile() -> usize {
    let cur = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (cur.current, cur.maximum) {
        if soft < hard {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: Some(hard),
                },
            );
        }
    }
    nofile()
}

/// The soft `RLIMIT_NOFILE` (a large number when unlimited).
pub fn nofile() -> usize {
    getrlimit(Resource::Nofile)
        .current
        .map_or(1 << 20, |v| usize::try_from(v).unwrap_or(1 << 20))
}

/// The daemon-wide count of fds held on behalf of domains.
#[derive(Debug)]
pub struct FdBudget {
    used: AtomicUsize,
    cap: usize,
}

impl FdBudget {
    /// A budget of `cap` fds.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            cap,
        })
    }

    /// A budget sized from the current `RLIMIT_NOFILE`.
    pub fn from_rlimit() -> Arc<Self> {
        Self::new(nofile().saturating_sub(FD_RESERVE))
    }

    /// Fds held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.cap).then_some(u + 1)
            })
            .is_ok()
    }

    fn give(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
    }
}

/// What one domain (connection) holds in the daemon.
#[derive(Debug)]
pub struct DomainBudget {
    fds: Arc<FdBudget>,
    evt_handles: usize,
    chunks: usize,
}

/// A kind of per-domain resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event channel handle (one wake-up pipe in the daemon).
    EvtHandle,
    /// A registered memory chunk (one memfd in the daemon).
    Chunk,
}

impl DomainBudget {
    /// An empty budget drawing fds from `fds`.
    pub fn new(fds: Arc<FdBudget>) -> Self {
        Self {
            fds,
            evt_handles: 0,
            chunks: 0,
        }
    }

    fn slot(&mut self, k: Kind) -> (&mut usize, usize, &'static str) {
        match k {
            Kind::EvtHandle => (
                &mut self.evt_handles,
                MAX_EVT_HANDLES,
                "event channel handles",
            ),
            Kind::Chunk => (&mut self.chunks, MAX_CHUNKS, "memory chunks"),
        }
    }

    /// Takes one `k` (and one fd of the daemon's budget), or explains why
    /// not.
    pub fn take(&mut self, k: Kind) -> Result<(), RemoteError> {
        let fds = self.fds.clone();
        let (n, max, what) = self.slot(k);
        if *n >= max {
            return Err(RemoteError::Refused(format!(
                "limit reached: a domain may hold at most {max} {what}"
            )));
        }
        if !fds.take() {
            return Err(RemoteError::Refused(format!(
                "the host is out of file descriptors ({} held for domains); {what} refused",
                fds.used()
            )));
        }
        *n += 1;
        Ok(())
    }

    /// Gives back one `k`.
    pub fn give(&mut self, k: Kind) {
        let fds = self.fds.clone();
        let (n, _, _) = self.slot(k);
        if *n > 0 {
            *n -= 1;
            fds.give();
        }
    }

    /// Held now.
    pub fn held(&self, k: Kind) -> usize {
        match k {
            Kind::EvtHandle => self.evt_handles,
            Kind::Chunk => self.chunks,
        }
    }
}

impl Drop for DomainBudget {
    fn drop(&mut self) {
        for _ in 0..self.evt_handles + self.chunks {
            self.fds.give();
        }
    }
}

/// Counts live connections against [`MAX_CONNS`]; the guard gives its
/// place back when dropped.
#[derive(Debug)]
pub struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    /// A place among `max` connections counted by `live`, if one is free.
    pub fn take(live: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
            (u < max).then_some(u + 1)
        })
        .ok()
        .map(|_| Self(live.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
