//! Off Xen (a plain Linux machine, CI's host), opening the platform fails
//! with a clear, typed error instead of anything obscure later.

use xenshare::event::EventError;
use xenshare::grant::GrantError;
use xenshare_linux::{GntallocBackend, LinuxPlatform, OpenError, GNTALLOC};

#[path = "../../conformance/src/support.rs"]
mod support;

fn on_xen() -> bool {
    std::path::Path::new(GNTALLOC).exists()
}

#[test]
fn open_says_this_is_not_xen() {
    if on_xen() {
        support::notice(
            "open_says_this_is_not_xen",
            &format!("not run: {GNTALLOC} exists; this test is for machines without Xen"),
        );
        return;
    }
    let e = LinuxPlatform::open().expect_err("no Xen here");
    assert!(
        matches!(e, OpenError::NotXen { path } if path == GNTALLOC),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("not a Xen domain"), "{msg}");
    assert_eq!(e.errno(), rustix::io::Errno::NOENT.raw_os_error());
}

#[test]
fn device_errors_convert_to_the_core_errors() {
    if on_xen() {
        return;
    }
    let e = GntallocBackend::open(xenshare::DomId(0)).expect_err("no Xen here");
    let enoent = rustix::io::Errno::NOENT.raw_os_error();
    assert_eq!(GrantError::from(e.clone()), GrantError::Os(enoent));
    assert_eq!(EventError::from(e), EventError::Os(enoent));
    assert!(matches!(
        LinuxPlatform::with_domid(xenshare::DomId(3)),
        Err(OpenError::NotXen { .. })
    ));
}
