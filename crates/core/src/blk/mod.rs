//! The block device (blkif): front end, back end and their XenBus handshake.
//!
//! One shared ring of 112-byte slots carries requests from the front end
//! (the guest's disk driver) to the back end (the domain that owns the
//! storage) and responses back, with one event channel as doorbell. Data
//! lives in pages the front end grants for each request (or, with
//! `feature-persistent`, in a pool of pages granted once and reused);
//! requests with more than 11 segments put their segment list in granted
//! *indirect* pages.
//!
//! The design, in the order a reader needs it:
//!
//! * [`wire`] — the requests as the back end sees them: a slot copied once
//!   out of the ring, then parsed into an owned, validated [`wire::Request`]
//!   (segment counts, sector ranges inside a page, indirect page counts).
//!   Nothing is ever re-read from shared memory after validation.
//! * [`front`] — [`BlkFront`] owns the front end's long-lived resources
//!   (exporter, event handle, the ring pages, the persistent pool);
//!   [`BlkFront::connect`] runs the handshake and returns a [`Disk`], which
//!   borrows the ring and offers `read_at` / `write_at` / `flush` /
//!   `discard` plus a submit / complete API with many requests in flight.
//!   Every response is copied once and checked by [`crate::ring::Outstanding`]
//!   (id in range and outstanding, opcode as sent) after the ring checked the
//!   producer index. Per-request grants are revoked with
//!   [`crate::grant::Share::try_unshare`]; a back end that still maps one
//!   after answering (Linux XSA-396) breaks the disk and the page goes to
//!   quarantine — it is never reused.
//! * [`back`] — [`BlkBack`] serves a [`BlockStorage`]: it publishes its
//!   features, maps the ring, validates every request and answers even bad
//!   ones with `BLKIF_RSP_ERROR` (a grant the front end did not give it, a
//!   sector outside the disk, a malformed segment). Only ring-level
//!   violations (a producer index out of bounds) break it. Data moves by
//!   grant copy, or — with persistent grants — straight between the storage
//!   and the mapped pages (`preadv` / `pwritev` for an image file).
//!
//! Both ends keep their ring indices privately ([`crate::ring`]) and turn
//! every peer violation into a typed [`BlkError`] and a broken state: never
//! a panic, an endless loop or a reused page.
//!
//! Timeouts: with the `std` feature deadlines use the monotonic clock;
//! without it, every wait slice is charged in full (an event flood makes a
//! timeout come sooner, never later).

#![forbid(unsafe_code)]

pub mod back;
pub mod front;
pub mod wire;

pub use back::{BackConfig, BackExit, BlkBack};
pub use front::{BlkFront, Completion, Disk, FrontConfig, IoKind, Tag};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub(crate) use crate::deadline::Deadline;
pub use crate::error::DeviceError;
use crate::mem::{ReadOnly, SharedMem};

/// The XenBus device type of virtual block devices.
pub const DEVTYPE: &str = "vbd";

/// Largest ring order either end accepts (16 pages, 512 slots).
pub const MAX_RING_ORDER: u32 = 4;

/// Bytes in a 512-byte blkif sector.
pub const SECTOR: u64 = 512;

/// Sectors in one 4 KiB data page.
pub const SECTORS_PER_PAGE: u8 = (xenshare_abi::PAGE_SIZE / SECTOR as usize) as u8;

/// A failure of the host side of a back end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// An OS error, as errno.
    #[error("storage i/o error: errno {0}")]
    Os(i32),
    /// The operation is not supported by this storage.
    #[error("storage does not support {0}")]
    Unsupported(&'static str),
    /// The access is outside the storage.
    #[error("access at {offset} of {len} bytes is outside the storage")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// One read of a [`BlockStorage::read_batch_to_shared`] batch: `len` bytes
/// at `offset` into the windows of `dst`, filled one after another.
pub struct SharedRead<'a, 'm> {
    /// Byte offset (a multiple of the sector size).
    pub offset: u64,
    /// Length in bytes; the windows must add up to exactly this.
    pub len: u64,
    /// Where the bytes go.
    pub dst: &'a [SharedMem<'m>],
    /// The outcome, set by the storage. Success means every byte was
    /// read (never a short read).
    pub result: Result<(), StorageError>,
}

