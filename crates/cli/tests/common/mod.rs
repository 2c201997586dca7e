//! Helpers shared by the `xenshare` CLI integration tests: child-process
//! guards, starting a `xenshare host`, deadline loops, building the compat
//! library and the C test programs, and the pseudo-random test data.
//!
//! Each test binary includes this module with `mod common;` and uses a
//! subset of it, hence `dead_code` is allowed. The workspace's SKIP rule and
//! temporary directories stay in `support.rs` (included by the test files
//! themselves where they need it).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `xenshare` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_xenshare");

/// A child killed (and reaped) on drop, panics included.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child in its own process group, killed as a group on drop (`xenshare
/// exec` runs the program as its child).
pub struct Group(pub Child);
impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// `xenshare DAEMON --socket SOCK` with stderr discarded (`host` or
/// `xenstored`), not yet spawned.
pub fn daemon(name: &str, sock: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args([name, "--socket"]).arg(sock).stderr(Stdio::null());
    c
}

/// Polls every 10 ms until `done` holds; panics with `what` after
/// `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to `deadline`) until `p` exists.
pub fn wait_path(p: &Path, deadline: Duration) {
    wait_until(
        deadline,
        &format!("timed out waiting for {}", p.display()),
        || p.exists(),
    );
}

/// Spawns `xenshare host --socket DIR/h.sock` (`cmd` may adjust the
/// command first) and waits up to 10 s until the socket and every file
/// `DIR/h.sock<suffix>` of `suffixes` exist. Returns the child and the
/// socket path.
pub fn spawn_host(
    dir: &Path,
    suffixes: &[&str],
    cmd: impl FnOnce(&mut Command),
) -> (Child, PathBuf) {
    let sock = dir.join("h.sock");
    let mut c = daemon("host", &sock);
    cmd(&mut c);
    let child = c.spawn().expect("start host");
    let files: Vec<PathBuf> = suffixes
        .iter()
        .map(|s| dir.join(format!("h.sock{s}")))
        .collect();
    wait_until(Duration::from_secs(10), "host did not start", || {
        sock.exists() && files.iter().all(|f| f.exists())
    });
    (child, sock)
}

/// A `xenshare host` in `dir`, ready once its RPC and xenstored sockets
/// exist; killed on drop.
pub fn start_host(dir: &Path) -> (Kill, PathBuf) {
    let (child, sock) = spawn_host(dir, &[".xs"], |_| {});
    (Kill(child), sock)
}

/// `len` pseudo-random bytes (xorshift64 from `seed`).
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `xenshare exec [--domid D] --host SOCK -- PROG ARGS`.
pub fn exec(sock: &Path, domid: Option<u16>, prog: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("exec");
    if let Some(d) = domid {
        c.args(["--domid", &d.to_string()]);
    }
    c.arg("--host").arg(sock).arg("--").arg(prog).args(args);
    c
}

/// [`exec`] with a domain id, in its own process group (for [`Group`]).
pub fn exec_group(sock: &Path, domid: u16, prog: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut c = exec(sock, Some(domid), prog, args);
    c.process_group(0);
    c
}

/// Reads exactly `n` bytes from `out` in a thread; panics (naming `what`)
/// if they do not all arrive within `deadline`. Gives `out` back (still
/// open: closing it tells the writer its output is gone).
pub fn read_n<R: Read + Send + 'static>(
    deadline: Duration,
    out: R,
    n: usize,
    what: &str,
) -> (Vec<u8>, R) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = out;
        let mut got = vec![0u8; n];
        let r = out.read_exact(&mut got).map(|()| (got, out));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: reading the output failed: {e}"),
        Err(_) => panic!("{what}: the output did not arrive in time"),
    }
}

/// Waits for `c` to exit within `deadline`.
pub fn wait_exit(deadline: Duration, c: &mut Child, what: &str) -> ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < end, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_exit`], then asserts that `c` succeeded.
pub fn wait_success(deadline: Duration, c: &mut Child, what: &str) {
    let st = wait_exit(deadline, c, what);
    assert!(st.success(), "{what} failed: {st}");
}

/// Connects to the UNIX socket at `path`, retrying until `deadline`.
pub fn connect_when_there(deadline: Duration, path: &Path) -> UnixStream {
    let end = Instant::now() + deadline;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < end, "cannot connect to {path:?}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds the compat cdylib next to the `xenshare` binary, with the same
/// profile, and returns that directory. A test cannot depend on another
/// package's cdylib artifact; building it here is simple and always up to
/// date.
pub fn build_compat() -> PathBuf {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "xenshare-compat"]);
    // target/<profile>/xenshare: build the library with the same profile.
    let profile_dir = Path::new(BIN).parent().expect("binary directory");
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let st = cmd.status().expect("run cargo");
    assert!(st.success(), "cargo build -p xenshare-compat failed");
    profile_dir.to_path_buf()
}

/// Compiles `tests/c/NAME.c` against libxenvchan into `dir/NAME` with
/// `gcc -O2 -Wall FLAGS`. `None` (after calling `skip_or_fail` with the
/// reason) if the header is missing or gcc fails.
pub fn build_vchan_c(
    dir: &Path,
    name: &str,
    flags: &[&str],
    skip_or_fail: impl Fn(&str),
) -> Option<PathBuf> {
    if !Path::new("/usr/include/libxenvchan.h").exists() {
        skip_or_fail("/usr/include/libxenvchan.h not found");
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let out = dir.join(name);
    match Command::new("gcc")
        .args(["-O2", "-Wall"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-lxenvchan")
        .status()
    {
        Ok(s) if s.success() => Some(out),
        Ok(s) => {
            skip_or_fail(&format!("gcc failed ({s})"));
            None
        }
        Err(e) => {
            skip_or_fail(&format!("cannot run gcc: {e}"));
            None
        }
    }
}

/// A `xenshare host` at `DIR/h.sock` for the console tests, ready (within
/// `deadline`) once its xenstored socket and then its RPC socket exist.
pub fn console_host(dir: &Path, deadline: Duration) -> (Kill, PathBuf) {
    let sock = dir.join("h.sock");
    let host = Kill(daemon("host", &sock).spawn().expect("spawn host"));
    // The RPC socket is bound last.
    wait_path(&dir.join("h.sock.xs"), deadline);
    wait_path(&sock, deadline);
    (host, sock)
}

/// `xenshare console --demo-guest` joined to the host at `DIR/h.sock`,
/// ready (within `deadline`) once domain 1's xenstored socket exists (the
/// host assigns the first id, 1).
pub fn demo_guest(dir: &Path, deadline: Duration) -> Kill {
    let guest = Kill(
        Command::new(BIN)
            .args(["console", "--demo-guest", "--host"])
            .arg(dir.join("h.sock"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo guest"),
    );
    wait_path(&dir.join("h.sock.d1.xs"), deadline);
    guest
}
