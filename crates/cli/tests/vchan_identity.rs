//! Each domain process has its own identity (multi-process emulator):
//!
//! * Xen's unmodified libxenvchan (Debian `libxenvchan4.17`) runs as server
//!   in domain 1 and as client in domain 2, both under `xenshare exec`,
//!   with no XenStore set-up by the test (the host's toolstack creates each
//!   domain's home, and each reaches xenstored as itself), in every ring
//!   geometry and in stream and packet mode;
//! * Xen's `xenstore-write` run as domain 2 cannot write into domain 1's
//!   home (EACCES), but writes its own, relative paths included;
//! * without `--domid` the host assigns the id.
//!
//! Needs gcc, libxen-dev and xenstore-utils: without them the tests SKIP
//! loudly, or FAIL when `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[path = "../../conformance/src/support.rs"]
mod support;

fn skip_or_fail(why: &str) {
    support::skip_or_fail("vchan_identity", why, "gcc, libxen-dev and xenstore-utils");
}

/// Builds the C helper; `None` (after a SKIP/FAIL) if it cannot be built.
fn build_helper(dir: &Path) -> Option<PathBuf> {
    build_vchan_c(dir, "vchan_geom", &["-Werror"], skip_or_fail)
}

/// The host, ready once its sockets and token file exist.
fn start_host(dir: &Path) -> (Kill, PathBuf) {
    let (child, sock) = spawn_host(dir, &[".xs", ".token"], |_| {});
    (Kill(child), sock)
}

/// A fresh directory, removed (with the sockets in it) when dropped.
fn tmpdir(name: &str) -> support::TempDir {
    support::TempDir::new(&format!("id-{name}"))
}

fn domain_socket(sock: &Path, domid: u16) -> PathBuf {
    let mut s = sock.as_os_str().to_owned();
    s.push(format!(".d{domid}.xs"));
    PathBuf::from(s)
}

