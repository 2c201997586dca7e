//! The network world: a 16 MiB guest, the toolstack's part of a vif, a real
//! back end bridged to an in-memory host, a real netfront, and each side
//! played by hand against the other real one ([`evil_front`],
//! [`evil_back`]) so a test can write raw requests and responses.

use std::thread;
use std::time::Duration;

use xenshare::event::Channel;
use xenshare::net::xenbus::{BackendFeatures, FrontendKeys, DEVTYPE};
use xenshare::net::{NetError, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use xenshare::net::{Netfront, NetfrontConfig};
use xenshare::ring::{BackRing, FrontRing};
use xenshare::store::xenbus::{create_device, DevicePaths, DeviceSpec};
use xenshare::store::xenbus::{wait_for_state, write_state, XenbusState};
use xenshare::{Access, GrantRef};
use xenshare_devices::net::host::{mem_link, HostPort};
use xenshare_devices::net::run::{spawn_backend, BackendThread};
use xenshare_sim::{DomainConfig, SimEvtchn, SimGrantBackend, SimMapping, SimShare};

use zerocopy::{FromBytes, Immutable, IntoBytes};

pub use crate::{World, T};

/// A netfront of the emulated guest.
pub type Front = Netfront<SimGrantBackend, SimEvtchn>;

/// The MAC the toolstack gives the guest.
pub const MAC: &str = "00:16:3e:00:00:2a";

/// The front end's view of a tx ring.
pub type TxFront<'a> = FrontRing<xenshare::mem::SharedMem<'a>, NetifTxRequest, NetifTxResponse>;
/// The front end's view of an rx ring.
pub type RxFront<'a> = FrontRing<xenshare::mem::SharedMem<'a>, NetifRxRequest, NetifRxResponse>;
/// The back end's view of a tx ring.
pub type TxBack<'a> = BackRing<xenshare::mem::SharedMem<'a>, NetifTxRequest, NetifTxResponse>;
/// The back end's view of an rx ring.
pub type RxBack<'a> = BackRing<xenshare::mem::SharedMem<'a>, NetifRxRequest, NetifRxResponse>;

/// A machine with a 16 MiB guest.
pub fn world() -> World {
    world_with(DomainConfig {
        mem_pages: 4096,
        ..Default::default()
    })
}

/// A machine whose guest is configured by `guest_cfg` (dom0 gets the
/// default).
pub fn world_with(guest_cfg: DomainConfig) -> World {
    World::new(guest_cfg)
}

impl World {
    /// The toolstack's part of vif `devid` (both directories, `mac`).
    pub fn create_vif(&self, devid: u32) -> DevicePaths {
        create_device(
            &mut self.xs(&self.dom0),
            &DeviceSpec {
                devtype: DEVTYPE,
                devid,
                frontend: self.guest.id(),
                backend: self.dom0.id(),
                front_keys: &[("mac", MAC), ("handle", "0")],
                back_keys: &[("mac", MAC), ("handle", "0")],
            },
        )
        .expect("creating the vif's directories")
    }

    /// A back end thread for vif `devid`, bridged to an in-memory host.
    pub fn vif_backend(&self, devid: u32) -> (BackendThread, HostPort) {
        let (io, port) = mem_link(4096);
        let bt = spawn_backend(
            self.dom0.importer().clone(),
            self.dom0.evtchn().expect("dom0 event channel handle"),
            self.xs(&self.dom0),
            self.guest.id(),
            devid,
            io,
            T,
        );
        (bt, port)
    }

    /// Vif `devid` created, its back end running on an in-memory host link
    /// and the guest's netfront connected to it: the opening of most
    /// netif tests.
    pub fn connected_vif(&self, devid: u32) -> (BackendThread, HostPort, Front) {
        self.create_vif(devid);
        let (bt, host) = self.vif_backend(devid);
        let nf = self.netfront(devid);
        (bt, host, nf)
    }

    /// The guest's netfront for vif `devid` (the back end must be coming up).
    pub fn netfront(&self, devid: u32) -> Front {
        self.try_netfront(devid, T).expect("netfront connects")
    }

    /// The guest's netfront for vif `devid`, or why it could not connect
    /// within `timeout` (for back ends that publish hostile keys).
    pub fn try_netfront(&self, devid: u32, timeout: Duration) -> Result<Front, NetError> {
        Netfront::connect(
            self.guest.exporter(),
            &self.guest.evtchn().expect("guest event channel handle"),
            &mut self.xs(&self.guest),
            devid,
            NetfrontConfig::default(),
            timeout,
        )
    }

    /// Closes `nf` and asserts that it gave every grant back: nothing
    /// quarantined, and none of the guest's shares live (the closing check
    /// of the netif tests). Returns the report for further checks.
    pub fn close_clean(&self, nf: Front) -> xenshare::net::CloseReport {
        let report = nf
            .close(&mut self.xs(&self.guest), T)
            .expect("netfront closes");
        assert_eq!(report.quarantined, 0, "{report:?}");
        let gs = self.guest.exporter().stats();
        assert_eq!((gs.live, gs.quarantined), (0, 0), "{gs:?}");
        report
    }

    /// A read-only page of the guest granted to dom0, holding `data`.
    pub fn data_page(&self, data: &[u8]) -> SimShare {
        let s = crate::grant_page(self, Access::ReadOnly);
        s.mem().write(0, data).expect("filling the data page");
        s
    }
}

/// A read-only page of the guest granted to dom0, holding `data`.
pub fn data_page(w: &World, data: &[u8]) -> SimShare {
    w.data_page(data)
}

/// A test frame of `len` bytes: a valid-looking Ethernet header, then a
/// pattern that differs per length and seed.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (len as u8)))
        .collect();
    let hdr = [
        0x02, 0, 0, 0, 0, 1, 0x00, 0x16, 0x3e, 0, 0, 0x2a, 0x88, 0xb5,
    ];
    let n = hdr.len().min(len);
    f[..n].copy_from_slice(&hdr[..n]);
    f
}

