//! `xenshare_netfront_on_linux_netback`: xenshare's network front end with
//! its smoltcp stack, as a userspace program in the domU (gntalloc, evtchn
//! and `/dev/xen/xenbus`), on dom0's kernel `xen-netback`. The domU's own
//! `xen-netfront` is not loaded while this runs.
//!
//! * dom0 (`xsnet DOMID KIB`, `xen-netback` loaded): writes the vif's nodes
//!   as `xl network-attach` would (one transaction, `backend/vif`, with the
//!   `script` and `handle` keys netback's probe needs), then plays the
//!   hotplug script once netback is in InitWait: `vifD.N` up with
//!   10.213.11.1/24 (busybox `ip`), `hotplug-status` = `connected`. When
//!   the domU says it is up: busybox `ping -c 5`, then KIB KiB of random
//!   bytes through busybox `nc` to the domU's echo port and back, compared.
//! * domU (`xsnet-domu`): `Netfront::connect` + smoltcp at 10.213.11.2
//!   answering ICMP echo and echoing TCP on port 7, until dom0 is done;
//!   then closes and checks that every grant went back to the kernel
//!   (gntalloc: `Revoked::Retired`, none quarantined).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::net::xenbus::DEVTYPE;
use xenshare::net::{Netfront, NetfrontConfig};
use xenshare::store::xenbus::{create_device, read_state, DeviceSpec, XenbusState};
use xenshare::store::{Client, Transport};
use xenshare::DomId;
use xenshare_conformance::Context;
use xenshare_devices::net::guest::{Guest, GuestConfig};
use xenshare_linux::{LinuxPlatform, XenbusTransport};

/// Not device 0 (the Linux front-end test's vif).
const DEVID: u32 = 1;
const MAC: &str = "00:16:3e:00:11:02";
const DOM0_IP: &str = "10.213.11.1";
const DOMU_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 11, 2);
const ECHO_PORT: u16 = 7;

fn key(fe: DomId, name: &str) -> String {
    format!("/local/domain/{}/data/{name}", fe.0)
}

fn backend_features<T: Transport>(xs: &mut Client<T>, back: &str) -> String {
    let mut on = Vec::new();
    for k in [
        "feature-rx-copy",
        "feature-sg",
        "feature-gso-tcpv4",
        "feature-gso-tcpv6",
        "feature-ipv6-csum-offload",
        "feature-split-event-channels",
        "feature-ctrl-ring",
        "feature-xdp-headroom",
        "multi-queue-max-queues",
    ] {
        if let Ok(Some(v)) = xs.try_read(&format!("{back}/{k}")) {
            let v = String::from_utf8_lossy(&v).trim().to_string();
            if v != "0" {
                on.push(format!("{}={v}", k.trim_start_matches("feature-")));
            }
        }
    }
    on.join(" ")
}

/// The domU side.
pub fn domu() -> Result<String, String> {
    let plat = LinuxPlatform::open().ctx("open")?;
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let me = plat.domid();
    let dir = format!("/local/domain/{}/device/{DEVTYPE}/{DEVID}", me.0);
    let r = domu_run(&plat, &mut xs, &dir);
    let line = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    xs.write(&key(me, "xsnet-result"), line.as_bytes())
        .ctx("publish result")?;
    // The lab may load the kernel's xen-netfront next, which must not find it.
    let sys = format!("/sys/bus/xen/devices/vif-{DEVID}");
    crate::wait_device_gone(&mut xs, &dir, &sys, &line)?;
    r
}

