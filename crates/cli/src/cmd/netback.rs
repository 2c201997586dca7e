//! `xenshare netback`: serve a guest's Linux `xen-netfront` from a TAP
//! interface in dom0 userspace, on real Xen — a userspace alternative to
//! the kernel's `xen-netback` and its hotplug scripts.
//!
//! It does the toolstack's part itself ([`attach_vif`]: both XenStore
//! directories, under a private back-end type so the kernel's netback
//! leaves the device alone), opens (or creates) the TAP, and serves the
//! guest's rings with xenshare's netback over `/dev/xen/gntdev`,
//! `/dev/xen/evtchn` and `/dev/xen/xenbus`: frames the guest sends come out
//! of the TAP, frames written to the TAP go to the guest. Bridge the TAP or
//! give it an address as with any interface. It stops on SIGINT, SIGTERM or
//! SIGHUP, when the front end closes, when the toolstack detaches the
//! device (back-end `online` = 0) or when the guest goes away; then it
//! removes both directories. The lab test
//! `linux_netfront_on_xenshare_netback` runs the same library functions
//! inside a real Xen dom0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use xenshare::net::back::RunExit;
use xenshare::net::Mac;
use xenshare::DomId;
use xenshare_devices::net::run::spawn_backend_at;
use xenshare_devices::net::tap::{Tap, TapIo};
use xenshare_devices::net::vif::{
    attach_vif, detach_vif, vif_paths, VifAttach, USERSPACE_VIF_TYPE,
};
use xenshare_linux::LinuxPlatform;

/// Options of `xenshare netback`.
#[derive(Debug, clap::Args)]
pub struct NetbackArgs {
    /// The guest that gets the interface.
    #[arg(long, value_name = "N")]
    pub domid: u16,
    /// The TAP interface on this side (created if it does not exist).
    #[arg(long, value_name = "NAME")]
    pub tap: String,
    /// The guest's MAC address (default 00:16:3e, then the domain id and
    /// device id).
    #[arg(long, value_name = "aa:bb:cc:dd:ee:ff")]
    pub mac: Option<String>,
    /// The device id (`device/vif/<ID>` in the guest).
    #[arg(long, default_value_t = 0, value_name = "ID")]
    pub devid: u32,
    /// How long to wait for the guest's netfront to connect, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Only remove the device's XenStore directories (left behind by a
    /// killed `xenshare netback`), then exit.
    #[arg(long)]
    pub detach: bool,
}

/// How often the main thread looks at signals, the back end, `online` and
/// the guest.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How long a stop request may take before the process leaves without
/// the back-end thread (it is still waiting for the front end to connect).
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Frames queued from the TAP while the guest has no buffers posted.
const TAP_QUEUE: usize = 1024;

/// The default MAC: Xen's OUI, then the domain and device ids.
fn default_mac(domid: u16, devid: u32) -> Mac {
    let [d0, d1] = domid.to_be_bytes();
    Mac([0x00, 0x16, 0x3e, d0, d1, devid as u8])
}

/// Checks the arguments that need no Xen.
fn check_args(a: &NetbackArgs) -> Result<Mac, String> {
    if a.domid == 0 || !DomId(a.domid).is_real() {
        return Err(format!(
            "--domid {}: not a guest domain id (1 to {})",
            a.domid,
            xenshare_abi::xen::DOMID_FIRST_RESERVED - 1
        ));
    }
    if a.tap.is_empty() || a.tap.len() >= 16 || a.tap.contains(['/', ' ', '\0']) {
        return Err(format!(
            "--tap {:?}: not an interface name (1 to 15 bytes, no '/' or space)",
            a.tap
        ));
    }
    match &a.mac {
        None => Ok(default_mac(a.domid, a.devid)),
        Some(m) => {
            let mac = Mac::parse(m.as_bytes())
                .ok_or_else(|| format!("--mac {m:?}: not aa:bb:cc:dd:ee:ff"))?;
            if mac.0[0] & 1 != 0 {
                return Err(format!("--mac {m}: a multicast address"));
            }
            Ok(mac)
        }
    }
}

