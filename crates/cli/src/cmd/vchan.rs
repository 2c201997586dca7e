//! `xenshare vchan listen|connect`: pipe stdin/stdout over a vchan between
//! two domain processes of a host daemon (like vchan-socket-proxy).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use xenshare::store::{Client, UnixTransport};
use xenshare::vchan::{client_init, server_init, Vchan, VchanError};
use xenshare::DomId;
use xenshare_host::RemoteDomain;

/// `xenshare vchan` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VchanCmd {
    /// Serve a vchan at PATH for domain D, piping stdin/stdout through it.
    Listen(VchanArgs),
    /// Connect to domain D's vchan at PATH, piping stdin/stdout through it.
    Connect(VchanArgs),
}

/// Options of both sides.
#[derive(Debug, clap::Args)]
pub struct VchanArgs {
    /// The peer domain.
    #[arg(long, value_name = "D")]
    pub domid: u16,
    /// The xenstore path of the vchan.
    #[arg(long, value_name = "P")]
    pub path: String,
    /// This process's domain id, chosen (needs the host's privilege; default:
    /// the domain `xenshare exec` created, else one the host assigns).
    #[arg(long, value_name = "N")]
    pub my_domid: Option<u16>,
    /// The host daemon's socket (default: $XENSHARE_HOST).
    #[arg(long, value_name = "PATH")]
    pub host: Option<PathBuf>,
    /// connect: keep retrying this many seconds while the server is not there yet.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    /// Ring size in bytes (listen side).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 16)]
    pub ring: usize,
}

/// Runs a subcommand.
pub fn run(c: VchanCmd) -> Result<(), String> {
    let (listen, a) = match c {
        VchanCmd::Listen(a) => (true, a),
        VchanCmd::Connect(a) => (false, a),
    };
    let host = super::host::host_path(a.host.clone())?;
    // A chosen id (needs the host's privilege), else the domain
    // `xenshare exec` created for us, else a new one the host assigns.
    let dom = match a.my_domid {
        Some(d) => RemoteDomain::join(&host, Some(DomId(d))),
        None => match RemoteDomain::attach_inherited() {
            Ok(Some(d)) => Ok(d),
            Ok(None) => RemoteDomain::join(&host, None),
            Err(e) => Err(e),
        },
    }
    .map_err(|e| e.to_string())?;
    let xs_path = dom.xenstore_path().to_path_buf();
    let mut xs = Client::new(
        UnixTransport::connect(&xs_path)
            .map_err(|e| format!("cannot reach xenstored at {}: {e}", xs_path.display()))?,
    );
    let evt = dom.evtchn().map_err(|e| e.to_string())?;
    let peer = DomId(a.domid);
    if listen {
        let mut v = server_init(dom.exporter(), &evt, &mut xs, peer, &a.path, a.ring, a.ring)
            .map_err(|e| format!("cannot serve a vchan at {}: {e}", a.path))?;
        // Wait for the client.
        while !v.is_connected() {
            if !v.is_open() {
                return Err("the client went away".into());
            }
            let _ = v.wait(Some(Duration::from_millis(100)));
        }
        pump(&mut v)
    } else {
        let deadline = Instant::now() + Duration::from_secs(a.wait);
        let mut v = loop {
            match client_init(dom.importer(), &evt, &mut xs, peer, &a.path) {
                Ok(v) => break v,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(format!(
                        "cannot connect to domain {}'s vchan at {}: {e}",
                        a.domid, a.path
                    ))
                }
            }
        };
        pump(&mut v)
    }
}

/// Copies stdin to the vchan and the vchan to stdout. When stdin ends after
/// sending data, the vchan is closed once the peer has read it all; a side
/// that sent nothing (stdin empty) just reads until the peer closes.
fn pump<S: xenshare::vchan::VchanSide, E: xenshare::platform::EventChannels>(
    v: &mut Vchan<S, E>,
) -> Result<(), String> {
    v.set_blocking(false);
    let stdin_handle = std::io::stdin();
    let stdin_fd = stdin_handle.as_fd();
    let mut stdin = stdin_handle.lock();
    let mut stdout = std::io::stdout().lock();
    let mut inbuf = vec![0u8; 1 << 16];
    let mut sent_any = false;
    let mut stdin_open = true;
    let (mut pending, mut off) = (0usize, 0usize);
    let mut out = vec![0u8; 1 << 16];
    let err = |e: VchanError| format!("vchan: {e}");
    loop {
        let mut progress = false;
        // vchan -> stdout
        loop {
            let n = match v.read(&mut out) {
                Ok(n) => n,
                Err(VchanError::Closed) => 0,
                Err(e) => return Err(err(e)),
            };
            if n == 0 {
                break;
            }
            stdout
                .write_all(&out[..n])
                .map_err(|e| format!("stdout: {e}"))?;
            progress = true;
        }
        // stdin -> vchan
        if pending > off {
            match v.write(&inbuf[off..pending]) {
                Ok(n) => {
                    off += n;
                    progress |= n > 0;
                }
                Err(VchanError::Closed) => return Ok(()),
                Err(e) => return Err(err(e)),
            }
        } else if stdin_open {
            let mut fds = [PollFd::new(&stdin_fd, PollFlags::IN)];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let ready = rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(0);
            if ready > 0 {
                let n = stdin.read(&mut inbuf).map_err(|e| format!("stdin: {e}"))?;
                if n == 0 && !sent_any {
                    stdin_open = false;
                } else if n == 0 {
                    // Wait until the peer has drained what we wrote, then close.
                    while v.is_open() && v.buffer_space().map_err(err)? < v.write_ring_size() {
                        let _ = v.wait(Some(Duration::from_millis(20)));
                    }
                    stdout.flush().map_err(|e| format!("stdout: {e}"))?;
                    v.close();
                    return Ok(());
                }
                pending = n;
                off = 0;
                sent_any |= n > 0;
                progress = true;
            }
        }
        if !v.is_open() {
            // Drain what is left, then stop.
            while let Ok(n) = v.read(&mut out) {
                if n == 0 {
                    break;
                }
                stdout
                    .write_all(&out[..n])
                    .map_err(|e| format!("stdout: {e}"))?;
            }
            stdout.flush().map_err(|e| format!("stdout: {e}"))?;
            return Ok(());
        }
        if !progress {
            stdout.flush().map_err(|e| format!("stdout: {e}"))?;
            let _ = v.wait(Some(Duration::from_millis(5)));
        }
    }
}
