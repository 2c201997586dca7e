//! Side by side with Xen's own daemons (issue 13): the same client workload
//! (`xenshare_xenstored::bench::run_clients`, the client of
//! `xenshare bench xenstore`) over a Unix socket against xenshare's
//! xenstored, C xenstored and oxenstored, in one boot, printing ops/s for
//! each and the ratios.
//!
//! xenshare's daemon runs in this process on its own socket. C xenstored
//! is first tried as a second instance on its own run directory
//! (`XENSTORED_RUNDIR`, `--no-domain-init`, `--no-fork`); dom0's real
//! xenstored keeps running. If the second instance cannot start (a global
//! VIRQ such as `VIRQ_DOM_EXC` binds once per domain), the workload runs
//! against dom0's own C xenstored under a scratch subtree that is removed
//! afterwards, and the note says so. oxenstored has its socket path built
//! in (`/var/run/xenstored/socket`, dom0's), so a second instance would
//! take over dom0's socket: it is reported as skipped with that reason
//! unless it is dom0's running daemon.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xenshare::store::{Client, UnixTransport};
use xenshare_conformance::Outcome;
use xenshare_xenstored::bench::{run_clients, Rates};
use xenshare_xenstored::{spawn, Config};

/// Clients at once (as the bench's default).
const CLIENTS: u64 = 4;
/// Operations per client and kind: small, the lab runs under TCG (about
/// 100-150 ops/s on a loaded 2-core host) inside a 600 s QEMU timeout.
const OPS: u64 = 500;
const RUN_DIR: &str = "/run/xenshare-xsbench";
const C_XENSTORED: &str = "/usr/lib/xen-4.17/bin/xenstored";
const OXENSTORED: &str = "/usr/lib/xen-4.17/bin/oxenstored";
const DOM0_SOCKET: &str = "/run/xenstored/socket";

/// Kills the child (a second daemon) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(name: &str, socket: &Path, prefix: &str) -> Result<Rates, String> {
    run_clients(CLIENTS, OPS, prefix, || {
        UnixTransport::connect(socket)
            .map(Client::new)
            .map_err(|e| format!("connect {}: {e}", socket.display()))
    })
    .map_err(|e| format!("{name}: {e}"))
}

/// The workload against dom0's own daemon under a scratch subtree, removed
/// afterwards.
fn measure_dom0(name: &str) -> Result<Rates, String> {
    let prefix = "/tool/xenshare-xsbench";
    let r = measure(name, Path::new(DOM0_SOCKET), prefix);
    let cleanup = remove_scratch(prefix);
    let r = r?;
    cleanup?;
    Ok(r)
}

fn show(name: &str, r: &Rates) -> String {
    format!(
        "{name}: write {:.0} ops/s read {:.0} ops/s",
        r.write_ops, r.read_ops
    )
}

/// What the second C xenstored said on stderr, on one line.
fn said(dir: &Path) -> String {
    let s = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let s = s.trim().replace('\n', " | ");
    if s.is_empty() {
        "nothing on stderr".into()
    } else {
        s
    }
}

