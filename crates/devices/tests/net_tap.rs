//! The emulated guest on a real Linux network: ping and TCP echo between a
//! private network namespace and the guest, through netback bridged to a
//! TAP interface.
//!
//! Layout: the test creates namespace `xs-test-<pid>` and, from a thread
//! inside it, TAP interface `xst<pid>` (10.213.7.1/24), so all traffic stays
//! inside that namespace. The back end (dom0) serves the TAP; the guest runs
//! netfront + smoltcp at 10.213.7.2 with a TCP echo service on port 7.
//! `ping` runs under `ip netns exec`; the TCP client is a thread that enters
//! the namespace. Everything is torn down by a drop guard, even on failure.
//!
//! Needs root, `/dev/net/tun`, `ip` (iproute2) and `ping` (iputils-ping).
//! Without them the test prints a loud SKIP — and fails when `CI=true`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use xenshare::net::NetfrontConfig;
use xenshare_devices::net::guest::GuestConfig;
use xenshare_devices::net::run::{spawn_backend, spawn_guest};
use xenshare_devices::net::tap::{Tap, TapIo};
use xenshare_testkit::net::{world, T};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 7, 2);
const HOST_CIDR: &str = "10.213.7.1/24";

#[path = "../../conformance/src/support.rs"]
mod support;

/// A visible SKIP line, or a failure under CI.
fn unavailable(why: &str) {
    support::skip_or_fail("net_tap", why, "iproute2 and iputils-ping, and run as root");
}

fn tool_works(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the namespace (and with it anything left inside) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Result<Netns, String> {
        // A namespace left over by a killed earlier run with our pid.
        let _ = run(&["ip", "netns", "del", name]);
        run(&["ip", "netns", "add", name])?;
        Ok(Netns {
            name: name.to_string(),
        })
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A TCP echo round trip from inside the namespace.
fn tcp_echo_from(ns: &Path, data: Vec<u8>) -> Result<Vec<u8>, String> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let fd = rustix::fs::open(
            &ns,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| format!("open netns: {e}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns: {e}"))?;
        let addr = SocketAddr::from((GUEST_IP, 7));
        let mut s = TcpStream::connect_timeout(&addr, T).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
        let mut r = s.try_clone().map_err(|e| e.to_string())?;
        let n = data.len();
        let writer = std::thread::spawn(move || s.write_all(&data).map(|_| s));
        let mut back = vec![0u8; n];
        r.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        writer
            .join()
            .map_err(|_| "writer panicked".to_string())?
            .map_err(|e| format!("write: {e}"))?;
        Ok(back)
    })
    .join()
    .map_err(|_| "client thread panicked".to_string())?
}

#[test]
fn ping_and_tcp_echo_between_a_netns_and_the_emulated_guest() {
    if !rustix::process::geteuid().is_root() {
        return unavailable("not root");
    }
    if !Path::new("/dev/net/tun").exists() {
        return unavailable("no /dev/net/tun");
    }
    if !tool_works("ip", "-V") {
        return unavailable("no `ip` tool (iproute2)");
    }
    if !tool_works("ping", "-V") {
        return unavailable("no `ping` tool (iputils-ping)");
    }
    let pid = std::process::id();
    let ns = match Netns::create(&format!("xs-test-{pid}")) {
        Ok(ns) => ns,
        Err(e) => return unavailable(&format!("cannot create a network namespace: {e}")),
    };
    let ifname = format!("xst{pid}");
    let tap = match Tap::open_in_netns(&ifname, &ns.path()) {
        Ok(t) => t,
        Err(e) => return unavailable(&format!("cannot create a TAP interface: {e}")),
    };
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&["addr", "add", HOST_CIDR, "dev", &ifname]).unwrap();
    ns.ip(&["link", "set", &ifname, "up"]).unwrap();

    let w = world();
    w.create_vif(0);
    let io = TapIo::new(tap, 1024).unwrap();
    let bt = spawn_backend(
        w.dom0.importer().clone(),
        w.dom0.evtchn().unwrap(),
        w.xs(&w.dom0),
        w.guest.id(),
        0,
        io,
        T,
    );
    let gt = spawn_guest(
        w.guest.exporter().clone(),
        w.guest.evtchn().unwrap(),
        w.xs(&w.guest),
        0,
        NetfrontConfig::default(),
        GuestConfig::new(GUEST_IP),
        T,
    );
    let mac = gt.wait_ready(T).expect("guest interface up");
    println!(
        "guest {mac} at {GUEST_IP}, host side {ifname} {HOST_CIDR} in {}",
        ns.name
    );

    let ping = run(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-W",
        "3",
        "-n",
        &GUEST_IP.to_string(),
    ]);
    let ping = ping.unwrap_or_else(|e| panic!("ping failed: {e}"));
    println!("{ping}");
    assert!(ping.contains("5 received"), "{ping}");

    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let back = tcp_echo_from(&ns.path(), data.clone()).unwrap();
    assert!(back == data, "TCP echo corrupted the stream");

    let g = gt.stop().unwrap();
    assert!(g.error.is_none(), "{:?}", g.error);
    assert_eq!(g.close.quarantined, 0);
    assert!(
        g.stats.rx_frames > 5 && g.stats.tx_frames > 5,
        "{:?}",
        g.stats
    );
    let b = bt.join().unwrap();
    println!("guest {:?}\nback end {:?}", g.stats, b.stats);
    assert_eq!(w.guest.exporter().stats().live, 0);
    drop(ns);
}
