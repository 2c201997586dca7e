//! `xenshare console DOMID --host PATH` as a user meets it, in a real
//! terminal (tmux: send-keys / capture-pane): a demo guest runs as a domain
//! of a `xenshare host`; the console attaches, answers typed commands,
//! detaches on Ctrl-] leaving the guest running, attaches again and sees
//! new output, and ends when the guest's shell exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../conformance/src/support.rs"]
mod support;

mod common;
use common::*;
const DEADLINE: Duration = Duration::from_secs(60);

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new 120x40 session running `shell_cmd`; the pane stays after the
    /// command ends, with its exit status printed.
    fn session(&self, name: &str, shell_cmd: &str) {
        let wrapped = format!("{shell_cmd}; echo \"[console exited $?]\"; sleep 600");
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "40",
            &wrapped,
        ]);
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-J", "-t", name, "-S", "-500"])
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits (with a deadline) until `done` holds for the pane's text.
    fn wait(&self, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.screen(name);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; the pane shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

fn has_line(screen: &str, line: &str) -> bool {
    screen.lines().any(|l| l.trim_end() == line)
}

#[test]
fn attach_type_detach_reattach_and_exit_in_a_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        support::skip_or_fail("console_tmux", "tmux not found", "tmux");
        return;
    }
    let dir = support::TempDir::new("console-tmux");
    let (_host, sock) = console_host(&dir, DEADLINE);
    let mut guest = demo_guest(&dir, DEADLINE);

    let tmux = Tmux {
        sock: dir.join("tmux.sock"),
    };
    let attach = format!("{BIN} console 1 --host {}", sock.display());

    // First attach: boot text, then a command and its answer.
    tmux.session("a", &attach);
    tmux.wait("a", "the boot text and a prompt", |s| {
        s.contains("booting on guest1") && s.contains("guest1$ ")
    });
    tmux.keys("a", &["echo one", "Enter"]);
    tmux.wait("a", "the answer 'one'", |s| has_line(s, "one"));
    // Ctrl-] detaches; the console command ends, the guest goes on.
    tmux.keys("a", &["C-]"]);
    let s = tmux.wait("a", "the detach", |s| s.contains("[console exited"));
    assert!(s.contains("[detached from domain 1]"), "{s}");
    assert!(s.contains("[console exited 0]"), "{s}");
    assert!(
        guest.0.try_wait().expect("try_wait").is_none(),
        "the guest stopped on detach"
    );

    // Attach again: new output from the same guest (its uptime goes on).
    tmux.session("b", &attach);
    tmux.wait("b", "the re-attach banner and a prompt", |s| {
        s.contains("attach 2") && s.contains("guest1$ ")
    });
    assert!(
        !tmux.screen("b").contains("one"),
        "the second terminal shows the first session's output"
    );
    tmux.keys("b", &["echo two", "Enter"]);
    tmux.wait("b", "the answer 'two'", |s| has_line(s, "two"));
    tmux.keys("b", &["uptime", "Enter"]);
    tmux.wait("b", "the uptime", |s| {
        s.lines().any(|l| l.starts_with("up "))
    });

    // `exit` in the guest: its console closes and the guest process ends.
    tmux.keys("b", &["exit", "Enter"]);
    let s = tmux.wait("b", "the guest closing", |s| s.contains("[console exited"));
    assert!(s.contains("bye"), "{s}");
    assert!(s.contains("[domain 1 closed its console]"), "{s}");
    assert!(s.contains("[console exited 0]"), "{s}");
    let end = Instant::now() + DEADLINE;
    let st = loop {
        if let Some(st) = guest.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < end, "the guest did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "guest exited with {st}");
}
