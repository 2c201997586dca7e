//! netfront ↔ netback on the emulator with an in-memory host (no root):
//! frames of every size both ways byte-exact, bursts that wrap the rings,
//! both startup orders, refusal of a back end without rx-copy, close
//! releasing every grant, and the no-root demo (ping + TCP echo through
//! smoltcp on both sides).

use std::thread;
use std::time::Duration;

use xenshare::net::xenbus::{BackendFeatures, DEVTYPE};
use xenshare::net::{slots_for, FrameIo, NetError, Netfront, NetfrontConfig, MAX_FRAME};
use xenshare::store::xenbus::{read_state, write_state, XenbusState};
use xenshare_devices::net::demo::{demo_net, emulated_demo, throughput, Side};
use xenshare_devices::net::host::{mem_link, HostFrames, HostPort, MemFrameIo, QueueFull, Waker};
use xenshare_devices::net::run::spawn_backend;
use xenshare_testkit::net::{frame, world, Front, T};

fn tx_one(nf: &mut Front, host: &HostPort, f: &[u8]) {
    nf.send_timeout(f, T).unwrap();
    let got = host.recv_timeout(T).expect("frame never reached the host");
    assert!(got == f, "tx frame of {} bytes corrupted", f.len());
}

fn rx_one(nf: &mut Front, host: &HostPort, f: &[u8]) {
    assert!(host.send(f));
    let got = nf
        .recv_timeout(T)
        .unwrap()
        .expect("frame never reached the guest");
    assert!(got == f, "rx frame of {} bytes corrupted", f.len());
}

/// Sizes above one Ethernet frame (scatter-gather): every size around each
/// page boundary, and a sweep.
fn sg_sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (1515..=MAX_FRAME).step_by(997).collect();
    for k in 1..=16usize {
        let b = k * 4096;
        v.extend((b.saturating_sub(3)..=b + 3).filter(|&s| s > 1514 && s <= MAX_FRAME));
    }
    v.extend([MAX_FRAME - 1, MAX_FRAME]);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn every_frame_size_both_ways_byte_exact() {
    let w = world();
    let (bt, host, mut nf) = w.connected_vif(0);
    assert!(nf.carrier());
    assert_eq!(nf.mac().to_string(), xenshare_testkit::net::MAC);
    assert_eq!(nf.max_frame(), MAX_FRAME);
    let sizes: Vec<usize> = (60..=1514).chain(sg_sizes()).collect();
    for &len in &sizes {
        tx_one(&mut nf, &host, &frame(len, 1));
        rx_one(&mut nf, &host, &frame(len, 2));
    }
    let s = nf.stats();
    assert_eq!(s.tx_frames, sizes.len() as u64);
    assert_eq!(s.rx_frames, sizes.len() as u64);
    assert_eq!((s.tx_errors, s.rx_errors, s.quarantined), (0, 0, 0));
    let report = w.close_clean(nf);
    assert!(report.revoked >= 2 + NetfrontConfig::default().rx_buffers);
    let exit = bt.join().unwrap();
    assert_eq!(exit.stats.tx_frames, sizes.len() as u64);
    assert_eq!(exit.stats.rx_frames, sizes.len() as u64);
}

/// Frames of every size received in place (`recv_with`) through the real
/// back end: lent as one read-only piece per rx slot, byte-exact whether
/// copied whole or read at offsets across page boundaries, and their pages
/// posted again without new grants.
#[test]
fn every_frame_size_received_in_place_byte_exact() {
    let w = world();
    let (bt, host, mut nf) = w.connected_vif(0);
    rx_one(&mut nf, &host, &frame(60, 0));
    let granted = w.guest.exporter().stats().granted;
    let sizes: Vec<usize> = (60..=1514).step_by(7).chain(sg_sizes()).collect();
    for (i, &len) in sizes.iter().enumerate() {
        let f = frame(len, i as u8);
        assert!(host.send(&f));
        let checked = nf
            .recv_with(T, |got| {
                assert!(got.in_place());
                assert_eq!(got.len(), len);
                assert_eq!(got.fragments().count(), slots_for(len));
                let mut whole = Vec::new();
                got.copy_to(&mut whole);
                // A window straddling each page boundary, and the tail.
                let mut pieces_ok = true;
                for at in (4096..len).step_by(4096) {
                    let mut b = [0u8; 16];
                    let n = b.len().min(len - at + 8);
                    got.read(at - 8, &mut b[..n]).unwrap();
                    pieces_ok &= b[..n] == f[at - 8..at - 8 + n];
                }
                let past_end = got.read(len - 1, &mut [0u8; 2]).is_err();
                whole == f && pieces_ok && past_end
            })
            .unwrap();
        assert_eq!(checked, Some(true), "frame of {len} bytes");
    }
    assert_eq!(nf.stats().rx_frames, sizes.len() as u64 + 1);
    assert_eq!(w.guest.exporter().stats().granted, granted);
    w.close_clean(nf);
    bt.join().unwrap();
}

