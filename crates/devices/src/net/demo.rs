//! Networking on an emulated guest without root: the back end's host side
//! is an in-memory link whose other end runs a second smoltcp stack (the
//! "host"), which pings the guest and talks to its TCP echo port.
//!
//! [`emulated_demo`] brings up a complete guest and back end on the domains
//! it is given, measures ping round trips and a TCP echo, tears everything
//! down (checking that every grant came back) and returns a
//! [`DemoReport`] whose [`DemoReport::summary`] is one line for
//! `xenshare demo --full`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};
use xenshare::grant::{Exporter, Importer};
use xenshare::net::xenbus::DEVTYPE;
use xenshare::net::NetfrontConfig;
use xenshare::platform::{EventChannels, ForeignMapper, GrantBackend};
use xenshare::store::client::{Client, Transport};
use xenshare::store::xenbus::{create_device, DeviceSpec};
use xenshare::DomId;

use super::guest::{GuestConfig, ETHERNET_MTU};
use super::host::{mem_link, HostPort};
use super::run::{spawn_backend, spawn_guest, BackendExit, GuestExit};

fn v4(a: Ipv4Addr) -> Ipv4Address {
    let o = a.octets();
    Ipv4Address::new(o[0], o[1], o[2], o[3])
}

/// smoltcp device over the host's end of an in-memory link.
struct HostDevice<'a>(&'a HostPort);

struct HostRx(Vec<u8>);

impl phy::RxToken for HostRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct HostTx<'a>(&'a HostPort);

impl phy::TxToken for HostTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        // A full queue drops the frame, as a wire would.
        let _ = self.0.send(&buf);
        r
    }
}

impl Device for HostDevice<'_> {
    type RxToken<'b>
        = HostRx
    where
        Self: 'b;
    type TxToken<'b>
        = HostTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(HostRx, HostTx<'_>)> {
        self.0.try_recv().map(|f| (HostRx(f), HostTx(self.0)))
    }

    fn transmit(&mut self, _: Instant) -> Option<HostTx<'_>> {
        Some(HostTx(self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_MTU;
        caps
    }
}

/// Round trips of a ping run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u32,
    /// Matching replies received.
    pub received: u32,
    /// Fastest round trip.
    pub min: Duration,
    /// Mean round trip.
    pub avg: Duration,
    /// Slowest round trip.
    pub max: Duration,
}

/// A host-side smoltcp stack on the host's end of an in-memory link.
pub struct HostStack {
    port: HostPort,
    iface: Interface,
    sockets: SocketSet<'static>,
    icmp: SocketHandle,
}

impl std::fmt::Debug for HostStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStack")
            .field("port", &self.port)
            .finish()
    }
}

