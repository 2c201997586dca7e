//! vchan against a peer that controls the shared indices and (before the
//! client connects) the ring orders and grant list.
//!
//! The first byte picks our end. As the *server* (dom0, real
//! `server_init`) the fuzzer plays the client by writing the control page
//! and rings. As the *client* (guest, real `client_init` against a real
//! server) the fuzzer first rewrites the server's header — orders, grant
//! refs, live bytes — and then plays the server. The rest of the input is a
//! script of peer writes and our non-blocking reads and writes (stream and
//! packet).
//!
//! Invariants:
//! * `client_init` accepts only orders that pass `VchanOrders::validate`;
//! * `data_ready` / `buffer_space` never exceed the ring size; an index
//!   more than the ring size away is `Corrupt` and every later call is
//!   `Broken`;
//! * a read returns exactly `min(ready, len)` bytes (packets: all or
//!   nothing), and they are the ring's bytes from our consumer index on;
//! * a write moves exactly `min(space, len)` bytes (packets: all or
//!   nothing) into the ring at our producer index;
//! * a call changes nothing in the shared pages except the ring bytes it
//!   wrote, its own index and the two notify bytes.

use core::ops::Range;
use core::sync::atomic::Ordering;

use xenshare::error::DeviceError;
use xenshare::event::Channel;
use xenshare::mem::SharedMem;
use xenshare::vchan::{client_init, server_init, Vchan, VchanError, VchanOrders, VchanSide};
use xenshare_abi::vchan as abi;
use xenshare_abi::PAGE_SIZE;
use xenshare_sim::SimEvtchn;

use crate::input::Input;
use crate::world::{self, World};

const LEFT_CONS: usize = 0;
const LEFT_PROD: usize = 4;
const RIGHT_CONS: usize = 8;
const RIGHT_PROD: usize = 12;
const CLI_NOTIFY: usize = 22;
const SRV_NOTIFY: usize = 23;

/// (server read_min, write_min): in-page and granted rings of both kinds.
const SIZES: [(usize, usize); 5] = [
    (1024, 2048),
    (2048, 1024),
    (4096, 8192),
    (2048, 8192),
    (8192, 1024),
];

pub(crate) fn run(data: &[u8]) {
    world::with(|w| run_in(w, data))
}

fn run_in(w: &World, data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let (r, wr) = SIZES[usize::from(mode >> 1) % SIZES.len()];
    let path = format!("/local/domain/0/data/vchan/{}/fuzz", w.guest.id().0);
    let mut server = server_init(
        w.dom0.exporter(),
        &w.evt0,
        &mut w.client(&w.dom0),
        w.guest.id(),
        &path,
        r,
        wr,
    )
    .expect("server_init on the emulator");
    server.set_blocking(false);
    if mode & 1 == 0 {
        // We are the server; the fuzzer is the client. Bind the client's end
        // of the event channel so our notifications have somewhere to go.
        let _peer: Channel<SimEvtchn> =
            Channel::bind(&w.evtg, w.dom0.id(), server.port()).expect("bind peer channel");
        let ctrl = server.side().ctrl().expect("server control page");
        ctrl.atomic_u8(abi::VCHAN_CLI_LIVE_OFFSET)
            .unwrap()
            .store(abi::VCHAN_LIVE_CONNECTED, Ordering::Relaxed);
        let orders = VchanOrders {
            left: order_of(server.read_ring_size()),
            right: order_of(server.write_ring_size()),
        };
        drive(&mut server, orders, true, false, &mut input, None);
    } else {
        // We are the client; the fuzzer is the server. It may rewrite the
        // header before we connect.
        let ctrl = server.side().ctrl().expect("server control page");
        let header: abi::VchanInterface = ctrl.read_obj(0).unwrap();
        let mut edits = input.u8();
        while edits & 1 == 1 {
            let off = usize::from(input.u8() % 48);
            let _ = ctrl.write(off, input.bytes(2));
            edits = input.u8();
        }
        let seen: abi::VchanInterface = ctrl.read_obj(0).unwrap();
        let orders = VchanOrders {
            left: seen.left_order,
            right: seen.right_order,
        };
        let valid = orders.validate().is_ok();
        // (`ring_pages` is only meaningful for validated orders.)
        let n = if valid {
            abi::ring_pages(orders.left) + abi::ring_pages(orders.right)
        } else {
            0
        };
        let mut refs = vec![0u8; 4 * n];
        let _ = ctrl.read(abi::VCHAN_GRANTS_OFFSET, &mut refs);
        let client = client_init(
            w.guest.importer(),
            &w.evtg,
            &mut w.client(&w.guest),
            w.dom0.id(),
            &path,
        );
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    !valid || matches!(e, VchanError::Core(DeviceError::Map(_))),
                    "client refused valid orders {orders:?} (was {:?}/{:?}): {e:?}",
                    header.left_order,
                    header.right_order
                );
                return;
            }
        };
        assert!(valid, "client accepted invalid orders {orders:?}");
        client.set_blocking(false);
        // A grant list naming a page twice makes two rings alias: then bytes
        // cannot be attributed to one ring, and only sizes are checked.
        let mut refs: Vec<u32> = refs
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let total = refs.len();
        refs.sort_unstable();
        refs.dedup();
        let alias = refs.len() != total;
        // The client maps the right ring read-only: the peer writes it
        // through the server's shares.
        let peer = |left: bool| server.side().external_rw(left);
        drive(&mut client, orders, false, alias, &mut input, Some(&peer));
        drop(client);
    }
    drop(server);
}

