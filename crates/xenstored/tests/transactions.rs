//! Transactions: conflict detection, abort, concurrent read-modify-write.

mod common;

use std::thread;

use xenshare::store::{Client, UnixTransport, XsError};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon};

#[test]
fn conflicting_commit_gets_eagain_and_changes_nothing() {
    let d = Daemon::new(Config::default());
    let mut a = inproc::client(&d, DomId(0));
    let mut b = inproc::client(&d, DomId(0));
    a.write("/c", b"1").unwrap();
    let t = a.transaction_start().unwrap();
    assert_eq!(a.read_in(t, "/c").unwrap(), b"1");
    b.write("/c", b"2").unwrap();
    // The transaction keeps seeing what it read first.
    assert_eq!(a.read_in(t, "/c").unwrap(), b"1");
    a.write_in(t, "/c", b"3").unwrap();
    a.write_in(t, "/other", b"x").unwrap();
    assert_eq!(
        a.transaction_end(t, true).unwrap_err().xs(),
        Some(XsError::EAGAIN)
    );
    assert_eq!(a.read("/c").unwrap(), b"2");
    assert_eq!(a.try_read("/other").unwrap(), None);
    // The id is gone after the failed commit.
    assert_eq!(a.read_in(t, "/c").unwrap_err().xs(), Some(XsError::ENOENT));
}

#[test]
fn abort_discards_and_isolation_holds() {
    let d = Daemon::new(Config::default());
    let mut a = inproc::client(&d, DomId(0));
    let mut b = inproc::client(&d, DomId(0));
    let t = a.transaction_start().unwrap();
    a.write_in(t, "/x/y", b"v").unwrap();
    assert_eq!(a.read_in(t, "/x/y").unwrap(), b"v");
    // Not visible outside before commit.
    assert_eq!(b.read("/x/y").unwrap_err().xs(), Some(XsError::ENOENT));
    a.transaction_end(t, false).unwrap();
    assert_eq!(b.read("/x/y").unwrap_err().xs(), Some(XsError::ENOENT));
    // Nested start and unknown ids.
    let t = a.transaction_start().unwrap();
    let nested = a.request(t, &xenshare::store::Request::TransactionStart);
    assert_eq!(nested.unwrap_err().xs(), Some(XsError::EBUSY));
    a.transaction_end(t, true).unwrap();
    let bogus = xenshare::store::TxId(9999);
    assert_eq!(
        a.read_in(bogus, "/").unwrap_err().xs(),
        Some(XsError::ENOENT)
    );
}

