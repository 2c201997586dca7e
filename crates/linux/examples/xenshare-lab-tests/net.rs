//! `linux_netfront_on_xenshare_netback`: the domU kernel's `xen-netfront`
//! on a vif served by xenshare's netback in dom0 userspace, bridged to a TAP
//! interface (`xsvif0`, 10.0.0.1) in dom0.
//!
//! * dom0 (`netback DOMID KIB`): the toolstack's part (`device/vif/0` with
//!   `mac` and `handle`, `backend/vif/DOMID/0`), the TAP, the back end on a
//!   thread; once the domU says it is up: `ping` the domU (busybox), then
//!   one TCP connection through the kernel stacks: KIB KiB of a pattern
//!   dom0 → domU, then KIB KiB of another pattern back, both checked.
//! * domU (`net-domu KIB`, `xen-netfront` loaded at boot): waits for
//!   `eth0`, configures 10.0.0.2/24, pings dom0, listens on port 5001,
//!   checks what it receives and answers with its own pattern.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::net::Mac;
use xenshare::store::xenbus::DevicePaths;
use xenshare_conformance::Context;
use xenshare_devices::net::run::spawn_backend_at;
use xenshare_devices::net::tap::{Tap, TapIo};
use xenshare_devices::net::vif::{attach_vif, detach_vif, VifAttach, USERSPACE_VIF_TYPE};
use xenshare_linux::LinuxPlatform;

const MAC: &str = "00:16:3e:00:00:0c";
const TAP: &str = "xsvif0";
const DOM0_IP: &str = "10.0.0.1";
const DOMU_IP: &str = "10.0.0.2";
const PORT: u16 = 5001;

fn fill(buf: &mut [u8], base: u64, seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (base + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        *b = (x >> 29) as u8;
    }
}

/// A TCP counter of this domain (`/proc/net/snmp`).
fn tcp_stat(name: &str) -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// This domain's TCP retransmissions so far: segments lost on the way, or
/// acknowledged too late.
fn tcp_retrans() -> u64 {
    tcp_stat("RetransSegs")
}

/// What dom0's stack says about the stream, for a failure report.
fn dom0_tcp_report() -> String {
    format!(
        "dom0 TCP: retransmitted {}, bad checksums in {}, errors in {}; TAP drops tx {} rx {}",
        tcp_retrans(),
        tcp_stat("InCsumErrors"),
        tcp_stat("InErrs"),
        tap_stat("tx_dropped"),
        tap_stat("rx_dropped")
    )
}

/// The domU's interrupt lines of its vif (`/proc/interrupts`).
fn vif_interrupts() -> String {
    std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("eth0") || l.contains("vif"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A counter of the TAP in dom0's kernel (`/sys/class/net/TAP/statistics`).
fn tap_stat(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{TAP}/statistics/{name}"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What the back end offered and the domU's netfront took, from both
/// directories (once the front end is connected).
fn negotiated(
    xs: &mut xenshare::store::Client<xenshare_linux::XenbusTransport>,
    paths: &DevicePaths,
) -> Result<String, String> {
    let mut key = |dir: &str, k: &str| -> Result<Option<String>, String> {
        Ok(xs.try_read(&format!("{dir}/{k}")).ctx(k)?.map(|v| {
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .to_string()
        }))
    };
    let on = |v: &Option<String>| v.as_deref() == Some("1");
    let (f, b) = (paths.front.as_str(), paths.back.as_str());
    let mut out = Vec::new();
    for (name, bk, fk) in [
        ("rx-copy", "feature-rx-copy", "request-rx-copy"),
        ("sg", "feature-sg", "feature-sg"),
        ("gso-tcpv4", "feature-gso-tcpv4", "feature-gso-tcpv4"),
    ] {
        let (offered, taken) = (on(&key(b, bk)?), on(&key(f, fk)?));
        out.push(format!(
            "{name} {}",
            match (offered, taken) {
                (true, true) => "on",
                (true, false) => "offered, not taken",
                (false, true) => "off (not offered; the front end writes it anyway)",
                (false, false) => "off",
            }
        ));
    }
    let split = key(f, "event-channel-tx")?.is_some();
    out.push(format!(
        "event channels {} (offered {})",
        if split { "split" } else { "shared" },
        key(b, "feature-split-event-channels")?.unwrap_or_default()
    ));
    out.push(format!(
        "rx-notify {}",
        if on(&key(f, "feature-rx-notify")?) {
            "on"
        } else {
            "off"
        }
    ));
    out.push(format!(
        "checksums: the guest's blank tx checksums completed in netback, rx frames complete \
         (feature-no-csum-offload {})",
        key(f, "feature-no-csum-offload")?.unwrap_or_else(|| "absent".into())
    ));
    Ok(out.join(", "))
}

/// busybox ping's summary line (`round-trip min/avg/max = ...`).
fn ping(dst: &str) -> Result<String, String> {
    let out = crate::sh("ping", &["-c", "3", "-W", "10", dst])?;
    Ok(out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or("no summary")
        .trim()
        .to_string())
}

fn send_pattern(s: &mut TcpStream, len: u64, seed: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], off, seed);
        s.write_all(&buf[..n]).ctx("send")?;
        off += n as u64;
    }
    Ok(())
}

