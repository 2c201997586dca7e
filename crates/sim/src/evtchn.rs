//! 2-level event channels.
//!
//! Each domain has a `shared_info` page whose pending and mask bitmaps are
//! the real ABI layout; the hypervisor sets pending bits with Xen's
//! test-and-set rules (events coalesce; a masked port latches). Ports are
//! bound through handles ([`SimEvtchn`], like an open `/dev/xen/evtchn`):
//! each handle has an eventfd that is signalled when one of its ports becomes
//! deliverable, so a domain's threads can block waiting for events.
//!
//! Delivery is eager, as in a Linux domain: when a port becomes pending and
//! is unmasked, the emulator does at once what the guest kernel's upcall
//! handler does — masks the port, clears its pending bit and queues it for
//! the handle (a bit in the emulator's own `delivered` bitmap, past Xen's
//! fields in the same page) — instead of leaving the event pending until
//! the handle next looks. The difference is visible: a second event that
//! comes after the first was delivered but before the port is unmasked
//! latches (masked and pending) and is delivered again on unmask, as on
//! Xen; with lazy delivery it merged into the first, which a program that
//! checks its state only after its next `select` (Xen's own
//! `vchan-socket-proxy`) never hears of.
//!
//! A handle's wake-up fd is readable exactly while one of its ports is
//! delivered and not yet taken, as Linux's `/dev/xen/evtchn` is while its
//! queue is non-empty: every delivery adds one token to the fd (a
//! semaphore eventfd in-process, a byte in a pipe for a domain process),
//! written *before* the port is marked delivered, and every take removes
//! one. Deliveries and closes of a port are serialised by the domain's
//! port table lock, so a port closed while delivered gives its token back
//! (or, for a pipe, tells the closer to). A C program that `select`s on the
//! fd and then reads a port is never left blocked with nothing to read.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use xenshare::event::EventError;
use xenshare::platform::EventChannels;
use xenshare::{DomId, Port};
use xenshare_abi::event::{
    port_word_bit, SharedInfo, EVTCHN_2L_NR_CHANNELS, SHARED_INFO_MASK_OFFSET,
    SHARED_INFO_PENDING_OFFSET,
};
use xenshare_abi::PAGE_SIZE;

use crate::hv::{lock, DomainState};
use crate::region::{Region, RegionError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    Free,
    Unbound { remote: DomId },
    Interdomain { remote: DomId, rport: Port },
}

struct Slot {
    kind: PortKind,
    owner: Option<Arc<HandleShared>>,
}

pub(crate) struct EvtState {
    shared_info: Region,
    ports: Mutex<Vec<Slot>>,
    handles: Mutex<HandleList>,
}

/// The handles of a domain (weakly: a handle lives as long as its user
/// keeps it), pruned of dead ones as it grows so opening and closing
/// handles forever keeps the list as long as the live handles (amortised).
#[derive(Default)]
struct HandleList {
    list: Vec<std::sync::Weak<HandleShared>>,
    prune_at: usize,
}

impl HandleList {
    fn push(&mut self, h: std::sync::Weak<HandleShared>) {
        if self.list.len() >= self.prune_at {
            self.list.retain(|w| w.strong_count() > 0);
            self.prune_at = (self.list.len() * 2).max(64);
        }
        self.list.push(h);
    }
}

/// How a handle's owner is woken.
enum Wake {
    /// An eventfd of this process (in-process handles).
    EventFd(OwnedFd),
    /// A pipe whose read end a domain process holds: `write` is the host's
    /// write end (non-blocking, a file description the domain never sees,
    /// so nothing it does can make a write block; a full pipe drops the
    /// token, which only a domain that never reads can cause, to its own
    /// loss), `read` a read end the host keeps open so that a write never
    /// meets a pipe without readers (no `SIGPIPE`). A port has at most one
    /// token queued, so a pipe of one token per port a domain can have
    /// never fills for a domain that reads it.
    Pipe { write: OwnedFd, read: OwnedFd },
}

pub(crate) struct HandleShared {
    wake: Wake,
    ports: Mutex<Vec<Port>>,
    closed: std::sync::atomic::AtomicBool,
}

impl HandleShared {
    /// Adds one token: the fd is readable while it holds any.
    fn token(&self) {
        match &self.wake {
            Wake::EventFd(fd) => {
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            }
            Wake::Pipe { write, .. } => {
                let _ = rustix::io::write(write, &[1]);
            }
        }
    }

