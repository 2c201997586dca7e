//! Requests as the back end receives them: copied once, parsed, validated.
//!
//! A ring slot is copied out of shared memory once (by
//! [`crate::ring::BackRing::next_request`]) into a [`BlkifRequest`]. This
//! module reinterprets that private copy by its `operation` byte and turns
//! it into a [`Request`] whose every field has been checked: segment counts,
//! `first_sect <= last_sect <= 7`, indirect page counts against the limit
//! the back end published. Only the `id` and `operation` of a rejected
//! request are used again — to answer it with `BLKIF_RSP_ERROR`.

use alloc::vec::Vec;

use xenshare_abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_SEGS_PER_INDIRECT_FRAME,
};
use zerocopy::{FromBytes, IntoBytes};

use super::SECTORS_PER_PAGE;
use crate::types::GrantRef;

/// What a data request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOp {
    /// `BLKIF_OP_READ`.
    Read,
    /// `BLKIF_OP_WRITE`.
    Write,
    /// `BLKIF_OP_FLUSH_DISKCACHE`: optional data written, then a flush.
    Flush,
    /// `BLKIF_OP_WRITE_BARRIER`: flush, optional data written, flush.
    Barrier,
}

impl DataOp {
    /// Whether data moves from the front end to the disk.
    pub fn writes(self) -> bool {
        !matches!(self, DataOp::Read)
    }
}

/// One validated segment: `last_sect - first_sect + 1` sectors of a page.
/// (The default, one sector of grant 0, only fills unused [`Inline`] slots.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// The page's grant.
    pub gref: GrantRef,
    /// First sector in the page (0..=7).
    pub first_sect: u8,
    /// Last sector in the page, `first_sect..=7`.
    pub last_sect: u8,
}

impl Segment {
    /// Byte offset of the data in the page.
    pub fn offset(&self) -> usize {
        usize::from(self.first_sect) * super::SECTOR as usize
    }

    /// Bytes of data.
    pub fn len(&self) -> usize {
        usize::from(self.last_sect - self.first_sect + 1) * super::SECTOR as usize
    }

    /// Always false: a valid segment holds at least one sector.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Checks a raw segment descriptor.
    pub fn parse(raw: &BlkifRequestSegment) -> Result<Segment, Reject> {
        if raw.first_sect > raw.last_sect || raw.last_sect >= SECTORS_PER_PAGE {
            return Err(Reject::BadSegment {
                first: raw.first_sect,
                last: raw.last_sect,
            });
        }
        Ok(Segment {
            gref: GrantRef(raw.gref),
            first_sect: raw.first_sect,
            last_sect: raw.last_sect,
        })
    }
}

/// Up to `N` items of a request held inline, with no allocation (the
/// segments of a slot, the indirect pages of a request). Dereferences to
/// the slice of the items present.
#[derive(Clone, Copy)]
pub struct Inline<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> Inline<T, N> {
    /// The first `N` items of `iter` (the callers check counts first).
    pub fn collect(iter: impl IntoIterator<Item = T>) -> Self {
        let mut v = Self {
            items: [T::default(); N],
            len: 0,
        };
        for (slot, item) in v.items.iter_mut().zip(iter) {
            *slot = item;
            v.len += 1;
        }
        v
    }

    /// Like [`Inline::collect`], stopping at the first error.
    pub fn try_collect<E>(iter: impl IntoIterator<Item = Result<T, E>>) -> Result<Self, E> {
        let mut v = Self::collect(core::iter::empty());
        for (slot, item) in v.items.iter_mut().zip(iter) {
            *slot = item?;
            v.len += 1;
        }
        Ok(v)
    }
}

impl<T: Copy + Default, const N: usize> core::ops::Deref for Inline<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for Inline<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for Inline<T, N> {}

impl<T: Copy + Default + core::fmt::Debug, const N: usize> core::fmt::Debug for Inline<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read, write, flush or barrier with its segments inline.
    Data {
        /// Echoed id.
        id: u64,
        /// The operation.
        op: DataOp,
        /// First 512-byte sector.
        sector: u64,
        /// The segments (empty only for flush / barrier).
        segs: Inline<Segment, BLKIF_MAX_SEGMENTS_PER_REQUEST>,
    },
    /// An indirect read or write; its segments are in granted pages still
    /// to be copied and checked with [`parse_indirect_segments`].
    Indirect {
        /// Echoed id.
        id: u64,
        /// Read or write.
        op: DataOp,
        /// First 512-byte sector.
        sector: u64,
        /// Segments in the indirect pages.
        nr_segments: u16,
        /// The indirect pages (exactly as many as `nr_segments` needs).
        pages: Inline<GrantRef, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST>,
    },
    /// Discard a range.
    Discard {
        /// Echoed id.
        id: u64,
        /// First 512-byte sector.
        sector: u64,
        /// Sectors.
        nr_sectors: u64,
        /// `BLKIF_DISCARD_SECURE` asked.
        secure: bool,
    },
}

