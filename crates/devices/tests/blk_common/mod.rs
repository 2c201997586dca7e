//! Shared helpers of the blk tests: temporary images, a PRNG, and hand-made
//! peers that speak just enough of the protocol to misbehave.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xenshare::blk::{FrontConfig, DEVTYPE};
use xenshare::event::Channel;
use xenshare::ring::FrontRing;
use xenshare::store::xenbus::{
    backend_path, frontend_path, read_state, wait_for_state, write_state, XenbusState,
};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::blkif::{BlkifRequest, BlkifResponse};
use xenshare_devices::blk::{guest_config, BlkWorld, FileStorage, SimXs};
use xenshare_sim::{SimEvtchn, SimMapping, SimShare};

pub const DEVID: u32 = 51712;
pub const T: Duration = Duration::from_secs(10);

/// A temporary image path, removed on drop.
pub struct TmpImage(pub PathBuf);

impl TmpImage {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!(
            "xenshare-blk-test-{}-{tag}-{n}.img",
            std::process::id()
        )))
    }
    pub fn create(&self, size: u64) -> FileStorage {
        FileStorage::create(&self.0, size).unwrap()
    }
    pub fn open(&self) -> FileStorage {
        FileStorage::open(&self.0, false).unwrap()
    }
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TmpImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// xorshift64*: deterministic, seedable, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

pub fn world() -> BlkWorld {
    let w = BlkWorld::new(guest_config()).unwrap();
    w.create_vbd(DEVID).unwrap();
    w
}

/// A front-end config with a short timeout, for tests that expect failure.
pub fn quick_front() -> FrontConfig {
    FrontConfig {
        timeout: Some(Duration::from_secs(2)),
        ..FrontConfig::new(DEVID)
    }
}

pub fn front_dir(w: &BlkWorld) -> String {
    frontend_path(w.guest.id(), DEVTYPE, DEVID)
}

pub fn back_dir(w: &BlkWorld) -> String {
    backend_path(w.dom0.id(), DEVTYPE, w.guest.id(), DEVID)
}

fn read_num(xs: &mut SimXs, key: &str) -> u64 {
    let v = xs.read(key).unwrap();
    std::str::from_utf8(&v).unwrap().trim().parse().unwrap()
}

/// A hand-made back end in dom0: handshake done, ring mapped, channel bound.
pub struct FakeBack {
    pub xs: SimXs,
    pub ring: SimMapping,
    pub chan: Channel<SimEvtchn>,
    pub front: DomId,
}

/// Publishes a back end's features (`extra` on top of a 4 MiB disk's
/// basics), waits for the front end and connects like a real back end.
pub fn fake_backend(w: &BlkWorld, extra: &[(&str, &str)]) -> FakeBack {
    fake_backend_with_disk(
        w,
        extra,
        &[("sectors", "8192"), ("sector-size", "512"), ("info", "0")],
    )
}

/// Like [`fake_backend`], publishing `disk` (`sectors`, `sector-size`,
/// `info`, possibly hostile) at connect time.
pub fn fake_backend_with_disk(
    w: &BlkWorld,
    extra: &[(&str, &str)],
    disk: &[(&str, &str)],
) -> FakeBack {
    let mut xs = w.client(&w.dom0);
    let dir = back_dir(w);
    for (k, v) in extra {
        xs.write(&format!("{dir}/{k}"), v.as_bytes()).unwrap();
    }
    write_state(&mut xs, &dir, XenbusState::InitWait).unwrap();
    let fdir = front_dir(w);
    wait_for_state(&mut xs, &fdir, T, |s| s == XenbusState::Initialised).unwrap();
    let refs: Vec<GrantRef> = match xs.try_read(&format!("{fdir}/ring-page-order")).unwrap() {
        None => vec![GrantRef(
            read_num(&mut xs, &format!("{fdir}/ring-ref")) as u32
        )],
        Some(o) => {
            let o: u32 = std::str::from_utf8(&o).unwrap().trim().parse().unwrap();
            (0..1u32 << o)
                .map(|i| GrantRef(read_num(&mut xs, &format!("{fdir}/ring-ref{i}")) as u32))
                .collect()
        }
    };
    let port = Port(read_num(&mut xs, &format!("{fdir}/event-channel")) as u32);
    let ring = w.dom0.importer().map_rw(w.guest.id(), &refs).unwrap();
    let evt = w.dom0.evtchn().unwrap();
    let chan = Channel::bind(&evt, w.guest.id(), port).unwrap();
    for (k, v) in disk {
        xs.write(&format!("{dir}/{k}"), v.as_bytes()).unwrap();
    }
    write_state(&mut xs, &dir, XenbusState::Connected).unwrap();
    FakeBack {
        xs,
        ring,
        chan,
        front: w.guest.id(),
    }
}

/// A hand-made front end in the guest: a one-page ring, connected to a
/// real back end.
pub struct FakeFront {
    pub xs: SimXs,
    pub ring: SimShare,
    pub chan: Channel<SimEvtchn>,
}

impl FakeFront {
    pub fn ring(&self) -> FrontRing<xenshare::mem::SharedMem<'_>, BlkifRequest, BlkifResponse> {
        FrontRing::attach_at(self.ring.mem(), 0).unwrap()
    }
}

pub fn fake_frontend(w: &BlkWorld, persistent: bool) -> FakeFront {
    let mut xs = w.client(&w.guest);
    let bdir = back_dir(w);
    wait_for_state(&mut xs, &bdir, T, |s| s == XenbusState::InitWait).unwrap();
    let ring = w
        .guest
        .exporter()
        .share(w.dom0.id(), 1, Access::ReadWrite)
        .unwrap();
    FrontRing::<_, BlkifRequest, BlkifResponse>::init(ring.mem()).unwrap();
    let evt: Arc<SimEvtchn> = w.guest.evtchn().unwrap();
    let chan = Channel::alloc_unbound(&evt, w.dom0.id()).unwrap();
    let dir = front_dir(w);
    xs.write(
        &format!("{dir}/ring-ref"),
        ring.refs()[0].0.to_string().as_bytes(),
    )
    .unwrap();
    xs.write(
        &format!("{dir}/event-channel"),
        chan.port().0.to_string().as_bytes(),
    )
    .unwrap();
    xs.write(&format!("{dir}/protocol"), b"x86_64-abi").unwrap();
    xs.write(
        &format!("{dir}/feature-persistent"),
        if persistent { b"1" } else { b"0" },
    )
    .unwrap();
    write_state(&mut xs, &dir, XenbusState::Initialised).unwrap();
    wait_for_state(&mut xs, &bdir, T, |s| s == XenbusState::Connected).unwrap();
    assert_eq!(read_state(&mut xs, &bdir).unwrap(), XenbusState::Connected);
    FakeFront { xs, ring, chan }
}
