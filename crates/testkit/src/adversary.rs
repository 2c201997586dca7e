//! Malicious peers in a few lines each.
//!
//! Every helper does what a hostile domain can really do on Xen — write any
//! value into a shared page it has mapped, keep a mapping, send events, write
//! XenStore keys it has permission to write — and nothing the hypervisor
//! would refuse. The victim under test is always the real front or back end.
//!
//! | helper | the peer … |
//! | --- | --- |
//! | [`RawIndices`] | sets a ring's `req_prod` / `rsp_prod` / `cons` / `prod` to any value |
//! | [`Kept`] | maps a grant and keeps the mapping after claiming to be done; [`Kept::release`] lets go |
//! | [`Flooder`] | notifies an event channel as fast as it can until stopped |
//! | [`HostileStore`] | writes hostile keys and raw XenbusState values |

use std::mem::offset_of;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xenshare::event::Channel;
use xenshare::grant::Mapping;
use xenshare::mem::{Perm, ReadOnly, ReadWrite, SharedMem};
use xenshare::store::xenbus::XenbusState;
use xenshare::{DomId, GrantRef, Port};
use xenshare_abi::ring::SringHeader;
use xenshare_abi::xs::XenstoreDomainInterface;
use xenshare_sim::{Domain, SimEvtchn, SimMapper};

use crate::{Machine, Xs};

/// Offsets of the indices in the header of a request/response ring
/// (`<name>_sring`, at the start of the ring's first page).
pub mod sring {
    use super::*;
    /// `req_prod`: requests published (the front end writes it).
    pub const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
    /// `req_event`: wake the back end past this (the back end writes it).
    pub const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
    /// `rsp_prod`: responses published (the back end writes it).
    pub const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
    /// `rsp_event`: wake the front end past this (the front end writes it).
    pub const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);
}

/// Offsets of the indices of the XenStore ring page.
pub mod xs_ring {
    use super::*;
    /// `req_cons` (the daemon writes it).
    pub const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
    /// `req_prod` (the guest writes it).
    pub const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
    /// `rsp_cons` (the guest writes it).
    pub const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
    /// `rsp_prod` (the daemon writes it).
    pub const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
    /// `error`: why the daemon stopped serving the ring.
    pub const ERROR: usize = offset_of!(XenstoreDomainInterface, error);
}

/// Offsets of the indices in a vchan control page (`struct vchan_interface`).
pub mod vchan_ring {
    use super::*;
    use xenshare_abi::vchan::{RingShared, VchanInterface};
    /// Client → server ring: consumer index (the server writes it).
    pub const LEFT_CONS: usize = offset_of!(VchanInterface, left) + offset_of!(RingShared, cons);
    /// Client → server ring: producer index (the client writes it).
    pub const LEFT_PROD: usize = offset_of!(VchanInterface, left) + offset_of!(RingShared, prod);
    /// Server → client ring: consumer index (the client writes it).
    pub const RIGHT_CONS: usize = offset_of!(VchanInterface, right) + offset_of!(RingShared, cons);
    /// Server → client ring: producer index (the server writes it).
    pub const RIGHT_PROD: usize = offset_of!(VchanInterface, right) + offset_of!(RingShared, prod);
}

/// A peer's hands on the indices of a shared ring page: reads and writes
/// any 32-bit index at any offset, bypassing every check a real ring does.
/// Offsets come from [`sring`], [`xs_ring`], [`vchan_ring`] or the console's
/// `ring::{IN, OUT}` (`.cons`, `.prod`).
#[derive(Clone, Copy)]
pub struct RawIndices<'m> {
    mem: SharedMem<'m>,
}

impl<'m> RawIndices<'m> {
    /// Raw access to the ring page `mem` (a peer's mapping or the owner's
    /// own share).
    pub fn new(mem: SharedMem<'m>) -> Self {
        Self { mem }
    }

    /// Writes `value` to the index at `offset`.
    pub fn set(&self, offset: usize, value: u32) {
        self.index(offset).store(value, Ordering::SeqCst);
    }

    /// Reads the index at `offset`.
    pub fn get(&self, offset: usize) -> u32 {
        self.index(offset).load(Ordering::SeqCst)
    }

    /// Moves the index at `offset` by `delta` (wrapping, as ring indices do).
    pub fn bump(&self, offset: usize, delta: u32) {
        self.set(offset, self.get(offset).wrapping_add(delta));
    }

    /// Sets a request/response ring's `req_prod`.
    pub fn set_req_prod(&self, value: u32) {
        self.set(sring::REQ_PROD, value);
    }

    /// Sets a request/response ring's `rsp_prod`.
    pub fn set_rsp_prod(&self, value: u32) {
        self.set(sring::RSP_PROD, value);
    }

    fn index(&self, offset: usize) -> &'m std::sync::atomic::AtomicU32 {
        self.mem
            .atomic_u32(offset)
            .unwrap_or_else(|e| panic!("ring index at {offset}: {e:?}"))
    }
}

/// A grant the peer mapped and keeps mapped — after answering, after the
/// granter tried to revoke it — until [`Kept::release`] or drop.
/// Dereferences to the mapping (`kept.mem()`).
pub struct Kept<P: Perm = ReadWrite> {
    map: Option<Mapping<SimMapper, P>>,
}

impl Kept<ReadWrite> {
    /// `mapper` maps `granter`'s `gref` writable and keeps it.
    pub fn rw(mapper: &Domain, granter: DomId, gref: GrantRef) -> Self {
        let map = mapper
            .importer()
            .map_rw(granter, &[gref])
            .unwrap_or_else(|e| panic!("mapping {gref:?} of {granter:?}: {e:?}"));
        Self { map: Some(map) }
    }
}

