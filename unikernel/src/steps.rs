//! What the unikernel does, step by step, each step reporting one
//! `UK PASS <name> ...` / `UK FAIL <name>: ...` line on the console.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use xenshare::grant::{Exporter, Importer, Revoked, TableBackend};
use xenshare::platform::{FrameAllocator, PageSet};
use xenshare::vchan::server_init;
use xenshare::{Access, DomId};
use xenshare_pv::console::{init_xenstore, XenStore};
use xenshare_pv::events::{self, PvEvents};
use xenshare_pv::frames::{FramePool, PoolAlloc, PoolFrames};
use xenshare_pv::grant::{setup_table, GrantFrames, PvMapper};
use xenshare_pv::layout::StartInfo;
use xenshare_pv::{hypercall, println, shared};

use crate::rt;

type Backend = TableBackend<GrantFrames, PoolAlloc>;

/// Ring size of each direction of the vchans served (order 16: 16 granted
/// pages per ring).
const RING: usize = 64 * 1024;
/// How long any one wait on dom0 may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(90);

fn ms_since(t0: u64) -> u64 {
    shared::now_ns().saturating_sub(t0) / 1_000_000
}

fn fail(name: &str, why: impl core::fmt::Display) -> bool {
    println!("UK FAIL {name}: {why}");
    false
}

/// FNV-1a 64 over `data`, continuing from `h`.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// `x.yz` MB/s for `bytes` in `ms`.
fn mbps(bytes: usize, ms: u64) -> String {
    let centi = bytes as u64 * 100 / ms.max(1) / 1000;
    format!("{}.{:02}", centi / 100, centi % 100)
}

fn read_str(xs: &mut XenStore, path: &str) -> Result<String, String> {
    let v = xs.read(path).map_err(|e| format!("read {path}: {e}"))?;
    let v = v.strip_suffix(&[0]).unwrap_or(&v);
    String::from_utf8(v.to_vec()).map_err(|_| format!("{path} is not UTF-8"))
}

/// Waits until `path` reads `want` (dom0 moves the MSA02 steps along).
fn wait_for(xs: &mut XenStore, path: &str, want: &str) -> Result<(), String> {
    let start = shared::now_ns();
    loop {
        if let Ok(Some(v)) = xs.try_read(path) {
            if v.strip_suffix(&[0]).unwrap_or(&v) == want.as_bytes() {
                return Ok(());
            }
        }
        if ms_since(start) > PEER_TIMEOUT.as_millis() as u64 {
            return Err(format!(
                "dom0 did not set {path} = {want} within {PEER_TIMEOUT:?}"
            ));
        }
        events::sleep(Duration::from_millis(20));
    }
}

