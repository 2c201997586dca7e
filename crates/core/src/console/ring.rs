//! The console byte rings: one producer and one consumer algorithm, used for
//! both directions by both ends.
//!
//! The producer owns `prod` and the consumer owns `cons`; each keeps its own
//! index privately and passes it in. The other index is the peer's: it is
//! loaded once, then `prod - cons` (wrapping) is checked against the ring
//! size before any byte moves. Bytes are copied with the volatile accessors
//! of [`SharedMem`], at most two runs (before and after the wrap point), so a
//! corrupt index can never cause an out-of-bounds access or a loop.

use core::mem::offset_of;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xenshare_abi::console::{XenconsInterface, XENCONS_IN_SIZE, XENCONS_OUT_SIZE};

use super::ConsoleError;
use crate::mem::SharedMem;

/// One direction of the console page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dir {
    /// Name used in errors (`"in"` / `"out"`).
    pub name: &'static str,
    /// Offset of the byte array in the page.
    pub data: usize,
    /// Size of the byte array (a power of two).
    pub size: usize,
    /// Offset of the consumer index.
    pub cons: usize,
    /// Offset of the producer index.
    pub prod: usize,
}

/// The `in` ring: back end → guest (keyboard input).
pub const IN: Dir = Dir {
    name: "in",
    data: offset_of!(XenconsInterface, r#in),
    size: XENCONS_IN_SIZE,
    cons: offset_of!(XenconsInterface, in_cons),
    prod: offset_of!(XenconsInterface, in_prod),
};

/// The `out` ring: guest → back end (console output).
pub const OUT: Dir = Dir {
    name: "out",
    data: offset_of!(XenconsInterface, out),
    size: XENCONS_OUT_SIZE,
    cons: offset_of!(XenconsInterface, out_cons),
    prod: offset_of!(XenconsInterface, out_prod),
};

const _: () = assert!(IN.size.is_power_of_two() && OUT.size.is_power_of_two());

fn index(mem: SharedMem<'_>, off: usize) -> Result<&AtomicU32, ConsoleError> {
    // The page was size-checked when the console was made; a failure here
    // means the memory is not what it was, so the console stops.
    mem.atomic_u32(off).map_err(|_| ConsoleError::Broken)
}

/// Loads the index at `off` once (the peer's, or a snapshot at attach).
pub fn load(mem: SharedMem<'_>, off: usize) -> Result<u32, ConsoleError> {
    Ok(index(mem, off)?.load(Ordering::Acquire))
}

/// Checks an index pair: at most `size` bytes may be in flight.
pub fn check(d: &Dir, prod: u32, cons: u32) -> Result<usize, ConsoleError> {
    let used = prod.wrapping_sub(cons) as usize;
    if used > d.size {
        return Err(ConsoleError::Corrupt(d.name));
    }
    Ok(used)
}

/// Bytes in flight, as seen by the producer holding private `prod`.
pub fn used_by_producer(mem: SharedMem<'_>, d: &Dir, prod: u32) -> Result<usize, ConsoleError> {
    let cons = load(mem, d.cons)?;
    check(d, prod, cons)
}

/// Bytes ready, as seen by the consumer holding private `cons`.
pub fn ready_for_consumer(mem: SharedMem<'_>, d: &Dir, cons: u32) -> Result<usize, ConsoleError> {
    let prod = load(mem, d.prod)?;
    check(d, prod, cons)
}

/// Producer: copies as much of `data` as fits after private index `prod`,
/// publishes the new producer index, and returns the bytes written.
pub fn produce(mem: SharedMem<'_>, d: &Dir, prod: u32, data: &[u8]) -> Result<usize, ConsoleError> {
    let cons = load(mem, d.cons)?;
    // Index read before the ring bytes it frees are overwritten.
    fence(Ordering::SeqCst);
    let used = check(d, prod, cons)?;
    let n = (d.size - used).min(data.len());
    if n == 0 {
        return Ok(0);
    }
    let at = prod as usize & (d.size - 1);
    let first = n.min(d.size - at);
    let bad = |_| ConsoleError::Broken;
    mem.write(d.data + at, &data[..first]).map_err(bad)?;
    mem.write(d.data, &data[first..n]).map_err(bad)?;
    // Bytes visible before the index that publishes them.
    fence(Ordering::Release);
    index(mem, d.prod)?.store(prod.wrapping_add(n as u32), Ordering::Release);
    Ok(n)
}

/// Consumer: copies up to `out.len()` ready bytes after private index
/// `cons` (each byte fetched once), publishes the new consumer index, and
/// returns the bytes read.
pub fn consume(
    mem: SharedMem<'_>,
    d: &Dir,
    cons: u32,
    out: &mut [u8],
) -> Result<usize, ConsoleError> {
    let prod = load(mem, d.prod)?;
    // Index read before the bytes it covers.
    fence(Ordering::Acquire);
    let ready = check(d, prod, cons)?;
    let n = ready.min(out.len());
    if n == 0 {
        return Ok(0);
    }
    let at = cons as usize & (d.size - 1);
    let first = n.min(d.size - at);
    let (a, b) = out[..n].split_at_mut(first);
    let bad = |_| ConsoleError::Broken;
    mem.read(d.data + at, a).map_err(bad)?;
    mem.read(d.data, b).map_err(bad)?;
    // Bytes read before the producer may reuse their slots.
    fence(Ordering::SeqCst);
    index(mem, d.cons)?.store(cons.wrapping_add(n as u32), Ordering::Release);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageBuf;

    fn page(buf: &PageBuf) -> SharedMem<'_> {
        buf.mem()
    }

    #[test]
    fn bytes_wrap_both_rings() {
        let buf = PageBuf::new(1);
        let m = page(&buf);
        for d in [IN, OUT] {
            let (mut p, mut c) = (u32::MAX - 700, u32::MAX - 700);
            m.atomic_u32(d.prod).unwrap().store(p, Ordering::Relaxed);
            m.atomic_u32(d.cons).unwrap().store(c, Ordering::Relaxed);
            let mut next = 0u8;
            let mut expect = 0u8;
            for round in 0..200usize {
                let len = 1 + (round * 37) % (d.size + 5);
                let data: std::vec::Vec<u8> =
                    (0..len).map(|i| next.wrapping_add(i as u8)).collect();
                let n = produce(m, &d, p, &data).unwrap();
                assert!(n <= d.size);
                next = next.wrapping_add(n as u8);
                p = p.wrapping_add(n as u32);
                let mut out = std::vec![0u8; 1 + (round * 13) % d.size];
                let k = consume(m, &d, c, &mut out).unwrap();
                for &b in &out[..k] {
                    assert_eq!(b, expect);
                    expect = expect.wrapping_add(1);
                }
                c = c.wrapping_add(k as u32);
            }
        }
    }

    #[test]
    fn corrupt_peer_index_is_an_error() {
        let buf = PageBuf::new(1);
        let m = page(&buf);
        m.atomic_u32(OUT.cons).unwrap().store(5, Ordering::Relaxed);
        assert_eq!(produce(m, &OUT, 0, b"x"), Err(ConsoleError::Corrupt("out")));
        m.atomic_u32(IN.prod)
            .unwrap()
            .store(1025, Ordering::Relaxed);
        assert_eq!(
            consume(m, &IN, 0, &mut [0; 8]),
            Err(ConsoleError::Corrupt("in"))
        );
        m.atomic_u32(IN.prod)
            .unwrap()
            .store(1024, Ordering::Relaxed);
        assert_eq!(consume(m, &IN, 0, &mut [0; 8]), Ok(8));
    }
}
