//! The Xen lab's test program, run inside a real Xen domain by
//! `scripts/xen-lab`.
//!
//! * `xenshare-lab-tests [dom0]` — the conformance bodies on the Linux
//!   platform as a self-grant loopback (this domain shares with itself),
//!   then the XenStore bodies against the running C xenstored, over its
//!   Unix socket and over `/dev/xen/xenbus`, cross-checked with the C
//!   `xenstore-read` / `xenstore-write` tools when they are installed; then
//!   vchan: the conformance body (server and client on two threads), and
//!   pairs of processes, xenshare with xenshare and xenshare with Xen's C
//!   libxenvchan in both roles.
//! * `xenshare-lab-tests offer PEER` — (in a domU) share a page and an
//!   unbound port with PEER through xenshare, publish them in XenStore
//!   under this domain's `data/`, and wait for PEER's reply.
//! * `xenshare-lab-tests accept DOMID` — (in dom0) read DOMID's offer from
//!   XenStore, map the page, check it, write a reply, bind and notify.
//!
//! * `xenshare-lab-tests blkback DOMID MIB` (dom0) / `blk-domu MIB` (domU)
//!   — the domU's Linux `xen-blkfront` on xenshare's blkback (the `blk`
//!   module).
//! * `xenshare-lab-tests hvc DOMID` (dom0) / `hvc-domu` (domU) — the domU's
//!   `hvc_xen` secondary console on xenshare's console back end (`hvc`).
//! * `xenshare-lab-tests netback DOMID KIB` (dom0) / `net-domu KIB` (domU)
//!   — the domU's `xen-netfront` on xenshare's netback and a TAP (`net`).
//! * `xenshare-lab-tests unikernel IMAGE BYTES` (dom0) — boots the
//!   xenshare PV unikernel (`unikernel/`) with `xl create` and checks its
//!   console, XenStore, vchan and MSA02 steps from dom0 (`unikernel`).
//! * `xenshare-lab-tests xsblk DOMID MIB` (dom0) / `xsblk-domu` (domU) —
//!   xenshare's blkfront in the domU on dom0's kernel `xen-blkback`
//!   (`blkfront`).
//! * `xenshare-lab-tests xsnet DOMID KIB` (dom0) / `xsnet-domu` (domU) —
//!   xenshare's netfront + smoltcp in the domU on dom0's kernel
//!   `xen-netback` (`netfront`).
//! * `xenshare-lab-tests vchan-xdom DOMID` (dom0) / `vchan-domu` (domU) —
//!   vchan across domains against Xen's C libxenvchan, each side serving
//!   in the domU once (`vchan_xdom`).
//! * `xenshare-lab-tests vchan-server ...` / `vchan-client ...` — one end
//!   of a vchan, run as a child process by the dom0 tests (see the `vchan`
//!   module: Rust with Rust, and Rust with Xen's C libxenvchan).
//!
//! Prints one line per test (`PASS` / `FAIL` / `SKIP`), then
//! `N passed, M failed, K skipped`, and exits non-zero on any failure.

#[path = "xenshare-lab-tests/blk.rs"]
mod blk;
#[path = "xenshare-lab-tests/blkfront.rs"]
mod blkfront;
#[path = "xenshare-lab-tests/hvc.rs"]
mod hvc;
#[path = "xenshare-lab-tests/net.rs"]
mod net;
#[path = "xenshare-lab-tests/netfront.rs"]
mod netfront;
#[path = "xenshare-lab-tests/unikernel.rs"]
mod unikernel;
#[path = "xenshare-lab-tests/vchan.rs"]
mod vchan;
#[path = "xenshare-lab-tests/vchan_xdom.rs"]
mod vchan_xdom;
#[path = "xenshare-lab-tests/xenstored_bench.rs"]
mod xenstored_bench;

use std::ops::RangeInclusive;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::grant::{Exporter, Importer};
use xenshare::platform::EventChannels;
use xenshare::store::xenbus::{read_state, XenbusState};
use xenshare::store::{Client, Transport, UnixTransport};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_conformance::{
    check, report_line, run_and_report, Context, Outcome, Platform, Revocation, TestResult,
};
use xenshare_linux::{
    EvtchnHandle, GntallocBackend, GntdevMapper, LinuxPlatform, OpenError, XenbusTransport,
};

const XENSTORED_SOCKET: &str = "/run/xenstored/socket";
const OFFER: &[u8] = b"hello from the granting domain, via xenshare";
const REPLY: &[u8] = b"reply from the mapping domain, via xenshare";

