//! The guest's TCP/IP stack: smoltcp over a netfront.
//!
//! [`NetfrontDevice`] is a smoltcp [`Device`]: a receive token owns a frame
//! the netfront already copied out of revoked pages; a transmit token builds
//! the frame in a private buffer and hands it to [`Netfront::send`]. A
//! netfront error that breaks the device is kept and stops the device (no
//! further tokens), so the guest loop can report it.
//!
//! [`Guest`] is a minimal guest: one IPv4 address, ICMP echo answered by
//! smoltcp's interface itself, and a TCP echo service on a port with a few
//! sockets listening so several clients can connect in turn.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use xenshare::net::{NetError, Netfront};
use xenshare::platform::{EventChannels, GrantBackend};

/// Ethernet MTU as smoltcp counts it (the whole frame, header included).
pub const ETHERNET_MTU: usize = 1514;

/// A smoltcp device over a netfront.
pub struct NetfrontDevice<B: GrantBackend, E: EventChannels> {
    nf: Netfront<B, E>,
    error: Option<NetError>,
    tx_dropped: u64,
}

impl<B: GrantBackend, E: EventChannels> std::fmt::Debug for NetfrontDevice<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetfrontDevice")
            .field("nf", &self.nf)
            .field("error", &self.error)
            .finish()
    }
}

impl<B: GrantBackend, E: EventChannels> NetfrontDevice<B, E> {
    /// Wraps a connected netfront.
    pub fn new(nf: Netfront<B, E>) -> Self {
        Self {
            nf,
            error: None,
            tx_dropped: 0,
        }
    }

    /// The netfront.
    pub fn netfront(&mut self) -> &mut Netfront<B, E> {
        &mut self.nf
    }

    /// The error that stopped the device, if any.
    pub fn error(&self) -> Option<&NetError> {
        self.error.as_ref()
    }

    /// Frames smoltcp built that the ring had no room for (smoltcp
    /// retransmits what matters).
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }

    /// Gives the netfront back.
    pub fn into_netfront(self) -> Netfront<B, E> {
        self.nf
    }

    fn note(&mut self, r: Result<(), NetError>) {
        match r {
            Ok(()) => {}
            Err(e) if e.is_transient() => self.tx_dropped += 1,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
            }
        }
    }
}

/// A received frame.
#[derive(Debug)]
pub struct FrameRx(Vec<u8>);

impl phy::RxToken for FrameRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Room for one frame on the tx ring.
pub struct FrameTx<'a, B: GrantBackend, E: EventChannels>(&'a mut NetfrontDevice<B, E>);

impl<B: GrantBackend, E: EventChannels> phy::TxToken for FrameTx<'_, B, E> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        let sent = self.0.nf.send(&buf);
        self.0.note(sent);
        r
    }
}

impl<B: GrantBackend, E: EventChannels> Device for NetfrontDevice<B, E> {
    type RxToken<'a>
        = FrameRx
    where
        Self: 'a;
    type TxToken<'a>
        = FrameTx<'a, B, E>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(FrameRx, FrameTx<'_, B, E>)> {
        if self.error.is_some() {
            return None;
        }
        match self.nf.recv() {
            Ok(Some(f)) => Some((FrameRx(f), FrameTx(self))),
            Ok(None) => None,
            Err(e) => {
                self.note(Err(e));
                None
            }
        }
    }

    fn transmit(&mut self, _: Instant) -> Option<FrameTx<'_, B, E>> {
        if self.error.is_some() {
            return None;
        }
        if self.nf.tx_room() == 0 {
            let r = self.nf.poll();
            self.note(r);
            if self.nf.tx_room() == 0 {
                return None;
            }
        }
        Some(FrameTx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_MTU;
        caps
    }
}

/// What the guest serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestConfig {
    /// The guest's IPv4 address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// TCP echo port.
    pub echo_port: u16,
    /// TCP sockets listening on the echo port.
    pub echo_sockets: usize,
}

