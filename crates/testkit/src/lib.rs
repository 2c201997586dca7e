//! xenshare's test kit: the worlds and the adversaries that the integration
//! tests of `sim`, `xenstored` and `devices` share, written once.
//!
//! # Why a crate
//!
//! The kit needs the emulator (`xenshare-sim`), the XenStore daemon
//! (`xenshare-xenstored`) and the device glue (`xenshare-devices`, which
//! owns [`Machine`] because its demo and benchmarks boot one too). A
//! `testkit` feature inside one of those crates would have to depend on the
//! others, a cycle. As a separate, unpublished crate it sits above all of
//! them; their integration tests dev-depend on it (an integration test links
//! the normal library, so the kit's types are the test's types).
//!
//! # What is here
//!
//! - [`World`]: one [`Machine`] (hypervisor, dom0, a guest, an in-process
//!   XenStore in which the guest owns its home directory) plus the
//!   toolstack steps of each device: [`console`], [`net`] and [`blk`] hold
//!   the builders that connect a front/back pair, or a hand-played peer
//!   against a real one.
//! - [`adversary`]: a malicious peer in a few lines — raw writes of ring
//!   indices ([`adversary::RawIndices`]), a mapping kept after the peer said
//!   it was done ([`adversary::Kept`]), an event flood
//!   ([`adversary::Flooder`]), hostile XenStore keys and states
//!   ([`adversary::HostileStore`]).
//! - Small shared pieces: the deadline every test waits with ([`T`]),
//!   a bounded polling loop ([`wait_until`]), a seedable PRNG ([`Rng`]) and
//!   a byte pattern ([`pattern`]).
//!
//! # A new malicious scenario
//!
//! A back end that claims a thousand responses on a ring where one request
//! is outstanding; the real netfront must break with a typed error:
//!
//! ```no_run
//! use std::time::Duration;
//! use xenshare_testkit::adversary::RawIndices;
//! use xenshare_testkit::net::{evil_back, frame, world};
//!
//! let w = world();
//! let (eb, mut nf) = evil_back(&w);
//! nf.send(&frame(100, 1)).unwrap();
//! RawIndices::new(eb.tx.mem()).set_rsp_prod(1000);
//! eb.chan.notify().unwrap();
//! assert!(nf.recv_timeout(Duration::from_secs(10)).is_err());
//! assert!(nf.is_broken());
//! ```
//!
//! Everything here panics on a set-up failure: it is test code, and a
//! panic with the step's name is the clearest test failure.

use std::ops::Deref;
use std::time::{Duration, Instant};

use xenshare::event::Channel;
use xenshare::platform::EventChannels;
use xenshare::ring::{BackRing, FrontRing};
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn};
use xenshare_xenstored::inproc::InProcTransport;
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub mod adversary;
pub mod blk;
pub mod console;
pub mod net;

pub use xenshare_devices::machine::{give_home, Machine, MachineError};

/// A XenStore client of the in-process daemon.
pub type Xs = xenshare::store::client::Client<InProcTransport>;

/// Generous bound on anything that should happen "soon": handshakes,
/// frames, a back end noticing a violation. Long, because the tests run on
/// loaded two-core machines; nothing asserts that it is *fast*.
pub const T: Duration = Duration::from_secs(10);

/// Polls every 5 ms until `done` holds; panics with `what` once `limit`
/// has passed (one overall deadline, not restarted).
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `poll` until it yields a value, waiting on `chan`'s handle (and
/// unmasking the port that fired) between tries; panics with `what` after
/// [`T`]. How a hand-played peer waits for the next request or response.
pub fn wait_on<R>(chan: &Channel<SimEvtchn>, what: &str, mut poll: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = poll() {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        if let Some(p) = chan
            .wait(Some(Duration::from_millis(20)))
            .expect("waiting for an event")
        {
            chan.handle().unmask(p).expect("unmasking the port");
        }
    }
}

/// A fresh page of `m`'s guest granted to dom0 with `access`.
pub fn grant_page(m: &Machine, access: xenshare::Access) -> xenshare_sim::SimShare {
    m.guest
        .exporter()
        .share(m.dom0.id(), 1, access)
        .expect("granting a page to dom0")
}