/// Runs every step; true if all passed.
pub fn run(si: &StartInfo, t0: u64, guard_ok: bool) -> bool {
    let ver = hypercall::xen_version();
    println!(
        "UK xenshare unikernel 0.1: Rust PV guest kernel on Xen {}.{}, upcalls masked {} (poll mode)",
        ver >> 16,
        ver & 0xffff,
        shared::upcalls_masked()
    );
    println!(
        "UK PASS unikernel_boot banner {} ms after entry; {} pages ({} MiB), cmdline '{}', heap {} KiB, grant pool {} pages, stack guard {}",
        ms_since(t0),
        si.nr_pages,
        si.nr_pages / 256,
        si.cmd_line(),
        rt::HEAP_SIZE / 1024,
        rt::POOL_PAGES,
        if guard_ok { "unmapped" } else { "NOT unmapped" }
    );

    // SAFETY: once, with this domain's start_info, after init.
    let mut xs = match unsafe { init_xenstore(si) } {
        Ok(x) => x,
        Err(e) => return fail("unikernel_xenstore", e),
    };
    let (domid, name) = match (read_str(&mut xs, "domid"), read_str(&mut xs, "name")) {
        (Ok(d), Ok(n)) => (d, n),
        (Err(e), _) | (_, Err(e)) => return fail("unikernel_xenstore", e),
    };
    let Ok(domid) = domid.parse::<u16>() else {
        return fail(
            "unikernel_xenstore",
            format!("domid {domid:?} is not a number"),
        );
    };
    events::set_domid(DomId(domid));
    let home = format!("/local/domain/{domid}");
    let ready_ms = ms_since(t0);
    let wrote = xs
        .write(
            &format!("{home}/data/ready-ms"),
            format!("{ready_ms}").as_bytes(),
        )
        .and_then(|()| xs.write(&format!("{home}/data/status"), b"ready"));
    if let Err(e) = wrote {
        return fail("unikernel_xenstore", format!("write data/status: {e}"));
    }
    println!(
        "UK PASS unikernel_xenstore domid {domid}, name {name}; data/status = ready {ready_ms} ms after entry"
    );

    let frames = match setup_table() {
        Ok(f) => f,
        Err(e) => return fail("unikernel_grant_table", e),
    };
    let (nframes, maxf) = (frames.frames(), frames.max_frames());
    // SAFETY: the pool's pages are the image's, used for nothing else.
    let pool: &'static FramePool = Box::leak(Box::new(unsafe {
        FramePool::new(rt::POOL[0].va(), rt::POOL_PAGES)
    }));
    // SAFETY: the only backend over this table.
    let exporter = Exporter::new(unsafe { Backend::new(DomId(domid), frames, PoolAlloc(pool)) });
    println!(
        "UK grant table: {nframes} frame(s) mapped (Xen allows {maxf}), {} free refs",
        exporter.table().map_or(0, |t| t.free_count())
    );

    let l = match loopback(&exporter, DomId(domid)) {
        Ok(()) => true,
        Err(e) => fail("unikernel_grant_loopback", e),
    };
    let c = vchan_round(&mut xs, &exporter, &home, 1, "unikernel_vchan_c_client");
    let r = vchan_round(&mut xs, &exporter, &home, 2, "unikernel_vchan_rust_client");
    let m = match msa02(&mut xs, &exporter, pool, &home) {
        Ok(()) => true,
        Err(e) => fail("unikernel_msa02_real_busy", e),
    };
    let b = match blk(&mut xs, &exporter, &home) {
        Ok(()) => true,
        Err(e) => fail("unikernel_blkfront", e),
    };
    let _ = xs.write(&format!("{home}/data/status"), b"done");
    l && c && r && m && b
}

/// The disk dom0 attaches (xvdb).
const BLK_DEVID: u32 = 202 << 8 | 1 << 4;
/// MiB written and read back.
const BLK_MIB: usize = 4;
/// Bytes per `write_at` / `read_at` (two such buffers fit the heap).
const BLK_CHUNK: usize = 128 * 1024;

