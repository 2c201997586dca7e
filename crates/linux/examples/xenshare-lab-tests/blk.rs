//! `linux_blkfront_on_xenshare_blkback`: the domU's unmodified
//! `xen-blkfront` on a disk that xenshare's blkback serves from a raw image
//! file in dom0 userspace (gntdev + evtchn + xenbus), over XenStore nodes
//! that xenshare's toolstack helper wrote (`attach_vbd`, under a private
//! back-end type, as `xenshare blkback` does).
//!
//! * dom0 (`blkback DOMID MIB`): creates the image and the device nodes,
//!   serves the disk on a thread, waits for the domU's verdict in
//!   `/local/domain/DOMID/data/blk-result`, stops the back end (the kernel
//!   front end must follow it to Closed), removes the nodes and checks the
//!   image byte for byte against the pattern.
//! * domU (`blk-domu MIB`, `xen-blkfront` loaded beforehand): waits for
//!   `/dev/xvdb`, writes MIB MiB of the pattern with `O_DIRECT` in 1 MiB
//!   `pwrite`s (blkfront splits them into indirect requests), `fsync`s
//!   (a FLUSH_DISKCACHE request), reads everything back with `O_DIRECT`
//!   and compares, then publishes its numbers and blkfront's own report of
//!   the negotiated features.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::blk::{BackConfig, BackExit, BlkBack};
use xenshare::store::xenbus::{read_state, XenbusState};
use xenshare::store::Client;
use xenshare::DomId;
use xenshare_conformance::Context;
use xenshare_devices::blk::{
    attach_vbd, detach_vbd, xvd_devid, FileStorage, VbdAttach, USERSPACE_BACKEND_TYPE,
};
use xenshare_linux::{LinuxPlatform, XenbusTransport};

/// The guest's disk name.
const VDEV: &str = "xvdb";
/// Where dom0 keeps the image.
const IMAGE: &str = "/tmp/xenshare-blk.img";
/// Bytes per `pwrite` / `pread` in the domU.
const CHUNK: usize = 1 << 20;
const MIB: u64 = 1 << 20;

/// The known pattern: every 8-byte word is a hash of its byte offset, so a
/// misplaced, stale or torn sector anywhere shows.
fn fill(buf: &mut [u8], base: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let mut z = (base + 8 * i as u64) ^ 0x5853_4841_5245_424c; // "XSHAREBL"
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// First offset in `got` (at `base`) that differs from the pattern.
fn first_mismatch(got: &[u8], base: u64, scratch: &mut [u8]) -> Option<u64> {
    let want = &mut scratch[..got.len()];
    fill(want, base);
    got.iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .map(|p| base + p as u64)
}

fn mbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-6)
}

fn parse_mib(s: Option<&String>) -> Result<u64, String> {
    crate::parse_size(s, 1..=1024, "MiB")
}

/// A page-aligned buffer of `len` bytes for `O_DIRECT`.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        Self { raw, start, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

