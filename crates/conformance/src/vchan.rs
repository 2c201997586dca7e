//! vchan bodies: a server and a client over the platform's grants, event
//! channels and a XenStore, moving pseudo-random data both ways at once,
//! checked byte for byte, then closing from one side and checking the other
//! side sees it.
//!
//! The pieces are public so the Xen lab can run each end in its own process
//! (and pair them with Xen's C libxenvchan): [`Pattern`] is the data stream
//! (splitmix64, the same in the lab's C peer), [`pump`] the transfer loop,
//! [`finish`] the close handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::platform::EventChannels;
use xenshare::store::{Client, Transport};
use xenshare::vchan::{client_init, server_init, Vchan, VchanSide};

use crate::{check, Context, Outcome, Platform, TestResult};

/// A reproducible pseudo-random byte stream: splitmix64 from `seed`, each
/// output word giving 8 bytes, least significant first.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.word = self.next_word().to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// FNV-1a 64 of a byte stream, fed in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds `data` to the checksum.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// What [`pump`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes written.
    pub sent: usize,
    /// Checksum of the bytes written.
    pub sent_fnv: Fnv,
    /// Bytes read (all checked against the pattern).
    pub received: usize,
    /// Checksum of the bytes read.
    pub received_fnv: Fnv,
    /// How often the loop slept on the event channel.
    pub waits: u64,
}

/// The piece size of [`pump`]'s reads and writes.
const CHUNK: usize = 64 * 1024;

/// Sends `bytes` bytes of the stream `send_seed` while receiving `bytes`
/// bytes that must equal the stream `recv_seed`, both at once: non-blocking
/// writes and reads and, whenever neither moves, a short spin and then a
/// sleep on the event channel (a read or write that found nothing asked the
/// peer for a notification first, so no wake-up is lost). Fails on a wrong byte, an error, a peer that closes early, or
/// when `timeout` passes.
pub fn pump<S: VchanSide, E: EventChannels>(
    v: &mut Vchan<S, E>,
    send_seed: u64,
    recv_seed: u64,
    bytes: usize,
    timeout: Duration,
) -> Result<Transfer, String> {
    let deadline = Instant::now() + timeout;
    let (mut tx, mut rx) = (Pattern::new(send_seed), Pattern::new(recv_seed));
    let mut t = Transfer {
        sent: 0,
        sent_fnv: Fnv::default(),
        received: 0,
        received_fnv: Fnv::default(),
        waits: 0,
    };
    let (mut out, mut pend, mut pend_off) = (vec![0u8; CHUNK], 0usize, 0usize);
    let (mut inb, mut expect) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    v.set_blocking(false);
    let status = |t: &Transfer| {
        format!(
            "sent {} and received {} of {bytes} bytes",
            t.sent, t.received
        )
    };
    while t.sent < bytes || t.received < bytes {
        let mut progress = false;
        if t.sent < bytes {
            if pend_off == pend {
                pend = (bytes - t.sent).min(CHUNK);
                tx.fill(&mut out[..pend]);
                pend_off = 0;
            }
            let k = v
                .write(&out[pend_off..pend])
                .map_err(|e| format!("write: {e} ({})", status(&t)))?;
            t.sent_fnv.update(&out[pend_off..pend_off + k]);
            pend_off += k;
            t.sent += k;
            progress |= k > 0;
        }
        if t.received < bytes {
            let want = (bytes - t.received).min(CHUNK);
            let k = v
                .read(&mut inb[..want])
                .map_err(|e| format!("read: {e} ({})", status(&t)))?;
            if k > 0 {
                rx.fill(&mut expect[..k]);
                if let Some(i) = (0..k).find(|&i| inb[i] != expect[i]) {
                    return Err(format!(
                        "byte {} received is {:#04x}, expected {:#04x}",
                        t.received + i,
                        inb[i],
                        expect[i]
                    ));
                }
                t.received_fnv.update(&inb[..k]);
                t.received += k;
                progress = true;
            }
        }
        if progress || spin_for_peer(v, t.sent < bytes, t.received < bytes) {
            continue;
        }
        if !v.is_open() {
            // Anything still in the ring was read above.
            return Err(format!("the peer closed early: {}", status(&t)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("timed out after {timeout:?}: {}", status(&t)));
        }
        v.wait(Some(deadline - now))
            .map_err(|e| format!("wait: {e}"))?;
        t.waits += 1;
    }
    Ok(t)
}

/// How many times [`pump`] re-checks the rings before it sleeps: a peer
/// running on another CPU usually moves within that, and a sleep and
/// wake-up through the event channel costs far more (milliseconds under
/// QEMU TCG).
const SPIN_ROUNDS: u32 = 2000;

/// Spins until the ring we want to write has room or the one we read has
/// data; false if neither happened (or the vchan failed: the caller's next
/// read or write reports it).
fn spin_for_peer<S: VchanSide, E: EventChannels>(
    v: &mut Vchan<S, E>,
    sending: bool,
    receiving: bool,
) -> bool {
    for _ in 0..SPIN_ROUNDS {
        let room = sending && v.buffer_space().map_or(true, |n| n > 0);
        let data = receiving && v.data_ready().map_or(true, |n| n > 0);
        if room || data {
            return true;
        }
        if !v.is_open() {
            return false;
        }
        std::hint::spin_loop();
    }
    false
}

/// Which end closes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The server closes, the client waits for it.
    Server,
    /// The client closes, the server waits for it.
    Client,
}

