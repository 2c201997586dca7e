//! `xenshare console DOMID --host PATH` without a terminal: one back end at
//! a time, a console killed mid-session does not block the next attach, and
//! clear errors for a domain that does not exist.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../conformance/src/support.rs"]
mod support;

mod common;
use common::*;
const DEADLINE: Duration = Duration::from_secs(60);

/// An attached console whose stdin stays open; its stdout is collected.
fn attached(sock: &Path) -> (Kill, std::sync::mpsc::Receiver<Vec<u8>>) {
    let mut c = Command::new(BIN)
        .args(["console", "1", "--host"])
        .arg(sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn console");
    let mut out = c.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = out.read(&mut b) {
            if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    (Kill(c), rx)
}

fn read_until(rx: &std::sync::mpsc::Receiver<Vec<u8>>, want: &str) -> String {
    let end = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(want) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => seen.extend(b),
            Err(_) => panic!(
                "no {want:?} on the console; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn one_back_end_at_a_time_and_a_killed_console_does_not_block_the_next() {
    let dir = support::TempDir::new("console-host");
    let (_host, sock) = console_host(&dir, DEADLINE);
    let _guest = demo_guest(&dir, DEADLINE);

    let (mut first, rx) = attached(&sock);
    read_until(&rx, "guest1$ ");
    // A second console is refused while the first is attached.
    let out = Command::new(BIN)
        .args(["console", "1", "--host"])
        .arg(&sock)
        .stdin(Stdio::null())
        .output()
        .expect("run second console");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already attached"), "{err}");
    // The first still works.
    let stdin = first.0.stdin.as_mut().expect("stdin");
    stdin.write_all(b"echo still here\r").expect("type");
    read_until(&rx, "still here\r\n");

    // Killed mid-session (no clean detach): its console domain dies with
    // it, the guest notices, and the next attach gets a working console.
    drop(first);
    let (mut again, rx) = attached(&sock);
    read_until(&rx, "attach 2");
    let stdin = again.0.stdin.as_mut().expect("stdin");
    stdin.write_all(b"echo after the kill\r").expect("type");
    read_until(&rx, "after the kill\r\n");

    // Fed from a pipe: the answers, then a clean exit once the guest is
    // quiet after the end of input (the guest goes on).
    drop(again);
    let mut c = Command::new(BIN)
        .args(["console", "1", "--host"])
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn piped console");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(b"echo piped\n")
        .expect("write");
    let out = c.wait_with_output().expect("piped console");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("piped\r\n"), "{text:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[end of input; detached from domain 1]"),
        "{err}"
    );
}

#[test]
fn attaching_to_a_domain_that_does_not_exist_is_a_clear_error() {
    let dir = support::TempDir::new("console-nodom");
    let (_host, sock) = console_host(&dir, DEADLINE);
    let out = Command::new(BIN)
        .args(["console", "7", "--host"])
        .arg(&sock)
        .stdin(Stdio::null())
        .output()
        .expect("run console");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no domain 7"), "{err}");
    // Without a host at all.
    let out = Command::new(BIN)
        .args(["console", "7", "--host"])
        .arg(dir.join("nope"))
        .stdin(Stdio::null())
        .output()
        .expect("run console");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xenshare host"), "{err}");
}