/// `recv` and `recv_with` mixed: frames come in order, whether lent in
/// place or from the copies `recv` already made.
#[test]
fn recv_and_recv_with_keep_the_order_of_frames() {
    let w = world();
    let (bt, host, mut nf) = w.connected_vif(0);
    let n = 600usize;
    let (mut next, mut sent) = (0usize, 0usize);
    while next < n {
        // Keep up to 100 frames queued so `recv` finds several at once.
        while sent < n && sent < next + 100 {
            assert!(host.send(&frame(100 + sent % 3000, sent as u8)));
            sent += 1;
        }
        let want = frame(100 + next % 3000, next as u8);
        let ok = if next % 3 == 0 {
            nf.recv_timeout(T).unwrap().map(|f| f == want)
        } else {
            nf.recv_with(T, |f| {
                let mut v = Vec::new();
                f.copy_to(&mut v);
                v == want
            })
            .unwrap()
        };
        assert_eq!(ok, Some(true), "frame {next} out of order or corrupted");
        next += 1;
    }
    assert_eq!(nf.stats().rx_frames, n as u64);
    w.close_clean(nf);
    bt.join().unwrap();
}

#[test]
fn bursts_wrap_the_rings_both_ways() {
    let w = world();
    let (bt, host, mut nf) = w.connected_vif(0);
    const N: usize = 3000;
    let sizes: Vec<usize> = (0..N).map(|i| 60 + (i * 37) % 9000).collect();
    // Host drains while the guest sends as fast as the ring allows.
    let h2 = host.clone();
    let sz = sizes.clone();
    let sink = thread::spawn(move || {
        for (i, &len) in sz.iter().enumerate() {
            let got = h2.recv_timeout(T).expect("tx frame lost");
            assert!(got == frame(len, i as u8), "tx frame {i} corrupted");
        }
    });
    for (i, &len) in sizes.iter().enumerate() {
        nf.send_timeout(&frame(len, i as u8), T).unwrap();
    }
    sink.join().unwrap();
    // Host sends in bursts of 200 (more than the guest keeps posted).
    let indexed: Vec<(usize, usize)> = sizes.iter().copied().enumerate().collect();
    for burst in indexed.chunks(200) {
        for &(i, len) in burst {
            assert!(host.send(&frame(len, !(i as u8))));
        }
        for &(i, len) in burst {
            let got = nf.recv_timeout(T).unwrap().expect("rx frame lost");
            assert!(got == frame(len, !(i as u8)), "rx frame {i} corrupted");
        }
    }
    w.close_clean(nf);
    bt.join().unwrap();
}

#[test]
fn reused_frame_buffers_carry_no_stale_bytes() {
    let w = world();
    let (bt, host, mut nf) = w.connected_vif(0);
    // Large and small frames in turn, so a reused buffer always held a
    // longer frame with other bytes before.
    let sizes: Vec<usize> = (0..400)
        .map(|i| match i % 4 {
            0 => MAX_FRAME - i,
            1 => 60 + i,
            2 => 9000 + i,
            _ => 1514 - i,
        })
        .collect();
    // tx: the host takes frames through the buffer-reusing call.
    let h2 = host.clone();
    let sz = sizes.clone();
    let sink = thread::spawn(move || {
        for (i, &len) in sz.iter().enumerate() {
            let ok = h2
                .recv_timeout_with(T, |got| got == frame(len, i as u8).as_slice())
                .expect("tx frame lost");
            assert!(ok, "tx frame {i} ({len} bytes) corrupted");
        }
    });
    for (i, &len) in sizes.iter().enumerate() {
        nf.send_timeout(&frame(len, i as u8), T).unwrap();
    }
    sink.join().unwrap();
    // rx: every frame goes back to the netfront for reuse once checked.
    for burst in sizes.chunks(40).enumerate() {
        let (b, burst) = burst;
        for (j, &len) in burst.iter().enumerate() {
            assert!(host.send(&frame(len, !((b * 40 + j) as u8))));
        }
        for (j, &len) in burst.iter().enumerate() {
            let got = nf.recv_timeout(T).unwrap().expect("rx frame lost");
            let i = b * 40 + j;
            assert!(
                got == frame(len, !(i as u8)),
                "rx frame {i} ({len} bytes) corrupted"
            );
            nf.recycle_frame(got);
        }
    }
    w.close_clean(nf);
    bt.join().unwrap();
}

