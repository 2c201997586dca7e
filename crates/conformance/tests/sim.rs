//! The conformance bodies on the emulator: between two emulated domains,
//! and as a self-grant loopback inside one domain (what the Xen lab does in
//! dom0). XenStore and vchan bodies run against the in-process
//! xenshare-xenstored.

use std::sync::Arc;

use xenshare::grant::{Exporter, Importer};
use xenshare::DomId;
use xenshare_conformance::{Outcome, Platform, Revocation, TestResult};
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimEvtchn, SimGrantBackend, SimMapper};

struct Sim {
    _hv: Hypervisor,
    granter: Domain,
    mapper: Domain,
    name: &'static str,
}

impl Sim {
    /// A guest sharing with dom0.
    fn two_domains() -> Sim {
        let hv = Hypervisor::new();
        let mapper = hv
            .create_domain_with_id(DomId(0), DomainConfig::default())
            .expect("dom0");
        let granter = hv.create_domain(DomainConfig::default()).expect("guest");
        Sim {
            _hv: hv,
            granter,
            mapper,
            name: "sim two-domain",
        }
    }

    /// Dom0 sharing with itself.
    fn loopback() -> Sim {
        let hv = Hypervisor::new();
        let d0 = hv
            .create_domain_with_id(DomId(0), DomainConfig::default())
            .expect("dom0");
        Sim {
            _hv: hv,
            granter: d0.clone(),
            mapper: d0,
            name: "sim loopback",
        }
    }
}

impl Platform for Sim {
    type Backend = SimGrantBackend;
    type Mapper = SimMapper;
    type Evtchn = SimEvtchn;

    fn name(&self) -> String {
        self.name.into()
    }

    fn exporter(&self) -> &Exporter<SimGrantBackend> {
        self.granter.exporter()
    }

    fn importer(&self) -> &Importer<SimMapper> {
        self.mapper.importer()
    }

    fn exporter_evtchn(&self) -> Result<Arc<SimEvtchn>, String> {
        self.granter.evtchn().map_err(|e| e.to_string())
    }

    fn importer_evtchn(&self) -> Result<Arc<SimEvtchn>, String> {
        self.mapper.evtchn().map_err(|e| e.to_string())
    }

    fn revocation(&self) -> Revocation {
        Revocation::BusyThenQuarantine
    }
}

fn expect_pass(what: &str, r: TestResult) {
    match r {
        Ok(Outcome::Pass(_)) => {}
        Ok(Outcome::Skip(why)) => panic!("{what} skipped on the emulator: {why}"),
        Err(e) => panic!("{what} failed: {e}"),
    }
}

/// Each body runs on a fresh emulator, both layouts; the test name is the
/// body's name in the lab's output.
macro_rules! on_sim {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            for sim in [Sim::two_domains(), Sim::loopback()] {
                let what = format!("{} on {}", stringify!($name), sim.name());
                expect_pass(&what, xenshare_conformance::$name(&sim));
            }
        }
    )*};
}

on_sim!(
    share_map_loopback,
    read_only_refused,
    bad_refs_refused,
    grant_copy,
    msa02_revoke_while_mapped,
    event_bind_starts_pending,
    event_loopback,
    event_masked_until_unmask,
    event_close_and_rebind,
    unmap_notify_mapper_side,
    unmap_notify_granter_side,
);

/// The whole list, as the lab runs it: nothing fails on either layout.
#[test]
fn every_case_passes_or_skips() {
    for sim in [Sim::two_domains(), Sim::loopback()] {
        let (_, failed, skipped) = xenshare_conformance::run_and_report(&sim, "sim: ");
        assert_eq!(failed, 0, "failures on {}", sim.name());
        assert_eq!(skipped, 0, "skips on {}", sim.name());
    }
}

#[test]
fn xenstore_bodies_on_the_rust_daemon() {
    let daemon = xenshare_xenstored::Daemon::new(xenshare_xenstored::Config::default());
    let mut c = xenshare_xenstored::inproc::client(&daemon, DomId(0));
    expect_pass(
        "xenstore_basics",
        xenshare_conformance::xenstore_basics(&mut c, "/local/domain/0/xenshare-test"),
    );
    expect_pass(
        "xenstore_watch",
        xenshare_conformance::xenstore_watch(&mut c, "/local/domain/0/xenshare-test"),
    );
}

/// The vchan body on both layouts: server in the granting domain, client in
/// the mapping one, XenStore the in-process xenshare-xenstored.
#[test]
fn vchan_stream() {
    for sim in [Sim::two_domains(), Sim::loopback()] {
        let daemon = xenshare_xenstored::Daemon::new(xenshare_xenstored::Config::default());
        let mut c = xenshare_xenstored::inproc::client(&daemon, DomId(0));
        let what = format!("vchan_stream on {}", sim.name());
        expect_pass(
            &what,
            xenshare_conformance::vchan_stream(&sim, &mut c, "/local/domain/0/data/vchan"),
        );
    }
}
