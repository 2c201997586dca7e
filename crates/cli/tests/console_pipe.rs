//! `xenshare console --demo-guest` fed from a pipe behaves like a terminal
//! session fed from a pipe: the guest's boot text, then its answers to each
//! line, and a clean exit once input has ended and the output has drained.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xenshare");

/// Runs the console with `input` on a pipe; returns (success, stdout,
/// stderr). Fails the test if the command is still running after a
/// generous deadline.
fn piped(input: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(["console", "--demo-guest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xenshare console");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write input");
    drop(stdin); // end of input
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xenshare console did not exit within 60 s after end of input");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        o.join().expect("stdout reader"),
        e.join().expect("stderr reader"),
    )
}

#[test]
fn piped_lines_get_boot_text_then_answers_and_a_clean_exit_at_eof() {
    let (ok, out, err) = piped(b"help\necho piped hello\nuptime\n");
    assert!(ok, "exit status; stderr: {err}");
    let boot = out
        .find("booting")
        .unwrap_or_else(|| panic!("no boot text in {out:?}"));
    let help = out
        .find("commands:")
        .unwrap_or_else(|| panic!("no help in {out:?}"));
    let echo = out
        .find("piped hello\r\n")
        .unwrap_or_else(|| panic!("no echo answer in {out:?}"));
    let up = out
        .find("up ")
        .unwrap_or_else(|| panic!("no uptime in {out:?}"));
    assert!(boot < help && help < echo && echo < up, "order: {out:?}");
    assert!(err.contains("[end of input;"), "stderr: {err}");
}

#[test]
fn piped_exit_ends_with_the_guest() {
    let (ok, out, err) = piped(b"echo before exit\nexit\necho never\n");
    assert!(ok, "exit status; stderr: {err}");
    assert!(out.contains("before exit\r\n"), "{out:?}");
    assert!(out.contains("bye"), "{out:?}");
    assert!(!out.contains("never\r\n"), "answered after exit: {out:?}");
    assert!(err.contains("exited]"), "stderr: {err}");
}

#[test]
fn empty_input_still_shows_the_boot_text() {
    let (ok, out, err) = piped(b"");
    assert!(ok, "exit status; stderr: {err}");
    assert!(out.contains("booting"), "{out:?}");
    assert!(out.contains("$ "), "no prompt: {out:?}");
}