impl GuestConfig {
    /// A guest at `addr`/24 with an echo service on port 7.
    pub fn new(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 24,
            echo_port: 7,
            echo_sockets: 4,
        }
    }
}

/// Socket buffer size of the echo sockets.
const TCP_BUF: usize = 64 * 1024;

/// A guest: netfront + smoltcp + TCP echo server.
pub struct Guest<B: GrantBackend, E: EventChannels> {
    dev: NetfrontDevice<B, E>,
    iface: Interface,
    sockets: SocketSet<'static>,
    echo: Vec<SocketHandle>,
    cfg: GuestConfig,
    buf: Vec<u8>,
}

impl<B: GrantBackend, E: EventChannels> std::fmt::Debug for Guest<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("dev", &self.dev)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<B: GrantBackend, E: EventChannels> Guest<B, E> {
    /// Brings the guest's interface up on `nf` (MAC from the netfront).
    pub fn new(nf: Netfront<B, E>, cfg: GuestConfig) -> Self {
        let mac = nf.mac();
        let mut dev = NetfrontDevice::new(nf);
        let hw = HardwareAddress::Ethernet(EthernetAddress(mac.0));
        let mut iface = Interface::new(Config::new(hw), &mut dev, Instant::now());
        let o = cfg.addr.octets();
        iface.update_ip_addrs(|a| {
            // One address on a fresh interface always fits.
            let _ = a.push(IpCidr::new(
                Ipv4Address::new(o[0], o[1], o[2], o[3]).into(),
                cfg.prefix_len,
            ));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let echo = (0..cfg.echo_sockets.max(1))
            .map(|_| {
                let s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; TCP_BUF]),
                    tcp::SocketBuffer::new(vec![0; TCP_BUF]),
                );
                sockets.add(s)
            })
            .collect();
        Self {
            dev,
            iface,
            sockets,
            echo,
            cfg,
            buf: vec![0; TCP_BUF],
        }
    }

    /// The device (and through it the netfront).
    pub fn device(&mut self) -> &mut NetfrontDevice<B, E> {
        &mut self.dev
    }

    /// Puts every closed echo socket (back) into Listen. Done before each
    /// poll: smoltcp answers a SYN for a port nobody listens on with a RST,
    /// and one poll may take in many frames.
    fn listen_all(&mut self) {
        for &h in &self.echo {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                // A listen on a closed socket cannot fail for a valid port.
                let _ = s.listen(self.cfg.echo_port);
            }
        }
    }

    /// One round: frames in and out, echo service. Returns how long the
    /// stack may sleep, or the error that broke the netfront.
    pub fn poll_once(&mut self) -> Result<Duration, NetError> {
        self.listen_all();
        let now = Instant::now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for &h in &self.echo {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() && s.send_queue() < s.send_capacity() {
                let room = (s.send_capacity() - s.send_queue()).min(self.buf.len());
                let n = s.recv_slice(&mut self.buf[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                // Room was checked: the whole slice is queued.
                let _ = s.send_slice(&self.buf[..n]);
            }
            if s.state() == tcp::State::CloseWait && s.send_queue() == 0 && !s.can_recv() {
                s.close();
            }
        }
        self.listen_all();
        // Echoed data goes out in this round, not the next.
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        if let Some(e) = self.dev.error() {
            return Err(e.clone());
        }
        let delay = self
            .iface
            .poll_delay(Instant::now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_millis(50));
        Ok(delay.min(Duration::from_millis(50)))
    }

    /// Serves until `stop` is set or the netfront breaks.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), NetError> {
        while !stop.load(Ordering::Acquire) {
            let delay = self.poll_once()?;
            if !delay.is_zero() {
                self.dev.netfront().wait(Some(delay))?;
            }
        }
        Ok(())
    }

    /// Takes the guest apart, giving the netfront back.
    pub fn into_netfront(self) -> Netfront<B, E> {
        self.dev.into_netfront()
    }
}
