//! `xenshare console`: a terminal on a guest's PV console, the way
//! `xl console` works.
//!
//! In one process:
//!
//! * `xenshare console --demo-guest` boots an emulated guest whose kernel
//!   prints a boot banner and runs a tiny shell (`help`, `echo`, `uptime`,
//!   `exit`) over its primary PV console; dom0's console back end is attached
//!   to this terminal in raw mode. Ctrl-] detaches (and stops the guest);
//!   `exit` in the guest ends the session. Fed from a pipe, it prints the
//!   boot text and the answers, and ends once the guest is quiet after the
//!   end of input.
//! * `--pty` serves the console on a new pseudo-terminal instead and prints
//!   its path: attach with `screen /dev/pts/N`. The session ends when the
//!   guest's shell exits.
//!
//! Across processes, on a multi-process host (`xenshare host`):
//!
//! * `xenshare console --demo-guest --host PATH` runs the demo guest as a
//!   domain of the host (this process joins it) and serves its console to
//!   whoever attaches, until its shell exits.
//! * `xenshare console DOMID --host PATH` attaches this terminal to that
//!   domain's console; Ctrl-] detaches and leaves the guest running, and
//!   the same command attaches again. It acts as the toolstack through
//!   dom0's xenstored socket (only the host's user reaches it) and as the
//!   back end from a console domain of its own, joined for the attach; see
//!   `xenshare_devices::console::session` for the design.
//!
//! All the logic is in `xenshare_devices::console` (back-end terminals, the
//! guest's shell, the emulator wiring, attach and serve); this is argument
//! handling and text.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use xenshare::store::client::{Client, UnixTransport};
use xenshare::DomId;
use xenshare_devices::console::session::{self, AttachEnd};
use xenshare_devices::console::sim::{run_demo_guest, DemoWorld, SessionEnd};
use xenshare_devices::console::{shell, PtyIo, StdioIo};
use xenshare_host::RemoteDomain;

/// Arguments of `xenshare console`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConsoleArgs {
    /// Domain whose console to attach to, on the host given by --host (or
    /// $XENSHARE_HOST). With --demo-guest --host: the id the demo guest
    /// joins as (choosing one needs the host's privilege).
    pub domid: Option<u16>,
    /// Boot an emulated demo guest (a tiny shell: help, echo, uptime, exit):
    /// in this process and attached to this terminal, or with --host as a
    /// domain of that host, serving its console to `xenshare console DOMID`.
    #[arg(long)]
    pub demo_guest: bool,
    /// The multi-process host's socket (`xenshare host --socket PATH`).
    #[arg(long, value_name = "PATH")]
    pub host: Option<PathBuf>,
    /// Serve the console on a new pseudo-terminal and print its path,
    /// instead of using this terminal.
    #[arg(long, conflicts_with = "host")]
    pub pty: bool,
    /// Do not put this terminal in raw mode (input is then sent a line at a
    /// time).
    #[arg(long, conflicts_with = "pty")]
    pub no_raw: bool,
}

/// Guest RAM for the demo guest, in pages.
const DEMO_PAGES: u64 = 256;

/// Runs `xenshare console`.
pub fn run(a: ConsoleArgs) -> Result<(), String> {
    run_with(a, &mut |path| {
        println!("console of the demo guest is on {path}");
        println!("attach with:  screen {path}   (type 'exit' in the guest to end the session)");
    })
}