impl HostStack {
    /// A stack with `mac` and `addr`/24 on `port`.
    pub fn new(port: HostPort, mac: [u8; 6], addr: Ipv4Addr) -> Self {
        let mut dev = HostDevice(&port);
        let hw = HardwareAddress::Ethernet(EthernetAddress(mac));
        let mut iface = Interface::new(Config::new(hw), &mut dev, Instant::now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(v4(addr).into(), 24));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let buf =
            || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]);
        let icmp = sockets.add(icmp::Socket::new(buf(), buf()));
        Self {
            port,
            iface,
            sockets,
            icmp,
        }
    }

    /// Runs the stack once (frames in and out).
    fn poll(&mut self) {
        self.iface.poll(
            Instant::now(),
            &mut HostDevice(&self.port),
            &mut self.sockets,
        );
    }

    /// Sleeps until a frame arrives, smoltcp has a timer due, or `max`.
    fn idle(&mut self, max: Duration) {
        let delay = self
            .iface
            .poll_delay(Instant::now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(max)
            .min(max);
        if !delay.is_zero() {
            self.port.wait_frame(delay);
        }
    }

    /// Sends `count` ICMP echo requests to `dst`, one at a time, each
    /// waiting up to `timeout` for its reply.
    pub fn ping(&mut self, dst: Ipv4Addr, count: u32, timeout: Duration) -> PingStats {
        let ident = 0x5853;
        let caps = ChecksumCapabilities::default();
        let mut st = PingStats {
            min: Duration::MAX,
            ..Default::default()
        };
        let mut total = Duration::ZERO;
        {
            let s = self.sockets.get_mut::<icmp::Socket>(self.icmp);
            if !s.is_open() {
                // Binding a fresh socket to an ident cannot fail.
                let _ = s.bind(icmp::Endpoint::Ident(ident));
            }
        }
        let payload = [0x42u8; 56];
        for seq in 0..count {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no: seq as u16,
                data: &payload,
            };
            let start = StdInstant::now();
            {
                let s = self.sockets.get_mut::<icmp::Socket>(self.icmp);
                let Ok(buf) = s.send(repr.buffer_len(), IpAddress::Ipv4(v4(dst))) else {
                    continue;
                };
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
            }
            st.sent += 1;
            let mut got = false;
            while start.elapsed() < timeout {
                self.poll();
                let s = self.sockets.get_mut::<icmp::Socket>(self.icmp);
                while let Ok((data, _)) = s.recv() {
                    let ok = Icmpv4Packet::new_checked(data)
                        .and_then(|p| Icmpv4Repr::parse(&p, &caps).map(|r| matches!(r, Icmpv4Repr::EchoReply { ident: i, seq_no, data } if i == ident && seq_no == seq as u16 && data == payload)))
                        .unwrap_or(false);
                    got |= ok;
                }
                if got {
                    break;
                }
                self.idle(Duration::from_millis(5));
            }
            if got {
                let rtt = start.elapsed();
                st.received += 1;
                total += rtt;
                st.min = st.min.min(rtt);
                st.max = st.max.max(rtt);
            }
        }
        if st.received > 0 {
            st.avg = total / st.received;
        } else {
            st.min = Duration::ZERO;
        }
        st
    }

    /// Connects to `dst:port`, sends `data`, reads the same number of bytes
    /// back and closes; `None` on timeout.
    pub fn tcp_echo(
        &mut self,
        dst: Ipv4Addr,
        port: u16,
        data: &[u8],
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        let h = self.sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        ));
        let start = StdInstant::now();
        let local_port = 49152 + (start.elapsed().subsec_nanos() % 10000) as u16;
        let connected = self
            .sockets
            .get_mut::<tcp::Socket>(h)
            .connect(self.iface.context(), (v4(dst), port), local_port)
            .is_ok();
        let (mut sent, mut back) = (0usize, Vec::with_capacity(data.len()));
        while connected && back.len() < data.len() && start.elapsed() < timeout {
            self.poll();
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if s.can_send() && sent < data.len() {
                sent += s.send_slice(&data[sent..]).unwrap_or(0);
            }
            let mut buf = [0u8; 8192];
            while s.can_recv() {
                match s.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => back.extend_from_slice(&buf[..n]),
                }
            }
            self.poll();
            self.idle(Duration::from_millis(5));
        }
        self.sockets.get_mut::<tcp::Socket>(h).close();
        let close_until = StdInstant::now() + Duration::from_millis(200);
        while StdInstant::now() < close_until && self.sockets.get::<tcp::Socket>(h).is_open() {
            self.poll();
            self.idle(Duration::from_millis(5));
        }
        self.sockets.remove(h);
        (back.len() == data.len()).then_some(back)
    }
}

/// What [`emulated_demo`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The guest's MAC.
    pub mac: String,
    /// Ping round trips host → guest.
    pub ping: PingStats,
    /// Bytes echoed byte-exact by the guest's TCP echo service.
    pub tcp_echoed: usize,
    /// How the guest ended (grants revoked / quarantined).
    pub guest: GuestExit,
    /// How the back end ended.
    pub backend: BackendExit,
}

impl DemoReport {
    /// One line for `xenshare demo --full`.
    pub fn summary(&self) -> String {
        format!(
            "net: vif0 up (mac {}, 10.213.0.2/24); ping {}/{} rtt min/avg/max {:.0}/{:.0}/{:.0} us; tcp echo {} B ok; close: {} grants revoked, {} quarantined",
            self.mac,
            self.ping.received,
            self.ping.sent,
            self.ping.min.as_secs_f64() * 1e6,
            self.ping.avg.as_secs_f64() * 1e6,
            self.ping.max.as_secs_f64() * 1e6,
            self.tcp_echoed,
            self.guest.close.revoked,
            self.guest.close.quarantined
        )
    }
}

