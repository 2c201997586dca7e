//! `xenshare console`: a terminal on a guest's PV console, the way
//! `xl console` works.
//!
//! Domains currently run as threads of one process (the multi-process host
//! comes later), so the guest to attach to is one this command boots:
//!
//! * `xenshare console --demo-guest` boots an emulated guest whose kernel
//!   prints a boot banner and runs a tiny shell (`help`, `echo`, `uptime`,
//!   `exit`) over its primary PV console; dom0's console back end is attached
//!   to this terminal in raw mode. Ctrl-] detaches (and stops the guest);
//!   `exit` in the guest ends the session.
//! * `--pty` serves the console on a new pseudo-terminal instead and prints
//!   its path: attach with `screen /dev/pts/N`. The session ends when the
//!   guest's shell exits.
//! * `xenshare console DOMID` is reserved for attaching to a domain of a
//!   running host; until that exists it says so.
//!
//! All the logic is in `xenshare_devices::console` (back-end terminals, the
//! guest's shell, the emulator wiring); this is argument handling and text.

use xenshare_devices::console::sim::{run_demo_guest, DemoWorld, SessionEnd};
use xenshare_devices::console::{PtyIo, StdioIo};

/// Arguments of `xenshare console`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConsoleArgs {
    /// Domain whose console to attach to (needs a running multi-process
    /// host, which does not exist yet: use --demo-guest).
    pub domid: Option<u16>,
    /// Boot an emulated demo guest (a tiny shell: help, echo, uptime, exit)
    /// and attach to its console.
    #[arg(long)]
    pub demo_guest: bool,
    /// Serve the console on a new pseudo-terminal and print its path,
    /// instead of using this terminal.
    #[arg(long)]
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
    if let Some(d) = a.domid {
        return Err(format!(
            "cannot attach to domain {d}: domains run inside one xenshare process for now \
             (no multi-process host yet); use `xenshare console --demo-guest` to boot a guest \
             and attach to its console"
        ));
    }
    if !a.demo_guest {
        return Err("nothing to attach to: use `xenshare console --demo-guest [--pty]`".into());
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
    fn domid_without_a_host_is_a_clear_error() {
        let e = run(ConsoleArgs {
            domid: Some(3),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("--demo-guest"), "{e}");
        assert!(run(ConsoleArgs::default()).is_err());
    }
}
