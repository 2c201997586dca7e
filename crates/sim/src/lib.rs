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
//!
//! # Example
//!
//! Two domains of the emulated hypervisor: a guest shares a page, dom0 maps
//! it; while it is mapped the guest's revocation reports busy and hands the
//! share back.
//!
//! ```
//! use xenshare::grant::Revoked;
//! use xenshare::{Access, DomId};
//! use xenshare_sim::{DomainConfig, Hypervisor};
//!
//! let hv = Hypervisor::new();
//! let dom0 = hv.create_domain_with_id(DomId(0), DomainConfig::default()).unwrap();
//! let guest = hv.create_domain(DomainConfig::default()).unwrap();
//!
//! let share = guest.exporter().share(dom0.id(), 1, Access::ReadWrite).unwrap();
//! let mapping = dom0.importer().map_rw(guest.id(), share.refs()).unwrap();
//! mapping.mem().write(0, b"hi").unwrap();
//!
//! let share = match share.try_unshare() {
//!     Ok(_) => unreachable!("dom0 still maps the page"),
//!     Err(busy) => busy.into_inner(), // keep it (or drop it: quarantine)
//! };
//! drop(mapping);
//! match share.try_unshare() {
//!     Ok(Revoked::Pages(pages)) => drop(pages), // ours again: free or re-share
//!     Ok(Revoked::Retired) => {}                // never reused
//!     Err(_busy) => unreachable!("dom0 unmapped"),
//! }
//! ```

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
