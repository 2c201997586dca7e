//! A third-party client, python3-pyxs (Debian), against our daemon. pyxs is
//! installed for Debian's /usr/bin/python3, so that interpreter is used.

mod common;

use std::process::Command;

use common::{daemon, have_tool};

const PYTHON: &str = "/usr/bin/python3";
const PYXS: &str = "/usr/lib/python3/dist-packages/pyxs/__init__.py";

const SCRIPT: &str = r#"
import sys, pyxs
path = sys.argv[1]
with pyxs.Client(unix_socket_path=path) as c:
    c.write(b"/py/a", b"1")
    c.write(b"/py/b/c", b"two")
    assert c.read(b"/py/a") == b"1", c.read(b"/py/a")
    assert sorted(c.list(b"/py")) == [b"a", b"b"], c.list(b"/py")
    assert c.exists(b"/py/b/c")
    assert not c.exists(b"/py/zz")
    c.mkdir(b"/py/d")
    assert c.read(b"/py/d") == b""
    c.set_perms(b"/py/a", [b"b0", b"r3"])
    assert c.get_perms(b"/py/a") == [b"b0", b"r3"], c.get_perms(b"/py/a")
    assert c.get_domain_path(5) == b"/local/domain/5"
    try:
        c.read(b"/py/missing")
        raise SystemExit("read of a missing node succeeded")
    except pyxs.PyXSError as e:
        assert e.args[0] == 2, e.args
    c.transaction()
    c.write(b"/py/t", b"in-tx")
    c.write(b"/py/t2", b"x")
    assert c.commit()
    t = c.transaction()
    assert t != 0
    c.write(b"/py/t2", b"rolled-back")
    c.rollback()
    assert c.read(b"/py/t") == b"in-tx"
    assert c.read(b"/py/t2") == b"x"
    c.delete(b"/py/b")
    assert not c.exists(b"/py/b/c")
    m = c.monitor()
    m.watch(b"/py/w", b"tok")
    events = m.wait()
    first = next(events)
    assert first == (b"/py/w", b"tok"), first
    c.write(b"/py/w/x", b"1")
    ev = next(events)
    assert ev == (b"/py/w/x", b"tok"), ev
    m.unwatch(b"/py/w", b"tok")
print("pyxs-ok")
"#;

#[test]
fn pyxs_reads_writes_watches() {
    if !have_tool(PYTHON) || !have_tool(PYXS) {
        return;
    }
    let d = daemon("pyxs");
    let out = Command::new(PYTHON)
        .args(["-c", SCRIPT])
        .arg(d.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pyxs-ok"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What pyxs wrote is there for everyone else too.
    let mut c = xenshare_xenstored::inproc::client(d.daemon(), xenshare::DomId(0));
    assert_eq!(c.read("/py/t").unwrap(), b"in-tx");
}
