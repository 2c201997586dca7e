//! netback's tx path against a hostile front end.
//!
//! The guest (played by the fuzzer) shares the two rings and a few data
//! pages; the real `Netback` attaches in dom0. The input is a script: write
//! a tx request into the next free slot (grant refs are indices into the
//! guest's data pages, one more names a ref never granted), publish the
//! producer index (usually where the written slots end, sometimes anywhere),
//! post rx buffers, queue a host frame, or let the back end poll.
//!
//! Invariants (checked against a model of the tx protocol):
//! * responses answer requests one for one, in order, with the request's
//!   id; never more responses than published requests;
//! * a chain's slots all get the same status: OKAY exactly when the chain
//!   is well-formed (no extra-info, fragment sizes inside the first slot's
//!   total, every `offset + size` inside the page, at least 14 bytes) and
//!   every ref is granted; a chain that is malformed gets ERROR on every
//!   slot and breaks the back end (every later poll fails);
//! * every OKAY chain is one frame handed to the host, whose bytes are the
//!   chain's page bytes; nothing else reaches the host;
//! * the guest's tx data pages are never written;
//! * rx responses carry the ids of posted buffers in order, with a status
//!   that is an error or at most a page.

use core::sync::atomic::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;

use xenshare::event::Channel;
use xenshare::grant::Share;
use xenshare::mem::SharedMem;
use xenshare::net::xenbus::FrontendKeys;
use xenshare::net::{
    FrameIo, Netback, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse, MAX_SLOTS,
    MIN_FRAME,
};
use xenshare::ring::FrontRing;
use xenshare::Access;
use xenshare_abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
};
use xenshare_abi::ring::SRING_HEADER_SIZE;
use xenshare_abi::PAGE_SIZE;
use xenshare_sim::{SimEvtchn, SimGrantBackend};

use crate::input::Input;
use crate::world::{self, World};

const DATA_PAGES: usize = 3;
const RX_PAGES: usize = 2;
const NEVER_GRANTED: u32 = 0x00FF_FFF0;
/// Slots in a one-page tx ring (12-byte requests) and rx ring (8 bytes).
const TX_SIZE: u32 = 256;
const RX_SIZE: u32 = 256;
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;

/// The host side: frames sent by the guest, frames to deliver to it.
#[derive(Default)]
struct Host {
    sent: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
}

