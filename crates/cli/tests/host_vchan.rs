//! Two `xenshare vchan` processes joined to a `xenshare host` daemon pipe
//! a file through; the daemon survives garbage RPC messages.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../conformance/src/support.rs"]
mod support;

mod common;
use common::*;

/// A fresh directory, removed (with the sockets in it) when dropped.
fn tmpdir(name: &str) -> support::TempDir {
    support::TempDir::new(name)
}

#[test]
fn two_processes_pipe_a_file_through_a_vchan() {
    let dir = tmpdir("vchan");
    let (_host, sock) = start_host(&dir);
    // 100 MiB of pseudo-random bytes, as the issue asks.
    let mut data = vec![0u8; 100 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let input = dir.join("in");
    std::fs::write(&input, &data).unwrap();
    let path = "/local/domain/1/data/vchan";
    // The listener writes to a file: a pipe nobody reads until the end
    // would fill and stall the transfer.
    let output = dir.join("out");
    let mut listen = Kill(
        Command::new(BIN)
            .args([
                "vchan",
                "listen",
                "--my-domid",
                "1",
                "--domid",
                "2",
                "--path",
                path,
                "--host",
            ])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&output).unwrap())
            .spawn()
            .unwrap(),
    );
    let connect = Command::new(BIN)
        .args([
            "vchan",
            "connect",
            "--my-domid",
            "2",
            "--domid",
            "1",
            "--path",
            path,
            "--wait",
            "10",
            // One-way: close once the file is in the ring (the listener
            // still drains it), instead of waiting for the listener.
            "--linger",
            "0",
            "--host",
        ])
        .arg(&sock)
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(connect.success());
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = listen.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "listener did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "received bytes differ");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_path_and_missing_host_are_clear_errors() {
    let dir = tmpdir("errs");
    let out = Command::new(BIN)
        .args(["vchan", "connect", "--domid", "1", "--path", "/x", "--host"])
        .arg(dir.join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xenshare host"));
    let (_host, sock) = start_host(&dir);
    let out = Command::new(BIN)
        .args([
            "vchan",
            "connect",
            "--my-domid",
            "5",
            "--domid",
            "1",
            "--path",
            "/no/such",
            "--host",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such"));
    let _ = std::fs::remove_dir_all(&dir);
}