fn recv_pattern(s: &mut TcpStream, len: u64, seed: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut off = 0;
    loop {
        let n = s.read(&mut buf).ctx("receive")?;
        if n == 0 {
            break;
        }
        fill(&mut want[..n], off, seed);
        if buf[..n] != want[..n] {
            return Err(format!("stream differs near byte {off}"));
        }
        off += n as u64;
        if off > len {
            return Err(format!("more than {len} bytes"));
        }
    }
    if off != len {
        return Err(format!("stream ended after {off} of {len} bytes"));
    }
    Ok(())
}

fn mbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-6)
}

/// Bounds every read and write on the test's TCP stream (120 s each).
fn stream_timeouts(s: &TcpStream) -> Result<(), String> {
    let t = Some(Duration::from_secs(120));
    s.set_read_timeout(t).ctx("timeout")?;
    s.set_write_timeout(t).ctx("timeout")
}

fn parse_kib(s: Option<&String>) -> Result<u64, String> {
    crate::parse_size(s, 1..=1 << 20, "KiB").map(|k| k * 1024)
}

/// The domU side; publishes its verdict in `data/net-result` for dom0.
pub fn domu(args: &[String]) -> Result<String, String> {
    let len = parse_kib(args.first())?;
    let plat = LinuxPlatform::open().ctx("open")?;
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let result = format!("/local/domain/{}/data/net-result", plat.domid().0);
    let r = domu_test(&plat, &mut xs, len);
    let line = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!(
            "fail {e}; TCP retransmissions {}; interrupts: {}",
            tcp_retrans(),
            vif_interrupts()
        ),
    };
    xs.write(&result, line.as_bytes()).ctx("publish result")?;
    // Stay up (this domain's nodes with it) while dom0 checks that the
    // netfront follows its back end to Closed.
    let closed = format!("/local/domain/{}/data/net-closed", plat.domid().0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while xs.try_read(&closed).ctx("net-closed")?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    r
}