impl core::fmt::Debug for SharedRead<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedRead")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("windows", &self.dst.len())
            .field("result", &self.result)
            .finish()
    }
}

/// The host side of a block back end: where the sectors really live.
///
/// Offsets and lengths are in bytes and always multiples of
/// [`BlockStorage::sector_size`]; the back end checks them against
/// [`BlockStorage::size`] before calling.
pub trait BlockStorage: Send {
    /// Size in bytes (a multiple of the sector size).
    fn size(&self) -> u64;
    /// Logical sector size in bytes (512 or 4096).
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    /// Whether writes must be refused.
    fn read_only(&self) -> bool {
        false
    }
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
    /// Writes `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), StorageError>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), StorageError>;
    /// Forgets `len` bytes at `offset`; later reads return zeroes.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), StorageError>;

    /// Reads `len` bytes at `offset` straight into shared memory: into the
    /// windows `dst` yields, filled one after another. The windows must
    /// add up to exactly `len` bytes (otherwise nothing is promised about
    /// what was read, and the result is an error).
    ///
    /// The back end calls this for pages the front end mapped for it. The
    /// default goes through a page-sized buffer on the stack (one copy, no
    /// allocation); a storage with vectored I/O (`preadv`) overrides it to
    /// read with no copy at all.
    fn read_to_shared<'m>(
        &mut self,
        offset: u64,
        len: u64,
        dst: &mut dyn Iterator<Item = SharedMem<'m>>,
    ) -> Result<(), StorageError> {
        let mut buf = [0u8; xenshare_abi::PAGE_SIZE];
        let mut at = 0u64;
        for w in dst {
            let mut done = 0;
            while done < w.len() {
                let n = (w.len() - done).min(buf.len());
                let end = at.checked_add(n as u64).filter(|&e| e <= len);
                let end = end.ok_or(StorageError::OutOfRange { offset, len })?;
                self.read_at(offset + at, &mut buf[..n])?;
                w.write(done, &buf[..n])
                    .map_err(|_| StorageError::OutOfRange { offset, len })?;
                done += n;
                at = end;
            }
        }
        if at != len {
            return Err(StorageError::OutOfRange { offset, len });
        }
        Ok(())
    }

    /// Several reads at once, each as [`BlockStorage::read_to_shared`]
    /// would do it, its outcome stored in its [`SharedRead::result`]. The
    /// back end hands over every read it took off the ring in one pass, so
    /// a storage that can submit them together (`io_uring` for a file)
    /// pays one system call for all. When it returns, nothing may still be
    /// writing into any window. The default reads them one by one.
    fn read_batch_to_shared(&mut self, reads: &mut [SharedRead<'_, '_>]) {
        for r in reads.iter_mut() {
            r.result = self.read_to_shared(r.offset, r.len, &mut r.dst.iter().copied());
        }
    }

    /// Writes `len` bytes at `offset` straight from shared memory: from the
    /// windows `src` yields, one after another, which must add up to
    /// exactly `len` bytes (otherwise part may be written, and the result
    /// is an error). The peer may change the windows while they are
    /// written; that is its own data. The default goes through a page-sized
    /// stack buffer; a storage with vectored I/O (`pwritev`) overrides it.
    fn write_from_shared<'m>(
        &mut self,
        offset: u64,
        len: u64,
        src: &mut dyn Iterator<Item = SharedMem<'m, ReadOnly>>,
    ) -> Result<(), StorageError> {
        let mut buf = [0u8; xenshare_abi::PAGE_SIZE];
        let mut at = 0u64;
        for w in src {
            let mut done = 0;
            while done < w.len() {
                let n = (w.len() - done).min(buf.len());
                let end = at.checked_add(n as u64).filter(|&e| e <= len);
                let end = end.ok_or(StorageError::OutOfRange { offset, len })?;
                w.read(done, &mut buf[..n])
                    .map_err(|_| StorageError::OutOfRange { offset, len })?;
                self.write_at(offset + at, &buf[..n])?;
                done += n;
                at = end;
            }
        }
        if at != len {
            return Err(StorageError::OutOfRange { offset, len });
        }
        Ok(())
    }
}