/// [`run`], telling `on_pty` the pty path in `--pty` mode.
pub fn run_with(a: ConsoleArgs, on_pty: &mut dyn FnMut(&str)) -> Result<(), String> {
    if a.demo_guest && a.host.is_some() {
        return serve_demo_guest(&a);
    }
    if let Some(d) = a.domid {
        if a.demo_guest {
            return Err(
                "a domain id with --demo-guest needs --host PATH (the guest joins that host)"
                    .into(),
            );
        }
        return attach(d, &a);
    }
    if !a.demo_guest {
        return Err(
            "nothing to attach to: use `xenshare console DOMID --host PATH` for a domain of a \
             running `xenshare host`, or `xenshare console --demo-guest [--pty]` to boot a guest \
             here"
                .into(),
        );
    }
    let world = DemoWorld::boot(DEMO_PAGES)?;
    let host = format!("guest{}", world.guest.id().0);
    let end = if a.pty {
        let mut pty = PtyIo::open().map_err(|e| format!("cannot open a pty: {e}"))?;
        on_pty(&pty.path().display().to_string());
        let end = run_demo_guest(&world, &mut pty, &host).map_err(|e| format!("console: {e}"))?;
        // Let an attached user see the guest's last words before the pty goes.
        pty.drain(std::time::Duration::from_secs(2));
        end
    } else {
        eprintln!(
            "Connected to the console of {} (dom0 runs the back end). Escape character is '^]'.",
            world.guest.id()
        );
        let mut io =
            StdioIo::new(!a.no_raw).map_err(|e| format!("cannot set up this terminal: {e}"))?;
        let r = run_demo_guest(&world, &mut io, &host);
        let input_ended = io.input_ended();
        drop(io); // restores the terminal before we print
        match r.map_err(|e| format!("console: {e}"))? {
            SessionEnd::TerminalClosed if input_ended => {
                eprintln!("\n[end of input; guest {} stopped]", world.guest.id());
                return Ok(());
            }
            end => end,
        }
    };
    match end {
        SessionEnd::GuestExited => eprintln!("\n[guest {} exited]", world.guest.id()),
        SessionEnd::Detached => eprintln!("\n[detached; guest {} stopped]", world.guest.id()),
        SessionEnd::TerminalClosed => {
            eprintln!("\n[terminal closed; guest {} stopped]", world.guest.id())
        }
    }
    Ok(())
}

fn no_host(host: &std::path::Path, e: xenshare_host::ClientError) -> String {
    match e {
        xenshare_host::ClientError::NoHost { .. } => format!(
            "{e} (start it with `xenshare host --socket {}`)",
            host.display()
        ),
        e => format!("cannot join the host at {}: {e}", host.display()),
    }
}

fn xs_client(path: &std::path::Path, whose: &str) -> Result<Client<UnixTransport>, String> {
    UnixTransport::connect(path)
        .map(Client::new)
        .map_err(|e| format!("cannot reach {whose} xenstored at {}: {e}", path.display()))
}

/// `xenshare console DOMID --host PATH`: attach this terminal.
fn attach(domid: u16, a: &ConsoleArgs) -> Result<(), String> {
    let guest = DomId(domid);
    let host = super::host::host_path(a.host.clone())?;
    // The toolstack's part needs dom0's xenstored: only the host's user
    // reaches that socket.
    let xs0_path = xenshare_host::HostConfig::new(&host).xenstore_path();
    let mut xs0 = xs_client(&xs0_path, "dom0's").map_err(|e| {
        format!(
            "{e}: is the host running? (start it with `xenshare host --socket {}`; \
             attaching needs the host's user)",
            host.display()
        )
    })?;
    // The back end runs in a console domain of its own.
    let me = RemoteDomain::join(&host, None).map_err(|e| no_host(&host, e))?;
    let mut xs = xs_client(me.xenstore_path(), "the console domain's")?;
    let evt = me.evtchn().map_err(|e| e.to_string())?;
    eprintln!(
        "Connected to the console of domain {} (back end in console domain {}). \
         Escape character is '^]'.",
        guest.0,
        me.id().0
    );
    let mut io =
        StdioIo::new(!a.no_raw).map_err(|e| format!("cannot set up this terminal: {e}"))?;
    let r = session::attach(me.importer(), &evt, &mut xs0, &mut xs, guest, &mut io);
    let input_ended = io.input_ended();
    drop(io); // restores the terminal before we print
    match r.map_err(|e| e.to_string())? {
        AttachEnd::Detached => eprintln!("\n[detached from domain {}]", guest.0),
        AttachEnd::GuestClosed => eprintln!("\n[domain {} closed its console]", guest.0),
        AttachEnd::TerminalClosed if input_ended => {
            eprintln!("\n[end of input; detached from domain {}]", guest.0)
        }
        AttachEnd::TerminalClosed => {
            eprintln!("\n[terminal closed; detached from domain {}]", guest.0)
        }
    }
    Ok(())
}