/// Attaches the vif and serves it.
pub fn run(a: NetbackArgs) -> Result<(), String> {
    let mac = check_args(&a)?;
    let plat = LinuxPlatform::open().map_err(|e| e.to_string())?;
    let mut xs = plat.xenstore().map_err(|e| e.to_string())?;
    let fe = DomId(a.domid);
    let spec = VifAttach {
        frontend: fe,
        backend: plat.domid(),
        devid: a.devid,
        mac,
        backend_type: USERSPACE_VIF_TYPE,
    };
    if a.detach {
        let paths = vif_paths(&spec);
        detach_vif(&mut xs, &paths).map_err(|e| e.to_string())?;
        println!("removed {} and {}", paths.back, paths.front);
        return Ok(());
    }
    let guest = format!("/local/domain/{}", fe.0);
    if xs.try_read(&guest).map_err(|e| e.to_string())?.is_none() {
        return Err(format!("domain {} does not exist", fe.0));
    }
    // Signals are caught from here on, so none ends the process between
    // attaching and detaching.
    let term = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, term.clone())
            .map_err(|e| format!("cannot handle SIGINT/SIGTERM: {e}"))?;
    }
    let tap = Tap::open(&a.tap).map_err(|e| {
        format!(
            "cannot open TAP {:?}: {e} (needs /dev/net/tun and CAP_NET_ADMIN)",
            a.tap
        )
    })?;
    let io = TapIo::new(tap, TAP_QUEUE).map_err(|e| format!("TAP reader: {e}"))?;
    let paths = attach_vif(&mut xs, &spec).map_err(|e| format!("attach: {e}"))?;
    println!(
        "xenshare netback: d{}'s vif {} (MAC {mac}) on TAP {}, back end {}",
        fe.0, a.devid, a.tap, paths.back
    );
    let result = serve(&plat, &a, fe, &paths.back, io, &term);
    let detached = detach_vif(&mut xs, &paths).map_err(|e| format!("detach: {e}"));
    result.and(detached)
}

fn serve(
    plat: &LinuxPlatform,
    a: &NetbackArgs,
    fe: DomId,
    back_dir: &str,
    io: TapIo,
    term: &AtomicBool,
) -> Result<(), String> {
    let back = spawn_backend_at(
        plat.importer().map_err(|e| e.to_string())?,
        Arc::new(plat.evtchn().map_err(|e| e.to_string())?),
        plat.xenstore().map_err(|e| e.to_string())?,
        back_dir.to_string(),
        fe,
        io,
        Duration::from_secs(a.connect_timeout),
    );
    let mut wxs = plat.xenstore().map_err(|e| e.to_string())?;
    let online = format!("{back_dir}/online");
    let guest = format!("/local/domain/{}", fe.0);
    let mut next_check = Instant::now();
    let why = loop {
        if term.load(Ordering::Relaxed) {
            break Some("signal");
        }
        if back.is_finished() {
            break None;
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_millis(500);
            let detached =
                !matches!(wxs.try_read(&online), Ok(Some(v)) if v.first() != Some(&b'0'));
            if matches!(wxs.try_read(&guest), Ok(None)) {
                break Some("the guest is gone");
            }
            if detached {
                break Some("detached by the toolstack");
            }
        }
        std::thread::sleep(WATCH_EVERY);
    };
    if let Some(w) = why {
        println!("xenshare netback: stopping ({w})");
        back.request_stop();
        let t = Instant::now();
        while !back.is_finished() {
            if t.elapsed() > STOP_GRACE {
                // Still in the handshake: the process exit releases its
                // handles; the caller removes the directories.
                println!("xenshare netback: the front end never connected");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let exit = back.join().map_err(|e| format!("back end: {e}"))?;
    let s = exit.stats;
    println!(
        "xenshare netback: {}: guest -> tap {} frames ({} B), tap -> guest {} frames ({} B), \
         errors {}, dropped {}/{}",
        match exit.reason {
            RunExit::Stopped => "stopped",
            RunExit::FrontendClosed => "front end closed",
        },
        s.tx_frames,
        s.tx_bytes,
        s.rx_frames,
        s.rx_bytes,
        s.tx_errors,
        s.tx_dropped,
        s.rx_dropped
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(domid: u16, tap: &str, mac: Option<&str>) -> NetbackArgs {
        NetbackArgs {
            domid,
            tap: tap.into(),
            mac: mac.map(Into::into),
            devid: 0,
            connect_timeout: 60,
            detach: false,
        }
    }

    #[test]
    fn default_mac_is_xen_oui_with_the_ids() {
        assert_eq!(
            check_args(&args(0x0102, "t0", None)),
            Ok(Mac([0x00, 0x16, 0x3e, 0x01, 0x02, 0x00]))
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_the_option_named() {
        for (a, want) in [
            (args(0, "t0", None), "--domid 0"),
            (args(0x7ff0, "t0", None), "--domid 32752"),
            (args(1, "", None), "--tap"),
            (args(1, "a-very-long-name0", None), "--tap"),
            (args(1, "a/b", None), "--tap"),
            (args(1, "t0", Some("00:16:3e:00:00")), "--mac"),
            (args(1, "t0", Some("01:00:5e:00:00:01")), "multicast"),
        ] {
            let e = check_args(&a).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
