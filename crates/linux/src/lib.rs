//! xenshare on real Xen, from Linux userspace: the core's platform traits
//! over Linux's Xen devices.
//!
//! | trait | type | device |
//! |---|---|---|
//! | [`GrantBackend`](xenshare::platform::GrantBackend) | [`GntallocBackend`] | `/dev/xen/gntalloc` |
//! | [`ForeignMapper`](xenshare::platform::ForeignMapper) | [`GntdevMapper`] | `/dev/xen/gntdev` |
//! | [`EventChannels`](xenshare::platform::EventChannels) | [`EvtchnHandle`] | `/dev/xen/evtchn` |
//! | [`Transport`](xenshare::store::Transport) (XenStore) | [`XenbusTransport`] | `/dev/xen/xenbus` |
//!
//! [`LinuxPlatform::open`] checks that the devices are there (and says
//! clearly when this is not a Xen domain, or the drivers are not loaded),
//! finds this domain's id, and hands out the core's safe objects:
//! [`LinuxPlatform::exporter`], [`LinuxPlatform::importer`],
//! [`LinuxPlatform::evtchn`], [`LinuxPlatform::xenstore`].
//!
//! **One honest difference to the emulator** (details in [`gntalloc`]):
//! under Linux the kernel, not this process, ends foreign access, so a
//! revocation never reports "busy". A share whose peer still maps it is
//! *revoked-and-deferred*: the pages go back to the kernel, which holds
//! them until the peer unmaps and never reuses them before.
//!
//! All `unsafe` (ioctl, mmap, munmap) is in one private module, `sys`.
//!
//! # Example
//!
//! Needs a Xen domain with the drivers loaded, so it is only compiled here:
//!
//! ```no_run
//! use xenshare::{Access, DomId};
//! use xenshare_linux::LinuxPlatform;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let plat = LinuxPlatform::open()?; // a clear error when this is not Xen
//! let exporter = plat.exporter()?;
//! let share = exporter.share(DomId(0), 1, Access::ReadWrite)?;
//! let mut xs = plat.xenstore()?;
//! let key = format!("/local/domain/{}/data/page-ref", plat.domid().0);
//! xs.write(&key, share.refs()[0].0.to_string().as_bytes())?;
//! // ... dom0 maps it; later:
//! match share.try_unshare() {
//!     Ok(_revoked) => {}               // on Linux: Revoked::Retired (the kernel defers)
//!     Err(busy) => drop(busy.into_inner()), // never on gntalloc; quarantine otherwise
//! }
//! # Ok(())
//! # }
//! ```

pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
mod sys;
pub mod xenbus;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use xenshare::event::EventError;
use xenshare::grant::{Exporter, GrantError, Importer};
use xenshare::store::Client;
use xenshare::DomId;

pub use evtchn::EvtchnHandle;
pub use gntalloc::{GntallocBackend, GntallocPages, GntallocShare};
pub use gntdev::{GntdevHandle, GntdevMapper, GntdevWindow};
pub use xenbus::XenbusTransport;

/// `/dev/xen/gntalloc`.
pub const GNTALLOC: &str = "/dev/xen/gntalloc";
/// `/dev/xen/gntdev`.
pub const GNTDEV: &str = "/dev/xen/gntdev";
/// `/dev/xen/evtchn`.
pub const EVTCHN: &str = "/dev/xen/evtchn";
/// `/dev/xen/xenbus`.
pub const XENBUS: &str = "/dev/xen/xenbus";
/// Where xenfs tells what this domain may do (`control_d` in dom0).
pub const CAPABILITIES: &str = "/proc/xen/capabilities";

/// The export side on Linux.
pub type LinuxExporter = Exporter<GntallocBackend>;
/// The import side on Linux.
pub type LinuxImporter = Importer<GntdevMapper>;
/// A share made through gntalloc.
pub type LinuxShare = xenshare::grant::Share<GntallocBackend>;
/// A mapping made through gntdev.
pub type LinuxMapping = xenshare::grant::Mapping<GntdevMapper>;

/// Opening a Xen device (or finding this domain) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The device node does not exist.
    #[error(
        "{path} does not exist: this is not a Xen domain, or the Xen drivers are not loaded \
         (modprobe xen-gntalloc xen-gntdev xen-evtchn xenfs)"
    )]
    NotXen {
        /// The missing device.
        path: &'static str,
    },
    /// The device exists but could not be opened.
    #[error("cannot open {path}: {errno}")]
    Os {
        /// The device.
        path: &'static str,
        /// Why.
        errno: Errno,
    },
    /// This domain's id could not be found.
    #[error("cannot find this domain's id: {0}")]
    DomId(String),
}

impl OpenError {
    /// The errno behind the error (`ENOENT` for a missing device).
    pub fn errno(&self) -> i32 {
        match self {
            OpenError::NotXen { .. } => Errno::NOENT.raw_os_error(),
            OpenError::Os { errno, .. } => errno.raw_os_error(),
            OpenError::DomId(_) => Errno::NODEV.raw_os_error(),
        }
    }
}

