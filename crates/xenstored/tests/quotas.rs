//! Per-domain quotas give C xenstored's errors, and the daemon stays healthy.

use xenshare::store::{Perms, XsError};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon};

fn setup(
    config: Config,
) -> (
    Daemon,
    xenshare::store::Client<xenshare_xenstored::InProcTransport>,
) {
    let d = Daemon::new(config);
    let mut dom0 = inproc::client(&d, DomId(0));
    dom0.mkdir("/local/domain/3").unwrap();
    dom0.set_perms("/local/domain/3", &Perms::parse_fields(&[b"n3"]).unwrap())
        .unwrap();
    (d, dom0)
}

#[test]
fn node_quota_is_enospc() {
    let (d, mut dom0) = setup(Config {
        max_nodes: 5,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    // The home directory itself is owned by 3 and counts.
    for i in 0..4 {
        g.write(&format!("n{i}"), b"x").unwrap();
    }
    assert_eq!(g.write("n4", b"x").unwrap_err().xs(), Some(XsError::ENOSPC));
    // A write that would create two nodes fails as a whole.
    g.rm("n3").unwrap();
    assert_eq!(
        g.write("a/b", b"x").unwrap_err().xs(),
        Some(XsError::ENOSPC)
    );
    assert_eq!(g.try_read("a").unwrap(), None);
    // Overwriting is fine, dom0 is exempt.
    g.write("n0", b"y").unwrap();
    for i in 0..20 {
        dom0.write(&format!("/d0/{i}"), b"x").unwrap();
    }
    assert_eq!(dom0.directory("/d0").unwrap().len(), 20);
}

#[test]
fn node_size_quota_is_enospc() {
    let (d, mut dom0) = setup(Config {
        max_node_size: 100,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    g.write("ok", &[b'a'; 100]).unwrap();
    assert_eq!(
        g.write("big", &[b'a'; 101]).unwrap_err().xs(),
        Some(XsError::ENOSPC)
    );
    dom0.write("/big", &[b'a'; 4000]).unwrap();
}

#[test]
fn watch_quota_is_e2big() {
    let (d, _dom0) = setup(Config {
        max_watches: 3,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    for i in 0..3 {
        g.watch("w", format!("t{i}").as_bytes()).unwrap();
    }
    assert_eq!(g.watch("w", b"t3").unwrap_err().xs(), Some(XsError::E2BIG));
    assert_eq!(g.watch("w", b"t0").unwrap_err().xs(), Some(XsError::EEXIST));
    g.unwatch("w", b"t0").unwrap();
    g.watch("w", b"t3").unwrap();
}

#[test]
fn transaction_quota_is_enospc() {
    let (d, _dom0) = setup(Config {
        max_transactions: 2,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    let t1 = g.transaction_start().unwrap();
    let _t2 = g.transaction_start().unwrap();
    assert_eq!(
        g.transaction_start().unwrap_err().xs(),
        Some(XsError::ENOSPC)
    );
    g.transaction_end(t1, false).unwrap();
    g.transaction_start().unwrap();
}

#[test]
fn perms_and_transaction_node_quotas() {
    let (d, _dom0) = setup(Config {
        max_perms: 2,
        max_tx_nodes: 4,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    g.write("p", b"").unwrap();
    let three = Perms::parse_fields(&[b"n3", b"r1", b"r2"]).unwrap();
    assert_eq!(
        g.set_perms("p", &three).unwrap_err().xs(),
        Some(XsError::ENOSPC)
    );
    let t = g.transaction_start().unwrap();
    let mut hit = None;
    for i in 0..10 {
        if let Err(e) = g.write_in(t, &format!("tx{i}"), b"x") {
            hit = e.xs();
            break;
        }
    }
    assert_eq!(hit, Some(XsError::ENOSPC));
}

#[test]
fn daemon_stays_healthy_after_quota_errors() {
    let server = xenshare_xenstored::spawn(
        Config {
            max_nodes: 2,
            ..Config::default()
        },
        std::env::temp_dir().join(format!("xenshare-xs-quota-{}.sock", std::process::id())),
    )
    .unwrap();
    let mut dom0 = inproc::client(server.daemon(), DomId(0));
    dom0.mkdir("/local/domain/3").unwrap();
    dom0.set_perms("/local/domain/3", &Perms::parse_fields(&[b"n3"]).unwrap())
        .unwrap();
    let mut g = inproc::client(server.daemon(), DomId(3));
    g.write("a", b"").unwrap();
    for _ in 0..100 {
        assert_eq!(g.write("b", b"").unwrap_err().xs(), Some(XsError::ENOSPC));
    }
    // Same guest, other requests, and other clients over the socket.
    assert_eq!(g.read("a").unwrap(), b"");
    let mut s = xenshare::store::Client::new(
        xenshare::store::UnixTransport::connect(server.path()).unwrap(),
    );
    s.write("/still/alive", b"yes").unwrap();
    assert_eq!(s.read("/still/alive").unwrap(), b"yes");
}
