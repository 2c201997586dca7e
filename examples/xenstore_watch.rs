//! A XenStore watch: register it, see the event that fires right away,
//! then one per change under the watched path, until the path is removed.
//!
//! A guest watches its own `device` directory while dom0 (the toolstack)
//! writes to it, on an in-process xenstored. The same client API runs over
//! a Unix socket, a shared ring, or Linux's `/dev/xen/xenbus`.
//!
//! `cargo run -p xenshare-examples --example xenstore_watch`

use std::error::Error;
use std::time::{Duration, Instant};

use xenshare::store::perms::{PermKind, Perms};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon};

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> Res<()> {
    let xs = Daemon::new(Config::default());
    let guest = DomId(1);
    let home = format!("/local/domain/{}", guest.0);
    let watched = format!("{home}/device");

    // The toolstack (dom0) gives the guest its home; nodes created below
    // it inherit the guest's ownership.
    let mut dom0 = inproc::client(&xs, DomId(0));
    dom0.mkdir(&home)?;
    dom0.set_perms(&home, &Perms::owned_by(guest, PermKind::None))?;
    dom0.mkdir(&watched)?;

    let mut me = inproc::client(&xs, guest);
    me.watch(&watched, b"devices")?;

    // A watch fires once when registered; then once per change at or
    // under the path (a write, a removal, a permission change).
    let deadline = Instant::now() + Duration::from_secs(10);
    expect(&mut me, &watched, deadline)?;
    dom0.write(&format!("{watched}/vif/0/state"), b"1")?;
    expect(&mut me, &format!("{watched}/vif/0/state"), deadline)?;
    let state = me.read(&format!("{watched}/vif/0/state"))?;
    println!("guest reads state = {}", String::from_utf8_lossy(&state));
    dom0.rm(&watched)?;
    expect(&mut me, &watched, deadline)?;

    me.unwatch(&watched, b"devices")?;
    println!("unwatched");
    Ok(())
}

/// Waits (until `deadline`) for the watch event on `path`.
fn expect<T: xenshare::store::Transport>(
    c: &mut xenshare::store::client::Client<T>,
    path: &str,
    deadline: Instant,
) -> Res<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(ev) = c.next_event(Some(left))? else {
            return Err(format!("no watch event for {path} in time").into());
        };
        println!(
            "watch {:?} fired: {}",
            String::from_utf8_lossy(&ev.token),
            ev.path
        );
        if ev.path == path {
            return Ok(());
        }
    }
}
