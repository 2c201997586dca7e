//! netif: the Xen network device, front end and back end, on the safe grant
//! API (xen-abi.md section 7).
//!
//! Two one-page rings and one event channel connect the ends:
//!
//! * **tx** (guest → host): for each frame the front end grants one fresh
//!   page per 4 KiB fragment, *read-only*, and posts a chain of
//!   [`NetifTxRequest`]s (`NETTXF_more_data` on all but the last; the first
//!   carries the total size). The back end copies the data out with grant
//!   copy (it never maps a guest data page), hands the frame to its
//!   [`FrameIo`] host, and answers every slot.
//! * **rx** (host → guest, rx-copy): the front end keeps a pool of empty
//!   pages granted *writable* posted as [`NetifRxRequest`]s. The back end
//!   grant-copies a host frame into as many of them as it needs and answers
//!   each slot in order (`NETRXF_more_data` chains multi-page frames).
//!
//! Every page is owned by a [`Share`](crate::grant::Share). A tx page is
//! revoked when its response arrives. Revocation is the check that the back
//! end let go: if it still maps the page (MSA02 / XSA-396), the share goes to
//! quarantine and the front end becomes *broken* — the page is never reused
//! and no further I/O is attempted. Pages that did come back are kept in a
//! private pool and re-granted (zeroed by the grant API) for later frames.
//! An rx page holds only what the back end wrote into it, so, as a
//! persistent grant, it is posted again still granted to the same back end
//! (no new grant, no zeroing) — unless the grant table shows the back end
//! still mapping it after its response, which is revoked (or quarantined,
//! breaking the device) as a tx page is. Rx pages are revoked when the
//! device closes or moves to another back end, and never hold anything else
//! while granted. [`Netfront::recv`] copies received data out of the pages
//! once and only that private copy is looked at; [`Netfront::recv_with`]
//! instead lends the frame where it lies, as read-only windows of the rx
//! pages ([`RxFrame`]), checked the same way, and posts the pages again only
//! after its closure returns.
//!
//! Defensive rules on both ends: each ring slot is copied once
//! ([`crate::ring`]); the peer's producer index is validated; response ids
//! must be in range and outstanding ([`crate::ring::Outstanding`]); a tx
//! status must be a known one; an rx fragment must lie inside its page, its
//! flags must be ones this front end negotiated, and a frame may not exceed
//! [`MAX_FRAME`] bytes or [`MAX_SLOTS`] slots. The back end checks every tx
//! chain the same way: offset and size inside the page, chain length bounded
//! by `XEN_NETIF_NR_SLOTS_MIN`, fragment sizes consistent with the total. A
//! grant reference that was not granted to it makes the grant copy fail and
//! the packet is answered with `NETIF_RSP_ERROR` — the back end never maps
//! guest memory, so a bogus reference cannot hurt it. Any protocol violation
//! is a [`NetError`] that latches the end into a broken state.
//!
//! * [`front`] — [`Netfront`]: send / receive frames, carrier, close.
//! * [`back`] — [`Netback`]: serves both rings against a [`FrameIo`] host;
//!   a [`Doorbell`] lets the host side wake it.
//! * [`xenbus`] — the XenStore keys and the handshake (back end: features,
//!   InitWait; front end: refuses a back end without `feature-rx-copy`,
//!   writes its keys in one transaction and goes straight to Connected).
//!
//! Back-end restart: [`Netfront::check_backend`] notices a back end that
//! left Connected and breaks the device with [`NetError::PeerClosed`];
//! [`Netfront::reconnect`] then revokes every old grant (quarantining those
//! the old back end still maps), grants new rings, rx pages and event
//! channel, and re-runs the handshake with the new back end. A starting
//! [`Netback`] waits for a front end still attached to an earlier back end
//! to reset first, so stale ring references are never mapped.

#![forbid(unsafe_code)]

pub mod back;
pub mod csum;
pub mod front;
pub mod xenbus;

pub use back::{Doorbell, Netback, NetbackStats};
pub use front::{CloseReport, Netfront, NetfrontConfig, NetfrontStats, RxFragment, RxFrame};

use alloc::string::String;
use core::fmt;

use xenshare_abi::netif::XEN_NETIF_NR_SLOTS_MIN;
pub use xenshare_abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use xenshare_abi::PAGE_SIZE;

pub use crate::error::DeviceError;
use crate::types::GrantRef;

/// Largest frame either direction carries (`XEN_NETIF_MAX_TX_SIZE`): a
/// 64 KiB - 1 scatter-gather frame.
pub const MAX_FRAME: usize = xenshare_abi::netif::XEN_NETIF_MAX_TX_SIZE;

/// Largest frame without scatter-gather: one page.
pub const MAX_FRAME_NO_SG: usize = PAGE_SIZE;

/// Most slots one frame may use: `XEN_NETIF_NR_SLOTS_MIN`, which every back
/// end must accept (a [`MAX_FRAME`] frame needs 16).
pub const MAX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;

