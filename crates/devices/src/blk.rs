//! The host side of the block device: a raw image file as
//! [`BlockStorage`], and helpers that run a blkfront / blkback pair on the
//! emulator.
//!
//! [`FileStorage`] serves a raw (possibly sparse) image with real file I/O:
//! `pread` / `pwrite`, `fdatasync` for flushes and
//! `fallocate(PUNCH_HOLE | KEEP_SIZE)` for discards, falling back to writing
//! zeroes where the file system cannot punch holes.
//!
//! [`BlkWorld`] is an emulated machine for one disk: a hypervisor, dom0 as
//! the back-end domain, one guest and an in-process XenStore. It does the
//! toolstack's part ([`BlkWorld::create_vbd`]), runs a back end on its own
//! thread ([`BlkWorld::spawn_backend`], which serves one connection after
//! another until stopped or broken) and builds front ends for the guest.
//! Tests, `xenshare bench blk` and the demo ([`demo_disk`]) use it.

use std::fs::{File, OpenOptions};
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use xenshare::blk::{BackConfig, BackExit, BlkBack, BlkError, BlkFront, BlockStorage, FrontConfig};
use xenshare::blk::{SharedRead, StorageError, DEVTYPE};
use xenshare::mem::{ReadOnly, SharedMem};
use xenshare::store::client::{Client, ClientError};
use xenshare::store::xenbus::{
    attach_device, create_device, remove_device, DevicePaths, DeviceSpec,
};
use xenshare::DomId;
use xenshare_sim::{DomainConfig, SimEvtchn, SimGrantBackend, SimMapper};
use xenshare_xenstored::inproc::InProcTransport;

/// A raw disk image file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    size: u64,
    sector_size: u32,
    read_only: bool,
    punch_holes: bool,
    uring: Uring,
    /// Entries asked for when io_uring is set up ([`URING_ENTRIES`]; the
    /// tests ask for an impossible 0 to make the set-up fail).
    uring_entries: u32,
}

/// Reads one io_uring submission carries at most (larger batches go in
/// several submissions).
const URING_ENTRIES: usize = 32;

/// Whether a [`FileStorage`] reads batches through io_uring.
enum Uring {
    /// Not set up yet: made on the first batch of two or more reads.
    Untried,
    /// Set up.
    On(Box<UringState>),
    /// Not used: turned off, refused by the kernel (too old, disabled by
    /// `kernel.io_uring_disabled` or a seccomp filter) or failed once.
    Off,
}

impl core::fmt::Debug for Uring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Uring::Untried => "Untried",
            Uring::On(_) => "On",
            Uring::Off => "Off",
        })
    }
}

/// What became of one read of an io_uring chunk.
#[derive(Clone, Copy)]
enum Slot {
    /// Refused before submission; its `result` is set.
    Refused,
    /// Checked, not submitted (yet).
    NotRun,
    /// Handed to the kernel, not reaped.
    Submitted,
    /// Finished with this raw result (bytes read or `-errno`).
    Done(i32),
}

/// An io_uring instance and the iovec array its vectored reads point into
/// (kept across batches: no allocation per batch once grown).
struct UringState {
    ring: io_uring::IoUring,
    iov: Vec<Iovec>,
    /// The image file is registered with the ring as fixed file 0.
    fixed: bool,
}

/// A `libc::iovec` that may move between threads with its storage.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Iovec(libc::iovec);

// SAFETY: an `Iovec` is only an address and a length; it is written and
// handed to the kernel only inside one `&mut FileStorage` call that owns
// the windows' borrow, never dereferenced by us, and stale afterwards (each
// batch rewrites the array before use). Moving the storage to another
// thread between calls moves no access to the memory it once named.
unsafe impl Send for Iovec {}

fn os_err(e: std::io::Error) -> StorageError {
    StorageError::Os(e.raw_os_error().unwrap_or(libc_eio()))
}

const fn libc_eio() -> i32 {
    5
}

impl FileStorage {
    /// Opens an existing image. Its size is rounded down to whole 512-byte
    /// sectors.
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    /// Creates (or truncates) a sparse image of `size` bytes.
    pub fn create(path: &Path, size: u64) -> std::io::Result<Self> {
        if !size.is_multiple_of(512) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("image size {size} is not a multiple of 512"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Self::from_file(file, false)
    }

    /// Wraps an open file.
    pub fn from_file(file: File, read_only: bool) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            size: len - len % 512,
            sector_size: 512,
            read_only,
            punch_holes: true,
            uring: Uring::Untried,
            uring_entries: URING_ENTRIES as u32,
        })
    }

    /// Reads batches of guest pages through io_uring (`on`, the default:
    /// one system call for a batch, where the kernel allows it) or with one
    /// `preadv` each (`off`). Without io_uring, or when setting it up
    /// fails, every read goes by `preadv`: the same results, more system
    /// calls.
    pub fn with_io_uring(mut self, on: bool) -> Self {
        self.uring = if on { Uring::Untried } else { Uring::Off };
        self
    }

    /// Whether batches of reads went through io_uring (false before the
    /// first batch of two or more reads, and after a fallback).
    pub fn io_uring_in_use(&self) -> bool {
        matches!(self.uring, Uring::On(_))
    }

    /// Uses a logical sector size of `size` bytes (512 or 4096); the image
    /// size is rounded down to it.
    pub fn with_sector_size(mut self, size: u32) -> std::io::Result<Self> {
        if !(size == 512 || size == 4096) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("sector size {size} is not 512 or 4096"),
            ));
        }
        self.sector_size = size;
        self.size -= self.size % u64::from(size);
        Ok(self)
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(StorageError::OutOfRange { offset, len }),
        }
    }

    fn write_zeroes(&self, mut offset: u64, mut len: u64) -> Result<(), StorageError> {
        let zero = vec![0u8; 64 * 1024];
        while len > 0 {
            let n = len.min(zero.len() as u64) as usize;
            self.file.write_all_at(&zero[..n], offset).map_err(os_err)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }
}

