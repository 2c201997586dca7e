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
//! The compat library is built here (see `vchan_interop.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xenshare");
const PROXY: &str = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";
const BYTES: usize = 16 << 20;
const STEP: Duration = Duration::from_secs(180);

/// A child in its own process group, killed as a group on drop (`xenshare
/// exec` runs the program as its child).
struct Group(Child);
impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

struct TmpDir(PathBuf);
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("xenshare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TmpDir(d)
}

fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("vchan-socket-proxy prerequisites missing under CI: {why}");
    }
    eprintln!("\n*** SKIP vchan_socket_proxy: {why} (install xen-utils-4.17) ***\n");
}

/// Builds the compat cdylib next to the `xenshare` binary.
fn build_compat() {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "xenshare-compat"]);
    let profile_dir = Path::new(BIN).parent().expect("binary directory");
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let st = cmd.status().expect("run cargo");
    assert!(st.success(), "cargo build -p xenshare-compat failed");
}

fn start_host(dir: &Path) -> (Group, PathBuf) {
    let sock = dir.join("h.sock");
    let child = Command::new(BIN)
        .args(["host", "--socket"])
        .arg(&sock)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start host");
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() || !dir.join("h.sock.xs").exists() {
        assert!(Instant::now() < end, "host did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Group(child), sock)
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `xenshare exec --domid D --host SOCK -- PROG ARGS`, in its own group.
fn exec(sock: &Path, domid: u16, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["exec", "--domid", &domid.to_string(), "--host"])
        .arg(sock)
        .arg("--")
        .arg(prog)
        .args(args)
        .process_group(0);
    c
}

fn read_n<R: Read + Send + 'static>(out: R, n: usize, what: &str) -> (Vec<u8>, R) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = out;
        let mut got = vec![0u8; n];
        let r = out.read_exact(&mut got).map(|()| (got, out));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(STEP) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: reading failed: {e}"),
        Err(_) => panic!("{what}: the data did not arrive in time"),
    }
}

fn wait_exit(c: &mut Child, what: &str) -> ExitStatus {
    let end = Instant::now() + STEP;
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < end, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let first_bad = got.iter().zip(want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "{what}: data differs");
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> std::fs::File {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write input file");
    std::fs::File::open(&p).expect("open input file")
}

fn xenshare_args<'a>(
    role: &'a str,
    peer: &'a str,
    path: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec!["vchan", role, "--domid", peer, "--path", path];
    v.extend_from_slice(extra);
    v
}

