//! Shared set-up of the net tests: an emulated hypervisor with dom0 (the
//! back end) and one guest (the front end), an in-process xenstored with the
//! guest's home directory, and helpers for the toolstack's part of a vif.

#![allow(dead_code)]

use std::thread;
use std::time::{Duration, Instant};

use xenshare::event::Channel;
use xenshare::net::xenbus::DEVTYPE;
use xenshare::net::xenbus::{BackendFeatures, FrontendKeys};
use xenshare::net::{NetError, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use xenshare::net::{Netfront, NetfrontConfig};
use xenshare::platform::EventChannels;
use xenshare::ring::FrontRing;
use xenshare::store::client::Client;
use xenshare::store::perms::{PermKind, Perms};
use xenshare::store::xenbus::{create_device, DevicePaths, DeviceSpec};
use xenshare::store::xenbus::{wait_for_state, write_state, XenbusState};
use xenshare::{Access, DomId, GrantRef};
use xenshare_devices::net::host::{mem_link, HostPort};
use xenshare_devices::net::run::{spawn_backend, BackendThread};
use xenshare_sim::{
    Domain, DomainConfig, Hypervisor, SimEvtchn, SimGrantBackend, SimMapping, SimShare,
};
use xenshare_xenstored::inproc::{self, InProcTransport};
use xenshare_xenstored::{Config, Daemon};

/// A netfront of the emulated guest.
pub type Front = Netfront<SimGrantBackend, SimEvtchn>;

/// How long handshakes and frames may take before a test calls it a hang.
pub const T: Duration = Duration::from_secs(10);

/// The MAC the toolstack gives the guest.
pub const MAC: &str = "00:16:3e:00:00:2a";

pub struct World {
    pub hv: Hypervisor,
    pub dom0: Domain,
    pub guest: Domain,
    pub xs: Daemon,
}

pub fn world() -> World {
    world_with(DomainConfig {
        mem_pages: 4096,
        ..Default::default()
    })
}

/// A world whose guest is configured by `guest_cfg` (dom0 gets the default).
#[allow(dead_code)] // not every test binary uses every helper
pub fn world_with(guest_cfg: DomainConfig) -> World {
    let hv = Hypervisor::new();
    let cfg = DomainConfig {
        mem_pages: 4096,
        ..Default::default()
    };
    let dom0 = hv.create_domain_with_id(DomId(0), cfg).unwrap();
    let guest = hv.create_domain(guest_cfg).unwrap();
    let xs = Daemon::new(Config::default());
    let mut c0 = inproc::client(&xs, DomId(0));
    let home = format!("/local/domain/{}", guest.id().0);
    c0.mkdir(&home).unwrap();
    c0.set_perms(&home, &Perms::owned_by(guest.id(), PermKind::None))
        .unwrap();
    World {
        hv,
        dom0,
        guest,
        xs,
    }
}

impl World {
    pub fn xs(&self, d: &Domain) -> Client<InProcTransport> {
        inproc::client(&self.xs, d.id())
    }

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
        .unwrap()
    }

    /// A back end thread for vif `devid`, bridged to an in-memory host.
    pub fn backend(&self, devid: u32) -> (BackendThread, HostPort) {
        let (io, port) = mem_link(4096);
        let bt = spawn_backend(
            self.dom0.importer().clone(),
            self.dom0.evtchn().unwrap(),
            self.xs(&self.dom0),
            self.guest.id(),
            devid,
            io,
            T,
        );
        (bt, port)
    }

    /// The guest's netfront for vif `devid` (the back end must be coming up).
    pub fn netfront(&self, devid: u32) -> Front {
        Netfront::connect(
            self.guest.exporter(),
            &self.guest.evtchn().unwrap(),
            &mut self.xs(&self.guest),
            devid,
            NetfrontConfig::default(),
            T,
        )
        .unwrap()
    }
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

// ------------------------------------------------- a front end played by hand

pub type TxFront<'a> = FrontRing<xenshare::mem::SharedMem<'a>, NetifTxRequest, NetifTxResponse>;
pub type RxFront<'a> = FrontRing<xenshare::mem::SharedMem<'a>, NetifRxRequest, NetifRxResponse>;

/// The guest playing a front end by hand against the real back end.
pub struct EvilFront {
    pub tx: SimShare,
    pub rx: SimShare,
    pub chan: Channel<SimEvtchn>,
}

pub fn evil_front(w: &World) -> (EvilFront, BackendThread, HostPort) {
    let paths = w.create_vif(0);
    let (bt, host) = w.backend(0);
    let ef = evil_front_keys(w, &paths, &[]);
    let mut c = w.xs(&w.guest);
    wait_for_state(&mut c, &paths.back, T, |s| s == XenbusState::Connected).unwrap();
    (ef, bt, host)
}

/// The hand-made front end's half of the handshake: waits for the back
/// end's InitWait, grants and initialises both rings, publishes the honest
/// keys with `over` replacing (or adding to) them, and goes Connected.
pub fn evil_front_keys(w: &World, paths: &DevicePaths, over: &[(&str, &str)]) -> EvilFront {
    let mut c = w.xs(&w.guest);
    wait_for_state(&mut c, &paths.back, T, |s| s == XenbusState::InitWait).unwrap();
    let share = || {
        w.guest
            .exporter()
            .share(w.dom0.id(), 1, Access::ReadWrite)
            .unwrap()
    };
    let (tx, rx) = (share(), share());
    TxFront::init(tx.mem()).unwrap();
    RxFront::init(rx.mem()).unwrap();
    let chan = Channel::alloc_unbound(&w.guest.evtchn().unwrap(), w.dom0.id()).unwrap();
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
    .unwrap();
    for (k, v) in over {
        c.write(&format!("{}/{k}", paths.front), v.as_bytes())
            .unwrap();
    }
    write_state(&mut c, &paths.front, XenbusState::Connected).unwrap();
    EvilFront { tx, rx, chan }
}

pub fn data_page(w: &World, data: &[u8]) -> SimShare {
    let s = w
        .guest
        .exporter()
        .share(w.dom0.id(), 1, Access::ReadOnly)
        .unwrap();
    s.mem().write(0, data).unwrap();
    s
}

/// Waits for the next tx response on an evil front end's ring.
pub fn tx_response(ring: &mut TxFront<'_>, chan: &Channel<SimEvtchn>) -> NetifTxResponse {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = ring.next_response().unwrap() {
            return r;
        }
        assert!(Instant::now() < deadline, "back end never answered");
        if let Some(p) = chan.wait(Some(Duration::from_millis(50))).unwrap() {
            chan.handle().unmask(p).unwrap();
        }
    }
}

