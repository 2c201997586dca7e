//! The toolstack's part of a network device served from userspace on real
//! Xen (what `xl network-attach` writes), for xenshare's netback in dom0.
//!
//! [`attach_vif`] creates both XenStore directories in one transaction:
//! the back end's under a private type ([`USERSPACE_VIF_TYPE`], as QEMU's
//! userspace NIC uses its own) so that the kernel's `xen-netback`, if
//! loaded, never claims the device, and the guest's
//! `device/vif/<devid>` with `backend`, `backend-id`, `handle`, `mac` and
//! `state` = 1. Linux's netfront probes a device whose `state` reads 1 when
//! its watch fires and then follows its `backend` key, whatever the type;
//! with everything in one commit both hold at once. The back end then
//! serves it with [`super::run::spawn_backend_at`] on the directory this
//! returns, and [`detach_vif`] removes both directories afterwards.
//!
//! Used by `xenshare netback` and by the Xen lab's
//! `linux_netfront_on_xenshare_netback`.

use xenshare::net::xenbus::DEVTYPE;
use xenshare::net::Mac;
use xenshare::store::client::{Client, ClientError, Transport};
use xenshare::store::xenbus::{
    attach_device, backend_path, frontend_path, remove_device, DevicePaths, DeviceSpec,
};
use xenshare::DomId;

/// The back-end type directory of a userspace vif
/// (`/local/domain/<be>/backend/xenshare-vif/<fe>/<devid>`).
pub const USERSPACE_VIF_TYPE: &str = "xenshare-vif";

/// What [`attach_vif`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifAttach<'a> {
    /// The guest that gets the interface.
    pub frontend: DomId,
    /// The domain serving it (this one).
    pub backend: DomId,
    /// The device id (`device/vif/<devid>`; `eth<devid>` in a guest with
    /// no other vif).
    pub devid: u32,
    /// The guest's MAC address.
    pub mac: Mac,
    /// The back end's type directory ([`USERSPACE_VIF_TYPE`], or `vif`).
    pub backend_type: &'a str,
}

/// The directories of a vif, whether or not they exist.
pub fn vif_paths(a: &VifAttach<'_>) -> DevicePaths {
    DevicePaths {
        front: frontend_path(a.frontend, DEVTYPE, a.devid),
        back: backend_path(a.backend, a.backend_type, a.frontend, a.devid),
    }
}

/// Creates both directories of a vif, as a toolstack does (one
/// transaction; guest directory owned by the guest and readable by the
/// back end, back-end directory the other way round). Refuses a device
/// that already exists. Needs a privileged (dom0) client.
pub fn attach_vif<T: Transport>(
    xs: &mut Client<T>,
    a: &VifAttach<'_>,
) -> Result<DevicePaths, ClientError> {
    let (id, mac) = (a.devid.to_string(), a.mac.to_string());
    attach_device(
        xs,
        &DeviceSpec {
            devtype: DEVTYPE,
            devid: a.devid,
            frontend: a.frontend,
            backend: a.backend,
            front_keys: &[("handle", &id), ("mac", &mac)],
            back_keys: &[("handle", &id), ("mac", &mac), ("type", "xenshare")],
        },
        a.backend_type,
    )
}

/// Removes both directories of a vif made by [`attach_vif`] (what the
/// toolstack does after a detach). Missing nodes are not an error.
pub fn detach_vif<T: Transport>(
    xs: &mut Client<T>,
    paths: &DevicePaths,
) -> Result<(), ClientError> {
    remove_device(xs, paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_key_is_colon_hex_and_reads_back() {
        let mac = Mac([0x00, 0x16, 0x3e, 0x0a, 0xbc, 0xff]);
        let t = mac.to_string();
        assert_eq!(t, "00:16:3e:0a:bc:ff");
        assert_eq!(Mac::parse(t.as_bytes()), Some(mac));
    }

    #[test]
    fn paths_use_the_private_type_on_the_back_end_only() {
        let a = VifAttach {
            frontend: DomId(7),
            backend: DomId(0),
            devid: 2,
            mac: Mac([0; 6]),
            backend_type: USERSPACE_VIF_TYPE,
        };
        let p = vif_paths(&a);
        assert_eq!(p.front, "/local/domain/7/device/vif/2");
        assert_eq!(p.back, "/local/domain/0/backend/xenshare-vif/7/2");
    }
}
