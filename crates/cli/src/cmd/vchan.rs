//! `xenshare vchan listen|connect|proxy`: carry a byte stream over a vchan
//! between two domain processes of a host daemon — stdin/stdout, or UNIX
//! socket connections the way Xen's `vchan-socket-proxy` does.
//!
//! # The pump
//!
//! One thread, one `poll`: the vchan's event-channel wake-up fd, the input
//! and the output, all non-blocking. Two bounded buffers (64 KiB each) sit
//! between the local side and the vchan, so the pump never blocks writing
//! the output while it is not reading the input (an echo that feeds stdout
//! back into stdin cannot deadlock), and nothing a peer sends is buffered
//! beyond them: the vchan ring is simply not read while the output is
//! full.
//!
//! # When a stream ends
//!
//! A vchan has no half-close. When the input ends, everything read from it
//! is written into the vchan, then the pump keeps *reading* the vchan:
//! - by default until the peer closes the vchan (no reply is cut short);
//! - with `--linger SECS` for at most SECS more seconds, then it closes
//!   (socat's `-t`; `--linger 0` closes as soon as the input is delivered
//!   into the ring, which the peer can still drain after the close).
//!
//! It also stops when the peer closes the vchan (after writing out what the
//! peer sent) and when the output is gone (a reader that went away, a
//! socket peer that closed both directions).

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::OFlags;
use rustix::io::Errno;
use xenshare::error::DeviceError;
use xenshare::platform::EventChannels;
use xenshare::store::{Client, UnixTransport};
use xenshare::vchan::{client_init, server_init, Vchan, VchanError, VchanSide};
use xenshare::DomId;
use xenshare_host::{RemoteDomain, RemoteEvtchn};

/// The help text's account of how a stream ends.
const ENDING: &str = "\
When stdin ends, what was read is written into the vchan, then the vchan is
still read (a vchan has no half-close): by default until the peer closes it,
with --linger SECS for at most SECS more seconds (as socat's -t). For a
one-way transfer use --linger 0 on the sending side: it closes once stdin is
in the ring, and the peer still drains the ring after the close. The command
also ends when the peer closes the vchan (after writing out what it sent) or
when stdout's reader goes away.";

/// `xenshare vchan` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VchanCmd {
    /// Serve a vchan at PATH for domain D, piping stdin/stdout through it.
    #[command(after_help = ENDING)]
    Listen(VchanArgs),
    /// Connect to domain D's vchan at PATH, piping stdin/stdout through it.
    #[command(after_help = ENDING)]
    Connect(VchanArgs),
    /// A drop-in for Xen's vchan-socket-proxy: the same arguments, modes
    /// and UNIX socket handling.
    #[command(after_help = PROXY_HELP)]
    Proxy(ProxyArgs),
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
    /// connect: keep retrying this many seconds while the server is not there yet.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    /// Ring size in bytes (listen side).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 16)]
    pub ring: usize,
    #[command(flatten)]
    pub common: Common,
}

/// Options shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// This process's domain id, chosen (needs the host's privilege; default:
    /// the domain `xenshare exec` created, else one the host assigns).
    #[arg(long, value_name = "N")]
    pub my_domid: Option<u16>,
    /// The host daemon's socket (default: $XENSHARE_HOST).
    #[arg(long, value_name = "PATH")]
    pub host: Option<PathBuf>,
    /// After the input ends, keep reading the vchan at most SECS seconds,
    /// then close (default: until the peer closes).
    #[arg(long, value_name = "SECS")]
    pub linger: Option<u64>,
}

const PROXY_HELP: &str = "\
client (default): connect to domain DOMID's vchan at NODEPATH. SOCKET is
  a path: listen on a UNIX socket there and open a new vchan connection for
          each accepted connection, one after the other, until killed;
  a number: an already listening socket's file descriptor, used the same way;
  -:      use stdin/stdout for one vchan connection.
server: serve a vchan at NODEPATH for domain DOMID. SOCKET is
  a path: for each vchan client, connect to the UNIX socket there; serve the
          next client when the connection ends, until killed;
  a number: a connected file descriptor, for one vchan connection;
  -:      use stdin/stdout for one vchan connection.
A connection ends when the vchan peer closes, when the socket peer closes both
directions, or after the input ended: see --linger (vchan-socket-proxy closes
the vchan as soon as the input ends; this one, by default, waits for the peer).";

/// Which end of the vchan the proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Connect to a vchan server.
    Client,
    /// Serve a vchan.
    Server,
}