/// Smallest frame the back end forwards: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Slots a frame of `len` bytes needs (one page each).
pub const fn slots_for(len: usize) -> usize {
    if len == 0 {
        1
    } else {
        len.div_ceil(PAGE_SIZE)
    }
}

/// The host side of a back end: where guest frames go and host frames come
/// from (a TAP interface, a bridge, an in-memory peer).
pub trait FrameIo {
    /// A host-side failure.
    type Error: fmt::Display;

    /// Delivers one complete Ethernet frame from the guest to the host.
    fn send(&mut self, frame: &[u8]) -> Result<(), Self::Error>;

    /// Takes the next frame from the host into `buf` (at least
    /// [`MAX_FRAME`] bytes) and returns its length, or `None` if none is
    /// ready. Must not block. A host frame longer than `buf` is dropped by
    /// the implementation.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;

    /// Delivers one frame of `len` bytes that `fill` writes, or nothing if
    /// `fill` returns `false` (then `Ok(false)`).
    ///
    /// The back end's grant copy is `fill`: a host with frame buffers of its
    /// own lets it write straight into one, which saves the copy
    /// [`FrameIo::send`] makes. The default fills `scratch` (the back end's
    /// own buffer, at least `len` bytes) and passes it to
    /// [`FrameIo::send`] (with a `scratch` shorter than `len`, nothing is
    /// sent). A host that has no room may still call `fill` (for its
    /// verdict on the frame) before it fails.
    fn send_with(
        &mut self,
        len: usize,
        scratch: &mut [u8],
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<bool, Self::Error> {
        // `scratch` is the back end's frame buffer, never shorter than a
        // frame it forwards; a shorter one sends nothing.
        let Some(buf) = scratch.get_mut(..len) else {
            return Ok(false);
        };
        if !fill(buf) {
            return Ok(false);
        }
        self.send(buf).map(|()| true)
    }

    /// Offers the next host frame to `take`, which returns whether it took
    /// it (`false`: no room for it in the guest yet).
    ///
    /// A host that queues frames hands `take` the queued bytes themselves
    /// and keeps a declined frame first in line ([`Offer::Kept`]), which
    /// saves the copy [`FrameIo::recv`] makes. The default receives into
    /// `scratch` (the back end's own buffer, at least [`MAX_FRAME`] bytes);
    /// a frame declined there is the back end's to keep
    /// ([`Offer::InScratch`]).
    fn recv_with(
        &mut self,
        scratch: &mut [u8],
        take: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Offer, Self::Error> {
        let Some(n) = self.recv(scratch)? else {
            return Ok(Offer::Empty);
        };
        let n = n.min(scratch.len());
        Ok(if take(&scratch[..n]) {
            Offer::Taken
        } else {
            Offer::InScratch(n)
        })
    }
}

/// What [`FrameIo::recv_with`] did with the next host frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// No frame was waiting.
    Empty,
    /// The frame was taken (delivered or dropped by the taker).
    Taken,
    /// The frame of this length was declined; the host keeps it first in
    /// line and offers it again next time.
    Kept(usize),
    /// The frame was declined and is now in the first this many bytes of
    /// the caller's scratch buffer: the host no longer has it.
    InScratch(usize),
}

/// A MAC address (`mac` key, colon hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive; a trailing NUL or
    /// whitespace is tolerated).
    pub fn parse(raw: &[u8]) -> Option<Mac> {
        let s = core::str::from_utf8(raw).ok()?;
        let s = s.trim_end_matches('\0').trim();
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Errors of the network device.
///
/// Everything but [`NetError::TxFull`], [`NetError::FrameSize`] and a
/// timeout ([`DeviceError::Timeout`]) leaves the end broken (or never connected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A failure every driver can have (grant, map, event channel,
    /// XenStore, a ring violation by the peer, a bad key, a timeout —
    /// which is not fatal here —, closed).
    #[error(transparent)]
    Core(#[from] DeviceError),
    /// The back end still holds a page after answering for it: the page is
    /// quarantined (never reused) and the front end is broken.
    #[error("back end still maps {gref} after responding: page quarantined, device broken")]
    GrantStillInUse {
        /// The grant the back end kept.
        gref: GrantRef,
    },
    /// A tx response with a status the protocol does not allow here.
    #[error("tx response id {id} has invalid status {status}")]
    BadTxStatus {
        /// Response id.
        id: u16,
        /// The status.
        status: i16,
    },
    /// An rx response that breaks the protocol.
    #[error("rx response id {id} (offset {offset}, flags {flags:#x}, status {status}): {why}")]
    BadRxResponse {
        /// Response id.
        id: u16,
        /// Offset field.
        offset: u16,
        /// Flags field.
        flags: u16,
        /// Status field.
        status: i16,
        /// What is wrong.
        why: &'static str,
    },
    /// A tx request chain that breaks the protocol (back end side).
    #[error("tx request id {id}: {why}")]
    BadTxRequest {
        /// Id of the offending slot.
        id: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// The back end does not offer `feature-rx-copy`.
    #[error("back end does not support rx-copy (feature-rx-copy != 1)")]
    NoRxCopy,
    /// The front end did not ask for rx-copy.
    #[error("front end did not request rx-copy (request-rx-copy != 1)")]
    NoRequestRxCopy,
    /// A bad configuration value.
    #[error("bad configuration: {0}")]
    Config(&'static str),
    /// A frame too long (or empty) for the negotiated features. Not fatal.
    #[error("frame of {len} bytes is outside 1..={max}")]
    FrameSize {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No room for the frame on the tx ring right now. Not fatal.
    #[error("tx ring full")]
    TxFull,
    /// The peer is closing or closed the device.
    #[error("peer closed the device")]
    PeerClosed,
    /// The device is broken by an earlier error (the first cause is kept).
    #[error("device is broken: {0}")]
    Broken(String),
}

crate::wrap_device_error!(NetError);

impl NetError {
    /// Whether the error leaves the device usable.
    pub const fn is_transient(&self) -> bool {
        matches!(
            self,
            NetError::TxFull | NetError::FrameSize { .. } | NetError::Core(DeviceError::Timeout)
        )
    }
}

/// The broken-state latch of one end.
pub(crate) type Latch = crate::latch::Latch<NetError>;

impl crate::latch::Fault for NetError {
    /// Every call after a fatal error fails with [`NetError::Broken`],
    /// naming the first cause.
    fn broken(cause: &NetError) -> NetError {
        NetError::Broken(alloc::format!("{cause}"))
    }

    /// Transient errors ([`NetError::is_transient`]) leave the end usable.
    fn latches(&self) -> bool {
        !self.is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m = Mac::parse(b"00:16:3E:12:34:5f\0").unwrap();
        assert_eq!(m.0, [0x00, 0x16, 0x3e, 0x12, 0x34, 0x5f]);
        assert_eq!(alloc::format!("{m}"), "00:16:3e:12:34:5f");
        for bad in [
            &b""[..],
            b"00:16:3e:12:34",
            b"00:16:3e:12:34:5f:00",
            b"0:16:3e:12:34:5f",
            b"zz:16:3e:12:34:5f",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad:?}");
        }
    }

    /// A host with only `send` and `recv`: the trait's defaults.
    #[derive(Default)]
    struct Plain {
        sent: alloc::vec::Vec<alloc::vec::Vec<u8>>,
        queued: alloc::vec::Vec<alloc::vec::Vec<u8>>,
    }

    impl FrameIo for Plain {
        type Error = &'static str;
        fn send(&mut self, frame: &[u8]) -> Result<(), &'static str> {
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, &'static str> {
            let Some(f) = self.queued.pop() else {
                return Ok(None);
            };
            buf[..f.len()].copy_from_slice(&f);
            Ok(Some(f.len()))
        }
    }

    #[test]
    fn default_send_with_fills_scratch_and_sends_only_what_was_filled() {
        let mut h = Plain::default();
        let mut scratch = [0u8; 8];
        let filled = |b: &mut [u8]| {
            b.fill(9);
            true
        };
        assert_eq!(h.send_with(3, &mut scratch, filled), Ok(true));
        assert_eq!(h.send_with(3, &mut scratch, |_| false), Ok(false));
        // A scratch buffer shorter than the frame: nothing is sent.
        assert_eq!(h.send_with(9, &mut scratch, |_| true), Ok(false));
        assert_eq!(h.sent, [alloc::vec![9u8; 3]]);
    }

    #[test]
    fn default_recv_with_leaves_a_declined_frame_in_scratch() {
        let mut h = Plain::default();
        let mut scratch = [0u8; 8];
        assert_eq!(h.recv_with(&mut scratch, |_| true), Ok(Offer::Empty));
        h.queued.push(alloc::vec![1, 2, 3]);
        assert_eq!(
            h.recv_with(&mut scratch, |_| false),
            Ok(Offer::InScratch(3))
        );
        assert_eq!(scratch[..3], [1, 2, 3]);
        h.queued.push(alloc::vec![4, 5]);
        let mut got = alloc::vec::Vec::new();
        let take = |f: &[u8]| {
            got.extend_from_slice(f);
            true
        };
        assert_eq!(h.recv_with(&mut scratch, take), Ok(Offer::Taken));
        assert_eq!(got, [4, 5]);
    }

    #[test]
    fn slots() {
        assert_eq!(slots_for(60), 1);
        assert_eq!(slots_for(4096), 1);
        assert_eq!(slots_for(4097), 2);
        assert_eq!(slots_for(MAX_FRAME), 16);
        assert!(slots_for(MAX_FRAME) <= MAX_SLOTS);
    }
}
