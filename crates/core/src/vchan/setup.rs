//! Connecting: the server's grants and XenStore keys, the client's checks.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use xenshare_abi::vchan as abi;

use super::io::{RingLoc, Vchan, VchanSide};
use super::{DeviceError, VchanError};
use crate::event::Channel;
use crate::grant::{Exporter, Importer, Mapping, Share};
use crate::mem::{ReadOnly, SharedMem};
use crate::platform::{EventChannels, ForeignMapper, GrantBackend};
use crate::store::client::{Client, ClientError, Transport};
use crate::store::error::XsError;
use crate::store::perms::{Perm, PermKind, Perms};
use crate::types::{Access, DomId, GrantRef, Port};

/// Ring sizes as log2 of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VchanOrders {
    /// Client → server ring.
    pub left: u16,
    /// Server → client ring.
    pub right: u16,
}

impl VchanOrders {
    /// libxenvchan's choice for a server that reads at least `read_min`
    /// bytes at a time and writes `write_min`: small rings go inside the
    /// control page when both fit, otherwise the next power of two (at least
    /// one page).
    pub fn for_sizes(read_min: usize, write_min: usize) -> Result<Self, VchanError> {
        let max = 1usize << abi::VCHAN_MAX_ORDER;
        for s in [read_min, write_min] {
            if s > max {
                return Err(VchanError::BadSize(s));
            }
        }
        let order = |n: usize| -> u16 {
            let p = n.max(1 << abi::VCHAN_MIN_GRANTED_ORDER).next_power_of_two();
            p.trailing_zeros() as u16
        };
        let (mut left, mut right) = (order(read_min), order(write_min));
        if read_min <= 1024 && write_min <= 2048 {
            (left, right) = (10, 11);
        } else if read_min <= 2048 && write_min <= 1024 {
            (left, right) = (11, 10);
        } else if read_min <= 2048 {
            left = 11;
        } else if write_min <= 2048 {
            right = 11;
        }
        Ok(Self { left, right })
    }

    /// The client's checks on orders read from the control page.
    pub fn validate(self) -> Result<Self, VchanError> {
        let bad = |why| VchanError::BadOrders {
            left: self.left,
            right: self.right,
            why,
        };
        for o in [self.left, self.right] {
            if !(abi::VCHAN_MIN_ORDER..=abi::VCHAN_MAX_ORDER).contains(&o) {
                return Err(bad("order outside 10..=20"));
            }
        }
        if self.left == self.right && self.left < abi::VCHAN_MIN_GRANTED_ORDER {
            return Err(bad("two in-page rings of the same order overlap"));
        }
        // grants[] must end before any in-page ring and inside the page.
        let n = abi::ring_pages(self.left) + abi::ring_pages(self.right);
        let end = abi::VCHAN_GRANTS_OFFSET + 4 * n;
        let limit = [self.left, self.right]
            .into_iter()
            .filter_map(abi::in_page_ring_offset)
            .min()
            .unwrap_or(xenshare_abi::PAGE_SIZE);
        if end > limit {
            return Err(bad("grants[] overlaps a ring or runs past the page"));
        }
        Ok(self)
    }
}

/// The server's memory: the control page and granted ring pages.
pub struct ServerMem<B: GrantBackend> {
    pub(super) ctrl: Option<Share<B>>,
    pub(super) left: Option<Share<B>>,
    pub(super) right: Option<Share<B>>,
}

/// The client's memory: the mapped control page and ring pages.
pub struct ClientMem<M: ForeignMapper> {
    pub(super) ctrl: Option<Mapping<M>>,
    pub(super) left: Option<Mapping<M>>,
    /// Written by the server only: mapped read-only.
    pub(super) right: Option<Mapping<M, ReadOnly>>,
}

