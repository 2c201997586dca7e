//! The block world: a guest sized for 1 MiB requests with vbd [`DEVID`]
//! created, temporary disk images, and each side played by hand against
//! the other real one ([`fake_backend`], [`fake_frontend`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xenshare::blk::{BackConfig, FrontConfig, DEVTYPE};
use xenshare::event::Channel;
use xenshare::ring::{BackRing, FrontRing};
use xenshare::store::xenbus::{
    backend_path, frontend_path, read_state, wait_for_state, write_state, XenbusState,
};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::blkif::{BlkifRequest, BlkifResponse};
use xenshare_devices::blk::{guest_config, BackendThread, BlkWorld, FileStorage, SimFront, SimXs};
use xenshare_sim::{SimEvtchn, SimMapping, SimShare};

pub use crate::{grant_page, Rng, T};

/// The vbd every block test uses (`xvda`).
pub const DEVID: u32 = 51712;

/// A temporary image path, removed on drop.
pub struct TmpImage(pub PathBuf);

impl TmpImage {
    /// A fresh path in the temp directory, tagged `tag`.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!(
            "xenshare-blk-test-{}-{tag}-{n}.img",
            std::process::id()
        )))
    }

    /// Creates the image, `size` bytes of zeros.
    pub fn create(&self, size: u64) -> FileStorage {
        FileStorage::create(&self.0, size).expect("creating the test image")
    }

    /// Opens the image writable.
    pub fn open(&self) -> FileStorage {
        FileStorage::open(&self.0, false).expect("opening the test image")
    }

    /// The image's bytes.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("reading the test image")
    }
}

impl Drop for TmpImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A machine of [`guest_config`] with vbd [`DEVID`] created.
pub fn world() -> BlkWorld {
    let w = BlkWorld::new(guest_config()).expect("booting the emulated machine");
    w.create_vbd(DEVID).expect("creating the vbd");
    w
}

/// Asserts that every grant the guest made is back: none live, none
/// quarantined (the closing check of the block tests). Returns the stats
/// for further checks.
pub fn assert_guest_grants_all_back(w: &BlkWorld) -> xenshare::grant::GrantStats {
    let st = w.guest.exporter().stats();
    assert_eq!((st.live, st.quarantined), (0, 0), "{st:?}");
    st
}

/// A front-end config with a short timeout, for tests that expect failure.
pub fn quick_front() -> FrontConfig {
    FrontConfig {
        timeout: Some(Duration::from_secs(2)),
        ..FrontConfig::new(DEVID)
    }
}

/// The front end's XenStore directory.
pub fn front_dir(w: &BlkWorld) -> String {
    frontend_path(w.guest.id(), DEVTYPE, DEVID)
}

/// The back end's XenStore directory.
pub fn back_dir(w: &BlkWorld) -> String {
    backend_path(w.dom0.id(), DEVTYPE, w.guest.id(), DEVID)
}

fn read_num(xs: &mut SimXs, key: &str) -> u64 {
    let v = xs.read(key).expect("reading a front end key");
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number"))
}

/// A hand-made back end in dom0: handshake done, ring mapped, channel bound.
pub struct FakeBack {
    /// dom0's XenStore client.
    pub xs: SimXs,
    /// dom0's mapping of the ring.
    pub ring: SimMapping,
    /// The channel to the front end.
    pub chan: Channel<SimEvtchn>,
    /// The front end's domain.
    pub front: DomId,
}

