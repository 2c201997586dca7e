//! XenStore: the wire protocol, a client and the XenBus handshake helpers.
//!
//! - [`wire`]: the 16-byte `xsd_sockmsg` header, every `XS_*` type, an
//!   incremental decoder for byte streams and typed [`wire::Request`]s.
//!   Peer bytes are copied into an owned [`Message`] once and validated.
//! - [`error`]: the error names servers send ([`XsError`]).
//! - [`path`] and [`perms`]: the path rules and permission lists, shared by
//!   the client and the daemon (`xenshare-xenstored`).
//! - [`client`]: a synchronous client over a small [`Transport`] trait;
//!   the Unix socket transport needs `std`.
//! - [`ring`]: the shared-ring transport of guests (the
//!   `xenstore_domain_interface` page), both ends.
//! - [`xenbus`]: the one XenBus helper of every driver: `state` keys and
//!   transitions, device paths, typed reads of a peer's keys (one
//!   strictness: plain decimal digits), the wait for a peer's state and the
//!   transaction retry policy; the toolstack's device creation.
//!
//! All of it is `no_std` + `alloc` except the socket transport.

#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod path;
pub mod perms;
pub mod ring;
pub mod wire;
pub mod xenbus;

pub use client::{Client, ClientError, Transport, TransportError, Tx, TxId};
pub use error::XsError;
pub use perms::{Perm, PermKind, Perms};
pub use wire::{Message, MsgType, Request, WatchEvent};

#[cfg(feature = "std")]
pub use client::UnixTransport;