impl<B: GrantBackend> VchanSide for ServerMem<B> {
    const SERVER: bool = true;
    fn ctrl(&self) -> Option<SharedMem<'_>> {
        self.ctrl.as_ref().map(|s| s.mem())
    }
    fn external_rw(&self, left: bool) -> Option<SharedMem<'_>> {
        let s = if left { &self.left } else { &self.right };
        s.as_ref().map(|s| s.mem())
    }
    fn external_ro(&self, left: bool) -> Option<SharedMem<'_, ReadOnly>> {
        self.external_rw(left).map(SharedMem::read_only)
    }
    fn release(&mut self) {
        // Dropping a share revokes it, or quarantines it if the client still
        // maps it: the memory is never reused while reachable.
        self.left = None;
        self.right = None;
        self.ctrl = None;
    }
}

impl<M: ForeignMapper> VchanSide for ClientMem<M> {
    const SERVER: bool = false;
    fn ctrl(&self) -> Option<SharedMem<'_>> {
        self.ctrl.as_ref().map(|m| m.mem())
    }
    fn external_rw(&self, left: bool) -> Option<SharedMem<'_>> {
        // The client writes only the left ring.
        match left {
            true => self.left.as_ref().map(|m| m.mem()),
            false => None,
        }
    }
    fn external_ro(&self, left: bool) -> Option<SharedMem<'_, ReadOnly>> {
        match left {
            true => self.left.as_ref().map(|m| m.mem().read_only()),
            false => self.right.as_ref().map(|m| m.mem()),
        }
    }
    fn release(&mut self) {
        self.left = None;
        self.right = None;
        self.ctrl = None;
    }
}

fn loc(order: u16, left: bool) -> RingLoc {
    match abi::in_page_ring_offset(order) {
        Some(offset) => RingLoc::InPage { offset, order },
        None => RingLoc::External { left, order },
    }
}

/// Publishes a server's keys without a transaction, so that any number of
/// set-ups can run at once whatever the per-domain transaction quota (C
/// xenstored and ours allow 10 open transactions per domain; a set-up that
/// held one per connection is what makes many concurrent qrexec calls fail
/// in Qubes).
///
/// A client reads `ring-ref` first, then `event-channel`, and must never
/// see one without the other or a key it may not read. So: the directory is
/// created and given the final permissions first (new nodes inherit their
/// parent's), a stale `ring-ref` from an earlier server is removed, then
/// `event-channel` is written, then `ring-ref` last: once `ring-ref` exists,
/// both keys are complete and readable by the client. The keys' own
/// permissions are then set explicitly (a no-op for new nodes), in case a
/// stale node had other ones.
fn publish<T: Transport>(
    xs: &mut Client<T>,
    path: &str,
    ring_ref: GrantRef,
    port: Port,
    perms: &Perms,
) -> Result<(), ClientError> {
    let (k_ref, k_evt) = (format!("{path}/ring-ref"), format!("{path}/event-channel"));
    xs.mkdir(path)?;
    xs.set_perms(path, perms)?;
    match xs.rm(&k_ref) {
        Ok(()) => {}
        Err(e) if e.xs() == Some(XsError::ENOENT) => {}
        Err(e) => return Err(e),
    }
    xs.write(&k_evt, format!("{}", port.0).as_bytes())?;
    xs.set_perms(&k_evt, perms)?;
    xs.write(&k_ref, format!("{}", ring_ref.0).as_bytes())?;
    xs.set_perms(&k_ref, perms)?;
    Ok(())
}

/// A XenStore refusal that is a quota (nodes, memory, node size, entries:
/// `ENOSPC`; watches: `E2BIG`; memory: `ENOMEM`) becomes
/// [`VchanError::StoreQuota`]; anything else stays a store error.
fn quota_or_store(e: ClientError) -> VchanError {
    match e.xs() {
        Some(x @ (XsError::ENOSPC | XsError::E2BIG | XsError::ENOMEM)) => VchanError::StoreQuota(x),
        _ => DeviceError::Store(e).into(),
    }
}