/// Options of `xenshare vchan proxy` (vchan-socket-proxy's, plus ours).
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Vchan role.
    #[arg(short, long, value_enum, default_value_t = Mode::Client)]
    pub mode: Mode,
    /// A XenStore path to write "running" to once set up.
    #[arg(short, long, value_name = "PATH")]
    pub state_path: Option<String>,
    /// Log connections on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// client: give up on a connection when the server is not there after
    /// SECS seconds (default: wait for it).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    /// Ring size in bytes (server mode).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 16)]
    pub ring: usize,
    #[command(flatten)]
    pub common: Common,
    /// The peer domain.
    pub domid: u16,
    /// The vchan's XenStore path.
    pub nodepath: String,
    /// `-`, a file descriptor number or a UNIX socket path (see below).
    pub socket: String,
}

/// One domain's handles: the domain, its XenStore client, an event
/// channel handle for the vchans.
struct Dom {
    dom: RemoteDomain,
    xs: Client<UnixTransport>,
    evt: Arc<RemoteEvtchn>,
}

impl Dom {
    fn open(c: &Common) -> Result<Dom, String> {
        let host = || super::host::host_path(c.host.clone());
        // A chosen id (needs the host's privilege), else the domain
        // `xenshare exec` created for us, else a new one the host assigns.
        let dom = match c.my_domid {
            Some(d) => RemoteDomain::join(&host()?, Some(DomId(d))),
            None => match RemoteDomain::attach_inherited() {
                Ok(Some(d)) => Ok(d),
                Ok(None) => RemoteDomain::join(&host()?, None),
                Err(e) => Err(e),
            },
        }
        .map_err(|e| e.to_string())?;
        let xs_path = dom.xenstore_path().to_path_buf();
        let xs = Client::new(
            UnixTransport::connect(&xs_path)
                .map_err(|e| format!("cannot reach xenstored at {}: {e}", xs_path.display()))?,
        );
        let evt = dom.evtchn().map_err(|e| e.to_string())?;
        Ok(Dom { dom, xs, evt })
    }

    /// Serves a vchan at `path` for `peer` and waits (event-driven, no
    /// deadline: a server waits for its client) until a client connects;
    /// `Ok(None)` if it closed again before we saw it connected.
    ///
    /// The XenStore keys are removed as soon as the client is there: they
    /// are only needed to connect, and a later client must never find
    /// (and map) a server that is already in use or closed.
    fn serve(
        &mut self,
        peer: DomId,
        path: &str,
        ring: usize,
    ) -> Result<Option<Vchan<impl VchanSide, RemoteEvtchn>>, String> {
        let v = self.publish(peer, path, ring)?;
        self.wait_client(v)
    }

    /// Creates a vchan server at `path` for `peer` (does not wait).
    fn publish(
        &mut self,
        peer: DomId,
        path: &str,
        ring: usize,
    ) -> Result<Vchan<impl VchanSide, RemoteEvtchn>, String> {
        server_init(
            self.dom.exporter(),
            &self.evt,
            &mut self.xs,
            peer,
            path,
            ring,
            ring,
        )
        .map_err(|e| format!("cannot serve a vchan at {path}: {e}"))
    }

    /// The waiting half of [`Dom::serve`].
    fn wait_client<S: VchanSide>(
        &mut self,
        v: Vchan<S, RemoteEvtchn>,
    ) -> Result<Option<Vchan<S, RemoteEvtchn>>, String> {
        let connected = loop {
            if v.is_connected() {
                break true;
            }
            if !v.is_open() {
                break false;
            }
            xenshare_sim::evtchn::poll_readable(self.evt.wake_fd(), None)
                .map_err(|e| format!("poll: {e}"))?;
            v.wait(Some(Duration::ZERO))
                .map_err(|e| format!("vchan: {e}"))?;
        };
        if let Some(p) = v.xs_path() {
            let _ = self.xs.rm(p);
        }
        Ok(connected.then_some(v))
    }

