//! Permissions: guests are confined, dom0 is not, creation inherits.

use xenshare::store::{Perms, XsError};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Config, Daemon};

fn perms(s: &[&str]) -> Perms {
    let f: Vec<&[u8]> = s.iter().map(|x| x.as_bytes()).collect();
    Perms::parse_fields(&f).unwrap()
}

#[test]
fn guest_is_confined_dom0_is_not() {
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    let mut g = inproc::client(&d, DomId(5));
    dom0.write("/secret", b"s").unwrap();
    assert_eq!(g.read("/secret").unwrap_err().xs(), Some(XsError::EACCES));
    assert_eq!(
        g.write("/secret", b"x").unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(
        g.write("/newtop", b"x").unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(g.rm("/secret").unwrap_err().xs(), Some(XsError::EACCES));
    assert_eq!(g.directory("/").unwrap_err().xs(), Some(XsError::EACCES));
    // Missing nodes under unreadable parents do not leak ENOENT.
    assert_eq!(
        g.read("/secret/none").unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    // Privileged operations.
    assert_eq!(
        g.introduce(DomId(9), 1, 1).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(
        g.is_domain_introduced(DomId(0)).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    // dom0 may do anything.
    dom0.set_perms("/secret", &perms(&["n7"])).unwrap();
    assert_eq!(dom0.read("/secret").unwrap(), b"s");
    dom0.write("/secret", b"t").unwrap();

    // Read-only grant.
    dom0.write("/shared", b"v").unwrap();
    dom0.set_perms("/shared", &perms(&["n0", "r5"])).unwrap();
    assert_eq!(g.read("/shared").unwrap(), b"v");
    assert_eq!(
        g.write("/shared", b"x").unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    // Readable parent: a missing child is ENOENT.
    assert_eq!(
        g.read("/shared/none").unwrap_err().xs(),
        Some(XsError::ENOENT)
    );
    // Not the owner: no permission changes.
    assert_eq!(
        g.set_perms("/shared", &perms(&["b5"])).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
}

#[test]
fn home_directory_and_inheritance() {
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    let mut g = inproc::client(&d, DomId(5));
    dom0.mkdir("/local/domain/5").unwrap();
    dom0.set_perms("/local/domain/5", &perms(&["n5", "r0", "r6"]))
        .unwrap();
    // Relative paths land in the guest's home.
    g.write("device/vif/0/state", b"1").unwrap();
    assert_eq!(
        dom0.read("/local/domain/5/device/vif/0/state").unwrap(),
        b"1"
    );
    // Implicit parents inherit the parent's ACL, owned by the creator.
    for p in [
        "/local/domain/5/device",
        "/local/domain/5/device/vif/0/state",
    ] {
        assert_eq!(
            dom0.get_perms(p).unwrap(),
            perms(&["n5", "r0", "r6"]),
            "{p}"
        );
    }
    // Domain 6 can read through the inherited entry, 7 cannot.
    let mut g6 = inproc::client(&d, DomId(6));
    let mut g7 = inproc::client(&d, DomId(7));
    assert_eq!(g6.read("/local/domain/5/device/vif/0/state").unwrap(), b"1");
    assert_eq!(
        g7.read("/local/domain/5/device/vif/0/state")
            .unwrap_err()
            .xs(),
        Some(XsError::EACCES)
    );
    // A guest may not give its node away.
    assert_eq!(
        g.set_perms("device", &perms(&["n6"])).unwrap_err().xs(),
        Some(XsError::EPERM)
    );
    g.set_perms("device", &perms(&["n5", "b6"])).unwrap();
    g6.write("/local/domain/5/device/x", b"1").unwrap();
    // Dom0 creating under the guest's tree keeps the parent's owner.
    dom0.write("/local/domain/5/device/fromdom0", b"1").unwrap();
    assert_eq!(
        dom0.get_perms("/local/domain/5/device/fromdom0")
            .unwrap()
            .owner(),
        DomId(5)
    );
}

#[test]
fn watches_only_fire_for_readable_nodes() {
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    let mut g = inproc::client(&d, DomId(5));
    dom0.mkdir("/local/domain/5").unwrap();
    dom0.set_perms("/local/domain/5", &perms(&["n5"])).unwrap();
    g.watch("/", b"root").unwrap();
    let t = Some(std::time::Duration::from_millis(200));
    assert_eq!(g.next_event(t).unwrap().unwrap().path, "/");
    dom0.write("/private", b"x").unwrap();
    dom0.write("/local/domain/5/mine", b"x").unwrap();
    assert_eq!(
        g.next_event(t).unwrap().unwrap().path,
        "/local/domain/5/mine"
    );
    assert!(g
        .next_event(Some(std::time::Duration::from_millis(50)))
        .unwrap()
        .is_none());
}

/// XSA-481 class: under `/local/domain/` a guest cannot create, change,
/// remove or re-permission another domain's nodes, nor create a home for a
/// domain that has none; its relative paths always resolve inside its own
/// home.
#[test]
fn guest_cannot_touch_another_domains_home_and_relative_paths_stay_home() {
    let d = Daemon::new(Config::default());
    let mut dom0 = inproc::client(&d, DomId(0));
    for id in [3u16, 4] {
        let home = format!("/local/domain/{id}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &perms(&[&format!("n{id}"), "r0"]))
            .unwrap();
    }
    dom0.write("/local/domain/4/name", b"four").unwrap();
    let mut g = inproc::client(&d, DomId(3));
    let other = "/local/domain/4";
    for p in [
        format!("{other}/name"),
        format!("{other}/new"),
        format!("{other}/a/b"),
    ] {
        assert_eq!(
            g.write(&p, b"x").unwrap_err().xs(),
            Some(XsError::EACCES),
            "{p}"
        );
        assert_eq!(g.mkdir(&p).unwrap_err().xs(), Some(XsError::EACCES), "{p}");
    }
    assert_eq!(
        g.rm(&format!("{other}/name")).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(g.rm(other).unwrap_err().xs(), Some(XsError::EACCES));
    assert_eq!(
        g.set_perms(other, &perms(&["n3"])).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    assert_eq!(
        g.read(&format!("{other}/name")).unwrap_err().xs(),
        Some(XsError::EACCES)
    );
    // No home for a domain that has none, nor anything else in /local/domain.
    for p in ["/local/domain/5", "/local/domain/5/x", "/local/domain/x"] {
        assert_eq!(
            g.write(p, b"x").unwrap_err().xs(),
            Some(XsError::EACCES),
            "{p}"
        );
    }
    // Inside a transaction too.
    let t = g.transaction_start().unwrap();
    assert_eq!(
        g.write_in(t, &format!("{other}/name"), b"x")
            .unwrap_err()
            .xs(),
        Some(XsError::EACCES)
    );
    g.transaction_end(t, false).unwrap();
    assert_eq!(dom0.read("/local/domain/4/name").unwrap(), b"four");
    assert_eq!(dom0.try_read("/local/domain/5").unwrap(), None);
    // Relative paths are the guest's own home, however they are spelled.
    g.write("name", b"three").unwrap();
    assert_eq!(dom0.read("/local/domain/3/name").unwrap(), b"three");
    assert_eq!(g.get_perms("name").unwrap().owner(), DomId(3));
    for p in ["../4/name", "./x", "name/../y"] {
        // Dots are not path components: these are odd names or invalid,
        // never another domain's node.
        let _ = g.write(p, b"x");
    }
    assert_eq!(dom0.read("/local/domain/4/name").unwrap(), b"four");
    assert_eq!(dom0.directory(other).unwrap(), vec!["name".to_string()]);
}
