//! `xenshare blkback`: serve a raw image file to a guest's Linux
//! `xen-blkfront` from dom0 userspace, on real Xen — a userspace
//! alternative to the kernel's `xen-blkback` (as QEMU's `qdisk` is).
//!
//! It does the toolstack's part itself ([`attach_vbd`]: both XenStore
//! directories, under a private back-end type so the kernel's blkback
//! leaves the device alone), then serves connections with xenshare's
//! blkback over `/dev/xen/gntdev`, `/dev/xen/evtchn` and `/dev/xen/xenbus`
//! until the front end closes (`--once`), the toolstack detaches it
//! (back-end `online` = 0), or the guest goes away; then it removes both
//! directories. The lab test `linux_blkfront_on_xenshare_blkback` runs the
//! same code inside a real Xen dom0.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xenshare::blk::{BackConfig, BackExit, BlkBack};
use xenshare::store::client::Client;
use xenshare::DomId;
use xenshare_devices::blk::{
    attach_vbd, detach_vbd, xvd_devid, FileStorage, VbdAttach, USERSPACE_BACKEND_TYPE,
};
use xenshare_linux::LinuxPlatform;

/// Options of `xenshare blkback`.
#[derive(Debug, clap::Args)]
pub struct BlkbackArgs {
    /// The guest that gets the disk.
    #[arg(long, value_name = "N")]
    pub domid: u16,
    /// The raw image file to serve (its size, rounded down to 512 bytes, is
    /// the disk's).
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// The guest's device name.
    #[arg(long, default_value = "xvdb", value_name = "NAME")]
    pub vdev: String,
    /// Offer the disk read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Stop after the first connection ends.
    #[arg(long)]
    pub once: bool,
    /// Only remove the device's XenStore directories (left behind by a
    /// killed `xenshare blkback`), then exit.
    #[arg(long)]
    pub detach: bool,
}

/// How often the watcher looks at `online` and at the guest.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Attaches and serves the disk.
pub fn run(a: BlkbackArgs) -> Result<(), String> {
    let plat = LinuxPlatform::open().map_err(|e| e.to_string())?;
    let mut xs = plat.xenstore().map_err(|e| e.to_string())?;
    let fe = DomId(a.domid);
    let devid = xvd_devid(&a.vdev)
        .ok_or_else(|| format!("--vdev {:?}: not a whole-disk xvd name", a.vdev))?;
    let image = a.image.display().to_string();
    let spec = VbdAttach {
        frontend: fe,
        backend: plat.domid(),
        vdev: &a.vdev,
        backend_type: USERSPACE_BACKEND_TYPE,
        params: &image,
        read_only: a.read_only,
    };
    if a.detach {
        let paths = xenshare::store::xenbus::DevicePaths {
            front: xenshare::store::xenbus::frontend_path(fe, xenshare::blk::DEVTYPE, devid),
            back: xenshare::store::xenbus::backend_path(
                plat.domid(),
                USERSPACE_BACKEND_TYPE,
                fe,
                devid,
            ),
        };
        detach_vbd(&mut xs, &paths).map_err(|e| e.to_string())?;
        println!("removed {} and {}", paths.back, paths.front);
        return Ok(());
    }
    if xs
        .try_read(&format!("/local/domain/{}", fe.0))
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("domain {} does not exist", fe.0));
    }
    let storage = FileStorage::open(&a.image, a.read_only)
        .map_err(|e| format!("{}: {e}", a.image.display()))?;
    let size = xenshare::blk::BlockStorage::size(&storage);
    let paths = attach_vbd(&mut xs, &spec).map_err(|e| e.to_string())?;
    println!(
        "xenshare blkback: {} ({} MiB{}) as d{}'s {} ({}), back end {}",
        image,
        size >> 20,
        if a.read_only { ", read-only" } else { "" },
        fe.0,
        a.vdev,
        devid,
        paths.back
    );
    let cfg = BackConfig {
        backend_type: USERSPACE_BACKEND_TYPE,
        ..BackConfig::new(fe, devid)
    };
    let importer = plat.importer().map_err(|e| e.to_string())?;
    let evt = Arc::new(plat.evtchn().map_err(|e| e.to_string())?);
    let mut back = BlkBack::new(importer, evt, storage, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let mut wxs = plat.xenstore().map_err(|e| e.to_string())?;
        let online = format!("{}/online", paths.back);
        let guest = format!("/local/domain/{}", fe.0);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let detached =
                    !matches!(wxs.try_read(&online), Ok(Some(v)) if v.first() != Some(&b'0'));
                let gone = matches!(wxs.try_read(&guest), Ok(None));
                if detached || gone {
                    println!(
                        "xenshare blkback: {}",
                        if gone {
                            "the guest is gone"
                        } else {
                            "detached by the toolstack"
                        }
                    );
                    stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(WATCH_EVERY);
            }
        })
    };
    let mut bxs = Client::new(xenshare_linux::XenbusTransport::open().map_err(|e| e.to_string())?);
    let result = loop {
        let r = back.run(&mut bxs, &stop);
        let s = back.stats();
        match r {
            Ok(BackExit::FrontendClosed) => {
                println!(
                    "xenshare blkback: front end closed: {} requests ok, {} failed, {} indirect, \
                     ring {} page(s), persistent grants {}",
                    s.ok,
                    s.failed,
                    s.indirect,
                    s.ring_pages,
                    if s.persistent { "on" } else { "off" }
                );
                if a.once || stop.load(Ordering::Relaxed) {
                    break Ok(());
                }
            }
            Ok(BackExit::Stopped) => break Ok(()),
            Err(e) => break Err(format!("connection failed: {e}")),
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    detach_vbd(&mut xs, &paths).map_err(|e| e.to_string())?;
    result
}