/// The guest's address in the demo.
pub const DEMO_GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
/// The in-memory host's address in the demo.
pub const DEMO_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// One side of the demo: its grant handle, an event-channel handle and a
/// XenStore client of its own.
pub struct Side<G, E: EventChannels, T: Transport> {
    /// The guest's exporter or the back end's importer.
    pub grants: G,
    /// A fresh event-channel handle for the driver.
    pub evt: Arc<E>,
    /// A XenStore client for the driver's handshake.
    pub xs: Client<T>,
}

/// Brings up vif `devid` of `guest_id` (toolstack part done with
/// `toolstack`, a privileged client), a back end in the importer's domain
/// bridged to an in-memory host stack, and the guest (netfront + smoltcp +
/// echo); pings the guest `pings` times, runs a TCP echo, then shuts both
/// down and reports. Needs no root.
#[allow(clippy::too_many_arguments)]
pub fn emulated_demo<B, E1, M, E2, T>(
    toolstack: &mut Client<T>,
    guest_id: DomId,
    guest: Side<Exporter<B>, E1, T>,
    back: Side<Importer<M>, E2, T>,
    devid: u32,
    pings: u32,
) -> Result<DemoReport, String>
where
    B: GrantBackend,
    E1: EventChannels,
    M: ForeignMapper,
    E2: EventChannels,
    T: Transport + Send + 'static,
{
    let timeout = Duration::from_secs(10);
    let backend_id = back.grants.domid();
    create_device(
        toolstack,
        &DeviceSpec {
            devtype: DEVTYPE,
            devid,
            frontend: guest_id,
            backend: backend_id,
            front_keys: &[("mac", "00:16:3e:58:53:02"), ("handle", "0")],
            back_keys: &[("mac", "00:16:3e:58:53:02"), ("handle", "0")],
        },
    )
    .map_err(|e| format!("creating the vif: {e}"))?;
    let (io, port) = mem_link(1024);
    let bt = spawn_backend(back.grants, back.evt, back.xs, guest_id, devid, io, timeout);
    let gt = spawn_guest(
        guest.grants,
        guest.evt,
        guest.xs,
        devid,
        NetfrontConfig::default(),
        GuestConfig::new(DEMO_GUEST_IP),
        timeout,
    );
    let mac = gt.wait_ready(timeout);
    let mut host = HostStack::new(port, [0x02, 0, 0, 0x58, 0x53, 0x01], DEMO_HOST_IP);
    let (ping, echoed) = match mac {
        Some(_) => {
            let ping = host.ping(DEMO_GUEST_IP, pings, Duration::from_secs(2));
            let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
            let echoed = host
                .tcp_echo(DEMO_GUEST_IP, 7, &data, Duration::from_secs(5))
                .filter(|b| *b == data)
                .map_or(0, |b| b.len());
            (ping, echoed)
        }
        None => (PingStats::default(), 0),
    };
    let guest_exit = gt.stop().map_err(|e| format!("guest: {e}"))?;
    let backend_exit = bt.join().map_err(|e| format!("back end: {e}"))?;
    let mac = mac.ok_or("the guest's interface did not come up")?;
    Ok(DemoReport {
        mac: mac.to_string(),
        ping,
        tcp_echoed: echoed,
        guest: guest_exit,
        backend: backend_exit,
    })
}

type SimXsTransport = xenshare_xenstored::inproc::InProcTransport;
type GuestSide = Side<xenshare_sim::SimExporter, xenshare_sim::SimEvtchn, SimXsTransport>;
type BackSide = Side<xenshare_sim::SimImporter, xenshare_sim::SimEvtchn, SimXsTransport>;

/// The emulated machine the network demo runs on (a guest of
/// [`net_guest_config`]).
pub type NetWorld = crate::machine::Machine;

/// Guest memory for the network demo (16 MiB).
pub fn net_guest_config() -> xenshare_sim::DomainConfig {
    xenshare_sim::DomainConfig {
        mem_pages: 4096,
        ..Default::default()
    }
}

