//! blkback's request path ([`BlkBack::answer`]: what the serve loop does
//! with each request copied off the ring) against a hostile front end.
//!
//! The guest grants data pages and indirect pages to dom0; the input picks
//! the back end's features, the disk's sector size and read-only flag, and
//! then a series of raw 112-byte requests and indirect segment lists. Grant
//! refs in them are indices into the guest's refs (one more index names a
//! ref never granted), so requests reach the data path.
//!
//! Invariants:
//! * the status is exactly what an independent model of the protocol says:
//!   `EOPNOTSUPP` for an operation not offered, `OKAY` only when every
//!   segment lies inside its page, names a granted ref, the count is in
//!   range, and the sectors are inside the disk and aligned; `ERROR`
//!   otherwise;
//! * the back end never touches a byte of a page outside the segments of
//!   the request, and never writes an indirect page;
//! * an OKAY read puts the disk's bytes into the segments, an OKAY write
//!   puts the segments' bytes on the disk; a failed or read request never
//!   changes the disk, and nothing touches the disk outside the range.

use std::ops::Range;

use xenshare::blk::back::{BackConfig, BlkBack};
use xenshare::blk::{BlockStorage, StorageError};
use xenshare::grant::Share;
use xenshare::Access;
use xenshare_abi::blkif::{
    BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY, BLKIF_SEGS_PER_INDIRECT_FRAME,
};
use xenshare_abi::PAGE_SIZE;
use xenshare_sim::SimGrantBackend;
use zerocopy::IntoBytes;

use crate::input::Input;
use crate::world::{self, World};

const DATA_PAGES: usize = 4;
const INDIRECT_PAGES: usize = 2;
const DISK_BYTES: usize = 64 * 1024;
const NEVER_GRANTED: u32 = 0x00FF_FFF0;

/// An in-memory disk.
struct MemDisk {
    bytes: Vec<u8>,
    sector_size: u32,
    read_only: bool,
}

impl BlockStorage for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let r = range(offset, buf.len(), self.bytes.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), StorageError> {
        assert!(!self.read_only, "write to a read-only disk");
        let r = range(offset, buf.len(), self.bytes.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), StorageError> {
        assert!(!self.read_only, "discard on a read-only disk");
        let r = range(offset, len as usize, self.bytes.len())?;
        self.bytes[r].fill(0);
        Ok(())
    }
}

fn range(offset: u64, len: usize, size: usize) -> Result<Range<usize>, StorageError> {
    let bad = || StorageError::OutOfRange {
        offset,
        len: len as u64,
    };
    let start = usize::try_from(offset).map_err(|_| bad())?;
    let end = start.checked_add(len).ok_or_else(bad)?;
    if end > size {
        // The back end checks ranges before calling: this is a bug.
        panic!("storage access {start}..{end} outside a {size}-byte disk");
    }
    Ok(start..end)
}

pub(crate) fn run(data: &[u8]) {
    world::with(|w| run_in(w, data))
}

/// One segment as the model sees it: which data page (None: not granted)
/// and which bytes.
#[derive(Debug, Clone)]
struct Seg {
    page: Option<usize>,
    first: u8,
    last: u8,
}

