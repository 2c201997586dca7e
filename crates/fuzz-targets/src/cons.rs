//! The console byte rings ([`xenshare::console::ring`]) against a peer that
//! owns the other index of each direction and may scribble on the page.
//!
//! Invariants:
//! * `produce` / `consume` fail with `Corrupt` exactly when the peer's index
//!   is more than the ring size away from ours, and otherwise move at most
//!   what fits (`produce`) or what is ready (`consume`), never more than
//!   the ring size;
//! * bytes consumed are the ring's bytes from our index on, wrapping;
//! * a call writes only the ring bytes it produces and its own index:
//!   nothing else in the page (the other ring, the other indices) changes.

use core::ops::Range;
use core::sync::atomic::Ordering;

use xenshare::console::ring::{self, Dir, IN, OUT};
use xenshare::console::ConsoleError;
use xenshare_abi::PAGE_SIZE;

use crate::input::Input;
use crate::plain::PlainMem;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let page = PlainMem::new(PAGE_SIZE);
    let m = page.mem();
    // Private indices: ours for producing and consuming in each direction.
    let mut prod = [input.u32(), input.u32()];
    let mut cons = [input.u32(), input.u32()];
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let op = input.u8();
        let which = usize::from(op >> 7);
        let d = [IN, OUT][which];
        match op & 0x7 {
            // Peer moves its consumer index (for our production).
            0 => store(&page, d.cons, input.index_near(prod[which], d.size as u32)),
            // Peer moves its producer index (for our consumption).
            1 => store(&page, d.prod, input.index_near(cons[which], d.size as u32)),
            // Peer writes ring bytes.
            2 => {
                let at = usize::from(input.u16()) % d.size;
                let bytes = input.short_slice();
                let n = bytes.len().min(d.size - at);
                let _ = m.write(d.data + at, &bytes[..n]);
            }
            // Peer scribbles on any index.
            3 => store(
                &page,
                [d.cons, d.prod][usize::from(input.u8() & 1)],
                input.u32(),
            ),
            4 | 5 => {
                let n = usize::from(input.u16()) % (2 * d.size);
                let data = input.bytes(n);
                produce(&page, &d, &mut prod[which], data);
            }
            _ => {
                let want = usize::from(input.u16()) % (2 * d.size);
                consume(&page, &d, &mut cons[which], want);
            }
        }
    }
}

fn store(page: &PlainMem, off: usize, v: u32) {
    page.mem()
        .atomic_u32(off)
        .unwrap()
        .store(v, Ordering::Relaxed);
}

fn load(page: &PlainMem, off: usize) -> u32 {
    page.mem().atomic_u32(off).unwrap().load(Ordering::Relaxed)
}

/// The page ranges of ring bytes `[idx, idx + n)` of `d`.
fn ring_ranges(d: &Dir, idx: u32, n: usize) -> [Range<usize>; 2] {
    let at = idx as usize & (d.size - 1);
    let first = n.min(d.size - at);
    [
        d.data + at..d.data + at + first,
        d.data..d.data + (n - first),
    ]
}

fn only_changed(before: &[u8], after: &[u8], allowed: &[Range<usize>]) {
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "wrote byte {i} it does not own"
            );
        }
    }
}

fn produce(page: &PlainMem, d: &Dir, prod: &mut u32, data: &[u8]) {
    let peer = load(page, d.cons);
    let before = page.snapshot();
    let r = ring::produce(page.mem(), d, *prod, data);
    let used = prod.wrapping_sub(peer) as usize;
    match r {
        Ok(n) => {
            assert!(
                used <= d.size,
                "accepted a consumer index {used} bytes behind"
            );
            assert_eq!(n, (d.size - used).min(data.len()));
            let [a, b] = ring_ranges(d, *prod, n);
            let mut allowed = vec![a.clone(), b.clone()];
            if n > 0 {
                allowed.push(d.prod..d.prod + 4);
                assert_eq!(load(page, d.prod), prod.wrapping_add(n as u32));
                let after = page.snapshot();
                let written: Vec<u8> = after[a].iter().chain(&after[b]).copied().collect();
                assert_eq!(&written[..], &data[..n]);
            }
            only_changed(&before, &page.snapshot(), &allowed);
            *prod = prod.wrapping_add(n as u32);
        }
        Err(ConsoleError::Corrupt(_)) => {
            assert!(used > d.size, "rejected a legal consumer index");
            only_changed(&before, &page.snapshot(), &[]);
        }
        Err(e) => panic!("produce failed with {e:?}"),
    }
}

fn consume(page: &PlainMem, d: &Dir, cons: &mut u32, want: usize) {
    let peer = load(page, d.prod);
    let before = page.snapshot();
    let mut out = vec![0u8; want];
    let r = ring::consume(page.mem(), d, *cons, &mut out);
    let ready = peer.wrapping_sub(*cons) as usize;
    match r {
        Ok(n) => {
            assert!(
                ready <= d.size,
                "accepted a producer index {ready} bytes ahead"
            );
            assert_eq!(n, ready.min(want));
            let [a, b] = ring_ranges(d, *cons, n);
            let expect: Vec<u8> = before[a].iter().chain(&before[b]).copied().collect();
            assert_eq!(&out[..n], &expect[..], "consumed bytes are not the ring's");
            let idx = d.cons..d.cons + 4;
            let allowed = if n > 0 {
                core::slice::from_ref(&idx)
            } else {
                &[]
            };
            only_changed(&before, &page.snapshot(), allowed);
            *cons = cons.wrapping_add(n as u32);
        }
        Err(ConsoleError::Corrupt(_)) => {
            assert!(ready > d.size, "rejected a legal producer index");
            only_changed(&before, &page.snapshot(), &[]);
        }
        Err(e) => panic!("consume failed with {e:?}"),
    }
}
