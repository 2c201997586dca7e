//! A client that never reads its output cannot make the daemon grow
//! (XSA-349): on every transport the bytes queued to one connection are
//! capped; past the cap its watch events are dropped and counted, its
//! replies still arrive, and a connection that cannot even take its
//! replies is closed. (The shared-ring transport's test is in
//! `ring_transport.rs`.)

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xenshare::store::client::Transport;
use xenshare::store::wire::{Decoder, MsgType, Request};
use xenshare::store::{Perms, XsError};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon, InProcTransport};

const T: Option<Duration> = Some(Duration::from_secs(5));

fn guest_home(d: &Daemon, domid: u16) {
    let mut dom0 = inproc::client(d, DomId(0));
    let home = format!("/local/domain/{domid}");
    dom0.mkdir(&home).unwrap();
    dom0.set_perms(
        &home,
        &Perms::parse_fields(&[format!("n{domid}").as_bytes()]).unwrap(),
    )
    .unwrap();
}

#[test]
fn watch_events_for_a_client_that_never_reads_are_capped_and_counted() {
    let cap = 8 * 1024;
    let d = Daemon::new(Config {
        max_queued_bytes: cap,
        ..Config::default()
    });
    guest_home(&d, 3);
    let mut g = inproc::client(&d, DomId(3));
    g.watch("w", b"tok").unwrap();
    assert_eq!(g.next_event(T).unwrap().unwrap().path, "w");
    let mut dom0 = inproc::client(&d, DomId(0));
    let writes = 5000;
    for i in 0..writes {
        dom0.write("/local/domain/3/w", i.to_string().as_bytes())
            .unwrap();
    }
    let conns = d.connections_of(DomId(3));
    assert_eq!(conns.len(), 1);
    let q = &conns[0].queue;
    assert!(q.queued_bytes() <= cap, "{} queued", q.queued_bytes());
    let dropped = q.dropped_events();
    assert!(dropped > 0);
    assert_eq!(d.dropped_events(), dropped);
    // The reply to a request made now is not dropped: it comes after the
    // events that were kept.
    assert_eq!(g.read("w").unwrap(), (writes - 1).to_string().as_bytes());
    let mut kept = 0;
    while g.pending_event().is_some() {
        kept += 1;
    }
    assert!(kept > 0);
    assert_eq!(kept + dropped, writes as u64);
    // Once it reads again, it gets events again.
    dom0.write("/local/domain/3/w", b"again").unwrap();
    assert_eq!(g.next_event(T).unwrap().unwrap().path, "w");
}

#[test]
fn connection_that_cannot_take_its_replies_is_closed() {
    let d = Daemon::new(Config {
        max_queued_bytes: 4096,
        reply_headroom: 16 * 1024,
        ..Config::default()
    });
    let mut dom0 = inproc::client(&d, DomId(0));
    dom0.write("/big", &[b'b'; 4000]).unwrap();
    let mut t = InProcTransport::connect(&d, DomId(0));
    let id = t.connection().id;
    let mut sent = 0;
    for i in 1..=100 {
        let m = Request::Read("/big".into()).to_message(i, 0);
        if t.send(&m).is_err() {
            break;
        }
        sent += 1;
        assert!(t.connection().queue.queued_bytes() <= 4096 + 16 * 1024);
    }
    // It was cut off after about five replies; replies it had were not
    // silently dropped (the whole connection went instead).
    assert!(sent < 100, "never closed");
    assert!(t.connection().queue.is_closed());
    assert!(d.connections_of(DomId(0)).iter().all(|c| c.id != id));
    // Everyone else carries on.
    assert_eq!(dom0.read("/big").unwrap().len(), 4000);
}

/// Reads messages from `s` (through `dec`, which keeps what comes after)
/// until the reply to request `req_id`, counting the watch events before it.
fn read_until_reply(s: &mut UnixStream, dec: &mut Decoder, req_id: u32) -> (usize, Vec<u8>) {
    let end = Instant::now() + Duration::from_secs(30);
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut events = 0;
    loop {
        assert!(Instant::now() < end, "no reply to request {req_id}");
        match dec.next_message().unwrap() {
            Some(m) if m.ty == MsgType::WatchEvent => {
                events += 1;
                continue;
            }
            Some(m) if m.req_id == req_id => return (events, m.payload),
            Some(_) => continue,
            None => {}
        }
        common::pump(s, &mut buf, dec, "before the reply");
    }
}

