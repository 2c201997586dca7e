//! Platform conformance: test bodies written once against the core's
//! platform traits, run on every platform so the emulator stays honest.
//!
//! * On the emulator they run in `cargo test` (`tests/sim.rs` of this crate),
//!   both between two emulated domains and as a self-grant loopback.
//! * On real Xen they run inside dom0 under QEMU, in the Xen lab
//!   (`scripts/xen-lab`), through the `xenshare-lab-tests` example of
//!   `xenshare-linux`.
//!
//! A body gets a [`Platform`]: an exporter, an importer that maps the
//! exporter's grants, and event channel handles of both domains. Where the
//! platforms legitimately differ, the platform says how
//! ([`Platform::revocation`]) and the body checks the property that must hold
//! on both: for MSA02, "a page a peer still maps is never memory of a new
//! share" — on the emulator through `Busy` and quarantine, on Linux through
//! the kernel's deferred revocation.
//!
//! The XenStore bodies ([`xenstore_basics`], [`xenstore_watch`]) take a
//! client of any transport; the vchan body ([`vchan_stream`]) takes the
//! platform and a XenStore client, and its pieces ([`Pattern`], [`pump`],
//! [`finish`]) also drive each end of a vchan in its own process in the lab,
//! paired with Xen's C libxenvchan.
//!
//! Bodies return [`TestResult`] instead of panicking, so the lab runner can
//! go on after a failure and print one line per test.
//!
//! # Example
//!
//! A XenStore body against the in-process daemon (the Xen lab runs the same
//! body against `/dev/xen/xenbus`):
//!
//! ```
//! use xenshare::DomId;
//! use xenshare_xenstored::{inproc, Config, Daemon};
//!
//! let daemon = Daemon::new(Config::default());
//! let mut xs = inproc::client(&daemon, DomId(0));
//! xenshare_conformance::xenstore_basics(&mut xs, "/conformance/doc").unwrap();
//! ```

mod event;
mod grant;
mod store;
pub mod support;
mod vchan;

use std::sync::Arc;

use xenshare::grant::{Exporter, GrantStats, Importer};
use xenshare::platform::{EventChannels, ForeignMapper, GrantBackend};

pub use event::*;
pub use grant::*;
pub use store::*;
pub use vchan::*;

/// How a platform answers a revocation while the peer still maps the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The granter sees the busy bits: `try_unshare` returns `Busy`, a
    /// dropped share waits in quarantine until the peer unmaps (the
    /// emulator, a unikernel).
    BusyThenQuarantine,
    /// The kernel ends access and defers the free until the peer unmaps;
    /// userspace sees the revocation succeed (Linux gntalloc).
    RevokedAndDeferred,
}

/// What a conformance body runs on.
pub trait Platform {
    /// The export backend.
    type Backend: GrantBackend;
    /// The import backend.
    type Mapper: ForeignMapper;
    /// Event channel handles.
    type Evtchn: EventChannels;

    /// A short name for reports ("sim", "linux").
    fn name(&self) -> String;
    /// The sharing side.
    fn exporter(&self) -> &Exporter<Self::Backend>;
    /// The mapping side; it maps what [`Platform::exporter`] shares to it.
    fn importer(&self) -> &Importer<Self::Mapper>;
    /// A fresh event channel handle of the exporter's domain.
    fn exporter_evtchn(&self) -> Result<Arc<Self::Evtchn>, String>;
    /// A fresh event channel handle of the importer's domain.
    fn importer_evtchn(&self) -> Result<Arc<Self::Evtchn>, String>;
    /// How revocation behaves while the peer maps.
    fn revocation(&self) -> Revocation;
}

/// A body's verdict when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held; the note says anything worth reporting.
    Pass(String),
    /// The platform cannot show this property; the note says why.
    Skip(String),
}

/// The result of one body: `Err` carries the failed check.
pub type TestResult = Result<Outcome, String>;

/// Checks a condition inside a body, failing it with a formatted message.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{} (at {}:{})", format!($($msg)+), file!(), line!()));
        }
    };
}

/// Turns an error into a failure of the body, naming what was done.
pub trait Context<T> {
    /// `Err(e)` becomes `"{what}: {e}"`.
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: core::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

impl<T> Context<T> for Option<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.ok_or_else(|| format!("{what}: nothing"))
    }
}

/// A named body over a platform.
pub struct Case<P> {
    /// The test name, stable across platforms.
    pub name: &'static str,
    /// The body.
    pub run: fn(&P) -> TestResult,
}

/// Every platform-trait body, in a sensible order.
pub fn cases<P: Platform>() -> Vec<Case<P>> {
    vec![
        Case {
            name: "grant_share_map_loopback",
            run: share_map_loopback::<P>,
        },
        Case {
            name: "grant_read_only_refused",
            run: read_only_refused::<P>,
        },
        Case {
            name: "grant_bad_refs_refused",
            run: bad_refs_refused::<P>,
        },
        Case {
            name: "grant_copy",
            run: grant_copy::<P>,
        },
        Case {
            name: "grant_msa02_revoke_while_mapped",
            run: msa02_revoke_while_mapped::<P>,
        },
        Case {
            name: "event_bind_starts_pending",
            run: event_bind_starts_pending::<P>,
        },
        Case {
            name: "event_loopback",
            run: event_loopback::<P>,
        },
        Case {
            name: "event_masked_until_unmask",
            run: event_masked_until_unmask::<P>,
        },
        Case {
            name: "event_close_and_rebind",
            run: event_close_and_rebind::<P>,
        },
        Case {
            name: "unmap_notify_mapper_side",
            run: unmap_notify_mapper_side::<P>,
        },
        Case {
            name: "unmap_notify_granter_side",
            run: unmap_notify_granter_side::<P>,
        },
    ]
}

/// Checks `granted == live + revoked + quarantined + reclaimed + leaked`.
pub fn stats_balance(s: &GrantStats) -> Result<(), String> {
    let sum = s.live + s.revoked + s.quarantined + s.reclaimed + s.leaked;
    check!(s.granted == sum, "exporter stats do not balance: {s:?}");
    Ok(())
}

/// Runs every case on `p`, printing one line each (`PASS`, `SKIP`,
/// `FAIL`) with `prefix`; returns (passed, failed, skipped).
pub fn run_and_report<P: Platform>(p: &P, prefix: &str) -> (usize, usize, usize) {
    let mut tally = (0, 0, 0);
    for case in cases::<P>() {
        let start = std::time::Instant::now();
        let r = (case.run)(p);
        let ms = start.elapsed().as_millis();
        report_line(prefix, case.name, &r, ms, &mut tally);
    }
    tally
}

/// Prints one result line and counts it into `tally` (passed, failed, skipped).
pub fn report_line(
    prefix: &str,
    name: &str,
    r: &TestResult,
    ms: u128,
    tally: &mut (usize, usize, usize),
) {
    match r {
        Ok(Outcome::Pass(note)) => {
            tally.0 += 1;
            if note.is_empty() {
                println!("{prefix}PASS {name} ({ms} ms)");
            } else {
                println!("{prefix}PASS {name} ({ms} ms): {note}");
            }
        }
        Ok(Outcome::Skip(why)) => {
            tally.2 += 1;
            println!("{prefix}SKIP {name}: {why}");
        }
        Err(e) => {
            tally.1 += 1;
            println!("{prefix}FAIL {name} ({ms} ms): {e}");
        }
    }
}
