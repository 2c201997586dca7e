//! The host side of the PV console, and a guest-side helper.
//!
//! The console protocol (rings, discovery, handshake) is
//! [`xenshare::console`]; its back end moves bytes to and from a host
//! terminal through the [`ConsoleIo`] trait. This module implements that
//! trait three ways:
//!
//! * [`StdioIo`] — this process's stdin / stdout, optionally in raw mode,
//!   with Ctrl-] to detach (as `xl console`);
//! * [`PtyIo`] — a fresh pseudo-terminal pair whose slave path a user can
//!   open with `screen` or `minicom` (as xenconsoled's per-guest ptys);
//! * [`MemoryTerminal`] / [`MemoryIo`] — an in-memory terminal for tests,
//!   with optional back-pressure;
//! * [`PrefixedIo`] — output with a prefix on every line and an
//!   expect-style input script, for demos.
//!
//! On the guest side, [`GuestConsole`] wraps a [`ConsoleFront`] with what a
//! tiny kernel needs: `print` (LF → CRLF), a line editor with echo
//! ([`GuestConsole::read_line`]), and `std::io::{Read, Write}`.
//! [`demo_shell`] is the "kernel" of the emulated demo guest: a boot banner
//! and a four-command shell over the PV console. [`sim`] boots such a guest
//! on the emulator, with the primary console wired as a toolstack does.

use std::borrow::BorrowMut;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use xenshare::console::{ConsoleError, ConsoleFront, ConsolePage};
use xenshare::error::DeviceError;
use xenshare::platform::EventChannels;

pub use xenshare::console::{ConsoleIo, HostError};

pub mod session;
pub mod sim;

/// The byte that detaches an attached terminal (Ctrl-], as `xl console`).
pub const DETACH_BYTE: u8 = 0x1d;

fn os(e: Errno) -> HostError {
    HostError::Os(e.raw_os_error())
}

fn io_err(e: io::Error) -> HostError {
    HostError::Os(e.raw_os_error().unwrap_or(0))
}

// ---------------------------------------------------------------------------
// In-memory terminal
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct MemState {
    input: VecDeque<u8>,
    output: Vec<u8>,
    closed: bool,
    accept_limit: Option<usize>,
}

/// An in-memory terminal for tests: type input into it, read what the guest
/// printed. Clones share the same terminal.
#[derive(Debug, Clone, Default)]
pub struct MemoryTerminal {
    inner: Arc<(Mutex<MemState>, Condvar)>,
}

impl MemoryTerminal {
    /// An empty terminal.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A [`ConsoleIo`] for a back end, attached to this terminal.
    pub fn io(&self) -> MemoryIo {
        MemoryIo(self.clone())
    }

    /// Queues keyboard input.
    pub fn type_input(&self, bytes: &[u8]) {
        self.state().input.extend(bytes.iter().copied());
    }

    /// Input typed but not yet taken by a back end.
    pub fn pending_input(&self) -> usize {
        self.state().input.len()
    }

    /// Everything the guest printed so far.
    pub fn output(&self) -> Vec<u8> {
        self.state().output.clone()
    }

    /// Takes (and clears) what the guest printed so far.
    pub fn take_output(&self) -> Vec<u8> {
        std::mem::take(&mut self.state().output)
    }

    /// Limits how many bytes each delivery accepts (`Some(0)`: a stalled
    /// terminal); `None` accepts everything.
    pub fn set_accept_limit(&self, limit: Option<usize>) {
        self.state().accept_limit = limit;
    }

    /// Makes the back end see a closed terminal.
    pub fn close(&self) {
        self.state().closed = true;
    }