/// Ends a transfer: the closing side closes at once; the other waits (up to
/// `timeout`) until `is_open` goes false, checks that a read then reports
/// the end of the stream, and closes too.
pub fn finish<S: VchanSide, E: EventChannels>(
    v: &mut Vchan<S, E>,
    close_first: bool,
    timeout: Duration,
) -> Result<(), String> {
    if !close_first {
        let deadline = Instant::now() + timeout;
        while v.is_open() {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "is_open still true {timeout:?} after the peer finished"
                ));
            }
            v.wait(Some(deadline - now))
                .map_err(|e| format!("wait for the close: {e}"))?;
        }
        let mut b = [0u8; 1];
        match v.read(&mut b) {
            Ok(0) => {}
            other => return Err(format!("read after the peer closed gave {other:?}")),
        }
    }
    v.close();
    check!(!v.is_open(), "is_open after our own close");
    Ok(())
}

/// One shape of vchan to test.
#[derive(Debug, Clone, Copy)]
pub struct VchanShape {
    /// The server's `read_min` (left ring).
    pub read_min: usize,
    /// The server's `write_min` (right ring).
    pub write_min: usize,
    /// Bytes moved each way.
    pub bytes: usize,
    /// Who closes first.
    pub closer: Closer,
}

/// The shapes [`vchan_stream`] runs: external rings of 64 KiB with the
/// client closing, in-page rings (1 KiB / 2 KiB) with the server closing,
/// and a 4 KiB / 1 MiB mix.
pub const VCHAN_SHAPES: [VchanShape; 3] = [
    VchanShape {
        read_min: 1 << 16,
        write_min: 1 << 16,
        bytes: 1 << 20,
        closer: Closer::Client,
    },
    VchanShape {
        read_min: 1024,
        write_min: 2048,
        bytes: 128 << 10,
        closer: Closer::Server,
    },
    VchanShape {
        read_min: 4096,
        write_min: 1 << 20,
        bytes: 1 << 20,
        closer: Closer::Server,
    },
];

/// How long one transfer may take (the lab runs under TCG, ~15x slower).
const VCHAN_TIMEOUT: Duration = Duration::from_secs(60);