impl FrameIo for Host {
    type Error = Infallible;
    fn send(&mut self, frame: &[u8]) -> Result<(), Infallible> {
        self.sent.push_back(frame.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Infallible> {
        Ok(self.to_guest.pop_front().map(|f| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            n
        }))
    }
}

pub(crate) fn run(data: &[u8]) {
    world::with(|w| run_in(w, data))
}

fn slot(idx: u32, size: usize, n: u32) -> usize {
    SRING_HEADER_SIZE + (idx & (n - 1)) as usize * size
}

fn run_in(w: &World, data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let exp = w.guest.exporter();
    let share = || {
        exp.share(w.dom0.id(), 1, Access::ReadWrite)
            .expect("guest shares a page")
    };
    let tx_page = share();
    let rx_page = share();
    // The rings start where SHARED_RING_INIT puts them.
    let _ = FrontRing::<_, NetifTxRequest, NetifTxResponse>::init(tx_page.mem()).unwrap();
    let _ = FrontRing::<_, NetifRxRequest, NetifRxResponse>::init(rx_page.mem()).unwrap();
    let data_pages: Vec<Share<SimGrantBackend>> = (0..DATA_PAGES).map(|_| share()).collect();
    let rx_bufs: Vec<Share<SimGrantBackend>> = (0..RX_PAGES).map(|_| share()).collect();
    for (i, p) in data_pages.iter().enumerate() {
        let fill: Vec<u8> = (0..PAGE_SIZE)
            .map(|j| (j as u8) ^ (j >> 8) as u8 ^ (i as u8 * 85))
            .collect();
        p.mem().write(0, &fill).unwrap();
    }
    let data_ref = |i: usize| data_pages.get(i).map_or(NEVER_GRANTED, |s| s.refs()[0].0);
    let chan: Channel<SimEvtchn> =
        Channel::alloc_unbound(&w.evtg, w.dom0.id()).expect("guest channel");
    let keys = FrontendKeys {
        tx_ring_ref: tx_page.refs()[0],
        rx_ring_ref: rx_page.refs()[0],
        event_channel: chan.port(),
        event_channel_rx: None,
        request_rx_copy: true,
        sg: flags & 1 != 0,
        rx_notify: true,
    };
    let mut nb =
        Netback::attach(w.dom0.importer(), &w.evt0, w.guest.id(), &keys).expect("netback attaches");
    let pages_before: Vec<Vec<u8>> = data_pages.iter().map(|p| read_page(p.mem())).collect();
    let tx = tx_page.mem();
    let rx = rx_page.mem();

    let mut host = Host::default();
    let mut model = TxModel {
        pages: data_pages
            .iter()
            .zip(&pages_before)
            .map(|(s, b)| (s.refs()[0].0, b.clone()))
            .collect(),
        other: [&tx_page, &rx_page]
            .into_iter()
            .chain(&rx_bufs)
            .map(|s| s.refs()[0].0)
            .collect(),
        ..TxModel::default()
    };
    let (mut rx_written, mut rx_published, mut rx_seen) = (0u32, 0u32, 0u32);
    let mut rx_ids: BTreeMap<u32, u16> = BTreeMap::new();
    let mut broken = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 200 {
        steps += 1;
        match input.u8() % 8 {
            0..=2 => {
                // A tx request into the next unpublished slot.
                // Never over a slot the back end may not have consumed yet.
                if model.written.wrapping_sub(model.answered) >= TX_SIZE {
                    continue;
                }
                let g = usize::from(input.u8()) % (DATA_PAGES + 1);
                let f = input.u8();
                let req = NetifTxRequest {
                    gref: data_ref(g),
                    offset: input.u16() % 4200,
                    flags: (u16::from(f & 1) * NETTXF_MORE_DATA)
                        | (u16::from(f & 2 != 0) * NETTXF_CSUM_BLANK)
                        | (u16::from(f == 0xFF) * NETTXF_EXTRA_INFO),
                    id: input.u16(),
                    size: match f >> 6 {
                        0 => input.u16(),
                        _ => u16::from(input.u8()) * 16 + 14,
                    },
                };
                let _ = tx.write_obj(slot(model.written, 12, TX_SIZE), &req);
                model.written = model.written.wrapping_add(1);
            }
            3 => {
                // Publish: where the written slots end, or anywhere near.
                let p = if input.u8() < 200 {
                    model.written
                } else {
                    input.index_near(model.published, TX_SIZE)
                };
                model.publish(tx, p);
                tx.atomic_u32(REQ_PROD).unwrap().store(p, Ordering::Release);
            }
            4 => {
                // Post an rx buffer.
                let b = usize::from(input.u8()) % (RX_PAGES + 1);
                let req = NetifRxRequest {
                    id: input.u16(),
                    pad: 0,
                    gref: rx_bufs.get(b).map_or(NEVER_GRANTED, |s| s.refs()[0].0),
                };
                if rx_written.wrapping_sub(rx_seen) >= RX_SIZE {
                    continue;
                }
                let _ = rx.write_obj(slot(rx_written, 8, RX_SIZE), &req);
                rx_ids.insert(rx_written, req.id);
                rx_written = rx_written.wrapping_add(1);
                rx_published = rx_written;
                rx.atomic_u32(REQ_PROD)
                    .unwrap()
                    .store(rx_published, Ordering::Release);
            }
            5 => {
                let len = usize::from(input.u16()) % 9000;
                let b = input.u8();
                host.to_guest
                    .push_back((0..len).map(|i| (i as u8) ^ b).collect());
            }
            _ => {
                let r = nb.poll(&mut host);
                if broken {
                    assert!(r.is_err(), "a broken netback served again");
                    continue;
                }
                let fatal = model.check_responses(tx, &mut host);
                if fatal {
                    assert!(
                        r.is_err() && nb.is_broken(),
                        "malformed chain did not break netback: {r:?}"
                    );
                }
                if r.is_err() {
                    broken = true;
                    assert!(nb.is_broken());
                }
                assert!(
                    host.sent.is_empty(),
                    "netback sent a frame no OKAY answered"
                );
                // rx responses.
                let rsp_prod = rx.atomic_u32(RSP_PROD).unwrap().load(Ordering::Acquire);
                assert!(rsp_prod.wrapping_sub(rx_seen) <= rx_published.wrapping_sub(rx_seen));
                while rx_seen != rsp_prod {
                    let rsp: NetifRxResponse = rx.read_obj(slot(rx_seen, 8, RX_SIZE)).unwrap();
                    assert_eq!(
                        Some(&rsp.id),
                        rx_ids.get(&rx_seen),
                        "rx response out of order"
                    );
                    assert!(rsp.status < 0 || rsp.status as usize <= PAGE_SIZE);
                    assert_eq!(rsp.offset, 0);
                    rx_seen = rx_seen.wrapping_add(1);
                }
            }
        }
    }
    drop(nb);
    let after: Vec<Vec<u8>> = data_pages.iter().map(|p| read_page(p.mem())).collect();
    assert!(after == pages_before, "netback wrote a tx page");
    drop(chan);
    for s in [tx_page, rx_page]
        .into_iter()
        .chain(data_pages)
        .chain(rx_bufs)
    {
        assert!(
            s.try_unshare().is_ok(),
            "netback kept a mapping after detaching"
        );
    }
}

fn read_page(m: SharedMem<'_>) -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    m.read(0, &mut v).unwrap();
    v
}

/// What the guest has put on the tx ring and what has been answered.
#[derive(Default)]
struct TxModel {
    /// Slots written (free-running).
    written: u32,
    /// Highest producer index published (free-running).
    published: u32,
    /// What each published slot held when it was published.
    reqs: BTreeMap<u32, NetifTxRequest>,
    /// Responses seen so far.
    answered: u32,
    /// The chain being answered (indices), for responses seen in pieces.
    chain: Vec<u32>,
    /// Contents of the granted data pages, by grant ref.
    pages: BTreeMap<u32, Vec<u8>>,
    /// Refs of the other pages the guest granted (rings, rx buffers).
    other: Vec<u32>,
    /// The guest published past the ring: slot contents are no longer known.
    lost: bool,
}

impl TxModel {
    fn frame_bytes(&self, chain: &[NetifTxRequest], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (s, &n) in chain.iter().zip(sizes) {
            let page = &self.pages[&s.gref];
            out.extend_from_slice(&page[usize::from(s.offset)..usize::from(s.offset) + n]);
        }
        out
    }