/// `xenshare console --demo-guest --host PATH`: the demo guest as a domain
/// of the host, serving its console until its shell exits.
fn serve_demo_guest(a: &ConsoleArgs) -> Result<(), String> {
    let host = super::host::host_path(a.host.clone())?;
    let dom = RemoteDomain::join(&host, a.domid.map(DomId)).map_err(|e| no_host(&host, e))?;
    let id = dom.id();
    let mut xs = xs_client(dom.xenstore_path(), "this domain's")?;
    let mut xs_watch = xs_client(dom.xenstore_path(), "this domain's")?;
    let evt = dom.evtchn().map_err(|e| e.to_string())?;
    let hostname = format!("guest{}", id.0);
    eprintln!(
        "demo guest running as domain {id} of {host}; attach with:  xenshare console {id} --host {host}",
        id = id.0,
        host = host.display()
    );
    let booted = Instant::now();
    session::serve(
        dom.exporter(),
        &evt,
        &mut xs,
        &mut xs_watch,
        |con, stop: &AtomicBool, n| {
            if n == 1 {
                con.print(&format!(
                    "xenshare demo kernel booting on {hostname} (domain {} of the host)\n\
                     [    0.000] console: PV console device console/0, connected over XenBus\n",
                    id.0
                ))?;
            } else {
                con.print(&format!("[console attached again: attach {n}]\n"))?;
            }
            shell(con, &hostname, booted, stop)
        },
        |e| eprintln!("xenshare console: domain {}: {e}", id.0),
    )
    .map_err(|e| format!("console of domain {}: {e}", id.0))?;
    eprintln!("[guest {} exited]", id.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn read_until(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(seen).contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.extend(chunk),
                Err(_) => panic!(
                    "no {want:?} on the console; got {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    }

    #[test]
    fn demo_guest_on_a_pty() {
        let (path_tx, path_rx) = mpsc::channel();
        let session = std::thread::spawn(move || {
            let args = ConsoleArgs {
                demo_guest: true,
                pty: true,
                ..Default::default()
            };
            run_with(args, &mut |p| path_tx.send(p.to_string()).unwrap())
        });
        let path = path_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut reader = user.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok(n) = reader.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        read_until(&rx, &mut seen, "booting");
        read_until(&rx, &mut seen, "$ ");
        user.write_all(b"echo hello from the host\r").unwrap();
        read_until(&rx, &mut seen, "hello from the host\r\nguest");
        user.write_all(b"uptime\r").unwrap();
        read_until(&rx, &mut seen, "up ");
        user.write_all(b"frobnicate\r").unwrap();
        read_until(&rx, &mut seen, "frobnicate: command not found");
        user.write_all(b"exit\r").unwrap();
        read_until(&rx, &mut seen, "bye");
        session.join().unwrap().unwrap();
    }

    #[test]
    fn domid_without_a_running_host_is_a_clear_error() {
        let e = run(ConsoleArgs {
            domid: Some(3),
            host: Some("/nonexistent/xenshare-host".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("/nonexistent/xenshare-host"), "{e}");
        assert!(!e.contains("does not exist yet"), "{e}");
        let e = run(ConsoleArgs::default()).unwrap_err();
        assert!(e.contains("--host") && e.contains("--demo-guest"), "{e}");
    }
}
