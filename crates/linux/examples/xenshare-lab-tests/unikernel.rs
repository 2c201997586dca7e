//! dom0's side of the xenshare PV unikernel (`unikernel/`, issue 15):
//! `xenshare-lab-tests unikernel IMAGE BYTES`.
//!
//! Creates the unikernel with `xl create` (`type = "pv"`, 32 MiB), then
//! checks each of its steps from dom0, reading its console through
//! xenconsoled's log (`UK PASS <name> ...` / `UK FAIL <name>: ...` lines)
//! and its XenStore keys:
//!
//! * `unikernel_boot` — the banner is on its console;
//! * `unikernel_xenstore` — it wrote `data/status = ready` (and read its
//!   domid and name);
//! * `unikernel_grant_loopback` — (in the guest) it maps its own grants
//!   back with `GNTTABOP_map_grant_ref`, and Xen's busy bits refuse the
//!   revocation until it unmaps;
//! * `unikernel_vchan_c_client` / `unikernel_vchan_rust_client` — it serves
//!   a vchan at `/local/domain/<U>/data/vchan` that echoes; dom0's client
//!   (Xen's C libxenvchan through the lab's C peer, then xenshare's Rust
//!   client) sends BYTES of a pattern stream and checks every byte that
//!   comes back; the unikernel's own checksum of what it echoed must match;
//! * `unikernel_msa02_real_busy` — MSA02 with dom0 as the malicious mapper,
//!   stepped through `data/msa02/state`: dom0 maps the unikernel's shared
//!   page through gntdev and keeps it; the unikernel's revocation is refused
//!   by Xen's busy bits and it reuses all its free pages for a secret; dom0
//!   writes through its kept mapping and must see none of the secret; the
//!   unikernel checks its reused pages are unchanged; dom0 unmaps and the
//!   unikernel's reclaim frees the page;
//! * `unikernel_blkfront_on_xenshare_blkback` — (stretch) the core's
//!   blkfront in the unikernel on a disk served by xenshare's blkback in
//!   dom0 userspace (the `blk` module's dom0 side, unchanged): it writes a
//!   pattern, flushes, reads it back; dom0 checks the image byte for byte.

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use xenshare::store::{Client, Transport};
use xenshare::{DomId, GrantRef};
use xenshare_conformance::{Context, Outcome};
use xenshare_linux::LinuxPlatform;

use crate::Tally;

const NAME: &str = "xenshare-uk";
const LOG: &str = "/var/log/xen/console/guest-xenshare-uk.log";
const CFG: &str = "/tmp/xenshare-uk.cfg";
/// How long any one step of the unikernel may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// MiB the unikernel's blkfront writes and reads back (its `BLK_MIB`).
const BLK_MIB: u64 = 4;

const MARK: &[u8] = b"MSA02 page shared by the xenshare unikernel";
const SECRET: &[u8] = b"UK-SECRET!";

