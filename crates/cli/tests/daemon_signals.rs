//! `xenshare xenstored` and `xenshare host` end cleanly on SIGTERM and
//! SIGINT: they exit with success and leave no socket (or token) behind,
//! including the per-domain xenstored sockets of domains still running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

#[path = "../../conformance/src/support.rs"]
mod support;

mod common;
use common::*;

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_until(
        Duration::from_secs(30),
        &format!("timed out waiting for {what}"),
        f,
    );
}

fn signal(c: &Child, sig: Signal) {
    let pid = Pid::from_raw(c.id() as i32).expect("pid");
    kill_process(pid, sig).expect("kill");
}

/// Waits (with a deadline) for the daemon to exit; returns its status.
fn exited(c: &mut Kill) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = c.0.try_wait().expect("try_wait") {
            return st;
        }
        assert!(Instant::now() < end, "daemon did not exit after the signal");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_err()
}

fn xenstored_cleans_up_on(sig: Signal) {
    let dir = support::TempDir::new("sig-xenstored");
    let sock = dir.join("xs.sock");
    let mut d = Kill(daemon("xenstored", &sock).spawn().expect("spawn xenstored"));
    wait_for("the xenstored socket", || sock.exists());
    // A connected client does not keep the daemon (or its socket) alive.
    let _client = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    signal(&d.0, sig);
    let st = exited(&mut d);
    assert!(st.success(), "xenstored exited with {st} on {sig:?}");
    assert!(gone(&sock), "{} left behind after {sig:?}", sock.display());
}

#[test]
fn xenstored_removes_its_socket_on_sigterm() {
    xenstored_cleans_up_on(Signal::TERM);
}

#[test]
fn xenstored_removes_its_socket_on_sigint() {
    xenstored_cleans_up_on(Signal::INT);
}

fn host_cleans_up_on(sig: Signal) {
    let dir = support::TempDir::new("sig-host");
    let sock = dir.join("h.sock");
    let xs = dir.join("h.sock.xs");
    let token = dir.join("h.sock.token");
    let mut h = Kill(daemon("host", &sock).spawn().expect("spawn host"));
    wait_for("the host's sockets", || {
        sock.exists() && xs.exists() && token.exists()
    });
    // A domain that is still running when the host goes.
    let _dom = Kill(
        Command::new(BIN)
            .args(["exec", "--host"])
            .arg(&sock)
            .args(["--", "sleep", "60"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn exec"),
    );
    let dom_xs = dir.join("h.sock.d1.xs");
    wait_for("domain 1's xenstored socket", || dom_xs.exists());
    signal(&h.0, sig);
    let st = exited(&mut h);
    assert!(st.success(), "host exited with {st} on {sig:?}");
    for p in [&sock, &xs, &token, &dom_xs] {
        assert!(gone(p), "{} left behind after {sig:?}", p.display());
    }
}

#[test]
fn host_removes_its_sockets_and_token_on_sigterm() {
    host_cleans_up_on(Signal::TERM);
}

#[test]
fn host_removes_its_sockets_and_token_on_sigint() {
    host_cleans_up_on(Signal::INT);
}