impl NetWorld {
    fn sides(&self) -> Result<(GuestSide, BackSide), String> {
        let evt = |d: &xenshare_sim::Domain| d.evtchn().map_err(|e| e.to_string());
        Ok((
            Side {
                grants: self.guest.exporter().clone(),
                evt: evt(&self.guest)?,
                xs: self.client(&self.guest),
            },
            Side {
                grants: self.dom0.importer().clone(),
                evt: evt(&self.dom0)?,
                xs: self.client(&self.dom0),
            },
        ))
    }
}

/// For `xenshare demo --full`: boots an emulated guest, brings up its vif
/// against an in-memory host stack, pings it `pings` times and runs a TCP
/// echo, tears down, and returns one summary line, e.g.
/// `net: vif0 up (mac 00:16:3e:58:53:02, 10.213.0.2/24); ping 5/5 rtt
/// min/avg/max 70/100/200 us; tcp echo 20000 B ok; close: 66 grants
/// revoked, 0 quarantined`. Needs no root. Fails if a ping or the echo
/// went missing, or a grant was left behind.
pub fn demo_net(pings: u32) -> Result<String, String> {
    demo_net_in(
        &NetWorld::new(net_guest_config()).map_err(|e| e.to_string())?,
        pings,
    )
}

/// Like [`demo_net`], on an existing machine's guest (for a demo that brings
/// up several devices on one guest).
pub fn demo_net_in(w: &NetWorld, pings: u32) -> Result<String, String> {
    let (guest, back) = w.sides()?;
    let r = emulated_demo(&mut w.client(&w.dom0), w.guest.id(), guest, back, 0, pings)?;
    let line = r.summary();
    if r.ping.received != r.ping.sent || r.tcp_echoed == 0 {
        return Err(format!("network demo incomplete: {line}"));
    }
    if r.guest.close.quarantined != 0 || w.guest.exporter().stats().live != 0 {
        return Err(format!("grants left behind: {line}"));
    }
    Ok(line)
}

/// Frames per second one way, as [`throughput`] measured them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Frame size in bytes.
    pub frame_size: usize,
    /// Frames per direction.
    pub frames: u64,
    /// guest → host frames per second (netfront tx → netback → host; the
    /// host's consumer looks at each frame in its queue buffer).
    pub tx_fps: f64,
    /// host → guest frames per second (host → netback rx-copy → netfront;
    /// the guest looks at each frame in place in its rx pages,
    /// [`Netfront::recv_with`](xenshare::net::Netfront::recv_with)).
    pub rx_fps: f64,
    /// host → guest frames per second when the guest copies each frame out
    /// of the rx pages into a buffer of its own
    /// ([`Netfront::recv_timeout`](xenshare::net::Netfront::recv_timeout),
    /// buffers recycled).
    pub rx_copy_fps: f64,
}

impl Throughput {
    /// guest → host payload MB/s.
    pub fn tx_mbps(&self) -> f64 {
        self.tx_fps * self.frame_size as f64 / 1e6
    }

    /// host → guest payload MB/s.
    pub fn rx_mbps(&self) -> f64 {
        self.rx_fps * self.frame_size as f64 / 1e6
    }
}

/// rx pages the host may be ahead of the guest by, in the host's queue: as
/// many as the tx ring lets the guest be ahead of the back end (256 slots).
const RX_WINDOW_SLOTS: usize = 256;

/// How the guest takes frames in an rx run of [`throughput`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum RxConsumer {
    /// `recv_with`: looks at the frame in the rx pages.
    InPlace,
    /// `recv_timeout`: copies it out (buffer recycled).
    Copy,
}