/// Publishes a back end's features (`extra` on top of a 4 MiB disk's
/// basics), waits for the front end and connects like a real back end.
pub fn fake_backend(w: &BlkWorld, extra: &[(&str, &str)]) -> FakeBack {
    fake_backend_with_disk(w, extra, DISK_4MIB)
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
    let put = |xs: &mut SimXs, pairs: &[(&str, &str)]| {
        for (k, v) in pairs {
            xs.write(&format!("{dir}/{k}"), v.as_bytes())
                .expect("writing a back end key");
        }
    };
    put(&mut xs, extra);
    write_state(&mut xs, &dir, XenbusState::InitWait).expect("back end InitWait");
    let fdir = front_dir(w);
    wait_for_state(&mut xs, &fdir, T, |s| s == XenbusState::Initialised)
        .expect("the front end initialises");
    let order = xs
        .try_read(&format!("{fdir}/ring-page-order"))
        .expect("reading ring-page-order");
    let refs: Vec<GrantRef> = match order {
        None => vec![GrantRef(
            read_num(&mut xs, &format!("{fdir}/ring-ref")) as u32
        )],
        Some(o) => {
            let o: u32 = std::str::from_utf8(&o)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .expect("ring-page-order is a number");
            (0..1u32 << o)
                .map(|i| GrantRef(read_num(&mut xs, &format!("{fdir}/ring-ref{i}")) as u32))
                .collect()
        }
    };
    let port = Port(read_num(&mut xs, &format!("{fdir}/event-channel")) as u32);
    let ring = w
        .dom0
        .importer()
        .map_rw(w.guest.id(), &refs)
        .expect("mapping the ring");
    let evt = w.dom0.evtchn().expect("dom0 event handle");
    let chan = Channel::bind(&evt, w.guest.id(), port).expect("binding the port");
    put(&mut xs, disk);
    write_state(&mut xs, &dir, XenbusState::Connected).expect("back end Connected");
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
    /// The guest's XenStore client.
    pub xs: SimXs,
    /// The ring page.
    pub ring: SimShare,
    /// The channel to the back end.
    pub chan: Channel<SimEvtchn>,
}

impl FakeFront {
    /// The front end's view of the ring.
    pub fn ring(&self) -> FrontRing<xenshare::mem::SharedMem<'_>, BlkifRequest, BlkifResponse> {
        FrontRing::attach_at(self.ring.mem(), 0).expect("attaching the ring")
    }
}

/// Grants a one-page ring and a port, publishes the front end's keys
/// (`feature-persistent` as `persistent`) and waits until the real back end
/// is Connected.
pub fn fake_frontend(w: &BlkWorld, persistent: bool) -> FakeFront {
    let mut xs = w.client(&w.guest);
    let bdir = back_dir(w);
    wait_for_state(&mut xs, &bdir, T, |s| s == XenbusState::InitWait)
        .expect("the back end reaches InitWait");
    let ring = w
        .guest
        .exporter()
        .share(w.dom0.id(), 1, Access::ReadWrite)
        .expect("granting the ring");
    FrontRing::<_, BlkifRequest, BlkifResponse>::init(ring.mem()).expect("ring init");
    let evt: Arc<SimEvtchn> = w.guest.evtchn().expect("guest event handle");
    let chan = Channel::alloc_unbound(&evt, w.dom0.id()).expect("allocating the port");
    let dir = front_dir(w);
    let ring_ref = ring.refs()[0].0.to_string();
    let port = chan.port().0.to_string();
    let persistent = if persistent { "1" } else { "0" };
    for (k, v) in [
        ("ring-ref", ring_ref.as_str()),
        ("event-channel", port.as_str()),
        ("protocol", "x86_64-abi"),
        ("feature-persistent", persistent),
    ] {
        xs.write(&format!("{dir}/{k}"), v.as_bytes())
            .expect("writing a front end key");
    }
    write_state(&mut xs, &dir, XenbusState::Initialised).expect("front end Initialised");
    wait_for_state(&mut xs, &bdir, T, |s| s == XenbusState::Connected)
        .expect("the back end connects");
    assert_eq!(
        read_state(&mut xs, &bdir).expect("back end state"),
        XenbusState::Connected
    );
    FakeFront { xs, ring, chan }
}

/// The back end's view of a block ring.
pub type BackRingOf<'a> = BackRing<xenshare::mem::SharedMem<'a>, BlkifRequest, BlkifResponse>;
/// The front end's view of a block ring.
pub type FrontRingOf<'a> = FrontRing<xenshare::mem::SharedMem<'a>, BlkifRequest, BlkifResponse>;

