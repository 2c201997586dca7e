//! The daemon's accept loop survives running out of file descriptors: a
//! connection that arrives while the daemon cannot accept it is served
//! once fds are free again, and new domains join. (Its own test binary:
//! it exhausts this process's fd table.)

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use xenshare::{Access, DomId};
use xenshare_host::sock;
use xenshare_host::wire::{op, Reader, Writer};
use xenshare_host::{Host, HostConfig, RemoteDomain};

#[path = "../../conformance/src/support.rs"]
mod support;

#[test]
fn accept_loop_survives_fd_exhaustion() {
    let dir = support::TempDir::new("accept");
    let host = Host::spawn(HostConfig::new(dir.join("h.sock"))).unwrap();
    // Warm up (threads, xenstored) before the fd table is full.
    let early = RemoteDomain::join(host.path(), Some(DomId(1))).unwrap();

    // A small table makes exhausting it cheap.
    let cur = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(512),
            maximum: cur.maximum,
        },
    )
    .unwrap();
    let pending = sock::seqpacket().unwrap();
    let mut hog = Vec::new();
    loop {
        match rustix::io::fcntl_dupfd_cloexec(pending.as_fd(), 0) {
            Ok(fd) => hog.push(fd),
            Err(rustix::io::Errno::MFILE) => break,
            Err(e) => panic!("dup: {e}"),
        }
        assert!(hog.len() < 100_000, "fd limit not in force");
    }
    // The connection is queued; the daemon cannot accept it (EMFILE).
    rustix::net::connect(
        &pending,
        &rustix::net::SocketAddrUnix::new(host.path()).unwrap(),
    )
    .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while host.stats().accept_errors.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < end, "the daemon never tried to accept");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Fds come back: the queued connection is served (a loop that gave
    // up would leave this recv to time out).
    drop(hog);
    rustix::net::sockopt::set_socket_timeout(
        &pending,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(60)),
    )
    .unwrap();
    let mut w = Writer::new(op::JOIN);
    w.u32(u32::MAX); // any id: choosing one needs the host token
    sock::send(pending.as_fd(), &w.0, &[]).unwrap();
    let reply = sock::recv(pending.as_fd()).unwrap();
    assert_eq!(Reader::new(&reply.data).unwrap().op, op::OK, "join refused");
    // And new domains still join and work.
    let d = RemoteDomain::join(host.path(), Some(DomId(3))).unwrap();
    let s = d.exporter().share(DomId(1), 1, Access::ReadWrite).unwrap();
    early.importer().map_rw(DomId(3), s.refs()).unwrap();
    setrlimit(Resource::Nofile, cur).unwrap();
    drop((s, d, early, reply, pending));
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}
