//! XenStore client bodies, generic over the transport: the emulator's
//! in-process daemon in `cargo test`, the real C xenstored in the lab (over
//! its Unix socket and over `/dev/xen/xenbus`).

use std::time::Duration;

use xenshare::store::{Client, Transport, XsError};

use crate::{check, Context, Outcome, TestResult};

/// Read, write, directory, remove, and a committed transaction under `base`
/// (which the caller may write, e.g. `/local/domain/0/xenshare-test`).
pub fn xenstore_basics<T: Transport>(c: &mut Client<T>, base: &str) -> TestResult {
    let _ = c.rm(base);
    c.write(&format!("{base}/a"), b"1").ctx("write a")?;
    c.write(&format!("{base}/b/c"), b"deep value")
        .ctx("write b/c")?;
    let v = c.read(&format!("{base}/a")).ctx("read a")?;
    check!(v == b"1", "a reads {v:?}");
    let v = c.read(&format!("{base}/b/c")).ctx("read b/c")?;
    check!(v == b"deep value", "b/c reads {v:?}");
    let mut d = c.directory(base).ctx("directory")?;
    d.sort();
    check!(d == ["a", "b"], "directory lists {d:?}");
    c.rm(&format!("{base}/b")).ctx("rm b")?;
    match c.read(&format!("{base}/b/c")) {
        Err(e) if e.xs() == Some(XsError::ENOENT) => {}
        other => return Err(format!("read of a removed node gave {other:?}")),
    }
    let n = c
        .transaction(5, |tx| {
            let old = tx.try_read(&format!("{base}/a"))?.unwrap_or_default();
            let mut new = old.clone();
            new.push(b'2');
            tx.write(&format!("{base}/a"), &new)?;
            Ok(new.len())
        })
        .ctx("transaction")?;
    check!(n == 2, "transaction saw {n} bytes");
    let v = c.read(&format!("{base}/a")).ctx("read after commit")?;
    check!(v == b"12", "after the transaction a reads {v:?}");
    c.rm(base).ctx("cleanup")?;
    Ok(Outcome::Pass(String::new()))
}

/// A watch fires once on registration and again when a node below changes.
pub fn xenstore_watch<T: Transport>(c: &mut Client<T>, base: &str) -> TestResult {
    let path = format!("{base}/watched");
    c.write(&path, b"0").ctx("write")?;
    c.watch(&path, b"tok").ctx("watch")?;
    let first = c
        .next_event(Some(Duration::from_secs(3)))
        .ctx("first event")?
        .ctx("the registration event")?;
    check!(
        first.path == path && first.token == b"tok",
        "registration event {first:?}"
    );
    c.write(&format!("{path}/child"), b"x").ctx("write child")?;
    let ev = c
        .next_event(Some(Duration::from_secs(3)))
        .ctx("change event")?
        .ctx("an event for the change")?;
    check!(
        ev.path == format!("{path}/child") && ev.token == b"tok",
        "change event {ev:?}"
    );
    c.unwatch(&path, b"tok").ctx("unwatch")?;
    c.rm(base).ctx("cleanup")?;
    Ok(Outcome::Pass(String::new()))
}
