//! The primary console end to end over the emulator: every byte value both
//! ways, ring wrap-around many times over with odd sizes, a slow terminal,
//! a back end restart, and a real pty.

use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use xenshare::console::ConsoleError;
use xenshare::error::DeviceError;
use xenshare_abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE};
use xenshare_devices::console::{GuestConsole, Line, MemoryTerminal, PtyIo};
use xenshare_testkit::console::{pattern, world, BackThread, SOON};

/// Reads exactly `n` bytes of input on the guest side.
fn guest_read_exact(front: &mut xenshare_testkit::console::Front<'_>, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    let mut buf = [0u8; 333];
    while got.len() < n {
        let want = buf.len().min(n - got.len());
        let k = front.read_timeout(&mut buf[..want], Some(SOON)).unwrap();
        got.extend_from_slice(&buf[..k]);
    }
    got
}

#[test]
fn every_byte_value_both_ways() {
    let w = world();
    let mut front = w.primary_front();
    let term = MemoryTerminal::new();
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());

    // Output: 0..=255 four times, in one call each.
    let all: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    front.write_all(&all, Some(SOON)).unwrap();
    assert!(term.wait_output(SOON, |o| o.len() >= all.len()));
    assert_eq!(term.take_output(), all);

    // Input: the same bytes typed at the terminal arrive unchanged.
    term.type_input(&all);
    assert_eq!(guest_read_exact(&mut front, all.len()), all);

    let (_back, r) = back.stop();
    r.unwrap();
    assert!(!front.is_broken());
}

#[test]
fn wrap_around_many_times_with_odd_sizes() {
    let w = world();
    let mut front = w.primary_front();
    let term = MemoryTerminal::new();
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());

    // Output: 40 rings' worth in chunk sizes that never line up with 2048.
    let total = XENCONS_OUT_SIZE * 40 + 13;
    let data = pattern(0, total);
    let sizes = [1usize, 7, 333, 2047, 2048, 2049, 4095, 5, 1000];
    let mut off = 0;
    for s in sizes.iter().cycle() {
        if off == total {
            break;
        }
        let end = (off + s).min(total);
        front.write_all(&data[off..end], Some(SOON)).unwrap();
        off = end;
    }
    assert!(term.wait_output(SOON, |o| o.len() >= total));
    let out = term.take_output();
    assert_eq!(out.len(), total);
    assert!(out == data, "output corrupted across wrap-around");

    // Input: 40 rings' worth of `in`, typed in odd pieces while the guest
    // reads in odd pieces.
    let total = XENCONS_IN_SIZE * 40 + 3;
    let data = pattern(5, total);
    std::thread::scope(|s| {
        let t = &term;
        let d = &data;
        s.spawn(move || {
            let mut off = 0;
            for k in [1usize, 999, 1023, 1024, 1025, 17].iter().cycle() {
                if off == d.len() {
                    break;
                }
                let end = (off + k).min(d.len());
                t.type_input(&d[off..end]);
                off = end;
                // Keep the typed-ahead queue bounded, like a human.
                while t.pending_input() > 4096 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let got = guest_read_exact(&mut front, total);
        assert!(got == data, "input corrupted across wrap-around");
    });

    let (_back, r) = back.stop();
    r.unwrap();
}

#[test]
fn slow_terminal_gets_everything_in_order() {
    let w = world();
    let mut front = w.primary_front();
    let term = MemoryTerminal::new();
    term.set_accept_limit(Some(3));
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());
    let data = pattern(9, XENCONS_OUT_SIZE * 3 + 1);
    front.write_all(&data, Some(SOON)).unwrap();
    assert!(term.wait_output(SOON, |o| o.len() >= data.len()));
    assert_eq!(term.take_output(), data);
    drop(back);
}

#[test]
fn backend_restart_delivers_buffered_output() {
    let w = world();
    let mut front = w.primary_front();

    // First back end: a line goes through, then it stops.
    let term1 = MemoryTerminal::new();
    let back1 = BackThread::spawn(w.primary_back().unwrap(), term1.io());
    front.write_all(b"before restart\r\n", Some(SOON)).unwrap();
    assert!(term1.wait_output(SOON, |o| o == b"before restart\r\n"));
    let (b1, r) = back1.stop();
    r.unwrap();
    drop(b1); // unmaps ref 0, closes its port
    assert_eq!(w.dom0.mapped_count(), 0);

    // No back end: the guest writes 3000 bytes without waiting; only a
    // ring's worth fits, the rest is refused (not lost silently, not a hang).
    let offline = pattern(100, 3000);
    let mut written = 0;
    loop {
        let n = front.write(&offline[written..]).unwrap();
        if n == 0 {
            break;
        }
        written += n;
    }
    assert_eq!(written, XENCONS_OUT_SIZE);
    assert_eq!(front.output_pending().unwrap(), XENCONS_OUT_SIZE);

    // Second back end on the same page: gets exactly the buffered ring,
    // then later output and input flow.
    let term2 = MemoryTerminal::new();
    let back2 = BackThread::spawn(w.primary_back().unwrap(), term2.io());
    assert!(term2.wait_output(SOON, |o| o.len() >= XENCONS_OUT_SIZE));
    front.write_all(b"after restart", Some(SOON)).unwrap();
    let mut expect = offline[..XENCONS_OUT_SIZE].to_vec();
    expect.extend_from_slice(b"after restart");
    assert!(term2.wait_output(SOON, |o| o.len() >= expect.len()));
    assert_eq!(term2.take_output(), expect);
    assert!(
        term1.output() == b"before restart\r\n",
        "old terminal got new output"
    );

    term2.type_input(b"hello again");
    assert_eq!(guest_read_exact(&mut front, 11), b"hello again");
    let (_b2, r) = back2.stop();
    r.unwrap();
}

#[test]
fn backend_attaching_first_then_guest_output() {
    // The back end may attach before the guest writes anything; events
    // wake it, and nothing is lost.
    let w = world();
    let mut front = w.primary_front();
    let term = MemoryTerminal::new();
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());
    std::thread::sleep(Duration::from_millis(20));
    for i in 0..50 {
        front
            .write_all(format!("line {i}\r\n").as_bytes(), Some(SOON))
            .unwrap();
    }
    let expect: String = (0..50).map(|i| format!("line {i}\r\n")).collect();
    assert!(term.wait_output(SOON, |o| o.len() >= expect.len()));
    assert_eq!(String::from_utf8(term.take_output()).unwrap(), expect);
    drop(back);
}

