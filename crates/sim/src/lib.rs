//! xenshare-sim: an emulated Xen hypervisor in userspace that enforces Xen's
//! rules, so the whole stack runs and is tested on a plain Linux machine —
//! including against malicious peers.
//!
//! * Guest memory is a memfd per domain with a frame allocator ([`memory`]).
//! * Each domain's v1 grant table is memory the domain writes itself; on map,
//!   unmap and copy the hypervisor ([`hv`]) runs Xen's compare-and-swap on the
//!   granter's entry (type, domid, read-only; a bounded number of retries),
//!   sets `GTF_reading`/`GTF_writing` while pinned and clears them when the
//!   last pin of each kind goes. Statuses are `GNTST_*`.
//! * Unmap-notify clears a byte and/or sends an event when a mapping goes,
//!   including when the mapping domain is destroyed.
//! * Event channels ([`evtchn`]) use the real 2-level pending/mask layout,
//!   with an eventfd per handle so a domain can block for events.
//! * [`Domain`] hands the core's platform objects to a domain's code:
//!   the safe grant [`xenshare::grant::Exporter`] and
//!   [`xenshare::grant::Importer`], and event channel handles.

pub mod domain;
pub mod evtchn;
pub mod hv;
pub mod memory;
pub mod region;

pub use domain::{
    Domain, SimExporter, SimGrantBackend, SimImporter, SimMapper, SimMapping, SimShare, SimWindow,
};
pub use evtchn::SimEvtchn;
pub use hv::{ActiveGrant, DomainConfig, HvError, Hypervisor, RevocationModel};
pub use memory::{DomainMemory, FramePage, MemoryError};