fn domu_run(
    plat: &LinuxPlatform,
    xs: &mut Client<XenbusTransport>,
    dir: &str,
) -> Result<String, String> {
    let me = plat.domid();
    crate::wait_device_created(xs, dir, 150)?;
    let exporter = plat.exporter().ctx("exporter")?;
    let evt = Arc::new(plat.evtchn().ctx("evtchn")?);
    // What one frame's page costs on gntalloc: grant, map, zero, revoke.
    let t = Instant::now();
    for _ in 0..32 {
        let s = exporter
            .share(DomId(0), 1, xenshare::Access::ReadOnly)
            .ctx("share")?;
        drop(s.try_unshare().map_err(|_| "a fresh share is busy")?);
    }
    let page_us = t.elapsed().as_micros() / 32;
    let t = Instant::now();
    let nf = Netfront::connect(
        &exporter,
        &evt,
        xs,
        DEVID,
        NetfrontConfig::default(),
        Duration::from_secs(60),
    )
    .ctx("connect")?;
    let connect_ms = t.elapsed().as_millis();
    let back = nf
        .paths()
        .map(|(_, b)| b.to_string())
        .ok_or("no back-end path after connect")?;
    let offered = backend_features(xs, &back);
    let max_frame = nf.max_frame();
    let mut guest = Guest::new(
        nf,
        GuestConfig {
            echo_port: ECHO_PORT,
            ..GuestConfig::new(DOMU_IP)
        },
    );
    xs.write(&key(me, "xsnet-ready"), b"1")
        .ctx("publish ready")?;
    // Serve until dom0 is done (bounded); XenStore is asked twice a second.
    let done = key(me, "xsnet-done");
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut next_check = Instant::now();
    // Where the time goes (TCG makes every wake-up slow).
    let (mut rounds, mut woken, mut timed_out) = (0u64, 0u64, 0u64);
    let mut waited = Duration::ZERO;
    let t_serve = Instant::now();
    let served = loop {
        let delay = match guest.poll_once() {
            Ok(d) => d,
            Err(e) => break Err(format!("netfront broke: {e}")),
        };
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_millis(500);
            match xs.try_read(&done) {
                Ok(Some(_)) => break Ok(()),
                Ok(None) => {}
                Err(e) => break Err(format!("read {done}: {e}")),
            }
            if Instant::now() > deadline {
                break Err("dom0 did not finish within 200 s".into());
            }
        }
        if !delay.is_zero() {
            let t = Instant::now();
            match guest.device().netfront().wait(Some(delay)) {
                Ok(true) => woken += 1,
                Ok(false) => timed_out += 1,
                Err(e) => break Err(format!("netfront wait: {e}")),
            }
            waited += t.elapsed();
        }
        rounds += 1;
    };
    let serve = t_serve.elapsed();
    let nf = guest.into_netfront();
    let stats = nf.stats();
    let report = nf.close(xs, Duration::from_secs(20)).ctx("close")?;
    served?;
    let st = exporter.stats();
    if st.live != 0 || st.quarantined != 0 || report.quarantined != 0 {
        return Err(format!(
            "grants left behind after close: {st:?}, {report:?}"
        ));
    }
    if st.retired == 0 || st.retired != st.revoked {
        return Err(format!(
            "gntalloc revocations should all be Retired: {st:?}"
        ));
    }
    if stats.rx_errors != 0 || stats.tx_errors != 0 {
        return Err(format!("netfront counted errors: {stats:?}"));
    }
    Ok(format!(
        "one gntalloc page granted and revoked in {page_us} us; connect {connect_ms} ms; netback offers [{offered}]; we asked rx-copy, sg, rx-notify, \
         no-csum-offload (max frame {max_frame}); {} frames / {} B out, {} frames / {} B in; \
         served {:.1} s in {rounds} rounds, {woken} wake-ups by event and {timed_out} timer \
         wake-ups, {:.1} s asleep; grants: {} granted, {} revoked, {} retired, 0 quarantined, \
         0 live",
        stats.tx_frames,
        stats.tx_bytes,
        stats.rx_frames,
        stats.rx_bytes,
        serve.as_secs_f64(),
        waited.as_secs_f64(),
        st.granted,
        st.revoked,
        st.retired,
    ))
}