/// A hand-played back end's answer: pushes `rsps`, publishes them and
/// notifies the front end over `chan`.
pub fn push_responses<Req, Rsp>(
    ring: &mut BackRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
    chan: &Channel<SimEvtchn>,
    rsps: &[Rsp],
) where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    for r in rsps {
        ring.push_response(r).expect("pushing a response");
    }
    ring.push_responses().expect("publishing responses");
    chan.notify().expect("notifying the front end");
}

/// A hand-played front end's requests: pushes `reqs`, publishes them and
/// notifies the back end over `chan`.
pub fn push_requests<Req, Rsp>(
    ring: &mut FrontRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
    chan: &Channel<SimEvtchn>,
    reqs: &[Req],
) where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    for r in reqs {
        ring.push_request(r).expect("pushing a request");
    }
    ring.push_requests().expect("publishing requests");
    chan.notify().expect("notifying the back end");
}

/// A hypervisor with two domains of the default configuration: the
/// granter and the mapper of the emulator's own tests.
pub fn two_domains() -> (Hypervisor, Domain, Domain) {
    two_domains_with(DomainConfig::default())
}

/// A hypervisor with two domains of configuration `cfg`.
pub fn two_domains_with(cfg: DomainConfig) -> (Hypervisor, Domain, Domain) {
    let hv = Hypervisor::new();
    let a = hv.create_domain(cfg).expect("creating a domain");
    let b = hv.create_domain(cfg).expect("creating a domain");
    (hv, a, b)
}

/// A hypervisor with a granter of only `mem_pages` pages of memory (so
/// frames come back to it and exhaustion is near) and a peer of the
/// default size: the set-up of the grant reuse and exhaustion tests.
pub fn small_granter_and_peer(mem_pages: u64) -> (Hypervisor, Domain, Domain) {
    let hv = Hypervisor::new();
    let granter = hv
        .create_domain(DomainConfig {
            mem_pages,
            ..Default::default()
        })
        .expect("creating the granter");
    let peer = hv
        .create_domain(DomainConfig::default())
        .expect("creating the peer");
    (hv, granter, peer)
}

/// Asserts that `got` holds the same ids as `want`, in any order (responses
/// may come back in any order; each id exactly once).
pub fn assert_same_ids<T: Ord + Clone + std::fmt::Debug>(mut got: Vec<T>, want: &[T]) {
    got.sort_unstable();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(got, want);
}

/// A hypervisor with dom0 (domain 0, default size) and one guest of
/// configuration `guest`: the two ends of most grant scenarios.
pub fn dom0_and_guest(guest: DomainConfig) -> (Hypervisor, Domain, Domain) {
    let hv = Hypervisor::new();
    let dom0 = hv
        .create_domain_with_id(DomId(0), DomainConfig::default())
        .expect("creating dom0");
    let guest = hv.create_domain(guest).expect("creating the guest");
    (hv, dom0, guest)
}

/// An emulated machine and the toolstack steps the device tests share.
/// Dereferences to its [`Machine`] (`w.hv`, `w.dom0`, `w.guest`, `w.xs`).
pub struct World(pub Machine);

impl World {
    /// Boots dom0 (default size) and a guest of `guest_cfg`, with the
    /// guest's home directory in XenStore.
    pub fn new(guest_cfg: DomainConfig) -> Self {
        Self(Machine::new(guest_cfg).expect("booting the emulated machine"))
    }

    /// Boots a guest of `mem_pages` pages (every other setting default).
    pub fn with_pages(mem_pages: u64) -> Self {
        Self::new(DomainConfig {
            mem_pages,
            ..Default::default()
        })
    }

    /// A XenStore client speaking for `d`.
    pub fn xs(&self, d: &Domain) -> Xs {
        self.0.client(d)
    }
}

impl Deref for World {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.0
    }
}

/// xorshift64*: deterministic, seedable, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced by 1).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A deterministic byte pattern covering every value, starting at
/// position `start` of an endless stream.
pub fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len)
        .map(|i| (i * 7 + i / 256) as u8)
        .collect()
}
