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

/// XSA-421 class: two transactions that each stay under the node quota on
/// their own cannot together push the domain over it. The second commit is
/// refused with ENOSPC and changes nothing.
#[test]
fn transaction_commit_rechecks_node_quota() {
    let (d, _dom0) = setup(Config {
        max_nodes: 6,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    // Home + a + b: 3 of 6.
    g.mkdir("a").unwrap();
    g.mkdir("b").unwrap();
    let t1 = g.transaction_start().unwrap();
    let t2 = g.transaction_start().unwrap();
    // Each adds two nodes under a different parent: no conflict, and each
    // alone would end at 5 of 6.
    g.write_in(t1, "a/1", b"x").unwrap();
    g.write_in(t1, "a/2", b"x").unwrap();
    g.write_in(t2, "b/1", b"x").unwrap();
    g.write_in(t2, "b/2", b"x").unwrap();
    g.transaction_end(t1, true).unwrap();
    assert_eq!(
        g.transaction_end(t2, true).unwrap_err().xs(),
        Some(XsError::ENOSPC)
    );
    assert_eq!(g.try_read("b/1").unwrap(), None);
    assert_eq!(g.try_read("b/2").unwrap(), None);
    assert_eq!(g.directory("a").unwrap().len(), 2);
    // Within the quota the same pattern commits.
    g.rm("a").unwrap();
    let t3 = g.transaction_start().unwrap();
    g.write_in(t3, "b/1", b"x").unwrap();
    g.transaction_end(t3, true).unwrap();
    assert_eq!(g.read("b/1").unwrap(), b"x");
}

/// XSA-326 style: the bytes a domain's nodes take (names, values,
/// permissions) are bounded; past the quota writes fail with ENOMEM as in C
/// xenstored, freeing space lets writes succeed again, dom0 is exempt, and
/// a transaction cannot slip past the quota at commit.
#[test]
fn per_domain_memory_quota_refuses_writes() {
    let (d, mut dom0) = setup(Config {
        max_memory: 4096,
        ..Config::default()
    });
    let mut g = inproc::client(&d, DomId(3));
    let v = vec![b'v'; 1000];
    let mut stored = 0;
    let err = loop {
        match g.write(&format!("n{stored}"), &v) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10, "quota never hit");
    };
    assert_eq!(err.xs(), Some(XsError::ENOMEM));
    assert_eq!(
        stored, 3,
        "4096 bytes hold three 1000-byte values and names"
    );
    // The refused node does not exist; growing an existing one is refused
    // too, shrinking is fine.
    assert_eq!(g.try_read(&format!("n{stored}")).unwrap(), None);
    assert_eq!(
        g.write("n0", &vec![b'w'; 2000]).unwrap_err().xs(),
        Some(XsError::ENOMEM)
    );
    g.write("n0", b"small").unwrap();
    g.write("n3", &v).unwrap();
    // Freeing makes room again.
    g.rm("n1").unwrap();
    g.write("n4", &v).unwrap();
    // Two transactions, each fine alone, cannot commit together.
    // (Under different parents, so they do not conflict.)
    g.rm("n4").unwrap();
    g.mkdir("p").unwrap();
    g.mkdir("q").unwrap();
    let t1 = g.transaction_start().unwrap();
    let t2 = g.transaction_start().unwrap();
    g.write_in(t1, "p/x", &v).unwrap();
    g.write_in(t2, "q/y", &v).unwrap();
    g.transaction_end(t1, true).unwrap();
    assert_eq!(
        g.transaction_end(t2, true).unwrap_err().xs(),
        Some(XsError::ENOMEM)
    );
    assert_eq!(g.try_read("q/y").unwrap(), None);
    // Dom0 is not limited, and can still write into the guest's home.
    for i in 0..10 {
        dom0.write(&format!("/d0/{i}"), &v).unwrap();
    }
    dom0.write("/local/domain/3/from-dom0", &v).unwrap();
}
