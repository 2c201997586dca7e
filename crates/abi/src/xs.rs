//! The XenStore wire protocol and shared-ring transport
//! (`xen/include/public/io/xs_wire.h`, 4.17 layout).
//!
//! Every message, on the Unix socket, `/dev/xen/xenbus` or the ring page, is
//! an [`XsdSockmsg`] header followed by `len` payload bytes. The ring page
//! ([`XenstoreDomainInterface`]) carries the same framing as two byte
//! streams with free-running indices.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The 16-byte message header (`struct xsd_sockmsg`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XsdSockmsg {
    /// `XS_*` message type.
    pub r#type: u32,
    /// Chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// Transaction id; 0 for none.
    pub tx_id: u32,
    /// Payload bytes following the header.
    pub len: u32,
}

/// Size of the message header.
pub const XSD_SOCKMSG_SIZE: usize = core::mem::size_of::<XsdSockmsg>();

/// `XS_CONTROL`: implementation-defined commands.
pub const XS_CONTROL: u32 = 0;
/// `XS_DEBUG`: old name of [`XS_CONTROL`].
pub const XS_DEBUG: u32 = XS_CONTROL;
/// `XS_DIRECTORY`: list a node's children.
pub const XS_DIRECTORY: u32 = 1;
/// `XS_READ`: read a node's value.
pub const XS_READ: u32 = 2;
/// `XS_GET_PERMS`: read a node's permissions.
pub const XS_GET_PERMS: u32 = 3;
/// `XS_WATCH`: register a watch.
pub const XS_WATCH: u32 = 4;
/// `XS_UNWATCH`: remove a watch.
pub const XS_UNWATCH: u32 = 5;
/// `XS_TRANSACTION_START`.
pub const XS_TRANSACTION_START: u32 = 6;
/// `XS_TRANSACTION_END`: commit (`T`) or abort (`F`).
pub const XS_TRANSACTION_END: u32 = 7;
/// `XS_INTRODUCE`: tell the daemon about a new domain's ring (dom0 only).
pub const XS_INTRODUCE: u32 = 8;
/// `XS_RELEASE`: forget a domain (dom0 only).
pub const XS_RELEASE: u32 = 9;
/// `XS_GET_DOMAIN_PATH`: `/local/domain/<domid>`.
pub const XS_GET_DOMAIN_PATH: u32 = 10;
/// `XS_WRITE`: write a value, creating missing parents.
pub const XS_WRITE: u32 = 11;
/// `XS_MKDIR`: create a node.
pub const XS_MKDIR: u32 = 12;
/// `XS_RM`: remove a subtree.
pub const XS_RM: u32 = 13;
/// `XS_SET_PERMS`: replace a node's permissions.
pub const XS_SET_PERMS: u32 = 14;
/// `XS_WATCH_EVENT`: a watch fired (server to client only).
pub const XS_WATCH_EVENT: u32 = 15;
/// `XS_ERROR`: an error reply carrying the errno name.
pub const XS_ERROR: u32 = 16;
/// `XS_IS_DOMAIN_INTRODUCED`.
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
/// `XS_RESUME`: clear a domain's shutdown flag.
pub const XS_RESUME: u32 = 18;
/// `XS_SET_TARGET`: let a domain act on behalf of another.
pub const XS_SET_TARGET: u32 = 19;
/// `XS_RESET_WATCHES`: drop all of the connection's watches. (20, the old
/// `XS_RESTRICT`, was removed and stays invalid.)
pub const XS_RESET_WATCHES: u32 = 21;
/// `XS_DIRECTORY_PART`: list children in chunks.
pub const XS_DIRECTORY_PART: u32 = 22;
/// `XS_TYPE_COUNT` of the 4.17 headers: types at or above it are unknown to
/// a 4.17 daemon.
pub const XS_TYPE_COUNT: u32 = 23;
/// `XS_GET_FEATURE` (upstream 4.21+ only; equals the 4.17 [`XS_TYPE_COUNT`]).
pub const XS_GET_FEATURE: u32 = 23;
/// `XS_SET_FEATURE` (upstream 4.21+ only).
pub const XS_SET_FEATURE: u32 = 24;
/// `XS_GET_QUOTA` (upstream 4.21+ only).
pub const XS_GET_QUOTA: u32 = 25;
/// `XS_SET_QUOTA` (upstream 4.21+ only).
pub const XS_SET_QUOTA: u32 = 26;
/// `XS_INVALID`: guaranteed never to be a valid type.
pub const XS_INVALID: u32 = 0xFFFF;

/// Index of the path in an `XS_WATCH_EVENT` payload (`XS_WATCH_PATH`).
pub const XS_WATCH_PATH: usize = 0;
/// Index of the token in an `XS_WATCH_EVENT` payload (`XS_WATCH_TOKEN`).
pub const XS_WATCH_TOKEN: usize = 1;

/// The errno names an `XS_ERROR` reply may carry, in the header's
/// `xsd_errors[]` order.
pub const XSD_ERRORS: [&str; 16] = [
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
];

/// Largest payload in either direction.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// Size of each byte ring of the ring page.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// A xenstore ring index (`XENSTORE_RING_IDX`).
pub type XenstoreRingIdx = u32;

/// The position in a ring of the byte with index `idx` (`MASK_XENSTORE_IDX`).
pub const fn mask_xenstore_idx(idx: XenstoreRingIdx) -> usize {
    idx as usize & (XENSTORE_RING_SIZE - 1)
}

/// The xenstore ring page (`struct xenstore_domain_interface`, 4.17: 2076
/// bytes; upstream 4.21 appends `evtchn_port`).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenstoreDomainInterface {
    /// Requests, guest → daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events, daemon → guest.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// `req` consumer index (daemon).
    pub req_cons: XenstoreRingIdx,
    /// `req` producer index (guest).
    pub req_prod: XenstoreRingIdx,
    /// `rsp` consumer index (guest).
    pub rsp_cons: XenstoreRingIdx,
    /// `rsp` producer index (daemon).
    pub rsp_prod: XenstoreRingIdx,
    /// `XENSTORE_SERVER_FEATURE_*` bits the daemon supports.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`: why the daemon stopped serving the ring.
    pub error: u32,
}

/// Feature bit: the guest may ask for a reconnect via `connection`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// Feature bit: the `error` field is maintained.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `connection`: the steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: a reconnect is in progress.
pub const XENSTORE_RECONNECT: u32 = 1;

/// `error`: none.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (for example a payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(XSD_SOCKMSG_SIZE == 16);
    assert!(offset_of!(XsdSockmsg, len) == 12);
    assert!(size_of::<XenstoreDomainInterface>() == 2076);
    assert!(offset_of!(XenstoreDomainInterface, req_cons) == 2048);
    assert!(offset_of!(XenstoreDomainInterface, server_features) == 2064);
    assert!(offset_of!(XenstoreDomainInterface, error) == 2072);
};
