//! Debian's `/usr/lib/xen-4.17/bin/vchan-socket-proxy` (package
//! xen-utils-4.17), unmodified, under `xenshare exec`: it loads Debian's
//! libxenvchan and libxenstore, and xenshare's compat object as
//! libxengnttab, libxenevtchn and libxenctrl. 16 MiB go through it each way
//! against `xenshare vchan`, in both of its modes:
//! - server with `-` (stdin/stdout), `xenshare vchan connect` the client;
//! - client with a UNIX socket (two subsequent socket connections),
//!   `xenshare vchan listen` the server.
//!
//! Without xen-utils-4.17 the test SKIPs loudly, or FAILs when `CI=true`.
//! The compat library is built here (see `common::build_compat`).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

#[path = "../../conformance/src/support.rs"]
mod support;

const PROXY: &str = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";
const BYTES: usize = 16 << 20;
const STEP: Duration = Duration::from_secs(180);

fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("vchan-socket-proxy prerequisites missing under CI: {why}");
    }
    eprintln!("\n*** SKIP vchan_socket_proxy: {why} (install xen-utils-4.17) ***\n");
}

fn start_host(dir: &Path) -> (Group, PathBuf) {
    let (child, sock) = spawn_host(dir, &[".xs"], |c| {
        c.process_group(0);
    });
    (Group(child), sock)
}

fn check(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let first_bad = got.iter().zip(want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "{what}: data differs");
}

/// Reads `want.len()` bytes from `c`'s stdout while its stdin stays open,
/// checks them against `want`, then closes its stdin. Gives the stdout
/// back (still open).
fn receive_then_close_stdin(c: &mut Child, want: &[u8], reading: &str, what: &str) -> ChildStdout {
    let stdin = c.stdin.take().expect("stdin");
    let (got, out) = read_n(STEP, c.stdout.take().expect("stdout"), want.len(), reading);
    check(&got, want, what);
    drop(stdin);
    out
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> std::fs::File {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write input file");
    std::fs::File::open(&p).expect("open input file")
}

/// `xenshare vchan ROLE --domid PEER --path PATH EXTRA` run as domain
/// `domid` under `xenshare exec`, in its own process group.
fn xenshare_vchan(
    sock: &Path,
    domid: u16,
    role: &str,
    peer: &str,
    path: &str,
    extra: &[&str],
) -> Command {
    let mut args = vec!["vchan", role, "--domid", peer, "--path", path];
    args.extend_from_slice(extra);
    exec_group(sock, domid, BIN, &args)
}

#[test]
fn debian_vchan_socket_proxy_runs_unmodified_both_modes_both_ways() {
    if !Path::new(PROXY).exists() {
        skip_or_fail(&format!("{PROXY} not found"));
        return;
    }
    build_compat();
    let dir = support::TempDir::new("vsp");
    let d = dir.path();
    let (_host, sock) = start_host(d);

    // 1. vchan-socket-proxy server with `-` (domain 1) sends its stdin to
    //    `xenshare vchan connect` (domain 2). When its stdin ends it waits
    //    for an event before exiting; the client's `--linger 0` closes
    //    once the test has read everything and closed the client's stdin.
    let path = "/local/domain/1/data/vsp";
    let data = random(BYTES, 0xc0de_0001);
    let mut c_server = Group(
        exec_group(&sock, 1, PROXY, &["-m", "server", "2", path, "-"])
            .stdin(write_file(d, "in1", &data))
            .stdout(Stdio::null())
            .spawn()
            .expect("vchan-socket-proxy server"),
    );
    let mut rust = Group(
        xenshare_vchan(
            &sock,
            2,
            "connect",
            "1",
            path,
            &["--wait", "60", "--linger", "0"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("xenshare vchan connect"),
    );
    let _out = receive_then_close_stdin(
        &mut rust.0,
        &data,
        "C server to Rust",
        "vchan-socket-proxy server -> xenshare vchan connect",
    );
    wait_success(STEP, &mut rust.0, "xenshare vchan connect");
    wait_success(STEP, &mut c_server.0, "vchan-socket-proxy server");

    // 2. The other way: `xenshare vchan connect` (domain 4) sends a file to
    //    the server's stdout (domain 3); closing the server's stdin ends it,
    //    and the client, seeing the vchan close, ends by itself.
    let path = "/local/domain/3/data/vsp";
    let data = random(BYTES, 0xc0de_0002);
    let mut c_server = Group(
        exec_group(&sock, 3, PROXY, &["-m", "server", "4", path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("vchan-socket-proxy server"),
    );
    let mut rust = Group(
        xenshare_vchan(&sock, 4, "connect", "3", path, &["--wait", "60"])
            .stdin(write_file(d, "in2", &data))
            .stdout(Stdio::null())
            .spawn()
            .expect("xenshare vchan connect"),
    );
    let _out = receive_then_close_stdin(
        &mut c_server.0,
        &data,
        "Rust to C server",
        "xenshare vchan connect -> vchan-socket-proxy server",
    );
    wait_success(STEP, &mut c_server.0, "vchan-socket-proxy server");
    wait_success(STEP, &mut rust.0, "xenshare vchan connect");

    // 3. vchan-socket-proxy client (domain 5) listening on a UNIX socket,
    //    `xenshare vchan listen` (domain 6) the server. First connection:
    //    socket -> C -> vchan -> listen's stdout.
    let path = "/local/domain/6/data/vsp";
    let front = d.join("front.sock");
    let front_s = front.to_str().expect("utf-8 path");
    let _c_client = Group(
        exec_group(&sock, 5, PROXY, &["6", path, front_s])
            .spawn()
            .expect("vchan-socket-proxy client"),
    );
    let data = random(BYTES, 0xc0de_0003);
    let mut rust = Group(
        xenshare_vchan(&sock, 6, "listen", "5", path, &["--linger", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xenshare vchan listen"),
    );
    let conn = connect_when_there(STEP, &front);
    let mut w = conn.try_clone().expect("clone socket");
    let send = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&send));
    let rust_in = rust.0.stdin.take().expect("stdin");
    let (got, _out) = read_n(
        STEP,
        rust.0.stdout.take().expect("stdout"),
        BYTES,
        "socket to Rust",
    );
    writer.join().expect("writer").expect("write socket");
    check(
        &got,
        &data,
        "socket -> vchan-socket-proxy client -> xenshare vchan listen",
    );
    drop(rust_in);
    wait_success(STEP, &mut rust.0, "xenshare vchan listen");
    drop(conn);

    // 4. Second, subsequent connection to the same proxy, the other way:
    //    listen's stdin -> vchan -> C -> socket. Closing the socket ends
    //    the vchan; the listener sees it close and ends by itself.
    let data = random(BYTES, 0xc0de_0004);
    let mut rust = Group(
        xenshare_vchan(&sock, 6, "listen", "5", path, &[])
            .stdin(write_file(d, "in4", &data))
            .stdout(Stdio::null())
            .spawn()
            .expect("xenshare vchan listen"),
    );
    let conn = connect_when_there(STEP, &front);
    let (got, conn) = read_n(STEP, conn, BYTES, "Rust to socket");
    check(
        &got,
        &data,
        "xenshare vchan listen -> vchan-socket-proxy client -> socket",
    );
    drop(conn);
    wait_success(STEP, &mut rust.0, "xenshare vchan listen");
}
