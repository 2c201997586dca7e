//! xenshare-host: the emulated hypervisor across processes.
//!
//! * [`daemon`]: `xenshare host` — one process runs the sim `Hypervisor`
//!   (the same grant and event rule code as in-process), a xenstored on a
//!   Unix socket, and an RPC socket (`SOCK_SEQPACKET`, fds passed with
//!   `SCM_RIGHTS`, format in [`wire`]).
//! * [`client`]: [`RemoteDomain::join`] gives a separate process the same
//!   platform objects as an in-process sim `Domain`: an `Exporter` over its
//!   grant table (a memfd mapped here and in the daemon, which does Xen's
//!   compare-and-swap on it), an `Importer` (map / unmap / copy are RPCs;
//!   mapped memory arrives as memfds), and event channel handles (the
//!   `shared_info` bitmaps are shared memory; wake-ups are one-byte tokens
//!   in a pipe the daemon makes per handle and writes without ever
//!   blocking, one per delivered port, so the handle's fd is readable
//!   exactly while a port waits).
//! * [`limits`]: what one domain can make the daemon hold (event channel
//!   handles, memory chunks, fds, connections), each refused clearly past
//!   its bound.
//! * [`inspect`]: the grant inspector's paged reply.
//!
//! Memory is one memfd per share: the process's frame allocator creates a
//! chunk per allocation and registers it with the daemon, which gives it a
//! fresh, never-reused frame range. A mapper receives only the chunks it
//! was granted; a retired chunk is never reused. When a domain process
//! dies its connection closes and the daemon destroys the domain.
//!
//! * [`toolstack`]: domain ids are assigned by the host, each domain
//!   reaches xenstored as itself over its own socket, and its
//!   `/local/domain/<N>` is created and removed as `xl` does; privileged
//!   requests need the host's token.
//!
//! # Example
//!
//! A host daemon (here on a thread of this process; usually `xenshare host`)
//! and two domains joining it. The host assigns the domain ids. Because the
//! mapper received the page as an fd it could keep, a revoked share's memory
//! is retired, never reused.
//!
//! ```
//! use xenshare::grant::Revoked;
//! use xenshare::Access;
//! use xenshare_host::{Host, HostConfig, RemoteDomain};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("xenshare-doc-host-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let host = Host::spawn(HostConfig::new(dir.join("host.sock")))?;
//! let a = RemoteDomain::join(host.path(), None)?;
//! let b = RemoteDomain::join(host.path(), None)?;
//! assert_ne!(a.id(), b.id());
//!
//! let share = a.exporter().share(b.id(), 1, Access::ReadWrite)?;
//! let mapping = b.importer().map_rw(a.id(), share.refs())?;
//! mapping.mem().write(0, b"across processes")?;
//! drop(mapping);
//! let revoked = share.try_unshare().map_err(|_| "b unmapped")?;
//! assert!(matches!(revoked, Revoked::Retired));
//! # drop((a, b, host)); // the daemon first: it removes its sockets
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod daemon;
pub mod inspect;
pub mod limits;
pub mod sock;
pub mod toolstack;
pub mod wire;

pub use client::{grant_reports, ClientError, GrantReport, RemoteDomain, RemoteEvtchn};
pub use daemon::{Host, HostConfig, HostError};
