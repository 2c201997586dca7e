//! The network device protocol (`xen/include/public/io/netif.h`).
//!
//! Two rings: tx (front → back packets; 12-byte slots) and rx (the front
//! posts empty pages, the back end fills them; 8-byte slots). A slot may
//! instead hold a [`NetifExtraInfo`] (GSO, multicast, hash) when the
//! preceding request or response sets the `extra_info` flag.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::grant::GrantRef;

/// tx flag: the checksum is blank (to be computed by the receiver).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// tx flag: the packet's data is already validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// tx flag: another fragment of the packet follows.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// tx flag: a [`NetifExtraInfo`] slot follows.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// rx flag: the packet's data is validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// rx flag: the checksum is blank.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// rx flag: another fragment of the packet follows.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// rx flag: a [`NetifExtraInfo`] slot follows.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// rx flag: a GSO prefix slot (deprecated).
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// Response status: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Response status: error.
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: done.
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status: placeholder response for an extra-info slot.
pub const NETIF_RSP_NULL: i16 = 1;

/// Largest packet a tx request may describe.
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;
/// Slots per packet a back end must accept at least.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// Extra type: none (never valid).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// Extra type: GSO ([`NetifExtraGso`]).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra type: add a multicast address ([`NetifExtraMcast`]).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra type: delete a multicast address ([`NetifExtraMcast`]).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra type: packet hash ([`NetifExtraHash`]).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last extra type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// Extra flag: another extra-info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// GSO type: none.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// GSO type: TCP over IPv4.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// GSO type: TCP over IPv6.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// A transmit request (`struct netif_tx_request`, 12 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxRequest {
    /// Grant of the data page (read-only to the back end).
    pub gref: GrantRef,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First slot: the whole packet's size; later slots: this fragment's.
    pub size: u16,
}

/// A transmit response (`struct netif_tx_response`, 4 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxResponse {
    /// The request's `id`.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// A receive request: an empty page for the back end (`struct
/// netif_rx_request`, 8 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Unused.
    pub pad: u16,
    /// Grant of the page (writable to the back end).
    pub gref: GrantRef,
}

/// A receive response (`struct netif_rx_response`, 8 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Positive: bytes received; negative: `NETIF_RSP_*`.
    pub status: i16,
}

/// A ring slot holding extra information (`struct netif_extra_info`, 8 bytes).
///
/// `u` is the C union, kept as raw 16-bit words (the union's alignment);
/// [`NetifExtraInfo::gso`], [`NetifExtraInfo::mcast`] and
/// [`NetifExtraInfo::hash`] reinterpret it by `type`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub r#type: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union of [`NetifExtraGso`], [`NetifExtraMcast`] and [`NetifExtraHash`].
    pub u: [u16; 3],
}

/// The GSO variant of [`NetifExtraInfo::u`].
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraGso {
    /// Maximum segment size.
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`.
    pub r#type: u8,
    /// Unused.
    pub pad: u8,
    /// GSO feature bits (none defined).
    pub features: u16,
}

/// The multicast variant of [`NetifExtraInfo::u`].
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraMcast {
    /// The Ethernet address.
    pub addr: [u8; 6],
}

/// The hash variant of [`NetifExtraInfo::u`].
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraHash {
    /// `XEN_NETIF_CTRL_HASH_TYPE_*` bit number.
    pub r#type: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash, little-endian.
    pub value: [u8; 4],
}

impl NetifExtraInfo {
    /// The union read as the GSO variant.
    pub fn gso(&self) -> NetifExtraGso {
        zerocopy::transmute!(self.u)
    }
    /// The union read as the multicast variant.
    pub fn mcast(&self) -> NetifExtraMcast {
        zerocopy::transmute!(self.u)
    }
    /// The union read as the hash variant.
    pub fn hash(&self) -> NetifExtraHash {
        zerocopy::transmute!(self.u)
    }
}

impl From<NetifExtraGso> for [u16; 3] {
    fn from(v: NetifExtraGso) -> Self {
        zerocopy::transmute!(v)
    }
}

impl From<NetifExtraMcast> for [u16; 3] {
    fn from(v: NetifExtraMcast) -> Self {
        zerocopy::transmute!(v)
    }
}

impl From<NetifExtraHash> for [u16; 3] {
    fn from(v: NetifExtraHash) -> Self {
        zerocopy::transmute!(v)
    }
}

/// Size of one tx ring slot (the larger of request and response).
pub const NETIF_TX_RING_ENTRY_SIZE: usize = core::mem::size_of::<NetifTxRequest>();
/// Size of one rx ring slot (request and response are the same size).
pub const NETIF_RX_RING_ENTRY_SIZE: usize = core::mem::size_of::<NetifRxResponse>();
/// Slots in a one-page tx ring.
pub const NETIF_TX_RING_SIZE: usize =
    crate::ring::ring_size(crate::PAGE_SIZE, NETIF_TX_RING_ENTRY_SIZE);
/// Slots in a one-page rx ring.
pub const NETIF_RX_RING_SIZE: usize =
    crate::ring::ring_size(crate::PAGE_SIZE, NETIF_RX_RING_ENTRY_SIZE);

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<NetifTxRequest>() == 12);
    assert!(offset_of!(NetifTxRequest, size) == 10);
    assert!(size_of::<NetifTxResponse>() == 4);
    assert!(size_of::<NetifRxRequest>() == 8);
    assert!(offset_of!(NetifRxRequest, gref) == 4);
    assert!(size_of::<NetifRxResponse>() == 8);
    assert!(offset_of!(NetifRxResponse, status) == 6);
    assert!(size_of::<NetifExtraInfo>() == 8);
    assert!(offset_of!(NetifExtraInfo, u) == 2);
    assert!(size_of::<NetifExtraGso>() == 6);
    assert!(size_of::<NetifExtraMcast>() == 6);
    assert!(size_of::<NetifExtraHash>() == 6);
    // Extra info shares slots with both rings' entries.
    assert!(size_of::<NetifExtraInfo>() <= NETIF_RX_RING_ENTRY_SIZE);
    assert!(NETIF_TX_RING_ENTRY_SIZE >= size_of::<NetifTxResponse>());
    assert!(NETIF_RX_RING_ENTRY_SIZE == size_of::<NetifRxRequest>());
    assert!(NETIF_TX_RING_SIZE == 256);
    assert!(NETIF_RX_RING_SIZE == 256);
};