fn order_of(size: usize) -> u16 {
    size.trailing_zeros() as u16
}

/// Where a ring of `order` sits in the concatenated view
/// control page ++ left pages ++ right pages.
fn ring_base(order: u16, left: bool, left_len: usize) -> usize {
    match abi::in_page_ring_offset(order) {
        Some(off) => off,
        None if left => PAGE_SIZE,
        None => PAGE_SIZE + left_len,
    }
}

struct View {
    bytes: Vec<u8>,
}

fn view<S: VchanSide>(side: &S) -> View {
    let mut bytes = Vec::new();
    for m in [
        side.ctrl().map(SharedMem::read_only),
        side.external_ro(true),
        side.external_ro(false),
    ]
    .into_iter()
    .flatten()
    {
        let mut b = vec![0u8; m.len()];
        m.read(0, &mut b).unwrap();
        bytes.extend(b);
    }
    View { bytes }
}

fn u32_at(v: &View, off: usize) -> u32 {
    u32::from_le_bytes(v.bytes[off..off + 4].try_into().unwrap())
}

/// Ranges of `[idx, idx + n)` in a ring of `size` bytes at `base`.
fn ring_ranges(base: usize, size: usize, idx: u32, n: usize) -> [Range<usize>; 2] {
    let at = idx as usize & (size - 1);
    let first = n.min(size - at);
    [base + at..base + at + first, base..base + (n - first)]
}

/// The peer's way to its pages when ours are not writable.
type PeerRing<'p> = Option<&'p dyn Fn(bool) -> Option<SharedMem<'p>>>;

