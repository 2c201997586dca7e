//! Malicious console peers. Each case ends in a typed error and a broken
//! console — no panic, no out-of-bounds access, no hang.
//!
//! Malicious back ends (the guest's front end must cope): out_cons moved past
//! out_prod, out_cons moved back more than a ring, in_prod beyond the ring,
//! in_prod at the far end of the index space, event flood; plus (in
//! console_secondary.rs) a back end that keeps the page mapped after close.
//!
//! Malicious guests (the back end must cope): out_prod beyond the ring,
//! in_cons moved past in_prod, a page corrupt before the back end attaches,
//! event flood; plus (in console_secondary.rs) garbage XenStore keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use xenshare::console::ring::{IN, OUT};
use xenshare::console::{ConsoleError, SPURIOUS_EVENT_LIMIT};
use xenshare::error::DeviceError;
use xenshare::mem::SharedMem;
use xenshare::GrantRef;
use xenshare_devices::console::MemoryTerminal;
use xenshare_testkit::adversary::{self, Flooder, Kept, RawIndices};
use xenshare_testkit::console::{world, BackThread, World, SOON};

/// Stops a flooding thread even if the test fails (so it cannot hang).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The evil back end's own mapping of the guest's console page (ref 0).
fn evil_map(w: &World) -> Kept {
    Kept::rw(&w.dom0, w.guest.id(), GrantRef(0))
}

fn set(mem: SharedMem<'_>, off: usize, v: u32) {
    RawIndices::new(mem).set(off, v);
}

fn get(mem: SharedMem<'_>, off: usize) -> u32 {
    RawIndices::new(mem).get(off)
}

// ---------------------------------------------------------------- back ends

#[test]
fn backend_moves_out_cons_past_out_prod() {
    let w = world();
    let mut front = w.primary_front();
    let m = evil_map(&w);
    front.write(b"hello").unwrap();
    set(m.mem(), OUT.cons, 6); // consumed a byte that was never produced
    assert_eq!(front.write(b"x"), Err(ConsoleError::Corrupt("out")));
    assert!(front.is_broken());
    assert_eq!(front.write(b"x"), Err(ConsoleError::Broken));
    assert_eq!(front.read(&mut [0; 4]), Err(ConsoleError::Broken));
    // Nothing past "hello" was written into the ring.
    assert_eq!(get(m.mem(), OUT.prod), 5);
}

#[test]
fn backend_moves_out_cons_back_more_than_a_ring() {
    let w = world();
    let mut front = w.primary_front();
    let m = evil_map(&w);
    front.write(&[7; 100]).unwrap();
    set(m.mem(), OUT.cons, 100u32.wrapping_sub(OUT.size as u32 + 1));
    assert_eq!(
        front.write_all(b"x", Some(SOON)),
        Err(ConsoleError::Corrupt("out"))
    );
    assert!(front.is_broken());
}

#[test]
fn backend_sets_in_prod_beyond_the_ring() {
    let w = world();
    let mut front = w.primary_front();
    let m = evil_map(&w);
    set(m.mem(), IN.prod, IN.size as u32 + 1);
    let mut buf = vec![0u8; 4096];
    assert_eq!(front.read(&mut buf), Err(ConsoleError::Corrupt("in")));
    // in_cons was never advanced past what the ring can hold.
    assert_eq!(get(m.mem(), IN.cons), 0);
    assert_eq!(
        front.read_timeout(&mut buf, Some(SOON)),
        Err(ConsoleError::Broken)
    );
}

#[test]
fn backend_sets_in_prod_to_the_top_of_the_index_space() {
    let w = world();
    let mut front = w.primary_front();
    let m = evil_map(&w);
    set(m.mem(), IN.prod, u32::MAX);
    assert_eq!(front.input_ready(), Err(ConsoleError::Corrupt("in")));
    assert!(front.is_broken());
}

#[test]
fn backend_flooding_events_breaks_the_front_end() {
    let w = world();
    let mut front = w.primary_front();
    let flood = Flooder::bind(&w.dom0, w.guest.id(), front.port());
    {
        let t0 = Instant::now();
        let mut buf = [0u8; 16];
        // Blocks for input; the flood must not keep it spinning forever.
        let r = front.read_timeout(&mut buf, Some(SOON));
        drop(flood);
        match r {
            Err(ConsoleError::EventFlood(n)) => assert!(n > SPURIOUS_EVENT_LIMIT),
            other => panic!("expected an event flood error, got {other:?}"),
        }
        assert!(t0.elapsed() < SOON);
        assert!(front.is_broken());
    }
}