    /// Takes one token back if this side can (a semaphore eventfd reads
    /// one at a time); false for a pipe, whose tokens the domain process
    /// takes.
    fn untoken(&self) -> bool {
        match &self.wake {
            Wake::EventFd(fd) => {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(fd, &mut b);
                true
            }
            Wake::Pipe { .. } => false,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.wake {
            Wake::EventFd(fd) | Wake::Pipe { read: fd, .. } => fd.as_fd(),
        }
    }
}

impl EvtState {
    pub(crate) fn new(id: DomId) -> Result<Self, RegionError> {
        Ok(Self {
            shared_info: Region::new(&format!("xenshare-d{}-shinfo", id.0), PAGE_SIZE)?,
            ports: Mutex::new(Vec::new()),
            handles: Mutex::default(),
        })
    }

    pub(crate) fn shared_info(&self) -> &Region {
        &self.shared_info
    }

    /// Entries in the handle list (live handles plus dead ones not yet
    /// pruned).
    pub(crate) fn handle_slots(&self) -> usize {
        lock(&self.handles).list.len()
    }

    fn word(&self, base: usize, port: u32) -> Option<(&AtomicU64, u64)> {
        si_bit(self.shared_info.mem(), base, port)
    }

    /// Xen's set-pending: test-and-set PENDING; if it was clear and the port
    /// is unmasked, the upcall (see the module documentation) delivers it
    /// and gives the owner a token. Under the port table's lock, so a close
    /// cannot fall between the token and the delivered bit.
    fn set_pending(&self, port: u32) {
        let Some((p, bit)) = self.word(SHARED_INFO_PENDING_OFFSET, port) else {
            return;
        };
        if p.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return;
        }
        let ports = lock(&self.ports);
        let owner = ports.get(port as usize).and_then(|s| s.owner.as_ref());
        upcall(self.shared_info.mem(), port, || {
            if let Some(h) = owner {
                h.token();
            }
        });
    }

    /// Clears the port's bits (the caller holds the port table's lock);
    /// true if it was delivered and not taken, i.e. its token is still
    /// queued on the owner's fd.
    fn clear_bits(&self, port: u32) -> bool {
        let clear = |base| {
            self.word(base, port)
                .is_some_and(|(w, b)| w.fetch_and(!b, Ordering::AcqRel) & b != 0)
        };
        clear(SHARED_INFO_PENDING_OFFSET);
        clear(SHARED_INFO_MASK_OFFSET);
        clear(DELIVERED_OFFSET)
    }
}

fn alloc_slot(
    ports: &mut Vec<Slot>,
    kind: PortKind,
    owner: &Arc<HandleShared>,
) -> Result<Port, EventError> {
    // Port 0 is never used, as on Xen.
    if ports.is_empty() {
        ports.push(Slot {
            kind: PortKind::Free,
            owner: None,
        });
    }
    let idx = match ports.iter().skip(1).position(|s| s.kind == PortKind::Free) {
        Some(i) => i + 1,
        None if ports.len() < EVTCHN_2L_NR_CHANNELS => {
            ports.push(Slot {
                kind: PortKind::Free,
                owner: None,
            });
            ports.len() - 1
        }
        None => return Err(EventError::NoFreePorts),
    };
    ports[idx] = Slot {
        kind,
        owner: Some(owner.clone()),
    };
    Ok(Port(idx as u32))
}

impl DomainState {
    /// EVTCHNOP_send on a local port.
    pub(crate) fn evtchn_send(&self, port: Port) -> Result<(), EventError> {
        let kind = lock(&self.evt.ports)
            .get(port.0 as usize)
            .map(|s| s.kind)
            .unwrap_or(PortKind::Free);
        match kind {
            PortKind::Free => Err(EventError::NotBound(port)),
            // Sending on an unbound port is silently dropped, as on Xen.
            PortKind::Unbound { .. } => Ok(()),
            PortKind::Interdomain { remote, rport } => {
                if let Some(r) = self.domain(remote) {
                    r.evt.set_pending(rport.0);
                }
                Ok(())
            }
        }
    }

    /// Port state, for tests and the inspector.
    pub(crate) fn port_kind(&self, port: Port) -> PortKind {
        lock(&self.evt.ports)
            .get(port.0 as usize)
            .map(|s| s.kind)
            .unwrap_or(PortKind::Free)
    }

