//! The toolstack's part of a userspace vif (`attach_vif`, what `xenshare
//! netback` and the Xen lab do) on the emulator: the nodes and permissions a
//! guest's netfront needs, a back end serving the private back-end type,
//! and detaching.

use xenshare::net::back::RunExit;
use xenshare::net::Mac;
use xenshare::store::client::ClientError;
use xenshare::store::xenbus::{read_state, XenbusState};
use xenshare::store::Perms;
use xenshare_devices::net::host::mem_link;
use xenshare_devices::net::run::spawn_backend_at;
use xenshare_devices::net::vif::{attach_vif, detach_vif, VifAttach, USERSPACE_VIF_TYPE};
use xenshare_testkit::net::{frame, world, T};

const MAC: Mac = Mac([0x00, 0x16, 0x3e, 0x12, 0x34, 0x56]);

fn spec(w: &xenshare_testkit::net::World, devid: u32) -> VifAttach<'static> {
    VifAttach {
        frontend: w.guest.id(),
        backend: w.dom0.id(),
        devid,
        mac: MAC,
        backend_type: USERSPACE_VIF_TYPE,
    }
}

fn read(c: &mut xenshare::store::Client<impl xenshare::store::Transport>, p: &str) -> String {
    String::from_utf8(c.read(p).unwrap()).unwrap()
}

#[test]
fn attach_writes_what_netfront_reads_with_toolstack_permissions() {
    let w = world();
    let (g, d0) = (w.guest.id(), w.dom0.id());
    let paths = attach_vif(&mut w.xs(&w.dom0), &spec(&w, 1)).unwrap();
    assert_eq!(paths.front, format!("/local/domain/{}/device/vif/1", g.0));
    assert_eq!(
        paths.back,
        format!("/local/domain/0/backend/xenshare-vif/{}/1", g.0)
    );
    let mut c0 = w.xs(&w.dom0);
    assert_eq!(
        c0.get_perms(&paths.front).unwrap(),
        Perms::owned_by_readable_by(g, d0)
    );
    assert_eq!(
        c0.get_perms(&paths.back).unwrap(),
        Perms::owned_by_readable_by(d0, g)
    );
    // The guest reads what its netfront needs, in both directories, as
    // the unprivileged domain it is.
    let mut cg = w.xs(&w.guest);
    assert_eq!(
        read(&mut cg, &format!("{}/backend", paths.front)),
        paths.back
    );
    assert_eq!(read(&mut cg, &format!("{}/backend-id", paths.front)), "0");
    assert_eq!(
        read(&mut cg, &format!("{}/mac", paths.front)),
        "00:16:3e:12:34:56"
    );
    assert_eq!(read(&mut cg, &format!("{}/handle", paths.front)), "1");
    assert_eq!(
        read_state(&mut cg, &paths.front).unwrap(),
        XenbusState::Initialising
    );
    assert_eq!(
        read_state(&mut cg, &paths.back).unwrap(),
        XenbusState::Initialising
    );
    assert_eq!(
        read(&mut cg, &format!("{}/frontend", paths.back)),
        paths.front
    );
    // and may write its own directory (its ring keys go there).
    cg.write(&format!("{}/probe", paths.front), b"1").unwrap();
    assert!(cg.write(&format!("{}/probe", paths.back), b"1").is_err());

    // A second attach of the same device is refused and changes nothing.
    let again = attach_vif(&mut w.xs(&w.dom0), &spec(&w, 1));
    assert!(matches!(again, Err(ClientError::Protocol(_))), "{again:?}");
    assert_eq!(
        read(&mut c0, &format!("{}/mac", paths.front)),
        "00:16:3e:12:34:56"
    );

    detach_vif(&mut c0, &paths).unwrap();
    assert_eq!(c0.try_read(&paths.front).unwrap(), None);
    assert_eq!(c0.try_read(&paths.back).unwrap(), None);
    // Detaching what is already gone is fine (a killed back end's cleanup).
    detach_vif(&mut c0, &paths).unwrap();
}

#[test]
fn a_backend_serves_the_private_type_and_ends_when_the_front_closes() {
    let w = world();
    let paths = attach_vif(&mut w.xs(&w.dom0), &spec(&w, 2)).unwrap();
    let (io, host) = mem_link(64);
    let bt = spawn_backend_at(
        w.dom0.importer().clone(),
        w.dom0.evtchn().unwrap(),
        w.xs(&w.dom0),
        paths.back.clone(),
        w.guest.id(),
        io,
        T,
    );
    let mut nf = w.try_netfront(2, T).unwrap();
    assert_eq!(nf.mac(), MAC, "netfront took the MAC attach_vif wrote");
    assert_eq!(
        read_state(&mut w.xs(&w.dom0), &paths.back).unwrap(),
        XenbusState::Connected
    );
    let out = frame(1200, 3);
    nf.send_timeout(&out, T).unwrap();
    assert_eq!(host.recv_timeout(T), Some(out));
    let back = frame(900, 4);
    assert!(host.send(&back));
    assert_eq!(nf.recv_timeout(T).unwrap(), Some(back));
    nf.close(&mut w.xs(&w.guest), T).unwrap();
    let exit = bt.join().unwrap();
    assert_eq!(exit.reason, RunExit::FrontendClosed);
    assert_eq!((exit.stats.tx_frames, exit.stats.rx_frames), (1, 1));
    assert_eq!(w.dom0.mapped_count(), 0, "the back end unmapped the rings");
    detach_vif(&mut w.xs(&w.dom0), &paths).unwrap();
}
