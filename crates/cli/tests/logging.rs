//! Logs go through `tracing` and `RUST_LOG` decides what reaches stderr:
//! a daemon's log line (`xenstore-control print TEXT`, which C xenstored
//! writes to its log) appears with `RUST_LOG=xenstored=info` and not with
//! `RUST_LOG=off`. And a piped benchmark prints no progress.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xenshare");

/// A scratch directory, removed on drop (also when a test panics).
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon, killed on drop.
struct Daemon(Option<Child>);
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn connect(sock: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("xenstored did not come up at {}: {e}", sock.display()),
        }
    }
}

/// Runs `xenshare xenstored` with `rust_log`, asks it to print `marker`
/// (an `XS_CONTROL print` request) and returns its stderr.
fn stderr_after_print(rust_log: &str, marker: &str) -> String {
    let dir = Scratch(std::env::temp_dir().join(format!(
        "xenshare-logging-{}-{rust_log}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("xs.sock");
    let mut daemon = Daemon(Some(
        Command::new(BIN)
            .args(["xenstored", "--socket"])
            .arg(&sock)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut s = connect(&sock);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = format!("print\0{marker}\0");
    let mut msg = Vec::new();
    for word in [0u32 /* XS_CONTROL */, 7, 0, payload.len() as u32] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(payload.as_bytes());
    s.write_all(&msg).unwrap();
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr).unwrap();
    let len = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, b"OK\0", "the print request was not accepted");
    // The event is written before the reply is sent; stop the daemon and
    // read everything it wrote.
    let mut child = daemon.0.take().unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rust_log_selects_the_daemon_log_lines() {
    let marker = "logging-test-marker-42";
    let on = stderr_after_print("xenstored=info", marker);
    assert!(
        on.contains(marker),
        "RUST_LOG=xenstored=info must show the print line; stderr: {on:?}"
    );
    let off = stderr_after_print("off", marker);
    assert!(
        !off.contains(marker),
        "RUST_LOG=off must hide it; stderr: {off:?}"
    );
}

/// Progress lines are for a terminal: piped, a benchmark writes only its
/// results (to stdout) and nothing to stderr.
#[test]
fn a_piped_bench_prints_results_and_no_progress() {
    let out = Command::new(BIN)
        .args(["bench", "grants", "--iters", "10"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench failed: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("full cycle"),
        "results missing: {out:?}"
    );
    assert!(out.stderr.is_empty(), "stderr not empty: {out:?}");
}