impl BlockStorage for FileStorage {
    fn size(&self) -> u64 {
        self.size
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.check(offset, buf.len() as u64)?;
        // A sparse image reads holes as zeroes; a short file (shrunk under
        // us) reads as an error.
        self.file.read_exact_at(buf, offset).map_err(os_err)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), StorageError> {
        self.check(offset, buf.len() as u64)?;
        if self.read_only {
            return Err(StorageError::Unsupported("writes to a read-only image"));
        }
        self.file.write_all_at(buf, offset).map_err(os_err)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(os_err)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.check(offset, len)?;
        if self.read_only {
            return Err(StorageError::Unsupported("discard on a read-only image"));
        }
        if self.punch_holes {
            use rustix::fs::{fallocate, FallocateFlags};
            match fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
                    self.punch_holes = false;
                }
                Err(e) => return Err(StorageError::Os(e.raw_os_error())),
            }
        }
        self.write_zeroes(offset, len)
    }

    fn read_to_shared<'m>(
        &mut self,
        offset: u64,
        len: u64,
        dst: &mut dyn Iterator<Item = SharedMem<'m>>,
    ) -> Result<(), StorageError> {
        self.vectored(
            Dir::Read,
            offset,
            len,
            &mut dst.map(|w| (w.as_mut_ptr(), w.len())),
        )
    }

    fn read_batch_to_shared(&mut self, reads: &mut [SharedRead<'_, '_>]) {
        let mut from = 0;
        if reads.len() >= 2 {
            while from < reads.len() {
                let end = (from + URING_ENTRIES).min(reads.len());
                let chunk = &mut reads[from..end];
                let mut raw = [Slot::Refused; URING_ENTRIES];
                if !self.uring_chunk(chunk, &mut raw) {
                    break;
                }
                for (r, res) in chunk.iter_mut().zip(raw) {
                    r.result = match res {
                        Slot::Refused => continue,
                        Slot::Done(res) => self.finish_uring_read(r, res),
                        // Never with an empty queue of `URING_ENTRIES`;
                        // a `Submitted` entry was reaped, so it is `Done`.
                        Slot::NotRun | Slot::Submitted => {
                            self.read_to_shared(r.offset, r.len, &mut r.dst.iter().copied())
                        }
                    };
                }
                from = end;
            }
        }
        for r in &mut reads[from..] {
            r.result = self.read_to_shared(r.offset, r.len, &mut r.dst.iter().copied());
        }
    }

    fn write_from_shared<'m>(
        &mut self,
        offset: u64,
        len: u64,
        src: &mut dyn Iterator<Item = SharedMem<'m, ReadOnly>>,
    ) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::Unsupported("writes to a read-only image"));
        }
        // pwritev only reads through the pointers.
        let mut src = src.map(|w| (w.as_ptr().cast_mut(), w.len()));
        self.vectored(Dir::Write, offset, len, &mut src)
    }
}

/// Most windows handed to one `preadv` / `pwritev` (a 1 MiB request of
/// 4 KiB pages is 256); longer lists take several calls.
const IOV_BATCH: usize = 256;

/// Which way [`FileStorage::vectored`] moves data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// File to memory (`preadv`).
    Read,
    /// Memory to file (`pwritev`).
    Write,
}

impl FileStorage {
    /// `len` bytes at `offset` between the file and the windows `(address,
    /// length)` that `windows` yields, with `preadv` / `pwritev`: the kernel
    /// copies straight between the page cache and the (shared) pages, and
    /// no Rust reference to them is ever made. Short transfers are resumed;
    /// the end of the file before `len` bytes is an error, as is a window
    /// list that does not add up to `len`.
    fn vectored(
        &self,
        dir: Dir,
        offset: u64,
        len: u64,
        windows: &mut dyn Iterator<Item = (*mut u8, usize)>,
    ) -> Result<(), StorageError> {
        use std::os::fd::AsRawFd;
        let range_err = StorageError::OutOfRange { offset, len };
        self.check(offset, len)?;
        let fd = self.file.as_raw_fd();
        // Left uninitialised (a 4 KiB memset per request showed in the
        // profile); only `iov[..n]` is ever read.
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; IOV_BATCH];
        let mut at = 0u64;
        let mut windows = windows.peekable();
        while windows.peek().is_some() {
            // Fill a batch.
            let mut n = 0;
            let mut batch = 0u64;
            while n < IOV_BATCH {
                let Some((base, wlen)) = windows.next() else {
                    break;
                };
                iov[n].write(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: wlen,
                });
                batch += wlen as u64;
                n += 1;
            }
            if at.checked_add(batch).is_none_or(|end| end > len) {
                return Err(range_err);
            }
            // Move it, resuming after short transfers.
            let mut first = 0;
            while first < n {
                let pos = i64::try_from(offset + at).map_err(|_| range_err.clone())?;
                let cnt = (n - first) as libc::c_int;
                let p = iov[first..n].as_ptr().cast::<libc::iovec>();
                // SAFETY: `iov[first..n]` are initialised (written above;
                // MaybeUninit<iovec> has iovec's layout) and outlive the
                // call; every iovec names a window the caller vouched for
                // (inside a live `SharedMem`, writable for reads), and the
                // kernel only reads (pwritev) or writes (preadv) those
                // bytes; no Rust reference to them exists. One window (a
                // 4 KiB request) goes by plain pread / pwrite, which spares
                // the kernel importing an iovec array.
                let r = unsafe {
                    match (dir, cnt) {
                        (Dir::Read, 1) => libc::pread(fd, (*p).iov_base, (*p).iov_len, pos),
                        (Dir::Write, 1) => libc::pwrite(fd, (*p).iov_base, (*p).iov_len, pos),
                        (Dir::Read, _) => libc::preadv(fd, p, cnt, pos),
                        (Dir::Write, _) => libc::pwritev(fd, p, cnt, pos),
                    }
                };
                let done = match r {
                    r if r > 0 => r as usize,
                    // End of file before `len` (the file shrank under us).
                    0 => return Err(StorageError::Os(libc::EIO)),
                    _ => {
                        let e = std::io::Error::last_os_error();
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(os_err(e));
                    }
                };
                at += done as u64;
                // Skip whole windows done, trim a partly done one.
                let mut left = done;
                while first < n {
                    // SAFETY: `first < n`: initialised above.
                    let v = unsafe { iov[first].assume_init_mut() };
                    if left < v.iov_len {
                        // SAFETY: `left < iov_len`: the new base stays
                        // inside the same window.
                        v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                        v.iov_len -= left;
                        break;
                    }
                    left -= v.iov_len;
                    first += 1;
                }
            }
        }
        if at != len {
            return Err(range_err);
        }
        Ok(())
    }
}