/// The dom0 side.
pub fn dom0(args: &[String]) -> Result<String, String> {
    let (fe, plat, mut xs) = crate::dom0_open(args)?;
    let kib = crate::parse_size(args.get(1), 1..=65536, "KiB")?;
    let devid = DEVID.to_string();
    let paths = create_device(
        &mut xs,
        &DeviceSpec {
            devtype: DEVTYPE,
            devid: DEVID,
            frontend: fe,
            backend: plat.domid(),
            front_keys: &[("handle", &devid), ("mac", MAC)],
            // netback's probe needs `script` (it only passes it on in a
            // uevent) and `handle`; `hotplug-status` comes later.
            back_keys: &[
                ("handle", &devid),
                ("mac", MAC),
                ("type", "vif"),
                ("script", "/etc/xen/scripts/vif-bridge"),
            ],
        },
    )
    .ctx("create the vif")?;
    let r = dom0_run(&mut xs, fe, &paths.back, kib);
    // The domU may go on once its device is gone.
    let _ = xs.write(&key(fe, "xsnet-done"), b"1");
    let r = r.and_then(|ours| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let verdict = loop {
            if let Some(v) = xs.try_read(&key(fe, "xsnet-result")).ctx("result")? {
                break String::from_utf8_lossy(&v).into_owned();
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no verdict from the domU within 60 s; dom0: {ours}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let detail = verdict
            .strip_prefix("ok ")
            .ok_or_else(|| format!("domU: {verdict}; dom0: {ours}"))?;
        // netback follows a closed front end to Closed.
        let closed = crate::poll_state(&mut xs, &paths.back, Duration::from_secs(20), |s| {
            s == XenbusState::Closed
        })?;
        if let Err(s) = closed {
            return Err(format!(
                "netback is {s:?}, not Closed, 20 s after the front end closed"
            ));
        }
        Ok(format!(
            "{ours}; netback Closed after the front end; domU: {detail}"
        ))
    });
    let _ = xs.rm(&paths.front);
    let _ = xs.rm(&paths.back);
    r
}

fn dom0_run(
    xs: &mut Client<XenbusTransport>,
    fe: DomId,
    back: &str,
    kib: u64,
) -> Result<String, String> {
    let vif = format!("vif{}.{DEVID}", fe.0);
    let t0 = Instant::now();
    let claimed = crate::poll_state(xs, back, Duration::from_secs(30), |s| {
        s >= XenbusState::InitWait
    })?;
    if let Err(s) = claimed {
        return Err(format!(
            "xen-netback did not claim {back} within 30 s (state {s:?})"
        ));
    }
    // The vif hotplug script's part.
    crate::sh("ip", &["link", "set", &vif, "up"])?;
    crate::sh(
        "ip",
        &["addr", "add", &format!("{DOM0_IP}/24"), "dev", &vif],
    )?;
    xs.write(&format!("{back}/hotplug-status"), b"connected")
        .ctx("write hotplug-status")?;
    let ready = key(fe, "xsnet-ready");
    let deadline = Instant::now() + Duration::from_secs(150);
    while xs.try_read(&ready).ctx("xsnet-ready")?.is_none() {
        if let Ok(Some(v)) = xs.try_read(&key(fe, "xsnet-result")) {
            return Err(format!("domU: {}", String::from_utf8_lossy(&v)));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the domU's netfront was not up within 150 s (netback state {:?})",
                read_state(xs, back).ok()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let up_ms = t0.elapsed().as_millis();
    let back_state = read_state(xs, back).ctx("backend state")?;
    if back_state != XenbusState::Connected {
        return Err(format!("netback is {back_state:?} with the front end up"));
    }
    let domu_ip = DOMU_IP.to_string();
    let t = Instant::now();
    let out = crate::sh("ping", &["-c", "5", "-W", "10", &domu_ip])?;
    let ping_s = t.elapsed().as_secs_f64();
    let rtt = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .map(|l| l.trim().to_string())
        .ok_or_else(|| format!("no ping summary in {out:?}"))?;
    let loss = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let (tcp, tcp_mbs) = tcp_echo(&domu_ip, kib)?;
    Ok(format!(
        "kernel xen-netback, {vif} {DOM0_IP}/24, netfront up {up_ms} ms after the nodes; \
         ping -c 5 ({ping_s:.1} s): {loss}, {rtt}; busybox nc: {tcp} ({tcp_mbs:.3} MB/s each way)"
    ))
}

/// Sends `kib` KiB of random bytes through busybox `nc` to the domU's echo
/// port and compares what comes back.
fn tcp_echo(ip: &str, kib: u64) -> Result<(String, f64), String> {
    let (inp, outp) = ("/tmp/xsnet-in", "/tmp/xsnet-out");
    let mut data = vec![0u8; (kib * 1024) as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ kib;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(inp, &data).ctx("write the input")?;
    let t = Instant::now();
    let mut child = Command::new("nc")
        .args([ip, &ECHO_PORT.to_string()])
        .stdin(std::fs::File::open(inp).ctx("open the input")?)
        .stdout(std::fs::File::create(outp).ctx("create the output")?)
        .stderr(Stdio::piped())
        .spawn()
        .ctx("spawn nc")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().ctx("wait for nc")? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let got = std::fs::metadata(outp).map(|m| m.len()).unwrap_or(0);
            return Err(format!(
                "nc did not finish within 120 s ({got} of {} bytes echoed)",
                data.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = t.elapsed().as_secs_f64();
    let back = std::fs::read(outp).ctx("read the output")?;
    let _ = std::fs::remove_file(inp);
    let _ = std::fs::remove_file(outp);
    if !status.success() {
        return Err(format!("nc exited with {status}"));
    }
    if back.len() != data.len() {
        return Err(format!(
            "echoed {} bytes of {} ({status})",
            back.len(),
            data.len()
        ));
    }
    if let Some(p) = back.iter().zip(&data).position(|(a, b)| a != b) {
        return Err(format!("the echo differs at byte {p}"));
    }
    let sum = crate::blkfront::hash(&data);
    Ok((
        format!(
            "{kib} KiB echoed and equal (hash {sum:016x}) in {:.2} s",
            secs
        ),
        (data.len() as f64 / (1 << 20) as f64) / secs.max(1e-6),
    ))
}