/// A tx request.
pub fn tx_req(gref: GrantRef, offset: u16, flags: u16, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref: gref.0,
        offset,
        flags,
        id,
        size,
    }
}

// ------------------------------------------------- a front end played by hand

/// The guest playing a front end by hand against the real back end.
pub struct EvilFront {
    /// The tx ring page.
    pub tx: SimShare,
    /// The rx ring page.
    pub rx: SimShare,
    /// The channel to the back end.
    pub chan: Channel<SimEvtchn>,
}

impl EvilFront {
    /// The front end's view of the tx ring.
    pub fn tx_ring(&self) -> TxFront<'_> {
        TxFront::attach_at(self.tx.mem(), 0).expect("attaching the tx ring")
    }

    /// The front end's view of the rx ring.
    pub fn rx_ring(&self) -> RxFront<'_> {
        RxFront::attach_at(self.rx.mem(), 0).expect("attaching the rx ring")
    }
}

impl EvilFront {
    /// Pushes and publishes `reqs` on `ring` and notifies the back end.
    pub fn send<Req, Rsp>(
        &self,
        ring: &mut FrontRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
        reqs: &[Req],
    ) where
        Req: FromBytes + IntoBytes + Immutable,
        Rsp: FromBytes + IntoBytes + Immutable,
    {
        crate::push_requests(ring, &self.chan, reqs);
    }

    /// Waits (up to [`T`]) for the next response on `ring`.
    pub fn response<Req, Rsp>(
        &self,
        ring: &mut FrontRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
    ) -> Rsp
    where
        Req: FromBytes + IntoBytes + Immutable,
        Rsp: FromBytes + IntoBytes + Immutable,
    {
        next_response(ring, &self.chan)
    }
}

/// vif 0 with a real back end and a hand-played front end, connected.
pub fn evil_front(w: &World) -> (EvilFront, BackendThread, HostPort) {
    let paths = w.create_vif(0);
    let (bt, host) = w.vif_backend(0);
    let ef = evil_front_keys(w, &paths, &[]);
    let mut c = w.xs(&w.guest);
    wait_for_state(&mut c, &paths.back, T, |s| s == XenbusState::Connected)
        .expect("the back end connects");
    (ef, bt, host)
}

/// The hand-made front end's half of the handshake: waits for the back
/// end's InitWait, grants and initialises both rings, publishes the honest
/// keys with `over` replacing (or adding to) them, and goes Connected.
pub fn evil_front_keys(w: &World, paths: &DevicePaths, over: &[(&str, &str)]) -> EvilFront {
    let mut c = w.xs(&w.guest);
    wait_for_state(&mut c, &paths.back, T, |s| s == XenbusState::InitWait)
        .expect("the back end reaches InitWait");
    let share = || {
        w.guest
            .exporter()
            .share(w.dom0.id(), 1, Access::ReadWrite)
            .expect("granting a ring page")
    };
    let (tx, rx) = (share(), share());
    TxFront::init(tx.mem()).expect("tx ring init");
    RxFront::init(rx.mem()).expect("rx ring init");
    let chan = Channel::alloc_unbound(&w.guest.evtchn().expect("event handle"), w.dom0.id())
        .expect("allocating the port");
    FrontendKeys {
        tx_ring_ref: tx.refs()[0],
        rx_ring_ref: rx.refs()[0],
        event_channel: chan.port(),
        event_channel_rx: None,
        request_rx_copy: true,
        sg: true,
        rx_notify: true,
    }
    .publish(&mut c, &paths.front)
    .expect("publishing the front end's keys");
    for (k, v) in over {
        c.write(&format!("{}/{k}", paths.front), v.as_bytes())
            .expect("writing an override key");
    }
    write_state(&mut c, &paths.front, XenbusState::Connected).expect("front end Connected");
    EvilFront { tx, rx, chan }
}