    /// Connects to `peer`'s vchan at `path`, waiting for it to appear up to
    /// `wait` (`None`: for ever) with a XenStore watch on the path.
    fn connect(
        &mut self,
        peer: DomId,
        path: &str,
        wait: Option<Duration>,
    ) -> Result<Vchan<impl VchanSide, RemoteEvtchn>, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("cannot connect to domain {}'s vchan at {path}: {e}", peer.0)
        };
        let deadline = wait.map(|w| Instant::now() + w);
        let mut watching = false;
        let res = loop {
            let err = match client_init(self.dom.importer(), &self.evt, &mut self.xs, peer, path) {
                Ok(v) => break Ok(v),
                Err(e) => e,
            };
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => break Err(fail(&err)),
                },
            };
            if !watching {
                // Registered after a failed try: the watch fires once
                // right away, so a server that appeared in between is seen.
                if let Err(e) = self.xs.watch(path, b"xenshare-vchan") {
                    break Err(fail(&e));
                }
                watching = true;
            }
            if let Err(e) = self.xs.next_event(left) {
                break Err(fail(&e));
            }
        };
        if watching {
            let _ = self.xs.unwatch(path, b"xenshare-vchan");
            while self.xs.pending_event().is_some() {}
        }
        res
    }

    /// Closes a served vchan and removes its XenStore keys (if still
    /// there), so no later client finds a stale server.
    fn close_served<S: VchanSide>(&mut self, mut v: Vchan<S, RemoteEvtchn>) {
        let path = v.xs_path().map(str::to_owned);
        v.close();
        if let Some(p) = path {
            let _ = self.xs.rm(&p);
        }
    }
}

/// Runs a subcommand.
pub fn run(c: VchanCmd) -> Result<(), String> {
    let (listen, a) = match c {
        VchanCmd::Listen(a) => (true, a),
        VchanCmd::Connect(a) => (false, a),
        VchanCmd::Proxy(p) => return proxy(p),
    };
    let mut d = Dom::open(&a.common)?;
    let peer = DomId(a.domid);
    let linger = a.common.linger.map(Duration::from_secs);
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let io = Io::new(stdin.as_fd(), stdout.as_fd());
    if listen {
        let mut v = d
            .serve(peer, &a.path, a.ring)?
            .ok_or("the client went away")?;
        let r = pump(&mut v, d.evt.wake_fd(), &io, linger);
        d.close_served(v);
        r.map(drop)
    } else {
        let mut v = d.connect(peer, &a.path, Some(Duration::from_secs(a.wait)))?;
        pump(&mut v, d.evt.wake_fd(), &io, linger).map(drop)
    }
}

/// What `SOCKET` names.
enum Endpoint {
    Stdio,
    Fd(OwnedFd),
    Path(PathBuf),
}

fn endpoint(s: &str) -> Result<Endpoint, String> {
    if s == "-" {
        return Ok(Endpoint::Stdio);
    }
    if let Ok(n) = s.parse::<RawFd>() {
        if n < 0 {
            return Err(format!("bad file descriptor {n}"));
        }
        // The fd is handed to us by our parent; make sure it is one.
        let flags = rustix::io::fcntl_getfd(
            // SAFETY: only used for this one query; ownership is taken
            // below only if the fd exists.
            unsafe { BorrowedFd::borrow_raw(n) },
        );
        if flags.is_err() {
            return Err(format!("file descriptor {n} is not open"));
        }
        // SAFETY: the fd is open and given to this process to use (the
        // command line names it); nothing else in this process owns it.
        return Ok(Endpoint::Fd(unsafe { OwnedFd::from_raw_fd(n) }));
    }
    Ok(Endpoint::Path(PathBuf::from(s)))
}