/// Connects the real front end (of [`quick_front`]) to a hand-made back
/// end publishing `extra` at InitWait and `disk` at Connected.
pub fn connect_fake_backend(
    w: &BlkWorld,
    extra: &[(&str, &str)],
    disk: &[(&str, &str)],
) -> (SimFront, FakeBack) {
    let mut fe = w.frontend(quick_front()).expect("a front end");
    let fb = std::thread::scope(|s| {
        let t = s.spawn(|| fake_backend_with_disk(w, extra, disk));
        let mut xs = w.client(&w.guest);
        drop(fe.connect(&mut xs).expect("the front end connects"));
        t.join().expect("the fake back end thread")
    });
    (fe, fb)
}

/// A 4 MiB disk's basics, as [`fake_backend`] publishes them.
pub const DISK_4MIB: &[(&str, &str)] =
    &[("sectors", "8192"), ("sector-size", "512"), ("info", "0")];

impl FakeBack {
    /// The back end's view of the ring.
    pub fn ring(&self) -> BackRingOf<'_> {
        BackRing::attach(self.ring.mem()).expect("attaching the ring")
    }

    /// Waits (up to [`T`]) for the front end's next request.
    pub fn next_request(&self, ring: &mut BackRingOf<'_>) -> BlkifRequest {
        crate::wait_on(&self.chan, "no request arrived", || {
            ring.next_request().expect("a valid request ring")
        })
    }

    /// Publishes one response and notifies.
    pub fn respond(&self, ring: &mut BackRingOf<'_>, id: u64, op: u8, status: i16) {
        let rsp = BlkifResponse {
            id,
            operation: op,
            status,
            ..Default::default()
        };
        crate::push_responses(ring, &self.chan, &[rsp]);
    }
}

impl FakeFront {
    /// Pushes and publishes `reqs` on `ring` and notifies the back end.
    pub fn send(&self, ring: &mut FrontRingOf<'_>, reqs: &[BlkifRequest]) {
        crate::push_requests(ring, &self.chan, reqs);
    }

    /// Waits (up to [`T`]) for the real back end's next response.
    pub fn response(&self, ring: &mut FrontRingOf<'_>) -> BlkifResponse {
        crate::wait_on(&self.chan, "the back end stopped answering", || {
            ring.next_response().expect("a valid response ring")
        })
    }
}

/// The size of the image a [`Rig`]'s back end serves (4 MiB).
pub const DISK_BYTES: u64 = 4 << 20;

/// A real back end serving a fresh [`DISK_BYTES`] image for vbd [`DEVID`].
pub fn real_backend(w: &BlkWorld, img: &TmpImage) -> BackendThread<FileStorage> {
    real_backend_sized(w, img, DISK_BYTES)
}

/// A real back end serving a fresh image of `bytes` for vbd [`DEVID`].
pub fn real_backend_sized(w: &BlkWorld, img: &TmpImage, bytes: u64) -> BackendThread<FileStorage> {
    w.spawn_backend(img.create(bytes), BackConfig::new(w.guest.id(), DEVID))
        .expect("starting the back end")
}

/// The real front end for vbd [`DEVID`] (default timeouts), offering
/// persistent grants if `persistent`.
pub fn real_frontend(w: &BlkWorld, persistent: bool) -> SimFront {
    w.frontend(FrontConfig {
        persistent,
        ..FrontConfig::new(DEVID)
    })
    .expect("a front end")
}

/// A real back end over a temporary image and a hand-made front end
/// connected to it: the set-up of every malicious-front-end test.
pub struct Rig {
    /// The machine.
    pub w: BlkWorld,
    /// The image the back end serves.
    pub img: TmpImage,
    /// The real back end.
    pub backend: BackendThread<FileStorage>,
    /// The hand-made front end.
    pub ff: FakeFront,
}

/// Boots a [`Rig`]: image tagged `tag`, the front end offering persistent
/// grants if `persistent`.
pub fn rig(tag: &str, persistent: bool) -> Rig {
    let w = world();
    let img = TmpImage::new(tag);
    let backend = real_backend(&w, &img);
    let ff = fake_frontend(&w, persistent);
    Rig {
        w,
        img,
        backend,
        ff,
    }
}