    /// Closes `port`; true if it was delivered and not taken and its token
    /// is on a domain process's pipe, which that process must take back.
    fn close_port(&self, port: Port) -> Result<bool, EventError> {
        let (kind, owed) = {
            let mut ports = lock(&self.evt.ports);
            let slot = ports
                .get_mut(port.0 as usize)
                .ok_or(EventError::NotBound(port))?;
            if slot.kind == PortKind::Free {
                return Err(EventError::NotBound(port));
            }
            let k = slot.kind;
            let owner = slot.owner.take();
            *slot = Slot {
                kind: PortKind::Free,
                owner: None,
            };
            // Still under the lock: no delivery can come between.
            let owed = self.evt.clear_bits(port.0) && !owner.is_some_and(|h| h.untoken());
            (k, owed)
        };
        if let PortKind::Interdomain { remote, rport } = kind {
            // The remote end returns to unbound, waiting for a new bind from us.
            let back = |ports: &mut Vec<Slot>| {
                if let Some(s) = ports.get_mut(rport.0 as usize) {
                    if s.kind
                        == (PortKind::Interdomain {
                            remote: self.id,
                            rport: port,
                        })
                    {
                        s.kind = PortKind::Unbound { remote: self.id };
                    }
                }
            };
            if remote == self.id {
                back(&mut lock(&self.evt.ports));
            } else if let Some(r) = self.domain(remote) {
                back(&mut lock(&r.evt.ports));
            }
        }
        Ok(owed)
    }

    pub(crate) fn evt_destroy(&self) {
        let ports: Vec<Port> = lock(&self.evt.ports)
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind != PortKind::Free)
            .map(|(i, _)| Port(i as u32))
            .collect();
        for p in ports {
            let _ = self.close_port_dead(p);
        }
        for h in lock(&self.evt.handles).list.drain(..) {
            if let Some(h) = h.upgrade() {
                h.closed.store(true, Ordering::Release);
                // An in-process waiter wakes and finds the handle closed. A
                // domain process learns it from its next call to the host
                // (a token would leave its fd readable for ever).
                if matches!(h.wake, Wake::EventFd(_)) {
                    h.token();
                }
            }
        }
    }

    /// Closing a dead domain's port: its interdomain peers go back to
    /// unbound (and get an event so they notice).
    fn close_port_dead(&self, port: Port) -> Result<(), EventError> {
        let kind = self.port_kind(port);
        self.close_port(port)?;
        if let PortKind::Interdomain { remote, rport } = kind {
            if let Some(r) = self.domain(remote) {
                r.evt.set_pending(rport.0);
            }
        }
        Ok(())
    }
}

/// An event channel handle of one domain (like an open `/dev/xen/evtchn`).
pub struct SimEvtchn {
    dom: Arc<DomainState>,
    shared: Arc<HandleShared>,
}

impl std::fmt::Debug for SimEvtchn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEvtchn")
            .field("dom", &self.dom.id)
            .finish()
    }
}

impl SimEvtchn {
    pub(crate) fn open(dom: Arc<DomainState>) -> Result<Self, EventError> {
        let efd = eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )
        .map_err(|e| EventError::Os(e.raw_os_error()))?;
        Ok(Self::open_with(dom, Wake::EventFd(efd)))
    }

    /// A handle whose tokens are bytes written (never blocking) to a pipe
    /// a domain process reads: `write` is the pipe's non-blocking write
    /// end, `read` a read end the host keeps open (see [`Wake::Pipe`]).
    pub(crate) fn open_with_pipe(dom: Arc<DomainState>, write: OwnedFd, read: OwnedFd) -> Self {
        Self::open_with(dom, Wake::Pipe { write, read })
    }

    fn open_with(dom: Arc<DomainState>, wake: Wake) -> Self {
        let shared = Arc::new(HandleShared {
            wake,
            ports: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        lock(&dom.evt.handles).push(Arc::downgrade(&shared));
        Self { dom, shared }
    }

    fn owns(&self, port: Port) -> Result<(), EventError> {
        if lock(&self.shared.ports).contains(&port) {
            Ok(())
        } else {
            Err(EventError::NotBound(port))
        }
    }

    fn live(&self) -> Result<(), EventError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(EventError::Closed)
        } else {
            Ok(())
        }
    }

    /// The fd readable while a port of this handle is delivered and not
    /// yet taken (a semaphore eventfd; for a handle of a domain process, the
    /// host's read end of its pipe).
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shared.fd()
    }

    /// Closes `port` as [`EventChannels::close`] does; true if its
    /// delivery was not taken and its token is on the domain process's
    /// pipe (the process takes it back).
    pub fn close_reporting(&self, port: Port) -> Result<bool, EventError> {
        {
            let mut ports = lock(&self.shared.ports);
            let i = ports
                .iter()
                .position(|p| *p == port)
                .ok_or(EventError::NotBound(port))?;
            ports.swap_remove(i);
        }
        self.dom.close_port(port)
    }

    /// The remote end of a port of this handle, if interdomain.
    pub fn remote_of(&self, port: Port) -> Option<(DomId, Port)> {
        match self.dom.port_kind(port) {
            PortKind::Interdomain { remote, rport } => Some((remote, rport)),
            _ => None,
        }
    }
}

