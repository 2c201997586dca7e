//! vchan across domains, against Xen's C libxenvchan on the other side:
//!
//! * `vchan_domu_server_dom0_c_client`: xenshare's vchan server in the
//!   domU, the C libxenvchan client ([`C_PEER`]) in dom0;
//! * `vchan_domu_c_server_dom0_client`: the C libxenvchan server in the
//!   domU (the same C peer, copied into the domU's initramfs with its
//!   libraries), xenshare's client in dom0.
//!
//! The domU (`vchan-domu`) waits for dom0's go (`data/vchan-xdom/go`, a
//! test-control key), then for each pair starts its server end as a child
//! process at `/local/domain/D/data/vchan/0/xdomN`, the path libxenvchan's
//! tools use (`data/vchan/<client>/<name>`). Only what a toolstack gives a
//! guest is assumed: `data/` writable by the domain itself; the server
//! writes its keys and their permissions on its own. When its end exits,
//! the domU publishes the end's `VCHAN-END` line (or its failure) in
//! `data/vchan-xdom/resultN`.
//!
//! dom0 (`vchan-xdom DOMID`) waits for each server's keys, checks their
//! permissions are libxenvchan's (owned by the domU, no access for others,
//! read for dom0), runs its client end as a child process, and compares
//! both ends' byte counts and FNV checksums of what was sent and received
//! (each end also checks every byte against the pattern as it reads). The
//! client closes first; the server checks it sees the close and removes its
//! keys.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use xenshare::store::perms::Perms;
use xenshare::store::{Client, Transport};
use xenshare::DomId;
use xenshare_conformance::{Context, Outcome, TestResult};
use xenshare_linux::LinuxPlatform;

use crate::vchan::{field, End, Impl};
use crate::Tally;

/// Bytes each way.
const BYTES: usize = 4 << 20;
/// Ring sizes asked by the server (read, write): rings in pages of their
/// own, as most libxenvchan users ask.
const RING: usize = 1 << 16;
/// How long dom0 waits for a server to publish (the domU may still be
/// finishing an earlier test).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one end may run (its own transfer deadline is 60 s).
const END_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the domU waits for dom0's go.
const GO_TIMEOUT: Duration = Duration::from_secs(240);

/// One cross-domain pair: which implementation serves in the domU and
/// which connects from dom0.
struct Xdom {
    name: &'static str,
    domu_server: Impl,
    dom0_client: Impl,
}

const PAIRS: [Xdom; 2] = [
    Xdom {
        name: "vchan_domu_server_dom0_c_client",
        domu_server: Impl::Rust,
        dom0_client: Impl::C,
    },
    Xdom {
        name: "vchan_domu_c_server_dom0_client",
        domu_server: Impl::C,
        dom0_client: Impl::Rust,
    },
];

fn vchan_path(domu: DomId, idx: usize) -> String {
    format!("/local/domain/{}/data/vchan/0/xdom{idx}", domu.0)
}

fn ctl_path(domu: DomId) -> String {
    format!("/local/domain/{}/data/vchan-xdom", domu.0)
}

fn seeds(idx: usize) -> (u64, u64) {
    (0x2ab0_0000 + 2 * idx as u64, 0x2ab0_0001 + 2 * idx as u64)
}

