//! One emulated machine: the hypervisor, dom0 (where back ends and the
//! toolstack run), one guest, and an in-process XenStore in which the guest
//! owns its home directory — what every device's demo and test harness
//! needs. The device modules add their toolstack steps as methods
//! (`create_vbd`, network sides, console set-up) on this one type.

use xenshare::store::client::{Client, ClientError};
use xenshare::store::perms::{PermKind, Perms};
use xenshare::store::Transport;
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, HvError, Hypervisor};
use xenshare_xenstored::inproc::{self, InProcTransport};
use xenshare_xenstored::{Config, Daemon};

/// Why a machine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The emulator refused a domain.
    #[error("emulator: {0}")]
    Sim(#[from] HvError),
    /// XenStore set-up failed.
    #[error("xenstore: {0}")]
    Store(#[from] ClientError),
}

/// The hypervisor, dom0, one guest and XenStore.
#[derive(Clone)]
pub struct Machine {
    /// The hypervisor.
    pub hv: Hypervisor,
    /// Domain 0: back ends and toolstack.
    pub dom0: Domain,
    /// The guest: front ends.
    pub guest: Domain,
    /// The XenStore daemon.
    pub xs: Daemon,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("dom0", &self.dom0.id())
            .field("guest", &self.guest.id())
            .finish()
    }
}

impl Machine {
    /// Boots dom0 (default size) and a guest of `guest_cfg`, and gives the
    /// guest its home directory as a toolstack does.
    pub fn new(guest_cfg: DomainConfig) -> Result<Self, MachineError> {
        let hv = Hypervisor::new();
        let dom0 = hv.create_domain_with_id(DomId(0), DomainConfig::default())?;
        let guest = hv.create_domain(guest_cfg)?;
        let xs = Daemon::new(Config::default());
        give_home(&mut inproc::client(&xs, DomId(0)), guest.id())?;
        Ok(Self {
            hv,
            dom0,
            guest,
            xs,
        })
    }

    /// A XenStore client speaking for `dom`.
    pub fn client(&self, dom: &Domain) -> Client<InProcTransport> {
        inproc::client(&self.xs, dom.id())
    }
}

/// The toolstack's part of a new domain in XenStore: its home directory
/// `/local/domain/<dom>`, created by the privileged client `c0` and owned
/// by `dom` (no one else may read it).
pub fn give_home<T: Transport>(c0: &mut Client<T>, dom: DomId) -> Result<(), ClientError> {
    let home = format!("/local/domain/{}", dom.0);
    c0.mkdir(&home)?;
    c0.set_perms(&home, &Perms::owned_by(dom, PermKind::None))
}