impl FileStorage {
    /// Sets io_uring up if it has not been tried yet (on, with the image
    /// registered where the kernel allows; off for good where it refuses).
    fn start_uring(&mut self) {
        use std::os::fd::AsRawFd;
        if matches!(self.uring, Uring::Untried) {
            self.uring = match io_uring::IoUring::new(self.uring_entries) {
                Ok(ring) => {
                    // A registered file spares the kernel looking the fd
                    // up (and counting a reference) for every read: 3–6%
                    // more 4 KiB reads per second from the page cache here.
                    // Refused (an old kernel, a seccomp filter): plain fd.
                    let fixed = ring
                        .submitter()
                        .register_files(&[self.file.as_raw_fd()])
                        .is_ok();
                    Uring::On(Box::new(UringState {
                        ring,
                        iov: Vec::new(),
                        fixed,
                    }))
                }
                Err(_) => Uring::Off,
            };
        }
    }

    /// Reads `chunk` (at most [`URING_ENTRIES`] reads) with one io_uring
    /// submission, putting each submitted read's raw result (bytes or
    /// `-errno`) in `raw`; a read refused before submission (outside the
    /// image, windows that do not add up) gets its `result` directly
    /// (`Slot::Refused`), one the queue did not take stays `NotRun`.
    /// Returns only once the kernel has finished every read it was given.
    /// False if io_uring cannot be used (then nothing was submitted or
    /// everything submitted has finished, and it is turned off for good):
    /// the caller reads the chunk with `preadv`.
    fn uring_chunk(
        &mut self,
        chunk: &mut [SharedRead<'_, '_>],
        raw: &mut [Slot; URING_ENTRIES],
    ) -> bool {
        use io_uring::{opcode, types};
        use std::os::fd::AsRawFd;
        self.start_uring();
        // Check every read and lay out its iovecs before any pointer into
        // the array is taken (it does not move after this loop).
        let mut plan = [(0usize, 0usize); URING_ENTRIES];
        let mut ok = [false; URING_ENTRIES];
        let (size, fd) = (self.size, self.file.as_raw_fd());
        let Uring::On(u) = &mut self.uring else {
            return false;
        };
        u.iov.clear();
        for (k, r) in chunk.iter_mut().enumerate() {
            let start = u.iov.len();
            let total: u64 = r.dst.iter().map(|w| w.len() as u64).sum();
            let in_range = r.offset.checked_add(r.len).is_some_and(|e| e <= size);
            if !in_range || total != r.len || r.dst.len() > IOV_BATCH || r.len > u64::from(u32::MAX)
            {
                r.result = Err(StorageError::OutOfRange {
                    offset: r.offset,
                    len: r.len,
                });
                continue;
            }
            u.iov.extend(r.dst.iter().map(|w| {
                Iovec(libc::iovec {
                    iov_base: w.as_mut_ptr().cast(),
                    iov_len: w.len(),
                })
            }));
            plan[k] = (start, r.dst.len());
            ok[k] = true;
            raw[k] = Slot::NotRun;
        }
        let mut sq = u.ring.submission();
        if sq.capacity() - sq.len() < chunk.len() {
            drop(sq);
            self.uring = Uring::Off;
            return false;
        }
        let mut n = 0;
        for (k, r) in chunk.iter().enumerate().filter(|&(k, _)| ok[k]) {
            let (start, cnt) = plan[k];
            let Some(iov) = u.iov.get(start..start + cnt) else {
                continue;
            };
            // A one-window read (a 4 KiB page) goes as a plain read. The
            // two kinds of file target are distinct types, hence the macro.
            macro_rules! entry {
                ($file:expr) => {
                    if let [one] = iov {
                        let (base, len) = (one.0.iov_base.cast(), one.0.iov_len as u32);
                        opcode::Read::new($file, base, len).offset(r.offset).build()
                    } else {
                        opcode::Readv::new($file, iov.as_ptr().cast(), cnt as u32)
                            .offset(r.offset)
                            .build()
                    }
                };
            }
            let e = if u.fixed {
                entry!(types::Fixed(0))
            } else {
                entry!(types::Fd(fd))
            };
            // SAFETY: the entry names windows of live `SharedMem`s
            // (borrowed for this whole call, writable: the back end's
            // persistently mapped pages) and, for a vectored read, `iov`,
            // which belongs to this storage and is neither moved nor
            // rewritten until the loop below has reaped every entry
            // submitted. This function does not return (and nothing in
            // between can panic) while the kernel may still write through
            // them: it waits for every completion, and gives up waiting
            // only when the kernel holds none of the entries (those still
            // queued die unsubmitted with the ring).
            if unsafe { sq.push(&e.user_data(k as u64)) }.is_err() {
                break;
            }
            raw[k] = Slot::Submitted;
            n += 1;
        }
        drop(sq);
        let mut reaped = 0;
        loop {
            for cqe in u.ring.completion() {
                if let Some(slot) = raw.get_mut(cqe.user_data() as usize) {
                    *slot = Slot::Done(cqe.result());
                }
                reaped += 1;
            }
            if reaped >= n {
                break;
            }
            match u.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => {
                    // Entries the kernel has not taken are never run once
                    // the ring is gone: with none in the kernel, give up
                    // on io_uring (the caller reads the chunk again with
                    // `preadv`). Those it took (a file read) still finish,
                    // and are waited for.
                    let queued = u.ring.submission().len();
                    if n - reaped <= queued {
                        self.uring = Uring::Off;
                        return false;
                    }
                    std::thread::yield_now();
                }
            }
        }
        true
    }

    /// The outcome of a read io_uring finished with `res` (bytes read or
    /// `-errno`): a short read, or one interrupted, is done again whole
    /// with `preadv` (reading is idempotent), never reported as success.
    fn finish_uring_read(&self, r: &SharedRead<'_, '_>, res: i32) -> Result<(), StorageError> {
        match res {
            n if n >= 0 && n as u64 == r.len => Ok(()),
            n if n >= 0 || n == -libc::EINTR || n == -libc::EAGAIN => self.vectored(
                Dir::Read,
                r.offset,
                r.len,
                &mut r.dst.iter().map(|w| (w.as_mut_ptr(), w.len())),
            ),
            n => Err(StorageError::Os(-n)),
        }
    }
}

