//! Basic Xen types and special domain ids (`xen/include/public/xen.h`).

/// A Xen domain id (`domid_t`).
pub type DomId = u16;

/// Log2 of the size of a page shared between domains.
pub const PAGE_SHIFT: u32 = 12;
/// The size of a page shared between domains, whatever the guest's own page size.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// The first domain id that names something other than a real domain.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;
/// "The calling domain".
pub const DOMID_SELF: DomId = 0x7FF0;
/// The I/O pseudo-domain.
pub const DOMID_IO: DomId = 0x7FF1;
/// The hypervisor itself.
pub const DOMID_XEN: DomId = 0x7FF2;
/// Copy-on-write pages.
pub const DOMID_COW: DomId = 0x7FF3;
/// No domain.
pub const DOMID_INVALID: DomId = 0x7FF4;
/// The idle domain.
pub const DOMID_IDLE: DomId = 0x7FFF;
/// Mask of valid domain id bits.
pub const DOMID_MASK: DomId = 0x7FFF;

/// Hypercall number of `HYPERVISOR_memory_op`.
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// Hypercall number of `HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// Hypercall number of `HYPERVISOR_event_channel_op` (the compat one is 16).
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// Hypercall number of `HYPERVISOR_hvm_op`.
pub const HYPERVISOR_HVM_OP: u32 = 34;

/// HVM parameter: the frame of the xenstore ring page.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// HVM parameter: the event channel port of the xenstore ring.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// HVM parameter: the frame of the primary console page.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// HVM parameter: the event channel port of the primary console.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