impl Drop for SimEvtchn {
    fn drop(&mut self) {
        let ports = std::mem::take(&mut *lock(&self.shared.ports));
        for p in ports {
            let _ = self.dom.close_port(p);
        }
    }
}

impl EventChannels for SimEvtchn {
    fn domid(&self) -> DomId {
        self.dom.id
    }

    fn alloc_unbound(&self, remote: DomId) -> Result<Port, EventError> {
        self.live()?;
        let remote = if remote == DomId::SELF {
            self.dom.id
        } else {
            remote
        };
        let port = alloc_slot(
            &mut lock(&self.dom.evt.ports),
            PortKind::Unbound { remote },
            &self.shared,
        )?;
        lock(&self.shared.ports).push(port);
        Ok(port)
    }

    fn bind_interdomain(&self, remote: DomId, rport: Port) -> Result<Port, EventError> {
        self.live()?;
        let me = self.dom.id;
        let remote = if remote == DomId::SELF { me } else { remote };
        let r = self
            .dom
            .domain(remote)
            .ok_or(EventError::NoDomain(remote))?;
        let not_offered = EventError::NotOffered {
            dom: remote,
            port: rport,
        };
        let port = if remote == me {
            let mut ports = lock(&self.dom.evt.ports);
            match ports.get(rport.0 as usize).map(|s| s.kind) {
                Some(PortKind::Unbound { remote: allowed }) if allowed == me => {}
                _ => return Err(not_offered),
            }
            let lp = alloc_slot(
                &mut ports,
                PortKind::Interdomain { remote, rport },
                &self.shared,
            )?;
            ports[rport.0 as usize].kind = PortKind::Interdomain {
                remote: me,
                rport: lp,
            };
            lp
        } else {
            // Two domains' port tables: lock in domid order.
            let (mut mine, mut theirs);
            if me < remote {
                mine = lock(&self.dom.evt.ports);
                theirs = lock(&r.evt.ports);
            } else {
                theirs = lock(&r.evt.ports);
                mine = lock(&self.dom.evt.ports);
            }
            match theirs.get(rport.0 as usize).map(|s| s.kind) {
                Some(PortKind::Unbound { remote: allowed }) if allowed == me => {}
                _ => return Err(not_offered),
            }
            let lp = alloc_slot(
                &mut mine,
                PortKind::Interdomain { remote, rport },
                &self.shared,
            )?;
            theirs[rport.0 as usize].kind = PortKind::Interdomain {
                remote: me,
                rport: lp,
            };
            lp
        };
        lock(&self.shared.ports).push(port);
        // Xen marks the new local port pending so the binder re-checks state.
        self.dom.evt.set_pending(port.0);
        Ok(port)
    }

    fn notify(&self, port: Port) -> Result<(), EventError> {
        self.owns(port)?;
        self.dom.evtchn_send(port)
    }

    fn unmask(&self, port: Port) -> Result<(), EventError> {
        self.owns(port)?;
        // Under the port table's lock, as every delivery is.
        let _table = lock(&self.dom.evt.ports);
        unmask_and_redeliver(self.dom.evt.shared_info.mem(), port.0, || {
            self.shared.token()
        });
        Ok(())
    }

    fn close(&self, port: Port) -> Result<(), EventError> {
        self.close_reporting(port).map(drop)
    }

