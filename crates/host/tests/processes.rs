//! Domains as separate processes: MSA02 across processes (a mapper process
//! keeps its mapping after "done"; the granter's revoke reports busy and
//! nothing is reused), and a domain process killed mid-transfer (the peer
//! sees the vchan closed, the daemon releases the dead domain's mappings and
//! the survivor's grants become reclaimable), and a vchan doorbell storm from
//! another process (a timed read still times out on time).
//!
//! The other process is this test binary re-executed in a child role (the
//! ignored `child` test), so no extra binary is needed.

use std::io::{BufRead, Write};
use std::path::PathBuf;
mod common;

use common::wait_for;
use common::Proc;
use std::time::{Duration, Instant};

use xenshare::error::DeviceError;
use xenshare::store::client::Client;
use xenshare::store::UnixTransport;
use xenshare::vchan::server_init;
use xenshare::{Access, DomId, GrantRef};
use xenshare_host::client::RemoteDomain;

#[test]
fn msa02_across_processes() {
    let (h, sock) = common::host("proc", "msa02");
    let granter = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let share = granter
        .exporter()
        .share(DomId(2), 1, Access::ReadWrite)
        .unwrap();
    share.mem().fill(0, 4096, 0x11).unwrap();
    let gref = share.refs()[0];
    let mut mapper = Proc::spawn(
        "mapper",
        &[
            ("XS_SOCK", sock.display().to_string()),
            ("XS_GREF", gref.0.to_string()),
        ],
    );
    mapper.expect("mapped");
    // The mapper says "done" but keeps its mapping: revocation is busy.
    let share = match share.try_unshare() {
        Ok(_) => panic!("revoked while another process maps the page"),
        Err(busy) => busy.into_inner(),
    };
    drop(share);
    assert_eq!(granter.exporter().stats().quarantined, 1);
    // The inspector (`xenshare grants`) sees it quarantined and mapped by d2.
    let rep = xenshare_host::grant_reports(&sock, Some(DomId(1))).unwrap();
    assert_eq!(rep[0].quarantined, vec![gref]);
    assert!(rep[0]
        .pins
        .iter()
        .any(|p| p.gref == gref && p.mapper == DomId(2)));
    // The granter reuses memory; the mapper writes through its kept mapping.
    let fresh: Vec<_> = (0..16)
        .map(|_| {
            let s = granter
                .exporter()
                .share(DomId(3), 1, Access::ReadOnly)
                .unwrap();
            s.mem().fill(0, 4096, 0x5A).unwrap();
            assert!(
                !s.refs().contains(&gref),
                "a quarantined ref was handed out again"
            );
            s
        })
        .collect();
    mapper.say("write");
    mapper.expect("written");
    for s in &fresh {
        let mut page = vec![0u8; 4096];
        s.mem().read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|b| *b == 0x5A),
            "a reused page saw the stale mapping's writes"
        );
    }
    assert_eq!(granter.exporter().reclaim(8).reclaimed, 0, "still mapped");
    // The mapper exits: the daemon releases its mapping; reclaim frees the page.
    mapper.say("exit");
    let _ = mapper.child.wait();
    wait_for("the dead mapper's mapping to go", || {
        h.domain(DomId(1))
            .is_some_and(|d| d.active_grants().is_empty())
    });
    assert_eq!(granter.exporter().reclaim(8).reclaimed, 1);
    assert_eq!(granter.exporter().stats().quarantined, 0);
    let rep = xenshare_host::grant_reports(&sock, Some(DomId(1))).unwrap();
    assert!(
        rep[0].quarantined.is_empty(),
        "reclaim reported to the inspector"
    );
}

#[test]
fn refused_maps_carry_xen_statuses_across_processes() {
    let (_h, sock) = common::host("proc", "refused");
    let granter = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let ro = granter
        .exporter()
        .share(DomId(2), 1, Access::ReadOnly)
        .unwrap();
    let mut mapper = Proc::spawn(
        "refused",
        &[
            ("XS_SOCK", sock.display().to_string()),
            ("XS_GREF", ro.refs()[0].0.to_string()),
        ],
    );
    let line = mapper.expect("statuses");
    assert_eq!(
        line, "statuses rw=GeneralError other=GeneralError bad=BadGntref nodom=BadDomain ro=ok",
        "refusals must carry Xen's GNTST codes"
    );
}

#[test]
fn killed_domain_process_mid_transfer() {
    let (h, sock) = common::host("proc", "kill");
    let server = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let mut xs = Client::new(UnixTransport::connect(server.xenstore_path()).unwrap());
    let path = "/local/domain/1/data/vchan/kill";
    let evt = server.evtchn().unwrap();
    let mut v = server_init(
        server.exporter(),
        &evt,
        &mut xs,
        DomId(2),
        path,
        65536,
        65536,
    )
    .unwrap();
    v.set_timeout(Some(Duration::from_secs(10)));
    let mut client = Proc::spawn(
        "streamer",
        &[
            ("XS_SOCK", sock.display().to_string()),
            ("XS_PATH", path.to_string()),
        ],
    );
    client.expect("connected");
    // Read a good part of the stream, then kill the client mid-transfer.
    let mut buf = vec![0u8; 65536];
    let mut got = 0usize;
    while got < 8 << 20 {
        got += v.read(&mut buf).unwrap();
    }
    assert!(v.is_open());
    assert!(
        h.domain(DomId(1))
            .is_some_and(|d| !d.active_grants().is_empty()),
        "client maps our pages"
    );
    client.child.kill().unwrap();
    let _ = client.child.wait();
    // The daemon notices the death: the client's mappings are released and
    // its unmap-notify clears cli_live and wakes us.
    wait_for("the dead client's mappings to go", || {
        h.domain(DomId(1))
            .is_some_and(|d| d.active_grants().is_empty())
    });
    wait_for("the vchan to report closed", || !v.is_open());
    // What was already in the ring drains; then end of stream.
    loop {
        match v.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("read after peer death: {e}"),
        }
    }
    assert!(got >= 8 << 20);
    // Closing revokes everything at once: nothing left for quarantine.
    v.close();
    let st = server.exporter().stats();
    assert_eq!((st.live, st.quarantined, st.leaked), (0, 0, 0), "{st:?}");
}

