//! A Linux TAP interface as a back end's host side.
//!
//! [`Tap::open`] creates (or attaches to) a TAP device with `IFF_TAP |
//! IFF_NO_PI`: every `read` is one Ethernet frame, every `write` sends one,
//! with no packet-info header. [`Tap::open_in_netns`] does the same from a
//! short-lived thread that first enters a network namespace, so the
//! interface is born there (the file descriptor keeps working from any
//! thread). [`TapIo`] runs a reader thread that moves frames from the TAP
//! into a [`FrameQueue`] and wakes the back end.
//!
//! The one `unsafe` here is the `TUNSETIFF` ioctl, whose argument is a
//! `struct ifreq` mirrored by the private `IfReq`.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{opcode, Opcode, Updater};
use xenshare::net::{FrameIo, Offer, MAX_FRAME};

use super::host::{FrameQueue, HostFrames, Waker};

/// `IFF_TAP`: an Ethernet-level device.
const IFF_TAP: i16 = 0x0002;
/// `IFF_NO_PI`: no packet-information header on reads and writes.
const IFF_NO_PI: i16 = 0x1000;
/// `IFNAMSIZ`.
const IFNAMSIZ: usize = 16;
/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: Opcode = opcode::write::<c_int>(b'T', 202);

/// `struct ifreq` as `TUNSETIFF` uses it: the name, then `ifr_flags` at the
/// start of the 24-byte union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates or attaches to TAP interface `name` in this thread's network
    /// namespace. Needs `CAP_NET_ADMIN` and `/dev/net/tun`.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {name:?} (1..=15 bytes, no '/', space or NUL)"),
            ));
        }
        let fd = rustix::fs::open(
            "/dev/net/tun",
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF's argument is a pointer to a `struct ifreq`;
        // `IfReq` has its layout (NUL-terminated name, flags at offset 16,
        // 40 bytes), and the kernel reads and writes only inside it.
        let ctl = unsafe { Updater::<TUNSETIFF, IfReq>::new(&mut req) };
        // SAFETY: `fd` is an open /dev/net/tun and `ctl` carries the right
        // argument type for TUNSETIFF (above).
        unsafe { rustix::ioctl::ioctl(&fd, ctl) }?;
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    /// Like [`Tap::open`], but creates the interface inside the network
    /// namespace `netns` (a path such as `/var/run/netns/NAME`).
    pub fn open_in_netns(name: &str, netns: &Path) -> io::Result<Tap> {
        let name = name.to_string();
        let netns: PathBuf = netns.to_path_buf();
        std::thread::spawn(move || -> io::Result<Tap> {
            let ns = rustix::fs::open(&netns, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Tap::open(&name)
        })
        .join()
        .map_err(|_| io::Error::other("netns helper thread panicked"))?
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (blocks until one arrives).
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.fd, buf)?)
    }

    /// Writes one frame.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        let n = rustix::io::write(&self.fd, frame)?;
        if n != frame.len() {
            return Err(io::Error::other("short write to TAP"));
        }
        Ok(())
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A TAP interface as a back end's [`FrameIo`], with a reader thread.
#[derive(Debug)]
pub struct TapIo {
    tap: Arc<Tap>,
    queue: Arc<FrameQueue>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl TapIo {
    /// Starts the reader thread on `tap`, queueing up to `cap` frames.
    pub fn new(tap: Tap, cap: usize) -> io::Result<TapIo> {
        let tap = Arc::new(tap);
        let queue = FrameQueue::new(cap);
        let stop = Arc::new(AtomicBool::new(false));
        let (t, q, s) = (tap.clone(), queue.clone(), stop.clone());
        let reader = std::thread::Builder::new()
            .name(format!("tap-{}", tap.name()))
            .spawn(move || read_loop(&t, &q, &s))?;
        Ok(TapIo {
            tap,
            queue,
            stop,
            reader: Some(reader),
        })
    }

    /// The interface.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Frames the reader dropped because the back end fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

fn read_loop(tap: &Tap, queue: &FrameQueue, stop: &AtomicBool) {
    let mut buf = vec![0u8; MAX_FRAME + 1];
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Ordering::Acquire) {
        let mut fds = [PollFd::new(tap, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        match tap.read_frame(&mut buf) {
            // Longer than any netif frame: dropped.
            Ok(n) if n > MAX_FRAME => {}
            Ok(n) => {
                queue.push_copy(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl Drop for TapIo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl FrameIo for TapIo {
    type Error = io::Error;

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.tap.write_frame(frame)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(self.queue.pop_into(buf))
    }

    /// Offers the queued frame itself (the back end grant-copies from it).
    fn recv_with(
        &mut self,
        _scratch: &mut [u8],
        take: impl FnOnce(&[u8]) -> bool,
    ) -> io::Result<Offer> {
        Ok(self.queue.offer(take))
    }
}

impl HostFrames for TapIo {
    fn set_waker(&mut self, waker: Waker) {
        self.queue.set_waker(waker);
    }
}