/// Errors of the emulator helpers.
#[derive(Debug, thiserror::Error)]
pub enum BlkHostError {
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The block protocol failed.
    #[error("blk: {0}")]
    Blk(#[from] BlkError),
    /// XenStore failed.
    #[error("xenstore: {0}")]
    Store(#[from] ClientError),
    /// The emulator failed.
    #[error("emulator: {0}")]
    Sim(String),
    /// Data read back differs from what was written.
    #[error("verification failed: {0}")]
    Verify(String),
}

/// A front end on the emulator.
pub type SimFront = BlkFront<SimGrantBackend, SimEvtchn>;
/// A back end on the emulator.
pub type SimBack<S> = BlkBack<S, SimMapper, SimEvtchn>;
/// A connected disk of a [`SimFront`].
pub type SimDisk<'f> = xenshare::blk::Disk<'f, SimGrantBackend, SimEvtchn>;
/// A XenStore client of the in-process daemon.
pub type SimXs = Client<InProcTransport>;

/// The emulated machine the block helpers run on.
pub type BlkWorld = crate::machine::Machine;

impl From<crate::machine::MachineError> for BlkHostError {
    fn from(e: crate::machine::MachineError) -> Self {
        match e {
            crate::machine::MachineError::Sim(e) => BlkHostError::Sim(e.to_string()),
            crate::machine::MachineError::Store(e) => BlkHostError::Store(e),
        }
    }
}

/// Guest memory and grant table sized for 1 MiB requests with many in flight.
pub fn guest_config() -> DomainConfig {
    DomainConfig {
        mem_pages: 16384,
        grant_frames: 16,
        ..Default::default()
    }
}

impl BlkWorld {
    /// The toolstack's part: the `vbd` directories of device `devid`.
    pub fn create_vbd(&self, devid: u32) -> Result<DevicePaths, BlkHostError> {
        let mut c0 = self.client(&self.dom0);
        Ok(create_device(
            &mut c0,
            &DeviceSpec {
                devtype: DEVTYPE,
                devid,
                frontend: self.guest.id(),
                backend: self.dom0.id(),
                front_keys: &[
                    ("virtual-device", &devid.to_string()),
                    ("device-type", "disk"),
                ],
                back_keys: &[("mode", "w"), ("type", "file")],
            },
        )?)
    }

    /// A front end of the guest for `cfg.devid`.
    pub fn frontend(&self, cfg: FrontConfig) -> Result<SimFront, BlkHostError> {
        let evt = self
            .guest
            .evtchn()
            .map_err(|e| BlkHostError::Sim(e.to_string()))?;
        Ok(BlkFront::new(self.guest.exporter().clone(), evt, cfg))
    }

    /// A back end in dom0, not yet running.
    pub fn backend<S: BlockStorage>(
        &self,
        storage: S,
        cfg: BackConfig,
    ) -> Result<SimBack<S>, BlkHostError> {
        let evt = self
            .dom0
            .evtchn()
            .map_err(|e| BlkHostError::Sim(e.to_string()))?;
        Ok(BlkBack::new(
            self.dom0.importer().clone(),
            evt,
            storage,
            cfg,
        ))
    }

    /// Runs a back end on its own thread: one connection after another
    /// while the front end closes cleanly; it ends when stopped or when a
    /// connection ends in an error.
    pub fn spawn_backend<S: BlockStorage + 'static>(
        &self,
        storage: S,
        cfg: BackConfig,
    ) -> Result<BackendThread<S>, BlkHostError> {
        let back = self.backend(storage, cfg)?;
        let xs = self.client(&self.dom0);
        Ok(BackendThread::spawn(back, xs))
    }
}

/// What a back-end thread did, connection by connection.
pub type BackendRuns = Vec<Result<BackExit, BlkError>>;

/// A back end running on its own thread.
pub struct BackendThread<S: BlockStorage + 'static> {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(SimBack<S>, BackendRuns)>,
}

