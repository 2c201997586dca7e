//! What every test crate of the workspace shares: the SKIP rule for tests
//! that need Debian packages, and temporary directories that go away.
//!
//! This one file is the only place these live. `xenshare-conformance`
//! exports it as [`support`](crate::support); test crates that do not depend
//! on this crate include the same file with
//! `#[path = "../../conformance/src/support.rs"] mod support;`. It uses `std`
//! only, so it compiles anywhere.
//!
//! **Visible skips.** The test harness captures what a test prints with
//! `print!` / `eprint!`, and shows it only for failing tests, so a SKIP
//! printed that way is invisible in a plain `cargo test`. [`skip_or_fail`]
//! writes one line through `std::io::stderr()` itself, which the harness
//! does not capture: it reaches the terminal (or CI's log) next to the
//! `test … ok` lines. Under `CI=true` (CI installs the packages) a skip is a
//! failure instead.
//!
//! **No leftovers.** [`TempDir`] removes its directory when dropped, which
//! includes unwinding from a failed assertion.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// True when running under CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The one line [`skip_or_fail`] prints.
pub fn skip_line(test: &str, why: &str, install: &str) -> String {
    format!(
        "*** SKIP {test}: {why}; install {install} to run it (with CI=true this is a failure) ***\n"
    )
}

/// Writes `line` to this process's real stderr, past the test harness's
/// output capture (which only sees the `print!` / `eprint!` macros).
pub fn to_terminal(line: &str) {
    let mut err = std::io::stderr().lock();
    // Nothing sensible to do if stderr is gone.
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// A test that cannot run because `why` (what is missing, and `install`:
/// the Debian packages or setup that provide it): fails under `CI=true`,
/// otherwise prints one SKIP line that a plain `cargo test` shows.
/// The caller returns from the test after it.
pub fn skip_or_fail(test: &str, why: &str, install: &str) {
    if in_ci() {
        panic!("{test} cannot run but CI=true requires it: {why} (install {install})");
    }
    to_terminal(&skip_line(test, why, install));
}

/// A note shown in a plain `cargo test` that is not a failure even in CI
/// (for a test that does not apply on this machine at all).
pub fn notice(test: &str, what: &str) {
    to_terminal(&format!("*** NOTE {test}: {what} ***\n"));
}

/// True if `path` exists; otherwise [`skip_or_fail`] for `test`.
pub fn require_path(test: &str, path: &str, install: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    skip_or_fail(test, &format!("{path} not found"), install);
    false
}

/// A fresh directory under the temp directory, removed with everything in
/// it when dropped (also when a test panics).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/xenshare-<tag>-<pid>-<n>` (empty).
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "xenshare-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("cannot create {}: {e}", path.display());
        }
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// A value that lives in a [`TempDir`] (a daemon and its socket
/// directory): dereferences to the value, and when dropped drops the value
/// first, then removes the directory.
#[derive(Debug)]
pub struct Scoped<T> {
    value: Option<T>,
    dir: TempDir,
}

impl<T> Scoped<T> {
    /// Ties `value` to `dir`.
    pub fn new(value: T, dir: TempDir) -> Scoped<T> {
        Scoped {
            value: Some(value),
            dir,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }
}

impl<T> std::ops::Deref for Scoped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.value {
            Some(v) => v,
            None => unreachable!("taken only in drop"),
        }
    }
}

impl<T> Drop for Scoped<T> {
    fn drop(&mut self) {
        drop(self.value.take());
    }
}
