//! Xen's own C client tools (Debian xenstore-utils) against our daemon,
//! through `XENSTORED_PATH`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{daemon, have_tool, xs, xs_ok};
use xenshare_xenstored::inproc;

const WRITE: &str = "/usr/bin/xenstore-write";
const READ: &str = "/usr/bin/xenstore-read";
const LS: &str = "/usr/bin/xenstore-ls";
const LIST: &str = "/usr/bin/xenstore-list";
const EXISTS: &str = "/usr/bin/xenstore-exists";
const RM: &str = "/usr/bin/xenstore-rm";
const CHMOD: &str = "/usr/bin/xenstore-chmod";
const WATCH: &str = "/usr/bin/xenstore-watch";

fn tools_present() -> bool {
    [WRITE, READ, LS, LIST, EXISTS, RM, CHMOD, WATCH]
        .iter()
        .all(|t| have_tool(t))
}

#[test]
fn write_read_list_exists_rm() {
    if !tools_present() {
        return;
    }
    let d = daemon("ctools");
    xs_ok(&d, WRITE, &["/vm/a", "hello", "/vm/b/c", "world"]);
    assert_eq!(xs_ok(&d, READ, &["/vm/a"]), "hello\n");
    assert_eq!(xs_ok(&d, READ, &["/vm/b/c", "/vm/a"]), "world\nhello\n");
    assert_eq!(xs_ok(&d, LIST, &["/vm"]), "a\nb\n");
    assert_eq!(xs_ok(&d, LIST, &["/vm/b"]), "c\n");
    // Implicitly created parents are empty.
    assert_eq!(xs_ok(&d, READ, &["/vm/b"]), "\n");
    assert!(xs(&d, EXISTS, &["/vm/b/c"]).status.success());
    assert!(!xs(&d, EXISTS, &["/vm/nope"]).status.success());
    let miss = xs(&d, READ, &["/vm/nope"]);
    assert!(!miss.status.success());
    xs_ok(&d, RM, &["/vm/b"]);
    assert!(!xs(&d, EXISTS, &["/vm/b/c"]).status.success());
    assert_eq!(xs_ok(&d, LIST, &["/vm"]), "a\n");
    // Relative paths are relative to /local/domain/0 for the socket.
    xs_ok(&d, WRITE, &["rel/key", "v"]);
    assert_eq!(xs_ok(&d, READ, &["/local/domain/0/rel/key"]), "v\n");
    // Invalid paths are refused.
    assert!(!xs(&d, WRITE, &["/bad//path", "x"]).status.success());
    assert!(!xs(&d, WRITE, &["/bad path", "x"]).status.success());
}

#[test]
fn ls_shows_the_tree_with_perms() {
    if !tools_present() {
        return;
    }
    let d = daemon("ctools-ls");
    xs_ok(&d, WRITE, &["/t/x", "1", "/t/y/z", "two"]);
    let out = xs_ok(&d, LS, &["/t"]);
    assert_eq!(out, "x = \"1\"\ny = \"\"\n z = \"two\"\n");
    let full = xs_ok(&d, LS, &["-f", "/t"]);
    assert_eq!(full, "/t/x = \"1\"\n/t/y = \"\"\n/t/y/z = \"two\"\n");
    // A fresh store has C xenstored's start-up nodes.
    let root = xs_ok(&d, LS, &["/"]);
    assert!(
        root.starts_with("tool = \"\"\n xenstored = \"\"\n"),
        "{root}"
    );
}

/// xenstore-ls -p pads with " . . ." up to the terminal width.
fn undot(s: &str) -> String {
    s.replace(" .", "")
}

#[test]
fn chmod_sets_permissions() {
    if !tools_present() {
        return;
    }
    let d = daemon("ctools-chmod");
    xs_ok(&d, WRITE, &["/p/node", "v"]);
    xs_ok(&d, CHMOD, &["/p/node", "n5", "r7", "b9"]);
    let out = xs_ok(&d, LS, &["-p", "/p"]);
    assert_eq!(undot(&out), "node = \"v\"  (n5,r7,b9)\n");
    // A guest connection sees the effect.
    let mut g7 = inproc::client(d.daemon(), xenshare::DomId(7));
    assert_eq!(g7.read("/p/node").unwrap(), b"v");
    assert!(g7.write("/p/node", b"x").is_err());
    let mut g8 = inproc::client(d.daemon(), xenshare::DomId(8));
    assert!(g8.read("/p/node").is_err());
    // Recursive chmod.
    xs_ok(&d, WRITE, &["/q/a/b", "1"]);
    xs_ok(&d, CHMOD, &["-r", "/q", "r0"]);
    assert_eq!(
        undot(&xs_ok(&d, LS, &["-p", "/q"])),
        "a = \"\"  (r0)\n b = \"1\"  (r0)\n"
    );
}

#[test]
fn watch_reports_changes() {
    if !tools_present() {
        return;
    }
    let d = daemon("ctools-watch");
    xs_ok(&d, WRITE, &["/w/k", "0"]);
    let mut child = Command::new(WATCH)
        .args(["-n", "3", "/w"])
        .env("XENSTORED_PATH", d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The initial firing on registration.
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    xs_ok(&d, WRITE, &["/w/k", "1"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w/k");
    xs_ok(&d, WRITE, &["/w/new/deep", "2"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w/new/deep");
    let status = child.wait().unwrap();
    assert!(status.success());
    // Changes elsewhere do not fire.
    let mut child = Command::new(WATCH)
        .args(["-n", "2", "/w/k"])
        .env("XENSTORED_PATH", d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "/w/k");
    xs_ok(&d, WRITE, &["/w/other", "x"]);
    std::thread::sleep(Duration::from_millis(100));
    xs_ok(&d, RM, &["/w/k"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w/k");
    assert!(child.wait().unwrap().success());
}