fn domu_test(
    plat: &LinuxPlatform,
    xs: &mut xenshare::store::Client<xenshare_linux::XenbusTransport>,
    len: u64,
) -> Result<String, String> {
    let ready = format!("/local/domain/{}/data/net-ready", plat.domid().0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let t0 = Instant::now();
    // The sysfs directory shows up while netfront is still registering the
    // interface (its address then reads empty): wait for the MAC.
    loop {
        let mac = std::fs::read_to_string("/sys/class/net/eth0/address").unwrap_or_default();
        if mac.trim() == MAC {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no eth0 with MAC {MAC} within 120 s (eth0 address {:?})",
                mac.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let eth_ms = t0.elapsed().as_millis();
    crate::sh(
        "ip",
        &["addr", "add", &format!("{DOMU_IP}/24"), "dev", "eth0"],
    )?;
    crate::sh("ip", &["link", "set", "eth0", "up"])?;
    // dom0's end (the TAP) is up before the back end connects.
    let rtt = ping(DOM0_IP)?;
    let listener = TcpListener::bind((DOMU_IP, PORT)).ctx("listen")?;
    listener.set_nonblocking(true).ctx("nonblocking")?;
    xs.write(&ready, b"1").ctx("publish net-ready")?;
    let (mut s, _) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("dom0 never connected".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    s.set_nonblocking(false).ctx("blocking")?;
    stream_timeouts(&s)?;
    let retrans0 = tcp_retrans();
    let t = Instant::now();
    recv_pattern(&mut s, len, 1)?;
    let rx = t.elapsed();
    send_pattern(&mut s, len, 2)?;
    s.shutdown(Shutdown::Write).ctx("shutdown")?;
    // The socket may still hold unsent data: stay up until dom0 says it
    // has read (or given up on) the whole stream.
    let done = format!("/local/domain/{}/data/net-done", plat.domid().0);
    let deadline = Instant::now() + Duration::from_secs(150);
    while xs.try_read(&done).ctx("net-done")?.is_none() {
        if Instant::now() > deadline {
            return Err("dom0 never finished reading".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!(
        "eth0 after {eth_ms} ms; ping dom0: {rtt}; TCP in {:.2} MB/s; \
         TCP retransmissions {}; interrupts: {}",
        mbs(len, rx),
        tcp_retrans() - retrans0,
        vif_interrupts()
    ))
}

/// The dom0 side.
pub fn dom0(t: &mut crate::Tally, args: &[String]) {
    let start = Instant::now();
    let mut closed = (start, Err("the vif was never attached".to_string()));
    let r = dom0_run(args, &mut closed);
    t.one(
        "linux_netfront_on_xenshare_netback",
        start,
        r.map(xenshare_conformance::Outcome::Pass),
    );
    t.one(
        "linux_netfront_closes_with_xenshare_netback",
        closed.0,
        closed.1.map(xenshare_conformance::Outcome::Pass),
    );
}

/// After the back end stopped (Closing, then Closed): Linux's netfront
/// must follow to Closed, and detaching (removing both directories, as a
/// toolstack does) must leave nothing behind.
fn check_close<T: xenshare::store::Transport>(
    xs: &mut xenshare::store::Client<T>,
    paths: &DevicePaths,
) -> Result<String, String> {
    use xenshare::store::xenbus::{read_state, XenbusState};
    let t0 = Instant::now();
    let back = read_state(xs, &paths.back).ctx("backend state")?;
    if back != XenbusState::Closed {
        return Err(format!("the back end left its state at {back:?}"));
    }
    loop {
        let front = read_state(xs, &paths.front).ctx("frontend state")?;
        if front == XenbusState::Closed {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "netfront still {front:?} 30 s after the back end closed"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ms = t0.elapsed().as_millis();
    detach_vif(xs, paths).ctx("detach")?;
    for p in [&paths.front, &paths.back] {
        if xs.try_read(p).ctx("read")?.is_some() {
            return Err(format!("{p} is still there after detaching"));
        }
    }
    Ok(format!(
        "back end Closing -> Closed, the domU's netfront Closed {ms} ms later; both \
         directories removed"
    ))
}

/// The stream test; `closed` gets the close check (its start, its result).
fn dom0_run(
    args: &[String],
    closed: &mut (Instant, Result<String, String>),
) -> Result<String, String> {
    let (fe, plat, mut xs) = crate::dom0_open(args)?;
    let len = parse_kib(args.get(1))?;
    let mac = Mac::parse(MAC.as_bytes()).ok_or("bad MAC")?;
    // What `xenshare netback` does: the toolstack's part under a private
    // back-end type, then the back end on that directory.
    let paths = attach_vif(
        &mut xs,
        &VifAttach {
            frontend: fe,
            backend: plat.domid(),
            devid: 0,
            mac,
            backend_type: USERSPACE_VIF_TYPE,
        },
    )
    .ctx("attach the vif")?;
    let r = serve(&plat, fe, &paths, len);
    let t = Instant::now();
    *closed = (t, check_close(&mut xs, &paths));
    // The domU may power off now.
    let _ = xs.write(&format!("/local/domain/{}/data/net-closed", fe.0), b"1");
    let _ = detach_vif(&mut xs, &paths);
    r
}

fn serve(
    plat: &LinuxPlatform,
    fe: xenshare::DomId,
    paths: &DevicePaths,
    len: u64,
) -> Result<String, String> {
    let tap = Tap::open(TAP).ctx("open the TAP")?;
    let io = TapIo::new(tap, 1024).ctx("TapIo")?;
    crate::sh("ip", &["addr", "add", &format!("{DOM0_IP}/24"), "dev", TAP])?;
    crate::sh("ip", &["link", "set", TAP, "up"])?;
    let back = spawn_backend_at(
        plat.importer().ctx("importer")?,
        Arc::new(plat.evtchn().ctx("evtchn")?),
        plat.xenstore().ctx("xenstore")?,
        paths.back.clone(),
        fe,
        io,
        Duration::from_secs(120),
    );
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let ready = format!("/local/domain/{}/data/net-ready", fe.0);
    let deadline = Instant::now() + Duration::from_secs(150);
    while xs.try_read(&ready).ctx("net-ready")?.is_none() {
        if back.is_finished() {
            return Err(format!("back end ended: {:?}", back.join()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the domU never came up; back end: {:?}",
                back.stop()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let negotiated = negotiated(&mut xs, paths)?;
    let data = (|| {
        let rtt = ping(DOMU_IP)?;
        let addr = (DOMU_IP, PORT);
        let mut s = TcpStream::connect_timeout(
            &std::net::SocketAddr::from((DOMU_IP.parse::<std::net::Ipv4Addr>().ctx("ip")?, PORT)),
            Duration::from_secs(30),
        )
        .ctx(&format!("connect {addr:?}"))?;
        stream_timeouts(&s)?;
        let retrans0 = tcp_retrans();
        let t = Instant::now();
        send_pattern(&mut s, len, 1)?;
        // The domU reads to the end of the stream before it answers.
        s.shutdown(Shutdown::Write).ctx("shutdown")?;
        let t_tx = t.elapsed();
        let t = Instant::now();
        recv_pattern(&mut s, len, 2)?;
        let t_rx = t.elapsed();
        drop(s);
        let retrans = tcp_retrans() - retrans0;
        Ok::<_, String>((rtt, t_tx, t_rx, retrans))
    })();
    // Lets the domU close its socket (it keeps it open until then).
    let _ = xs.write(&format!("/local/domain/{}/data/net-done", fe.0), b"1");
    // The domU's verdict (its ping of dom0 and its side of the stream),
    // while the back end still serves.
    let result = format!("/local/domain/{}/data/net-result", fe.0);
    // (A shorter wait after a failure here: the domU's report is only
    // for the record then.)
    let wait = if data.is_err() { 20 } else { 60 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    let verdict = loop {
        if let Some(v) = xs.try_read(&result).ctx("net-result")? {
            break String::from_utf8_lossy(&v).into_owned();
        }
        if Instant::now() > deadline {
            break "fail no verdict from the domU".into();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let exit = back.stop().map_err(|e| format!("back end: {e}"))?;
    let st = exit.stats;
    let (rtt, t_tx, t_rx, retrans) = data.map_err(|e| {
        format!(
            "{e}; back end {st:?}; {}; domU: {verdict}",
            dom0_tcp_report()
        )
    })?;
    let domu = verdict
        .strip_prefix("ok ")
        .ok_or_else(|| format!("domU: {verdict}"))?;
    if st.tx_errors != 0 {
        return Err(format!("netback answered frames with errors: {st:?}"));
    }
    Ok(format!(
        "ping domU: {rtt}; {} KiB each way over TCP, checked: dom0->domU {:.2} MB/s, \
         domU->dom0 {:.2} MB/s; netback frames guest->tap {} ({} B), tap->guest {} ({} B), \
         dropped {}/{}; events sent {}, wake-ups guest {} host {} timeouts {}; \
         dom0 TCP retransmissions {retrans}, TAP drops {}/{}; negotiated: {negotiated}; \
         domU: {domu}",
        len / 1024,
        mbs(len, t_tx),
        mbs(len, t_rx),
        st.tx_frames,
        st.tx_bytes,
        st.rx_frames,
        st.rx_bytes,
        st.tx_dropped,
        st.rx_dropped,
        st.notifies,
        st.guest_wakeups,
        st.host_wakeups,
        st.idle_timeouts,
        tap_stat("tx_dropped"),
        tap_stat("rx_dropped"),
    ))
}