/// Waits until the host has torn the domains down (their sockets go last).
fn wait_gone(sock: &Path, domids: &[u16]) {
    let end = Instant::now() + Duration::from_secs(20);
    while domids.iter().any(|d| domain_socket(sock, *d).exists()) {
        assert!(
            Instant::now() < end,
            "domains {domids:?} were not torn down"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn unmodified_libxenvchan_server_dom1_client_dom2_every_geometry_stream_and_packet() {
    let dir = tmpdir("geom");
    let Some(helper) = build_helper(&dir) else {
        return;
    };
    build_compat();
    let (_host, sock) = start_host(&dir);
    // In-page rings (1024 and 2048 bytes in the shared page) and rings of
    // one or more separate pages, for each direction.
    let sizes = [1024usize, 2048, 4096, 16384, 65536];
    let n = (256 << 10).to_string();
    let path = "/local/domain/1/data/geom";
    let mut runs = 0;
    let mut seen = std::collections::BTreeSet::new();
    for mode in ["stream", "packet"] {
        for &rmin in &sizes {
            for &wmin in &sizes {
                let what = format!("{mode} read_min={rmin} write_min={wmin}");
                let server = exec(
                    &sock,
                    Some(1),
                    &helper,
                    &[
                        "server",
                        "2",
                        path,
                        &rmin.to_string(),
                        &wmin.to_string(),
                        mode,
                        &n,
                    ],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("server");
                let maxpkt = rmin.min(wmin).to_string();
                let client = exec(
                    &sock,
                    Some(2),
                    &helper,
                    &["client", "1", path, &maxpkt, mode, &n],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("client");
                let c = orders(&ok(
                    client.wait_with_output().unwrap(),
                    &format!("client ({what})"),
                ));
                let s = orders(&ok(
                    server.wait_with_output().unwrap(),
                    &format!("server ({what})"),
                ));
                // The server's rings are at least what it asked for, and
                // the client sees the same rings the other way round.
                assert!(
                    1usize << s.0 >= rmin && 1usize << s.1 >= wmin,
                    "{what}: {s:?}"
                );
                assert_eq!((c.0, c.1), (s.1, s.0), "{what}");
                seen.insert(s.0);
                seen.insert(s.1);
                wait_gone(&sock, &[1, 2]);
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 2 * sizes.len() * sizes.len());
    // In-page rings (1 KiB, 2 KiB) and one- and many-page rings all ran.
    for order in [10, 11, 12, 14, 16] {
        assert!(seen.contains(&order), "no ring of order {order}: {seen:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds the libxenstore errno probe (`None` after a SKIP/FAIL).
fn build_xs_probe(dir: &Path) -> Option<PathBuf> {
    if !Path::new("/usr/include/xenstore.h").exists() {
        skip_or_fail("/usr/include/xenstore.h not found");
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/xs_write_errno.c");
    let out = dir.join("xs_write_errno");
    let st = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-lxenstore")
        .status();
    match st {
        Ok(s) if s.success() => Some(out),
        other => {
            skip_or_fail(&format!("cannot build the libxenstore probe: {other:?}"));
            None
        }
    }
}

/// The "orders READ WRITE" line the helper prints.
fn orders(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("orders "))
        .unwrap_or_else(|| panic!("no ring orders in {out:?}"));
    let mut it = line.split(' ').map(|x| x.parse::<u32>().expect("order"));
    (
        it.next().expect("read order"),
        it.next().expect("write order"),
    )
}

fn xs_tools() -> bool {
    let have = Path::new("/usr/bin/xenstore-write").exists()
        && Path::new("/usr/bin/xenstore-read").exists();
    if !have {
        skip_or_fail("xenstore-write / xenstore-read not installed (xenstore-utils)");
    }
    have
}

#[test]
fn xenstore_write_as_domain_2_into_domain_1_home_is_eacces() {
    if !xs_tools() {
        return;
    }
    let dir = tmpdir("eacces");
    let (_host, sock) = start_host(&dir);
    // Domain 1 lives while this runs.
    let _dom1 = Kill(
        exec(&sock, Some(1), Path::new("/bin/sleep"), &["60"])
            .spawn()
            .expect("domain 1"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !domain_socket(&sock, 1).exists() {
        assert!(Instant::now() < end, "domain 1 did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sh = Path::new("/bin/sh");
    let probe = build_xs_probe(&dir);
    for target in [
        "/local/domain/1/data/x",
        "/local/domain/1/name",
        "/local/domain/1/new",
    ] {
        let out = exec(
            &sock,
            Some(2),
            Path::new("/usr/bin/xenstore-write"),
            &[target, "evil"],
        )
        .output()
        .unwrap();
        assert!(!out.status.success(), "domain 2 wrote {target}");
        // xenstore-write does not print the errno; libxenstore's own
        // xs_write, called the same way, shows it.
        if let Some(p) = &probe {
            let out = exec(&sock, Some(2), p, &[target, "evil"]).output().unwrap();
            assert!(!out.status.success(), "domain 2 wrote {target}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "EACCES\n", "{target}");
        }
    }
    if let Some(p) = &probe {
        let out = exec(&sock, Some(2), p, &["data/y", "fine"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }
    // Nor can it read domain 1's nodes, or write dom0's.
    let out = exec(
        &sock,
        Some(2),
        Path::new("/usr/bin/xenstore-read"),
        &["/local/domain/1/domid"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let out = exec(
        &sock,
        Some(2),
        Path::new("/usr/bin/xenstore-write"),
        &["/tool/x", "evil"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    // Its own home it may write, relative paths resolving there, and it
    // reads what the toolstack wrote for it.
    let got = ok(
        exec(
            &sock,
            Some(2),
            sh,
            &["-c", "xenstore-write data/x mine && xenstore-read /local/domain/2/data/x && xenstore-read domid && xenstore-read name"],
        )
        .output()
        .unwrap(),
        "domain 2 in its own home",
    );
    assert_eq!(got, "mine\n2\ndom2\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exec_without_domid_gets_a_host_assigned_domain() {
    if !xs_tools() {
        return;
    }
    let dir = tmpdir("assigned");
    let (_host, sock) = start_host(&dir);
    let got = ok(
        exec(
            &sock,
            None,
            Path::new("/bin/sh"),
            &[
                "-c",
                "echo $XENSHARE_DOMID; xenstore-read domid; echo $XENSTORED_PATH",
            ],
        )
        .output()
        .unwrap(),
        "assigned domain",
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 3, "{got}");
    let id: u16 = lines[0].parse().unwrap();
    assert!(id >= 1, "dom0 is never handed out");
    assert_eq!(
        lines[1], lines[0],
        "xenstored sees the process as its domain"
    );
    assert_eq!(Path::new(lines[2]), domain_socket(&sock, id));
    let _ = std::fs::remove_dir_all(&dir);
}
