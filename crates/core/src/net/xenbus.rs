//! netif's XenStore keys (xen-abi.md 7.3) and the pieces of its handshake.
//!
//! Back end: publishes [`BackendFeatures`] (`feature-rx-copy` = 1, ...) and
//! moves to InitWait. Front end: on the back end's InitWait it refuses a
//! back end without rx-copy, creates its rings and port, publishes
//! [`FrontendKeys`] in one transaction and goes straight to Connected. The
//! back end then reads those keys, maps the rings, binds the port and goes
//! Connected. The full sequences are [`crate::net::Netfront::connect`] and
//! [`crate::net::Netback::connect`]; the pieces are public so tests can play
//! a malicious peer with the real key handling.
//!
//! Every value read is parsed strictly (decimal, no sign, no junk) before
//! use; a missing or malformed key is a `BadKey` ([`DeviceError::BadKey`]); the
//! reads are the shared ones of [`crate::store::xenbus`].

use alloc::format;
use alloc::string::String;

use super::{Mac, NetError};
use crate::error::DeviceError;
use crate::store::client::{Client, Transport};
use crate::store::xenbus::{read_bool, read_domid, read_str, read_u32, read_u32_opt, XS_RETRIES};
use crate::types::{DomId, GrantRef, Port};

/// The XenBus device type of network devices.
pub const DEVTYPE: &str = "vif";

fn bad(key: &str, why: &'static str) -> NetError {
    DeviceError::bad_key(key, why).into()
}

/// The front end's own `mac` key (written by the toolstack).
pub fn read_mac<T: Transport>(xs: &mut Client<T>, front_dir: &str) -> Result<Mac, NetError> {
    let v = xs
        .try_read(&format!("{front_dir}/mac"))?
        .ok_or_else(|| bad("mac", "missing"))?;
    Mac::parse(&v).ok_or_else(|| bad("mac", "not colon hex aa:bb:cc:dd:ee:ff"))
}

/// The front end's links to its back end (`backend`, `backend-id`).
pub fn backend_of<T: Transport>(
    xs: &mut Client<T>,
    front_dir: &str,
) -> Result<(String, DomId), NetError> {
    let dir = read_str(xs, front_dir, "backend")?;
    let id = read_domid(xs, front_dir, "backend-id")?;
    Ok((dir, id))
}

/// The back end's link to its front end (`frontend`).
pub fn frontend_of<T: Transport>(xs: &mut Client<T>, back_dir: &str) -> Result<String, NetError> {
    Ok(read_str(xs, back_dir, "frontend")?)
}

/// What a back end offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFeatures {
    /// `feature-rx-copy`: required by modern front ends (and by ours).
    pub rx_copy: bool,
    /// `feature-sg`: accepts multi-slot tx frames.
    pub sg: bool,
    /// `feature-split-event-channels`: a front end may give one event
    /// channel per ring (`event-channel-tx`, `event-channel-rx`).
    pub split_event_channels: bool,
}

impl BackendFeatures {
    /// What [`crate::net::Netback`] offers.
    pub const OURS: BackendFeatures = BackendFeatures {
        rx_copy: true,
        sg: true,
        split_event_channels: true,
    };

    /// Writes the feature keys into the back end's directory (one
    /// transaction; also `feature-rx-flip` = 0 and no GSO).
    pub fn publish<T: Transport>(
        &self,
        xs: &mut Client<T>,
        back_dir: &str,
    ) -> Result<(), NetError> {
        let b = |v: bool| if v { &b"1"[..] } else { &b"0"[..] };
        xs.transaction(XS_RETRIES, |tx| {
            tx.write(&format!("{back_dir}/feature-rx-copy"), b(self.rx_copy))?;
            tx.write(&format!("{back_dir}/feature-rx-flip"), b"0")?;
            tx.write(&format!("{back_dir}/feature-sg"), b(self.sg))?;
            tx.write(&format!("{back_dir}/feature-gso-tcpv4"), b"0")?;
            tx.write(
                &format!("{back_dir}/feature-split-event-channels"),
                b(self.split_event_channels),
            )?;
            Ok(())
        })?;
        Ok(())
    }

