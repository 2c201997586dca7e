//! `xenshare vchan` as users run it, across processes of a `xenshare host`:
//! an echo that feeds its stdout back into its stdin (no deadlock, no lost
//! tail after stdin ends), `--linger`, and the `proxy` subcommand's
//! stdin/stdout and UNIX socket modes with subsequent connections.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[path = "../../conformance/src/support.rs"]
mod support;

/// Overall deadline of any one step (generous: a loaded 2-core machine).
const STEP: Duration = Duration::from_secs(120);

/// `xenshare vchan ARGS --my-domid ME --host SOCK`.
fn vchan(sock: &Path, me: u16, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("vchan")
        .args(args)
        .args(["--my-domid", &me.to_string(), "--host"])
        .arg(sock);
    c
}

/// An echo server: a `vchan listen` whose stdout is piped into its stdin.
fn echo_server(sock: &Path, me: u16, peer: u16, path: &str) -> Kill {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    Kill(
        vchan(
            sock,
            me,
            &["listen", "--domid", &peer.to_string(), "--path", path],
        )
        .stdin(Stdio::from(r))
        .stdout(Stdio::from(w))
        .spawn()
        .expect("echo server"),
    )
}

/// Starts a `vchan connect` to `peer`'s `path` with piped stdio.
fn client(sock: &Path, me: u16, peer: u16, path: &str, extra: &[&str]) -> Child {
    vchan(
        sock,
        me,
        &[
            "connect",
            "--domid",
            &peer.to_string(),
            "--path",
            path,
            "--wait",
            "60",
        ],
    )
    .args(extra)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("vchan connect")
}

fn take_stdout(c: &mut Child) -> ChildStdout {
    c.stdout.take().expect("stdout")
}

/// 4,000,000 bytes through an echo whose stdout feeds its own stdin: far
/// more than the rings, pipes and buffers hold, so a pump that blocks on
/// stdout while not reading stdin deadlocks. The client's stdin ends
/// while most of the reply is still on its way: by default it keeps
/// reading until the peer closes, so every byte comes back; it then ends
/// (successfully) when the echo server dies.
#[test]
fn echo_returns_every_byte_after_stdin_ends_without_deadlock() {
    let dir = support::TempDir::new("vchan-echo");
    let (_host, sock) = start_host(dir.path());
    let path = "/local/domain/1/data/echo";
    let mut server = echo_server(&sock, 1, 2, path);
    let mut c = Kill(client(&sock, 2, 1, path, &[]));
    let data = random(4_000_000, 0x5eed_0001);
    let mut stdin = c.0.stdin.take().expect("stdin");
    let send = data.clone();
    // Writes everything, then closes stdin at once.
    let writer = std::thread::spawn(move || stdin.write_all(&send));
    let (got, _out) = read_n(STEP, take_stdout(&mut c.0), data.len(), "echo");
    writer.join().expect("writer").expect("write stdin");
    let first_bad = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "echoed data differs");
    // Without --linger the client waits for the peer, however long.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.0.try_wait().expect("try_wait").is_none(),
        "the client closed although the peer is still there"
    );
    // The peer dies: the client sees the vchan close and ends cleanly.
    let _ = server.0.kill();
    let _ = server.0.wait();
    let st = wait_exit(STEP, &mut c.0, "client after the peer died");
    assert!(st.success(), "client failed: {st}");
}

/// `--linger SECS`: after stdin ends, the client reads at most SECS more
/// seconds, then closes although the peer stays; the server then sees the
/// close and ends too.
#[test]
fn linger_closes_after_stdin_ends_while_the_peer_stays() {
    let dir = support::TempDir::new("vchan-linger");
    let (_host, sock) = start_host(dir.path());
    let path = "/local/domain/1/data/linger";
    let mut server = echo_server(&sock, 1, 2, path);
    let mut c = Kill(client(&sock, 2, 1, path, &["--linger", "1"]));
    let data = random(100_000, 0x5eed_0002);
    let mut stdin = c.0.stdin.take().expect("stdin");
    let send = data.clone();
    let writer = std::thread::spawn(move || {
        let r = stdin.write_all(&send);
        (r, stdin)
    });
    let (got, _out) = read_n(STEP, take_stdout(&mut c.0), data.len(), "echo");
    assert!(got == data, "echoed data differs");
    let (r, stdin) = writer.join().expect("writer");
    r.expect("write stdin");
    drop(stdin);
    let st = wait_exit(STEP, &mut c.0, "client with --linger 1");
    assert!(st.success(), "client failed: {st}");
    let st = wait_exit(STEP, &mut server.0, "echo server after the client closed");
    assert!(st.success(), "echo server failed: {st}");
}

