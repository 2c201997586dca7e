//! The toolstack helper behind `xenshare blkback`: the XenStore layout that
//! Linux's blkfront accepts (as observed in the Xen lab), under a private
//! back-end type, served by xenshare's blkback and used by a front end.

use xenshare::blk::{BackConfig, FrontConfig};
use xenshare::store::{Perm, PermKind, Perms};
use xenshare::DomId;
use xenshare_devices::blk::{attach_vbd, detach_vbd, xvd_devid, VbdAttach, USERSPACE_BACKEND_TYPE};
use xenshare_testkit::blk::*;

const XVDB: u32 = 51728;

fn perms(owner: DomId, reader: DomId) -> Perms {
    Perms::from_entries(vec![
        Perm {
            domid: owner,
            kind: PermKind::None,
        },
        Perm {
            domid: reader,
            kind: PermKind::Read,
        },
    ])
    .unwrap()
}

#[test]
fn xvd_names_number_as_xen_vbd_interface_says() {
    assert_eq!(xvd_devid("xvda"), Some(51712));
    assert_eq!(xvd_devid("xvdb"), Some(XVDB));
    assert_eq!(xvd_devid("xvdp"), Some(202 << 8 | 15 << 4));
    assert_eq!(xvd_devid("xvdq"), Some(1 << 28 | 16 << 8));
    assert_eq!(xvd_devid("xvdaa"), Some(1 << 28 | 26 << 8));
    for bad in ["xvd", "sda", "xvdB", "xvda1", "xvdaaaa", "hda", ""] {
        assert_eq!(xvd_devid(bad), None, "{bad}");
    }
}

#[test]
fn attach_serve_and_detach_under_a_private_backend_type() {
    let w = world();
    let (g, d0) = (w.guest.id(), w.dom0.id());
    let mut xs0 = w.client(&w.dom0);
    let spec = VbdAttach {
        frontend: g,
        backend: d0,
        vdev: "xvdb",
        backend_type: USERSPACE_BACKEND_TYPE,
        params: "/srv/disk.img",
        read_only: false,
    };
    let paths = attach_vbd(&mut xs0, &spec).unwrap();
    assert_eq!(
        paths.back,
        format!("/local/domain/0/backend/xenshare-vbd/{}/{XVDB}", g.0)
    );
    assert_eq!(
        paths.front,
        format!("/local/domain/{}/device/vbd/{XVDB}", g.0)
    );
    // libxl's permissions: each side owns its directory, the peer reads it.
    assert_eq!(xs0.get_perms(&paths.back).unwrap(), perms(d0, g));
    assert_eq!(xs0.get_perms(&paths.front).unwrap(), perms(g, d0));
    // What Linux's frontend probe reads, readable by the guest.
    let mut xg = w.client(&w.guest);
    let read =
        |xs: &mut blk_common_xs::Xs, p: String| String::from_utf8(xs.read(&p).unwrap()).unwrap();
    assert_eq!(read(&mut xg, format!("{}/state", paths.front)), "1");
    assert_eq!(
        read(&mut xg, format!("{}/backend", paths.front)),
        paths.back
    );
    assert_eq!(read(&mut xg, format!("{}/backend-id", paths.front)), "0");
    assert_eq!(
        read(&mut xg, format!("{}/virtual-device", paths.front)),
        XVDB.to_string()
    );
    assert_eq!(read(&mut xg, format!("{}/state", paths.back)), "1");
    assert_eq!(read(&mut xg, format!("{}/mode", paths.back)), "w");
    // The same device twice is refused.
    assert!(attach_vbd(&mut xs0, &spec).is_err());

    let img = TmpImage::new("toolstack");
    let cfg = BackConfig {
        backend_type: USERSPACE_BACKEND_TYPE,
        ..BackConfig::new(g, XVDB)
    };
    let backend = w.spawn_backend(img.create(1 << 20), cfg).unwrap();
    let mut fe = w.frontend(FrontConfig::new(XVDB)).unwrap();
    {
        let mut disk = fe.connect(&mut xg).unwrap();
        disk.write_at(4096, &[0xA5; 8192]).unwrap();
        disk.flush().unwrap();
        let mut back = vec![0; 8192];
        disk.read_at(4096, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0xA5));
        disk.close(&mut xg).unwrap();
    }
    let (_, runs) = backend.stop().unwrap();
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    assert!(img.contents()[4096..12288].iter().all(|&b| b == 0xA5));

    detach_vbd(&mut xs0, &paths).unwrap();
    assert_eq!(xs0.try_read(&paths.back).unwrap(), None);
    assert_eq!(xs0.try_read(&paths.front).unwrap(), None);
    // Detaching what is gone is not an error.
    detach_vbd(&mut xs0, &paths).unwrap();
}

mod blk_common_xs {
    pub type Xs = xenshare_devices::blk::SimXs;
}
