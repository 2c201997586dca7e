//! Xen's own `test-xenstore` (Debian xen-utils-4.17) against our daemon.

mod common;

use common::{daemon, have_tool, xs};

const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";

/// The test names `test-xenstore -l` prints.
fn test_names(d: &xenshare_xenstored::ServerHandle) -> Vec<String> {
    let out = xs(d, TEST_XENSTORE, &["-l"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

#[test]
fn every_test_passes() {
    if !have_tool(TEST_XENSTORE) {
        return;
    }
    let d = daemon("txs");
    let names = test_names(&d);
    assert_eq!(names.len(), 12, "{names:?}");
    let out = xs(&d, TEST_XENSTORE, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(out.status.success(), "test-xenstore failed:\n{stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");
    // Every test reported a timing line, i.e. ran and passed.
    for n in &names {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{n:<10}:"))),
            "{n} missing from:\n{stdout}"
        );
    }
    // It cleans up after itself, which exercises rm inside a transaction.
    let left = xs(
        &d,
        "/usr/bin/xenstore-exists",
        &["/local/domain/0/xenstore-test"],
    );
    assert!(!left.status.success());
}

#[test]
fn every_test_passes_repeatedly() {
    if !have_tool(TEST_XENSTORE) {
        return;
    }
    let d = daemon("txs-iter");
    let out = xs(&d, TEST_XENSTORE, &["-i", "20"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");
}

#[test]
fn random_run_passes() {
    if !have_tool(TEST_XENSTORE) {
        return;
    }
    let d = daemon("txs-rand");
    let out = xs(&d, TEST_XENSTORE, &["-r", "10"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "test-xenstore -r 10 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("failed"), "{stdout}");
}

#[test]
fn concurrent_instances_pass() {
    if !have_tool(TEST_XENSTORE) {
        return;
    }
    let d = daemon("txs-conc");
    let kids: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(TEST_XENSTORE)
                .args(["-i", "10"])
                .env("XENSTORED_PATH", d.path())
                .output()
        })
        .collect();
    for k in kids {
        let o = k.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
}
