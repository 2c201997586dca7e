//! The event loop polls only right after work: with a poll budget set
//! (`Config::poll_budget`), an idle daemon — a connected client that sends
//! nothing — still sleeps, its loop thread taking next to no CPU time. (Its
//! own test binary: it reads the CPU time of this process's loop thread.)

mod common;

use std::time::Duration;

use xenshare::store::{Client, UnixTransport};
use xenshare_xenstored::Config;

/// CPU time (user + system, in clock ticks) of this process's one
/// xenstored loop thread.
fn loop_cpu_ticks() -> u64 {
    let mut found = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim() != "xenstored-loop" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised name: state is field 3, utime 14,
        // stime 15 (proc(5)).
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        found.push(f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap());
    }
    assert_eq!(found.len(), 1, "exactly one loop thread");
    found[0]
}

/// Clock ticks per second of the times in `/proc/*/stat` (`USER_HZ`, 100
/// on every Linux architecture this runs on).
const TICKS_PER_SEC: u64 = 100;

#[test]
fn a_loop_with_a_poll_budget_sleeps_when_its_clients_are_idle() {
    // A budget far above the default, so that a loop that kept polling
    // (or restarted its budget without work) would burn the CPU.
    let budget = Duration::from_millis(20);
    let h = common::daemon_with(
        "idle",
        Config {
            poll_budget: budget,
            ..Config::default()
        },
    );
    let mut c = Client::new(UnixTransport::connect(h.path()).unwrap());
    // Work first: every request starts a polling window.
    for i in 0..500 {
        let key = format!("/idle/k{}", i % 16);
        c.write(&key, format!("v{i}").as_bytes()).unwrap();
        assert_eq!(c.read(&key).unwrap(), format!("v{i}").as_bytes());
    }
    // The last window ends within the budget; measure well after it, with
    // the client still connected and silent.
    std::thread::sleep(budget * 5);
    let window = Duration::from_secs(1);
    let before = loop_cpu_ticks();
    std::thread::sleep(window);
    let used = loop_cpu_ticks() - before;
    // A loop that polled all through the window would take the better part
    // of a CPU second even on a loaded two-core machine; a sleeping one
    // takes nothing (a few ticks allow for sampling).
    let allowed = TICKS_PER_SEC * 5 / 100;
    assert!(
        used <= allowed,
        "the idle loop used {used} ticks of CPU in {window:?} (at most {allowed})"
    );
    // And it still answers at once.
    assert_eq!(c.read("/idle/k3").unwrap(), b"v499");
}