fn drive<S: VchanSide>(
    v: &mut Vchan<S, SimEvtchn>,
    orders: VchanOrders,
    server: bool,
    alias: bool,
    input: &mut Input<'_>,
    peer_ring: PeerRing<'_>,
) {
    let (rd_size, wr_size) = (v.read_ring_size(), v.write_ring_size());
    let left_len = v.side().external_ro(true).map_or(0, |m| m.len());
    // The server reads the left ring and writes the right one.
    let rd_base = ring_base(
        if server { orders.left } else { orders.right },
        server,
        left_len,
    );
    let wr_base = ring_base(
        if server { orders.right } else { orders.left },
        !server,
        left_len,
    );
    let (rd_prod, rd_cons, wr_prod, wr_cons) = if server {
        (LEFT_PROD, LEFT_CONS, RIGHT_PROD, RIGHT_CONS)
    } else {
        (RIGHT_PROD, RIGHT_CONS, LEFT_PROD, LEFT_CONS)
    };
    let peer_live = if server {
        abi::VCHAN_CLI_LIVE_OFFSET
    } else {
        abi::VCHAN_SRV_LIVE_OFFSET
    };
    let (mut cons, mut prod) = (0u32, 0u32);
    let mut broken = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 128 {
        steps += 1;
        let op = input.u8();
        let Some(ctrl) = v.side().ctrl() else { return };
        match op % 10 {
            // Peer moves its producer (our read ring) or consumer (our write ring).
            0 => ctrl
                .atomic_u32(rd_prod)
                .unwrap()
                .store(input.index_near(cons, rd_size as u32), Ordering::Relaxed),
            1 => ctrl
                .atomic_u32(wr_cons)
                .unwrap()
                .store(input.index_near(prod, wr_size as u32), Ordering::Relaxed),
            // Peer writes its ring bytes.
            2 => {
                let at = usize::from(input.u16()) % rd_size;
                let data = input.short_slice();
                let n = data.len().min(rd_size - at);
                let target = match (abi::in_page_ring_offset(order_of(rd_size)), peer_ring) {
                    (Some(off), _) => ctrl.slice(off, rd_size).ok(),
                    (None, Some(f)) => f(server),
                    (None, None) => v.side().external_rw(server),
                };
                if let Some(m) = target {
                    let _ = m.write(at, &data[..n]);
                }
            }
            // Peer writes any header byte (live, notify, our own indices).
            3 => {
                let off = usize::from(input.u8() % 24);
                let _ = ctrl.write(off, &[input.u8()]);
            }
            _ => {
                let before = view(v.side());
                let len = usize::from(input.u16()) % (2 * rd_size.max(wr_size) + 2);
                let reading = op % 10 < 7;
                let packet = op & 0x80 != 0;
                let r = if reading {
                    let mut buf = vec![0u8; len];
                    let r = if packet {
                        v.recv(&mut buf)
                    } else {
                        v.read(&mut buf)
                    };
                    (r, buf)
                } else {
                    let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ op).collect();
                    let r = if packet {
                        v.send(&data)
                    } else {
                        v.write(&data)
                    };
                    (r, data)
                };
                let after = view(v.side());
                let (r, buf) = r;
                if broken {
                    assert!(
                        matches!(
                            r,
                            Err(VchanError::Broken) | Err(VchanError::TooBig { .. }) | Ok(0)
                        ) || (!reading && matches!(r, Err(VchanError::Core(DeviceError::Closed)))),
                        "a broken vchan moved data: {r:?}"
                    );
                    continue;
                }
                let (size, used, peer_idx) = if reading {
                    let p = u32_at(&before, rd_prod);
                    (rd_size, p.wrapping_sub(cons) as usize, p)
                } else {
                    let c = u32_at(&before, wr_cons);
                    (wr_size, prod.wrapping_sub(c) as usize, c)
                };
                let open = before.bytes[peer_live] != 0;
                let expect = if len == 0 && !packet {
                    Ok(0)
                } else if packet && len > size {
                    Err("toobig")
                } else if !reading && !open {
                    Err("closed")
                } else if used > size {
                    Err("corrupt")
                } else {
                    let avail = if reading { used } else { size - used };
                    Ok(if packet {
                        if avail >= len {
                            len
                        } else {
                            0
                        }
                    } else {
                        avail.min(len)
                    })
                };
                let n = match (&r, expect) {
                    (Ok(n), Ok(e)) => {
                        assert_eq!(
                            *n,
                            e,
                            "moved {n} bytes, expected {e} (peer index {peer_idx:#x}, ours {:#x})",
                            if reading { cons } else { prod }
                        );
                        *n
                    }
                    (Err(VchanError::TooBig { .. }), Err("toobig"))
                    | (Err(VchanError::Core(DeviceError::Closed)), Err("closed")) => 0,
                    (Err(VchanError::Corrupt(_)), Err("corrupt")) => {
                        broken = true;
                        0
                    }
                    (got, want) => panic!(
                        "got {got:?}, expected {want:?} (used {used} of {size}; reading {reading}, packet {packet}, len {len})"
                    ),
                };
                if alias {
                    continue;
                }
                // Our own indices may be rewritten (with our private values)
                // whatever the peer scribbled there.
                let mut allowed = vec![
                    CLI_NOTIFY..CLI_NOTIFY + 1,
                    SRV_NOTIFY..SRV_NOTIFY + 1,
                    rd_cons..rd_cons + 4,
                    wr_prod..wr_prod + 4,
                ];
                if reading {
                    let [a, b] = ring_ranges(rd_base, rd_size, cons, n);
                    let expect: Vec<u8> = before.bytes[a]
                        .iter()
                        .chain(&before.bytes[b])
                        .copied()
                        .collect();
                    assert_eq!(&buf[..n], &expect[..], "read bytes are not the ring's");
                    if n > 0 {
                        cons = cons.wrapping_add(n as u32);
                        assert_eq!(u32_at(&after, rd_cons), cons);
                    }
                } else if n > 0 {
                    let [a, b] = ring_ranges(wr_base, wr_size, prod, n);
                    let written: Vec<u8> = after.bytes[a.clone()]
                        .iter()
                        .chain(&after.bytes[b.clone()])
                        .copied()
                        .collect();
                    assert_eq!(&written[..], &buf[..n], "written bytes are not in the ring");
                    allowed.extend([a, b]);
                    prod = prod.wrapping_add(n as u32);
                    assert_eq!(u32_at(&after, wr_prod), prod);
                }
                for (i, (x, y)) in before.bytes.iter().zip(&after.bytes).enumerate() {
                    if x != y {
                        assert!(
                            allowed.iter().any(|r| r.contains(&i)),
                            "vchan wrote byte {i} it does not own"
                        );
                    }
                }
            }
        }
    }
}