/// What the back end offers, as the front end read it from XenStore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `discard-granularity` in bytes (0 if not given).
    pub discard_granularity: u64,
    /// `discard-alignment` in bytes.
    pub discard_alignment: u64,
    /// `feature-max-indirect-segments` (0: no indirect requests).
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `max-ring-page-order`.
    pub max_ring_order: u32,
}

/// The disk as the back end describes it at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors (`sectors`).
    pub sectors: u64,
    /// Logical sector size in bytes (`sector-size`).
    pub sector_size: u32,
    /// `VDISK_*` bits (`info`).
    pub info: u32,
    /// What the back end offered.
    pub features: Features,
    /// Whether both ends agreed on persistent grants.
    pub persistent: bool,
    /// The ring order in use.
    pub ring_order: u32,
    /// Ring slots.
    pub ring_size: u32,
    /// Segments per request the front end uses (11, or the indirect limit).
    pub max_segments: u32,
}

impl DiskInfo {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.sectors.saturating_mul(SECTOR)
    }

    /// Whether the back end marked the disk read-only.
    pub fn read_only(&self) -> bool {
        self.info & xenshare_abi::blkif::VDISK_READONLY != 0
    }
}

/// Errors of the block device, both ends: the [`DeviceError`] core every
/// driver shares, and what is specific to blkif.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlkError {
    /// A failure every driver can have (grant, map, event channel,
    /// XenStore, ring, a bad key, the peer's state, a timeout, closed).
    #[error(transparent)]
    Core(#[from] DeviceError),
    /// The host storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The back end answered `BLKIF_RSP_ERROR` (or an unknown status).
    #[error("the back end failed the request (status {0})")]
    Io(i16),
    /// The back end answered `BLKIF_RSP_EOPNOTSUPP`, or did not offer the
    /// feature at all.
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// An offset or length is not a multiple of the sector size.
    #[error("offset {offset} / length {len} not aligned to {align}-byte sectors")]
    Misaligned {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Required alignment.
        align: u32,
    },
    /// An access beyond the end of the disk.
    #[error("access at {offset} of {len} bytes is beyond the disk ({size} bytes)")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// A single submitted request larger than one ring request can carry.
    #[error("request of {len} bytes exceeds the {max}-byte limit of one ring request")]
    TooLarge {
        /// Asked.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A write to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// The back end kept a grant mapped after answering its request (the
    /// XSA-396 pattern): the page is quarantined and the disk is broken.
    #[error("back end kept {0} grant(s) mapped after responding; disk is broken")]
    GrantStillMapped(usize),
    /// An earlier call on this disk unwound mid-way (a
    /// [`crate::blk::Disk::read_with`] or
    /// [`crate::blk::Disk::wait_all_with`] closure panicked): a
    /// `read_with` leaves requests in flight whose answers could not be
    /// told from a later call's, a `wait_all_with` loses the completion it
    /// was showing. The disk is broken rather than risk showing one call's
    /// data to another.
    #[error("an earlier call on this disk was interrupted by a panic; disk is broken")]
    Interrupted,
    /// An earlier violation broke the device; see the device's `error()`.
    #[error("device is broken: {0}")]
    Broken(String),
}

crate::wrap_device_error!(BlkError);

impl crate::latch::Fault for BlkError {
    /// Every call after the disk broke fails with [`BlkError::Broken`],
    /// naming the first cause.
    fn broken(cause: &BlkError) -> BlkError {
        BlkError::Broken(alloc::string::ToString::to_string(cause))
    }
}

impl BlkError {
    /// Whether this error means the device can no longer be used.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            BlkError::Io(_)
                | BlkError::NotSupported(_)
                | BlkError::Misaligned { .. }
                | BlkError::OutOfRange { .. }
                | BlkError::TooLarge { .. }
                | BlkError::ReadOnly
                | BlkError::Storage(_)
        )
    }
}

/// How many times a XenStore transaction is retried on conflict.
pub(crate) use crate::store::xenbus::XS_RETRIES;

/// Decimal text for a XenStore value.
pub(crate) fn dec(v: impl core::fmt::Display) -> Vec<u8> {
    format!("{v}").into_bytes()
}
