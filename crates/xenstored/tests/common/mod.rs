//! Helpers shared by the conformance tests.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use xenshare_xenstored::{spawn, Config, ServerHandle};

#[path = "../../../conformance/src/support.rs"]
pub mod support;

/// True if `tool` exists. If not: a visible SKIP line, or a failure when
/// `CI=true` (CI installs the Debian packages, so a missing tool there is a
/// bug).
pub fn have_tool(tool: &str) -> bool {
    support::require_path(
        "xenstored conformance",
        tool,
        "xenstore-utils, xen-utils-4.17 and python3-pyxs",
    )
}

/// A fresh socket path in the temp directory.
pub fn socket_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "xenshare-xs-{}-{}-{}.sock",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A daemon on a fresh socket.
pub fn daemon(tag: &str) -> ServerHandle {
    daemon_with(tag, Config::default())
}

/// A daemon with `config` on a fresh socket.
pub fn daemon_with(tag: &str, config: Config) -> ServerHandle {
    spawn(config, socket_path(tag)).unwrap()
}

/// Runs a C client tool against `server`.
pub fn xs(server: &ServerHandle, tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .env("XENSTORED_PATH", server.path())
        .output()
        .unwrap()
}

/// Runs a tool and returns its stdout, asserting success.
pub fn xs_ok(server: &ServerHandle, tool: &str, args: &[&str]) -> String {
    let o = xs(server, tool, args);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Polls `f` every 5 ms for up to 20 s; true once it holds.
pub fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// True once the daemon has closed `s` (reads and discards until then,
/// for up to 10 s).
pub fn closed_by_peer(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Reads what `s` has into `dec` (a read that times out or would block
/// adds nothing); panics if the daemon closed the connection (`when` says
/// at which point) or the read failed.
#[allow(dead_code)] // not every test binary uses it
pub fn pump(
    s: &mut UnixStream,
    buf: &mut [u8],
    dec: &mut xenshare::store::wire::Decoder,
    when: &str,
) {
    match s.read(buf) {
        Ok(0) => panic!("closed {when}"),
        Ok(n) => dec.push(&buf[..n]),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Err(e) => panic!("{e}"),
    }
}