impl<S: BlockStorage + 'static> std::fmt::Debug for BackendThread<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendThread")
            .field("finished", &self.handle.is_finished())
            .finish()
    }
}

impl<S: BlockStorage + 'static> BackendThread<S> {
    /// Runs `back` with `xs` on a new thread.
    pub fn spawn(mut back: SimBack<S>, mut xs: SimXs) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut runs = Vec::new();
            loop {
                let r = back.run(&mut xs, &flag);
                let again = matches!(r, Ok(BackExit::FrontendClosed));
                runs.push(r);
                if !again || flag.load(Ordering::Relaxed) {
                    break;
                }
            }
            (back, runs)
        });
        Self { stop, handle }
    }

    /// Whether the thread has ended on its own.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the back end like [`BackendThread::stop`], but waits at most
    /// `timeout` for it: a back end still running then is handed back
    /// (its stop flag stays set).
    pub fn stop_within(
        self,
        timeout: std::time::Duration,
    ) -> Result<Result<(SimBack<S>, BackendRuns), BlkHostError>, Self> {
        self.stop.store(true, Ordering::Relaxed);
        let t = std::time::Instant::now();
        while !self.handle.is_finished() {
            if t.elapsed() >= timeout {
                return Err(self);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(self.stop())
    }

    /// Stops the back end (it unmaps everything and goes Closed) and
    /// returns it with the outcome of each connection.
    pub fn stop(self) -> Result<(SimBack<S>, BackendRuns), BlkHostError> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| BlkHostError::Sim("back-end thread panicked".into()))
    }
}

/// Brings up a disk on the emulator and exercises it, returning a
/// one-line summary for `xenshare demo --full`.
///
/// Creates a sparse `size_mib` MiB image at `image` (a temporary file if
/// `None`, removed afterwards), a dom0 back end serving it and a guest front
/// end; writes 1 MiB of patterned data with many requests in flight,
/// flushes, reads it back and compares, discards it and checks it reads as
/// zeroes, closes cleanly and checks that every grant was revoked.
pub fn demo_disk(image: Option<&Path>, size_mib: u64) -> Result<String, BlkHostError> {
    let tmp;
    let path = match image {
        Some(p) => p,
        None => {
            tmp = std::env::temp_dir().join(format!("xenshare-demo-{}.img", std::process::id()));
            &tmp
        }
    };
    let world = BlkWorld::new(guest_config())?;
    let r = demo_disk_at(&world, path, size_mib.max(2));
    if image.is_none() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Like [`demo_disk`], on an existing machine's guest (for a demo that brings
/// up several devices on one guest). The guest needs room for the disk's
/// grants: see [`guest_config`]. The image is a temporary file.
pub fn demo_disk_in(world: &BlkWorld, size_mib: u64) -> Result<String, BlkHostError> {
    let path = std::env::temp_dir().join(format!(
        "xenshare-demo-{}-d{}.img",
        std::process::id(),
        world.guest.id().0
    ));
    let r = demo_disk_at(world, &path, size_mib.max(2));
    let _ = std::fs::remove_file(&path);
    r
}

fn demo_disk_at(world: &BlkWorld, path: &Path, size_mib: u64) -> Result<String, BlkHostError> {
    const DEVID: u32 = 51712; // xvda
    world.create_vbd(DEVID)?;
    let storage = FileStorage::create(path, size_mib << 20)?;
    let backend = world.spawn_backend(storage, BackConfig::new(world.guest.id(), DEVID))?;
    let mut fe = world.frontend(FrontConfig::new(DEVID))?;
    let mut xs = world.client(&world.guest);
    let t = std::time::Instant::now();
    let summary = {
        let mut disk = fe.connect(&mut xs)?;
        let info = *disk.info();
        let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
        disk.write_at(4096, &data)?;
        disk.flush()?;
        let mut back = vec![0u8; data.len()];
        disk.read_at(4096, &mut back)?;
        if back != data {
            return Err(BlkHostError::Verify("read-back differs".into()));
        }
        disk.discard(4096, data.len() as u64)?;
        disk.read_at(4096, &mut back)?;
        if back.iter().any(|&b| b != 0) {
            return Err(BlkHostError::Verify("discarded range is not zero".into()));
        }
        disk.close(&mut xs)?;
        format!(
            "disk xvda: {} MiB image {}, {}-slot ring (order {}), {} segments/request{}, \
             persistent grants {}; wrote, flushed, read back and discarded 1 MiB in {:.1} ms",
            info.size_bytes() >> 20,
            path.display(),
            info.ring_size,
            info.ring_order,
            info.max_segments,
            if info.max_segments > 11 {
                " (indirect)"
            } else {
                ""
            },
            if info.persistent { "on" } else { "off" },
            t.elapsed().as_secs_f64() * 1e3,
        )
    };
    let released = fe.release();
    drop(fe);
    let (_, runs) = backend.stop()?;
    if let Some(Err(e)) = runs.into_iter().find(|r| r.is_err()) {
        return Err(e.into());
    }
    let st = world.guest.exporter().stats();
    if st.live != 0 || st.quarantined != 0 {
        return Err(BlkHostError::Verify(format!(
            "grants left behind: {st:?} ({released:?})"
        )));
    }
    Ok(format!("{summary}; all {} grants revoked", st.revoked))
}

/// The back-end type directory `xenshare blkback` uses by default: a
/// private name, so that Linux's `xen-blkback` (which binds `backend/vbd`)
/// leaves the device to us, as QEMU's `qdisk` does.
pub const USERSPACE_BACKEND_TYPE: &str = "xenshare-vbd";

/// A disk to attach to a guest, as `xl block-attach` would declare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbdAttach<'a> {
    /// The guest running the front end (Linux `xen-blkfront`).
    pub frontend: DomId,
    /// The domain running the back end (normally dom0).
    pub backend: DomId,
    /// The guest's device name (`xvdb`); its number is the device id.
    pub vdev: &'a str,
    /// The back end's type directory ([`USERSPACE_BACKEND_TYPE`], or
    /// [`DEVTYPE`] where no kernel back end runs).
    pub backend_type: &'static str,
    /// What the disk is, for people reading XenStore (the image path).
    pub params: &'a str,
    /// Offer the disk read-only (`mode` = `r`).
    pub read_only: bool,
}