/// `vchan proxy` with `-`, both roles: one stdin/stdout connection each
/// way, the same arguments as vchan-socket-proxy.
#[test]
fn proxy_stdio_modes_carry_data_both_ways() {
    let dir = support::TempDir::new("vchan-proxy-stdio");
    let (_host, sock) = start_host(dir.path());
    let path = "/local/domain/1/data/pstdio";
    let a = random(1 << 20, 0x5eed_0003);
    let b = random(1 << 20, 0x5eed_0004);
    let mut server = Kill(
        vchan(&sock, 1, &["proxy", "-m", "server", "2", path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("proxy server"),
    );
    let mut client = Kill(
        vchan(&sock, 2, &["proxy", "--wait", "60", "1", path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("proxy client"),
    );
    let writer = |c: &mut Child, data: &[u8]| {
        let mut stdin = c.stdin.take().expect("stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let r = stdin.write_all(&data);
            (r, stdin)
        })
    };
    let ws = writer(&mut server.0, &a);
    let wc = writer(&mut client.0, &b);
    let (at_client, _out_c) = read_n(
        STEP,
        take_stdout(&mut client.0),
        a.len(),
        "server to client",
    );
    let (at_server, _out_s) = read_n(
        STEP,
        take_stdout(&mut server.0),
        b.len(),
        "client to server",
    );
    assert!(at_client == a, "server-to-client data differs");
    assert!(at_server == b, "client-to-server data differs");
    // Both stdins end; without --linger each side waits for the other to
    // close, until the server dies: the client then ends cleanly.
    for w in [ws, wc] {
        let (r, stdin) = w.join().expect("writer");
        r.expect("write stdin");
        drop(stdin);
    }
    let _ = server.0.kill();
    let _ = server.0.wait();
    let st = wait_exit(STEP, &mut client.0, "proxy client after the server died");
    assert!(st.success(), "proxy client failed: {st}");
}

/// The server proxy's `--state-path` (in its own home).
const STATE: &str = "/local/domain/1/data/proxy-state";

/// An echo service on a UNIX socket: each connection is echoed until EOF.
fn socket_echo(path: &Path) {
    let l = UnixListener::bind(path).expect("bind echo socket");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// `vchan proxy` with UNIX sockets in both roles, as vchan-socket-proxy
/// runs for QMP: a client-mode proxy listens on a socket and opens a vchan
/// per accepted connection; a server-mode proxy connects to an echo socket
/// per vchan client and serves again after each. Three connections, one
/// after the other, each echo every byte; each ends when the socket user
/// closes its connection. The server writes "running" to its
/// `--state-path` once it is set up.
#[test]
fn proxy_socket_modes_serve_subsequent_connections() {
    let dir = support::TempDir::new("vchan-proxy-sock");
    let (_host, sock) = start_host(dir.path());
    let path = "/local/domain/1/data/psock";
    let echo = dir.join("echo.sock");
    socket_echo(&echo);
    let front = dir.join("front.sock");
    let _server = Kill(
        vchan(
            &sock,
            1,
            &["proxy", "--mode", "server", "-s", STATE, "2", path],
        )
        .arg(&echo)
        .spawn()
        .expect("proxy server"),
    );
    let _client = Kill(
        vchan(&sock, 2, &["proxy", "1", path])
            .arg(&front)
            .spawn()
            .expect("proxy client"),
    );
    let mut xs = xenshare::store::Client::new(
        xenshare::store::UnixTransport::connect(dir.join("h.sock.xs")).expect("dom0 xenstored"),
    );
    let end = Instant::now() + STEP;
    while xs.try_read(STATE).expect("read state").as_deref() != Some(&b"running"[..]) {
        assert!(
            Instant::now() < end,
            "the proxy server did not write its state"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for round in 0..3u64 {
        let conn = connect_when_there(STEP, &front);
        let data = random(300_000, 0x5eed_0100 + round);
        let mut w = conn.try_clone().expect("clone socket");
        let send = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&send));
        let (got, _) = read_n(
            STEP,
            conn.try_clone().expect("clone socket"),
            data.len(),
            "socket echo",
        );
        writer.join().expect("writer").expect("write socket");
        assert!(got == data, "round {round}: echoed data differs");
        drop(conn);
    }
}