/// The Linux platform as a conformance [`Platform`]: this domain shares
/// with itself.
struct Linux {
    plat: LinuxPlatform,
    exporter: Exporter<GntallocBackend>,
    importer: Importer<GntdevMapper>,
}

impl Platform for Linux {
    type Backend = GntallocBackend;
    type Mapper = GntdevMapper;
    type Evtchn = EvtchnHandle;

    fn name(&self) -> String {
        format!("linux d{}", self.plat.domid().0)
    }

    fn exporter(&self) -> &Exporter<GntallocBackend> {
        &self.exporter
    }

    fn importer(&self) -> &Importer<GntdevMapper> {
        &self.importer
    }

    fn exporter_evtchn(&self) -> Result<Arc<EvtchnHandle>, String> {
        self.plat.evtchn().map(Arc::new).map_err(|e| e.to_string())
    }

    fn importer_evtchn(&self) -> Result<Arc<EvtchnHandle>, String> {
        self.plat.evtchn().map(Arc::new).map_err(|e| e.to_string())
    }

    fn revocation(&self) -> Revocation {
        Revocation::RevokedAndDeferred
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    fn add(&mut self, (p, f, s): (usize, usize, usize)) {
        self.passed += p;
        self.failed += f;
        self.skipped += s;
    }

    fn one(&mut self, name: &str, start: Instant, r: TestResult) {
        let mut t = (0, 0, 0);
        report_line("", name, &r, start.elapsed().as_millis(), &mut t);
        self.add(t);
    }

    fn finish(self) -> ExitCode {
        println!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
        if self.failed == 0 && self.passed > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Runs a program (one of Xen's C tools, `losetup`...); its stdout on
/// success, an error naming the command and its stderr otherwise.
fn c_tool(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// Our client and Xen's C tools see each other's writes.
fn xenstore_vs_c_tools<T: Transport>(c: &mut Client<T>, base: &str) -> TestResult {
    if c_tool("xenstore-read", &["/local/domain/0/domid"]).is_err()
        && Command::new("xenstore-read")
            .arg("--help")
            .output()
            .is_err()
    {
        return Ok(Outcome::Skip("xenstore-read is not installed".into()));
    }
    c.write(&format!("{base}/from-rust"), b"written by xenshare")
        .ctx("write")?;
    let v = c_tool("xenstore-read", &[&format!("{base}/from-rust")])?;
    check!(v == "written by xenshare", "xenstore-read gives {v:?}");
    c_tool(
        "xenstore-write",
        &[&format!("{base}/from-c"), "written by xenstore-write"],
    )?;
    let v = c.read(&format!("{base}/from-c")).ctx("read")?;
    check!(v == b"written by xenstore-write", "we read {v:?}");
    let ls = c_tool("xenstore-ls", &[base])?;
    check!(
        ls.contains("from-rust") && ls.contains("from-c"),
        "xenstore-ls shows {ls:?}"
    );
    c.rm(base).ctx("cleanup")?;
    Ok(Outcome::Pass(String::new()))
}

/// New kernel log lines since `kmsg` was opened (or last drained).
fn kmsg_lines(kmsg: &mut std::fs::File) -> Vec<String> {
    use std::io::Read;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            // EPIPE: records were overwritten; keep reading.
            Err(e) if e.raw_os_error() == Some(32) => {}
            Err(_) => break,
        }
    }
    lines
}

/// Linux only: the kernel's side of "revoked-and-deferred". With
/// `grant_table.dyndbg=+p` on the kernel command line (the lab sets it),
/// the kernel logs that it deferred the still-mapped entry when we revoked,
/// and that it freed it once the peer unmapped.
fn kernel_defers_then_frees(linux: &Linux) -> TestResult {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let dyndbg = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !dyndbg.contains("grant_table.dyndbg") {
        return Ok(Outcome::Skip(
            "needs grant_table.dyndbg=+p on the kernel command line".into(),
        ));
    }
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open("/dev/kmsg")
        .ctx("open /dev/kmsg")?;
    kmsg.seek(SeekFrom::End(0)).ctx("seek /dev/kmsg")?;
    let exp = &linux.exporter;
    let share = exp
        .share(linux.importer.domid(), 1, Access::ReadWrite)
        .ctx("share")?;
    let gref = share.refs()[0];
    let kept = linux
        .importer
        .map_rw(exp.domid(), share.refs())
        .ctx("map")?;
    let _retired = share
        .try_unshare()
        .map_err(|_| "gntalloc reported busy".to_string())?;
    let deferring = format!("deferring g.e. {:#x}", gref.0);
    let freeing = format!("freeing g.e. {:#x}", gref.0);
    let mut log = kmsg_lines(&mut kmsg);
    check!(
        log.iter().any(|l| l.contains(&deferring)),
        "no \"{deferring}\" in the kernel log after revoking a mapped page: {log:?}"
    );
    check!(
        !log.iter().any(|l| l.contains(&freeing)),
        "the kernel freed {gref} while it was still mapped"
    );
    drop(kept);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.iter().any(|l| l.contains(&freeing)) {
        check!(
            Instant::now() < deadline,
            "the kernel did not free {gref} within 5 s of the unmap"
        );
        std::thread::sleep(Duration::from_millis(100));
        log.extend(kmsg_lines(&mut kmsg));
    }
    Ok(Outcome::Pass(format!(
        "kernel deferred {gref}, freed it after unmap"
    )))
}

fn xenstore_suite<T: Transport>(t: &mut Tally, label: &str, c: &mut Client<T>, base: &str) {
    let s = Instant::now();
    t.one(
        &format!("xenstore_basics[{label}]"),
        s,
        xenshare_conformance::xenstore_basics(c, base),
    );
    let s = Instant::now();
    t.one(
        &format!("xenstore_watch[{label}]"),
        s,
        xenshare_conformance::xenstore_watch(c, base),
    );
    let s = Instant::now();
    t.one(
        &format!("xenstore_vs_c_tools[{label}]"),
        s,
        xenstore_vs_c_tools(c, base),
    );
}

fn dom0_tests() -> ExitCode {
    let mut t = Tally::default();
    let plat = match LinuxPlatform::open() {
        Ok(p) => p,
        Err(e) => {
            println!("FAIL open_platform: {e}");
            t.failed += 1;
            return t.finish();
        }
    };
    println!("platform: domain {}", plat.domid());
    let linux = match (plat.exporter(), plat.importer()) {
        (Ok(exporter), Ok(importer)) => Linux {
            plat,
            exporter,
            importer,
        },
        (Err(e), _) | (_, Err(e)) => {
            println!("FAIL open_devices: {e}");
            t.failed += 1;
            return t.finish();
        }
    };
    t.add(run_and_report(&linux, ""));
    let s = Instant::now();
    t.one(
        "grant_kernel_defers_then_frees",
        s,
        kernel_defers_then_frees(&linux),
    );

    let base = format!("/local/domain/{}/xenshare-lab", linux.plat.domid().0);
    if std::path::Path::new(XENSTORED_SOCKET).exists() {
        match UnixTransport::connect(XENSTORED_SOCKET) {
            Ok(tr) => xenstore_suite(&mut t, "socket", &mut Client::new(tr), &base),
            Err(e) => t.one(
                "xenstore_connect[socket]",
                Instant::now(),
                Err(e.to_string()),
            ),
        }
    } else {
        t.one(
            "xenstore[socket]",
            Instant::now(),
            Ok(Outcome::Skip(format!("{XENSTORED_SOCKET} does not exist"))),
        );
    }
    match XenbusTransport::open() {
        Ok(tr) => xenstore_suite(&mut t, "xenbus", &mut Client::new(tr), &base),
        Err(e) => t.one("xenstore_open[xenbus]", Instant::now(), Err(e.to_string())),
    }

    let me = linux.plat.domid();
    match linux.plat.xenstore() {
        Ok(mut xs) => {
            let s = Instant::now();
            let vbase = format!("/local/domain/{}/data/vchan", me.0);
            t.one(
                "vchan_stream",
                s,
                xenshare_conformance::vchan_stream(&linux, &mut xs, &vbase),
            );
            vchan::pairs(&mut t, &mut xs, me);
        }
        Err(e) => t.one("vchan_xenstore_open", Instant::now(), Err(e.to_string())),
    }
    let s = Instant::now();
    t.one("xenstored_side_by_side", s, xenstored_bench::side_by_side());
    t.finish()
}

fn offer(peer: DomId) -> Result<(), String> {
    let plat = LinuxPlatform::open().ctx("open")?;
    let me = plat.domid();
    let exp = plat.exporter().ctx("exporter")?;
    let evt = Arc::new(plat.evtchn().ctx("evtchn")?);
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let share = exp.share(peer, 1, Access::ReadWrite).ctx("share")?;
    share.mem().write(0, OFFER).ctx("write offer")?;
    let port = evt.alloc_unbound(peer).ctx("alloc_unbound")?;
    let dir = format!("/local/domain/{}/data", me.0);
    xs.write(
        &format!("{dir}/gref"),
        share.refs()[0].0.to_string().as_bytes(),
    )
    .ctx("publish gref")?;
    xs.write(&format!("{dir}/port"), port.0.to_string().as_bytes())
        .ctx("publish port")?;
    println!(
        "offer: d{} shared {} and {} with d{}",
        me.0,
        share.refs()[0],
        port,
        peer.0
    );
    let got = evt
        .wait(Some(Duration::from_secs(120)))
        .ctx("wait for the peer")?;
    check_plain(got == Some(port), format!("event: {got:?}"))?;
    let mut reply = vec![0u8; REPLY.len()];
    share.mem().read(2048, &mut reply).ctx("read reply")?;
    check_plain(
        reply == REPLY,
        format!("reply reads {:?}", String::from_utf8_lossy(&reply)),
    )?;
    let _ = xs.write(&format!("{dir}/result"), b"pass");
    Ok(())
}

fn check_plain(ok: bool, what: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what)
    }
}

fn read_num<T: Transport>(xs: &mut Client<T>, path: &str) -> Result<u32, String> {
    let v = xs.read(path).ctx(path)?;
    String::from_utf8_lossy(&v)
        .trim_end_matches('\0')
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("{path}: {e}"))
}

