//! Misbehaving clients (garbage, oversized lengths, half messages, floods)
//! are answered with errors or dropped; everyone else carries on.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;
use xenshare::store::wire::{Header, Message, MsgType, Request};
use xenshare::store::{Client, UnixTransport, XsError};

fn healthy(server: &xenshare_xenstored::ServerHandle) {
    let mut c = Client::new(UnixTransport::connect(server.path()).unwrap());
    c.write("/health", b"ok").unwrap();
    assert_eq!(c.read("/health").unwrap(), b"ok");
}

#[test]
fn oversized_length_disconnects_only_that_client() {
    let server = common::daemon("bad-len");
    let mut bad = UnixStream::connect(server.path()).unwrap();
    let h = Header {
        ty: MsgType::Write,
        req_id: 1,
        tx_id: 0,
        len: 1 << 20,
    };
    bad.write_all(&h.encode()).unwrap();
    assert!(common::closed_by_peer(&mut bad));
    healthy(&server);
}

#[test]
fn garbage_gets_errors_or_disconnect() {
    let server = common::daemon("garbage");
    // Unknown type with a sane length: an ENOSYS reply, connection stays.
    let mut s = UnixStream::connect(server.path()).unwrap();
    let m = Message::new(MsgType::Other(77), 5, 0, b"zz".to_vec());
    s.write_all(&m.to_bytes().unwrap()).unwrap();
    let mut t = UnixTransport::from_stream(s);
    use xenshare::store::Transport;
    let r = t.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!((r.req_id, r.as_error()), (5, Some(XsError::ENOSYS)));
    // Malformed payload: EINVAL.
    t.send(&Message::new(MsgType::Read, 6, 0, b"no-nul".to_vec()))
        .unwrap();
    let r = t.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!((r.req_id, r.as_error()), (6, Some(XsError::EINVAL)));
    // Random bytes.
    let mut g = UnixStream::connect(server.path()).unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = g.write_all(&junk);
    drop(g);
    healthy(&server);
}

#[test]
fn half_message_then_close() {
    let server = common::daemon("half");
    for cut in [3usize, 16, 20] {
        let mut s = UnixStream::connect(server.path()).unwrap();
        let m = Request::Write {
            path: "/half".into(),
            value: b"never".to_vec(),
        }
        .to_message(1, 0)
        .to_bytes()
        .unwrap();
        s.write_all(&m[..cut]).unwrap();
        drop(s);
    }
    healthy(&server);
    let mut c = Client::new(UnixTransport::connect(server.path()).unwrap());
    assert_eq!(c.read("/half").unwrap_err().xs(), Some(XsError::ENOENT));
}

#[test]
fn flood_without_reading_does_not_starve_others() {
    let server = common::daemon("flood");
    let path = server.path().to_owned();
    let flooder = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let one = Request::Read("/".into())
            .to_message(1, 0)
            .to_bytes()
            .unwrap();
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        // Writes until the daemon stops reading (back-pressure) or times out.
        for _ in 0..1000 {
            if s.write_all(&batch).is_err() {
                break;
            }
        }
        s
    });
    std::thread::sleep(Duration::from_millis(200));
    healthy(&server);
    let s = flooder.join().unwrap();
    drop(s);
    healthy(&server);
}

#[test]
fn many_connections_come_and_go() {
    let server = common::daemon("churn");
    for i in 0..200 {
        let mut c = Client::new(UnixTransport::connect(server.path()).unwrap());
        c.watch("/churn", b"t").unwrap();
        c.transaction_start().unwrap();
        if i % 50 == 0 {
            healthy(&server);
        }
    }
    healthy(&server);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random and truncated byte streams never take the daemon down.
    #[test]
    fn random_streams_never_crash(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..600), 0..6),
        valid_prefix in any::<bool>())
    {
        let server = common::daemon("fuzz");
        let mut s = UnixStream::connect(server.path()).unwrap();
        if valid_prefix {
            let m = Request::Write { path: "/f".into(), value: b"1".to_vec() }
                .to_message(1, 0).to_bytes().unwrap();
            let _ = s.write_all(&m);
        }
        for c in &chunks {
            let _ = s.write_all(c);
        }
        drop(s);
        healthy(&server);
    }

    /// Well-framed messages with random types and payloads get one reply
    /// each (or a disconnect) and never crash the daemon.
    #[test]
    fn random_messages_get_replies(ty in 0u32..30, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let server = common::daemon("fuzz-msg");
        let mut t = UnixTransport::connect(server.path()).unwrap();
        use xenshare::store::Transport;
        let m = Message::new(MsgType::from_raw(ty), 42, 0, payload);
        t.send(&m).unwrap();
        loop {
            match t.recv(Some(Duration::from_secs(5))) {
                Ok(Some(r)) if r.ty == MsgType::WatchEvent => continue,
                Ok(Some(r)) => { prop_assert_eq!(r.req_id, 42); break; }
                Ok(None) => prop_assert!(false, "no reply"),
                Err(_) => break,
            }
        }
        healthy(&server);
    }
}

/// Stopping a server whose socket file someone removed must not hang (the
/// accept loop used to be woken by connecting to that path).
#[test]
fn stopping_a_server_whose_socket_file_was_removed_does_not_hang() {
    let dir = std::env::temp_dir().join(format!("xenshare-xs-rm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xs.sock");
    let h = xenshare_xenstored::server::spawn(Default::default(), &path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(h);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok(),
        "dropping the server hung"
    );
}

/// A client that writes thousands of requests in one go (far more than
/// one read of the loop takes, so requests straddle its reads, and more
/// than its outstanding-reply limit, so reading pauses while the daemon
/// still holds requests it has seen) gets exactly one reply per request,
/// in order, each with the right answer: requests the loop has looked at
/// and those it has taken out of the socket stay in step.
#[test]
fn pipelined_requests_across_reads_are_each_answered_once_in_order() {
    use std::io::Read;
    use std::time::Instant;
    use xenshare::store::wire::Decoder;

    const N: u32 = 3000;
    let server = common::daemon("pipeline");
    let mut c = Client::new(UnixTransport::connect(server.path()).unwrap());
    for k in 0..7 {
        c.write(&format!("/pipe/k{k}"), format!("value-{k}").as_bytes())
            .unwrap();
    }
    let mut s = UnixStream::connect(server.path()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        for i in 0..N {
            let m = Request::Read(format!("/pipe/k{}", i % 7)).to_message(i, 0);
            bytes.extend(m.to_bytes().unwrap());
        }
        // Well over the loop's read chunk and the daemon's outstanding
        // limit, in one write.
        assert!(bytes.len() > 4 * xenshare_xenstored::server::READ_CHUNK);
        w.write_all(&bytes).unwrap();
    });
    let end = Instant::now() + Duration::from_secs(60);
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 65536];
    let mut next = 0;
    while next < N {
        assert!(Instant::now() < end, "only {next} replies of {N}");
        while let Some(m) = dec.next_message().unwrap() {
            assert_eq!(m.req_id, next, "replies out of order or repeated");
            assert_eq!(m.ty, MsgType::Read);
            assert_eq!(m.payload, format!("value-{}", next % 7).as_bytes());
            next += 1;
        }
        if next == N {
            break;
        }
        common::pump(&mut s, &mut buf, &mut dec, &format!("after {next} replies"));
    }
    writer.join().unwrap();
    // Nothing more: no reply came twice.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match s.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "{n} bytes after the last reply"),
        Err(e) => assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
    }
    healthy(&server);
}
