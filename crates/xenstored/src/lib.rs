//! xenshare-xenstored: a XenStore daemon.
//!
//! The core is a transport-independent state machine, [`Store`]: a node tree
//! with owners and per-domain permissions, transactions with conflict
//! detection, watches (including `@introduceDomain` / `@releaseDomain`),
//! domain bookkeeping and C xenstored's per-domain quotas. [`Store::handle`]
//! takes one request from a connection (identified by a [`ConnId`] and a
//! domain id) and returns the messages to send, in order.
//!
//! [`Daemon`] shares one store between threads and gives each connection an
//! ordered [`OutQueue`]. Transports sit on top:
//! - [`server`]: the Unix socket (every connection is dom0, as with C
//!   xenstored, or a socket bound to one domain with [`serve_as`]);
//!   [`spawn`] runs it in the background, [`run`] in the foreground. One
//!   `epoll` event loop per daemon serves all its sockets and connections;
//! - [`inproc`]: a client in the same process, for any domain;
//! - [`ring`]: guests' shared-ring pages (`xenstore_domain_interface` +
//!   event channel), attached on `XS_INTRODUCE` by [`ring::RingServer`],
//!   one thread for all guests.
//!
//! A misbehaving client (garbage, lengths over 4096, half messages, floods)
//! gets error replies or is disconnected; nobody else notices.
//!
//! # Example
//!
//! A daemon in this process and two clients: dom0 (privileged) and a guest,
//! which may not read dom0's nodes.
//!
//! ```
//! use xenshare::DomId;
//! use xenshare_xenstored::{inproc, Config, Daemon};
//!
//! let daemon = Daemon::new(Config::default());
//! let mut dom0 = inproc::client(&daemon, DomId(0));
//! dom0.write("/tool/xenshare/greeting", b"hello").unwrap();
//! assert_eq!(dom0.read("/tool/xenshare/greeting").unwrap(), b"hello");
//!
//! let mut guest = inproc::client(&daemon, DomId(5));
//! assert!(guest.read("/tool/xenshare/greeting").is_err()); // EACCES
//! ```

pub mod bench;
mod config;
mod daemon;
mod idmap;
pub mod inproc;
pub mod ring;
pub mod server;
mod store;

pub use config::Config;
pub use daemon::{Closed, Connection, Daemon, DomainEvent, OutQueue};
pub use inproc::InProcTransport;
pub use server::{run, serve, serve_as, spawn, ServerHandle, SocketAccess};
pub use store::{ConnId, Output, Store};