/// The back end thread must end by itself with a protocol error.
pub fn expect_backend_error(bt: BackendThread) -> NetError {
    let deadline = Instant::now() + T;
    while !bt.is_finished() {
        assert!(
            Instant::now() < deadline,
            "back end did not stop on a violation"
        );
        thread::sleep(Duration::from_millis(10));
    }
    bt.join().expect_err("back end must report the violation")
}

pub fn tx_req(gref: GrantRef, offset: u16, flags: u16, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref: gref.0,
        offset,
        flags,
        id,
        size,
    }
}

// -------------------------------------------------- a back end played by hand

/// dom0 playing a back end by hand: the real handshake keys, then raw rings.
pub struct EvilBack {
    pub tx: SimMapping,
    pub rx: SimMapping,
    pub chan: Channel<SimEvtchn>,
}

pub fn evil_back(w: &World) -> (EvilBack, Front) {
    let paths = w.create_vif(0);
    let mut c0 = w.xs(&w.dom0);
    BackendFeatures::OURS.publish(&mut c0, &paths.back).unwrap();
    write_state(&mut c0, &paths.back, XenbusState::InitWait).unwrap();
    let (exp, evt, mut xs) = (
        w.guest.exporter().clone(),
        w.guest.evtchn().unwrap(),
        w.xs(&w.guest),
    );
    let fe = thread::spawn(move || {
        Netfront::connect(&exp, &evt, &mut xs, 0, NetfrontConfig::default(), T)
    });
    wait_for_state(&mut c0, &paths.front, T, |s| s == XenbusState::Connected).unwrap();
    let keys = FrontendKeys::read(&mut c0, &paths.front).unwrap();
    let map = |r| w.dom0.importer().map_rw(w.guest.id(), &[r]).unwrap();
    let (tx, rx) = (map(keys.tx_ring_ref), map(keys.rx_ring_ref));
    let chan = Channel::bind(&w.dom0.evtchn().unwrap(), w.guest.id(), keys.event_channel).unwrap();
    write_state(&mut c0, &paths.back, XenbusState::Connected).unwrap();
    let nf = fe.join().unwrap().unwrap();
    (EvilBack { tx, rx, chan }, nf)
}
