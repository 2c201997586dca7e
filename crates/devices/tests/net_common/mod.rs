//! Shared set-up of the net tests: an emulated hypervisor with dom0 (the
//! back end) and one guest (the front end), an in-process xenstored with the
//! guest's home directory, and helpers for the toolstack's part of a vif.

#![allow(dead_code)]

use std::time::Duration;

use xenshare::net::xenbus::DEVTYPE;
use xenshare::net::{Netfront, NetfrontConfig};
use xenshare::store::client::Client;
use xenshare::store::perms::{PermKind, Perms};
use xenshare::store::xenbus::{create_device, DevicePaths, DeviceSpec};
use xenshare::DomId;
use xenshare_devices::net::host::{mem_link, HostPort};
use xenshare_devices::net::run::{spawn_backend, BackendThread};
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn, SimGrantBackend};
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