    /// Waits up to `timeout` until `done` holds for the output; returns
    /// whether it did.
    pub fn wait_output(&self, timeout: Duration, mut done: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        loop {
            if done(&st.output) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .inner
                .1
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// The back end's view of a [`MemoryTerminal`].
#[derive(Debug, Clone)]
pub struct MemoryIo(MemoryTerminal);

impl ConsoleIo for MemoryIo {
    fn write_output(&mut self, data: &[u8]) -> Result<usize, HostError> {
        let mut st = self.0.state();
        if st.closed {
            return Err(HostError::Closed);
        }
        let n = st.accept_limit.map_or(data.len(), |l| l.min(data.len()));
        st.output.extend_from_slice(&data[..n]);
        drop(st);
        self.0.inner.1.notify_all();
        Ok(n)
    }

    fn read_input(&mut self, buf: &mut [u8]) -> Result<usize, HostError> {
        let mut st = self.0.state();
        if st.closed {
            return Err(HostError::Closed);
        }
        let n = buf.len().min(st.input.len());
        for (dst, src) in buf.iter_mut().zip(st.input.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// stdio
// ---------------------------------------------------------------------------

/// This process's stdin and stdout as a console terminal.
///
/// In raw mode (only applied when stdin is a terminal) keys go to the guest
/// as typed and the guest does the echoing; the previous terminal settings
/// are restored on drop. Ctrl-] ([`DETACH_BYTE`]) returns
/// [`HostError::Detached`].
///
/// End of input is what a terminal session fed from a pipe expects: the
/// guest keeps running and its output keeps coming; once it has been quiet
/// for the linger time ([`StdioIo::with_linger`], default
/// [`StdioIo::LINGER`]) after the end of input — or at the latest
/// [`StdioIo::EOF_DEADLINE`] after it, for a guest that never stops
/// talking — `read_input` returns [`HostError::Closed`] and the session
/// ends. [`StdioIo::input_ended`] tells the two endings apart.
pub struct StdioIo {
    saved: Option<rustix::termios::Termios>,
    /// When stdin reached end of file (a pipe or file that ran out).
    eof_at: Option<Instant>,
    /// When guest output was last written.
    last_output: Instant,
    linger: Duration,
    eof_deadline: Duration,
}

impl std::fmt::Debug for StdioIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioIo")
            .field("raw", &self.saved.is_some())
            .finish()
    }
}

impl StdioIo {
    /// Attaches to stdin / stdout; `raw` puts a terminal stdin in raw mode.
    pub fn new(raw: bool) -> io::Result<Self> {
        let stdin = io::stdin();
        let mut saved = None;
        if raw && rustix::termios::isatty(stdin.as_fd()) {
            let old = rustix::termios::tcgetattr(stdin.as_fd())?;
            let mut t = old.clone();
            t.make_raw();
            rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &t)?;
            saved = Some(old);
        }
        Ok(Self {
            saved,
            eof_at: None,
            last_output: Instant::now(),
            linger: Self::LINGER,
            eof_deadline: Self::EOF_DEADLINE,
        })
    }

    /// How long the guest must be quiet after the end of input before the
    /// session ends, by default.
    pub const LINGER: Duration = Duration::from_secs(1);
    /// The longest a session goes on after the end of input, by default.
    pub const EOF_DEADLINE: Duration = Duration::from_secs(10);

    /// Sets the quiet time after the end of input (`linger`) and the
    /// overall limit after it (`deadline`, at least `linger`).
    pub fn with_linger(mut self, linger: Duration, deadline: Duration) -> Self {
        self.linger = linger;
        self.eof_deadline = deadline.max(linger);
        self
    }

    /// True once stdin reached end of file.
    pub fn input_ended(&self) -> bool {
        self.eof_at.is_some()
    }

    /// Whether the terminal was put in raw mode.
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for StdioIo {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            // Nothing more can be done if the terminal refuses.
            let _ = rustix::termios::tcsetattr(
                io::stdin().as_fd(),
                rustix::termios::OptionalActions::Now,
                &t,
            );
        }
    }
}

impl ConsoleIo for StdioIo {
    fn write_output(&mut self, data: &[u8]) -> Result<usize, HostError> {
        let mut out = io::stdout().lock();
        out.write_all(data).map_err(io_err)?;
        out.flush().map_err(io_err)?;
        if !data.is_empty() {
            self.last_output = Instant::now();
        }
        Ok(data.len())
    }

    fn read_input(&mut self, buf: &mut [u8]) -> Result<usize, HostError> {
        if let Some(eof) = self.eof_at {
            // Input is over; output still flows until the guest is quiet.
            let now = Instant::now();
            let quiet = now.duration_since(self.last_output.max(eof)) >= self.linger;
            if quiet || now.duration_since(eof) >= self.eof_deadline {
                return Err(HostError::Closed);
            }
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let stdin = io::stdin();
        let ready = {
            let mut fds = [rustix::event::PollFd::new(
                &stdin,
                rustix::event::PollFlags::IN,
            )];
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, Some(&zero)) {
                Ok(n) => n > 0,
                Err(Errno::INTR) => false,
                Err(e) => return Err(os(e)),
            }
        };
        if !ready {
            return Ok(0);
        }
        // poll said readable: one read does not block. stdin is not made
        // non-blocking since the shell shares its file description.
        let n = match rustix::io::read(stdin.as_fd(), &mut *buf) {
            Ok(0) => {
                self.eof_at = Some(Instant::now());
                return Ok(0);
            }
            Ok(n) => n,
            Err(Errno::INTR | Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(os(e)),
        };
        if buf[..n].contains(&DETACH_BYTE) {
            return Err(HostError::Detached);
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// pty
// ---------------------------------------------------------------------------

/// A pseudo-terminal for a console: the back end owns the master, the user
/// opens [`PtyIo::path`] (`screen /dev/pts/N`).
///
/// The slave is put in raw mode (the guest echoes) and kept open by this
/// side too, so the master never reports a hang-up between users; output
/// nobody reads stays in the pty buffer, then in the ring (back-pressure).
pub struct PtyIo {
    master: OwnedFd,
    _slave: OwnedFd,
    path: PathBuf,
}

impl std::fmt::Debug for PtyIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtyIo").field("path", &self.path).finish()
    }
}

impl PtyIo {
    /// Opens a new pty pair.
    pub fn open() -> io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut t = rustix::termios::tcgetattr(&slave)?;
        t.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)?;
        let flags = rustix::fs::fcntl_getfl(&master)?;
        rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
        Ok(Self {
            master,
            _slave: slave,
            path,
        })
    }

    /// The slave device a user opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Output written to the pty that no user has read yet, in bytes.
    pub fn unread(&self) -> io::Result<u64> {
        Ok(rustix::io::ioctl_fionread(&self._slave)?)
    }

    /// Waits (at most `timeout`) until a user has read all output, so
    /// closing the pty does not discard the last lines. Returns whether
    /// everything was read.
    pub fn drain(&self, timeout: Duration) -> bool {
        // Bytes written to the master reach the slave's queue a moment
        // later (the kernel pushes them asynchronously), so "nothing
        // unread" must hold on two looks a little apart.
        const STEP: Duration = Duration::from_millis(20);
        let deadline = Instant::now() + timeout;
        let mut empty_before = false;
        loop {
            std::thread::sleep(STEP);
            match self.unread() {
                Ok(0) if empty_before => return true,
                Ok(n) => empty_before = n == 0,
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

impl ConsoleIo for PtyIo {
    fn write_output(&mut self, data: &[u8]) -> Result<usize, HostError> {
        match rustix::io::write(&self.master, data) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN | Errno::INTR | Errno::IO) => Ok(0),
            Err(e) => Err(os(e)),
        }
    }

    fn read_input(&mut self, buf: &mut [u8]) -> Result<usize, HostError> {
        match rustix::io::read(&self.master, buf) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN | Errno::INTR | Errno::IO) => Ok(0),
            Err(e) => Err(os(e)),
        }
    }
}

// ---------------------------------------------------------------------------
// prefixed, scripted terminal (demos)
// ---------------------------------------------------------------------------

/// A terminal for demos: guest output goes to `out` with `prefix` at the
/// start of every line (carriage returns dropped), and scripted keyboard
/// input is typed one line at a time, each when the guest's output ends
/// with the prompt (an "expect"-style script).
pub struct PrefixedIo<W: Write> {
    out: W,
    prefix: String,
    at_line_start: bool,
    script: VecDeque<Vec<u8>>,
    prompt: Vec<u8>,
    tail: Vec<u8>,
    bytes_out: u64,
    bytes_in: u64,
}

impl<W: Write> std::fmt::Debug for PrefixedIo<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixedIo")
            .field("prefix", &self.prefix)
            .field("bytes_out", &self.bytes_out)
            .field("bytes_in", &self.bytes_in)
            .finish()
    }
}