fn run_in(w: &World, data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut cfg = BackConfig::new(w.guest.id(), 51712);
    cfg.flush = flags & 1 != 0;
    cfg.barrier = flags & 2 != 0;
    cfg.discard = flags & 4 != 0;
    cfg.max_indirect_segments = match (flags >> 3) & 3 {
        0 => 0,
        1 => 11,
        2 => 600,
        _ => 1024,
    };
    let persistent = flags & 0x20 != 0;
    let sector_size = if flags & 0x40 != 0 { 4096 } else { 512 };
    let read_only = flags & 0x80 != 0;
    let mut disk = vec![0u8; DISK_BYTES];
    for (i, b) in disk.iter_mut().enumerate() {
        *b = (i as u8) ^ (i >> 9) as u8;
    }
    let storage = MemDisk {
        bytes: disk,
        sector_size,
        read_only,
    };
    let exp = w.guest.exporter();
    let share = |n| {
        exp.share(w.dom0.id(), n, Access::ReadWrite)
            .expect("guest shares pages")
    };
    let data_pages: Vec<Share<SimGrantBackend>> = (0..DATA_PAGES).map(|_| share(1)).collect();
    let ind_pages: Vec<Share<SimGrantBackend>> = (0..INDIRECT_PAGES).map(|_| share(1)).collect();
    let data_ref = |i: usize| data_pages.get(i).map_or(NEVER_GRANTED, |s| s.refs()[0].0);
    let ind_ref = |i: usize| ind_pages.get(i).map_or(NEVER_GRANTED, |s| s.refs()[0].0);
    for (i, p) in data_pages.iter().enumerate() {
        let fill: Vec<u8> = (0..PAGE_SIZE)
            .map(|j| (j as u8).wrapping_mul(7) ^ (0x40 + i as u8))
            .collect();
        p.mem().write(0, &fill).unwrap();
    }
    let mut back = BlkBack::new(w.dom0.importer().clone(), w.evt0.clone(), storage, cfg);

    let mut steps = 0;
    while !input.is_empty() && steps < 16 {
        steps += 1;
        let mut raw = BlkifRequest::default();
        let bytes = input.bytes(core::mem::size_of::<BlkifRequest>());
        raw.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
        // Keep requests near the disk and our refs, so the data path runs.
        raw.sector_number %= (DISK_BYTES as u64 / 512) * 2;
        let page_of = |gref: u32| (0..DATA_PAGES).find(|&i| data_ref(i) == gref);
        let mut segs: Vec<Seg> = Vec::new();
        let mut ind_pages_valid = true;
        if raw.operation == BLKIF_OP_INDIRECT {
            let mut ind = BlkifRequestIndirect::default();
            ind.as_mut_bytes().copy_from_slice(&raw.as_bytes()[..64]);
            ind.sector_number %= (DISK_BYTES as u64 / 512) * 2;
            ind.nr_segments %= 1100;
            let mut used = Vec::new();
            for g in ind.indirect_grefs.iter_mut() {
                let idx = (*g % (INDIRECT_PAGES as u32 + 1)) as usize;
                *g = ind_ref(idx);
                used.push(ind_pages.get(idx));
            }
            raw.as_mut_bytes()[..64].copy_from_slice(ind.as_bytes());
            // The segment lists, written into the indirect pages.
            let n = usize::from(ind.nr_segments);
            let npages = n
                .div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME)
                .min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
            let at = |k: usize| {
                (
                    k / BLKIF_SEGS_PER_INDIRECT_FRAME,
                    (k % BLKIF_SEGS_PER_INDIRECT_FRAME) * 8,
                )
            };
            for k in 0..n {
                let (g, first, last) = (input.u8(), input.u8(), input.u8());
                let seg = BlkifRequestSegment {
                    gref: data_ref(usize::from(g) % (DATA_PAGES + 1)),
                    first_sect: first % 9,
                    last_sect: last % 9,
                    _pad: [0; 2],
                };
                let (page, slot) = at(k);
                if let Some(Some(p)) = used.get(page).filter(|_| page < npages) {
                    p.mem().write(slot, seg.as_bytes()).unwrap();
                }
            }
            // What the pages hold now (two indirect refs may name one page).
            for k in 0..n {
                let (page, slot) = at(k);
                match used.get(page) {
                    Some(Some(p)) if page < npages => {
                        let mut b = [0u8; 8];
                        p.mem().read(slot, &mut b).unwrap();
                        let gref = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                        segs.push(Seg {
                            page: page_of(gref),
                            first: b[4],
                            last: b[5],
                        });
                    }
                    _ => ind_pages_valid = false,
                }
            }
        } else if raw.operation == BLKIF_OP_DISCARD {
            let b = raw.as_mut_bytes();
            let nr = u64::from_ne_bytes(b[24..32].try_into().unwrap()) % 300;
            b[24..32].copy_from_slice(&nr.to_ne_bytes());
        } else {
            for s in raw.seg.iter_mut() {
                let idx = (s.gref % (DATA_PAGES as u32 + 1)) as usize;
                s.gref = data_ref(idx);
                s.first_sect %= 9;
                s.last_sect %= 9;
                segs.push(Seg {
                    page: (idx < DATA_PAGES).then_some(idx),
                    first: s.first_sect,
                    last: s.last_sect,
                });
            }
            segs.truncate(usize::from(raw.nr_segments).min(BLKIF_MAX_SEGMENTS_PER_REQUEST));
        }

        let pages_before: Vec<Vec<u8>> = data_pages.iter().map(snapshot).collect();
        let ind_before: Vec<Vec<u8>> = ind_pages.iter().map(snapshot).collect();
        let disk_before = back.storage().bytes.clone();
        let status = back.answer(&raw, persistent);
        let pages_after: Vec<Vec<u8>> = data_pages.iter().map(snapshot).collect();
        let disk_after = back.storage().bytes.clone();

        let expect = model(&raw, &cfg, sector_size, read_only, &segs, ind_pages_valid);
        assert_eq!(
            status, expect.status,
            "status for {raw:?} (model: {})",
            expect.why
        );
        assert_eq!(
            ind_before,
            ind_pages.iter().map(snapshot).collect::<Vec<_>>(),
            "indirect page written"
        );
        // Nothing outside the request's segments changes in any page.
        for (p, (b, a)) in pages_before.iter().zip(&pages_after).enumerate() {
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                if x != y {
                    let inside = segs.iter().any(|s| {
                        s.page == Some(p)
                            && (usize::from(s.first) * 512..(usize::from(s.last) + 1) * 512)
                                .contains(&i)
                    });
                    assert!(inside, "byte {i} of page {p} changed outside the segments");
                }
            }
        }
        let reads = expect.op == Some(BLKIF_OP_READ);
        if status != BLKIF_RSP_OKAY || reads {
            assert!(
                disk_before == disk_after,
                "a failed or read request changed the disk"
            );
        } else if let Some(range) = expect.range.clone() {
            // Outside the range only a discard may not change; inside, writes carry data.
            for (i, (x, y)) in disk_before.iter().zip(&disk_after).enumerate() {
                if x != y {
                    assert!(
                        range.contains(&i),
                        "disk byte {i} changed outside the request"
                    );
                }
            }
        }
        if status == BLKIF_RSP_OKAY
            && matches!(expect.op, Some(BLKIF_OP_READ) | Some(BLKIF_OP_WRITE))
        {
            let range = expect.range.clone().expect("data op has a range");
            let (disk, pages) = if reads {
                (&disk_before, &pages_after)
            } else {
                (&disk_after, &pages_before)
            };
            let bytes = |s: &Seg| usize::from(s.first) * 512..(usize::from(s.last) + 1) * 512;
            let mut pos = range.start;
            for (k, s) in segs.iter().enumerate() {
                let p = s.page.expect("okay segments are granted");
                let r = bytes(s);
                let len = r.len();
                // A read into bytes a later segment also covers is overwritten.
                let shadowed = reads
                    && segs[k + 1..].iter().any(|t| {
                        t.page == s.page && bytes(t).start < r.end && r.start < bytes(t).end
                    });
                if !shadowed {
                    assert_eq!(
                        &pages[p][r],
                        &disk[pos..pos + len],
                        "data moved to the wrong place"
                    );
                }
                pos += len;
            }
            assert_eq!(pos, range.end);
        }
    }
    drop(back);
    for s in data_pages.into_iter().chain(ind_pages) {
        if s.try_unshare().is_err() {
            panic!("back end kept a mapping of a page after answering");
        }
    }
}

