//! `xenshare netback` where no Xen is needed: argument errors name the
//! option at fault, and off Xen the command says so (and creates nothing)
//! instead of failing obscurely. The serving path itself runs in the Xen
//! lab (`linux_netfront_on_xenshare_netback`, same library functions).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_xenshare");

fn netback(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("netback")
        .args(args)
        .output()
        .expect("run xenshare")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_options_are_usage_errors() {
    for args in [&["--domid", "1"][..], &["--tap", "xs0"][..], &[][..]] {
        let o = netback(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let e = stderr(&o);
        assert!(e.contains("required"), "{args:?}: {e}");
    }
    let o = netback(&["--domid", "guest", "--tap", "xs0"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("--domid"), "{}", stderr(&o));
}

#[test]
fn bad_values_are_refused_before_touching_xen() {
    for (args, want) in [
        (&["--domid", "0", "--tap", "xs0"][..], "--domid 0"),
        (&["--domid", "32767", "--tap", "xs0"][..], "--domid 32767"),
        (
            &["--domid", "1", "--tap", "much-too-long-name"][..],
            "--tap",
        ),
        (&["--domid", "1", "--tap", "a/b"][..], "--tap"),
        (
            &["--domid", "1", "--tap", "xs0", "--mac", "00:16:3e:zz:00:01"][..],
            "--mac",
        ),
        (
            &["--domid", "1", "--tap", "xs0", "--mac", "03:00:00:00:00:01"][..],
            "multicast",
        ),
    ] {
        let o = netback(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let e = stderr(&o);
        assert!(
            e.starts_with("xenshare: error: ") && e.contains(want),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn off_xen_it_says_so() {
    if Path::new("/dev/xen").exists() {
        eprintln!("SKIP off_xen_it_says_so: this machine has /dev/xen");
        return;
    }
    for args in [
        &["--domid", "1", "--tap", "xs0"][..],
        &["--domid", "1", "--tap", "xs0", "--detach"][..],
    ] {
        let o = netback(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let e = stderr(&o);
        assert!(
            e.contains("/dev/xen/") && e.contains("not a Xen domain"),
            "{args:?}: {e}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: printed {:?}", o.stdout);
    }
}