impl<W: Write> PrefixedIo<W> {
    /// Output to `out`, each line starting with `prefix`; no script.
    pub fn new(out: W, prefix: &str) -> Self {
        Self {
            out,
            prefix: prefix.to_string(),
            at_line_start: true,
            script: VecDeque::new(),
            prompt: Vec::new(),
            tail: Vec::new(),
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    /// Types each of `lines` (a carriage return is appended) once the
    /// guest's output ends with `prompt`.
    pub fn with_script(mut self, prompt: &str, lines: &[&str]) -> Self {
        self.prompt = prompt.as_bytes().to_vec();
        self.script = lines
            .iter()
            .map(|l| {
                let mut v = l.as_bytes().to_vec();
                v.push(b'\r');
                v
            })
            .collect();
        self
    }

    /// Guest output bytes delivered so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Input bytes typed so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Script lines not typed yet.
    pub fn script_left(&self) -> usize {
        self.script.len()
    }
}

impl<W: Write> ConsoleIo for PrefixedIo<W> {
    fn write_output(&mut self, data: &[u8]) -> Result<usize, HostError> {
        let mut text = Vec::with_capacity(data.len() + 16);
        for &b in data {
            if b == b'\r' {
                continue;
            }
            if self.at_line_start {
                text.extend_from_slice(self.prefix.as_bytes());
                self.at_line_start = false;
            }
            text.push(b);
            if b == b'\n' {
                self.at_line_start = true;
            }
        }
        self.out.write_all(&text).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        self.tail.extend_from_slice(data);
        let keep = self.prompt.len().max(1);
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        self.bytes_out += data.len() as u64;
        Ok(data.len())
    }

    fn read_input(&mut self, buf: &mut [u8]) -> Result<usize, HostError> {
        if self.prompt.is_empty() || !self.tail.ends_with(&self.prompt) {
            return Ok(0);
        }
        let Some(line) = self.script.front_mut() else {
            return Ok(0);
        };
        let n = buf.len().min(line.len());
        buf[..n].copy_from_slice(&line[..n]);
        line.drain(..n);
        if line.is_empty() {
            self.script.pop_front();
            // The next line waits for the next prompt.
            self.tail.clear();
        }
        self.bytes_in += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// guest side
// ---------------------------------------------------------------------------

/// Longest line [`GuestConsole::read_line`] keeps; further keys are ignored.
pub const MAX_LINE: usize = 256;

/// What [`GuestConsole::read_line`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line (without its terminator).
    Text(String),
    /// Ctrl-D on an empty line.
    Eof,
    /// The stop flag was raised while waiting.
    Stopped,
}

/// The guest's console, as a tiny kernel uses it. It owns its front end
/// (`F` = [`ConsoleFront`]) or borrows one that something else owns (`F` =
/// `&mut ConsoleFront`, e.g. a secondary console's).
pub struct GuestConsole<P: ConsolePage, E: EventChannels, F = ConsoleFront<P, E>> {
    front: F,
    _front: std::marker::PhantomData<fn() -> ConsoleFront<P, E>>,
    timeout: Duration,
    rx: VecDeque<u8>,
    last_cr: bool,
}

impl<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>> std::fmt::Debug
    for GuestConsole<P, E, F>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConsole")
            .field("front", self.front.borrow())
            .finish()
    }
}

impl<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>> GuestConsole<P, E, F> {
    /// Wraps a front end. `timeout` bounds each wait for the back end (for
    /// room to write, or between checks of a stop flag while reading).
    pub fn new(front: F, timeout: Duration) -> Self {
        Self {
            front,
            _front: std::marker::PhantomData,
            timeout,
            rx: VecDeque::new(),
            last_cr: false,
        }
    }