fn log_text() -> String {
    std::fs::read(LOG)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

/// Waits for the unikernel's `UK PASS <name>` line; a `UK FAIL <name>`,
/// a panic or its end first is a failure.
fn wait_line(name: &str) -> Result<String, String> {
    let start = Instant::now();
    let (pass, fail) = (format!("UK PASS {name} "), format!("UK FAIL {name}"));
    loop {
        let text = log_text();
        // Only whole lines: xenconsoled may have logged part of the last.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        for line in whole.lines() {
            if let Some(rest) = line.strip_prefix(&pass) {
                return Ok(rest.to_string());
            }
            if line.starts_with(&fail) || line.starts_with("UK PANIC") {
                return Err(format!("unikernel: {line}"));
            }
        }
        if text.contains("UK END") {
            return Err(format!("the unikernel ended without '{pass}'"));
        }
        if start.elapsed() > STEP_TIMEOUT {
            return Err(format!("no '{pass}' line within {STEP_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_key<T: Transport>(xs: &mut Client<T>, path: &str) -> Option<String> {
    let v = xs.try_read(path).ok().flatten()?;
    Some(
        String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .to_string(),
    )
}

fn wait_key<T: Transport>(xs: &mut Client<T>, path: &str, want: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if read_key(xs, path).as_deref() == Some(want) {
            return Ok(());
        }
        if log_text().contains("UK END") || log_text().contains("UK PANIC") {
            return Err(format!("the unikernel ended before {path} = {want}"));
        }
        if start.elapsed() > STEP_TIMEOUT {
            return Err(format!("{path} != {want} after {STEP_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn boot(image: &str, create_ms: u128) -> Result<String, String> {
    let size = std::fs::metadata(image).ctx("image")?.len();
    let guest = wait_line("unikernel_boot")?;
    Ok(format!(
        "image {} KiB, xl create {create_ms} ms; guest: {guest}",
        size.div_ceil(1024)
    ))
}

fn xenstore<T: Transport>(
    xs: &mut Client<T>,
    d: DomId,
    t0: Instant,
    create_ms: u128,
) -> Result<String, String> {
    wait_key(xs, &format!("/local/domain/{}/data/status", d.0), "ready")?;
    let ready = t0.elapsed().as_millis();
    let guest = wait_line("unikernel_xenstore")?;
    if !guest.contains(&format!("domid {},", d.0)) || !guest.contains(&format!("name {NAME};")) {
        return Err(format!("the unikernel read the wrong identity: {guest}"));
    }
    Ok(format!(
        "boot-to-ready {ready} ms from xl create (create itself {create_ms} ms); guest: {guest}"
    ))
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// One vchan round: `client` is the command line of dom0's client.
fn vchan<T: Transport>(
    xs: &mut Client<T>,
    d: DomId,
    round: u32,
    mut client: Command,
    bytes: usize,
) -> Result<String, String> {
    wait_key(
        xs,
        &format!("/local/domain/{}/data/vchan-round", d.0),
        &round.to_string(),
    )?;
    let start = Instant::now();
    let mut child = client
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx("spawn the client")?;
    let status = loop {
        if let Some(s) = child.try_wait().ctx("wait for the client")? {
            break s;
        }
        if start.elapsed() > STEP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the client took more than {STEP_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ms = start.elapsed().as_millis().max(1);
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!("client failed ({status}): {}", err.trim()));
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("VCHAN-END"))
        .ok_or_else(|| format!("no VCHAN-END line from the client: {out}"))?;
    let n = bytes.to_string();
    let (sent, recv) = (field(line, "sent"), field(line, "received"));
    let (sfnv, rfnv) = (field(line, "sent_fnv"), field(line, "received_fnv"));
    if sent != Some(&n) || recv != Some(&n) || sfnv.is_none() || sfnv != rfnv {
        return Err(format!("the echo differs from what was sent: {line}"));
    }
    let guest = wait_line(&format!(
        "unikernel_vchan_{}_client",
        if round == 1 { "c" } else { "rust" }
    ))?;
    let ours = sfnv.unwrap_or("?");
    if !guest.contains(&format!("echoed {n} bytes")) || !guest.contains(&format!("fnv {ours}")) {
        return Err(format!(
            "the unikernel echoed something else than dom0 sent ({ours}): {guest}"
        ));
    }
    let mbs = (2 * bytes) as f64 / 1e6 / (ms as f64 / 1e3);
    Ok(format!(
        "{} MiB echoed and checked byte for byte in {ms} ms ({mbs:.2} MB/s both ways together), fnv {ours}; guest: {guest}",
        bytes >> 20
    ))
}

fn msa02<T: Transport>(xs: &mut Client<T>, d: DomId) -> Result<String, String> {
    let dir = format!("/local/domain/{}/data/msa02", d.0);
    let state = format!("{dir}/state");
    wait_key(xs, &state, "shared")?;
    let gref: u32 = read_key(xs, &format!("{dir}/gref"))
        .ctx("gref")?
        .parse()
        .ctx("gref")?;
    let plat = LinuxPlatform::open().ctx("open")?;
    let imp = plat.importer().ctx("importer")?;
    // The malicious mapper: map through gntdev and keep it.
    let m = imp.map_rw(d, &[GrantRef(gref)]).ctx("map")?;
    let mut page = vec![0u8; 4096];
    m.mem().read(0, &mut page).ctx("read")?;
    if !page.starts_with(MARK) {
        return Err("the shared page does not hold the unikernel's mark".into());
    }
    xs.write(&state, b"mapped").ctx("state")?;
    wait_key(xs, &state, "filled")?;
    // The unikernel has reused every free page: look for its secret in
    // the page we kept, write over it, and look again.
    let has_secret = |p: &[u8]| p.windows(SECRET.len()).any(|w| w == SECRET);
    m.mem().read(0, &mut page).ctx("read")?;
    let before = has_secret(&page);
    let still_marked = page.starts_with(MARK);
    let evil = vec![0xee; 4096];
    m.mem().write(0, &evil).ctx("write")?;
    m.mem().read(0, &mut page).ctx("read")?;
    let after = has_secret(&page);
    let wrote = page == evil;
    let verdict = if before || after {
        "secret"
    } else {
        "no-secret"
    };
    xs.write(&format!("{dir}/dom0-saw"), verdict.as_bytes())
        .ctx("verdict")?;
    xs.write(&state, b"written").ctx("state")?;
    wait_key(xs, &state, "checked")?;
    drop(m);
    xs.write(&state, b"unmapped").ctx("state")?;
    wait_key(xs, &state, "done")?;
    let guest = wait_line("unikernel_msa02_real_busy")?;
    if verdict != "no-secret" || !wrote || !still_marked {
        return Err(format!(
            "dom0 saw the secret ({before} before / {after} after writing), its writes stuck {wrote}, mark kept {still_marked}"
        ));
    }
    Ok(format!(
        "dom0 mapped gref {gref} of d{} through gntdev and kept it: it still held the mark, no secret before or after dom0 wrote 4 KiB through it; guest: {guest}",
        d.0
    ))
}

/// `unikernel IMAGE BYTES`.
pub fn dom0(args: &[String]) -> ExitCode {
    let mut t = Tally::default();
    let image = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/guest/unikernel".into());
    let bytes: usize = args.get(1).and_then(|b| b.parse().ok()).unwrap_or(16 << 20);
    let cfg = format!(
        "name = \"{NAME}\"\ntype = \"pv\"\nkernel = \"{image}\"\nmemory = 32\nvcpus = 1\n\
         extra = \"xenshare-lab\"\non_poweroff = \"destroy\"\non_reboot = \"destroy\"\non_crash = \"preserve\"\n"
    );
    let t0 = Instant::now();
    let created = std::fs::write(CFG, cfg)
        .ctx("write the xl config")
        .and_then(|()| {
            Command::new("xl")
                .args(["create", CFG])
                .output()
                .ctx("xl create")
        })
        .and_then(|o| match o.status.success() {
            true => Ok(()),
            false => Err(format!(
                "xl create: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        });
    let create_ms = t0.elapsed().as_millis();
    let d = created.and_then(|()| {
        let o = Command::new("xl")
            .args(["domid", NAME])
            .output()
            .ctx("xl domid")?;
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u16>()
            .map(DomId)
            .ctx("xl domid")
    });
    let d = match d {
        Ok(d) => d,
        Err(e) => {
            t.one("unikernel_boot", t0, Err(e));
            return t.finish();
        }
    };
    println!("XENLAB-UNIKERNEL-CREATED domid={} in {create_ms} ms", d.0);
    let r = boot(&image, create_ms);
    t.one("unikernel_boot", t0, r.map(Outcome::Pass));
    let plat = LinuxPlatform::open();
    let mut xs = match plat
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|p| p.xenstore().ctx("xenstore"))
    {
        Ok(xs) => xs,
        Err(e) => {
            t.one("unikernel_xenstore", t0, Err(e));
            return t.finish();
        }
    };
    let s = Instant::now();
    t.one(
        "unikernel_xenstore",
        s,
        xenstore(&mut xs, d, t0, create_ms).map(Outcome::Pass),
    );

    let s = Instant::now();
    t.one(
        "unikernel_grant_loopback",
        s,
        wait_line("unikernel_grant_loopback").map(|g| Outcome::Pass(format!("guest: {g}"))),
    );

    let path = format!("/local/domain/{}/data/vchan", d.0);
    let client_args = |seed: u64| {
        vec![
            "client".to_string(),
            d.0.to_string(),
            path.clone(),
            seed.to_string(),
            seed.to_string(),
            bytes.to_string(),
            "first".to_string(),
        ]
    };
    let mut c = Command::new(crate::vchan::C_PEER);
    c.args(client_args(0x756b_0001));
    let s = Instant::now();
    t.one(
        "unikernel_vchan_c_client",
        s,
        vchan(&mut xs, d, 1, c, bytes).map(Outcome::Pass),
    );
    let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/xenshare-lab-tests".into());
    let mut r = Command::new(exe);
    r.arg("vchan-client").args(&client_args(0x756b_0002)[1..]);
    let s = Instant::now();
    t.one(
        "unikernel_vchan_rust_client",
        s,
        vchan(&mut xs, d, 2, r, bytes).map(Outcome::Pass),
    );
    let s = Instant::now();
    t.one(
        "unikernel_msa02_real_busy",
        s,
        msa02(&mut xs, d).map(Outcome::Pass),
    );
    // The stretch goal, with xenshare's userspace blkback in dom0 (the lab
    // has no hotplug scripts for Linux's kernel blkback).
    let s = Instant::now();
    // (Its PASS line carries the unikernel's own numbers as "domU: ...".)
    let blk = crate::blk::dom0(&[d.0.to_string(), BLK_MIB.to_string()]);
    t.one(
        "unikernel_blkfront_on_xenshare_blkback",
        s,
        blk.map(Outcome::Pass),
    );

    // Let it power off, then show its console.
    let end = Instant::now();
    while Command::new("xl")
        .args(["domid", NAME])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && end.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("---- unikernel console ----");
    for line in log_text().lines() {
        println!("uk| {line}");
    }
    println!("---------------------------");
    let _ = Command::new("xl").args(["destroy", NAME]).output();
    if !log_text().contains("UK END ok") {
        t.one(
            "unikernel_end",
            end,
            Err("the unikernel did not end with 'UK END ok'".into()),
        );
    }
    t.finish()
}