    fn publish(&mut self, tx: SharedMem<'_>, p: u32) {
        let ahead = p.wrapping_sub(self.published);
        if ahead > TX_SIZE {
            // Behind (or absurdly ahead): nothing new is legal to consume.
            return;
        }
        if p.wrapping_sub(self.answered) > TX_SIZE {
            // More requests claimed than the ring holds beside the
            // unanswered ones: the back end may read slots its own
            // responses overwrite. Only the generic invariants hold now.
            self.lost = true;
        }
        for i in 0..ahead {
            let idx = self.published.wrapping_add(i);
            let req: NetifTxRequest = tx.read_obj(slot(idx, 12, TX_SIZE)).unwrap();
            self.reqs.insert(idx, req);
        }
        self.published = p;
        if p.wrapping_sub(self.written) <= TX_SIZE && p != self.written {
            // Published past what we wrote: new writes go after it.
            self.written = p;
        }
    }

    /// Checks the responses that appeared since the last look; returns true
    /// if a chain was malformed (the back end must be broken now).
    fn check_responses(&mut self, tx: SharedMem<'_>, host: &mut Host) -> bool {
        let prod = tx.atomic_u32(RSP_PROD).unwrap().load(Ordering::Acquire);
        let new = prod.wrapping_sub(self.answered);
        assert!(
            new <= self.published.wrapping_sub(self.answered),
            "{new} responses to {} requests",
            self.published.wrapping_sub(self.answered)
        );
        if self.lost {
            self.answered = prod;
            host.sent.clear();
            return false;
        }
        let mut fatal = false;
        let mut statuses = Vec::new();
        for _ in 0..new {
            let idx = self.answered;
            let rsp: NetifTxResponse = tx.read_obj(slot(idx, 12, TX_SIZE)).unwrap();
            let req = *self
                .reqs
                .get(&idx)
                .expect("response to a published request");
            assert_eq!(rsp.id, req.id, "tx response {idx:#x} has the wrong id");
            self.chain.push(idx);
            statuses.push(rsp.status);
            self.answered = idx.wrapping_add(1);
            let last = req.flags & NETTXF_MORE_DATA == 0 || self.chain.len() >= MAX_SLOTS;
            if last {
                let chain: Vec<NetifTxRequest> = self.chain.iter().map(|i| self.reqs[i]).collect();
                let granted: Vec<u32> = self.pages.keys().copied().collect();
                let (mut verdict, frame) = verdict(&chain, &granted);
                let got = &statuses[statuses.len() - chain.len()..];
                // A ref to another page the guest granted (a ring, an rx
                // buffer) is legal, but its bytes are not the model's.
                let foreign = chain.iter().any(|s| self.other.contains(&s.gref));
                if verdict == Verdict::Error && foreign && got[0] == NETIF_RSP_OKAY {
                    verdict = Verdict::Foreign;
                }
                // A checksum-blank frame reaches the host completed; one whose
                // headers do not parse is answered with an error.
                let mut expect = Vec::new();
                if verdict == Verdict::Okay {
                    expect = self.frame_bytes(&chain, &frame);
                    if chain[0].flags & NETTXF_CSUM_BLANK != 0
                        && xenshare::net::csum::complete(&mut expect).is_err()
                    {
                        verdict = Verdict::Error;
                    }
                }
                let want = match verdict {
                    Verdict::Fatal => {
                        fatal = true;
                        NETIF_RSP_ERROR
                    }
                    Verdict::Error => NETIF_RSP_ERROR,
                    Verdict::Okay | Verdict::Foreign => NETIF_RSP_OKAY,
                };
                assert!(
                    got.iter().all(|&s| s == want),
                    "chain {chain:?} answered {got:?}, expected {want}"
                );
                if verdict == Verdict::Foreign {
                    let sent = host
                        .sent
                        .pop_front()
                        .expect("an OKAY chain reached the host");
                    assert!(sent.len() >= MIN_FRAME);
                } else if verdict == Verdict::Okay {
                    let sent = host
                        .sent
                        .pop_front()
                        .expect("an OKAY chain reached the host");
                    assert_eq!(sent.len(), frame.iter().sum::<usize>());
                    assert!(sent == expect, "frame bytes differ from the chain's pages");
                }
                self.chain.clear();
            }
        }
        fatal
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Okay,
    /// Well-formed, but using pages the model does not track.
    Foreign,
    Error,
    Fatal,
}

/// The tx protocol's verdict on a complete chain, and each slot's size.
fn verdict(chain: &[NetifTxRequest], granted: &[u32]) -> (Verdict, Vec<usize>) {
    if chain.len() >= MAX_SLOTS && chain[chain.len() - 1].flags & NETTXF_MORE_DATA != 0 {
        return (Verdict::Fatal, vec![]);
    }
    if chain.iter().any(|s| s.flags & NETTXF_EXTRA_INFO != 0) {
        return (Verdict::Fatal, vec![]);
    }
    let total = usize::from(chain[0].size);
    let rest: usize = chain[1..].iter().map(|s| usize::from(s.size)).sum();
    if chain.len() > 1 && rest >= total {
        return (Verdict::Fatal, vec![]);
    }
    let mut sizes = vec![total - rest.min(total)];
    sizes.extend(chain[1..].iter().map(|s| usize::from(s.size)));
    if chain
        .iter()
        .zip(&sizes)
        .any(|(s, &n)| usize::from(s.offset) + n > PAGE_SIZE)
    {
        return (Verdict::Fatal, vec![]);
    }
    if total < MIN_FRAME || chain.iter().any(|s| !granted.contains(&s.gref)) {
        return (Verdict::Error, vec![]);
    }
    (Verdict::Okay, sizes)
}