/// Waits for `end` to exit (killing it after [`END_TIMEOUT`]); its
/// `VCHAN-END` fields or what went wrong.
fn run_end(end: &mut End, start: Instant) -> Result<Vec<(String, String)>, String> {
    while !end.poll() {
        if start.elapsed() > END_TIMEOUT {
            end.kill();
            return Err(format!("timed out after {END_TIMEOUT:?}: {}", end.output()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    end.result()
}

fn end_line(kv: &[(String, String)]) -> String {
    let mut s = String::from("VCHAN-END");
    for (k, v) in kv {
        s.push_str(&format!(" {k}={v}"));
    }
    s
}

fn parse_end_line(line: &str) -> Option<Vec<(String, String)>> {
    let rest = line.strip_prefix("VCHAN-END ")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

// ------------------------------------------------------------ domU side

/// The domU side: serves both pairs in turn and publishes each server's
/// result; returns a summary for the domU's console.
pub fn domu() -> Result<String, String> {
    let plat = LinuxPlatform::open().ctx("open")?;
    let me = plat.domid();
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let ctl = ctl_path(me);
    let go = format!("{ctl}/go");
    let t0 = Instant::now();
    while xs.try_read(&go).ctx("go")?.is_none() {
        if t0.elapsed() > GO_TIMEOUT {
            return Err(format!("dom0 did not write {go} within {GO_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut summary = Vec::new();
    for (idx, p) in PAIRS.iter().enumerate() {
        let path = vchan_path(me, idx);
        let _ = xs.rm(&path);
        let (srv_seed, cli_seed) = seeds(idx);
        let args: Vec<String> = [
            "server".to_string(),
            "0".to_string(),
            path.clone(),
            RING.to_string(),
            RING.to_string(),
            srv_seed.to_string(),
            cli_seed.to_string(),
            BYTES.to_string(),
            "wait".to_string(),
        ]
        .into();
        let start = Instant::now();
        let r = End::spawn(
            format!("the domU's {} server", p.domu_server.name()),
            p.domu_server,
            &args,
            format!("/tmp/vchan-xdom{idx}.log"),
        )
        .and_then(|mut end| run_end(&mut end, start));
        let line = match &r {
            Ok(kv) => end_line(kv),
            Err(e) => format!("fail {e}"),
        };
        xs.write(&format!("{ctl}/result{idx}"), line.as_bytes())
            .ctx("publish the result")?;
        summary.push(format!("{}: {line}", p.name));
    }
    Ok(summary.join("; "))
}

// ------------------------------------------------------------ dom0 side

fn read_str<T: Transport>(xs: &mut Client<T>, path: &str) -> Result<Option<String>, String> {
    Ok(xs.try_read(path).ctx(path)?.map(|v| {
        String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .to_string()
    }))
}

fn perms_text(p: &Perms) -> String {
    p.entries()
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn run_pair<T: Transport>(xs: &mut Client<T>, domu: DomId, idx: usize, p: &Xdom) -> TestResult {
    let path = vchan_path(domu, idx);
    let result_key = format!("{}/result{idx}", ctl_path(domu));
    // xenshare's server publishes without a transaction: `event-channel`
    // first, `ring-ref` last (as a client reads them), so `ring-ref` is the
    // key that says both are there.
    let evt_key = format!("{path}/ring-ref");
    let t0 = Instant::now();
    // The server's keys (or an early failure of the domU's end).
    loop {
        if read_str(xs, &evt_key)?.is_some() {
            break;
        }
        if let Some(r) = read_str(xs, &result_key)? {
            return Err(format!("the domU's server ended before publishing: {r}"));
        }
        if t0.elapsed() > PUBLISH_TIMEOUT {
            return Err(format!(
                "the domU's server did not publish {evt_key} within {PUBLISH_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // libxenvchan's permissions: each key owned by the server's domain,
    // no access for others, read for the client's.
    let want = Perms::owned_by_readable_by(domu, DomId(0));
    let mut perms = String::new();
    for key in ["ring-ref", "event-channel"] {
        let k = format!("{path}/{key}");
        let got = xs.get_perms(&k).ctx(&format!("get_perms {k}"))?;
        if got != want {
            return Err(format!(
                "{k} has permissions {}, libxenvchan gives {}",
                perms_text(&got),
                perms_text(&want)
            ));
        }
        perms = perms_text(&got);
    }
    let (srv_seed, cli_seed) = seeds(idx);
    let args: Vec<String> = [
        "client".to_string(),
        domu.0.to_string(),
        path.clone(),
        cli_seed.to_string(),
        srv_seed.to_string(),
        BYTES.to_string(),
        "first".to_string(),
    ]
    .into();
    let start = Instant::now();
    let mut client = End::spawn(
        format!("dom0's {} client", p.dom0_client.name()),
        p.dom0_client,
        &args,
        format!("/tmp/vchan-xdom{idx}-client.log"),
    )?;
    let cr = run_end(&mut client, start);
    let secs = start.elapsed().as_secs_f64();
    // The domU's verdict on its server end.
    let t1 = Instant::now();
    let server_line = loop {
        if let Some(r) = read_str(xs, &result_key)? {
            break r;
        }
        if t1.elapsed() > END_TIMEOUT {
            break "fail no result from the domU".to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let sr = parse_end_line(&server_line)
        .ok_or_else(|| format!("the domU's {} server: {server_line}", p.domu_server.name()));
    let (sr, cr) = match (sr, cr) {
        (Ok(s), Ok(c)) => (s, c),
        (s, c) => {
            let errs: Vec<String> = [s.err(), c.err()].into_iter().flatten().collect();
            return Err(errs.join("; "));
        }
    };
    let n = BYTES.to_string();
    for (kv, who) in [(&sr, "server"), (&cr, "client")] {
        if field(kv, "sent") != n || field(kv, "received") != n {
            return Err(format!("the {who} moved the wrong amount: {kv:?}"));
        }
    }
    if field(&sr, "impl") != p.domu_server.name() || field(&cr, "impl") != p.dom0_client.name() {
        return Err(format!(
            "wrong implementations ran: server {sr:?}, client {cr:?}"
        ));
    }
    if field(&sr, "sent_fnv") != field(&cr, "received_fnv")
        || field(&cr, "sent_fnv") != field(&sr, "received_fnv")
        || field(&sr, "sent_fnv") == "?"
        || field(&cr, "sent_fnv") == "?"
    {
        return Err(format!("checksums differ: server {sr:?}, client {cr:?}"));
    }
    // The server removes its keys when it closes.
    let t2 = Instant::now();
    while read_str(xs, &evt_key)?.is_some() {
        if t2.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{path} is still in XenStore after the server closed"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mbs = BYTES as f64 / 1e6 / secs.max(1e-6);
    Ok(Outcome::Pass(format!(
        "domU d{} {} server, dom0 {} client: {} KiB each way at once in {:.0} ms, \
         {mbs:.2} MB/s each way, rings {} / {} B, checked byte for byte, checksums {} / {}; \
         key permissions {perms} (libxenvchan's); client closed first, server saw it and \
         removed its keys",
        domu.0,
        p.domu_server.name(),
        p.dom0_client.name(),
        BYTES >> 10,
        secs * 1e3,
        RING,
        RING,
        field(&sr, "sent_fnv"),
        field(&cr, "sent_fnv"),
    )))
}

/// The dom0 side: one result line per pair.
pub fn dom0(args: &[String]) -> ExitCode {
    let mut t = Tally::default();
    let r = (|| {
        let domu = crate::parse_dom(args.first())?;
        let plat = LinuxPlatform::open().ctx("open")?;
        let xs = plat.xenstore().ctx("xenstore")?;
        Ok::<_, String>((domu, xs))
    })();
    let (domu, mut xs) = match r {
        Ok(v) => v,
        Err(e) => {
            for p in &PAIRS {
                t.one(p.name, Instant::now(), Err(e.clone()));
            }
            return t.finish();
        }
    };
    let go = format!("{}/go", ctl_path(domu));
    if let Err(e) = xs.write(&go, b"1") {
        for p in &PAIRS {
            t.one(p.name, Instant::now(), Err(format!("write {go}: {e}")));
        }
        return t.finish();
    }
    for (idx, p) in PAIRS.iter().enumerate() {
        let start = Instant::now();
        let r = run_pair(&mut xs, domu, idx, p);
        t.one(p.name, start, r);
    }
    t.finish()
}
