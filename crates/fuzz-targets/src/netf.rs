//! netfront's rx path against a hostile back end.
//!
//! The real `Netfront` runs in the guest and posts its rx buffers; dom0,
//! played by the fuzzer, maps the rx ring and writes responses (ids chosen
//! among the posted ones or anything, offsets, flags, statuses), fills the
//! buffers it names, publishes the response producer index (usually where
//! its responses end, sometimes anywhere), and lets the front end poll.
//!
//! Invariants, against a model of the rx protocol:
//! * the front end consumes responses only up to the requests it posted;
//!   an index beyond is an error that breaks it;
//! * a response for an id not posted (or already answered), with flags not
//!   negotiated, with data beyond its page, or making a frame longer than
//!   the largest frame or the slot limit breaks the front end, and it
//!   stays broken;
//! * every frame delivered is exactly the concatenation of its fragments'
//!   bytes (offset..offset+status of the buffer each response names), no
//!   longer than the largest frame; a frame with a failed fragment, or
//!   empty, is dropped;
//! * no rx buffer stays granted after the front end is released (nothing
//!   is quarantined when the back end unmaps in time).

use core::sync::atomic::Ordering;
use std::collections::{BTreeMap, VecDeque};

use xenshare::net::{
    Mac, Netfront, NetfrontConfig, NetifRxRequest, NetifRxResponse, MAX_FRAME, MAX_SLOTS,
};
use xenshare::GrantRef;
use xenshare_abi::netif::{NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETRXF_MORE_DATA};
use xenshare_abi::ring::SRING_HEADER_SIZE;
use xenshare_abi::PAGE_SIZE;

use crate::input::Input;
use crate::world::{self, World};

const RING: u32 = 256;
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;

pub(crate) fn run(data: &[u8]) {
    world::with(|w| run_in(w, data))
}

fn slot(idx: u32) -> usize {
    SRING_HEADER_SIZE + (idx & (RING - 1)) as usize * 8
}

#[derive(Default)]
struct Partial {
    data: Vec<u8>,
    slots: usize,
    failed: bool,
    /// The first slot left the checksum to the front end.
    csum_blank: bool,
}

/// The rx side as the protocol says the front end must behave.
struct Model {
    sg: bool,
    /// Posted and not yet answered: id -> grant ref.
    posted: BTreeMap<u16, u32>,
    /// Requests read off the ring so far (free-running index).
    req_seen: u32,
    /// Responses consumed.
    cons: u32,
    partial: Partial,
    frames: VecDeque<Vec<u8>>,
    broken: bool,
    /// What each posted buffer holds (by grant ref): zero when first
    /// posted (a granted page is zeroed first), then what the back end
    /// wrote, kept when the page is posted again.
    contents: BTreeMap<u32, Vec<u8>>,
}

fn run_in(w: &World, data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let cfg = NetfrontConfig {
        rx_buffers: MAX_SLOTS + usize::from(flags >> 3) % 16,
        sg: flags & 1 != 0,
    };
    let mut nf = Netfront::new(
        w.guest.exporter(),
        &w.evtg,
        w.dom0.id(),
        Mac([0, 0x16, 0x3e, 1, 2, 3]),
        flags & 2 != 0,
        cfg,
    )
    .expect("netfront on the emulator");
    let keys = nf.keys();
    let importer = w.dom0.importer();
    let ring_map = importer
        .map_rw(w.guest.id(), &[keys.rx_ring_ref])
        .expect("map the rx ring");
    let ring = ring_map.mem();
    let mut m = Model {
        sg: cfg.sg,
        posted: BTreeMap::new(),
        req_seen: 0,
        cons: 0,
        partial: Partial::default(),
        frames: VecDeque::new(),
        broken: false,
        contents: BTreeMap::new(),
    };
    let mut rsp_written = 0u32;
    let mut steps = 0;
    while !input.is_empty() && steps < 160 {
        steps += 1;
        m.read_requests(ring);
        match input.u8() % 6 {
            0..=2 => {
                // A response into the next slot; usually for a posted id.
                let pick = input.u8();
                let id = if pick < 230 && !m.posted.is_empty() {
                    *m.posted
                        .keys()
                        .nth(usize::from(pick) % m.posted.len())
                        .unwrap()
                } else {
                    input.u16()
                };
                let f = input.u8();
                let flags = match f >> 5 {
                    0..=4 => {
                        (u16::from(f & 1) * NETRXF_MORE_DATA)
                            | (u16::from(f & 2) * NETRXF_DATA_VALIDATED / 2)
                    }
                    5 => NETRXF_CSUM_BLANK,
                    _ => u16::from(f) << 3,
                };
                let offset = input.u16() % 4200;
                let status = match input.u8() {
                    0..=9 => -1,
                    10..=19 => input.u16() as i16,
                    _ => (input.u16() % 1600) as i16,
                };
                let rsp = NetifRxResponse {
                    id,
                    offset,
                    flags,
                    status,
                };
                if rsp_written.wrapping_sub(m.cons) >= RING {
                    continue;
                }
                // Fill the buffer the response names, as a back end would.
                if let Some(&gref) = m.posted.get(&id) {
                    if let Ok(buf) = importer.map_rw(w.guest.id(), &[GrantRef(gref)]) {
                        let b = input.u8();
                        let bytes: Vec<u8> = (0..PAGE_SIZE)
                            .map(|i| (i as u8).wrapping_mul(b) ^ (rsp_written as u8))
                            .collect();
                        buf.mem().write(0, &bytes).unwrap();
                        m.contents.insert(gref, bytes);
                    }
                }
                let _ = ring.write_obj(slot(rsp_written), &rsp);
                rsp_written = rsp_written.wrapping_add(1);
            }
            3 => {
                let p = if input.u8() < 220 {
                    rsp_written
                } else {
                    input.index_near(m.cons, m.req_seen.wrapping_sub(m.cons))
                };
                ring.atomic_u32(RSP_PROD)
                    .unwrap()
                    .store(p, Ordering::Release);
            }
            _ => {
                let prod = ring.atomic_u32(RSP_PROD).unwrap().load(Ordering::Acquire);
                m.consume(ring, prod);
                let r = nf.poll();
                assert_eq!(
                    r.is_err(),
                    m.broken,
                    "front end said {r:?}, model broken = {} (error {:?})",
                    m.broken,
                    nf.error()
                );
                assert_eq!(nf.is_broken(), m.broken);
                while let Some(frame) = m.frames.pop_front() {
                    match nf.recv() {
                        Ok(Some(got)) => assert!(
                            got == frame,
                            "frame of {} bytes differs from its fragments ({} bytes) at {:?}",
                            got.len(),
                            frame.len(),
                            got.iter().zip(&frame).position(|(a, b)| a != b)
                        ),
                        other => panic!("expected a frame of {} bytes, got {other:?}", frame.len()),
                    }
                }
                if !m.broken {
                    assert!(
                        matches!(nf.recv(), Ok(None)),
                        "front end delivered a frame too many"
                    );
                } else {
                    assert!(nf.recv().is_err());
                }
                if m.broken {
                    break;
                }
            }
        }
    }
    drop(ring_map);
    let report = nf.release();
    assert_eq!(report.quarantined, 0, "a page stayed mapped");
}