#[test]
fn debian_vchan_socket_proxy_runs_unmodified_both_modes_both_ways() {
    if !Path::new(PROXY).exists() {
        skip_or_fail(&format!("{PROXY} not found"));
        return;
    }
    build_compat();
    let dir = tmpdir("vsp");
    let d = &dir.0;
    let (_host, sock) = start_host(d);

    // 1. vchan-socket-proxy server with `-` (domain 1) sends its stdin to
    //    `xenshare vchan connect` (domain 2). When its stdin ends it waits
    //    for an event before exiting; the client's `--linger 0` closes
    //    once the test has read everything and closed the client's stdin.
    let path = "/local/domain/1/data/vsp";
    let data = random(BYTES, 0xc0de_0001);
    let mut c_server = Group(
        exec(&sock, 1, PROXY, &["-m", "server", "2", path, "-"])
            .stdin(write_file(d, "in1", &data))
            .stdout(Stdio::null())
            .spawn()
            .expect("vchan-socket-proxy server"),
    );
    let mut rust = Group(
        exec(
            &sock,
            2,
            BIN,
            &xenshare_args("connect", "1", path, &["--wait", "60", "--linger", "0"])[..],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("xenshare vchan connect"),
    );
    let rust_in = rust.0.stdin.take().expect("stdin");
    let (got, _out) = read_n(
        rust.0.stdout.take().expect("stdout"),
        BYTES,
        "C server to Rust",
    );
    check(
        &got,
        &data,
        "vchan-socket-proxy server -> xenshare vchan connect",
    );
    drop(rust_in);
    let st = wait_exit(&mut rust.0, "xenshare vchan connect");
    assert!(st.success(), "xenshare vchan connect failed: {st}");
    let st = wait_exit(&mut c_server.0, "vchan-socket-proxy server");
    assert!(st.success(), "vchan-socket-proxy server failed: {st}");

    // 2. The other way: `xenshare vchan connect` (domain 4) sends a file to
    //    the server's stdout (domain 3); closing the server's stdin ends it,
    //    and the client, seeing the vchan close, ends by itself.
    let path = "/local/domain/3/data/vsp";
    let data = random(BYTES, 0xc0de_0002);
    let mut c_server = Group(
        exec(&sock, 3, PROXY, &["-m", "server", "4", path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("vchan-socket-proxy server"),
    );
    let mut rust = Group(
        exec(
            &sock,
            4,
            BIN,
            &xenshare_args("connect", "3", path, &["--wait", "60"])[..],
        )
        .stdin(write_file(d, "in2", &data))
        .stdout(Stdio::null())
        .spawn()
        .expect("xenshare vchan connect"),
    );
    let c_in = c_server.0.stdin.take().expect("stdin");
    let (got, _out) = read_n(
        c_server.0.stdout.take().expect("stdout"),
        BYTES,
        "Rust to C server",
    );
    check(
        &got,
        &data,
        "xenshare vchan connect -> vchan-socket-proxy server",
    );
    drop(c_in);
    let st = wait_exit(&mut c_server.0, "vchan-socket-proxy server");
    assert!(st.success(), "vchan-socket-proxy server failed: {st}");
    let st = wait_exit(&mut rust.0, "xenshare vchan connect");
    assert!(st.success(), "xenshare vchan connect failed: {st}");

    // 3. vchan-socket-proxy client (domain 5) listening on a UNIX socket,
    //    `xenshare vchan listen` (domain 6) the server. First connection:
    //    socket -> C -> vchan -> listen's stdout.
    let path = "/local/domain/6/data/vsp";
    let front = d.join("front.sock");
    let front_s = front.to_str().expect("utf-8 path");
    let _c_client = Group(
        exec(&sock, 5, PROXY, &["6", path, front_s])
            .spawn()
            .expect("vchan-socket-proxy client"),
    );
    let data = random(BYTES, 0xc0de_0003);
    let mut rust = Group(
        exec(
            &sock,
            6,
            BIN,
            &xenshare_args("listen", "5", path, &["--linger", "0"])[..],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("xenshare vchan listen"),
    );
    let conn = connect_when_there(&front);
    let mut w = conn.try_clone().expect("clone socket");
    let send = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&send));
    let rust_in = rust.0.stdin.take().expect("stdin");
    let (got, _out) = read_n(
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
    let st = wait_exit(&mut rust.0, "xenshare vchan listen");
    assert!(st.success(), "xenshare vchan listen failed: {st}");
    drop(conn);

    // 4. Second, subsequent connection to the same proxy, the other way:
    //    listen's stdin -> vchan -> C -> socket. Closing the socket ends
    //    the vchan; the listener sees it close and ends by itself.
    let data = random(BYTES, 0xc0de_0004);
    let mut rust = Group(
        exec(&sock, 6, BIN, &xenshare_args("listen", "5", path, &[])[..])
            .stdin(write_file(d, "in4", &data))
            .stdout(Stdio::null())
            .spawn()
            .expect("xenshare vchan listen"),
    );
    let conn = connect_when_there(&front);
    let (got, conn) = read_n(conn, BYTES, "Rust to socket");
    check(
        &got,
        &data,
        "xenshare vchan listen -> vchan-socket-proxy client -> socket",
    );
    drop(conn);
    let st = wait_exit(&mut rust.0, "xenshare vchan listen");
    assert!(st.success(), "xenshare vchan listen failed: {st}");
}

fn connect_when_there(path: &Path) -> UnixStream {
    let end = Instant::now() + STEP;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < end, "cannot connect to {path:?}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