fn snapshot(s: &Share<SimGrantBackend>) -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    s.mem().read(0, &mut v).unwrap();
    v
}

struct Expect {
    status: i16,
    /// The data operation (READ, WRITE, ...) after indirection.
    op: Option<u8>,
    /// Bytes of the disk the request covers.
    range: Option<Range<usize>>,
    why: &'static str,
}

/// What the blkif protocol says the answer is.
fn model(
    raw: &BlkifRequest,
    cfg: &BackConfig,
    sector_size: u32,
    read_only: bool,
    segs: &[Seg],
    ind_pages_valid: bool,
) -> Expect {
    let fail = |status, why| Expect {
        status,
        op: None,
        range: None,
        why,
    };
    let unsupported = |why| fail(BLKIF_RSP_EOPNOTSUPP, why);
    let error = |why| fail(BLKIF_RSP_ERROR, why);
    let (op, sector, count_ok) = match raw.operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE => (
            raw.operation,
            raw.sector_number,
            (1..=11).contains(&raw.nr_segments),
        ),
        BLKIF_OP_FLUSH_DISKCACHE if cfg.flush => {
            (raw.operation, raw.sector_number, raw.nr_segments <= 11)
        }
        BLKIF_OP_WRITE_BARRIER if cfg.barrier => {
            (raw.operation, raw.sector_number, raw.nr_segments <= 11)
        }
        BLKIF_OP_DISCARD if cfg.discard => {
            let b = raw.as_bytes();
            let nr = u64::from_ne_bytes(b[24..32].try_into().unwrap());
            let start = raw.sector_number.checked_mul(512);
            let len = nr.checked_mul(512);
            let (Some(start), Some(len)) = (start, len) else {
                return error("discard range overflows");
            };
            let Some(end) = start.checked_add(len) else {
                return error("discard range overflows");
            };
            let ss = u64::from(sector_size);
            if end > DISK_BYTES as u64 || start % ss != 0 || len % ss != 0 {
                return error("discard outside the disk or misaligned");
            }
            if read_only {
                return error("discard on a read-only disk");
            }
            return Expect {
                status: BLKIF_RSP_OKAY,
                op: Some(BLKIF_OP_DISCARD),
                range: Some(start as usize..end as usize),
                why: "discard",
            };
        }
        BLKIF_OP_INDIRECT if cfg.max_indirect_segments > 0 => {
            let b = raw.as_bytes();
            let iop = b[1];
            let n = u16::from_ne_bytes([b[2], b[3]]);
            if iop != BLKIF_OP_READ && iop != BLKIF_OP_WRITE {
                return unsupported("indirect op is not read or write");
            }
            let max = cfg
                .max_indirect_segments
                .min((BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME) as u16);
            if n == 0 || n > max {
                return error("indirect segment count");
            }
            if !ind_pages_valid {
                return error("indirect page not granted");
            }
            (iop, raw.sector_number, true)
        }
        _ => return unsupported("operation not offered"),
    };
    if !count_ok {
        return error("segment count");
    }
    if segs.iter().any(|s| s.first > s.last || s.last >= 8) {
        return error("segment outside its page");
    }
    let sectors: u64 = segs.iter().map(|s| u64::from(s.last - s.first + 1)).sum();
    let ss = u64::from(sector_size);
    let (start, len) = (sector * 512, sectors * 512);
    if start + len > DISK_BYTES as u64 || start % ss != 0 || len % ss != 0 {
        return error("sectors outside the disk or misaligned");
    }
    if op != BLKIF_OP_READ && read_only {
        return error("write to a read-only disk");
    }
    if segs.iter().any(|s| s.page.is_none()) {
        return error("segment names a ref never granted");
    }
    Expect {
        status: BLKIF_RSP_OKAY,
        op: Some(op),
        range: Some(start as usize..(start + len) as usize),
        why: "valid",
    }
}
