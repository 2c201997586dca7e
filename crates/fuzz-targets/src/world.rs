//! One emulated machine per thread (hypervisor, dom0, a guest, XenStore),
//! built on first use and shared by the targets that need grants and event
//! channels. Each target leaves it as it found it (every share revoked,
//! every mapping and channel dropped), so inputs do not influence each other.

use std::sync::Arc;

use xenshare::store::client::Client;
use xenshare::store::perms::{PermKind, Perms};
use xenshare::DomId;
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn};
use xenshare_xenstored::inproc::{self, InProcTransport};
use xenshare_xenstored::{Config, Daemon};

/// The machine.
pub(crate) struct World {
    _hv: Hypervisor,
    /// Back ends and vchan servers.
    pub dom0: Domain,
    /// Front ends and vchan clients.
    pub guest: Domain,
    /// Event channel handles of dom0 and the guest.
    pub evt0: Arc<SimEvtchn>,
    pub evtg: Arc<SimEvtchn>,
    pub xs: Daemon,
}

impl World {
    fn new() -> World {
        let hv = Hypervisor::new();
        let cfg = DomainConfig {
            mem_pages: 2048,
            ..DomainConfig::default()
        };
        let dom0 = hv
            .create_domain_with_id(DomId(0), cfg)
            .expect("create dom0");
        let guest = hv.create_domain(cfg).expect("create guest");
        let xs = Daemon::new(Config::default());
        let mut c0 = inproc::client(&xs, DomId(0));
        let home = format!("/local/domain/{}", guest.id().0);
        c0.mkdir(&home).expect("mkdir home");
        c0.set_perms(&home, &Perms::owned_by(guest.id(), PermKind::None))
            .expect("chown home");
        World {
            evt0: dom0.evtchn().expect("dom0 evtchn"),
            evtg: guest.evtchn().expect("guest evtchn"),
            _hv: hv,
            dom0,
            guest,
            xs,
        }
    }

    /// A XenStore client for `dom`.
    pub fn client(&self, dom: &Domain) -> Client<InProcTransport> {
        inproc::client(&self.xs, dom.id())
    }
}

thread_local! {
    static WORLD: World = World::new();
}

/// Runs `f` with this thread's machine.
pub(crate) fn with<R>(f: impl FnOnce(&World) -> R) -> R {
    WORLD.with(f)
}