/// `xenshare vchan proxy`.
fn proxy(a: ProxyArgs) -> Result<(), String> {
    let mut d = Dom::open(&a.common)?;
    let peer = DomId(a.domid);
    let linger = a.common.linger.map(Duration::from_secs);
    let wait = a.wait.map(Duration::from_secs);
    let ep = endpoint(&a.socket)?;
    let log = |m: &str| {
        if a.verbose {
            eprintln!("xenshare vchan proxy: {m}");
        }
    };
    let state = |d: &mut Dom| -> Result<(), String> {
        match &a.state_path {
            Some(p) => {
                d.xs.write(p, b"running")
                    .map_err(|e| format!("cannot write {p}: {e}"))
            }
            None => Ok(()),
        }
    };
    match a.mode {
        Mode::Client => {
            let listener = match ep {
                Endpoint::Stdio => {
                    state(&mut d)?;
                    let mut v = d.connect(peer, &a.nodepath, wait)?;
                    log("vchan connected");
                    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
                    let end = pump(
                        &mut v,
                        d.evt.wake_fd(),
                        &Io::new(stdin.as_fd(), stdout.as_fd()),
                        linger,
                    )?;
                    log(&format!("connection ended: {end:?}"));
                    return Ok(());
                }
                Endpoint::Fd(fd) => UnixListener::from(fd),
                Endpoint::Path(p) => UnixListener::bind(&p)
                    .map_err(|e| format!("cannot listen on {}: {e}", p.display()))?,
            };
            state(&mut d)?;
            loop {
                let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
                log("socket connection accepted");
                match d.connect(peer, &a.nodepath, wait) {
                    Ok(mut v) => {
                        log("vchan connected");
                        let io = Io::new(conn.as_fd(), conn.as_fd());
                        match pump(&mut v, d.evt.wake_fd(), &io, linger) {
                            Ok(end) => log(&format!("connection ended: {end:?}")),
                            Err(e) => eprintln!("xenshare vchan proxy: {e}"),
                        }
                    }
                    // The socket is closed; the next connection tries again.
                    Err(e) => eprintln!("xenshare vchan proxy: {e}"),
                }
            }
        }
        Mode::Server => match ep {
            Endpoint::Stdio | Endpoint::Fd(_) => {
                let owned = match ep {
                    Endpoint::Fd(fd) => Some(fd),
                    _ => None,
                };
                let v = d.publish(peer, &a.nodepath, a.ring)?;
                state(&mut d)?;
                let mut v = d.wait_client(v)?.ok_or("the client went away")?;
                log("vchan client connected");
                let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
                let io = match &owned {
                    Some(fd) => Io::new(fd.as_fd(), fd.as_fd()),
                    None => Io::new(stdin.as_fd(), stdout.as_fd()),
                };
                let r = pump(&mut v, d.evt.wake_fd(), &io, linger);
                d.close_served(v);
                log(&format!("connection ended: {r:?}"));
                r.map(drop)
            }
            Endpoint::Path(p) => {
                let mut first = true;
                loop {
                    let v = d.publish(peer, &a.nodepath, a.ring)?;
                    if std::mem::take(&mut first) {
                        state(&mut d)?;
                    }
                    let Some(mut v) = d.wait_client(v)? else {
                        log("the vchan client went away before it was seen");
                        continue;
                    };
                    log("vchan client connected");
                    match UnixStream::connect(&p) {
                        Ok(conn) => {
                            let io = Io::new(conn.as_fd(), conn.as_fd());
                            match pump(&mut v, d.evt.wake_fd(), &io, linger) {
                                Ok(end) => log(&format!("connection ended: {end:?}")),
                                Err(e) => eprintln!("xenshare vchan proxy: {e}"),
                            }
                        }
                        Err(e) => {
                            eprintln!(
                                "xenshare vchan proxy: cannot connect to {}: {e}",
                                p.display()
                            )
                        }
                    }
                    d.close_served(v);
                }
            }
        },
    }
}

/// The local side of a stream: an input and an output (the same fd for a
/// socket), made non-blocking for the pump's life.
struct Io<'a> {
    input: BorrowedFd<'a>,
    output: BorrowedFd<'a>,
    _nonblock: [Option<NonBlock<'a>>; 2],
}

impl<'a> Io<'a> {
    fn new(input: BorrowedFd<'a>, output: BorrowedFd<'a>) -> Io<'a> {
        // The output's guard is dropped first, so with one fd for both the
        // input's guard restores the original flags last.
        let i = NonBlock::set(input);
        let o = NonBlock::set(output);
        Io {
            input,
            output,
            _nonblock: [o, i],
        }
    }
}

/// Sets `O_NONBLOCK` on an fd and restores its flags on drop. Terminals
/// are left alone: their open file is shared with the shell, and reads
/// after `poll` said readable do not block anyway.
struct NonBlock<'a> {
    fd: BorrowedFd<'a>,
    old: OFlags,
}

impl<'a> NonBlock<'a> {
    fn set(fd: BorrowedFd<'a>) -> Option<NonBlock<'a>> {
        if fd.is_terminal() {
            return None;
        }
        let old = rustix::fs::fcntl_getfl(fd).ok()?;
        if old.contains(OFlags::NONBLOCK) {
            return None;
        }
        rustix::fs::fcntl_setfl(fd, old | OFlags::NONBLOCK).ok()?;
        Some(NonBlock { fd, old })
    }
}

impl Drop for NonBlock<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::fcntl_setfl(self.fd, self.old);
    }
}

/// A bounded byte buffer between one reader and one writer.
struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new(cap: usize) -> Buf {
        Buf {
            data: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// Free space at the end, compacting first.
    fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }
    fn fill(&mut self, n: usize) {
        self.end += n;
    }
}

/// Why a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The vchan peer closed, and all it sent was written out.
    PeerClosed,
    /// The output went away (reader gone, socket peer closed).
    OutputGone,
    /// The input ended and the linger time passed.
    Lingered,
}

