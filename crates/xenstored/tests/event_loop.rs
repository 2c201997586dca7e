//! One event loop per daemon: every socket of a daemon (dom0's and the
//! per-domain ones) and all their connections are served by a single
//! thread; dropping a socket's handle closes that socket's connections
//! only; the thread ends with the daemon's last socket. (Its own test
//! binary: it counts this process's threads.)

mod common;

use std::os::unix::net::UnixStream;

use xenshare::store::{Client, Perms, UnixTransport};
use xenshare::DomId;
use xenshare_xenstored::{inproc, serve, serve_as, Config, Daemon, SocketAccess};

/// Threads of this process whose name starts with `prefix`.
fn threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.trim().starts_with(prefix))
        .count()
}

#[test]
fn one_thread_serves_every_socket_and_connection_of_a_daemon() {
    const DOMAINS: u16 = 8;
    const PER_SOCKET: usize = 4;
    assert_eq!(threads("xenstored-loop"), 0);
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    let dom0_sock = serve(d.clone(), common::socket_path("loop-dom0")).unwrap();
    let uid = rustix::process::getuid().as_raw();
    let mut sockets = Vec::new();
    for dom in 1..=DOMAINS {
        let home = format!("/local/domain/{dom}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(
            &home,
            &Perms::parse_fields(&[format!("n{dom}").as_bytes()]).unwrap(),
        )
        .unwrap();
        let h = serve_as(
            d.clone(),
            common::socket_path(&format!("loop-d{dom}")),
            SocketAccess {
                domid: DomId(dom),
                mode: 0o600,
                uid: Some(uid),
            },
        )
        .unwrap();
        sockets.push((dom, h));
    }
    // Several connections on every socket, all talking at once.
    let mut clients = Vec::new();
    for (dom, h) in &sockets {
        for i in 0..PER_SOCKET {
            let mut c = Client::new(UnixTransport::connect(h.path()).unwrap());
            // The connection speaks for the socket's domain: relative
            // paths are its home.
            c.write(&format!("c{i}"), b"x").unwrap();
            clients.push((*dom, c));
        }
    }
    let mut admin = Client::new(UnixTransport::connect(dom0_sock.path()).unwrap());
    assert_eq!(admin.read("/local/domain/3/c1").unwrap(), b"x");
    // One loop thread for the daemon's nine sockets and 33 connections,
    // no thread per connection.
    assert_eq!(threads("xenstored-loop"), 1);
    assert_eq!(threads("xenstored-rd") + threads("xenstored-wr"), 0);

    // Dropping domain 1's socket closes its connections, not the others.
    let mut raw = UnixStream::connect(sockets[0].1.path()).unwrap();
    let (_, first) = sockets.remove(0);
    drop(first);
    assert!(
        common::closed_by_peer(&mut raw),
        "domain 1's connection stayed open"
    );
    for (dom, c) in clients.iter_mut() {
        let r = c.read("c0");
        if *dom == 1 {
            assert!(r.is_err(), "domain 1's client still served");
        } else {
            assert_eq!(r.unwrap(), b"x");
        }
    }
    assert_eq!(threads("xenstored-loop"), 1);

    // The loop ends with the daemon's last socket.
    drop(sockets);
    assert_eq!(admin.read("/local/domain/2/c0").unwrap(), b"x");
    drop(dom0_sock);
    assert!(common::wait_for(|| threads("xenstored-loop") == 0));
    // The daemon itself lives on for in-process clients.
    assert_eq!(dom0.read("/local/domain/2/c3").unwrap(), b"x");
}