impl Kept<ReadOnly> {
    /// `mapper` maps `granter`'s `gref` read-only and keeps it.
    pub fn ro(mapper: &Domain, granter: DomId, gref: GrantRef) -> Self {
        let map = mapper
            .importer()
            .map_ro(granter, &[gref])
            .unwrap_or_else(|e| panic!("mapping {gref:?} of {granter:?}: {e:?}"));
        Self { map: Some(map) }
    }
}

impl<P: Perm> Kept<P> {
    /// Lets go of the mapping (the granter can now revoke the grant).
    pub fn release(&mut self) {
        self.map = None;
    }

    /// True until [`Kept::release`].
    pub fn is_held(&self) -> bool {
        self.map.is_some()
    }
}

impl<P: Perm> Deref for Kept<P> {
    type Target = Mapping<SimMapper, P>;
    fn deref(&self) -> &Self::Target {
        self.map.as_ref().expect("the kept mapping was released")
    }
}

/// A thread notifying an event channel as fast as it can until stopped; stops and joins on drop, so a failing
/// test cannot leave it running.
pub struct Flooder {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<Channel<SimEvtchn>>>,
}

impl Flooder {
    /// Floods through `chan` (a bound channel of the hostile peer).
    pub fn spawn(chan: Channel<SimEvtchn>) -> Self {
        Self::paced(chan, None)
    }

    /// Notifies through `chan`, sleeping `pause` between notifications
    /// (`None`: none at all) — `Some` makes a doorbell storm rather than a
    /// flood.
    pub fn paced(chan: Channel<SimEvtchn>, pause: Option<Duration>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, n) = (stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if chan.notify().is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
            }
            chan
        });
        Self {
            stop,
            sent,
            handle: Some(handle),
        }
    }

    /// `flooder` binds to `remote`'s `port` and floods it.
    pub fn bind(flooder: &Domain, remote: DomId, port: Port) -> Self {
        Self::spawn(bind(flooder, remote, port))
    }

    /// True while the flood thread runs.
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Notifications sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the flood; returns how many notifications were sent and the
    /// channel.
    pub fn stop(mut self) -> (u64, Channel<SimEvtchn>) {
        self.stop.store(true, Ordering::Relaxed);
        let chan = self
            .handle
            .take()
            .expect("joined once")
            .join()
            .expect("the flood thread panicked");
        (self.sent(), chan)
    }

    /// Notifies `chan` from this thread for `span`; returns how many
    /// notifications were sent.
    pub fn burst(chan: &Channel<SimEvtchn>, span: Duration) -> u64 {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < span {
            chan.notify().expect("notify");
            n += 1;
        }
        n
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `dom` binds an event channel to `remote`'s `port` (a fresh handle).
pub fn bind(dom: &Domain, remote: DomId, port: Port) -> Channel<SimEvtchn> {
    let evt = dom.evtchn().expect("event channel handle");
    Channel::bind(&evt, remote, port).expect("binding the event channel")
}

/// A domain writing whatever it likes where XenStore lets it: hostile
/// values for protocol keys and raw, possibly invalid, XenbusState values.
pub struct HostileStore {
    /// The client, for anything the helpers do not cover.
    pub xs: Xs,
}

impl HostileStore {
    /// Speaks for `dom` on `m`'s XenStore.
    pub fn new(m: &Machine, dom: &Domain) -> Self {
        Self { xs: m.client(dom) }
    }

    /// Writes `dir/key = value` for every pair.
    pub fn write_keys(&mut self, dir: &str, keys: &[(&str, &str)]) {
        for (k, v) in keys {
            self.write(&format!("{dir}/{k}"), v.as_bytes());
        }
    }

    /// Writes `value` at `path`.
    pub fn write(&mut self, path: &str, value: &[u8]) {
        self.xs
            .write(path, value)
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }

    /// Writes `raw` as `dir/state` (e.g. `"banana"`, `"99"`, `" 4"`).
    pub fn raw_state(&mut self, dir: &str, raw: &str) {
        self.write(&format!("{dir}/state"), raw.as_bytes());
    }

    /// Writes a well-formed `state` (for a peer lying about its progress).
    pub fn state(&mut self, dir: &str, s: XenbusState) {
        xenshare::store::xenbus::write_state(&mut self.xs, dir, s)
            .unwrap_or_else(|e| panic!("writing {dir}/state: {e}"));
    }
}

/// A double-fetch race: runs `victim` while another thread rewrites
/// `mem[offset..]` alternately with `a` and `b` (starting with `a`). The
/// rewriting has begun before `victim` runs and stops once it returns.
/// Returns what `victim` returned and how many rewrites happened.
pub fn flip_during<R>(
    mem: SharedMem<'_>,
    offset: usize,
    a: &[u8],
    b: &[u8],
    victim: impl FnOnce() -> R,
) -> (R, u64) {
    let stop = AtomicBool::new(false);
    let flips = AtomicU64::new(0);
    std::thread::scope(|s| {
        let flipper = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = if n.is_multiple_of(2) { a } else { b };
                mem.write(offset, v)
                    .expect("the flipped bytes are in the page");
                n += 1;
                flips.store(n, Ordering::Relaxed);
            }
            n
        });
        // Let the victim run only once the flipper is at work.
        while flips.load(Ordering::Relaxed) < 2 && !flipper.is_finished() {
            std::hint::spin_loop();
        }
        let r = victim();
        stop.store(true, Ordering::Relaxed);
        let n = flipper.join().expect("the flipper panicked");
        (r, n)
    })
}
