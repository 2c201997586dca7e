//! Shared by the host's test binaries: a domain played by a child process
//! (this same test binary, re-run with its `child` test and a role), driven
//! over its stdin and stdout.

#![allow(dead_code)] // each test binary uses what it needs

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use xenshare_host::{Host, HostConfig};

#[path = "../../../conformance/src/support.rs"]
pub mod support;

/// A host in its own directory `{tag}-{name}`, removed (after the host)
/// when dropped, and its socket path.
pub fn host(tag: &str, name: &str) -> (support::Scoped<Host>, PathBuf) {
    let dir = support::TempDir::new(&format!("{tag}-{name}"));
    let sock = dir.join("h.sock");
    (
        support::Scoped::new(Host::spawn(HostConfig::new(&sock)).unwrap(), dir),
        sock,
    )
}

/// Polls `f` every 5 ms; panics naming `what` after 60 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process of the running test binary, playing one role.
pub struct Proc {
    /// The child process.
    pub child: Child,
    out: BufReader<ChildStdout>,
    inp: ChildStdin,
}

impl Proc {
    /// Starts the `child` test of this binary with role `role`.
    pub fn spawn(role: &str, envs: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("XENSHARE_TEST_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let inp = child.stdin.take().unwrap();
        Proc { child, out, inp }
    }

    /// The next line the child prints that carries `CHILD `.
    pub fn expect(&mut self, want: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "child ended before {want}"
            );
            // libtest prints "test child ... " before the child's own output.
            if let Some(rest) = line.trim_end().split_once("CHILD ").map(|(_, r)| r) {
                assert!(
                    rest.starts_with(want),
                    "child said {rest:?}, expected {want}"
                );
                return rest.to_string();
            }
        }
    }

    /// Sends the child a line.
    pub fn say(&mut self, what: &str) {
        writeln!(self.inp, "{what}").unwrap();
        self.inp.flush().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