/// Pushes `frames` frames of `frame_size` bytes each way through netfront
/// and netback on the emulator (in-memory host, no TCP/IP stack). Both
/// directions have the same shape, three threads: a producer that copies
/// each frame in (tx: the guest writing granted pages; rx: a host thread
/// writing the host queue's buffers), the back end's thread doing the
/// grant copy in between, and a consumer that looks at each frame where it
/// landed without copying it again (tx: a host thread, in the queue
/// buffer; rx: the guest, in its rx pages). Each producer can be at most
/// about 256 pages ahead (tx: the tx ring; rx: the host queue holds that
/// many pages' worth of frames, the sender waiting while it is full). The
/// rx run is then repeated with the guest copying each frame out
/// ([`Throughput::rx_copy_fps`]).
pub fn throughput(frame_size: usize, frames: u64) -> Result<Throughput, String> {
    use xenshare::net::{slots_for, Netfront, MAX_FRAME};
    if !(14..=MAX_FRAME).contains(&frame_size) {
        return Err(format!("frame size must be 14..={MAX_FRAME}"));
    }
    let timeout = Duration::from_secs(10);
    let w = NetWorld::new(net_guest_config()).map_err(|e| e.to_string())?;
    create_device(
        &mut w.client(&w.dom0),
        &DeviceSpec {
            devtype: DEVTYPE,
            devid: 0,
            frontend: w.guest.id(),
            backend: w.dom0.id(),
            front_keys: &[("mac", "00:16:3e:58:53:03")],
            back_keys: &[],
        },
    )
    .map_err(|e| e.to_string())?;
    // Room for every frame of the run (up to 256 MiB of them): a host
    // thread that falls behind under load makes the run slower, it does not
    // lose frames (the queue drops when full, as a NIC does).
    let cap = usize::try_from(frames)
        .unwrap_or(usize::MAX)
        .min((256 << 20) / frame_size)
        .max(4096);
    let rx_window = (RX_WINDOW_SLOTS / slots_for(frame_size)).max(2);
    let (io, host) = super::host::mem_link_caps(cap, rx_window);
    let evt = |d: &xenshare_sim::Domain| d.evtchn().map_err(|e| e.to_string());
    let bt = spawn_backend(
        w.dom0.importer().clone(),
        evt(&w.dom0)?,
        w.client(&w.dom0),
        w.guest.id(),
        0,
        io,
        timeout,
    );
    let mut xs = w.client(&w.guest);
    let mut nf = Netfront::connect(
        w.guest.exporter(),
        &evt(&w.guest)?,
        &mut xs,
        0,
        NetfrontConfig::default(),
        timeout,
    )
    .map_err(|e| format!("netfront: {e}"))?;
    let frame: Arc<[u8]> = (0..frame_size).map(|i| i as u8).collect();
    let h2 = host.clone();
    let sink = std::thread::spawn(move || {
        (0..frames).all(|_| h2.recv_timeout_with(timeout, |f| f.len()).is_some())
    });
    let start = StdInstant::now();
    for _ in 0..frames {
        nf.send_timeout(&frame, timeout)
            .map_err(|e| format!("send: {e}"))?;
    }
    if !sink.join().unwrap_or(false) {
        return Err("the host lost frames".into());
    }
    let tx = start.elapsed();
    let mut rx_run = |consumer: RxConsumer| -> Result<Duration, String> {
        // The feeder starts when the clock does (as the tx sink has nothing
        // to do before the guest sends).
        let go = Arc::new(std::sync::Barrier::new(2));
        let feeder = {
            let (host, frame, go) = (host.clone(), frame.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                (0..frames).all(|_| host.send_timeout(&frame, timeout))
            })
        };
        go.wait();
        let start = StdInstant::now();
        for _ in 0..frames {
            let got = match consumer {
                RxConsumer::InPlace => nf.recv_with(timeout, |f| f.len()),
                RxConsumer::Copy => nf.recv_timeout(timeout).map(|f| {
                    f.map(|f| {
                        let n = f.len();
                        nf.recycle_frame(f);
                        n
                    })
                }),
            };
            match got {
                Ok(Some(n)) if n == frame_size => {}
                other => return Err(format!("receive: {other:?}")),
            }
        }
        let t = start.elapsed();
        if !feeder.join().unwrap_or(false) {
            return Err("the guest stopped taking frames".into());
        }
        Ok(t)
    };
    let rx = rx_run(RxConsumer::InPlace)?;
    let rx_copy = rx_run(RxConsumer::Copy)?;
    nf.close(&mut xs, timeout).map_err(|e| e.to_string())?;
    bt.join().map_err(|e| e.to_string())?;
    let fps = |d: Duration| frames as f64 / d.as_secs_f64().max(1e-9);
    Ok(Throughput {
        frame_size,
        frames,
        tx_fps: fps(tx),
        rx_fps: fps(rx),
        rx_copy_fps: fps(rx_copy),
    })
}