impl Model {
    /// Learns the requests the front end posted since the last look.
    fn read_requests(&mut self, ring: xenshare::mem::SharedMem<'_>) {
        let prod = ring.atomic_u32(REQ_PROD).unwrap().load(Ordering::Acquire);
        while self.req_seen != prod {
            let req: NetifRxRequest = ring.read_obj(slot(self.req_seen)).unwrap();
            assert!(
                self.posted.insert(req.id, req.gref).is_none(),
                "front end posted id {} twice",
                req.id
            );
            // A page posted for the first time is zero; one posted again
            // keeps what the back end wrote into it (netfront keeps rx
            // pages granted). The fuzzer never keeps a mapping, so no rx
            // page is revoked mid-run: a grant ref seen again is the same
            // page.
            self.contents
                .entry(req.gref)
                .or_insert_with(|| vec![0; PAGE_SIZE]);
            self.req_seen = self.req_seen.wrapping_add(1);
            assert!(
                self.req_seen.wrapping_sub(self.cons) <= RING,
                "more posted than slots"
            );
        }
    }

    /// Consumes responses up to `prod` as the protocol requires.
    fn consume(&mut self, ring: xenshare::mem::SharedMem<'_>, prod: u32) {
        if self.broken {
            return;
        }
        if prod.wrapping_sub(self.cons) > self.req_seen.wrapping_sub(self.cons) {
            self.broken = true;
            return;
        }
        while self.cons != prod {
            let idx = self.cons;
            self.cons = self.cons.wrapping_add(1);
            // What the slot holds now is what the front end will read
            // (a request never overwritten is read as a response).
            let rsp: NetifRxResponse = ring.read_obj(slot(idx)).unwrap();
            let Some(gref) = self.posted.remove(&rsp.id) else {
                self.broken = true;
                return;
            };
            const KNOWN: u16 = NETRXF_DATA_VALIDATED | NETRXF_CSUM_BLANK | NETRXF_MORE_DATA;
            let more = rsp.flags & NETRXF_MORE_DATA != 0;
            if rsp.flags & !KNOWN != 0 || (more && !self.sg) {
                self.broken = true;
                return;
            }
            if self.partial.slots == 0 {
                self.partial.csum_blank = rsp.flags & NETRXF_CSUM_BLANK != 0;
            }
            self.partial.slots += 1;
            if self.partial.slots > MAX_SLOTS {
                self.broken = true;
                return;
            }
            if rsp.status < 0 {
                self.partial.failed = true;
            } else {
                let (off, size) = (usize::from(rsp.offset), rsp.status as usize);
                if off + size > PAGE_SIZE || self.partial.data.len() + size > MAX_FRAME {
                    self.broken = true;
                    return;
                }
                let page = &self.contents[&gref];
                self.partial.data.extend_from_slice(&page[off..off + size]);
            }
            if !more {
                let mut p = core::mem::take(&mut self.partial);
                // A checksum-blank frame is delivered completed, or dropped
                // if its headers do not parse.
                let ok = !p.failed
                    && !p.data.is_empty()
                    && (!p.csum_blank || xenshare::net::csum::complete(&mut p.data).is_ok());
                if ok {
                    self.frames.push_back(p.data);
                }
            }
        }
    }
}
