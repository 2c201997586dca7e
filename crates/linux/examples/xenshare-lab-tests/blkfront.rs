//! `xenshare_blkfront_on_linux_blkback`: xenshare's block front end, as a
//! userspace program in the domU (gntalloc + evtchn + `/dev/xen/xenbus`),
//! on dom0's kernel `xen-blkback` serving a loop device. The domU's own
//! `xen-blkfront` is not loaded while this runs (the lab loads it later).
//!
//! * dom0 (`xsblk DOMID MIB`, `xen-blkback` and `loop` loaded): makes a
//!   MIB MiB image in tmpfs, puts it on `/dev/loop0`, writes the vbd's
//!   back-end and front-end nodes as `xl block-attach` would (one
//!   transaction, under `backend/vbd` so that blkback claims it), then, once
//!   blkback is in InitWait, the hotplug script's part: `physical-device`
//!   (hex `major:minor`) and `hotplug-status`. It waits for the domU's
//!   verdict in `/local/domain/DOMID/data/xsblk-result`, checks that
//!   blkback followed the front end to Closed, removes the nodes, and
//!   hashes the image to compare it with the domU's model.
//! * domU (`xsblk-domu`): connects xenshare's blkfront, writes the whole
//!   disk sequentially and reads it back (MB/s), then does random reads,
//!   writes, flushes and discards of 512 B .. 4 MiB checked against an
//!   in-memory model (IOPS), closes, and checks that every grant went back
//!   to the kernel (gntalloc: `Revoked::Retired`, none quarantined).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::blk::{BlkFront, FrontConfig, DEVTYPE};
use xenshare::store::xenbus::{read_state, XenbusState};
use xenshare::store::{Client, Transport};
use xenshare::DomId;
use xenshare_conformance::Context;
use xenshare_devices::blk::{attach_vbd, detach_vbd, xvd_devid, VbdAttach};
use xenshare_linux::{LinuxPlatform, XenbusTransport};

/// The guest's disk: not `xvdb` (the Linux front-end test's disk).
const VDEV: &str = "xvdc";
/// dom0's image (tmpfs) and the loop device blkback is given.
const IMAGE: &str = "/tmp/xenshare-blkfront.img";
const LOOP: &str = "/dev/loop0";
const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// Random operations after the sequential pass (fewer if time runs out).
const RANDOM_OPS: u32 = 150;
/// Wall-clock budget of the random phase (TCG is slow; the lab is bounded).
const RANDOM_BUDGET: Duration = Duration::from_secs(12);
/// Requests of the queue-depth-8 phase, and its budget.
const BURST_OPS: u32 = 160;
const BURST_BUDGET: Duration = Duration::from_secs(6);

/// A 64-bit hash of `data` (8-byte words, tail zero-padded): the same
/// function on both sides compares the domU's model with dom0's image.
fn hash_into(mut h: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// [`hash_into`] from the start: what the lab compares across domains.
pub fn hash(data: &[u8]) -> u64 {
    hash_into(HASH_SEED, data)
}

/// xorshift64*: deterministic, seedable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn mbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-6)
}

fn result_key(fe: DomId) -> String {
    format!("/local/domain/{}/data/xsblk-result", fe.0)
}

/// The domU side; its verdict goes to dom0 through XenStore.
pub fn domu() -> Result<String, String> {
    let plat = LinuxPlatform::open().ctx("open")?;
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let devid = xvd_devid(VDEV).ctx("devid")?;
    let dir = format!("/local/domain/{}/device/{DEVTYPE}/{devid}", plat.domid().0);
    let r = domu_run(&plat, &mut xs, devid, &dir);
    let line = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    xs.write(&result_key(plat.domid()), line.as_bytes())
        .ctx("publish result")?;
    // The lab loads the kernel's xen-blkfront next, which must not find it.
    let sys = format!("/sys/bus/xen/devices/vbd-{devid}");
    crate::wait_device_gone(&mut xs, &dir, &sys, &line)?;
    r.map(|s| s.split(" hash=").next().unwrap_or_default().to_string())
}