/// Creates a vchan server for client domain `client` and publishes it at
/// `path` (`<path>/ring-ref`, `<path>/event-channel`, readable by the client
/// only). `read_min`/`write_min` choose the ring sizes as libxenvchan does.
///
/// `evt` should be a handle dedicated to this vchan: its events are consumed
/// by the vchan's waits.
pub fn server_init<B, E, T>(
    exporter: &Exporter<B>,
    evt: &Arc<E>,
    xs: &mut Client<T>,
    client: DomId,
    path: &str,
    read_min: usize,
    write_min: usize,
) -> Result<Vchan<ServerMem<B>, E>, VchanError>
where
    B: GrantBackend,
    E: EventChannels,
    T: Transport,
{
    let orders = VchanOrders::for_sizes(read_min, write_min)?;
    let chan = Channel::alloc_unbound(evt, client)?;
    let ctrl = exporter.share(client, 1, Access::ReadWrite)?;
    // If this side dies, the client sees srv_live drop and gets an event.
    match ctrl.set_unmap_notify(Some(abi::VCHAN_SRV_LIVE_OFFSET), Some(chan.port())) {
        Ok(()) | Err(crate::grant::GrantError::Unsupported(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let pages = |o: u16| abi::ring_pages(o);
    let left = match pages(orders.left) {
        0 => None,
        n => Some(exporter.share(client, n, Access::ReadWrite)?),
    };
    let right = match pages(orders.right) {
        0 => None,
        n => Some(exporter.share(client, n, Access::ReadWrite)?),
    };
    let m = ctrl.mem();
    let hdr = abi::VchanInterface {
        left_order: orders.left,
        right_order: orders.right,
        cli_live: abi::VCHAN_LIVE_WAITING,
        srv_live: abi::VCHAN_LIVE_CONNECTED,
        cli_notify: abi::VCHAN_NOTIFY_WRITE,
        srv_notify: 0,
        ..Default::default()
    };
    let mut grants: Vec<GrantRef> = Vec::new();
    grants.extend(left.iter().flat_map(|s| s.refs().iter().copied()));
    grants.extend(right.iter().flat_map(|s| s.refs().iter().copied()));
    for (i, g) in grants.iter().enumerate() {
        m.write(abi::VCHAN_GRANTS_OFFSET + 4 * i, &g.0.to_le_bytes())
            .map_err(|_| VchanError::BadSize(grants.len()))?;
    }
    m.write_obj(0, &hdr).map_err(|_| VchanError::BadSize(0))?;

    let me = exporter.domid();
    let ring_ref = ctrl.refs()[0];
    let perms = Perms::from_entries(alloc::vec![
        Perm {
            domid: me,
            kind: PermKind::None
        },
        Perm {
            domid: client,
            kind: PermKind::Read
        },
    ])
    .ok_or_else(|| DeviceError::bad_key("perms", "empty"))?;
    publish(xs, path, ring_ref, chan.port(), &perms).map_err(quota_or_store)?;
    Ok(Vchan::new(
        ServerMem {
            ctrl: Some(ctrl),
            left,
            right,
        },
        chan,
        loc(orders.left, true),
        loc(orders.right, false),
        Some(String::from(path)),
    ))
}

/// Reads `<path>/<key>`: a decimal `u32` ([`crate::store::xenbus`]'s one
/// strictness) that is not 0 (neither a grant ref nor a port of a server).
/// Unlike a device directory, a vchan key must be there (`ENOENT` is a
/// XenStore error, as libxenvchan sees it).
fn read_number<T: Transport>(
    xs: &mut Client<T>,
    key: &'static str,
    path: &str,
) -> Result<u32, VchanError> {
    let raw = xs.read(&format!("{path}/{key}"))?;
    let v = crate::store::xenbus::parse_decimal(&raw)
        .ok_or_else(|| DeviceError::bad_key(key, "not a decimal number"))?;
    let v = u32::try_from(v).map_err(|_| DeviceError::bad_key(key, "out of range"))?;
    if v == 0 {
        return Err(DeviceError::bad_key(key, "zero").into());
    }
    Ok(v)
}

/// Connects to the vchan server of domain `server` published at `path`.
///
/// `evt` should be a handle dedicated to this vchan.
pub fn client_init<M, E, T>(
    importer: &Importer<M>,
    evt: &Arc<E>,
    xs: &mut Client<T>,
    server: DomId,
    path: &str,
) -> Result<Vchan<ClientMem<M>, E>, VchanError>
where
    M: ForeignMapper,
    E: EventChannels,
    T: Transport,
{
    let ring_ref = GrantRef(read_number(xs, "ring-ref", path)?);
    let port = Port(read_number(xs, "event-channel", path)?);
    let chan = Channel::bind(evt, server, port)?;
    let ctrl = importer.map_rw(server, &[ring_ref])?;
    // If this side dies, the server sees cli_live drop and gets an event.
    ctrl.set_unmap_notify(Some(abi::VCHAN_CLI_LIVE_OFFSET), Some(chan.port()))?;
    let m = ctrl.mem();
    // The header is copied once; the orders are never read again.
    let hdr: abi::VchanInterface = m.read_obj(0).map_err(|_| VchanError::BadSize(0))?;
    let orders = VchanOrders {
        left: hdr.left_order,
        right: hdr.right_order,
    }
    .validate()?;
    let (nl, nr) = (abi::ring_pages(orders.left), abi::ring_pages(orders.right));
    let mut grants = alloc::vec![0u8; 4 * (nl + nr)];
    m.read(abi::VCHAN_GRANTS_OFFSET, &mut grants)
        .map_err(|_| VchanError::BadSize(nl + nr))?;
    let grefs: Vec<GrantRef> = grants
        .chunks_exact(4)
        .map(|c| GrantRef(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    // The client writes the left ring and only reads the right one.
    let left = match nl {
        0 => None,
        _ => Some(importer.map_rw(server, &grefs[..nl])?),
    };
    let right = match nr {
        0 => None,
        _ => Some(importer.map_ro(server, &grefs[nl..])?),
    };
    let v = Vchan::new(
        ClientMem {
            ctrl: Some(ctrl),
            left,
            right,
        },
        chan,
        loc(orders.right, false),
        loc(orders.left, true),
        None,
    );
    v.connect_client()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_orders_follow_libxenvchan() {
        let o = |r, w| VchanOrders::for_sizes(r, w).unwrap();
        assert_eq!(
            o(1024, 2048),
            VchanOrders {
                left: 10,
                right: 11
            }
        );
        assert_eq!(
            o(2048, 1024),
            VchanOrders {
                left: 11,
                right: 10
            }
        );
        assert_eq!(
            o(2048, 8192),
            VchanOrders {
                left: 11,
                right: 13
            }
        );
        assert_eq!(
            o(5000, 2048),
            VchanOrders {
                left: 13,
                right: 11
            }
        );
        assert_eq!(
            o(4096, 4096),
            VchanOrders {
                left: 12,
                right: 12
            }
        );
        assert_eq!(
            o(1 << 20, 1 << 20),
            VchanOrders {
                left: 20,
                right: 20
            }
        );
        assert!(VchanOrders::for_sizes((1 << 20) + 1, 0).is_err());
    }

    #[test]
    fn client_rejects_bad_orders() {
        let v = |l, r| VchanOrders { left: l, right: r }.validate();
        assert!(v(10, 11).is_ok() && v(11, 10).is_ok() && v(12, 20).is_ok());
        assert!(v(9, 12).is_err(), "below 10");
        assert!(v(12, 21).is_err(), "above 20");
        assert!(
            v(10, 10).is_err() && v(11, 11).is_err(),
            "equal in-page orders"
        );
        assert!(v(12, 12).is_ok(), "equal external orders are fine");
        // A 1 MiB ring needs 256 grants: they end at byte 1048, past an
        // in-page ring at 1024 but before one at 2048.
        assert!(
            v(10, 20).is_err(),
            "grants[] would overlap the order-10 ring"
        );
        assert!(v(11, 20).is_ok());
    }
}