/// The vchan doorbell storm across processes: a client process rings the
/// server's event channel every 2 ms without writing a byte; the server's
/// 300 ms blocking read still times out — not before 300 ms, and long
/// before the storm ends (the timeout is one overall deadline).
#[test]
fn doorbell_storm_from_another_process_does_not_extend_a_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let (_h, sock) = common::host("proc", "storm");
    let server = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let mut xs = Client::new(UnixTransport::connect(server.xenstore_path()).unwrap());
    let path = "/local/domain/1/data/vchan/storm";
    let evt = server.evtchn().unwrap();
    let mut v = server_init(server.exporter(), &evt, &mut xs, DomId(2), path, 4096, 4096).unwrap();
    let mut client = Proc::spawn(
        "stormer",
        &[
            ("XS_SOCK", sock.display().to_string()),
            ("XS_PATH", path.to_string()),
        ],
    );
    client.expect("storming");
    v.set_timeout(Some(TIMEOUT));
    let t = Instant::now();
    let r = v.read(&mut [0u8; 16]);
    let took = t.elapsed();
    // The storm is still going: the child stops only when told.
    client.say("stop");
    let rings = client.expect("stopped");
    assert_eq!(
        r,
        Err(xenshare::vchan::VchanError::Core(DeviceError::Timeout))
    );
    assert!(took >= TIMEOUT, "returned early: {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let n: u64 = rings.trim_start_matches("stopped ").parse().unwrap_or(0);
    assert!(n > 20, "{rings}");
}

/// Child roles for the tests above; run only when re-executed by them.
#[test]
#[ignore = "child role of the multi-process tests"]
fn child() {
    let Ok(role) = std::env::var("XENSHARE_TEST_ROLE") else {
        return;
    };
    let sock = PathBuf::from(std::env::var("XS_SOCK").unwrap());
    let me = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let say = |s: &str| {
        println!("CHILD {s}");
        std::io::stdout().flush().unwrap();
    };
    match role.as_str() {
        "mapper" => {
            let gref = GrantRef(std::env::var("XS_GREF").unwrap().parse().unwrap());
            let m = me.importer().map_rw(DomId(1), &[gref]).unwrap();
            say("mapped");
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                match line.unwrap().as_str() {
                    "write" => {
                        m.mem().fill(0, 4096, 0xEE).unwrap();
                        say("written");
                    }
                    _ => break,
                }
            }
            std::process::exit(0);
        }
        "refused" => {
            let gref = GrantRef(std::env::var("XS_GREF").unwrap().parse().unwrap());
            let st = |r: Result<_, xenshare::grant::MapError>| match r {
                Ok(_) => "ok".to_string(),
                Err(xenshare::grant::MapError::Refused { status, .. }) => format!("{status:?}"),
                Err(e) => format!("{e}"),
            };
            let imp = me.importer();
            let rw = st(imp.map_rw(DomId(1), &[gref]).map(drop));
            let other = {
                let third = RemoteDomain::join(&sock, Some(DomId(3))).unwrap();
                let r = st(third.importer().map_ro(DomId(1), &[gref]).map(drop));
                r
            };
            let bad = st(imp.map_ro(DomId(1), &[GrantRef(1 << 20)]).map(drop));
            let nodom = st(imp.map_ro(DomId(99), &[gref]).map(drop));
            let ro = st(imp.map_ro(DomId(1), &[gref]).map(drop));
            say(&format!(
                "statuses rw={rw} other={other} bad={bad} nodom={nodom} ro={ro}"
            ));
            std::process::exit(0);
        }
        "streamer" => {
            let path = std::env::var("XS_PATH").unwrap();
            let evt = me.evtchn().unwrap();
            let mut xs = Client::new(UnixTransport::connect(me.xenstore_path()).unwrap());
            let mut v = xenshare::vchan::client_init(me.importer(), &evt, &mut xs, DomId(1), &path)
                .unwrap();
            say("connected");
            let chunk = vec![0xA5u8; 65536];
            loop {
                if v.write(&chunk).is_err() {
                    std::process::exit(1);
                }
            }
        }
        "stormer" => {
            use xenshare::platform::EventChannels;
            let path = std::env::var("XS_PATH").unwrap();
            let evt = me.evtchn().unwrap();
            let mut xs = Client::new(UnixTransport::connect(me.xenstore_path()).unwrap());
            let v = xenshare::vchan::client_init(me.importer(), &evt, &mut xs, DomId(1), &path)
                .unwrap();
            // Ring until told to stop (or for 30 s at most).
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let st = stop.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                st.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            say("storming");
            let t = Instant::now();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t.elapsed() < Duration::from_secs(30)
            {
                // Only rings that went out count.
                if evt.notify(v.port()).is_ok() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            say(&format!("stopped {n}"));
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}