#[test]
fn socket_client_that_never_reads_is_capped_and_drops_watch_events() {
    let cap = 64 * 1024;
    let server = common::daemon_with(
        "backlog",
        Config {
            max_queued_bytes: cap,
            ..Config::default()
        },
    );
    let d = server.daemon().clone();
    let mut dom0 = inproc::client(&d, DomId(0));
    let own = dom0.transport_mut().connection().id;
    let mut s = UnixStream::connect(server.path()).unwrap();
    let watch = Request::Watch {
        path: "/w".into(),
        token: b"t".to_vec(),
    }
    .to_message(1, 0);
    s.write_all(&watch.to_bytes().unwrap()).unwrap();
    // Wait until the daemon has the watch (its reply is queued or sent).
    let mut dec = Decoder::new();
    let (_, ok) = read_until_reply(&mut s, &mut dec, 1);
    assert_eq!(ok, b"OK\0");
    // Long names: the events are far more than any socket buffer holds.
    let name = "n".repeat(200);
    let writes = 20_000;
    for i in 0..writes {
        dom0.write(&format!("/w/{name}{}", i % 10), b"x").unwrap();
    }
    let dropped = d.dropped_events();
    assert!(dropped > 0, "nothing dropped");
    for c in d.connections_of(DomId(0)).iter().filter(|c| c.id != own) {
        assert!(c.queue.queued_bytes() <= cap, "{}", c.queue.queued_bytes());
    }
    // The daemon serves others, and this client's next reply arrives
    // after the events it kept.
    dom0.write("/alive", b"yes").unwrap();
    let read = Request::Read("/alive".into()).to_message(2, 0);
    s.write_all(&read.to_bytes().unwrap()).unwrap();
    let (events, value) = read_until_reply(&mut s, &mut dec, 2);
    assert_eq!(value, b"yes");
    assert!(events > 0);
    assert_eq!(
        events as u64 + dropped,
        writes as u64 + 1,
        "initial event + writes"
    );
    assert_eq!(dom0.read("/nope").unwrap_err().xs(), Some(XsError::ENOENT));
}

/// One event loop serves every socket connection: a client that floods
/// requests and never reads its replies or its watch events does not
/// stall another socket client, which keeps getting every answer, while
/// what is queued for the silent one stays within its caps.
#[test]
fn socket_client_that_floods_and_never_reads_does_not_stall_another() {
    let cap = 64 * 1024;
    let config = Config {
        max_queued_bytes: cap,
        ..Config::default()
    };
    let limit = cap + config.reply_headroom;
    let server = common::daemon_with("stall", config);
    let d = server.daemon().clone();
    let mut dom0 = inproc::client(&d, DomId(0));
    dom0.write("/big", &[b'b'; 4000]).unwrap();

    // The silent client: a watch on /s, then a flood of reads of /big
    // (4 KiB replies each), and it never reads anything.
    let mut silent = UnixStream::connect(server.path()).unwrap();
    let watch = Request::Watch {
        path: "/s".into(),
        token: b"t".to_vec(),
    }
    .to_message(1, 0);
    silent.write_all(&watch.to_bytes().unwrap()).unwrap();
    let one = Request::Read("/big".into())
        .to_message(2, 0)
        .to_bytes()
        .unwrap();
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 256).collect();
    silent
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let flooder = std::thread::spawn(move || {
        // Until the daemon stops reading it (its write times out).
        for _ in 0..64 {
            if silent.write_all(&batch).is_err() {
                break;
            }
        }
        silent
    });

    // The other client writes under /s (every write fires the silent
    // client's watch) and must get each answer.
    let path = server.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let active = std::thread::spawn(move || {
        let mut c = xenshare::store::Client::new(xenshare::store::UnixTransport::connect(&path)?);
        for i in 0..2000 {
            c.write(&format!("/s/k{}", i % 16), i.to_string().as_bytes())?;
            let _ = tx.send(i);
        }
        c.read("/s/k15")
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered = 0;
    while answered < 2000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => answered += 1,
            Err(_) => break,
        }
    }
    assert_eq!(answered, 2000, "the active client stalled");
    assert_eq!(active.join().unwrap().unwrap(), b"1999");

    // The silent client's backlog stayed within its caps (or it was
    // closed for not taking its replies): the daemon did not grow.
    let silent = flooder.join().unwrap();
    for c in d.connections_of(DomId(0)) {
        assert!(
            c.queue.queued_bytes() <= limit,
            "{}",
            c.queue.queued_bytes()
        );
    }
    drop(silent);
    assert_eq!(dom0.read("/s/k0").unwrap(), b"1984");
}