    /// The front end.
    pub fn front(&mut self) -> &mut ConsoleFront<P, E> {
        self.front.borrow_mut()
    }

    /// Unwraps the front end.
    pub fn into_front(self) -> F {
        self.front
    }

    /// Writes raw bytes, waiting for room (each wait bounded by the timeout).
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<(), ConsoleError> {
        self.front.borrow_mut().write_all(data, Some(self.timeout))
    }

    /// Prints text, turning `\n` into `\r\n` as a terminal expects.
    pub fn print(&mut self, s: &str) -> Result<(), ConsoleError> {
        let mut first = true;
        for part in s.split('\n') {
            if !first {
                self.write_bytes(b"\r\n")?;
            }
            first = false;
            self.write_bytes(part.as_bytes())?;
        }
        Ok(())
    }

    fn next_byte(&mut self, stop: &AtomicBool) -> Result<Option<u8>, ConsoleError> {
        loop {
            if let Some(b) = self.rx.pop_front() {
                return Ok(Some(b));
            }
            if stop.load(Ordering::Acquire) {
                return Ok(None);
            }
            let mut buf = [0u8; 256];
            match self
                .front
                .borrow_mut()
                .read_timeout(&mut buf, Some(self.timeout))
            {
                Ok(n) => self.rx.extend(&buf[..n]),
                Err(ConsoleError::Core(DeviceError::Timeout)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one line, echoing keys (a line discipline in cooked mode):
    /// Enter (CR, LF or CRLF) ends it, Backspace / DEL erases, Ctrl-C
    /// drops the line, Ctrl-D on an empty line is [`Line::Eof`]. Other
    /// control bytes are ignored. Returns [`Line::Stopped`] once `stop` is
    /// raised.
    pub fn read_line(&mut self, stop: &AtomicBool) -> Result<Line, ConsoleError> {
        let mut line: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.next_byte(stop)? else {
                return Ok(Line::Stopped);
            };
            let after_cr = std::mem::replace(&mut self.last_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.write_bytes(b"\r\n")?;
                    return Ok(Line::Text(String::from_utf8_lossy(&line).into_owned()));
                }
                0x08 | 0x7f if !line.is_empty() => {
                    line.pop();
                    self.write_bytes(b"\x08 \x08")?;
                }
                0x03 => {
                    self.write_bytes(b"^C\r\n")?;
                    return Ok(Line::Text(String::new()));
                }
                0x04 if line.is_empty() => return Ok(Line::Eof),
                0x20..=0x7e if line.len() < MAX_LINE => {
                    line.push(b);
                    self.write_bytes(&[b])?;
                }
                _ => {}
            }
        }
    }
}

fn to_io(e: ConsoleError) -> io::Error {
    let kind = match e {
        ConsoleError::Core(DeviceError::Timeout) => io::ErrorKind::TimedOut,
        ConsoleError::Core(DeviceError::Closed) => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>> Write
    for GuestConsole<P, E, F>
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf).map_err(to_io)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>> Read
    for GuestConsole<P, E, F>
{
    /// Reads at least one byte, waiting at most the timeout.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.rx.is_empty() {
            let n = buf.len().min(self.rx.len());
            for (dst, src) in buf.iter_mut().zip(self.rx.drain(..n)) {
                *dst = src;
            }
            return Ok(n);
        }
        self.front
            .borrow_mut()
            .read_timeout(buf, Some(self.timeout))
            .map_err(to_io)
    }
}

/// How [`demo_shell`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellExit {
    /// The user typed `exit` (or Ctrl-D).
    Exit,
    /// The stop flag was raised.
    Stopped,
}

/// The demo guest's "kernel": prints a boot banner ([`boot_banner`]), then
/// runs the tiny shell ([`shell`]).
pub fn demo_shell<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>>(
    con: &mut GuestConsole<P, E, F>,
    hostname: &str,
    booted: Instant,
    stop: &AtomicBool,
) -> Result<ShellExit, ConsoleError> {
    boot_banner(con, hostname)?;
    shell(con, hostname, booted, stop)
}

/// The demo kernel's boot banner.
pub fn boot_banner<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>>(
    con: &mut GuestConsole<P, E, F>,
    hostname: &str,
) -> Result<(), ConsoleError> {
    con.print(&format!(
        "xenshare demo kernel booting on {hostname}\n\
         [    0.000] PV console: xencons_interface, in 1024 / out 2048 bytes, grant ref 0\n"
    ))
}

/// A tiny shell over the console — `help`, `echo TEXT`, `uptime`, `exit` —
/// until `exit`, Ctrl-D, or `stop`.
pub fn shell<P: ConsolePage, E: EventChannels, F: BorrowMut<ConsoleFront<P, E>>>(
    con: &mut GuestConsole<P, E, F>,
    hostname: &str,
    booted: Instant,
    stop: &AtomicBool,
) -> Result<ShellExit, ConsoleError> {
    con.print("Type 'help' for commands.\n")?;
    loop {
        con.print(&format!("{hostname}$ "))?;
        let line = match con.read_line(stop)? {
            Line::Text(l) => l,
            Line::Eof => {
                con.print("exit\nbye\n")?;
                return Ok(ShellExit::Exit);
            }
            Line::Stopped => return Ok(ShellExit::Stopped),
        };
        let line = line.trim();
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "" => {}
            "help" => con.print(
                "commands:\n  help         this list\n  echo TEXT    print TEXT\n  uptime       time since boot\n  exit         power off\n",
            )?,
            "echo" => con.print(&format!("{}\n", rest.trim_start()))?,
            "uptime" => {
                let t = booted.elapsed();
                con.print(&format!("up {}.{:03} s\n", t.as_secs(), t.subsec_millis()))?
            }
            "exit" => {
                con.print("bye\n")?;
                return Ok(ShellExit::Exit);
            }
            other => con.print(&format!("sh: {other}: command not found\n"))?,
        }
    }
}
