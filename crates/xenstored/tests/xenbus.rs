//! A small front-end / back-end XenBus handshake over in-process
//! connections, with the libxl-style directories and permissions.

use std::thread;
use std::time::Duration;

use xenshare::store::xenbus::{
    backend_path, frontend_path, read_state, wait_for_state, write_state, XenbusState,
};
use xenshare::store::{ClientError, Perms};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon};

const FRONT: DomId = DomId(5);
const BACK: DomId = DomId(0);
const T: Duration = Duration::from_secs(5);

fn perms(s: &[&str]) -> Perms {
    let f: Vec<&[u8]> = s.iter().map(|x| x.as_bytes()).collect();
    Perms::parse_fields(&f).unwrap()
}

#[test]
fn frontend_backend_handshake() {
    let d = Daemon::new(Config::default());
    let fe = frontend_path(FRONT, "vif", 0);
    let be = backend_path(BACK, "vif", FRONT, 0);
    // The toolstack's part.
    let mut tool = inproc::client(&d, DomId(0));
    tool.write(&format!("{fe}/backend"), be.as_bytes()).unwrap();
    tool.write(&format!("{be}/frontend"), fe.as_bytes())
        .unwrap();
    write_state(&mut tool, &fe, XenbusState::Initialising).unwrap();
    write_state(&mut tool, &be, XenbusState::Initialising).unwrap();
    tool.set_perms("/local/domain/5", &perms(&["n5"])).unwrap();
    for p in [
        "/local/domain/5/device",
        "/local/domain/5/device/vif",
        &fe,
        &format!("{fe}/state"),
        &format!("{fe}/backend"),
    ] {
        tool.set_perms(p, &perms(&["n5", "r0"])).unwrap();
    }
    for p in [be.clone(), format!("{be}/state"), format!("{be}/frontend")] {
        tool.set_perms(&p, &perms(&["n0", "r5"])).unwrap();
    }

    let (fe2, be2) = (fe.clone(), be.clone());
    let d2 = d.clone();
    let frontend = thread::spawn(move || -> Result<XenbusState, ClientError> {
        let mut c = inproc::client(&d2, FRONT);
        wait_for_state(&mut c, &be2, T, |s| s == XenbusState::InitWait)?;
        c.write(&format!("{fe2}/ring-ref"), b"8")?;
        c.write(&format!("{fe2}/event-channel"), b"3")?;
        write_state(&mut c, &fe2, XenbusState::Initialised)?;
        wait_for_state(&mut c, &be2, T, |s| s == XenbusState::Connected)?;
        write_state(&mut c, &fe2, XenbusState::Connected)?;
        read_state(&mut c, &fe2)
    });
    let backend = thread::spawn(move || -> Result<Vec<u8>, ClientError> {
        let mut c = inproc::client(&d, BACK);
        write_state(&mut c, &be, XenbusState::InitWait)?;
        wait_for_state(&mut c, &fe, T, |s| s >= XenbusState::Initialised)?;
        let ring = c.read(&format!("{fe}/ring-ref"))?;
        write_state(&mut c, &be, XenbusState::Connected)?;
        wait_for_state(&mut c, &fe, T, |s| s == XenbusState::Connected)?;
        Ok(ring)
    });
    assert_eq!(frontend.join().unwrap().unwrap(), XenbusState::Connected);
    assert_eq!(backend.join().unwrap().unwrap(), b"8");
}

#[test]
fn waiting_times_out_and_missing_state_is_unknown() {
    let d = Daemon::new(Config::default());
    let mut c = inproc::client(&d, DomId(0));
    let dir = frontend_path(DomId(9), "vbd", 51712);
    assert_eq!(read_state(&mut c, &dir).unwrap(), XenbusState::Unknown);
    let r = wait_for_state(&mut c, &dir, Duration::from_millis(100), |s| {
        s == XenbusState::Connected
    });
    assert_eq!(r.unwrap_err(), ClientError::Timeout);
    c.write(&format!("{dir}/state"), b"garbage").unwrap();
    assert!(read_state(&mut c, &dir).is_err());
}