/// A back end ringing the doorbell every 2 ms without moving a byte must
/// not stretch a timed read or write: the timeout is one overall deadline
/// (for `write_all`: no room for that long), not restarted on every
/// wake-up. Each call returns `TimedOut` — not before 300 ms and well
/// before the storm ends — and the storm is slow enough not to count as a
/// flood.
#[test]
fn backend_doorbell_storm_does_not_extend_a_timeout() {
    const TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);
    const BOUND: std::time::Duration = std::time::Duration::from_secs(3);
    let w = world();
    let mut front = w.primary_front();
    let chan = adversary::bind(&w.dom0, w.guest.id(), front.port());
    let storm = Flooder::paced(chan, Some(std::time::Duration::from_millis(2)));
    {
        let t = Instant::now();
        let r = front.read_timeout(&mut [0u8; 16], Some(TIMEOUT));
        let read_took = t.elapsed();
        assert!(
            matches!(r, Err(ConsoleError::Core(DeviceError::Timeout))),
            "{r:?}"
        );
        // No back end drains the output ring: write more than it holds.
        let t = Instant::now();
        let r = front.write_all(&vec![b'x'; 2 * OUT.size], Some(TIMEOUT));
        let write_took = t.elapsed();
        assert!(
            matches!(r, Err(ConsoleError::Core(DeviceError::Timeout))),
            "{r:?}"
        );
        assert!(storm.is_running(), "the storm ended first");
        assert!(storm.stop().0 > 20);
        for took in [read_took, write_took] {
            assert!(took >= TIMEOUT, "returned early: {took:?}");
            assert!(took < BOUND, "took {took:?}");
        }
        assert!(!front.is_broken());
    }
}

// ----------------------------------------------------------------- guests

#[test]
fn guest_sets_out_prod_beyond_the_ring() {
    let w = world();
    let front = w.primary_front();
    let page = w.guest.console_page().unwrap();
    let term = MemoryTerminal::new();
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());
    // The guest claims 4096 bytes of output in a 2048-byte ring, and kicks.
    set(page, OUT.prod, 4096);
    front.notify().unwrap();
    let (b, r) = back.join_within(SOON);
    assert_eq!(r, Err(ConsoleError::Corrupt("out")));
    assert!(b.is_broken());
    // Nothing reached the terminal, and out_cons never moved.
    assert!(term.output().is_empty());
    assert_eq!(get(page, OUT.cons), 0);
    drop(front);
}

#[test]
fn guest_moves_in_cons_past_in_prod() {
    let w = world();
    let _front = w.primary_front();
    let page = w.guest.console_page().unwrap();
    let term = MemoryTerminal::new();
    let mut back = w.primary_back().unwrap();
    term.type_input(b"abc");
    let mut io = term.io();
    assert_eq!(back.pump(&mut io).unwrap().input, 3);
    set(page, IN.cons, 50); // consumed input that was never produced
    term.type_input(b"more");
    assert_eq!(back.pump(&mut io), Err(ConsoleError::Corrupt("in")));
    assert!(back.is_broken());
    assert_eq!(back.pump(&mut io), Err(ConsoleError::Broken));
    assert_eq!(
        get(page, IN.prod),
        3,
        "no input written after the violation"
    );
}

#[test]
fn page_corrupt_before_the_backend_attaches_is_refused() {
    let w = world();
    let _front = w.primary_front();
    let page = w.guest.console_page().unwrap();
    set(page, OUT.prod, 0x8000_0000);
    assert_eq!(w.primary_back().err(), Some(ConsoleError::Corrupt("out")));
    set(page, OUT.prod, 0);
    set(page, IN.cons, 0xffff_0000);
    assert_eq!(w.primary_back().err(), Some(ConsoleError::Corrupt("in")));
    // The failed attaches released their mappings.
    assert_eq!(w.dom0.mapped_count(), 0);
}

#[test]
fn guest_flooding_events_breaks_the_backend() {
    let w = world();
    let front = w.primary_front();
    let term = MemoryTerminal::new();
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let st = stop.clone();
        let f = &front;
        s.spawn(move || {
            // Kick the back end in a tight loop, moving nothing.
            while !st.load(Ordering::Relaxed) {
                let _ = f.notify();
                std::thread::yield_now();
            }
        });
        let _stop_flood = StopOnDrop(&stop);
        let (b, r) = back.join_within(SOON);
        match r {
            Err(ConsoleError::EventFlood(n)) => assert!(n > SPURIOUS_EVENT_LIMIT),
            other => panic!("expected an event flood error, got {other:?}"),
        }
        assert!(b.is_broken());
    });
}

#[test]
fn honest_traffic_is_not_mistaken_for_a_flood() {
    // Many tiny writes, each with its own event, and input the guest reads
    // without echoing: progress resets the spurious-event count.
    let w = world();
    let mut front = w.primary_front();
    let term = MemoryTerminal::new();
    let back = BackThread::spawn(w.primary_back().unwrap(), term.io());
    for i in 0..(SPURIOUS_EVENT_LIMIT as usize * 3) {
        front.write_all(&[i as u8], Some(SOON)).unwrap();
        if i % 7 == 0 {
            term.type_input(b"k");
            let mut b = [0u8; 8];
            front.read_timeout(&mut b, Some(SOON)).unwrap();
        }
    }
    let want = SPURIOUS_EVENT_LIMIT as usize * 3;
    assert!(term.wait_output(SOON, |o| o.len() >= want));
    let (_b, r) = back.stop();
    r.unwrap();
    assert!(!front.is_broken());
}