/// Answered rx pages stay granted to the back end and are posted again:
/// after the first postings, thousands of frames of every size come in
/// byte-exact without a single new grant or page, and closing still gives
/// every grant back.
#[test]
fn answered_rx_pages_are_posted_again_without_new_grants() {
    let w = world();
    let (bt, host, mut nf) = w.connected_vif(0);
    rx_one(&mut nf, &host, &frame(60, 0));
    let granted = w.guest.exporter().stats().granted;
    let pages = nf.stats().pages_allocated;
    // Ten times round the 256 posted pages one page at a time, then frames
    // of up to 16 pages.
    for i in 0..2560usize {
        rx_one(&mut nf, &host, &frame(60 + i % 4000, i as u8));
    }
    for i in 0..200usize {
        rx_one(&mut nf, &host, &frame(MAX_FRAME - i * 300, i as u8));
    }
    assert_eq!(
        w.guest.exporter().stats().granted,
        granted,
        "rx pages were granted afresh"
    );
    assert_eq!(nf.stats().pages_allocated, pages);
    assert_eq!(nf.stats().quarantined, 0);
    let report = w.close_clean(nf);
    assert!(report.revoked >= 2 + NetfrontConfig::default().rx_buffers);
    bt.join().unwrap();
}

/// A host that only implements `FrameIo::send` and `recv` (no buffers the
/// back end could copy into or out of in place): the trait's default
/// `send_with` / `recv_with` carry every frame, including host frames that
/// wait in the back end's own buffer for the guest to post rx pages.
struct CopyingHost(MemFrameIo);

impl FrameIo for CopyingHost {
    type Error = QueueFull;
    fn send(&mut self, frame: &[u8]) -> Result<(), QueueFull> {
        self.0.send(frame)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, QueueFull> {
        self.0.recv(buf)
    }
}

impl HostFrames for CopyingHost {
    fn set_waker(&mut self, waker: Waker) {
        self.0.set_waker(waker);
    }
}

#[test]
fn a_host_without_in_place_buffers_gets_every_frame_both_ways() {
    let w = world();
    w.create_vif(0);
    let (io, host) = mem_link(4096);
    let bt = spawn_backend(
        w.dom0.importer().clone(),
        w.dom0.evtchn().unwrap(),
        w.xs(&w.dom0),
        w.guest.id(),
        0,
        CopyingHost(io),
        T,
    );
    let mut nf = w.netfront(0);
    let sizes: Vec<usize> = (0..600)
        .map(|i| 60 + (i * 4099) % (MAX_FRAME - 60))
        .collect();
    for (i, &len) in sizes.iter().enumerate().take(100) {
        tx_one(&mut nf, &host, &frame(len, i as u8));
    }
    // Bursts of 100 frames (about 800 pages: far more than the guest
    // keeps posted), so frames wait in the back end's buffer.
    for (b, burst) in sizes.chunks(100).enumerate() {
        for (j, &len) in burst.iter().enumerate() {
            assert!(host.send(&frame(len, (b * 100 + j) as u8)));
        }
        for (j, &len) in burst.iter().enumerate() {
            let i = b * 100 + j;
            let got = nf.recv_timeout(T).unwrap().expect("rx frame lost");
            assert!(got == frame(len, i as u8), "rx frame {i} corrupted");
        }
    }
    w.close_clean(nf);
    let exit = bt.join().unwrap();
    assert_eq!(exit.stats.tx_frames, 100);
    assert_eq!(exit.stats.rx_frames, sizes.len() as u64);
    assert_eq!(exit.stats.rx_dropped, 0);
}

fn exchange_and_close(w: &xenshare_testkit::net::World, mut nf: Front, host: &HostPort) {
    tx_one(&mut nf, host, &frame(1000, 5));
    rx_one(&mut nf, host, &frame(1000, 6));
    w.close_clean(nf);
}

#[test]
fn backend_first_then_frontend() {
    let w = world();
    let paths = w.create_vif(3);
    let (bt, host) = w.vif_backend(3);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        read_state(&mut w.xs(&w.dom0), &paths.back).unwrap(),
        XenbusState::InitWait
    );
    let nf = w.netfront(3);
    assert_eq!(
        read_state(&mut w.xs(&w.dom0), &paths.back).unwrap(),
        XenbusState::Connected
    );
    exchange_and_close(&w, nf, &host);
    let exit = bt.join().unwrap();
    assert_eq!(exit.reason, xenshare::net::back::RunExit::FrontendClosed);
    let mut c = w.xs(&w.dom0);
    assert_eq!(
        read_state(&mut c, &paths.back).unwrap(),
        XenbusState::Closed
    );
    assert_eq!(
        read_state(&mut c, &paths.front).unwrap(),
        XenbusState::Closed
    );
    assert_eq!(w.dom0.mapped_count(), 0, "back end unmapped the rings");
}