impl From<OpenError> for GrantError {
    fn from(e: OpenError) -> GrantError {
        GrantError::Os(e.errno())
    }
}

impl From<OpenError> for EventError {
    fn from(e: OpenError) -> EventError {
        EventError::Os(e.errno())
    }
}

/// Opens a device node read-write, close-on-exec; `evtchn` and `xenbus`
/// non-blocking (they are read with poll).
pub(crate) fn open_dev(path: &'static str) -> Result<OwnedFd, OpenError> {
    let mut flags = OFlags::RDWR | OFlags::CLOEXEC;
    if path == EVTCHN || path == XENBUS {
        flags |= OFlags::NONBLOCK;
    }
    rustix::fs::open(path, flags, Mode::empty()).map_err(|errno| match errno {
        Errno::NOENT | Errno::NODEV | Errno::NXIO => OpenError::NotXen { path },
        errno => OpenError::Os { path, errno },
    })
}

/// Sleeps until `fd` is readable, a signal arrives or `deadline` passes
/// (`None`: no deadline). `Ok(false)` when the deadline had passed already
/// (nothing was polled); `Ok(true)` otherwise: the caller looks again.
pub(crate) fn wait_readable(fd: impl AsFd, deadline: Option<Instant>) -> Result<bool, Errno> {
    let left = match deadline {
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return Ok(false);
            }
            Some(d - now)
        }
        None => None,
    };
    let ts = left.map(|d| Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    });
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    match rustix::event::poll(&mut fds, ts.as_ref()) {
        Ok(_) | Err(Errno::INTR) => Ok(true),
        Err(e) => Err(e),
    }
}

/// This Linux domain as a xenshare platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxPlatform {
    domid: DomId,
}

impl LinuxPlatform {
    /// Checks that the grant and event devices exist and finds this
    /// domain's id (dom0 from `/proc/xen/capabilities`, otherwise the
    /// `domid` key of this domain's XenStore directory).
    pub fn open() -> Result<LinuxPlatform, OpenError> {
        Self::check_devices()?;
        Ok(LinuxPlatform {
            domid: Self::find_domid()?,
        })
    }

    /// Like [`LinuxPlatform::open`], with a known domain id.
    pub fn with_domid(domid: DomId) -> Result<LinuxPlatform, OpenError> {
        Self::check_devices()?;
        Ok(LinuxPlatform { domid })
    }

    fn check_devices() -> Result<(), OpenError> {
        for path in [GNTALLOC, GNTDEV, EVTCHN] {
            match rustix::fs::access(path, rustix::fs::Access::EXISTS) {
                Ok(()) => {}
                Err(Errno::NOENT) => return Err(OpenError::NotXen { path }),
                Err(errno) => return Err(OpenError::Os { path, errno }),
            }
        }
        Ok(())
    }

    fn find_domid() -> Result<DomId, OpenError> {
        if let Ok(caps) = std::fs::read_to_string(CAPABILITIES) {
            if caps
                .split(|c: char| c == ',' || c.is_whitespace())
                .any(|c| c == "control_d")
            {
                return Ok(DomId::DOM0);
            }
        }
        let mut xs = Client::new(XenbusTransport::open()?);
        let raw = xs
            .read("domid")
            .map_err(|e| OpenError::DomId(format!("xenstore read of \"domid\": {e}")))?;
        let text = String::from_utf8_lossy(&raw);
        text.trim_end_matches('\0')
            .trim()
            .parse::<u16>()
            .map(DomId)
            .map_err(|_| OpenError::DomId(format!("xenstore \"domid\" is {text:?}")))
    }

    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// A fresh gntalloc backend (one open of the device).
    pub fn grant_backend(&self) -> Result<GntallocBackend, OpenError> {
        GntallocBackend::open(self.domid)
    }

    /// A fresh gntdev mapper (one open of the device).
    pub fn mapper(&self) -> Result<GntdevMapper, OpenError> {
        GntdevMapper::open(self.domid)
    }

    /// The safe export API over a fresh gntalloc backend.
    pub fn exporter(&self) -> Result<LinuxExporter, OpenError> {
        Ok(Exporter::new(self.grant_backend()?))
    }

    /// The safe import API over a fresh gntdev mapper.
    pub fn importer(&self) -> Result<LinuxImporter, OpenError> {
        Ok(Importer::new(self.mapper()?))
    }

    /// A fresh event channel handle.
    pub fn evtchn(&self) -> Result<EvtchnHandle, OpenError> {
        EvtchnHandle::open(self.domid)
    }

    /// A XenStore client over `/dev/xen/xenbus`.
    pub fn xenstore(&self) -> Result<Client<XenbusTransport>, OpenError> {
        Ok(Client::new(XenbusTransport::open()?))
    }
}
