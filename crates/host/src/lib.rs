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
//!   `shared_info` bitmaps are shared memory; wake-ups are datagrams on a
//!   socket pair the daemon makes per handle and sends on without ever
//!   blocking).
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

pub mod client;
pub mod daemon;
pub mod inspect;
pub mod limits;
pub mod sock;
pub mod toolstack;
pub mod wire;

pub use client::{grant_reports, ClientError, GrantReport, RemoteDomain, RemoteEvtchn};
pub use daemon::{Host, HostConfig, HostError};