/// The device id of an `xvd` name, as `xen-vbd-interface(7)` numbers them:
/// `202 << 8 | disk << 4 | partition` for disks `xvda`..`xvdp`, and
/// `1 << 28 | disk << 8 | partition` beyond (`xvdq`, `xvdaa`, ...).
/// Partitions are not accepted: a back end serves whole disks.
pub fn xvd_devid(name: &str) -> Option<u32> {
    let letters = name.strip_prefix("xvd")?;
    if letters.is_empty() || letters.len() > 3 || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    // Bijective base 26: a = 0, z = 25, aa = 26, ...
    let disk = letters
        .bytes()
        .fold(0u32, |n, b| n * 26 + u32::from(b - b'a') + 1)
        - 1;
    if disk < 16 {
        Some(202 << 8 | disk << 4)
    } else if disk < (1 << 20) {
        Some(1 << 28 | disk << 8)
    } else {
        None
    }
}

/// The toolstack's part of attaching a disk, written so that Linux's
/// front end accepts it: one transaction ([`attach_device`]) that creates
/// the back-end directory (owned by the back end, readable by the guest)
/// with its keys and `state` = Initialising, and the front-end directory
/// (owned by the guest, readable by the back end) with `backend`,
/// `backend-id`, `virtual-device` and `device-type` and `state` =
/// Initialising. Linux probes a new front-end device only when its `state`
/// reads 1 and its back-end directory is already readable; with everything
/// in one commit both hold when its watch fires. Needs a privileged (dom0)
/// client. Returns both paths.
pub fn attach_vbd<T: xenshare::store::Transport>(
    xs: &mut Client<T>,
    a: &VbdAttach<'_>,
) -> Result<DevicePaths, BlkHostError> {
    let devid = xvd_devid(a.vdev).ok_or_else(|| {
        BlkHostError::Verify(format!(
            "{:?} is not a whole-disk xvd name (xvda, xvdb, ...)",
            a.vdev
        ))
    })?;
    let id = devid.to_string();
    let mode = if a.read_only { "r" } else { "w" };
    Ok(attach_device(
        xs,
        &DeviceSpec {
            devtype: DEVTYPE,
            devid,
            frontend: a.frontend,
            backend: a.backend,
            front_keys: &[("virtual-device", &id), ("device-type", "disk")],
            back_keys: &[
                ("removable", "0"),
                ("dev", a.vdev),
                ("type", "xenshare"),
                ("mode", mode),
                ("params", a.params),
                ("device-type", "disk"),
            ],
        },
        a.backend_type,
    )?)
}