    /// Reads a back end's offer.
    pub fn read<T: Transport>(xs: &mut Client<T>, back_dir: &str) -> Result<Self, NetError> {
        Ok(BackendFeatures {
            rx_copy: read_bool(xs, back_dir, "feature-rx-copy")?,
            sg: read_bool(xs, back_dir, "feature-sg")?,
            split_event_channels: read_bool(xs, back_dir, "feature-split-event-channels")?,
        })
    }
}

/// What a front end publishes for its back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendKeys {
    /// `tx-ring-ref`.
    pub tx_ring_ref: GrantRef,
    /// `rx-ring-ref`.
    pub rx_ring_ref: GrantRef,
    /// `event-channel` (one channel for both rings), or with split
    /// channels `event-channel-tx` (the tx ring's).
    pub event_channel: Port,
    /// With split channels: `event-channel-rx` (the rx ring's). Linux's
    /// netfront splits whenever the back end offers it.
    pub event_channel_rx: Option<Port>,
    /// `request-rx-copy`.
    pub request_rx_copy: bool,
    /// `feature-sg`: accepts multi-slot rx frames.
    pub sg: bool,
    /// `feature-rx-notify`.
    pub rx_notify: bool,
}

impl FrontendKeys {
    /// Writes the keys in one transaction (the state is written after).
    pub fn publish<T: Transport>(
        &self,
        xs: &mut Client<T>,
        front_dir: &str,
    ) -> Result<(), NetError> {
        let b = |v: bool| if v { &b"1"[..] } else { &b"0"[..] };
        xs.transaction(XS_RETRIES, |tx| {
            tx.write(
                &format!("{front_dir}/tx-ring-ref"),
                format!("{}", self.tx_ring_ref.0).as_bytes(),
            )?;
            tx.write(
                &format!("{front_dir}/rx-ring-ref"),
                format!("{}", self.rx_ring_ref.0).as_bytes(),
            )?;
            match self.event_channel_rx {
                None => tx.write(
                    &format!("{front_dir}/event-channel"),
                    format!("{}", self.event_channel.0).as_bytes(),
                )?,
                Some(rx) => {
                    tx.write(
                        &format!("{front_dir}/event-channel-tx"),
                        format!("{}", self.event_channel.0).as_bytes(),
                    )?;
                    tx.write(
                        &format!("{front_dir}/event-channel-rx"),
                        format!("{}", rx.0).as_bytes(),
                    )?;
                }
            }
            tx.write(
                &format!("{front_dir}/request-rx-copy"),
                b(self.request_rx_copy),
            )?;
            tx.write(&format!("{front_dir}/feature-sg"), b(self.sg))?;
            tx.write(&format!("{front_dir}/feature-rx-notify"), b(self.rx_notify))?;
            // Ask for complete checksums: Linux's netback would otherwise
            // hand over partial ones (NETRXF_csum_blank) for locally
            // generated traffic. (Partial ones are still completed if a back
            // end ignores this.)
            tx.write(&format!("{front_dir}/feature-no-csum-offload"), b"1")?;
            Ok(())
        })?;
        Ok(())
    }

    /// Reads and checks a front end's keys: `event-channel-tx` and
    /// `event-channel-rx` (split, both required once one is there) or
    /// `event-channel`.
    pub fn read<T: Transport>(xs: &mut Client<T>, front_dir: &str) -> Result<Self, NetError> {
        let (event_channel, event_channel_rx) =
            match read_u32_opt(xs, front_dir, "event-channel-tx")? {
                Some(tx) => (
                    Port(tx),
                    Some(Port(read_u32(xs, front_dir, "event-channel-rx")?)),
                ),
                None => (Port(read_u32(xs, front_dir, "event-channel")?), None),
            };
        Ok(FrontendKeys {
            tx_ring_ref: GrantRef(read_u32(xs, front_dir, "tx-ring-ref")?),
            rx_ring_ref: GrantRef(read_u32(xs, front_dir, "rx-ring-ref")?),
            event_channel,
            event_channel_rx,
            request_rx_copy: read_bool(xs, front_dir, "request-rx-copy")?,
            sg: read_bool(xs, front_dir, "feature-sg")?,
            rx_notify: read_bool(xs, front_dir, "feature-rx-notify")?,
        })
    }
}
