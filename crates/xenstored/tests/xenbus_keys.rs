//! The XenBus key reads every driver uses (`xenshare::store::xenbus`),
//! against a real daemon: one strictness for every numeric key, a typed
//! `BadKey` naming the key, "absent" as a default only where the reader
//! says so, and a state wait whose deadline a flood of state rewrites
//! cannot extend.

use std::time::{Duration, Instant};

use xenshare::error::DeviceError;
use xenshare::store::xenbus::{
    read_bool, read_domid, read_port, read_str, read_str_opt, read_u32, read_u32_opt, read_u64,
    read_u64_opt, wait_state, write_state, XenbusState,
};
use xenshare::{DomId, Port};
use xenshare_xenstored::{inproc, Config, Daemon};

const DIR: &str = "/local/domain/0/backend/vbd/5/51712";

fn bad_key(r: Result<impl std::fmt::Debug, DeviceError>, key: &str) {
    match r {
        Err(DeviceError::BadKey { key: k, .. }) => assert_eq!(k, key),
        other => panic!("{key}: expected BadKey, got {other:?}"),
    }
}

/// Every hostile spelling of a number is refused by every numeric reader
/// with a `BadKey` naming the key; plain decimals are read exactly.
#[test]
fn numeric_reads_share_one_strictness() {
    let d = Daemon::new(Config::default());
    let mut c = inproc::client(&d, DomId(0));
    let hostile = [
        "",
        " 1",
        "1 ",
        "1\n",
        "\t1",
        "1\0",
        "+1",
        "-1",
        "0x10",
        "1e3",
        "12a",
        "a12",
        "١",
        "18446744073709551616",
    ];
    for v in hostile {
        c.write(&format!("{DIR}/k"), v.as_bytes()).unwrap();
        bad_key(read_u64(&mut c, DIR, "k"), "k");
        bad_key(read_u64_opt(&mut c, DIR, "k"), "k");
        bad_key(read_u32(&mut c, DIR, "k"), "k");
        bad_key(read_u32_opt(&mut c, DIR, "k"), "k");
        bad_key(read_bool(&mut c, DIR, "k"), "k");
        bad_key(read_domid(&mut c, DIR, "k"), "k");
        bad_key(read_port(&mut c, DIR, "k"), "k");
    }
    c.write(&format!("{DIR}/k"), b"4294967296").unwrap();
    assert_eq!(read_u64(&mut c, DIR, "k"), Ok(4_294_967_296));
    bad_key(read_u32(&mut c, DIR, "k"), "k");
    c.write(&format!("{DIR}/k"), b"4294967295").unwrap();
    assert_eq!(read_u32(&mut c, DIR, "k"), Ok(u32::MAX));
    bad_key(read_domid(&mut c, DIR, "k"), "k");
    c.write(&format!("{DIR}/k"), b"2").unwrap();
    bad_key(read_bool(&mut c, DIR, "k"), "k");
    assert_eq!(read_domid(&mut c, DIR, "k"), Ok(DomId(2)));
    assert_eq!(read_port(&mut c, DIR, "k"), Ok(Port(2)));
    c.write(&format!("{DIR}/k"), b"0").unwrap();
    assert_eq!(read_bool(&mut c, DIR, "k"), Ok(false));
    bad_key(read_port(&mut c, DIR, "k"), "k");
    c.write(&format!("{DIR}/k"), b"1").unwrap();
    assert_eq!(read_bool(&mut c, DIR, "k"), Ok(true));
    c.write(&format!("{DIR}/k"), b"65535").unwrap();
    bad_key(read_domid(&mut c, DIR, "k"), "k"); // DOMID_INVALID is not a domain
}

/// A missing key is a default for the `_opt` readers and for flags, and a
/// `BadKey` "missing" for the others; text is returned exactly as stored.
#[test]
fn absent_keys_and_text() {
    let d = Daemon::new(Config::default());
    let mut c = inproc::client(&d, DomId(0));
    c.mkdir(DIR).unwrap();
    assert_eq!(read_u64_opt(&mut c, DIR, "nope"), Ok(None));
    assert_eq!(read_u32_opt(&mut c, DIR, "nope"), Ok(None));
    assert_eq!(read_str_opt(&mut c, DIR, "nope"), Ok(None));
    assert_eq!(read_bool(&mut c, DIR, "nope"), Ok(false));
    bad_key(read_u64(&mut c, DIR, "nope"), "nope");
    bad_key(read_u32(&mut c, DIR, "nope"), "nope");
    bad_key(read_str(&mut c, DIR, "nope"), "nope");
    bad_key(read_domid(&mut c, DIR, "nope"), "nope");
    c.write(&format!("{DIR}/t"), b"/local/domain/5/device/vbd/51712")
        .unwrap();
    assert_eq!(
        read_str(&mut c, DIR, "t").as_deref(),
        Ok("/local/domain/5/device/vbd/51712")
    );
    c.write(&format!("{DIR}/t"), b"").unwrap();
    bad_key(read_str(&mut c, DIR, "t"), "t");
    c.write(&format!("{DIR}/t"), b"\xff\xfe").unwrap();
    bad_key(read_str_opt(&mut c, DIR, "t"), "t");
}

/// A peer that rewrites its state key in a loop (every write fires the
/// watch) cannot keep `wait_state` waiting past its deadline, and a stop
/// request ends the wait with `Closed`.
#[test]
fn wait_state_deadline_survives_a_watch_flood() {
    let d = Daemon::new(Config::default());
    let mut c = inproc::client(&d, DomId(0));
    write_state(&mut c, DIR, XenbusState::Initialising).unwrap();
    let stop_flood = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let d2 = d.clone();
        let stop_flood = &stop_flood;
        s.spawn(move || {
            let mut peer = inproc::client(&d2, DomId(0));
            // The flood ends by itself after 25 s, so a wait whose deadline
            // the events kept restarting fails the bound below, not hangs.
            let end = Instant::now() + Duration::from_secs(25);
            while !stop_flood.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                write_state(&mut peer, DIR, XenbusState::Initialising).unwrap();
                write_state(&mut peer, DIR, XenbusState::InitWait).unwrap();
            }
        });
        let t0 = Instant::now();
        let r = wait_state(
            &mut c,
            DIR,
            Some(Duration::from_millis(300)),
            &|| false,
            |s| Ok::<_, DeviceError>(s == XenbusState::Connected),
        );
        let took = t0.elapsed();
        assert_eq!(r, Err(DeviceError::Timeout));
        assert!(took >= Duration::from_millis(300), "{took:?}");
        // Generous bound for a loaded machine: the flood must not have
        // restarted the 300 ms deadline on each of its many events.
        assert!(took < Duration::from_secs(20), "{took:?}");
        let r = wait_state(&mut c, DIR, None, &|| true, |s| {
            Ok::<_, DeviceError>(s == XenbusState::Connected)
        });
        assert_eq!(r, Err(DeviceError::Closed));
        stop_flood.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
