//! The shared test support (`xenshare_conformance::support`): temporary
//! directories go away even when a test panics, and a SKIP line is visible
//! in a plain `cargo test`.

use std::path::PathBuf;

use xenshare_conformance::support::*;

#[test]
fn temp_dir_goes_away_even_on_panic() {
    let kept = std::panic::catch_unwind(|| {
        let d = TempDir::new("support-selftest");
        std::fs::write(d.join("f"), b"x").unwrap();
        let p = d.path().to_path_buf();
        std::panic::panic_any(p);
    })
    .unwrap_err();
    let p = kept.downcast::<PathBuf>().unwrap();
    assert!(!p.exists(), "{} left behind", p.display());
}

/// A plain `cargo test` (output captured) still shows the SKIP line:
/// this test runs itself as a child test binary, with capture on and
/// without CI, and finds the line on the child's stderr.
#[test]
fn skip_line_escapes_the_harness_capture() {
    if std::env::var_os("XENSHARE_SUPPORT_CHILD").is_some() {
        skip_or_fail("support-child", "nothing missing (self-test)", "nothing");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "skip_line_escapes_the_harness_capture",
            "--test-threads=1",
        ])
        .env("XENSHARE_SUPPORT_CHILD", "1")
        .env_remove("CI")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("*** SKIP support-child"), "stderr: {err}");
}

#[test]
fn skip_line_names_test_reason_and_packages() {
    let l = skip_line("t", "gcc missing", "gcc");
    assert!(l.starts_with("*** SKIP t: gcc missing"), "{l}");
    assert!(l.contains("install gcc") && l.ends_with("***\n"), "{l}");
}

/// Under `CI=true` a skip is a failure (CI installs every package).
#[test]
fn skip_fails_under_ci() {
    if std::env::var_os("XENSHARE_SUPPORT_CI_CHILD").is_some() {
        skip_or_fail("support-ci-child", "nothing missing (self-test)", "nothing");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "skip_fails_under_ci", "--test-threads=1"])
        .env("XENSHARE_SUPPORT_CI_CHILD", "1")
        .env("CI", "true")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a skip passed under CI=true");
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(all.contains("CI=true requires it"), "output: {all}");
}