    fn poll(&self) -> Result<Option<Port>, EventError> {
        let ports = lock(&self.shared.ports);
        if let Some(p) = deliver_one(self.dom.evt.shared_info.mem(), &ports) {
            self.shared.untoken();
            return Ok(Some(p));
        }
        drop(ports);
        self.live()?;
        Ok(None)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Port>, EventError> {
        wait_on_eventfd(self.shared.fd(), timeout, || self.poll())
    }
}

/// Where, in a `shared_info` page, the emulator keeps the bitmap of ports
/// an upcall delivered and no handle has taken yet: the page's last 512
/// bytes, past every field of Xen's layout (nothing else reads them).
const DELIVERED_OFFSET: usize = PAGE_SIZE - EVTCHN_2L_NR_CHANNELS / 8;
const _: () = assert!(DELIVERED_OFFSET >= core::mem::size_of::<SharedInfo>());

fn si_bit(
    shared_info: xenshare::mem::SharedMem<'_>,
    base: usize,
    port: u32,
) -> Option<(&AtomicU64, u64)> {
    let (w, b) = port_word_bit(port);
    shared_info
        .atomic_u64(base + w * 8)
        .ok()
        .map(|a| (a, 1u64 << b))
}

/// The guest kernel's upcall for `port`, done at once: if the port is
/// pending and this call is the one that masks it, its pending bit is
/// cleared, `token` gives the handle its wake-up token and then the port is
/// marked delivered (in that order: a handle that sees the bit finds the
/// token there to take); true then. A port already masked stays pending
/// (latched) until unmasked. A port still delivered and not taken (its
/// user unmasked it before taking it) is not queued twice: the take to
/// come covers the new event, and a second token would outlive it. Called
/// by the hypervisor's set-pending and by an unmask that finds the port
/// pending; the mask bit decides which of the two delivers.
fn upcall(shared_info: xenshare::mem::SharedMem<'_>, port: u32, token: impl FnOnce()) -> bool {
    let (Some((p, b)), Some((m, _)), Some((d, _))) = (
        si_bit(shared_info, SHARED_INFO_PENDING_OFFSET, port),
        si_bit(shared_info, SHARED_INFO_MASK_OFFSET, port),
        si_bit(shared_info, DELIVERED_OFFSET, port),
    ) else {
        return false;
    };
    if p.load(Ordering::Acquire) & b == 0 || m.fetch_or(b, Ordering::AcqRel) & b != 0 {
        return false;
    }
    p.fetch_and(!b, Ordering::AcqRel);
    if d.load(Ordering::Acquire) & b != 0 {
        return false;
    }
    token();
    d.fetch_or(b, Ordering::AcqRel);
    true
}

/// Unmasks `port` in a `shared_info` page; true if it was pending, in
/// which case it is delivered again (by the upcall the module
/// documentation describes, `token` giving the handle its token), as
/// Xen's unmask re-raises a pending port.
pub fn unmask_and_redeliver(
    shared_info: xenshare::mem::SharedMem<'_>,
    port: u32,
    token: impl FnOnce(),
) -> bool {
    let Some((m, b)) = si_bit(shared_info, SHARED_INFO_MASK_OFFSET, port) else {
        return false;
    };
    m.fetch_and(!b, Ordering::AcqRel);
    upcall(shared_info, port, token)
}

/// Takes one delivered port of `ports` from a `shared_info` page, as a
/// read of `/dev/xen/evtchn` does: it stays masked until the user unmasks
/// it. The caller then takes one token from the handle's fd. Shared by
/// in-process handles and the multi-process host's remote handles.
pub fn deliver_one(shared_info: xenshare::mem::SharedMem<'_>, ports: &[Port]) -> Option<Port> {
    ports.iter().copied().find(|port| {
        si_bit(shared_info, DELIVERED_OFFSET, port.0).is_some_and(|(d, b)| {
            d.load(Ordering::Acquire) & b != 0 && d.fetch_and(!b, Ordering::AcqRel) & b != 0
        })
    })
}

/// Sleeps until `fd` is readable, a signal arrives or `left` has passed
/// (`None`: no limit): one `poll`, after which the caller looks again and
/// keeps its own overall deadline.
pub fn poll_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    left: Option<Duration>,
) -> Result<(), rustix::io::Errno> {
    let ts = left.map(|d| Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: d.subsec_nanos() as _,
    });
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    match poll(&mut fds, ts.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits for `poll` to deliver a port (taking its token), sleeping on the
/// handle's fd `efd` between tries, for at most `timeout` (`None`:
/// forever). The fd is readable exactly while a port is delivered and not
/// taken, so it is not read here.
pub fn wait_on_eventfd(
    efd: std::os::fd::BorrowedFd<'_>,
    timeout: Option<Duration>,
    mut poll_once: impl FnMut() -> Result<Option<Port>, EventError>,
) -> Result<Option<Port>, EventError> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if let Some(p) = poll_once()? {
            return Ok(Some(p));
        }
        let left = match deadline {
            Some(d) => {
                let now = std::time::Instant::now();
                if now >= d {
                    return Ok(None);
                }
                Some(d - now)
            }
            None => None,
        };
        poll_readable(efd, left).map_err(|e| EventError::Os(e.raw_os_error()))?;
    }
}
