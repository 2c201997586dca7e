//! Attachable consoles (`xenshare_devices::console::session`) on the
//! in-process emulator: a guest serves its console, a back end in a domain
//! of its own attaches, talks, detaches, and another attach gets a fresh
//! console on the same running guest; the guest's page is revoked after
//! each session and its directories are removed.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use xenshare::store::perms::{PermKind, Perms};
use xenshare::store::xenbus::frontend_path;
use xenshare::DomId;
use xenshare_devices::console::session::{attach, serve, AttachEnd, AttachError, DEVID};
use xenshare_devices::console::{shell, MemoryTerminal};
use xenshare_sim::{Domain, DomainConfig};
use xenshare_testkit::console::{world, World, SOON};
use xenshare_testkit::wait_until;

/// Attaches a back end running in `back` to `guest`'s console, with `t`
/// as the terminal, until the session ends.
fn attach_from(
    w: &World,
    back: &Domain,
    guest: DomId,
    t: &MemoryTerminal,
) -> Result<AttachEnd, AttachError> {
    let evt = back.evtchn().unwrap();
    let (mut xs0, mut xs) = (w.xs(&w.dom0), w.xs(back));
    attach(back.importer(), &evt, &mut xs0, &mut xs, guest, &mut t.io())
}

fn wait_output(t: &MemoryTerminal, want: &str) {
    assert!(
        t.wait_output(SOON, |o| String::from_utf8_lossy(o).contains(want)),
        "no {want:?}; got {:?}",
        String::from_utf8_lossy(&t.output())
    );
}

#[test]
fn attach_detach_and_attach_again_to_a_running_guest() {
    let w = world();
    // The console back end's own domain, with its home as the toolstack
    // makes it.
    let back =
        w.hv.create_domain(DomainConfig {
            mem_pages: 64,
            ..Default::default()
        })
        .unwrap();
    let mut xs0 = w.xs(&w.dom0);
    let home = format!("/local/domain/{}", back.id().0);
    xs0.mkdir(&home).unwrap();
    xs0.set_perms(&home, &Perms::owned_by(back.id(), PermKind::None))
        .unwrap();
    let front_dir = frontend_path(w.guest.id(), "console", DEVID);

    std::thread::scope(|s| {
        let guest = s.spawn(|| {
            let evt = w.guest.evtchn().unwrap();
            let (mut xs, mut xs_watch) = (w.xs(&w.guest), w.xs(&w.guest));
            let booted = Instant::now();
            serve(
                w.guest.exporter(),
                &evt,
                &mut xs,
                &mut xs_watch,
                |con, stop: &AtomicBool, n| {
                    con.print(&format!("session {n}\n"))?;
                    shell(con, "g", booted, stop)
                },
                |e| panic!("guest: {e}"),
            )
        });

        let session = |t: &MemoryTerminal| attach_from(&w, &back, w.guest.id(), t);

        // First attach: a command and its answer, then the terminal goes.
        let t1 = MemoryTerminal::new();
        t1.type_input(b"echo one\r");
        let t = t1.clone();
        let a1 = s.spawn(move || session(&t));
        wait_output(&t1, "session 1");
        wait_output(&t1, "one\r\ng$ ");
        t1.close();
        assert_eq!(a1.join().unwrap().unwrap(), AttachEnd::TerminalClosed);
        // Detached: the device is gone and the guest took its page back.
        let mut xs0 = w.xs(&w.dom0);
        assert_eq!(xs0.try_read(&front_dir).unwrap(), None);
        wait_until(SOON, "page still mapped after detach", || {
            w.guest.active_grants().is_empty()
        });

        // Second attach to the same, still running guest: new output.
        let t2 = MemoryTerminal::new();
        t2.type_input(b"echo two\r");
        let t = t2.clone();
        let a2 = s.spawn(move || session(&t));
        wait_output(&t2, "session 2");
        wait_output(&t2, "two\r\n");
        assert!(!String::from_utf8_lossy(&t2.output()).contains("one"));
        // `exit` in the guest closes its console: the attach ends with it.
        t2.type_input(b"exit\r");
        assert_eq!(a2.join().unwrap().unwrap(), AttachEnd::GuestClosed);
        assert!(String::from_utf8_lossy(&t2.output()).contains("bye"));
        guest.join().unwrap().unwrap();
    });
}

#[test]
fn attaching_to_a_guest_that_serves_no_console_times_out_clearly() {
    let w = world();
    let back = w.hv.create_domain(DomainConfig::default()).unwrap();
    let t = MemoryTerminal::new();
    let e = attach_from(&w, &back, w.guest.id(), &t).unwrap_err();
    assert!(matches!(e, AttachError::NoFrontEnd(_)), "{e}");
    // It cleaned up after itself.
    let front_dir = frontend_path(w.guest.id(), "console", DEVID);
    assert_eq!(w.xs(&w.dom0).try_read(&front_dir).unwrap(), None);
    let e = attach_from(&w, &back, xenshare::DomId(999), &t).unwrap_err();
    assert!(matches!(e, AttachError::NoDomain(_)), "{e}");
}