fn sysfs(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// blkfront's own lines from the kernel log (its feature report).
fn blkfront_log() -> String {
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open("/dev/kmsg")
    else {
        return "?".into();
    };
    crate::kmsg_lines(&mut kmsg)
        .into_iter()
        .filter(|l| l.contains("blkfront") || l.contains(VDEV))
        .map(|l| {
            let text = l.split_once(';').map_or(l.as_str(), |(_, t)| t);
            text.trim().replace('\n', " ")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The domU side; returns the line it also publishes for dom0.
pub fn domu(args: &[String]) -> Result<String, String> {
    let mib = parse_mib(args.first())?;
    let size = mib * MIB;
    let dev = format!("/dev/{VDEV}");
    let sys = format!("/sys/block/{VDEV}");
    let plat = LinuxPlatform::open().ctx("open")?;
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let result_key = format!("/local/domain/{}/data/blk-result", plat.domid().0);
    let r = domu_io(&dev, &sys, size);
    let line = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    xs.write(&result_key, line.as_bytes())
        .ctx("publish result")?;
    // Stay up (bounded) until dom0 has closed the device and checked that
    // blkfront followed it; powering off at once would remove the front
    // end's XenStore directory under dom0's check.
    let done_key = format!("/local/domain/{}/data/blk-done", plat.domid().0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while xs.try_read(&done_key).ctx("read blk-done")?.is_none() {
        if Instant::now() > deadline {
            return Err(format!("dom0 never wrote {done_key} (after: {line})"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r
}

fn domu_io(dev: &str, sys: &str, size: u64) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(150);
    let t0 = Instant::now();
    while !(std::path::Path::new(sys).exists() && std::path::Path::new(dev).exists()) {
        if Instant::now() > deadline {
            return Err(format!(
                "{dev} did not appear within 150 s (blkfront: {})",
                blkfront_log()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let appeared_ms = t0.elapsed().as_millis();
    let sectors: u64 = sysfs(&format!("{sys}/size"))
        .parse()
        .map_err(|_| format!("{sys}/size is not a number"))?;
    if sectors * 512 < size {
        return Err(format!("{dev} has {sectors} sectors, want {size} bytes"));
    }
    // The node can show up before the disk opens (seen under load: ENXIO
    // while blkfront was still adding the disk): retry until the deadline.
    let f = loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(dev)
        {
            Ok(f) => break f,
            Err(e) if matches!(e.raw_os_error(), Some(6 | 19)) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(format!("open {dev} O_DIRECT: {e}")),
        }
    };
    let opened_ms = t0.elapsed().as_millis();
    // A filesystem on the disk first (the pattern below overwrites it, and
    // dom0 checks the pattern).
    drop(f);
    let fs = filesystem_round_trip(dev)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(dev)
        .ctx(&format!("reopen {dev} O_DIRECT"))?;
    let mut buf = Aligned::new(CHUNK);
    let mut scratch = vec![0u8; CHUNK];
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        let b = buf.get();
        fill(b, off);
        f.write_all_at(b, off).ctx(&format!("write at {off}"))?;
        off += CHUNK as u64;
    }
    f.sync_all().ctx("fsync")?;
    let write = t.elapsed();
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        let b = buf.get();
        b.fill(0);
        f.read_exact_at(b, off).ctx(&format!("read at {off}"))?;
        if let Some(bad) = first_mismatch(b, off, &mut scratch) {
            return Err(format!("read back differs at byte {bad}"));
        }
        off += CHUNK as u64;
    }
    let read = t.elapsed();
    drop(f);
    Ok(format!(
        "disk after {appeared_ms} ms, opened after {opened_ms} ms, {fs}; {} MiB O_DIRECT: write+fsync {:.2} MB/s, read {:.2} MB/s; \
         queue max_segments={} max_hw_sectors_kb={}; kernel: {}",
        size / MIB,
        mbs(size, write),
        mbs(size, read),
        sysfs(&format!("{sys}/queue/max_segments")),
        sysfs(&format!("{sys}/queue/max_hw_sectors_kb")),
        blkfront_log(),
    ))
}

/// Bytes of the file written through the filesystem.
const FS_FILE: usize = 4 << 20;

/// Makes an ext2 filesystem on `dev` with busybox `mke2fs`, mounts it,
/// writes a file, remounts and reads it back. The kernel's ext4 driver
/// mounts ext2; the lab loads it from `/etc/xenlab-fs-modules`.
fn filesystem_round_trip(dev: &str) -> Result<String, String> {
    let run = |prog: &str, args: &[&str]| crate::sh(prog, args).map(drop);
    let mnt = "/mnt/xenshare-blk";
    std::fs::create_dir_all(mnt).ctx("mkdir mount point")?;
    let t = Instant::now();
    // 16 MiB of the disk is plenty for the round trip and keeps mke2fs
    // short under TCG.
    run("mke2fs", &["-q", "-F", dev, "16384"])?;
    let mkfs = t.elapsed();
    run("mount", &["-t", "ext2", dev, mnt])?;
    let file = format!("{mnt}/pattern");
    let mut data = vec![0u8; FS_FILE];
    fill(&mut data, 0x5eed);
    let t = Instant::now();
    std::fs::write(&file, &data).ctx("write the file")?;
    run("sync", &[])?;
    let write = t.elapsed();
    run("umount", &[mnt])?;
    run("mount", &["-t", "ext2", "-o", "ro", dev, mnt])?;
    let back = std::fs::read(&file).ctx("read the file back");
    let _ = run("umount", &[mnt]);
    let back = back?;
    if back != data {
        return Err(format!(
            "the file read back through ext2 differs ({} bytes, first difference at {:?})",
            back.len(),
            back.iter().zip(&data).position(|(a, b)| a != b)
        ));
    }
    Ok(format!(
        "ext2: mke2fs {} ms, {} MiB file written+synced {:.2} MB/s, remounted read-only and checked",
        mkfs.as_millis(),
        FS_FILE >> 20,
        mbs(FS_FILE as u64, write)
    ))
}

/// The dom0 side.
pub fn dom0(args: &[String]) -> Result<String, String> {
    let (fe, plat, mut xs) = crate::dom0_open(args)?;
    let mib = parse_mib(args.get(1))?;
    let r = dom0_test(&plat, &mut xs, fe, mib * MIB);
    // Whatever happened, the domU may power off now.
    let _ = xs.write(&format!("/local/domain/{}/data/blk-done", fe.0), b"1");
    r
}

fn dom0_test(
    plat: &LinuxPlatform,
    xs: &mut Client<XenbusTransport>,
    fe: DomId,
    size: u64,
) -> Result<String, String> {
    let result_key = format!("/local/domain/{}/data/blk-result", fe.0);
    let storage = FileStorage::create(std::path::Path::new(IMAGE), size).ctx("create the image")?;
    let paths = attach_vbd(
        xs,
        &VbdAttach {
            frontend: fe,
            backend: plat.domid(),
            vdev: VDEV,
            backend_type: USERSPACE_BACKEND_TYPE,
            params: IMAGE,
            read_only: false,
        },
    )
    .ctx("attach_vbd")?;
    let devid = xvd_devid(VDEV).ctx("devid")?;
    let cfg = BackConfig {
        backend_type: USERSPACE_BACKEND_TYPE,
        timeout: Some(Duration::from_secs(150)),
        ..BackConfig::new(fe, devid)
    };
    let mut back = BlkBack::new(
        plat.importer().ctx("importer")?,
        Arc::new(plat.evtchn().ctx("evtchn")?),
        storage,
        cfg,
    );
    let mut bxs = plat.xenstore().ctx("xenstore for the back end")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t0 = Instant::now();
    let thread = std::thread::spawn(move || {
        let mut runs = Vec::new();
        loop {
            let r = back.run(&mut bxs, &flag);
            let again = matches!(r, Ok(BackExit::FrontendClosed));
            runs.push(r.map_err(|e| e.to_string()));
            if !again || flag.load(Ordering::Relaxed) {
                break;
            }
        }
        (back, runs)
    });
    // The domU's verdict, bounded; a back end that ended early is a failure.
    let deadline = Instant::now() + Duration::from_secs(200);
    let verdict = loop {
        if let Some(v) = xs.try_read(&result_key).ctx("read result")? {
            break String::from_utf8_lossy(&v).into_owned();
        }
        if thread.is_finished() {
            break "fail the back end ended before the domU's verdict".into();
        }
        if Instant::now() > deadline {
            break "fail no verdict from the domU within 200 s".into();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let served_s = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let join_deadline = Instant::now() + Duration::from_secs(20);
    while !thread.is_finished() {
        if Instant::now() > join_deadline {
            return Err(format!(
                "back end did not stop within 20 s (domU: {verdict})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (back, runs) = thread
        .join()
        .map_err(|_| "back-end thread panicked".to_string())?;
    // Linux's blkfront follows a back end that goes Closing to Closed.
    let closed_deadline = Instant::now() + Duration::from_secs(20);
    let front_state = loop {
        let s = read_state(xs, &paths.front).ctx("front state")?;
        if s == XenbusState::Closed || Instant::now() > closed_deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = detach_vbd(xs, &paths);
    let stats = back.stats();
    let detail = verdict
        .strip_prefix("ok ")
        .ok_or_else(|| format!("domU: {verdict}; back end: {runs:?}, {stats:?}"))?
        .to_string();
    if let Some(Err(e)) = runs.iter().find(|r| r.is_err()) {
        return Err(format!("back end: {e} (runs {runs:?})"));
    }
    if stats.connections != 1 {
        return Err(format!("{} connections, want 1", stats.connections));
    }
    if front_state != XenbusState::Closed {
        return Err(format!(
            "blkfront is {front_state:?}, not Closed, 20 s after the back end closed"
        ));
    }
    // The image, byte for byte.
    let storage = back.into_storage();
    let mut buf = vec![0u8; CHUNK];
    let mut scratch = vec![0u8; CHUNK];
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        storage
            .file()
            .read_exact_at(&mut buf, off)
            .ctx(&format!("read image at {off}"))?;
        if let Some(bad) = first_mismatch(&buf, off, &mut scratch) {
            return Err(format!("image differs from the pattern at byte {bad}"));
        }
        off += CHUNK as u64;
    }
    let check_ms = t.elapsed().as_millis();
    if stats.failed != 0 {
        return Err(format!("{} requests failed: {stats:?}", stats.failed));
    }
    // What the lab asks blkfront for (BLKFRONT_PARAMS in scripts/xen-lab)
    // must be what was negotiated and used.
    if stats.indirect == 0 {
        return Err(format!("blkfront sent no indirect request: {stats:?}"));
    }
    if !stats.persistent {
        return Err(format!("persistent grants were not negotiated: {stats:?}"));
    }
    if stats.ring_pages < 2 {
        return Err(format!("no multi-page ring: {stats:?}"));
    }
    if stats.flushes == 0 || detail.contains("flush op failed") {
        return Err(format!("flush did not work: {stats:?}; domU: {detail}"));
    }
    Ok(format!(
        "negotiated: persistent grants {}, indirect descriptors (offered {}, used {} requests, \
         up to {} segments), ring {} page(s), flush ({} requests); {} requests ok; \
         image {} MiB checked byte for byte in dom0 ({check_ms} ms); served {served_s:.1} s; \
         blkfront closed with the back end; domU: {detail}",
        if stats.persistent { "on" } else { "off" },
        BackConfig::new(DomId(0), 0).max_indirect_segments,
        stats.indirect,
        stats.max_segments,
        stats.ring_pages,
        stats.flushes,
        stats.ok,
        size / MIB,
    ))
}
