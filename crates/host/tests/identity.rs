//! Each domain has its own identity: ids are assigned by the host, only
//! the host's owner (token) may choose one and nobody becomes dom0; the
//! grant inspector is privileged; the toolstack creates and removes
//! `/local/domain/<N>` as libxl does, fires `@introduceDomain` /
//! `@releaseDomain`, and gives each domain a xenstored socket that speaks
//! only for it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use xenshare::store::{Client, PermKind, Perms, UnixTransport, XsError};
use xenshare::DomId;
use xenshare_host::client::{ClientError, Conn};
use xenshare_host::toolstack::{domain_xenstore_path, Token};
use xenshare_host::wire::{op, RemoteError, Writer};
use xenshare_host::{Host, RemoteDomain};

mod common;

use common::{support, wait_for};

/// A host in its own directory, removed (after the host) when dropped.
fn host(name: &str) -> support::Scoped<Host> {
    common::host("ident", name).0
}

fn join_raw(c: &Conn, want: u32) -> Result<u16, ClientError> {
    let mut w = Writer::new(op::JOIN);
    w.u32(want);
    let p = c.call(&w, &[])?;
    let mut r = xenshare_host::wire::Reader::new(&p.data)?;
    Ok(r.u16()?)
}

fn auth(c: &Conn, token: &[u8]) -> Result<(), ClientError> {
    let mut w = Writer::new(op::AUTH);
    w.bytes(token);
    c.call(&w, &[]).map(|_| ())
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Remote(RemoteError::Refused(why))) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_process_cannot_join_as_dom0_or_a_taken_domid_or_choose_without_the_token() {
    let h = host("join");
    // Asking for any id: the host assigns one, never 0.
    let a = Conn::connect(h.path()).unwrap();
    let first = join_raw(&a, u32::MAX).unwrap();
    assert!(first >= 1);
    let b = Conn::connect(h.path()).unwrap();
    let second = join_raw(&b, u32::MAX).unwrap();
    assert_ne!(second, first);
    // Choosing an id without the token, or with a wrong one: refused.
    let c = Conn::connect(h.path()).unwrap();
    refused(join_raw(&c, 7));
    refused(auth(&c, &[0u8; 32]));
    refused(auth(&c, b"short"));
    refused(join_raw(&c, 7));
    // With the token: dom0 never, a taken id never, a free one yes.
    let token = Token::read(h.token_path()).unwrap();
    assert_eq!(
        std::fs::metadata(h.token_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    auth(&c, &token).unwrap();
    assert!(refused(join_raw(&c, 0)).contains("domain 0"));
    refused(join_raw(&c, u32::from(first)));
    assert_eq!(join_raw(&c, 7).unwrap(), 7);
    // Already joined: no second domain on the same connection.
    refused(join_raw(&c, u32::MAX));
    // The library path: a chosen id reads the token, as the owner.
    let d9 = RemoteDomain::join(h.path(), Some(DomId(9))).unwrap();
    assert_eq!(d9.id(), DomId(9));
    assert!(RemoteDomain::join(h.path(), Some(DomId(9))).is_err());
    assert!(RemoteDomain::join(h.path(), Some(DomId(0))).is_err());
}

#[test]
fn inspector_refuses_an_unprivileged_connection() {
    let h = host("inspect");
    let _d = RemoteDomain::join(h.path(), None).unwrap();
    let c = Conn::connect(h.path()).unwrap();
    let mut w = Writer::new(op::GRANTS);
    w.u32(u32::MAX);
    assert!(refused(c.call(&w, &[])).contains("grant inspector"));
    // A joined, unprivileged domain may not inspect either.
    let mut j = Writer::new(op::JOIN);
    j.u32(u32::MAX);
    c.call(&j, &[]).unwrap();
    refused(c.call(&w, &[]));
    // The owner (token) may.
    let reports = xenshare_host::grant_reports(h.path(), None).unwrap();
    assert_eq!(reports.len(), 2);
    // The sockets are the owner's only.
    for p in [h.path(), h.xenstore_path()] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

const T: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn toolstack_creates_home_fires_introduce_then_release_domain_fires_special_watch() {
    let h = host("toolstack");
    let mut dom0 = Client::new(UnixTransport::connect(h.xenstore_path()).unwrap());
    dom0.watch("@introduceDomain", b"in").unwrap();
    dom0.watch("@releaseDomain", b"out").unwrap();
    let mut initial = 0;
    while initial < 2 {
        dom0.next_event(T).unwrap().unwrap();
        initial += 1;
    }
    let d = RemoteDomain::join(h.path(), None).unwrap();
    let id = d.id();
    let home = format!("/local/domain/{}", id.0);
    let ev = dom0.next_event(T).unwrap().unwrap();
    assert_eq!(
        (ev.path.as_str(), ev.token.as_slice()),
        ("@introduceDomain", &b"in"[..])
    );
    // As libxl: the home is dom0's and readable by the domain, with domid
    // and name; data and friends are the domain's.
    assert_eq!(
        dom0.read(&format!("{home}/domid")).unwrap(),
        id.0.to_string().as_bytes()
    );
    assert_eq!(
        dom0.read(&format!("{home}/name")).unwrap(),
        format!("dom{}", id.0).as_bytes()
    );
    let hp = dom0.get_perms(&home).unwrap();
    assert_eq!(hp.owner(), DomId::DOM0);
    assert!(hp.access_for(id, None).read);
    assert!(!hp.access_for(id, None).write);
    assert_eq!(
        dom0.get_perms(&format!("{home}/data")).unwrap(),
        Perms::owned_by(id, PermKind::None)
    );
    // The domain's socket: it is that domain, confined as a guest.
    assert_eq!(d.xenstore_path(), domain_xenstore_path(h.path(), id));
    let mode = std::fs::metadata(d.xenstore_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut g = Client::new(UnixTransport::connect(d.xenstore_path()).unwrap());
    assert_eq!(g.read("domid").unwrap(), id.0.to_string().as_bytes());
    g.write("data/x", b"mine").unwrap();
    assert_eq!(dom0.read(&format!("{home}/data/x")).unwrap(), b"mine");
    assert_eq!(
        g.write("domid", b"0").unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(
        g.write("/tool/x", b"y").unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(
        g.introduce(DomId(50), 1, 1).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    // Death (the process's connection closes): home gone, socket gone,
    // @releaseDomain fires, the domain's xenstore connections are cut.
    drop(d);
    let ev = dom0.next_event(T).unwrap().unwrap();
    assert_eq!(
        (ev.path.as_str(), ev.token.as_slice()),
        ("@releaseDomain", &b"out"[..])
    );
    assert_eq!(dom0.try_read(&home).unwrap(), None);
    wait_for("the domain socket to go", || {
        !domain_xenstore_path(h.path(), id).exists()
    });
    assert!(g.read("domid").is_err());
    assert!(h.domain(id).is_none());
}

#[test]
fn a_domain_socket_speaks_only_for_its_domain() {
    let h = host("sockets");
    let d1 = RemoteDomain::join(h.path(), None).unwrap();
    let d2 = RemoteDomain::join(h.path(), None).unwrap();
    let mut c2 = Client::new(UnixTransport::connect(d2.xenstore_path()).unwrap());
    let h1 = format!("/local/domain/{}", d1.id().0);
    for p in [
        format!("{h1}/data/x"),
        format!("{h1}/name"),
        format!("{h1}/new"),
    ] {
        assert_eq!(
            c2.write(&p, b"evil").unwrap_err().xs(),
            Some(XsError::EACCES),
            "{p}"
        );
    }
    assert_eq!(
        c2.read(&format!("{h1}/domid")).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    // Relative paths are domain 2's own home.
    c2.write("data/y", b"two").unwrap();
    let mut c1 = Client::new(UnixTransport::connect(d1.xenstore_path()).unwrap());
    assert_eq!(c1.try_read("data/y").unwrap(), None);
    assert_eq!(
        c1.read(&format!("/local/domain/{}/data/y", d2.id().0))
            .unwrap_err()
            .xs(),
        Some(XsError::EACCES)
    );
}

/// Other users reach nothing: dom0's and the domains' xenstored sockets are
/// mode 0600, and even if someone loosened the mode, the daemon checks the
/// peer's user (`SO_PEERCRED`) and drops the connection. Needs root (to
/// act as another user) and Debian's xenstore-utils; SKIPs otherwise.
#[test]
fn other_users_cannot_reach_dom0_or_domain_xenstored_sockets() {
    let read = std::path::Path::new("/usr/bin/xenstore-read");
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !rustix::process::getuid().is_root() || !read.exists() || !setpriv.exists() {
        support::skip_or_fail(
            "other_users_cannot_reach_dom0_or_domain_xenstored_sockets",
            "needs root, setpriv and xenstore-read",
            "util-linux and xenstore-utils, and run as root",
        );
        return;
    }
    let h = host("users");
    let d = RemoteDomain::join(h.path(), None).unwrap();
    let dir = h.path().parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = format!("/local/domain/{}/domid", d.id().0);
    let run = |sock: &std::path::Path, as_nobody: bool| {
        let mut c = if as_nobody {
            let mut c = std::process::Command::new(setpriv);
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(read);
            c
        } else {
            std::process::Command::new(read)
        };
        c.arg(&key).env("XENSTORED_PATH", sock).output().unwrap()
    };
    let id = d.id().0.to_string();
    for sock in [h.xenstore_path(), d.xenstore_path()] {
        // Positive control: the owner reads the key through this socket.
        let own = run(sock, false);
        assert!(
            own.status.success(),
            "{}",
            String::from_utf8_lossy(&own.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), id);
        assert!(!run(sock, true).status.success(), "mode 0600 let nobody in");
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            !run(sock, true).status.success(),
            "the peer check let nobody in at {}",
            sock.display()
        );
    }
}