impl Request {
    /// The id to echo.
    pub fn id(&self) -> u64 {
        match self {
            Request::Data { id, .. }
            | Request::Indirect { id, .. }
            | Request::Discard { id, .. } => *id,
        }
    }
}

/// Why a request is refused (answered with an error, the ring stays up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Unknown or unoffered operation.
    #[error("operation {0} is not supported")]
    Unsupported(u8),
    /// Segment count outside the allowed range.
    #[error("{got} segments (allowed {min}..={max})")]
    SegmentCount {
        /// Count in the request.
        got: u32,
        /// Minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
    /// A segment with `first_sect > last_sect` or past the page.
    #[error("segment sectors {first}..={last} are invalid")]
    BadSegment {
        /// first_sect.
        first: u8,
        /// last_sect.
        last: u8,
    },
    /// The sector range overflows or leaves the disk, or is misaligned.
    #[error("sector range is outside the disk or misaligned")]
    Range,
    /// A grant could not be copied or mapped.
    #[error("a grant could not be copied or mapped")]
    Grant,
    /// The disk is read-only.
    #[error("disk is read-only")]
    ReadOnly,
}

/// Limits the back end published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `feature-max-indirect-segments` (0: indirect not offered).
    pub max_indirect_segments: u16,
    /// `feature-discard`.
    pub discard: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
}

fn reinterpret<T: FromBytes>(raw: &BlkifRequest) -> T {
    // Every blkif request layout is a prefix of the 112-byte slot.
    match T::read_from_prefix(raw.as_bytes()) {
        Ok((v, _)) => v,
        Err(_) => unreachable!("blkif request variants fit in a slot (checked in the abi crate)"),
    }
}

/// The operation a response to `raw` names. For an indirect request that is
/// the inner `indirect_op`, not `BLKIF_OP_INDIRECT`: Linux's blkback answers
/// so, and hardened Linux blkfront disables the disk on any other value.
pub fn response_operation(raw: &BlkifRequest) -> u8 {
    if raw.operation == BLKIF_OP_INDIRECT {
        let r: BlkifRequestIndirect = reinterpret(raw);
        r.indirect_op
    } else {
        raw.operation
    }
}

/// Parses the private copy of a slot. On `Err`, answer `(id, operation)`
/// with `BLKIF_RSP_ERROR` (or `EOPNOTSUPP` for [`Reject::Unsupported`]).
pub fn parse(raw: &BlkifRequest, limits: &Limits) -> Result<Request, Reject> {
    let id = raw.id;
    let data = |op: DataOp, min: u32| -> Result<Request, Reject> {
        let n = u32::from(raw.nr_segments);
        let max = BLKIF_MAX_SEGMENTS_PER_REQUEST as u32;
        if n < min || n > max {
            return Err(Reject::SegmentCount { got: n, min, max });
        }
        let segs = Inline::try_collect(raw.seg[..n as usize].iter().map(Segment::parse))?;
        Ok(Request::Data {
            id,
            op,
            sector: raw.sector_number,
            segs,
        })
    };
    match raw.operation {
        BLKIF_OP_READ => data(DataOp::Read, 1),
        BLKIF_OP_WRITE => data(DataOp::Write, 1),
        BLKIF_OP_FLUSH_DISKCACHE if limits.flush => data(DataOp::Flush, 0),
        BLKIF_OP_WRITE_BARRIER if limits.barrier => data(DataOp::Barrier, 0),
        BLKIF_OP_DISCARD if limits.discard => {
            let d: BlkifRequestDiscard = reinterpret(raw);
            Ok(Request::Discard {
                id: d.id,
                sector: d.sector_number,
                nr_sectors: d.nr_sectors,
                secure: d.flag & BLKIF_DISCARD_SECURE != 0,
            })
        }
        BLKIF_OP_INDIRECT if limits.max_indirect_segments > 0 => {
            let r: BlkifRequestIndirect = reinterpret(raw);
            let op = match r.indirect_op {
                BLKIF_OP_READ => DataOp::Read,
                BLKIF_OP_WRITE => DataOp::Write,
                other => return Err(Reject::Unsupported(other)),
            };
            let n = r.nr_segments;
            if n == 0 || n > limits.max_indirect_segments {
                return Err(Reject::SegmentCount {
                    got: u32::from(n),
                    min: 1,
                    max: u32::from(limits.max_indirect_segments),
                });
            }
            let npages = usize::from(n).div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME);
            if npages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
                return Err(Reject::SegmentCount {
                    got: u32::from(n),
                    min: 1,
                    max: (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME)
                        as u32,
                });
            }
            Ok(Request::Indirect {
                id: r.id,
                op,
                sector: r.sector_number,
                nr_segments: n,
                pages: Inline::collect(r.indirect_grefs[..npages].iter().map(|&g| GrantRef(g))),
            })
        }
        other => Err(Reject::Unsupported(other)),
    }
}