fn domu_run(
    plat: &LinuxPlatform,
    xs: &mut Client<XenbusTransport>,
    devid: u32,
    dir: &str,
) -> Result<String, String> {
    // dom0 creates the device when its turn comes.
    crate::wait_device_created(xs, dir, 150)?;
    let exporter = plat.exporter().ctx("exporter")?;
    let evt = Arc::new(plat.evtchn().ctx("evtchn")?);
    let cfg = FrontConfig {
        ring_order: 2,
        // gntalloc's default limit is 1024 pages for the whole domain.
        max_persistent_pages: 512,
        timeout: Some(Duration::from_secs(60)),
        ..FrontConfig::new(devid)
    };
    let mut front = BlkFront::new(exporter.clone(), evt, cfg);
    let tc = Instant::now();
    let mut disk = front.connect(xs).ctx("connect")?;
    let connect_ms = tc.elapsed().as_millis();
    let info = *disk.info();
    let size = info.size_bytes();
    // The model lives in the domU's 256 MiB.
    if !(4 * MIB..=128 * MIB).contains(&size) {
        return Err(format!("disk of {size} bytes: want 4 ..= 128 MiB"));
    }
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng(0x5853_4841_5245_0b1c ^ size);

    // Sequential: the whole disk written in 1 MiB calls, flushed, read back.
    let chunk = MIB as usize;
    let mut buf = vec![0u8; 4 * MIB as usize];
    rng.fill(&mut model);
    let t = Instant::now();
    for (i, c) in model.chunks(chunk).enumerate() {
        disk.write_at((i * chunk) as u64, c)
            .ctx(&format!("sequential write at {}", i * chunk))?;
    }
    disk.flush().ctx("flush after the sequential write")?;
    let seq_write = t.elapsed();
    let t = Instant::now();
    for (i, c) in model.chunks(chunk).enumerate() {
        let off = (i * chunk) as u64;
        let b = &mut buf[..c.len()];
        disk.read_at(off, b)
            .ctx(&format!("sequential read at {off}"))?;
        if let Some(p) = b.iter().zip(c).position(|(a, b)| a != b) {
            return Err(format!(
                "sequential read back differs at byte {}",
                off + p as u64
            ));
        }
    }
    let seq_read = t.elapsed();

    // Random: reads and writes of 512 B .. 4 MiB at any sector, flushes,
    // discards; every read checked against the model.
    let (mut reads, mut writes, mut flushes, mut discards) = (0u32, 0u32, 0u32, 0u32);
    let (mut indirect_ops, mut bytes) = (0u32, 0u64);
    let t = Instant::now();
    let mut ops = 0;
    while ops < RANDOM_OPS && t.elapsed() < RANDOM_BUDGET {
        ops += 1;
        let class = rng.below(100);
        let max_sectors = match class {
            0..=39 => 8,
            40..=69 => 88,
            70..=94 => 2048,
            _ => 8192,
        };
        let sectors = 1 + rng.below(max_sectors);
        let len = (sectors * SECTOR).min(size);
        let off = rng.below((size - len) / SECTOR + 1) * SECTOR;
        let range = off as usize..(off + len) as usize;
        if len > 11 * 4096 && info.max_segments > 11 {
            indirect_ops += 1;
        }
        match rng.below(20) {
            0 if info.features.flush || info.features.barrier => {
                disk.flush().ctx("flush")?;
                flushes += 1;
            }
            1 if info.features.discard => {
                // Whole granules only, so that the range really is freed.
                let g = info.features.discard_granularity.max(SECTOR);
                let start = off.div_ceil(g) * g;
                let end = (off + len) / g * g;
                if end > start {
                    disk.discard(start, end - start)
                        .ctx(&format!("discard {start}+{}", end - start))?;
                    model[start as usize..end as usize].fill(0);
                    discards += 1;
                }
            }
            2..=10 => {
                rng.fill(&mut model[range.clone()]);
                disk.write_at(off, &model[range])
                    .ctx(&format!("write {off}+{len}"))?;
                writes += 1;
                bytes += len;
            }
            _ => {
                let b = &mut buf[..len as usize];
                disk.read_at(off, b).ctx(&format!("read {off}+{len}"))?;
                if let Some(p) = b.iter().zip(&model[range]).position(|(a, b)| a != b) {
                    return Err(format!(
                        "random read {off}+{len} differs from the model at byte {} \
                         (after {writes} writes, {discards} discards)",
                        off + p as u64
                    ));
                }
                reads += 1;
                bytes += len;
            }
        }
    }
    if info.features.flush || info.features.barrier {
        disk.flush().ctx("final flush")?;
        flushes += 1;
    }
    let random = t.elapsed();

    // Queue depth 8: bursts of reads and writes submitted together, one per
    // eighth of the disk (so none overlaps another in flight), completed in
    // whatever order blkback answers; reads checked against the model.
    let stripe = size / 8;
    let (mut burst_ops, mut burst_bytes, mut reordered) = (0u32, 0u64, 0u32);
    let t = Instant::now();
    while t.elapsed() < BURST_BUDGET && burst_ops < BURST_OPS {
        let mut pending = std::collections::BTreeMap::new();
        for k in 0..8u64 {
            let len = (1 + rng.below(256)) * SECTOR; // up to 128 KiB
            let off = k * stripe + rng.below((stripe - len) / SECTOR + 1) * SECTOR;
            let range = off as usize..(off + len) as usize;
            let tag = if rng.below(2) == 0 {
                rng.fill(&mut model[range.clone()]);
                disk.submit_write(off, &model[range.clone()])
                    .ctx(&format!("submit write {off}+{len}"))?
            } else {
                disk.submit_read(off, len as usize)
                    .ctx(&format!("submit read {off}+{len}"))?
            };
            pending.insert(tag, range);
            burst_bytes += len;
        }
        let first = pending.keys().next().copied();
        let mut n = 0;
        while let Some(c) = disk.wait().ctx("wait")? {
            if n == 0 && Some(c.tag) != first {
                reordered += 1;
            }
            n += 1;
            let range = pending
                .remove(&c.tag)
                .ok_or("a completion for no request")?;
            c.result.ctx(&format!("burst request at {}", range.start))?;
            if !c.data.is_empty() && c.data[..] != model[range.clone()] {
                return Err(format!(
                    "burst read at {} differs from the model",
                    range.start
                ));
            }
        }
        if !pending.is_empty() {
            return Err(format!("{} burst requests never completed", pending.len()));
        }
        burst_ops += 8;
    }
    let burst = t.elapsed();
    if info.features.flush || info.features.barrier {
        disk.flush().ctx("flush after the bursts")?;
        flushes += 1;
    }
    let pool = disk.pool_pages();
    let tc = Instant::now();
    disk.close(xs).ctx("close")?;
    let close_ms = tc.elapsed().as_millis();
    let rel = front.release();
    drop(front);
    let st = exporter.stats();
    if st.live != 0 || st.quarantined != 0 || rel.quarantined != 0 {
        return Err(format!("grants left behind after close: {st:?}, {rel:?}"));
    }
    if st.retired == 0 || st.retired != st.revoked {
        return Err(format!(
            "gntalloc revocations should all be Retired: {st:?}"
        ));
    }
    let f = info.features;
    let hash = hash(&model);
    Ok(format!(
        "negotiated: ring {} page(s) ({} slots), persistent grants {} (pool {pool} pages), \
         indirect {} (offered {}, {} segments per request, {indirect_ops} indirect-sized ops), \
         flush-cache {}, barrier {}, discard {} (granularity {}); disk {} MiB, sector {}; \
         connect {connect_ms} ms; sequential {} MiB write+flush {:.2} MB/s, read {:.2} MB/s; \
         random {ops} ops ({reads} reads, {writes} writes, {flushes} flushes, {discards} discards) \
         {:.1} IOPS, {:.2} MB/s, all reads matched the model; queue depth 8: {burst_ops} \
         requests {:.1} IOPS, {:.2} MB/s ({reordered} bursts answered out of order); \
         close {close_ms} ms; \
         grants: {} granted, {} revoked, {} retired, 0 quarantined, 0 live hash={hash:016x}",
        1u32 << info.ring_order,
        info.ring_size,
        if info.persistent { "on" } else { "off" },
        if info.max_segments > 11 { "on" } else { "off" },
        f.max_indirect_segments,
        info.max_segments,
        on(f.flush),
        on(f.barrier),
        on(f.discard),
        f.discard_granularity,
        size / MIB,
        info.sector_size,
        size / MIB,
        mbs(size, seq_write),
        mbs(size, seq_read),
        f64::from(ops) / random.as_secs_f64().max(1e-6),
        mbs(bytes, random),
        f64::from(burst_ops) / burst.as_secs_f64().max(1e-6),
        mbs(burst_bytes, burst),
        st.granted,
        st.revoked,
        st.retired,
    ))
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The error text Linux's xenbus left for a device, if any.
fn xenbus_error<T: Transport>(xs: &mut Client<T>, path: &str) -> String {
    match xs.try_read(&format!("/local/domain/0/error/{path}/error")) {
        Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
        _ => String::from("none"),
    }
}

/// The dom0 side.
pub fn dom0(args: &[String]) -> Result<String, String> {
    let (fe, plat, mut xs) = crate::dom0_open(args)?;
    let mib = crate::parse_size(args.get(1), 4..=128, "MiB")?;
    let file = std::fs::File::create(IMAGE).ctx("create the image")?;
    file.set_len(mib * MIB).ctx("size the image")?;
    drop(file);
    crate::c_tool("losetup", &[LOOP, IMAGE])?;
    let r = dom0_test(&plat, &mut xs, fe, mib);
    let _ = crate::c_tool("losetup", &["-d", LOOP]);
    let _ = std::fs::remove_file(IMAGE);
    r
}

fn dom0_test(
    plat: &LinuxPlatform,
    xs: &mut Client<XenbusTransport>,
    fe: DomId,
    mib: u64,
) -> Result<String, String> {
    let rdev = std::fs::metadata(LOOP).ctx("stat the loop device")?.rdev();
    // glibc's encoding of dev_t.
    let major = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32;
    let minor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32;
    let t0 = Instant::now();
    let paths = attach_vbd(
        xs,
        &VbdAttach {
            frontend: fe,
            backend: plat.domid(),
            vdev: VDEV,
            backend_type: DEVTYPE,
            params: LOOP,
            read_only: false,
        },
    )
    .ctx("attach_vbd")?;
    let r = dom0_serve(xs, fe, &paths.back, major, minor, t0);
    // What `xl block-detach` does last: both directories go.
    let _ = detach_vbd(xs, &paths);
    let (detail, back_closed_ms) = r?;
    // The image against the domU's model.
    let want = detail
        .rsplit_once(" hash=")
        .map(|(_, h)| h.trim().to_string())
        .ok_or("the domU's verdict has no hash")?;
    let t = Instant::now();
    let f = std::fs::File::open(IMAGE).ctx("open the image")?;
    let mut buf = vec![0u8; MIB as usize];
    let mut h = HASH_SEED;
    for i in 0..mib {
        f.read_exact_at(&mut buf, i * MIB).ctx("read the image")?;
        h = hash_into(h, &buf);
    }
    let got = format!("{h:016x}");
    if got != want {
        return Err(format!(
            "the loop image hashes to {got}, the domU's model to {want}; domU: {detail}"
        ));
    }
    let detail = detail
        .rsplit_once(" hash=")
        .map_or(detail.as_str(), |d| d.0);
    Ok(format!(
        "kernel xen-blkback on {LOOP} ({major}:{minor:x}), {mib} MiB image; {detail}; \
         blkback Closed {back_closed_ms} ms after the verdict; image equals the model \
         (hash {got}, {} ms)",
        t.elapsed().as_millis()
    ))
}

/// Plays the hotplug script, waits for the verdict and for blkback to
/// follow the front end to Closed. Returns the domU's detail line and how
/// long blkback took to be Closed.
fn dom0_serve(
    xs: &mut Client<XenbusTransport>,
    fe: DomId,
    back: &str,
    major: u32,
    minor: u32,
    t0: Instant,
) -> Result<(String, u128), String> {
    let errpath = back.trim_start_matches("/local/domain/0/");
    // blkback's probe: InitWait.
    let claimed = crate::poll_state(xs, back, Duration::from_secs(30), |s| {
        s >= XenbusState::InitWait
    })?;
    if let Err(s) = claimed {
        return Err(format!(
            "xen-blkback did not claim {back} within 30 s (state {s:?}, error {})",
            xenbus_error(xs, errpath)
        ));
    }
    let initwait_ms = t0.elapsed().as_millis();
    // The hotplug script's part: blkback opens the device and connects
    // once it has this and the front end is Initialised.
    xs.write(
        &format!("{back}/physical-device"),
        format!("{major:x}:{minor:x}").as_bytes(),
    )
    .ctx("write physical-device")?;
    xs.write(&format!("{back}/physical-device-path"), LOOP.as_bytes())
        .ctx("write physical-device-path")?;
    xs.write(&format!("{back}/hotplug-status"), b"connected")
        .ctx("write hotplug-status")?;
    let key = result_key(fe);
    let deadline = Instant::now() + Duration::from_secs(200);
    let verdict = loop {
        if let Some(v) = xs.try_read(&key).ctx("read result")? {
            break String::from_utf8_lossy(&v).into_owned();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no verdict from the domU within 200 s (blkback state {:?}, error {})",
                read_state(xs, back).ok(),
                xenbus_error(xs, errpath)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let tv = Instant::now();
    let detail = verdict.strip_prefix("ok ").ok_or_else(|| {
        format!(
            "domU: {verdict} (blkback state {:?}, error {})",
            read_state(xs, back).ok(),
            xenbus_error(xs, errpath)
        )
    })?;
    // The front end closed before its verdict; blkback must be Closed.
    let closed = crate::poll_state(xs, back, Duration::from_secs(20), |s| {
        s == XenbusState::Closed
    })?;
    if let Err(s) = closed {
        return Err(format!(
            "blkback is {s:?}, not Closed, 20 s after the front end closed"
        ));
    }
    Ok((
        format!("blkback InitWait after {initwait_ms} ms; {detail}"),
        tv.elapsed().as_millis(),
    ))
}