#[test]
fn frontend_first_then_backend() {
    let w = world();
    let paths = w.create_vif(4);
    let (exp, evt, mut xs) = (
        w.guest.exporter().clone(),
        w.guest.evtchn().unwrap(),
        w.xs(&w.guest),
    );
    let fe = thread::spawn(move || {
        Netfront::connect(&exp, &evt, &mut xs, 4, NetfrontConfig::default(), T)
    });
    thread::sleep(Duration::from_millis(100));
    // The front end waits for the back end's InitWait without publishing.
    assert_eq!(
        read_state(&mut w.xs(&w.dom0), &paths.front).unwrap(),
        XenbusState::Initialising
    );
    let (bt, host) = w.vif_backend(4);
    let nf = fe.join().unwrap().unwrap();
    assert!(nf.carrier());
    exchange_and_close(&w, nf, &host);
    bt.join().unwrap();
    assert_eq!(w.dom0.mapped_count(), 0);
}

#[test]
fn frontend_refuses_backend_without_rx_copy() {
    let w = world();
    let paths = w.create_vif(0);
    let mut c0 = w.xs(&w.dom0);
    BackendFeatures {
        rx_copy: false,
        sg: true,
        split_event_channels: true,
    }
    .publish(&mut c0, &paths.back)
    .unwrap();
    write_state(&mut c0, &paths.back, XenbusState::InitWait).unwrap();
    let r = w.try_netfront(0, T);
    assert_eq!(r.err(), Some(NetError::NoRxCopy));
    assert_eq!(w.guest.exporter().stats().live, 0, "nothing granted");
    let _ = DEVTYPE;
}

#[test]
fn demo_pings_and_echoes_over_the_emulated_netif() {
    let w = world();
    let report = emulated_demo(
        &mut w.xs(&w.dom0),
        w.guest.id(),
        Side {
            grants: w.guest.exporter().clone(),
            evt: w.guest.evtchn().unwrap(),
            xs: w.xs(&w.guest),
        },
        Side {
            grants: w.dom0.importer().clone(),
            evt: w.dom0.evtchn().unwrap(),
            xs: w.xs(&w.dom0),
        },
        0,
        5,
    )
    .unwrap();
    println!("{}", report.summary());
    assert_eq!(report.ping.sent, 5);
    assert_eq!(report.ping.received, 5, "{}", report.summary());
    assert_eq!(report.tcp_echoed, 20_000, "{}", report.summary());
    assert_eq!(report.guest.close.quarantined, 0);
    assert!(report.guest.error.is_none());
    assert_eq!(w.guest.exporter().stats().live, 0);
}

/// Frames per second through the emulated path (printed; the floor only
/// catches a path that degenerated into timeouts).
#[test]
fn throughput_of_the_emulated_path() {
    for (len, n) in [(64usize, 20_000u64), (1514, 20_000), (65535, 2_000)] {
        let t = throughput(len, n).unwrap();
        println!(
            "net throughput {len:>5} B frames: guest->host {:>8.0} frames/s ({:>7.1} MB/s), host->guest {:>8.0} frames/s ({:>7.1} MB/s), {:>8.0} copied out",
            t.tx_fps,
            t.tx_mbps(),
            t.rx_fps,
            t.rx_mbps(),
            t.rx_copy_fps
        );
        // A path stuck in its 20 ms wait slices would manage 50 frames/s;
        // a loaded 2-core box running a debug build does several hundred
        // 64 KiB frames/s.
        assert!(
            t.tx_fps > 100.0 && t.rx_fps > 100.0 && t.rx_copy_fps > 100.0,
            "{t:?}"
        );
    }
}

#[test]
fn demo_line_for_the_cli() {
    let line = demo_net(3).unwrap();
    println!("{line}");
    assert!(line.contains("ping 3/3"), "{line}");
    assert!(line.contains("0 quarantined"), "{line}");
}