/// Waits (up to [`T`]) for the next response on a hand-played front end's
/// ring.
pub fn next_response<Req, Rsp>(
    ring: &mut FrontRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
    chan: &Channel<SimEvtchn>,
) -> Rsp
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    crate::wait_on(chan, "back end never answered", || {
        ring.next_response().expect("a valid response ring")
    })
}

/// Waits for the next tx response on an evil front end's ring.
pub fn tx_response(ring: &mut TxFront<'_>, chan: &Channel<SimEvtchn>) -> NetifTxResponse {
    next_response(ring, chan)
}

/// The back end thread must end by itself with a protocol error.
pub fn expect_backend_error(bt: BackendThread) -> NetError {
    crate::wait_until(T, "back end did not stop on a violation", || {
        bt.is_finished()
    });
    bt.join().expect_err("back end must report the violation")
}

// -------------------------------------------------- a back end played by hand

/// dom0 playing a back end by hand: the real handshake keys, then raw rings.
pub struct EvilBack {
    /// dom0's mapping of the tx ring.
    pub tx: SimMapping,
    /// dom0's mapping of the rx ring.
    pub rx: SimMapping,
    /// The channel to the front end.
    pub chan: Channel<SimEvtchn>,
}

impl EvilBack {
    /// The back end's view of the tx ring.
    pub fn tx_ring(&self) -> TxBack<'_> {
        TxBack::attach(self.tx.mem()).expect("attaching the tx ring")
    }

    /// The back end's view of the rx ring.
    pub fn rx_ring(&self) -> RxBack<'_> {
        RxBack::attach(self.rx.mem()).expect("attaching the rx ring")
    }
}

impl EvilBack {
    /// Pushes and publishes `rsps` on `ring` and notifies the front end.
    pub fn answer<Req, Rsp>(
        &self,
        ring: &mut BackRing<xenshare::mem::SharedMem<'_>, Req, Rsp>,
        rsps: &[Rsp],
    ) where
        Req: FromBytes + IntoBytes + Immutable,
        Rsp: FromBytes + IntoBytes + Immutable,
    {
        crate::push_responses(ring, &self.chan, rsps);
    }
}

/// vif 0 with a real netfront and a back end played by hand, connected.
pub fn evil_back(w: &World) -> (EvilBack, Front) {
    let paths = w.create_vif(0);
    let mut c0 = w.xs(&w.dom0);
    BackendFeatures::OURS
        .publish(&mut c0, &paths.back)
        .expect("publishing back end features");
    write_state(&mut c0, &paths.back, XenbusState::InitWait).expect("back end InitWait");
    let (exp, evt, mut xs) = (
        w.guest.exporter().clone(),
        w.guest.evtchn().expect("guest event handle"),
        w.xs(&w.guest),
    );
    let fe = thread::spawn(move || {
        Netfront::connect(&exp, &evt, &mut xs, 0, NetfrontConfig::default(), T)
    });
    wait_for_state(&mut c0, &paths.front, T, |s| s == XenbusState::Connected)
        .expect("the front end connects");
    let keys = FrontendKeys::read(&mut c0, &paths.front).expect("front end keys");
    let map = |r| {
        w.dom0
            .importer()
            .map_rw(w.guest.id(), &[r])
            .expect("mapping a ring")
    };
    let (tx, rx) = (map(keys.tx_ring_ref), map(keys.rx_ring_ref));
    let chan = Channel::bind(
        &w.dom0.evtchn().expect("dom0 event handle"),
        w.guest.id(),
        keys.event_channel,
    )
    .expect("binding the front end's port");
    write_state(&mut c0, &paths.back, XenbusState::Connected).expect("back end Connected");
    let nf = fe
        .join()
        .expect("netfront thread")
        .expect("netfront connects");
    (EvilBack { tx, rx, chan }, nf)
}