#[test]
fn commit_fires_watches_only_at_commit() {
    let d = Daemon::new(Config::default());
    let mut w = inproc::client(&d, DomId(0));
    let mut a = inproc::client(&d, DomId(0));
    w.watch("/tw", b"t").unwrap();
    assert_eq!(
        w.next_event(Some(std::time::Duration::from_secs(1)))
            .unwrap()
            .unwrap()
            .path,
        "/tw"
    );
    let t = a.transaction_start().unwrap();
    a.write_in(t, "/tw/k", b"1").unwrap();
    assert!(w
        .next_event(Some(std::time::Duration::from_millis(50)))
        .unwrap()
        .is_none());
    a.transaction_end(t, true).unwrap();
    let ev = w
        .next_event(Some(std::time::Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    assert_eq!(ev.path, "/tw/k");
}

fn increment<T: xenshare::store::Transport>(c: &mut Client<T>, key: &str) -> u32 {
    let mut attempts = 0;
    c.transaction(1000, |tx| {
        attempts += 1;
        let v: u64 = String::from_utf8(tx.read(key)?).unwrap().parse().unwrap();
        tx.write(key, (v + 1).to_string().as_bytes())
    })
    .unwrap();
    attempts
}

#[test]
fn concurrent_counters_over_the_socket_stay_consistent() {
    let server = common::daemon("tx-counter");
    let mut c = Client::new(UnixTransport::connect(server.path()).unwrap());
    c.write("/counter", b"0").unwrap();
    const CLIENTS: usize = 6;
    const EACH: usize = 50;
    let path = server.path().to_owned();
    let retries: u32 = thread::scope(|s| {
        let hs: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let path = path.clone();
                s.spawn(move || {
                    let mut c = Client::new(UnixTransport::connect(&path).unwrap());
                    (0..EACH)
                        .map(|_| increment(&mut c, "/counter") - 1)
                        .sum::<u32>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(
        c.read("/counter").unwrap(),
        (CLIENTS * EACH).to_string().as_bytes()
    );
    eprintln!("{retries} transaction retries after EAGAIN");
}

#[test]
fn closure_retry_bound_is_enforced() {
    let d = Daemon::new(Config::default());
    let mut a = inproc::client(&d, DomId(0));
    let mut b = inproc::client(&d, DomId(0));
    a.write("/r", b"0").unwrap();
    let mut n = 0;
    let r = a.transaction(2, |tx| {
        n += 1;
        tx.read("/r")?;
        // Someone else always gets in first.
        b.write("/r", n.to_string().as_bytes())?;
        tx.write("/r", b"mine")
    });
    assert_eq!(
        r.unwrap_err(),
        xenshare::store::ClientError::TooManyRetries(3)
    );
    assert_eq!(n, 3);
    assert_eq!(a.read("/r").unwrap(), b"3");
}

/// XSA-440 class: guests and dom0 hammering the same nodes with
/// transactions that conflict, abort, remove and re-create subtrees, end
/// unknown or already-ended ids, and disconnect with transactions open.
/// Nothing crashes, every failure is an ordinary error, and the daemon
/// keeps serving with a consistent tree.
#[test]
fn many_conflicting_transactions_never_crash_the_daemon() {
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    dom0.write("/shared/n", b"0").unwrap();
    dom0.set_perms(
        "/shared",
        &xenshare::store::Perms::parse_fields(&[b"n0", b"b1", b"b2", b"b3"]).unwrap(),
    )
    .unwrap();
    thread::scope(|s| {
        for w in 0u16..4 {
            let d = d.clone();
            s.spawn(move || {
                let domid = DomId(w);
                for round in 0..150u32 {
                    let mut c = inproc::client(&d, domid);
                    let t = match c.transaction_start() {
                        Ok(t) => t,
                        Err(e) => {
                            assert_eq!(e.xs(), Some(XsError::ENOSPC));
                            continue;
                        }
                    };
                    let _ = c.read_in(t, "/shared/n");
                    let _ = c.write_in(t, "/shared/n", round.to_string().as_bytes());
                    let _ = c.write_in(t, &format!("/shared/sub/{w}/{round}"), b"x");
                    if round % 7 == 0 {
                        let _ = c.rm_in(t, "/shared/sub");
                    }
                    match round % 5 {
                        // Leave it open and drop the connection.
                        0 => continue,
                        1 => {
                            let _ = c.transaction_end(t, false);
                        }
                        _ => match c.transaction_end(t, true) {
                            Ok(()) => {}
                            Err(e) => assert!(
                                matches!(
                                    e.xs(),
                                    Some(XsError::EAGAIN | XsError::ENOENT | XsError::EACCES)
                                ),
                                "{e:?}"
                            ),
                        },
                    }
                    // Ending it again, or an id never issued, is ENOENT.
                    assert_eq!(
                        c.transaction_end(t, true).unwrap_err().xs(),
                        Some(XsError::ENOENT)
                    );
                    assert_eq!(
                        c.transaction_end(xenshare::store::TxId(0xdead), false)
                            .unwrap_err()
                            .xs(),
                        Some(XsError::ENOENT)
                    );
                }
            });
        }
    });
    // Still serving, and the tree is whole: every listed child exists.
    dom0.write("/after", b"ok").unwrap();
    assert_eq!(dom0.read("/after").unwrap(), b"ok");
    let mut stack = vec!["/".to_string()];
    while let Some(p) = stack.pop() {
        for c in dom0.directory(&p).unwrap() {
            let child = if p == "/" {
                format!("/{c}")
            } else {
                format!("{p}/{c}")
            };
            assert!(
                dom0.try_read(&child).unwrap().is_some(),
                "{child} listed but missing"
            );
            stack.push(child);
        }
    }
    assert_eq!(d.with_store(|s| s.connection_count()), 1);
}
