//! Garbage RPC messages get error replies; the daemon keeps serving.

use xenshare::DomId;
use xenshare_host::client::Conn;
use xenshare_host::wire::{op, Reader, VERSION};
use xenshare_host::{Host, HostConfig, RemoteDomain};

#[path = "../../conformance/src/support.rs"]
mod support;

#[test]
fn garbage_messages_do_not_crash_the_daemon() {
    let dir = support::TempDir::new("garbage");
    let host = Host::spawn(HostConfig::new(dir.join("h.sock"))).unwrap();
    let c = Conn::connect(host.path()).unwrap();
    let msgs: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],
        vec![b'X', 9, op::JOIN, 0],
        vec![b'X', VERSION, 200, 0],
        vec![b'X', VERSION, op::MAP, 0, 1, 0],
        vec![b'X', VERSION, op::MAP, 0, 1, 0, 0, 0, 0xff, 0xff],
        vec![b'X', VERSION, op::JOIN, 0, 1, 0, 0, 0, 7],
        vec![b'X', VERSION, op::COPY, 0, 0xff, 0xff],
        vec![b'X', VERSION, op::EVT_NOTIFY, 0, 1, 0, 0, 0],
        vec![b'X', VERSION, op::RETIRE_CHUNK, 0],
    ];
    for m in msgs {
        let reply = c.call_raw(&m).unwrap();
        let r = Reader::new(&reply).unwrap();
        assert_eq!(r.op, op::ERR, "garbage {m:?} was accepted");
    }
    // Still serving: a domain can join and share.
    let d = RemoteDomain::join(host.path(), Some(DomId(3))).unwrap();
    let s = d
        .exporter()
        .share(DomId(4), 2, xenshare::Access::ReadWrite)
        .unwrap();
    assert_eq!(s.refs().len(), 2);
    drop((s, d, c));
    // The daemon must go before its socket files do (xenstored's shutdown
    // wakes its accept loop through the socket).
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}
