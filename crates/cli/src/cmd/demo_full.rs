//! `xenshare demo --full`: a guest with console, disk and network up.
//!
//! Boots the emulated hypervisor with dom0 and a guest, wires the guest's
//! primary PV console (page pre-granted as ref 0, xenstore keys, dom0 back
//! end) and shows everything the guest prints on it with a `d1 console |`
//! prefix. The guest's "kernel" then brings up, on the same guest with dom0
//! as back end, a disk (the block driver's `demo_disk_in`: blkfront →
//! blkback → a sparse image file) and a network interface (the net driver's
//! `demo_net_in`: netfront → netback → an in-memory host stack that pings it
//! and talks to its TCP echo port), reports both on its console, and runs a
//! few scripted shell commands typed by dom0 through the console's input
//! ring. A short summary follows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xenshare::console::ConsoleError;
use xenshare_devices::console::sim::{attach_backend, setup_primary, DemoWorld};
use xenshare_devices::console::{boot_banner, shell, GuestConsole, PrefixedIo, ShellExit};

/// Size of the demo disk image.
const DISK_MIB: u64 = 16;
/// Pings sent to the guest.
const PINGS: u32 = 5;

/// Results the guest reports back to the summary.
#[derive(Default)]
struct Outcome {
    disk: Option<Result<String, String>>,
    net: Option<Result<String, String>>,
}

fn step(n: u32, title: &str) {
    println!("\n── {n}. {title}");
}

/// Runs the full demo.
pub fn run() -> Result<(), String> {
    println!(
        "xenshare demo --full — a guest with console, disk and network on an emulated hypervisor"
    );
    let t0 = Instant::now();

    step(1, "boot");
    // Room for the disk's persistent grants and indirect pages.
    let world = DemoWorld::boot_with(xenshare_devices::blk::guest_config())?;
    println!(
        "     hypervisor up with {} (control domain, runs the back ends) and {} (guest)",
        world.dom0.id(),
        world.guest.id()
    );

    step(
        2,
        "primary console: page pre-granted as ref 0, keys in xenstore, dom0 attaches",
    );
    let mut xs0 = world.client(&world.dom0);
    let front =
        setup_primary(&world.guest, &world.dom0, &mut xs0).map_err(|e| format!("console: {e}"))?;
    let port = front.port();
    let mut back = attach_backend(&world.dom0, world.guest.id(), &mut xs0)
        .map_err(|e| format!("console: {e}"))?;
    let home = format!("/local/domain/{}/console", world.guest.id().0);
    let rr = xs0
        .read(&format!("{home}/ring-ref"))
        .map_err(|e| e.to_string())?;
    println!(
        "     {home}: ring-ref {} (frame), port {}, type xenconsoled; dom0 mapped grant ref 0",
        String::from_utf8_lossy(&rr),
        port.0
    );

    step(
        3,
        "the guest boots, printing on its PV console (shown with a prefix)",
    );
    let host = format!("guest{}", world.guest.id().0);
    let prefix = format!("     {} console | ", world.guest.id());
    let mut io = PrefixedIo::new(std::io::stdout(), &prefix).with_script(
        &format!("{host}$ "),
        &["echo console, disk and network are up", "uptime", "exit"],
    );
    let outcome = Mutex::new(Outcome::default());
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let booted = Instant::now();
    let (back_result, shell) = std::thread::scope(|s| {
        let guest = s.spawn(|| {
            let mut con = GuestConsole::new(front, Duration::from_millis(100));
            let r = guest_kernel(&mut con, &world, &host, booted, &stop, &outcome);
            done.store(true, Ordering::Release);
            r
        });
        let r = back.run(&mut io, Duration::from_millis(10), || {
            done.load(Ordering::Acquire)
        });
        if r.is_ok() {
            // The guest's last words are still in the ring.
            while back.pump(&mut io).map(|p| p.any()).unwrap_or(false) {}
        }
        stop.store(true, Ordering::Release);
        (r, guest.join())
    });
    back_result.map_err(|e| format!("console back end: {e}"))?;
    let shell = shell
        .map_err(|_| "the guest kernel panicked".to_string())?
        .map_err(|e| format!("guest console: {e}"))?;

    step(4, "summary");
    let o = outcome.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "     console: {} hvc0, {} bytes out / {} bytes in through the 2048 / 1024-byte rings; shell {}",
        world.guest.id(),
        io.bytes_out(),
        io.bytes_in(),
        match shell {
            ShellExit::Exit => "exited cleanly",
            ShellExit::Stopped => "stopped",
        }
    );
    let mut failed = Vec::new();
    for (name, r) in [("disk", &o.disk), ("network", &o.net)] {
        match r {
            Some(Ok(line)) => println!("     {line}"),
            Some(Err(e)) => {
                println!("     {name}: FAILED: {e}");
                failed.push(name);
            }
            None => {
                println!("     {name}: not run");
                failed.push(name);
            }
        }
    }
    println!("     total {:.2} s", t0.elapsed().as_secs_f64());
    drop(back);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("full demo: {} failed", failed.join(" and ")))
    }
}

/// The guest's "kernel": boot log, device bring-up, then the shell.
fn guest_kernel<P, E>(
    con: &mut GuestConsole<P, E>,
    world: &DemoWorld,
    host: &str,
    booted: Instant,
    stop: &AtomicBool,
    outcome: &Mutex<Outcome>,
) -> Result<ShellExit, ConsoleError>
where
    P: xenshare::console::ConsolePage,
    E: xenshare::platform::EventChannels,
{
    let port = con.front().port();
    boot_banner(con, host)?;
    con.print(&format!(
        "hvc0: PV console on the xencons page (grant ref 0), event channel {port}\n"
    ))?;
    con.print(&format!(
        "xvda: bringing up blkfront ({DISK_MIB} MiB image)...\n"
    ))?;
    // The disk and the network come up on this same guest, backed by dom0.
    let disk = xenshare_devices::blk::demo_disk_in(world, DISK_MIB).map_err(|e| e.to_string());
    con.print(&match &disk {
        Ok(line) => format!("xvda: up. {line}\n"),
        Err(e) => format!("xvda: FAILED: {e}\n"),
    })?;
    con.print(&format!(
        "eth0: bringing up netfront, {PINGS} pings and a TCP echo from the host...\n"
    ))?;
    let net = xenshare_devices::net::demo::demo_net_in(world, PINGS);
    con.print(&match &net {
        Ok(line) => format!("eth0: up. {line}\n"),
        Err(e) => format!("eth0: FAILED: {e}\n"),
    })?;
    {
        let mut o = outcome.lock().unwrap_or_else(|e| e.into_inner());
        o.disk = Some(disk);
        o.net = Some(net);
    }
    shell(con, host, booted, stop)
}