/// Parses `n` segment descriptors from a private copy of the indirect pages.
pub fn parse_indirect_segments(copy: &[u8], n: usize) -> Result<Vec<Segment>, Reject> {
    let mut segs = Vec::new();
    parse_indirect_segments_into(copy, n, &mut segs)?;
    Ok(segs)
}

/// Like [`parse_indirect_segments`], into `segs` (cleared first; a back
/// end reuses one vector for every request).
pub fn parse_indirect_segments_into(
    copy: &[u8],
    n: usize,
    segs: &mut Vec<Segment>,
) -> Result<(), Reject> {
    segs.clear();
    let size = core::mem::size_of::<BlkifRequestSegment>();
    if copy.len() < n * size {
        return Err(Reject::SegmentCount {
            got: n as u32,
            min: 1,
            max: (copy.len() / size) as u32,
        });
    }
    for c in copy[..n * size].chunks_exact(size) {
        let seg = match BlkifRequestSegment::read_from_bytes(c) {
            Ok(raw) => Segment::parse(&raw)?,
            Err(_) => return Err(Reject::BadSegment { first: 0, last: 0 }),
        };
        segs.push(seg);
    }
    Ok(())
}

/// Total 512-byte sectors of `segs`.
pub fn total_sectors(segs: &[Segment]) -> u64 {
    segs.iter()
        .map(|s| u64::from(s.last_sect - s.first_sect + 1))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        max_indirect_segments: 64,
        discard: true,
        flush: true,
        barrier: false,
    };

    fn rw(op: u8, n: u8) -> BlkifRequest {
        let mut r = BlkifRequest {
            operation: op,
            nr_segments: n,
            id: 7,
            sector_number: 16,
            ..Default::default()
        };
        for s in r.seg.iter_mut() {
            s.gref = 9;
            s.last_sect = 7;
        }
        r
    }

    #[test]
    fn segment_counts_and_ranges_are_checked() {
        assert!(matches!(
            parse(&rw(BLKIF_OP_READ, 1), &LIM),
            Ok(Request::Data { .. })
        ));
        assert!(matches!(
            parse(&rw(BLKIF_OP_READ, 11), &LIM),
            Ok(Request::Data { .. })
        ));
        assert!(matches!(
            parse(&rw(BLKIF_OP_READ, 0), &LIM),
            Err(Reject::SegmentCount { .. })
        ));
        assert!(matches!(
            parse(&rw(BLKIF_OP_WRITE, 12), &LIM),
            Err(Reject::SegmentCount { .. })
        ));
        assert!(parse(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0), &LIM).is_ok());
        assert_eq!(
            parse(&rw(BLKIF_OP_WRITE_BARRIER, 0), &LIM),
            Err(Reject::Unsupported(BLKIF_OP_WRITE_BARRIER))
        );
        let mut r = rw(BLKIF_OP_READ, 2);
        r.seg[1].first_sect = 5;
        r.seg[1].last_sect = 4;
        assert!(matches!(parse(&r, &LIM), Err(Reject::BadSegment { .. })));
        r.seg[1].first_sect = 0;
        r.seg[1].last_sect = 8;
        assert!(matches!(parse(&r, &LIM), Err(Reject::BadSegment { .. })));
    }

    #[test]
    fn indirect_counts_are_checked() {
        let mk = |n: u16, op: u8| {
            let ind = BlkifRequestIndirect {
                operation: BLKIF_OP_INDIRECT,
                indirect_op: op,
                nr_segments: n,
                id: 3,
                ..Default::default()
            };
            let mut r = BlkifRequest::default();
            r.as_mut_bytes()[..64].copy_from_slice(ind.as_bytes());
            r
        };
        match parse(&mk(64, BLKIF_OP_WRITE), &LIM) {
            Ok(Request::Indirect { pages, id, .. }) => {
                assert_eq!(pages.len(), 1);
                assert_eq!(id, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&mk(65, BLKIF_OP_READ), &LIM).is_err());
        assert!(parse(&mk(0, BLKIF_OP_READ), &LIM).is_err());
        assert!(parse(&mk(u16::MAX, BLKIF_OP_READ), &LIM).is_err());
        assert!(parse(&mk(4, BLKIF_OP_DISCARD), &LIM).is_err());
        let bytes = [0u8; 16];
        assert!(parse_indirect_segments(&bytes, 3).is_err());
    }
}