/// A vchan between the platform's exporter (the server) and importer (the
/// client), the two ends on two threads, for one `shape`, published at
/// `path` through `xs` (which the caller may write).
pub fn vchan_pair<P: Platform, T: Transport>(
    p: &P,
    xs: &mut Client<T>,
    path: &str,
    shape: VchanShape,
    seeds: (u64, u64),
) -> Result<String, String> {
    let (srv_seed, cli_seed) = seeds;
    let srv_evt: Arc<P::Evtchn> = p.exporter_evtchn()?;
    let cli_evt: Arc<P::Evtchn> = p.importer_evtchn()?;
    let _ = xs.rm(path);
    let mut srv = server_init(
        p.exporter(),
        &srv_evt,
        xs,
        p.importer().domid(),
        path,
        shape.read_min,
        shape.write_min,
    )
    .ctx("server_init")?;
    let mut cli =
        client_init(p.importer(), &cli_evt, xs, p.exporter().domid(), path).ctx("client_init")?;
    let orders = (srv.read_ring_size(), srv.write_ring_size());
    check!(
        (cli.write_ring_size(), cli.read_ring_size()) == orders,
        "the client sees rings {:?}, the server {orders:?}",
        (cli.write_ring_size(), cli.read_ring_size())
    );
    let (srv_res, cli_res) = std::thread::scope(|s| {
        let server = s.spawn(move || {
            let t = pump(&mut srv, srv_seed, cli_seed, shape.bytes, VCHAN_TIMEOUT)
                .map_err(|e| format!("server: {e}"))?;
            finish(&mut srv, shape.closer == Closer::Server, VCHAN_TIMEOUT)
                .map_err(|e| format!("server: {e}"))?;
            Ok::<_, String>(t)
        });
        let client = pump(&mut cli, cli_seed, srv_seed, shape.bytes, VCHAN_TIMEOUT)
            .map_err(|e| format!("client: {e}"))
            .and_then(|t| {
                finish(&mut cli, shape.closer == Closer::Client, VCHAN_TIMEOUT)
                    .map_err(|e| format!("client: {e}"))?;
                Ok(t)
            });
        // A failed client must not leave the server waiting for data.
        if client.is_err() {
            cli.close();
        }
        let server = server
            .join()
            .unwrap_or_else(|_| Err("the server thread panicked".into()));
        (server, client)
    });
    let _ = xs.rm(path);
    let (st, ct) = (srv_res?, cli_res?);
    check!(
        st.sent_fnv == ct.received_fnv && ct.sent_fnv == st.received_fnv,
        "checksums differ: server {st:?}, client {ct:?}"
    );
    Ok(format!(
        "rings {}/{} B, {} KiB each way, {:?} closed first",
        orders.0,
        orders.1,
        shape.bytes >> 10,
        shape.closer
    ))
}

/// Every [`VCHAN_SHAPES`] between the platform's two domains, each end on
/// its own thread, published under `base` (which the caller may write, e.g.
/// `/local/domain/0/data/vchan`).
pub fn vchan_stream<P: Platform, T: Transport>(
    p: &P,
    xs: &mut Client<T>,
    base: &str,
) -> TestResult {
    let mut notes = Vec::new();
    for (i, shape) in VCHAN_SHAPES.into_iter().enumerate() {
        let path = format!("{base}/{}/{i}", p.importer().domid().0);
        let seeds = (0x5eed_0000 + 2 * i as u64, 0x5eed_0001 + 2 * i as u64);
        let note = vchan_pair(p, xs, &path, shape, seeds).map_err(|e| format!("{shape:?}: {e}"))?;
        notes.push(note);
    }
    Ok(Outcome::Pass(notes.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_splitmix64_little_endian() {
        // splitmix64 from 0: the first output is 0xe220a8397b1dcdaf.
        let mut b = [0u8; 10];
        Pattern::new(0).fill(&mut b);
        assert_eq!(b[..8], 0xe220_a839_7b1d_cdafu64.to_le_bytes());
        // Filling in pieces gives the same stream.
        let mut whole = [0u8; 40];
        Pattern::new(7).fill(&mut whole);
        let mut p = Pattern::new(7);
        let mut pieces = [0u8; 40];
        for c in pieces.chunks_mut(3) {
            p.fill(c);
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn fnv_of_nothing_and_of_a() {
        let mut f = Fnv::default();
        assert_eq!(f.0, 0xcbf2_9ce4_8422_2325);
        f.update(b"a");
        assert_eq!(f.0, 0xaf63_dc4c_8601_ec8c);
    }
}
