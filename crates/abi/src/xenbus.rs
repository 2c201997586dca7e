//! The XenBus device state machine (`xen/include/public/io/xenbus.h`).
//!
//! Each end of a split device publishes its state as a decimal number in its
//! `state` node. These are the values of `enum xenbus_state`.

/// A XenBus state value (`XenbusState`, a C enum).
pub type XenbusState = u32;

/// Unknown; also what a missing `state` node means.
pub const XENBUS_STATE_UNKNOWN: XenbusState = 0;
/// The toolstack has created the device; the driver is starting.
pub const XENBUS_STATE_INITIALISING: XenbusState = 1;
/// Early initialisation done; waiting for the peer or hotplug scripts.
pub const XENBUS_STATE_INIT_WAIT: XenbusState = 2;
/// Transport parameters published; waiting for the peer to connect.
pub const XENBUS_STATE_INITIALISED: XenbusState = 3;
/// Connected.
pub const XENBUS_STATE_CONNECTED: XenbusState = 4;
/// Tear-down requested (error or unplug).
pub const XENBUS_STATE_CLOSING: XenbusState = 5;
/// Closed.
pub const XENBUS_STATE_CLOSED: XenbusState = 6;
/// Sub-devices are being reconfigured (pciback, scsi).
pub const XENBUS_STATE_RECONFIGURING: XenbusState = 7;
/// Reconfiguration done.
pub const XENBUS_STATE_RECONFIGURED: XenbusState = 8;