/// Starts C xenstored as a second instance on `dir` and checks that it
/// answers a request and is still running after it; `Err` carries why it
/// could not (with its own words).
fn start_c_second(dir: &Path) -> Result<Reaped, String> {
    std::fs::create_dir_all(dir.join("lib")).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?;
    let child = Command::new(C_XENSTORED)
        .args(["--no-fork", "--no-domain-init", "--pid-file"])
        .arg(dir.join("pid"))
        .env("XENSTORED_RUNDIR", dir)
        .env("XENSTORED_ROOTDIR", dir.join("lib"))
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {C_XENSTORED}: {e}"))?;
    let mut child = Reaped(child);
    let socket = dir.join("socket");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no socket yet");
    loop {
        if let Ok(Some(st)) = child.0.try_wait() {
            return Err(format!(
                "second C xenstored exited ({st}) after {last}: {}",
                said(dir)
            ));
        }
        if socket.exists() {
            match UnixTransport::connect(&socket).map(Client::new) {
                Ok(mut c) => match c.write("/xsbench-probe", b"1") {
                    Ok(()) => {
                        std::thread::sleep(Duration::from_millis(200));
                        if child.0.try_wait().ok().flatten().is_none() {
                            return Ok(child);
                        }
                        last = "answering one write".into();
                    }
                    Err(e) => last = format!("a probe write failing ({e})"),
                },
                Err(e) => last = format!("connect failing ({e})"),
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "second C xenstored not serving within 20 s ({last}): {}",
                said(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True if the running dom0 xenstored is oxenstored.
fn dom0_daemon_is_oxenstored() -> bool {
    let Ok(pid) = std::fs::read_to_string("/run/xenstored.pid") else {
        return false;
    };
    std::fs::read_link(format!("/proc/{}/exe", pid.trim()))
        .map(|p| p.to_string_lossy().contains("oxenstored"))
        .unwrap_or(false)
}

/// Removes the scratch subtree from dom0's daemon.
fn remove_scratch(prefix: &str) -> Result<(), String> {
    let mut c = UnixTransport::connect(DOM0_SOCKET)
        .map(Client::new)
        .map_err(|e| e.to_string())?;
    c.rm(prefix).map_err(|e| format!("rm {prefix}: {e}"))
}

/// The side-by-side run; the note carries every figure and the reason for
/// each daemon left out.
pub fn side_by_side() -> Result<Outcome, String> {
    let dir = Path::new(RUN_DIR);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {RUN_DIR}: {e}"))?;
    let mut lines = Vec::new();

    let ours = {
        let server = spawn(Config::default(), dir.join("xenshare.sock"))
            .map_err(|e| format!("xenshare xenstored: {e}"))?;
        let r = measure("xenshare xenstored", server.path(), "/bench")?;
        drop(server);
        r
    };
    lines.push(show("xenshare xenstored", &ours));

    let c_dir = dir.join("c");
    let second = start_c_second(&c_dir).and_then(|child| {
        let r = measure("second C xenstored", &c_dir.join("socket"), "/bench");
        let r = r.map_err(|e| format!("{e} ({})", said(&c_dir)));
        drop(child);
        r
    });
    let c = match second {
        Ok(r) => {
            lines.push(show("C xenstored (second instance)", &r));
            Some(r)
        }
        Err(why) if Path::new(DOM0_SOCKET).exists() && !dom0_daemon_is_oxenstored() => {
            let r = measure_dom0("dom0's C xenstored")?;
            lines.push(format!(
                "(no second C xenstored: {why}; measured dom0's own C xenstored \
                 under a scratch subtree)"
            ));
            lines.push(show("C xenstored (dom0's instance)", &r));
            Some(r)
        }
        Err(why) => {
            lines.push(format!("C xenstored SKIP: {why}"));
            None
        }
    };

    let ox = if dom0_daemon_is_oxenstored() {
        let r = measure_dom0("dom0's oxenstored")?;
        lines.push(show("oxenstored (dom0's instance)", &r));
        Some(r)
    } else {
        lines.push(format!(
            "oxenstored SKIP: {}its socket path is built in (/var/run/xenstored/socket, \
             dom0's C xenstored's), so a second instance would take over dom0's socket",
            if Path::new(OXENSTORED).exists() {
                ""
            } else {
                "not in the lab image, and "
            }
        ));
        None
    };

    for (name, r) in [("C xenstored", c), ("oxenstored", ox)] {
        if let Some(r) = r {
            lines.push(format!(
                "xenshare / {name}: write {:.2}x read {:.2}x",
                ours.write_ops / r.write_ops,
                ours.read_ops / r.read_ops
            ));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    let note = format!("{CLIENTS} clients x {OPS} ops; {}", lines.join("; "));
    if c.is_none() && ox.is_none() {
        Ok(Outcome::Skip(note))
    } else {
        Ok(Outcome::Pass(note))
    }
}