/// Per-buffer size: bounds what the pump holds in each direction.
const BUF: usize = 1 << 16;

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// Carries `io.input` into the vchan and the vchan into `io.output` until
/// the stream ends (see the module documentation), event-driven: one
/// `poll` over `wake` (the vchan's event-channel wake-up fd), the input
/// and the output. Does not close the vchan.
fn pump<S: VchanSide, E: EventChannels>(
    v: &mut Vchan<S, E>,
    wake: BorrowedFd<'_>,
    io: &Io<'_>,
    linger: Option<Duration>,
) -> Result<End, String> {
    let verr = |e: VchanError| format!("vchan: {e}");
    v.set_blocking(false);
    let mut to_vchan = Buf::new(BUF);
    let mut to_output = Buf::new(BUF);
    let mut input_open = true;
    // When the input ended and all of it was in the vchan's ring.
    let mut delivered_at: Option<Instant> = None;
    let mut peer_open = true;
    let mut output_gone = false;
    // A socket is both: when its peer closed both directions, what it sent
    // before is still delivered into the vchan.
    let same_fd = io.input.as_raw_fd() == io.output.as_raw_fd();
    loop {
        // Move bytes until nothing moves; every call here is non-blocking.
        loop {
            let mut moved = false;
            let room = to_output.spare();
            if !room.is_empty() {
                let n = v.read(room).map_err(verr)?;
                to_output.fill(n);
                moved |= n > 0;
            }
            if !to_output.is_empty() && !output_gone {
                match rustix::io::write(io.output, to_output.pending()) {
                    Ok(n) => {
                        to_output.consume(n);
                        moved |= n > 0;
                    }
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    // EPIPE and the like: nobody reads the output any more.
                    Err(_) => {
                        output_gone = true;
                        moved = true;
                    }
                }
            }
            if output_gone {
                to_output.consume(to_output.pending().len());
            }
            if input_open && peer_open {
                let room = to_vchan.spare();
                if !room.is_empty() {
                    match rustix::io::read(io.input, room) {
                        Ok(0) => {
                            input_open = false;
                            moved = true;
                        }
                        Ok(n) => {
                            to_vchan.fill(n);
                            moved = true;
                        }
                        Err(Errno::AGAIN | Errno::INTR) => {}
                        Err(e) => return Err(format!("input: {e}")),
                    }
                }
            }
            if !to_vchan.is_empty() && peer_open {
                match v.write(to_vchan.pending()) {
                    Ok(n) => {
                        to_vchan.consume(n);
                        moved |= n > 0;
                    }
                    // The peer closed: what it did not take is dropped.
                    Err(VchanError::Core(DeviceError::Closed)) => peer_open = false,
                    Err(e) => return Err(verr(e)),
                }
            }
            if !moved {
                break;
            }
        }
        peer_open &= v.is_open();
        if !peer_open && v.data_ready().map_err(verr)? == 0 && to_output.is_empty() {
            return Ok(End::PeerClosed);
        }
        let delivered = !input_open && to_vchan.is_empty();
        if delivered && delivered_at.is_none() {
            delivered_at = Some(Instant::now());
        }
        if output_gone && (delivered || !same_fd || !peer_open) {
            return Ok(End::OutputGone);
        }
        let left = match (delivered_at, linger) {
            (Some(at), Some(l)) => match (at + l).checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(End::Lingered),
            },
            _ => None,
        };
        // Sleep until the vchan, the input or the output can move. The
        // output is always watched for hang-ups (poll reports them even
        // without asked-for events).
        let want_in = input_open && peer_open && !to_vchan.spare().is_empty();
        let out_events = if to_output.is_empty() {
            PollFlags::empty()
        } else {
            PollFlags::OUT
        };
        let mut fds = [
            PollFd::new(&wake, PollFlags::IN),
            PollFd::new(&io.output, out_events),
            PollFd::new(&io.input, PollFlags::IN),
        ];
        // The output leaves the set once gone (it would report the hang-up
        // again and again), the input while there is nothing to read.
        let watched = match (output_gone, want_in) {
            (false, true) => &mut fds[..],
            (false, false) => &mut fds[..2],
            (true, true) => {
                fds.swap(1, 2);
                &mut fds[..2]
            }
            (true, false) => &mut fds[..1],
        };
        let ts = left.map(timespec);
        match rustix::event::poll(watched, ts.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        if !output_gone && fds[1].revents().intersects(PollFlags::HUP | PollFlags::ERR) {
            output_gone = true;
        }
        if fds[0].revents().contains(PollFlags::IN) {
            // Consume the wake-up and re-enable the port.
            v.wait(Some(Duration::ZERO)).map_err(verr)?;
        }
    }
}
