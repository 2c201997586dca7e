//! Interop with Xen's own C libxenvchan (Debian `libxenvchan4.17`,
//! unmodified), loading xenshare's `libxengnttab.so.1` /
//! `libxenevtchn.so.1` through `xenshare exec`, against xenshare's Rust
//! vchan (`xenshare vchan`), in both roles, across processes.
//!
//! The C helper (`tests/c/vchan_xor.c`) echoes every byte XORed with 0xA5;
//! the Rust side sends megabytes of random data and checks every byte that
//! comes back. C server: the Rust client closes first. C client: the C side
//! closes first.
//!
//! Needs gcc and libxen-dev. Without them the test SKIPs loudly, or FAILs
//! when `CI=true`. The compat library is built here with
//! `cargo build -p xenshare-compat` (same profile as this test): a test
//! cannot depend on another package's cdylib artifact, and building it in
//! the test is simple and always up to date.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

mod common;
use common::*;

const BYTES: usize = 4 << 20;

#[path = "../../conformance/src/support.rs"]
mod support;

fn skip_or_fail(why: &str) {
    support::skip_or_fail("vchan_interop", why, "gcc and libxen-dev");
}

/// Builds the C helper; `None` (after a SKIP/FAIL) if it cannot be built.
fn build_helper(dir: &Path) -> Option<PathBuf> {
    build_vchan_c(dir, "vchan_xor", &[], skip_or_fail)
}

/// A fresh directory, removed (with the sockets in it) when dropped.
fn tmpdir(name: &str) -> support::TempDir {
    support::TempDir::new(name)
}

/// Feeds `data` to the Rust side's stdin, reads exactly `data.len()`
/// bytes back, checks them, then closes stdin (if `close_stdin`) and waits.
fn drive(mut rust: Child, data: &[u8], close_stdin: bool) {
    let mut stdin = rust.stdin.take().expect("stdin");
    let mut stdout = rust.stdout.take().expect("stdout");
    let send = data.to_vec();
    let writer = std::thread::spawn(move || {
        let r = stdin.write_all(&send);
        (r, stdin)
    });
    let mut got = vec![0u8; data.len()];
    stdout.read_exact(&mut got).expect("read the echo");
    let (r, stdin) = writer.join().expect("writer thread");
    r.expect("write data");
    let want: Vec<u8> = data.iter().map(|b| b ^ 0xA5).collect();
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "echoed data differs");
    if close_stdin {
        drop(stdin);
    }
    let st = rust.wait().expect("wait rust side");
    assert!(st.success(), "rust vchan side failed: {st}");
}

fn wait_ok(c: Child, what: &str) {
    let out = c.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn xen_libxenvchan_interoperates_with_xenshare_vchan() {
    let dir = tmpdir("interop");
    let Some(helper) = build_helper(&dir) else {
        return;
    };
    assert!(build_compat().join("libxenshare_compat.so").is_file());
    // No XenStore set-up here: the host's toolstack creates each domain's
    // home (with the `domid` key libxenvchan reads) when it joins.
    let (_host, sock) = start_host(&dir);
    let bin = Path::new(BIN);

    // C server (domain 1) <- Rust client (domain 2); the Rust side closes.
    let path = "/local/domain/1/data/vchan";
    let c_server = exec(&sock, Some(1), &helper, &["server", "2", path])
        .stderr(Stdio::piped())
        .spawn()
        .expect("C server");
    let rust = exec(
        &sock,
        Some(2),
        bin,
        &[
            "vchan", "connect", "--domid", "1", "--path", path, "--wait", "10",
            // Close as soon as stdin ends (all echoes are read by then).
            "--linger", "0",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("rust client");
    drive(rust, &random(BYTES, 0x1234_5678_9abc_def1), true);
    wait_ok(c_server, "C server");

    // Rust server (domain 3) <- C client (domain 4); the C side closes.
    let path = "/local/domain/3/data/vchan";
    let rust = exec(
        &sock,
        Some(3),
        bin,
        &["vchan", "listen", "--domid", "4", "--path", path],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("rust server");
    let c_client = exec(
        &sock,
        Some(4),
        &helper,
        &["client", "3", path, &BYTES.to_string()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .expect("C client");
    drive(rust, &random(BYTES, 0x0fed_cba9_8765_4321), false);
    wait_ok(c_client, "C client");
    let _ = std::fs::remove_dir_all(&dir);
}