#[test]
fn guest_console_line_editing() {
    let w = world();
    let front = w.primary_front();
    let term = MemoryTerminal::new();
    let _back = BackThread::spawn(w.primary_back().unwrap(), term.io());
    let mut con = GuestConsole::new(front, Duration::from_millis(20));
    let stop = AtomicBool::new(false);
    // Typing with a correction, CRLF, then a second line with LF only.
    term.type_input(b"ecx\x7fho hi\r\nuptime\n");
    assert_eq!(con.read_line(&stop).unwrap(), Line::Text("echo hi".into()));
    assert_eq!(con.read_line(&stop).unwrap(), Line::Text("uptime".into()));
    term.type_input(b"\x04");
    assert_eq!(con.read_line(&stop).unwrap(), Line::Eof);
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(con.read_line(&stop).unwrap(), Line::Stopped);
    // The guest echoed what it kept, with the erase sequence.
    assert!(term.wait_output(SOON, |o| o.ends_with(b"uptime\r\n")));
    assert_eq!(term.output(), b"ecx\x08 \x08ho hi\r\nuptime\r\n");
    // std::io::Write goes through the ring unchanged.
    con.write_all(b"raw\n").unwrap();
    assert!(term.wait_output(SOON, |o| o.ends_with(b"raw\n")));
    // std::io::Read times out cleanly when there is no input.
    let mut b = [0u8; 4];
    let e = con.read(&mut b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn pty_backend_round_trip() {
    let w = world();
    let mut front = w.primary_front();
    let pty = PtyIo::open().expect("open a pty");
    let path = pty.path().to_path_buf();
    assert!(path.starts_with("/dev/pts/"), "pty path {path:?}");
    let back = BackThread::spawn(w.primary_back().unwrap(), pty);

    // A user opens the slave, as `screen /dev/pts/N` would.
    let mut user = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let all: Vec<u8> = (0..=255u8).collect();
    front.write_all(&all, Some(SOON)).unwrap();
    let mut got = vec![0u8; all.len()];
    let deadline = Instant::now() + SOON;
    let mut n = 0;
    while n < got.len() {
        assert!(Instant::now() < deadline);
        n += user.read(&mut got[n..]).unwrap();
    }
    assert_eq!(got, all, "raw pty must pass every byte unchanged");

    user.write_all(&all).unwrap();
    assert_eq!(guest_read_exact(&mut front, all.len()), all);
    let (_b, r) = back.stop();
    r.unwrap();
}

#[test]
fn guest_write_times_out_without_a_backend() {
    let w = world();
    let mut front = w.primary_front();
    let t0 = Instant::now();
    let r = front.write_all(
        &pattern(0, XENCONS_OUT_SIZE + 10),
        Some(Duration::from_millis(50)),
    );
    assert_eq!(r, Err(ConsoleError::Core(DeviceError::Timeout)));
    assert!(t0.elapsed() < SOON);
    // Not broken: a back end attaching later drains it.
    assert!(!front.is_broken());
}