/// The lab's disk pattern (as `xenshare-lab-tests blk`): every 8-byte word
/// is a hash of its byte offset, so a misplaced or stale sector shows.
fn blk_fill(buf: &mut [u8], base: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let mut z = (base + 8 * i as u64) ^ 0x5853_4841_5245_424c;
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// The core's blkfront on a disk dom0 serves: write the pattern, flush,
/// read it back and compare, publish the verdict in `data/blk-result`
/// (dom0 then checks its image byte for byte), close, and stay until dom0
/// wrote `data/blk-done`.
fn blk(xs: &mut XenStore, exporter: &Exporter<Backend>, home: &str) -> Result<(), String> {
    use xenshare::blk::{BlkFront, FrontConfig};
    let dir = format!("{home}/device/vbd/{BLK_DEVID}");
    let start = shared::now_ns();
    while xs
        .try_read(&format!("{dir}/backend"))
        .ok()
        .flatten()
        .is_none()
    {
        if ms_since(start) > PEER_TIMEOUT.as_millis() as u64 {
            return Err(format!("dom0 did not create {dir} within {PEER_TIMEOUT:?}"));
        }
        events::sleep(Duration::from_millis(50));
    }
    let cfg = FrontConfig {
        max_persistent_pages: 128,
        max_indirect_segments: 64,
        timeout: Some(PEER_TIMEOUT),
        ..FrontConfig::new(BLK_DEVID)
    };
    let mut front = BlkFront::new(exporter.clone(), PvEvents::new(), cfg);
    let t = shared::now_ns();
    let mut disk = front.connect(xs).map_err(|e| format!("connect: {e}"))?;
    let connect_ms = ms_since(t);
    let info = *disk.info();
    let size = BLK_MIB << 20;
    if info.size_bytes() < size as u64 {
        return Err(format!(
            "the disk has {} bytes, want {size}",
            info.size_bytes()
        ));
    }
    let mut buf = vec![0u8; BLK_CHUNK];
    let t = shared::now_ns();
    for base in (0..size).step_by(BLK_CHUNK).map(|b| b as u64) {
        blk_fill(&mut buf, base);
        disk.write_at(base, &buf)
            .map_err(|e| format!("write at {base}: {e}"))?;
    }
    disk.flush().map_err(|e| format!("flush: {e}"))?;
    let write_ms = ms_since(t).max(1);
    let mut want = vec![0u8; BLK_CHUNK];
    let t = shared::now_ns();
    for base in (0..size).step_by(BLK_CHUNK).map(|b| b as u64) {
        disk.read_at(base, &mut buf)
            .map_err(|e| format!("read at {base}: {e}"))?;
        blk_fill(&mut want, base);
        if let Some(i) = (0..buf.len()).find(|&i| buf[i] != want[i]) {
            return Err(format!("byte {} read back differs", base + i as u64));
        }
    }
    let read_ms = ms_since(t).max(1);
    let detail = format!(
        "unikernel blkfront: connected in {connect_ms} ms ({} sectors, ring order {}, persistent {}, {} segments per request); {BLK_MIB} MiB written+flushed in {write_ms} ms ({} MB/s), read back and checked in {read_ms} ms ({} MB/s)",
        info.sectors,
        info.ring_order,
        info.persistent,
        info.max_segments,
        mbps(size, write_ms),
        mbps(size, read_ms)
    );
    xs.write(
        &format!("{home}/data/blk-result"),
        format!("ok {detail}").as_bytes(),
    )
    .map_err(|e| format!("publish: {e}"))?;
    disk.close(xs).map_err(|e| format!("close: {e}"))?;
    let rel = front.release();
    wait_for(xs, &format!("{home}/data/blk-done"), "1")?;
    println!("UK PASS unikernel_blkfront {detail}; closed, release {rel:?}");
    Ok(())
}

/// Serves one vchan at `<home>/data/vchan` to dom0 and echoes everything
/// until the client closes.
fn vchan_round(
    xs: &mut XenStore,
    exporter: &Exporter<Backend>,
    home: &str,
    round: u32,
    name: &str,
) -> bool {
    let path = format!("{home}/data/vchan");
    let evt = PvEvents::new();
    let mut v = match server_init(exporter, &evt, xs, DomId::DOM0, &path, RING, RING) {
        Ok(v) => v,
        Err(e) => return fail(name, format!("server_init: {e}")),
    };
    if let Err(e) = xs.write(
        &format!("{home}/data/vchan-round"),
        format!("{round}").as_bytes(),
    ) {
        return fail(name, format!("write vchan-round: {e}"));
    }
    // Non-blocking I/O, sleeping on the event channel when neither
    // direction can move: no spinning, so this vCPU never takes CPU time
    // that dom0's client needs (the vchan's blocking calls spin first).
    v.set_blocking(false);
    let mut buf = vec![0u8; RING];
    let (mut total, mut h, mut start) = (0usize, FNV_INIT, None);
    let (mut pend, mut off) = (0usize, 0usize);
    let mut last_progress = shared::now_ns();
    loop {
        let mut moved = false;
        if off < pend {
            match v.write(&buf[off..pend]) {
                Ok(k) => {
                    off += k;
                    moved |= k > 0;
                }
                Err(e) => return fail(name, format!("write after {total} bytes: {e}")),
            }
        }
        if off == pend {
            match v.read(&mut buf) {
                Ok(n) if n > 0 => {
                    start.get_or_insert_with(shared::now_ns);
                    h = fnv(h, &buf[..n]);
                    total += n;
                    (pend, off) = (n, 0);
                    moved = true;
                }
                Ok(_) => {}
                Err(e) => return fail(name, format!("read after {total} bytes: {e}")),
            }
        }
        if moved {
            last_progress = shared::now_ns();
            continue;
        }
        if off == pend && !v.is_open() && v.data_ready().unwrap_or(0) == 0 {
            break;
        }
        if ms_since(last_progress) > PEER_TIMEOUT.as_millis() as u64 {
            return fail(
                name,
                format!("no progress for {PEER_TIMEOUT:?} after {total} bytes"),
            );
        }
        // The read or write above asked the client for a notification.
        if let Err(e) = v.wait(Some(Duration::from_millis(100))) {
            return fail(name, format!("wait: {e}"));
        }
    }
    let ms = start.map_or(0, ms_since);
    v.close();
    drop(v);
    let _ = xs.rm(&path);
    // The client may unmap a moment after it closed: what it still holds
    // waits in quarantine; give it a few seconds to let go.
    let t_close = shared::now_ns();
    let mut reclaimed = 0;
    while exporter.quarantined() > 0 && ms_since(t_close) < 10_000 {
        reclaimed += exporter.reclaim(usize::MAX).reclaimed;
        if exporter.quarantined() > 0 {
            events::sleep(Duration::from_millis(20));
        }
    }
    let st = exporter.stats();
    println!("UK VCHAN round={round} echoed={total} fnv={h:016x} ms={ms}");
    println!(
        "UK PASS {name} echoed {total} bytes in {ms} ms ({} MB/s each way), fnv {h:016x}, rings {RING}/{RING} B; after close: {reclaimed} reclaimed from quarantine ({} ms), {} still quarantined; granted {} revoked {}",
        mbps(total, ms),
        ms_since(t_close),
        st.quarantined,
        st.granted,
        st.revoked + st.reclaimed
    );
    true
}

/// The import side on ourselves: share 4 pages with this very domain, map
/// them with `GNTTABOP_map_grant_ref` (`PvMapper`), check bytes cross both
/// ways, check the hypervisor's busy bits refuse the revocation while the
/// mapping lives, unmap, then revoke. Also checks a bad reference is
/// refused with a status instead of mapping anything.
fn loopback(exporter: &Exporter<Backend>, me: DomId) -> Result<(), String> {
    // SAFETY: the only mapper of this image.
    let importer = Importer::new(unsafe { PvMapper::new() });
    let share = exporter
        .share(me, 4, Access::ReadWrite)
        .map_err(|e| format!("share: {e}"))?;
    share
        .mem()
        .write(4096 * 3 + 7, b"to the mapping")
        .map_err(|_| "write")?;
    let t = shared::now_ns();
    let m = importer
        .map_rw(me, share.refs())
        .map_err(|e| format!("map {:?}: {e}", share.refs()))?;
    let map_us = shared::now_ns().saturating_sub(t) / 1000;
    let mut got = [0u8; 14];
    m.mem().read(4096 * 3 + 7, &mut got).map_err(|_| "read")?;
    if &got != b"to the mapping" {
        return Err(format!("the mapping reads {got:?}"));
    }
    m.mem()
        .write(100, b"from the mapping")
        .map_err(|_| "write")?;
    let mut back = [0u8; 16];
    share.mem().read(100, &mut back).map_err(|_| "read")?;
    if &back != b"from the mapping" {
        return Err(format!("the share reads {back:?}"));
    }
    let share = match share.try_unshare() {
        Ok(_) => return Err("revoked while mapped".into()),
        Err(busy) => busy.into_inner(),
    };
    drop(m);
    let pages = share
        .try_unshare()
        .map_err(|_| "still busy after the unmap")?;
    drop(pages);
    let bad = importer.map_rw(me, &[xenshare::GrantRef(2047)]);
    let refused = match bad {
        Ok(_) => return Err("an unused ref was mapped".into()),
        Err(e) => e,
    };
    let st = importer.stats();
    let ev = event_loopback(me)?;
    println!(
        "UK PASS unikernel_grant_loopback 4 pages shared with d{} and mapped back by GNTTABOP_map_grant_ref in {map_us} us; bytes cross both ways; revoke refused while mapped, done after unmap; unused ref refused: {refused}; importer {st:?}; {ev}",
        me.0
    );
    Ok(())
}

/// Event channels on ourselves: alloc_unbound, bind_interdomain (the new
/// port starts pending), send, and SCHEDOP_poll waking on the other end.
fn event_loopback(me: DomId) -> Result<String, String> {
    use xenshare::platform::EventChannels;
    let (a, b) = (PvEvents::new(), PvEvents::new());
    let pa = a
        .alloc_unbound(me)
        .map_err(|e| format!("alloc_unbound: {e}"))?;
    let pb = b
        .bind_interdomain(me, pa)
        .map_err(|e| format!("bind_interdomain: {e}"))?;
    let first = b.poll().map_err(|e| format!("poll: {e}"))?;
    if first != Some(pb) {
        return Err(format!("a fresh binding is not pending: {first:?}"));
    }
    let t = shared::now_ns();
    b.notify(pb).map_err(|e| format!("send: {e}"))?;
    let got = a
        .wait(Some(Duration::from_secs(5)))
        .map_err(|e| format!("wait: {e}"))?;
    let us = shared::now_ns().saturating_sub(t) / 1000;
    if got != Some(pa) {
        return Err(format!("{pa} did not get the event: {got:?}"));
    }
    let quiet = a
        .wait(Some(Duration::from_millis(50)))
        .map_err(|e| format!("wait: {e}"))?;
    if quiet.is_some() {
        return Err(format!("a second event appeared on {pa}: {quiet:?}"));
    }
    a.close(pa).map_err(|e| format!("close: {e}"))?;
    b.close(pb).map_err(|e| format!("close: {e}"))?;
    Ok(format!(
        "event loopback {pa} <-> {pb}: bound port pending, send -> poll woke in {us} us, one event only, closed"
    ))
}

const MARK: &[u8] = b"MSA02 page shared by the xenshare unikernel";
const SECRET: &[u8] = b"UK-SECRET!";

fn secret_byte(page: usize, j: usize) -> u8 {
    SECRET[(j + page) % SECRET.len()]
}

/// MSA02 with dom0 as the malicious mapper (see the module docs).
fn msa02(
    xs: &mut XenStore,
    exporter: &Exporter<Backend>,
    pool: &'static FramePool,
    home: &str,
) -> Result<(), String> {
    let dir = format!("{home}/data/msa02");
    let state = format!("{dir}/state");
    let e = |what: &str| {
        let what = String::from(what);
        move |err: xenshare::store::ClientError| format!("{what}: {err}")
    };

    // 1. Share one page with dom0 and tell it where.
    let share = exporter
        .share(DomId::DOM0, 1, Access::ReadWrite)
        .map_err(|err| format!("share: {err}"))?;
    share.mem().write(0, MARK).map_err(|_| "mark the page")?;
    let gref = share.refs()[0];
    xs.write(&format!("{dir}/gref"), format!("{}", gref.0).as_bytes())
        .map_err(e("write gref"))?;
    xs.write(&state, b"shared").map_err(e("write state"))?;

    // 2. dom0 maps it through gntdev and keeps it.
    wait_for(xs, &state, "mapped")?;
    let table = exporter.table().ok_or("no table view")?;
    let flags = table.entry(gref).map_or(0, |en| en.flags);
    let busy_bits = xenshare_abi::grant::GTF_READING | xenshare_abi::grant::GTF_WRITING;
    if flags & busy_bits != busy_bits {
        return Err(format!(
            "dom0 says it maps {gref} but Xen's entry flags are {}",
            xenshare::grant::FlagsDisplay(flags)
        ));
    }

    // 3. Revocation must fail: the real hypervisor's busy bits say so.
    let share = match share.try_unshare() {
        Ok(Revoked::Pages(_) | Revoked::Retired) => {
            return Err(format!("{gref} was revoked while dom0 maps it"))
        }
        Err(busy) => busy.into_inner(),
    };
    let before = exporter.quarantined();
    drop(share); // into quarantine: its page is never reused while mapped
    if exporter.quarantined() != before + 1 {
        return Err(format!(
            "the busy share is not in quarantine: {:?}",
            exporter.stats()
        ));
    }

    // 4. Reuse every free page of the pool for a secret.
    let alloc = PoolAlloc(pool);
    let mut reused: Vec<PoolFrames> = Vec::new();
    while let Some(f) = alloc.alloc(1) {
        let page = reused.len();
        let bytes: Vec<u8> = (0..4096).map(|j| secret_byte(page, j)).collect();
        f.mem().write(0, &bytes).map_err(|_| "fill a page")?;
        reused.push(f);
    }
    let (used, total) = pool.usage();
    xs.write(&state, b"filled").map_err(e("write state"))?;

    // 5. dom0 writes through its kept mapping and looks for the secret.
    wait_for(xs, &state, "written")?;
    let saw =
        read_str(xs, &format!("{dir}/dom0-saw")).map_err(|err| format!("dom0's verdict: {err}"))?;
    if saw != "no-secret" {
        return Err(format!("dom0 reports '{saw}' through its kept mapping"));
    }

    // 6. None of the reused pages changed.
    let mut page_buf = vec![0u8; 4096];
    for (page, f) in reused.iter().enumerate() {
        f.mem().read(0, &mut page_buf).map_err(|_| "read a page")?;
        if let Some(j) = (0..4096).find(|&j| page_buf[j] != secret_byte(page, j)) {
            return Err(format!("reused page {page} changed at byte {j}"));
        }
    }
    let n_reused = reused.len();
    drop(reused);
    xs.write(&state, b"checked").map_err(e("write state"))?;

    // 7. dom0 unmaps; reclaim frees the page.
    wait_for(xs, &state, "unmapped")?;
    let after = table.entry(gref).map_or(0, |en| en.flags);
    let rep = exporter.reclaim(usize::MAX);
    let st = exporter.stats();
    let revoked = table.entry(gref).map_or(0, |en| en.flags);
    if rep.reclaimed == 0 || revoked != 0 || exporter.quarantined() != 0 {
        return Err(format!(
            "reclaim after dom0 unmapped: {rep:?}, stats {st:?}"
        ));
    }
    xs.write(&state, b"done").map_err(e("write state"))?;
    println!(
        "UK PASS unikernel_msa02_real_busy {gref} flags while dom0 mapped it: {}; try_unshare -> Busy, share quarantined; {n_reused} free pages ({used}/{total} of the pool) reused for a secret, dom0 saw none of it through its mapping, none of them changed; after dom0 unmapped: flags {}, reclaim freed {}; counters granted {} live {} revoked {} quarantined {} reclaimed {} leaked {} busy {}",
        xenshare::grant::FlagsDisplay(flags),
        xenshare::grant::FlagsDisplay(after),
        rep.reclaimed,
        st.granted,
        st.live,
        st.revoked,
        st.quarantined,
        st.reclaimed,
        st.leaked,
        st.busy_results
    );
    Ok(())
}
