//! Network devices on a Linux host: the host side of netback and the guest
//! side of netfront.
//!
//! The protocol (rings, validation, handshake) is `xenshare::net`; this
//! module gives it a world to talk to:
//!
//! * [`host`] — frame queues: an in-memory [`FrameIo`](xenshare::net::FrameIo)
//!   whose other end ([`host::HostPort`]) a test or the demo drives, and the
//!   [`host::HostFrames`] trait a back end's host side implements so the
//!   back end can be woken when a host frame arrives.
//! * [`tap`] — a Linux TAP interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`)
//!   as a `FrameIo`, optionally created inside a network namespace.
//! * [`guest`] — the guest's TCP/IP stack: a smoltcp [`phy::Device`] over a
//!   [`Netfront`](xenshare::net::Netfront), and a guest loop that answers
//!   ping (ICMP echo, done by smoltcp's interface) and serves a TCP echo port.
//! * [`run`] — threads: a back end bridged to any `HostFrames`, a complete
//!   guest (netfront + smoltcp + echo server), both doing their own XenBus
//!   handshake so they can be started in either order.
//! * [`vif`] — the toolstack's part of a vif served from dom0 userspace on
//!   real Xen (both XenStore directories, a private back-end type).
//! * [`demo`] — an emulated guest pinged by an in-memory host stack; a
//!   one-line summary for `xenshare demo --full`, and a frame-throughput loop.
//!
//! [`phy::Device`]: smoltcp::phy::Device

pub mod demo;
pub mod guest;
pub mod host;
pub mod run;
pub mod tap;
pub mod vif;