/// Removes both directories of a device made by [`attach_vbd`] (what the
/// toolstack does after a detach). Missing nodes are not an error.
pub fn detach_vbd<T: xenshare::store::Transport>(
    xs: &mut Client<T>,
    paths: &DevicePaths,
) -> Result<(), BlkHostError> {
    Ok(remove_device(xs, paths)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenshare_sim::region::Region;

    /// A temporary image, removed on drop.
    struct Tmp(std::path::PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Self {
            Self(std::env::temp_dir().join(format!(
                "xenshare-blk-unit-{}-{tag}.img",
                std::process::id()
            )))
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The same file through the trait's default (buffered) shared-memory
    /// methods only.
    struct Buffered(FileStorage);

    impl BlockStorage for Buffered {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
            self.0.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), StorageError> {
            self.0.write_at(offset, buf)
        }
        fn flush(&mut self) -> Result<(), StorageError> {
            self.0.flush()
        }
        fn discard(&mut self, offset: u64, len: u64) -> Result<(), StorageError> {
            self.0.discard(offset, len)
        }
    }

    /// Windows of 512..=4096 bytes (sector multiples) over `mem`, more of
    /// them than one `preadv` takes, and their total length.
    fn windows(mem: SharedMem<'_>) -> (Vec<SharedMem<'_>>, u64) {
        let mut v = Vec::new();
        let mut at = 0;
        let mut k = 0usize;
        while v.len() < IOV_BATCH + 40 {
            let len = 512 * (1 + k % 8);
            v.push(mem.slice(at, len).expect("window inside the region"));
            // Leave a gap now and then: windows need not be contiguous.
            at += len + if k.is_multiple_of(5) { 512 } else { 0 };
            k += 1;
        }
        let total = v.iter().map(|w| w.len() as u64).sum();
        (v, total)
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// `write_from_shared` puts the windows' bytes, in order, at the
    /// offset (checked with plain `pread`), and `read_to_shared` fills
    /// other windows with the file's bytes — through `pwritev` / `preadv`
    /// batches (more windows than one call takes) and through the trait's
    /// buffered default alike.
    #[test]
    fn shared_window_io_round_trips() {
        let tmp = Tmp::new("roundtrip");
        let mut st = FileStorage::create(&tmp.0, 8 << 20).expect("image");
        let src = Region::new("src", 2 << 20).expect("region");
        let dst = Region::new("dst", 2 << 20).expect("region");
        let data = pattern(7, src.len());
        src.mem().write(0, &data).expect("fill");
        let (wins, total) = windows(src.mem());
        assert!(wins.len() > IOV_BATCH);
        let off = 3 << 20;
        st.write_from_shared(off, total, &mut wins.iter().map(|w| w.read_only()))
            .expect("pwritev");
        let mut file = vec![0u8; total as usize];
        st.read_at(off, &mut file).expect("pread");
        let mut expect = Vec::new();
        for w in &wins {
            let mut b = vec![0u8; w.len()];
            w.read(0, &mut b).expect("read window");
            expect.extend_from_slice(&b);
        }
        assert_eq!(file, expect, "pwritev wrote the windows in order");

        for buffered in [false, true] {
            dst.mem().fill(0, dst.len(), 0).expect("clear");
            let (out, n) = windows(dst.mem());
            assert_eq!(n, total);
            let r = if buffered {
                Buffered(FileStorage::open(&tmp.0, false).expect("reopen")).read_to_shared(
                    off,
                    total,
                    &mut out.iter().copied(),
                )
            } else {
                st.read_to_shared(off, total, &mut out.iter().copied())
            };
            r.expect("read into windows");
            let mut got = Vec::new();
            for w in &out {
                let mut b = vec![0u8; w.len()];
                w.read(0, &mut b).expect("read window");
                got.extend_from_slice(&b);
            }
            assert_eq!(got, file, "read_to_shared (buffered: {buffered})");
        }
    }

    /// Windows that do not add up to the length, a range past the end of
    /// the image and a write to a read-only image are errors, for the
    /// vectored and the default implementation.
    #[test]
    fn shared_window_io_checks_lengths_and_range() {
        let tmp = Tmp::new("checks");
        let mut st = FileStorage::create(&tmp.0, 1 << 20).expect("image");
        let reg = Region::new("win", 64 << 10).expect("region");
        let a = reg.mem().slice(0, 4096).expect("window");
        let b = reg.mem().slice(4096, 4096).expect("window");
        let mut other = Buffered(FileStorage::open(&tmp.0, false).expect("reopen"));
        for s in [&mut st as &mut dyn BlockStorage, &mut other] {
            // Too short, too long.
            assert!(s.read_to_shared(0, 8192, &mut [a].into_iter()).is_err());
            assert!(s.read_to_shared(0, 4096, &mut [a, b].into_iter()).is_err());
            assert!(s
                .write_from_shared(0, 8192, &mut [a.read_only()].into_iter())
                .is_err());
            // Past the end.
            let end = (1 << 20) - 4096;
            assert!(s
                .read_to_shared(end, 8192, &mut [a, b].into_iter())
                .is_err());
            assert!(s.read_to_shared(end, 4096, &mut [a].into_iter()).is_ok());
        }
        // One window (the pread / pwrite path) moves the right bytes.
        a.write(0, &pattern(3, 4096)).expect("fill");
        st.write_from_shared(8192, 4096, &mut [a.read_only()].into_iter())
            .expect("pwrite");
        st.read_to_shared(8192, 4096, &mut [b].into_iter())
            .expect("pread");
        let mut got = vec![0u8; 4096];
        b.read(0, &mut got).expect("read window");
        assert_eq!(got, pattern(3, 4096));
        drop(st);
        let mut ro = FileStorage::open(&tmp.0, true).expect("read-only");
        assert_eq!(
            ro.write_from_shared(0, 4096, &mut [a.read_only()].into_iter()),
            Err(StorageError::Unsupported("writes to a read-only image"))
        );
    }

    /// Whether this kernel lets us use io_uring (`kernel.io_uring_disabled`
    /// reads 0); a test that needs it says so loudly where it does not.
    fn io_uring_allowed() -> bool {
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() == "0")
    }

    /// `read_batch_to_shared` through io_uring and through the forced
    /// `preadv` fallback gives every read the file's bytes: 70 reads (more
    /// than one submission takes) of one to nine windows, two of them
    /// refused (past the end; windows that do not add up) with the error
    /// `read_to_shared` gives, the others untouched by them.
    #[test]
    fn batched_reads_match_the_file_with_and_without_io_uring() {
        let tmp = Tmp::new("batch");
        let size = 4 << 20;
        let st = FileStorage::create(&tmp.0, size).expect("image");
        let data = pattern(11, size as usize);
        st.file().write_all_at(&data, 0).expect("fill");
        drop(st);
        // io_uring with the image registered, io_uring with a plain fd (the
        // fallback where registering is refused), `preadv`.
        for (uring, registered) in [(true, true), (true, false), (false, false)] {
            let mut st = FileStorage::open(&tmp.0, false)
                .expect("reopen")
                .with_io_uring(uring);
            if uring {
                st.start_uring();
                if let Uring::On(u) = &mut st.uring {
                    assert!(u.fixed, "io_uring set up but the image not registered");
                    u.fixed = registered;
                }
            }
            let reg = Region::new("dst", 70 * 9 * 4096).expect("region");
            reg.mem().fill(0, reg.len(), 0xEE).expect("clear");
            let mut wins = Vec::new();
            let mut plan = Vec::new();
            for k in 0..70usize {
                let n = 1 + k % 9;
                let start = wins.len();
                for j in 0..n {
                    let at = (start + j) * 4096;
                    wins.push(
                        reg.mem()
                            .slice(at, 512 * (1 + (k + j) % 8))
                            .expect("window"),
                    );
                }
                let len: u64 = wins[start..].iter().map(|w| w.len() as u64).sum();
                let off = match k {
                    5 => size - 512, // runs past the end
                    _ => (k as u64 * 40_960) % (size - len) / 512 * 512,
                };
                // Read 9 claims one sector more than its windows hold.
                let len = if k == 9 { len + 512 } else { len };
                plan.push((off, len, start..wins.len()));
            }
            let mut reads: Vec<SharedRead<'_, '_>> = plan
                .iter()
                .map(|(off, len, r)| SharedRead {
                    offset: *off,
                    len: *len,
                    dst: &wins[r.clone()],
                    result: Err(StorageError::Unsupported("not run")),
                })
                .collect();
            st.read_batch_to_shared(&mut reads);
            if uring {
                if io_uring_allowed() {
                    assert!(st.io_uring_in_use(), "io_uring allowed but not used");
                } else {
                    eprintln!("NOTE: io_uring disabled here; the batch went by preadv");
                }
            } else {
                assert!(!st.io_uring_in_use());
            }
            for (k, (r, (off, _, range))) in reads.iter().zip(&plan).enumerate() {
                if k == 5 || k == 9 {
                    assert_eq!(
                        r.result,
                        Err(StorageError::OutOfRange {
                            offset: r.offset,
                            len: r.len
                        }),
                        "read {k} (io_uring {uring}, registered {registered})"
                    );
                    continue;
                }
                assert_eq!(
                    r.result,
                    Ok(()),
                    "read {k} (io_uring {uring}, registered {registered})"
                );
                let mut at = *off as usize;
                for w in &wins[range.clone()] {
                    let mut b = vec![0u8; w.len()];
                    w.read(0, &mut b).expect("read window");
                    assert!(
                        b == data[at..at + b.len()],
                        "read {k} (io_uring {uring}, registered {registered})"
                    );
                    at += b.len();
                }
            }
        }
    }

    /// A read the file cannot satisfy whole (it shrank under the storage,
    /// so the kernel returns a short read) fails; it is never reported as
    /// a success, whether io_uring or `preadv` read it, and the reads
    /// beside it in the batch still succeed.
    #[test]
    fn a_short_batched_read_fails_and_its_neighbours_succeed() {
        for uring in [true, false] {
            let tmp = Tmp::new(if uring { "short-u" } else { "short-p" });
            let size = 1 << 20;
            let st = FileStorage::create(&tmp.0, size).expect("image");
            st.file()
                .write_all_at(&pattern(5, size as usize), 0)
                .expect("fill");
            let mut st = st.with_io_uring(uring);
            // The file loses its last 2 KiB; the storage still thinks it
            // has them.
            st.file().set_len(size - 2048).expect("shrink");
            let reg = Region::new("dst", 3 * 4096).expect("region");
            let w: Vec<_> = (0..3)
                .map(|i| reg.mem().slice(i * 4096, 4096).expect("window"))
                .collect();
            let mut reads: Vec<SharedRead<'_, '_>> = [0, size - 4096, 8192]
                .iter()
                .zip(w.chunks(1))
                .map(|(&offset, dst)| SharedRead {
                    offset,
                    len: 4096,
                    dst,
                    result: Err(StorageError::Unsupported("not run")),
                })
                .collect();
            st.read_batch_to_shared(&mut reads);
            assert_eq!(reads[0].result, Ok(()), "io_uring {uring}");
            assert_eq!(reads[2].result, Ok(()), "io_uring {uring}");
            assert!(reads[1].result.is_err(), "short read reported as success");
            let mut b = vec![0u8; 4096];
            w[2].read(0, &mut b).expect("read window");
            assert!(b == pattern(5, size as usize)[8192..12288]);
        }
    }

    /// When io_uring cannot be set up (here: the kernel refuses a ring of
    /// no entries, as it refuses any ring where io_uring is disabled), a
    /// batch falls back to `preadv` silently: every read still succeeds
    /// with the file's bytes, and io_uring is not tried again.
    #[test]
    fn a_failed_io_uring_set_up_falls_back_to_preadv() {
        let tmp = Tmp::new("uring-fail");
        let size = 1 << 20;
        let st = FileStorage::create(&tmp.0, size).expect("image");
        let data = pattern(9, size as usize);
        st.file().write_all_at(&data, 0).expect("fill");
        let mut st = st;
        st.uring_entries = 0;
        let reg = Region::new("dst", 4 * 4096).expect("region");
        let w: Vec<_> = (0..4)
            .map(|i| reg.mem().slice(i * 4096, 4096).expect("window"))
            .collect();
        for round in 0..2 {
            let mut reads: Vec<SharedRead<'_, '_>> = w
                .chunks(1)
                .enumerate()
                .map(|(i, dst)| SharedRead {
                    offset: 65536 * i as u64,
                    len: 4096,
                    dst,
                    result: Err(StorageError::Unsupported("not run")),
                })
                .collect();
            st.read_batch_to_shared(&mut reads);
            assert!(!st.io_uring_in_use(), "round {round}");
            assert!(matches!(st.uring, Uring::Off), "round {round}");
            for (i, r) in reads.iter().enumerate() {
                assert_eq!(r.result, Ok(()), "round {round}, read {i}");
                let mut b = vec![0u8; 4096];
                w[i].read(0, &mut b).expect("read window");
                let at = 65536 * i;
                assert!(b == data[at..at + 4096], "round {round}, read {i}");
            }
        }
    }
}
