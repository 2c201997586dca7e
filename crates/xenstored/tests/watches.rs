//! Watches: initial firing, relative paths, special domain watches, order.

use std::time::Duration;

use xenshare::store::{Perms, XsError};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon, DomainEvent};

const T: Option<Duration> = Some(Duration::from_secs(2));
const QUIET: Option<Duration> = Some(Duration::from_millis(50));

#[test]
fn relative_watch_fires_with_relative_paths() {
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    dom0.mkdir("/local/domain/4").unwrap();
    dom0.set_perms("/local/domain/4", &Perms::parse_fields(&[b"n4"]).unwrap())
        .unwrap();
    let mut g = inproc::client(&d, DomId(4));
    g.watch("device", b"rel").unwrap();
    let ev = g.next_event(T).unwrap().unwrap();
    assert_eq!(
        (ev.path.as_str(), ev.token.as_slice()),
        ("device", &b"rel"[..])
    );
    dom0.write("/local/domain/4/device/vbd/0", b"x").unwrap();
    assert_eq!(g.next_event(T).unwrap().unwrap().path, "device/vbd/0");
    g.watch("/local/domain/4/device", b"abs").unwrap();
    assert_eq!(
        g.next_event(T).unwrap().unwrap().path,
        "/local/domain/4/device"
    );
    g.unwatch("device", b"rel").unwrap();
    assert_eq!(
        g.unwatch("device", b"rel").unwrap_err().xs(),
        Some(XsError::ENOENT)
    );
}

#[test]
fn events_arrive_in_order_and_rm_fires_for_subtree() {
    let d = Daemon::new(Config::default());
    let mut w = inproc::client(&d, DomId(0));
    let mut c = inproc::client(&d, DomId(0));
    c.write("/o/a/b", b"").unwrap();
    w.watch("/o", b"o").unwrap();
    w.watch("/o/a/b", b"deep").unwrap();
    let _ = w.next_event(T).unwrap();
    let _ = w.next_event(T).unwrap();
    for i in 0..50 {
        c.write(&format!("/o/k{i}"), b"").unwrap();
    }
    for i in 0..50 {
        assert_eq!(w.next_event(T).unwrap().unwrap().path, format!("/o/k{i}"));
    }
    c.rm("/o/a").unwrap();
    let mut got: Vec<(String, Vec<u8>)> = w.events(QUIET).map(|e| (e.path, e.token)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("/o/a".into(), b"o".to_vec()),
            // Removed descendants fire only watches set exactly on them.
            ("/o/a/b".into(), b"deep".to_vec()),
        ]
    );
}

#[test]
fn introduce_and_release_fire_special_watches() {
    let d = Daemon::new(Config::default());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    d.on_domain_event(move |e| s2.lock().unwrap().push(e));
    let mut dom0 = inproc::client(&d, DomId(0));
    dom0.watch("@introduceDomain", b"i").unwrap();
    dom0.watch("@releaseDomain", b"r").unwrap();
    assert_eq!(
        dom0.next_event(T).unwrap().unwrap().path,
        "@introduceDomain"
    );
    assert_eq!(dom0.next_event(T).unwrap().unwrap().path, "@releaseDomain");
    assert!(!dom0.is_domain_introduced(DomId(7)).unwrap());
    dom0.introduce(DomId(7), 0x1234, 3).unwrap();
    assert!(dom0.is_domain_introduced(DomId(7)).unwrap());
    assert_eq!(dom0.next_event(T).unwrap().unwrap().token, b"i");
    // A guest without permission on the special node sees nothing.
    let mut g = inproc::client(&d, DomId(7));
    g.watch("@releaseDomain", b"g").unwrap();
    let _initial = g.next_event(T).unwrap();
    dom0.release(DomId(7)).unwrap();
    assert_eq!(dom0.next_event(T).unwrap().unwrap().token, b"r");
    assert!(!dom0.is_domain_introduced(DomId(7)).unwrap());
    // The released domain's connection is closed.
    assert!(g.read("/").is_err());
    assert_eq!(
        dom0.release(DomId(7)).unwrap_err().xs(),
        Some(XsError::ENOENT)
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            DomainEvent::Introduced {
                domid: DomId(7),
                gfn: 0x1234,
                port: 3
            },
            DomainEvent::Released(DomId(7)),
        ]
    );
    // With permission on the special node a guest is told.
    dom0.set_perms(
        "@introduceDomain",
        &Perms::parse_fields(&[b"n0", b"r8"]).unwrap(),
    )
    .unwrap();
    let mut g8 = inproc::client(&d, DomId(8));
    g8.watch("@introduceDomain", b"g8").unwrap();
    let _ = g8.next_event(T).unwrap();
    dom0.introduce(DomId(9), 1, 1).unwrap();
    assert_eq!(g8.next_event(T).unwrap().unwrap().token, b"g8");
    assert_eq!(
        g8.set_perms("@introduceDomain", &Perms::parse_fields(&[b"b8"]).unwrap())
            .unwrap_err()
            .xs(),
        Some(XsError::EACCES)
    );
}

#[test]
fn misc_requests() {
    let d = Daemon::new(Config::default());
    let mut c = inproc::client(&d, DomId(0));
    assert_eq!(c.get_domain_path(DomId(12)).unwrap(), "/local/domain/12");
    // DIRECTORY_PART serves lists too long for one reply.
    for i in 0..400 {
        c.write(&format!("/big/child-with-a-long-name-{i:04}"), b"")
            .unwrap();
    }
    let raw = c.request(
        xenshare::store::TxId::NONE,
        &xenshare::store::Request::Directory("/big".into()),
    );
    assert_eq!(raw.unwrap_err().xs(), Some(XsError::E2BIG));
    let list = c.directory("/big").unwrap();
    assert_eq!(list.len(), 400);
    assert_eq!(list[399], "child-with-a-long-name-0399");
    c.reset_watches().unwrap();
    let r = c.request(
        xenshare::store::TxId::NONE,
        &xenshare::store::Request::Control(vec![b"print".to_vec(), b"hello".to_vec()]),
    );
    assert_eq!(r.unwrap(), b"OK\0");
    let bad = c.request(
        xenshare::store::TxId::NONE,
        &xenshare::store::Request::Control(vec![b"nonsense".to_vec()]),
    );
    assert_eq!(bad.unwrap_err().xs(), Some(XsError::EINVAL));
    assert_eq!(c.rm("/").unwrap_err().xs(), Some(XsError::EINVAL));
    assert_eq!(c.rm("/no/such").unwrap_err().xs(), Some(XsError::ENOENT));
    c.rm("/big/none").unwrap();
    // Path length rule of C xenstored 4.17.
    let tail = "a".repeat(2048);
    c.write(&format!("/local/domain/0/{tail}"), b"").unwrap();
    assert_eq!(
        c.write(&format!("/{tail}a"), b"").unwrap_err().xs(),
        Some(XsError::EINVAL)
    );
}