fn accept(granter: DomId) -> Result<(), String> {
    let plat = LinuxPlatform::open().ctx("open")?;
    let imp = plat.importer().ctx("importer")?;
    let evt = Arc::new(plat.evtchn().ctx("evtchn")?);
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let dir = format!("/local/domain/{}/data", granter.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (gref, port) = loop {
        if let (Ok(g), Ok(p)) = (
            read_num(&mut xs, &format!("{dir}/gref")),
            read_num(&mut xs, &format!("{dir}/port")),
        ) {
            break (GrantRef(g), Port(p));
        }
        if Instant::now() > deadline {
            return Err("no offer from the domU within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("accept: d{} offers {gref} and {port}", granter.0);
    let m = imp.map_rw(granter, &[gref]).ctx("map")?;
    let mut got = vec![0u8; OFFER.len()];
    m.mem().read(0, &mut got).ctx("read offer")?;
    check_plain(
        got == OFFER,
        format!("offer reads {:?}", String::from_utf8_lossy(&got)),
    )?;
    m.mem().write(2048, REPLY).ctx("write reply")?;
    let local = evt.bind_interdomain(granter, port).ctx("bind")?;
    evt.notify(local).ctx("notify")?;
    // Wait for the domU to confirm, then let go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while xs
        .try_read(&format!("{dir}/result"))
        .ok()
        .flatten()
        .is_none()
    {
        if Instant::now() > deadline {
            return Err("the domU never confirmed the reply".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(m);
    Ok(())
}

fn one_shot(name: &str, f: impl FnOnce() -> Result<(), String>) -> ExitCode {
    let mut t = Tally::default();
    let start = Instant::now();
    let r = f();
    t.one(name, start, r.map(|()| Outcome::Pass(String::new())));
    t.finish()
}

/// Like [`one_shot`], with the test's numbers on its PASS line.
fn one_shot_noted(name: &str, f: impl FnOnce() -> Result<String, String>) -> ExitCode {
    let mut t = Tally::default();
    let start = Instant::now();
    let r = f();
    t.one(name, start, r.map(Outcome::Pass));
    t.finish()
}

/// Runs a program; its stdout and stderr on success, an error naming the
/// command and its output otherwise.
fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd} {args:?}: {}", text.trim()))
    }
}

/// domU side of a front-end test: waits (bounded, `secs`) until dom0 has
/// created the device, i.e. until `dir/backend` exists.
fn wait_device_created<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    secs: u64,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let key = format!("{dir}/backend");
    while xs
        .try_read(&key)
        .map_err(|e| format!("read {key}: {e}"))?
        .is_none()
    {
        if std::time::Instant::now() > deadline {
            return Err(format!("{dir} did not appear within {secs} s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// domU side, after a test of xenshare's own front end: waits (bounded)
/// for dom0 to remove the device's directory `dir`, then for the domU's
/// xenbus to drop `sys` (it follows the removal through a watch), so that
/// a kernel front-end driver loaded next never meets the device. `after`
/// is the test's result line, for the error.
fn wait_device_gone<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    sys: &str,
    after: &str,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while xs
        .try_read(dir)
        .map_err(|e| format!("read {dir}: {e}"))?
        .is_some()
    {
        if std::time::Instant::now() > deadline {
            return Err(format!("dom0 never removed {dir} (after: {after})"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    while std::path::Path::new(sys).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{sys} still exists after the nodes went (after: {after})"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

fn parse_dom(s: Option<&String>) -> Result<DomId, String> {
    s.ok_or("missing domain id")?
        .parse::<u16>()
        .map(DomId)
        .map_err(|e| format!("bad domain id: {e}"))
}

/// Reads `dir`'s XenBus state every 50 ms until `done` holds or `within`
/// has passed: `Ok(state)` when it holds, `Err(last state read)` on
/// time-out (the caller says what that means).
fn poll_state<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    within: Duration,
    done: impl Fn(XenbusState) -> bool,
) -> Result<Result<XenbusState, XenbusState>, String> {
    let deadline = Instant::now() + within;
    loop {
        let s = read_state(xs, dir).ctx("backend state")?;
        if done(s) {
            return Ok(Ok(s));
        }
        if Instant::now() > deadline {
            return Ok(Err(s));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A size argument, a number in `range` of `unit`s.
fn parse_size(s: Option<&String>, range: RangeInclusive<u64>, unit: &str) -> Result<u64, String> {
    s.ok_or_else(|| format!("missing size in {unit}"))?
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("size must be {}..={} {unit}", range.start(), range.end()))
}

/// How a dom0 side starts: the front end's domain (the first argument),
/// this platform and a XenStore client.
fn dom0_open(args: &[String]) -> Result<(DomId, LinuxPlatform, Client<XenbusTransport>), String> {
    let fe = parse_dom(args.first())?;
    let plat = LinuxPlatform::open().ctx("open")?;
    let xs = plat.xenstore().ctx("xenstore")?;
    Ok((fe, plat, xs))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("dom0") => dom0_tests(),
        Some("offer") => one_shot("cross_domain_offer", || {
            parse_dom(args.get(2)).and_then(offer)
        }),
        Some("accept") => one_shot("cross_domain_accept", || {
            parse_dom(args.get(2)).and_then(accept)
        }),
        Some("blkback") => one_shot_noted("linux_blkfront_on_xenshare_blkback", || {
            blk::dom0(&args[2..])
        }),
        Some("blk-domu") => one_shot_noted("linux_blkfront_domu_io", || blk::domu(&args[2..])),
        Some("xsblk") => one_shot_noted("xenshare_blkfront_on_linux_blkback", || {
            blkfront::dom0(&args[2..])
        }),
        Some("xsblk-domu") => one_shot_noted("xenshare_blkfront_domu", blkfront::domu),
        Some("xsnet") => one_shot_noted("xenshare_netfront_on_linux_netback", || {
            netfront::dom0(&args[2..])
        }),
        Some("xsnet-domu") => one_shot_noted("xenshare_netfront_domu", netfront::domu),
        Some("hvc") => one_shot_noted("linux_hvc_on_xenshare_console", || hvc::dom0(&args[2..])),
        Some("hvc-domu") => one_shot_noted("linux_hvc_domu", hvc::domu),
        Some("netback") => {
            let mut t = Tally::default();
            net::dom0(&mut t, &args[2..]);
            t.finish()
        }
        Some("net-domu") => one_shot_noted("linux_netfront_domu", || net::domu(&args[2..])),
        Some("unikernel") => unikernel::dom0(&args[2..]),
        Some("vchan-xdom") => vchan_xdom::dom0(&args[2..]),
        Some("vchan-domu") => one_shot_noted("vchan_xdom_domu_servers", vchan_xdom::domu),
        Some("vchan-server") => vchan::end_main(true, &args[2..]),
        Some("vchan-client") => vchan::end_main(false, &args[2..]),
        Some("check-not-xen") => match LinuxPlatform::open() {
            Err(e @ OpenError::NotXen { .. }) => {
                println!("not on Xen, as expected: {e}");
                ExitCode::SUCCESS
            }
            other => {
                println!("unexpected: {other:?}");
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            eprintln!(
                "usage: xenshare-lab-tests [dom0 | offer PEER | accept DOMID | \
                 blkback DOMID MIB | blk-domu MIB | xsblk DOMID MIB | xsblk-domu | xsnet DOMID KIB | xsnet-domu | hvc DOMID | hvc-domu | unikernel IMAGE BYTES | netback DOMID KIB | net-domu KIB | vchan-xdom DOMID | vchan-domu | vchan-server ARGS | vchan-client ARGS] \
                 (got {other:?})"
            );
            ExitCode::from(2)
        }
    }
}
