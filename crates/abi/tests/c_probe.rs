//! Checks every layout and constant of the abi crate against the C headers
//! it mirrors: Debian's `libxen-dev` (Xen public headers) and
//! `linux-libc-dev` (Linux's Xen uapi headers).
//!
//! [`table`] pairs each Rust value with a C expression. The test writes a C
//! program that prints `name value` for every expression, compiles it with
//! `cc -D__XEN_TOOLS__` (which selects the latest interface version), runs
//! it, and reports every difference at once. A second test parses the
//! crate's sources so that a new `pub const`, `pub type`, struct or field
//! cannot be added without a line here (or an explicit "no C counterpart").
//!
//! Padding fields have no C counterpart; struct sizes, alignments and the
//! offsets of real fields pin them down.
//!
//! Without the headers or a C compiler the probe prints a SKIP banner and
//! passes, except when `CI=true`, where a skip is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use xenshare_abi::{blkif, console, event, grant, linux, netif, ring, vchan, xen, xenbus, xs};

/// The headers the probe includes, relative to the include root, in include
/// order (the uapi headers use `domid_t` / `grant_ref_t` from the first ones).
const HEADERS: &[&str] = &[
    "xen/xen.h",
    "xen/grant_table.h",
    "xen/event_channel.h",
    "xen/hvm/params.h",
    "xen/io/ring.h",
    "xen/io/libxenvchan.h",
    "xen/io/console.h",
    "xen/io/blkif.h",
    "xen/io/netif.h",
    "xen/io/protocols.h",
    "xen/io/xs_wire.h",
    "xen/io/xenbus.h",
    "xen/gntalloc.h",
    "xen/gntdev.h",
    "xen/evtchn.h",
];

/// Linux 6.1's header predates `IOCTL_EVTCHN_BIND_STATIC`; derive it with
/// the kernel's own `_IOC` when the header lacks it.
const C_PRELUDE: &str = "\
#ifndef IOCTL_EVTCHN_BIND_STATIC
#define IOCTL_EVTCHN_BIND_STATIC _IOC(_IOC_NONE, 'E', 7, sizeof(struct ioctl_evtchn_unbind))
#endif
";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    Int(i128),
    Str(String),
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Int(v) => write!(f, "{v}"),
            Val::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// What the C side of a check is.
#[derive(Clone, Debug)]
enum CSide {
    /// An integer expression.
    Int(String),
    /// A `const char *` expression.
    Str(String),
    /// Nothing in the headers defines this; the reason says where it comes from.
    Absent(&'static str),
}

#[derive(Clone, Debug)]
struct Check {
    name: String,
    c: CSide,
    rust: Val,
}

impl Check {
    fn int(name: impl Into<String>, c: impl Into<String>, rust: i128) -> Self {
        Self {
            name: name.into(),
            c: CSide::Int(c.into()),
            rust: Val::Int(rust),
        }
    }
    fn str(name: impl Into<String>, c: impl Into<String>, rust: &str) -> Self {
        Self {
            name: name.into(),
            c: CSide::Str(c.into()),
            rust: Val::Str(rust.into()),
        }
    }
    fn absent(name: impl Into<String>, why: &'static str, rust: Val) -> Self {
        Self {
            name: name.into(),
            c: CSide::Absent(why),
            rust,
        }
    }
}

/// Size and alignment of a struct against a C type (or expression).
macro_rules! size {
    ($m:ident :: $t:ident, $c:literal) => {
        vec![
            Check::int(
                concat!("size:", stringify!($m), "::", stringify!($t)),
                concat!("sizeof(", $c, ")"),
                core::mem::size_of::<$m::$t>() as i128,
            ),
            Check::int(
                concat!("align:", stringify!($m), "::", stringify!($t)),
                concat!("__alignof__(", $c, ")"),
                core::mem::align_of::<$m::$t>() as i128,
            ),
        ]
    };
}

/// Size of a struct against an arbitrary C expression (no alignment check).
macro_rules! sizex {
    ($m:ident :: $t:ident, $c:literal) => {
        vec![Check::int(
            concat!("size:", stringify!($m), "::", stringify!($t)),
            $c,
            core::mem::size_of::<$m::$t>() as i128,
        )]
    };
}

/// Size and signedness of a type alias against a C type.
macro_rules! ty {
    ($m:ident :: $t:ident, $c:literal) => {
        vec![
            Check::int(
                concat!("type:", stringify!($m), "::", stringify!($t)),
                concat!("sizeof(", $c, ")"),
                core::mem::size_of::<$m::$t>() as i128,
            ),
            Check::int(
                concat!("signed:", stringify!($m), "::", stringify!($t)),
                concat!("((", $c, ")-1 < 0)"),
                (<$m::$t>::MIN != 0) as i128,
            ),
        ]
    };
}

/// Offset of a field against `offsetof(C type, C field)`.
macro_rules! off {
    ($m:ident :: $t:ident . $f:ident, $cty:literal, $cf:literal) => {
        vec![Check::int(
            concat!(
                "offset:",
                stringify!($m),
                "::",
                stringify!($t),
                ".",
                stringify!($f)
            ),
            concat!("offsetof(", $cty, ", ", $cf, ")"),
            core::mem::offset_of!($m::$t, $f) as i128,
        )]
    };
}

/// Offset of a field against an arbitrary C expression.
macro_rules! offx {
    ($m:ident :: $t:ident . $f:ident, $c:literal) => {
        vec![Check::int(
            concat!(
                "offset:",
                stringify!($m),
                "::",
                stringify!($t),
                ".",
                stringify!($f)
            ),
            $c,
            core::mem::offset_of!($m::$t, $f) as i128,
        )]
    };
}

/// An integer constant against a C expression.
macro_rules! cst {
    ($m:ident :: $c:ident, $e:literal) => {
        vec![Check::int(
            concat!("const:", stringify!($m), "::", stringify!($c)),
            $e,
            $m::$c as i128,
        )]
    };
}

/// A string constant against a C string expression.
macro_rules! cstr {
    ($m:ident :: $c:ident, $e:literal) => {
        vec![Check::str(
            concat!("const:", stringify!($m), "::", stringify!($c)),
            $e,
            $m::$c,
        )]
    };
}

/// Any Rust integer expression against any C expression.
macro_rules! val {
    ($name:literal, $rust:expr, $e:literal) => {
        vec![Check::int($name, $e, ($rust) as i128)]
    };
}

/// A constant the headers do not define; `$why` names its source.
macro_rules! none {
    ($m:ident :: $c:ident, $why:literal) => {
        vec![Check::absent(
            concat!("const:", stringify!($m), "::", stringify!($c)),
            $why,
            Val::Int($m::$c as i128),
        )]
    };
}

/// Every check. One line per size / offset / constant (kept one line each,
/// hence no rustfmt).
#[rustfmt::skip]
fn table() -> Vec<Check> {
    let rows: Vec<Vec<Check>> = vec![
        // xen.rs
        ty!(xen::DomId, "domid_t"),
        cst!(xen::PAGE_SHIFT, "XEN_PAGE_SHIFT"),
        cst!(xen::PAGE_SIZE, "(1 << XEN_PAGE_SHIFT)"),
        cst!(xen::DOMID_FIRST_RESERVED, "DOMID_FIRST_RESERVED"),
        cst!(xen::DOMID_SELF, "DOMID_SELF"),
        cst!(xen::DOMID_IO, "DOMID_IO"),
        cst!(xen::DOMID_XEN, "DOMID_XEN"),
        cst!(xen::DOMID_COW, "DOMID_COW"),
        cst!(xen::DOMID_INVALID, "DOMID_INVALID"),
        cst!(xen::DOMID_IDLE, "DOMID_IDLE"),
        cst!(xen::DOMID_MASK, "DOMID_MASK"),
        cst!(xen::HYPERVISOR_MEMORY_OP, "__HYPERVISOR_memory_op"),
        cst!(xen::HYPERVISOR_GRANT_TABLE_OP, "__HYPERVISOR_grant_table_op"),
        cst!(xen::HYPERVISOR_EVENT_CHANNEL_OP, "__HYPERVISOR_event_channel_op"),
        cst!(xen::HYPERVISOR_HVM_OP, "__HYPERVISOR_hvm_op"),
        cst!(xen::HVM_PARAM_STORE_PFN, "HVM_PARAM_STORE_PFN"),
        cst!(xen::HVM_PARAM_STORE_EVTCHN, "HVM_PARAM_STORE_EVTCHN"),
        cst!(xen::HVM_PARAM_CONSOLE_PFN, "HVM_PARAM_CONSOLE_PFN"),
        cst!(xen::HVM_PARAM_CONSOLE_EVTCHN, "HVM_PARAM_CONSOLE_EVTCHN"),
        // grant.rs
        ty!(grant::GrantRef, "grant_ref_t"),
        ty!(grant::GrantHandle, "grant_handle_t"),
        ty!(grant::GrantStatus, "__typeof__(((struct gnttab_map_grant_ref *)0)->status)"),
        size!(grant::GrantEntryV1, "struct grant_entry_v1"),
        off!(grant::GrantEntryV1.flags, "struct grant_entry_v1", "flags"),
        off!(grant::GrantEntryV1.domid, "struct grant_entry_v1", "domid"),
        off!(grant::GrantEntryV1.frame, "struct grant_entry_v1", "frame"),
        cst!(grant::ENTRIES_PER_FRAME_V1, "(1 << XEN_PAGE_SHIFT) / sizeof(struct grant_entry_v1)"),
        cst!(grant::GNTTAB_NR_RESERVED_ENTRIES, "GNTTAB_NR_RESERVED_ENTRIES"),
        cst!(grant::GNTTAB_RESERVED_CONSOLE, "GNTTAB_RESERVED_CONSOLE"),
        cst!(grant::GNTTAB_RESERVED_XENSTORE, "GNTTAB_RESERVED_XENSTORE"),
        cst!(grant::GTF_INVALID, "GTF_invalid"),
        cst!(grant::GTF_PERMIT_ACCESS, "GTF_permit_access"),
        cst!(grant::GTF_ACCEPT_TRANSFER, "GTF_accept_transfer"),
        cst!(grant::GTF_TRANSITIVE, "GTF_transitive"),
        cst!(grant::GTF_TYPE_MASK, "GTF_type_mask"),
        cst!(grant::GTF_READONLY, "GTF_readonly"),
        cst!(grant::GTF_READING, "GTF_reading"),
        cst!(grant::GTF_WRITING, "GTF_writing"),
        cst!(grant::GTF_PWT, "GTF_PWT"),
        cst!(grant::GTF_PCD, "GTF_PCD"),
        cst!(grant::GTF_PAT, "GTF_PAT"),
        cst!(grant::GTF_SUB_PAGE, "GTF_sub_page"),
        cst!(grant::GTF_TRANSFER_COMMITTED, "GTF_transfer_committed"),
        cst!(grant::GTF_TRANSFER_COMPLETED, "GTF_transfer_completed"),
        cst!(grant::GNTTABOP_MAP_GRANT_REF, "GNTTABOP_map_grant_ref"),
        cst!(grant::GNTTABOP_UNMAP_GRANT_REF, "GNTTABOP_unmap_grant_ref"),
        cst!(grant::GNTTABOP_SETUP_TABLE, "GNTTABOP_setup_table"),
        cst!(grant::GNTTABOP_DUMP_TABLE, "GNTTABOP_dump_table"),
        cst!(grant::GNTTABOP_TRANSFER, "GNTTABOP_transfer"),
        cst!(grant::GNTTABOP_COPY, "GNTTABOP_copy"),
        cst!(grant::GNTTABOP_QUERY_SIZE, "GNTTABOP_query_size"),
        cst!(grant::GNTTABOP_UNMAP_AND_REPLACE, "GNTTABOP_unmap_and_replace"),
        cst!(grant::GNTTABOP_SET_VERSION, "GNTTABOP_set_version"),
        cst!(grant::GNTTABOP_GET_STATUS_FRAMES, "GNTTABOP_get_status_frames"),
        cst!(grant::GNTTABOP_GET_VERSION, "GNTTABOP_get_version"),
        cst!(grant::GNTTABOP_SWAP_GRANT_REF, "GNTTABOP_swap_grant_ref"),
        cst!(grant::GNTTABOP_CACHE_FLUSH, "GNTTABOP_cache_flush"),
        cst!(grant::GNTMAP_DEVICE_MAP, "GNTMAP_device_map"),
        cst!(grant::GNTMAP_HOST_MAP, "GNTMAP_host_map"),
        cst!(grant::GNTMAP_READONLY, "GNTMAP_readonly"),
        cst!(grant::GNTMAP_APPLICATION_MAP, "GNTMAP_application_map"),
        cst!(grant::GNTMAP_CONTAINS_PTE, "GNTMAP_contains_pte"),
        cst!(grant::GNTCOPY_SOURCE_GREF, "GNTCOPY_source_gref"),
        cst!(grant::GNTCOPY_DEST_GREF, "GNTCOPY_dest_gref"),
        cst!(grant::GNTST_OKAY, "GNTST_okay"),
        cst!(grant::GNTST_GENERAL_ERROR, "GNTST_general_error"),
        cst!(grant::GNTST_BAD_DOMAIN, "GNTST_bad_domain"),
        cst!(grant::GNTST_BAD_GNTREF, "GNTST_bad_gntref"),
        cst!(grant::GNTST_BAD_HANDLE, "GNTST_bad_handle"),
        cst!(grant::GNTST_BAD_VIRT_ADDR, "GNTST_bad_virt_addr"),
        cst!(grant::GNTST_BAD_DEV_ADDR, "GNTST_bad_dev_addr"),
        cst!(grant::GNTST_NO_DEVICE_SPACE, "GNTST_no_device_space"),
        cst!(grant::GNTST_PERMISSION_DENIED, "GNTST_permission_denied"),
        cst!(grant::GNTST_BAD_PAGE, "GNTST_bad_page"),
        cst!(grant::GNTST_BAD_COPY_ARG, "GNTST_bad_copy_arg"),
        cst!(grant::GNTST_ADDRESS_TOO_BIG, "GNTST_address_too_big"),
        cst!(grant::GNTST_EAGAIN, "GNTST_eagain"),
        cst!(grant::GNTST_NO_SPACE, "GNTST_no_space"),
        size!(grant::GnttabMapGrantRef, "struct gnttab_map_grant_ref"),
        off!(grant::GnttabMapGrantRef.host_addr, "struct gnttab_map_grant_ref", "host_addr"),
        off!(grant::GnttabMapGrantRef.flags, "struct gnttab_map_grant_ref", "flags"),
        off!(grant::GnttabMapGrantRef.r#ref, "struct gnttab_map_grant_ref", "ref"),
        off!(grant::GnttabMapGrantRef.dom, "struct gnttab_map_grant_ref", "dom"),
        off!(grant::GnttabMapGrantRef.status, "struct gnttab_map_grant_ref", "status"),
        off!(grant::GnttabMapGrantRef.handle, "struct gnttab_map_grant_ref", "handle"),
        off!(grant::GnttabMapGrantRef.dev_bus_addr, "struct gnttab_map_grant_ref", "dev_bus_addr"),
        size!(grant::GnttabUnmapGrantRef, "struct gnttab_unmap_grant_ref"),
        off!(grant::GnttabUnmapGrantRef.host_addr, "struct gnttab_unmap_grant_ref", "host_addr"),
        off!(grant::GnttabUnmapGrantRef.dev_bus_addr, "struct gnttab_unmap_grant_ref", "dev_bus_addr"),
        off!(grant::GnttabUnmapGrantRef.handle, "struct gnttab_unmap_grant_ref", "handle"),
        off!(grant::GnttabUnmapGrantRef.status, "struct gnttab_unmap_grant_ref", "status"),
        size!(grant::GnttabSetupTable, "struct gnttab_setup_table"),
        off!(grant::GnttabSetupTable.dom, "struct gnttab_setup_table", "dom"),
        off!(grant::GnttabSetupTable.nr_frames, "struct gnttab_setup_table", "nr_frames"),
        off!(grant::GnttabSetupTable.status, "struct gnttab_setup_table", "status"),
        off!(grant::GnttabSetupTable.frame_list, "struct gnttab_setup_table", "frame_list"),
        size!(grant::GnttabQuerySize, "struct gnttab_query_size"),
        off!(grant::GnttabQuerySize.dom, "struct gnttab_query_size", "dom"),
        off!(grant::GnttabQuerySize.nr_frames, "struct gnttab_query_size", "nr_frames"),
        off!(grant::GnttabQuerySize.max_nr_frames, "struct gnttab_query_size", "max_nr_frames"),
        off!(grant::GnttabQuerySize.status, "struct gnttab_query_size", "status"),
        size!(grant::GnttabCopyPtr, "struct gnttab_copy_ptr"),
        off!(grant::GnttabCopyPtr.u, "struct gnttab_copy_ptr", "u"),
        off!(grant::GnttabCopyPtr.domid, "struct gnttab_copy_ptr", "domid"),
        off!(grant::GnttabCopyPtr.offset, "struct gnttab_copy_ptr", "offset"),
        size!(grant::GnttabCopy, "struct gnttab_copy"),
        off!(grant::GnttabCopy.source, "struct gnttab_copy", "source"),
        off!(grant::GnttabCopy.dest, "struct gnttab_copy", "dest"),
        off!(grant::GnttabCopy.len, "struct gnttab_copy", "len"),
        off!(grant::GnttabCopy.flags, "struct gnttab_copy", "flags"),
        off!(grant::GnttabCopy.status, "struct gnttab_copy", "status"),
        // event.rs (the shared_info layout is per architecture: arch_table)
        ty!(event::Port, "evtchn_port_t"),
        cst!(event::EVTCHNOP_BIND_INTERDOMAIN, "EVTCHNOP_bind_interdomain"),
        cst!(event::EVTCHNOP_BIND_VIRQ, "EVTCHNOP_bind_virq"),
        cst!(event::EVTCHNOP_BIND_PIRQ, "EVTCHNOP_bind_pirq"),
        cst!(event::EVTCHNOP_CLOSE, "EVTCHNOP_close"),
        cst!(event::EVTCHNOP_SEND, "EVTCHNOP_send"),
        cst!(event::EVTCHNOP_STATUS, "EVTCHNOP_status"),
        cst!(event::EVTCHNOP_ALLOC_UNBOUND, "EVTCHNOP_alloc_unbound"),
        cst!(event::EVTCHNOP_BIND_IPI, "EVTCHNOP_bind_ipi"),
        cst!(event::EVTCHNOP_BIND_VCPU, "EVTCHNOP_bind_vcpu"),
        cst!(event::EVTCHNOP_UNMASK, "EVTCHNOP_unmask"),
        cst!(event::EVTCHNOP_RESET, "EVTCHNOP_reset"),
        cst!(event::EVTCHNSTAT_CLOSED, "EVTCHNSTAT_closed"),
        cst!(event::EVTCHNSTAT_UNBOUND, "EVTCHNSTAT_unbound"),
        cst!(event::EVTCHNSTAT_INTERDOMAIN, "EVTCHNSTAT_interdomain"),
        cst!(event::EVTCHNSTAT_PIRQ, "EVTCHNSTAT_pirq"),
        cst!(event::EVTCHNSTAT_VIRQ, "EVTCHNSTAT_virq"),
        cst!(event::EVTCHNSTAT_IPI, "EVTCHNSTAT_ipi"),
        cst!(event::BITS_PER_EVTCHN_WORD, "(sizeof(xen_ulong_t) * 8)"),
        cst!(event::EVTCHN_2L_NR_CHANNELS, "EVTCHN_2L_NR_CHANNELS"),
        size!(event::EvtchnAllocUnbound, "struct evtchn_alloc_unbound"),
        off!(event::EvtchnAllocUnbound.dom, "struct evtchn_alloc_unbound", "dom"),
        off!(event::EvtchnAllocUnbound.remote_dom, "struct evtchn_alloc_unbound", "remote_dom"),
        off!(event::EvtchnAllocUnbound.port, "struct evtchn_alloc_unbound", "port"),
        size!(event::EvtchnBindInterdomain, "struct evtchn_bind_interdomain"),
        off!(event::EvtchnBindInterdomain.remote_dom, "struct evtchn_bind_interdomain", "remote_dom"),
        off!(event::EvtchnBindInterdomain.remote_port, "struct evtchn_bind_interdomain", "remote_port"),
        off!(event::EvtchnBindInterdomain.local_port, "struct evtchn_bind_interdomain", "local_port"),
        size!(event::EvtchnPortOp, "struct evtchn_send"),
        off!(event::EvtchnPortOp.port, "struct evtchn_send", "port"),
        val!("size:evtchn_close", size_of::<event::EvtchnPortOp>(), "sizeof(struct evtchn_close)"),
        val!("size:evtchn_unmask", size_of::<event::EvtchnPortOp>(), "sizeof(struct evtchn_unmask)"),
        size!(event::EvtchnStatus, "struct evtchn_status"),
        off!(event::EvtchnStatus.dom, "struct evtchn_status", "dom"),
        off!(event::EvtchnStatus.port, "struct evtchn_status", "port"),
        off!(event::EvtchnStatus.status, "struct evtchn_status", "status"),
        off!(event::EvtchnStatus.vcpu, "struct evtchn_status", "vcpu"),
        off!(event::EvtchnStatus.u_dom, "struct evtchn_status", "u.interdomain.dom"),
        off!(event::EvtchnStatus.u_port, "struct evtchn_status", "u.interdomain.port"),
        val!("offset:evtchn_status.u.unbound.dom", core::mem::offset_of!(event::EvtchnStatus, u_dom), "offsetof(struct evtchn_status, u.unbound.dom)"),
        // ring.rs
        ty!(ring::RingIdx, "RING_IDX"),
        sizex!(ring::SringHeader, "offsetof(struct blkif_sring, ring)"),
        off!(ring::SringHeader.req_prod, "struct blkif_sring", "req_prod"),
        off!(ring::SringHeader.req_event, "struct blkif_sring", "req_event"),
        off!(ring::SringHeader.rsp_prod, "struct blkif_sring", "rsp_prod"),
        off!(ring::SringHeader.rsp_event, "struct blkif_sring", "rsp_event"),
        off!(ring::SringHeader.pvt, "struct blkif_sring", "pvt"),
        val!("size:sring.pvt", 4, "sizeof(((struct blkif_sring *)0)->pvt)"),
        cst!(ring::SRING_HEADER_SIZE, "offsetof(struct blkif_sring, ring)"),
        val!("ring::ring_size(8192,blkif)", ring::ring_size(8192, blkif::BLKIF_RING_ENTRY_SIZE), "__CONST_RING_SIZE(blkif, 8192)"),
        val!("ring::ring_size(16384,netif_tx)", ring::ring_size(16384, netif::NETIF_TX_RING_ENTRY_SIZE), "__CONST_RING_SIZE(netif_tx, 16384)"),
        val!("ring::xen_flex_ring_size(0)", ring::xen_flex_ring_size(0), "XEN_FLEX_RING_SIZE(0)"),
        val!("ring::xen_flex_ring_size(4)", ring::xen_flex_ring_size(4), "XEN_FLEX_RING_SIZE(4)"),
        // vchan.rs
        size!(vchan::RingShared, "struct ring_shared"),
        off!(vchan::RingShared.cons, "struct ring_shared", "cons"),
        off!(vchan::RingShared.prod, "struct ring_shared", "prod"),
        size!(vchan::VchanInterface, "struct vchan_interface"),
        off!(vchan::VchanInterface.left, "struct vchan_interface", "left"),
        off!(vchan::VchanInterface.right, "struct vchan_interface", "right"),
        off!(vchan::VchanInterface.left_order, "struct vchan_interface", "left_order"),
        off!(vchan::VchanInterface.right_order, "struct vchan_interface", "right_order"),
        off!(vchan::VchanInterface.cli_live, "struct vchan_interface", "cli_live"),
        off!(vchan::VchanInterface.srv_live, "struct vchan_interface", "srv_live"),
        off!(vchan::VchanInterface.cli_notify, "struct vchan_interface", "cli_notify"),
        off!(vchan::VchanInterface.srv_notify, "struct vchan_interface", "srv_notify"),
        cst!(vchan::VCHAN_GRANTS_OFFSET, "offsetof(struct vchan_interface, grants)"),
        cst!(vchan::VCHAN_CLI_LIVE_OFFSET, "offsetof(struct vchan_interface, cli_live)"),
        cst!(vchan::VCHAN_SRV_LIVE_OFFSET, "offsetof(struct vchan_interface, srv_live)"),
        cst!(vchan::VCHAN_NOTIFY_WRITE, "VCHAN_NOTIFY_WRITE"),
        cst!(vchan::VCHAN_NOTIFY_READ, "VCHAN_NOTIFY_READ"),
        none!(vchan::VCHAN_LIVE_CLOSED, "libxenvchan.h comment on cli_live/srv_live"),
        none!(vchan::VCHAN_LIVE_CONNECTED, "libxenvchan.h comment on cli_live/srv_live"),
        none!(vchan::VCHAN_LIVE_WAITING, "libxenvchan.h comment on cli_live"),
        none!(vchan::VCHAN_MIN_ORDER, "libxenvchan.h comment on left_order"),
        none!(vchan::VCHAN_MAX_ORDER, "libxenvchan init.c MAX_RING_SHIFT"),
        none!(vchan::VCHAN_MIN_GRANTED_ORDER, "libxenvchan.h comment on left_order"),
        none!(vchan::VCHAN_RING_OFFSET_ORDER_10, "libxenvchan.h comment on left_order"),
        none!(vchan::VCHAN_RING_OFFSET_ORDER_11, "libxenvchan.h comment on left_order"),
        // console.rs
        ty!(console::XenconsRingIdx, "XENCONS_RING_IDX"),
        cst!(console::XENCONS_IN_SIZE, "sizeof(((struct xencons_interface *)0)->in)"),
        cst!(console::XENCONS_OUT_SIZE, "sizeof(((struct xencons_interface *)0)->out)"),
        size!(console::XenconsInterface, "struct xencons_interface"),
        off!(console::XenconsInterface.r#in, "struct xencons_interface", "in"),
        off!(console::XenconsInterface.out, "struct xencons_interface", "out"),
        off!(console::XenconsInterface.in_cons, "struct xencons_interface", "in_cons"),
        off!(console::XenconsInterface.in_prod, "struct xencons_interface", "in_prod"),
        off!(console::XenconsInterface.out_cons, "struct xencons_interface", "out_cons"),
        off!(console::XenconsInterface.out_prod, "struct xencons_interface", "out_prod"),
        val!("console::mask_in(0x12345)", console::mask_in(0x12345), "MASK_XENCONS_IDX(0x12345u, ((struct xencons_interface *)0)->in)"),
        val!("console::mask_out(0x12345)", console::mask_out(0x12345), "MASK_XENCONS_IDX(0x12345u, ((struct xencons_interface *)0)->out)"),
        // blkif.rs
        ty!(blkif::BlkifVdev, "blkif_vdev_t"),
        ty!(blkif::BlkifSector, "blkif_sector_t"),
        none!(blkif::BLKIF_SECTOR_SIZE, "blkif.h prose: sector quantities are 512-byte units"),
        cst!(blkif::BLKIF_OP_READ, "BLKIF_OP_READ"),
        cst!(blkif::BLKIF_OP_WRITE, "BLKIF_OP_WRITE"),
        cst!(blkif::BLKIF_OP_WRITE_BARRIER, "BLKIF_OP_WRITE_BARRIER"),
        cst!(blkif::BLKIF_OP_FLUSH_DISKCACHE, "BLKIF_OP_FLUSH_DISKCACHE"),
        cst!(blkif::BLKIF_OP_RESERVED_1, "BLKIF_OP_RESERVED_1"),
        cst!(blkif::BLKIF_OP_DISCARD, "BLKIF_OP_DISCARD"),
        cst!(blkif::BLKIF_OP_INDIRECT, "BLKIF_OP_INDIRECT"),
        cst!(blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST, "BLKIF_MAX_SEGMENTS_PER_REQUEST"),
        cst!(blkif::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST"),
        cst!(blkif::BLKIF_SEGS_PER_INDIRECT_FRAME, "(1 << XEN_PAGE_SHIFT) / sizeof(struct blkif_request_segment)"),
        cst!(blkif::BLKIF_DISCARD_SECURE, "BLKIF_DISCARD_SECURE"),
        cst!(blkif::BLKIF_RSP_OKAY, "BLKIF_RSP_OKAY"),
        cst!(blkif::BLKIF_RSP_ERROR, "BLKIF_RSP_ERROR"),
        cst!(blkif::BLKIF_RSP_EOPNOTSUPP, "BLKIF_RSP_EOPNOTSUPP"),
        cst!(blkif::VDISK_CDROM, "VDISK_CDROM"),
        cst!(blkif::VDISK_REMOVABLE, "VDISK_REMOVABLE"),
        cst!(blkif::VDISK_READONLY, "VDISK_READONLY"),
        cstr!(blkif::XEN_IO_PROTO_ABI_X86_32, "XEN_IO_PROTO_ABI_X86_32"),
        cstr!(blkif::XEN_IO_PROTO_ABI_X86_64, "XEN_IO_PROTO_ABI_X86_64"),
        cstr!(blkif::XEN_IO_PROTO_ABI_ARM, "XEN_IO_PROTO_ABI_ARM"),
        cstr!(blkif::XEN_IO_PROTO_ABI_NATIVE, "XEN_IO_PROTO_ABI_NATIVE"),
        size!(blkif::BlkifRequestSegment, "struct blkif_request_segment"),
        off!(blkif::BlkifRequestSegment.gref, "struct blkif_request_segment", "gref"),
        off!(blkif::BlkifRequestSegment.first_sect, "struct blkif_request_segment", "first_sect"),
        off!(blkif::BlkifRequestSegment.last_sect, "struct blkif_request_segment", "last_sect"),
        size!(blkif::BlkifRequest, "struct blkif_request"),
        off!(blkif::BlkifRequest.operation, "struct blkif_request", "operation"),
        off!(blkif::BlkifRequest.nr_segments, "struct blkif_request", "nr_segments"),
        off!(blkif::BlkifRequest.handle, "struct blkif_request", "handle"),
        off!(blkif::BlkifRequest.id, "struct blkif_request", "id"),
        off!(blkif::BlkifRequest.sector_number, "struct blkif_request", "sector_number"),
        off!(blkif::BlkifRequest.seg, "struct blkif_request", "seg"),
        size!(blkif::BlkifRequestDiscard, "struct blkif_request_discard"),
        off!(blkif::BlkifRequestDiscard.operation, "struct blkif_request_discard", "operation"),
        off!(blkif::BlkifRequestDiscard.flag, "struct blkif_request_discard", "flag"),
        off!(blkif::BlkifRequestDiscard.handle, "struct blkif_request_discard", "handle"),
        off!(blkif::BlkifRequestDiscard.id, "struct blkif_request_discard", "id"),
        off!(blkif::BlkifRequestDiscard.sector_number, "struct blkif_request_discard", "sector_number"),
        off!(blkif::BlkifRequestDiscard.nr_sectors, "struct blkif_request_discard", "nr_sectors"),
        size!(blkif::BlkifRequestIndirect, "struct blkif_request_indirect"),
        off!(blkif::BlkifRequestIndirect.operation, "struct blkif_request_indirect", "operation"),
        off!(blkif::BlkifRequestIndirect.indirect_op, "struct blkif_request_indirect", "indirect_op"),
        off!(blkif::BlkifRequestIndirect.nr_segments, "struct blkif_request_indirect", "nr_segments"),
        off!(blkif::BlkifRequestIndirect.id, "struct blkif_request_indirect", "id"),
        off!(blkif::BlkifRequestIndirect.sector_number, "struct blkif_request_indirect", "sector_number"),
        off!(blkif::BlkifRequestIndirect.handle, "struct blkif_request_indirect", "handle"),
        off!(blkif::BlkifRequestIndirect.indirect_grefs, "struct blkif_request_indirect", "indirect_grefs"),
        size!(blkif::BlkifResponse, "struct blkif_response"),
        off!(blkif::BlkifResponse.id, "struct blkif_response", "id"),
        off!(blkif::BlkifResponse.operation, "struct blkif_response", "operation"),
        off!(blkif::BlkifResponse.status, "struct blkif_response", "status"),
        cst!(blkif::BLKIF_RING_ENTRY_SIZE, "sizeof(union blkif_sring_entry)"),
        cst!(blkif::BLKIF_RING_SIZE, "__CONST_RING_SIZE(blkif, 1 << XEN_PAGE_SHIFT)"),
        // netif.rs
        cst!(netif::NETTXF_CSUM_BLANK, "NETTXF_csum_blank"),
        cst!(netif::NETTXF_DATA_VALIDATED, "NETTXF_data_validated"),
        cst!(netif::NETTXF_MORE_DATA, "NETTXF_more_data"),
        cst!(netif::NETTXF_EXTRA_INFO, "NETTXF_extra_info"),
        cst!(netif::NETRXF_DATA_VALIDATED, "NETRXF_data_validated"),
        cst!(netif::NETRXF_CSUM_BLANK, "NETRXF_csum_blank"),
        cst!(netif::NETRXF_MORE_DATA, "NETRXF_more_data"),
        cst!(netif::NETRXF_EXTRA_INFO, "NETRXF_extra_info"),
        cst!(netif::NETRXF_GSO_PREFIX, "NETRXF_gso_prefix"),
        cst!(netif::NETIF_RSP_DROPPED, "NETIF_RSP_DROPPED"),
        cst!(netif::NETIF_RSP_ERROR, "NETIF_RSP_ERROR"),
        cst!(netif::NETIF_RSP_OKAY, "NETIF_RSP_OKAY"),
        cst!(netif::NETIF_RSP_NULL, "NETIF_RSP_NULL"),
        cst!(netif::XEN_NETIF_MAX_TX_SIZE, "XEN_NETIF_MAX_TX_SIZE"),
        cst!(netif::XEN_NETIF_NR_SLOTS_MIN, "XEN_NETIF_NR_SLOTS_MIN"),
        cst!(netif::XEN_NETIF_EXTRA_TYPE_NONE, "XEN_NETIF_EXTRA_TYPE_NONE"),
        cst!(netif::XEN_NETIF_EXTRA_TYPE_GSO, "XEN_NETIF_EXTRA_TYPE_GSO"),
        cst!(netif::XEN_NETIF_EXTRA_TYPE_MCAST_ADD, "XEN_NETIF_EXTRA_TYPE_MCAST_ADD"),
        cst!(netif::XEN_NETIF_EXTRA_TYPE_MCAST_DEL, "XEN_NETIF_EXTRA_TYPE_MCAST_DEL"),
        cst!(netif::XEN_NETIF_EXTRA_TYPE_HASH, "XEN_NETIF_EXTRA_TYPE_HASH"),
        cst!(netif::XEN_NETIF_EXTRA_TYPE_MAX, "XEN_NETIF_EXTRA_TYPE_MAX"),
        cst!(netif::XEN_NETIF_EXTRA_FLAG_MORE, "XEN_NETIF_EXTRA_FLAG_MORE"),
        cst!(netif::XEN_NETIF_GSO_TYPE_NONE, "XEN_NETIF_GSO_TYPE_NONE"),
        cst!(netif::XEN_NETIF_GSO_TYPE_TCPV4, "XEN_NETIF_GSO_TYPE_TCPV4"),
        cst!(netif::XEN_NETIF_GSO_TYPE_TCPV6, "XEN_NETIF_GSO_TYPE_TCPV6"),
        size!(netif::NetifTxRequest, "struct netif_tx_request"),
        off!(netif::NetifTxRequest.gref, "struct netif_tx_request", "gref"),
        off!(netif::NetifTxRequest.offset, "struct netif_tx_request", "offset"),
        off!(netif::NetifTxRequest.flags, "struct netif_tx_request", "flags"),
        off!(netif::NetifTxRequest.id, "struct netif_tx_request", "id"),
        off!(netif::NetifTxRequest.size, "struct netif_tx_request", "size"),
        size!(netif::NetifTxResponse, "struct netif_tx_response"),
        off!(netif::NetifTxResponse.id, "struct netif_tx_response", "id"),
        off!(netif::NetifTxResponse.status, "struct netif_tx_response", "status"),
        size!(netif::NetifRxRequest, "struct netif_rx_request"),
        off!(netif::NetifRxRequest.id, "struct netif_rx_request", "id"),
        off!(netif::NetifRxRequest.pad, "struct netif_rx_request", "pad"),
        off!(netif::NetifRxRequest.gref, "struct netif_rx_request", "gref"),
        size!(netif::NetifRxResponse, "struct netif_rx_response"),
        off!(netif::NetifRxResponse.id, "struct netif_rx_response", "id"),
        off!(netif::NetifRxResponse.offset, "struct netif_rx_response", "offset"),
        off!(netif::NetifRxResponse.flags, "struct netif_rx_response", "flags"),
        off!(netif::NetifRxResponse.status, "struct netif_rx_response", "status"),
        size!(netif::NetifExtraInfo, "struct netif_extra_info"),
        off!(netif::NetifExtraInfo.r#type, "struct netif_extra_info", "type"),
        off!(netif::NetifExtraInfo.flags, "struct netif_extra_info", "flags"),
        off!(netif::NetifExtraInfo.u, "struct netif_extra_info", "u"),
        val!("size:netif_extra_info.u", size_of::<[u16; 3]>(), "sizeof(((struct netif_extra_info *)0)->u)"),
        size!(netif::NetifExtraGso, "((struct netif_extra_info *)0)->u.gso"),
        offx!(netif::NetifExtraGso.size, "offsetof(struct netif_extra_info, u.gso.size) - offsetof(struct netif_extra_info, u)"),
        offx!(netif::NetifExtraGso.r#type, "offsetof(struct netif_extra_info, u.gso.type) - offsetof(struct netif_extra_info, u)"),
        offx!(netif::NetifExtraGso.pad, "offsetof(struct netif_extra_info, u.gso.pad) - offsetof(struct netif_extra_info, u)"),
        offx!(netif::NetifExtraGso.features, "offsetof(struct netif_extra_info, u.gso.features) - offsetof(struct netif_extra_info, u)"),
        size!(netif::NetifExtraMcast, "((struct netif_extra_info *)0)->u.mcast"),
        offx!(netif::NetifExtraMcast.addr, "offsetof(struct netif_extra_info, u.mcast.addr) - offsetof(struct netif_extra_info, u)"),
        size!(netif::NetifExtraHash, "((struct netif_extra_info *)0)->u.hash"),
        offx!(netif::NetifExtraHash.r#type, "offsetof(struct netif_extra_info, u.hash.type) - offsetof(struct netif_extra_info, u)"),
        offx!(netif::NetifExtraHash.algorithm, "offsetof(struct netif_extra_info, u.hash.algorithm) - offsetof(struct netif_extra_info, u)"),
        offx!(netif::NetifExtraHash.value, "offsetof(struct netif_extra_info, u.hash.value) - offsetof(struct netif_extra_info, u)"),
        cst!(netif::NETIF_TX_RING_ENTRY_SIZE, "sizeof(union netif_tx_sring_entry)"),
        cst!(netif::NETIF_RX_RING_ENTRY_SIZE, "sizeof(union netif_rx_sring_entry)"),
        cst!(netif::NETIF_TX_RING_SIZE, "__CONST_RING_SIZE(netif_tx, 1 << XEN_PAGE_SHIFT)"),
        cst!(netif::NETIF_RX_RING_SIZE, "__CONST_RING_SIZE(netif_rx, 1 << XEN_PAGE_SHIFT)"),
        // xs.rs
        size!(xs::XsdSockmsg, "struct xsd_sockmsg"),
        off!(xs::XsdSockmsg.r#type, "struct xsd_sockmsg", "type"),
        off!(xs::XsdSockmsg.req_id, "struct xsd_sockmsg", "req_id"),
        off!(xs::XsdSockmsg.tx_id, "struct xsd_sockmsg", "tx_id"),
        off!(xs::XsdSockmsg.len, "struct xsd_sockmsg", "len"),
        cst!(xs::XSD_SOCKMSG_SIZE, "sizeof(struct xsd_sockmsg)"),
        cst!(xs::XS_CONTROL, "XS_CONTROL"),
        cst!(xs::XS_DEBUG, "XS_DEBUG"),
        cst!(xs::XS_DIRECTORY, "XS_DIRECTORY"),
        cst!(xs::XS_READ, "XS_READ"),
        cst!(xs::XS_GET_PERMS, "XS_GET_PERMS"),
        cst!(xs::XS_WATCH, "XS_WATCH"),
        cst!(xs::XS_UNWATCH, "XS_UNWATCH"),
        cst!(xs::XS_TRANSACTION_START, "XS_TRANSACTION_START"),
        cst!(xs::XS_TRANSACTION_END, "XS_TRANSACTION_END"),
        cst!(xs::XS_INTRODUCE, "XS_INTRODUCE"),
        cst!(xs::XS_RELEASE, "XS_RELEASE"),
        cst!(xs::XS_GET_DOMAIN_PATH, "XS_GET_DOMAIN_PATH"),
        cst!(xs::XS_WRITE, "XS_WRITE"),
        cst!(xs::XS_MKDIR, "XS_MKDIR"),
        cst!(xs::XS_RM, "XS_RM"),
        cst!(xs::XS_SET_PERMS, "XS_SET_PERMS"),
        cst!(xs::XS_WATCH_EVENT, "XS_WATCH_EVENT"),
        cst!(xs::XS_ERROR, "XS_ERROR"),
        cst!(xs::XS_IS_DOMAIN_INTRODUCED, "XS_IS_DOMAIN_INTRODUCED"),
        cst!(xs::XS_RESUME, "XS_RESUME"),
        cst!(xs::XS_SET_TARGET, "XS_SET_TARGET"),
        cst!(xs::XS_RESET_WATCHES, "XS_RESET_WATCHES"),
        cst!(xs::XS_DIRECTORY_PART, "XS_DIRECTORY_PART"),
        cst!(xs::XS_TYPE_COUNT, "XS_TYPE_COUNT"),
        none!(xs::XS_GET_FEATURE, "upstream xs_wire.h 4.21+, not in 4.17"),
        none!(xs::XS_SET_FEATURE, "upstream xs_wire.h 4.21+, not in 4.17"),
        none!(xs::XS_GET_QUOTA, "upstream xs_wire.h 4.21+, not in 4.17"),
        none!(xs::XS_SET_QUOTA, "upstream xs_wire.h 4.21+, not in 4.17"),
        cst!(xs::XS_INVALID, "XS_INVALID"),
        cst!(xs::XS_WATCH_PATH, "XS_WATCH_PATH"),
        cst!(xs::XS_WATCH_TOKEN, "XS_WATCH_TOKEN"),
        val!("const:xs::XSD_ERRORS", xs::XSD_ERRORS.len(), "sizeof(xsd_errors) / sizeof(xsd_errors[0])"),
        (0..xs::XSD_ERRORS.len())
            .map(|i| Check::str(format!("xs::XSD_ERRORS[{i}]"), format!("xsd_errors[{i}].errstring"), xs::XSD_ERRORS[i]))
            .collect(),
        cst!(xs::XENSTORE_PAYLOAD_MAX, "XENSTORE_PAYLOAD_MAX"),
        cst!(xs::XENSTORE_ABS_PATH_MAX, "XENSTORE_ABS_PATH_MAX"),
        cst!(xs::XENSTORE_REL_PATH_MAX, "XENSTORE_REL_PATH_MAX"),
        cst!(xs::XENSTORE_RING_SIZE, "XENSTORE_RING_SIZE"),
        ty!(xs::XenstoreRingIdx, "XENSTORE_RING_IDX"),
        val!("xs::mask_xenstore_idx(0x12345)", xs::mask_xenstore_idx(0x12345), "MASK_XENSTORE_IDX(0x12345u)"),
        size!(xs::XenstoreDomainInterface, "struct xenstore_domain_interface"),
        off!(xs::XenstoreDomainInterface.req, "struct xenstore_domain_interface", "req"),
        off!(xs::XenstoreDomainInterface.rsp, "struct xenstore_domain_interface", "rsp"),
        off!(xs::XenstoreDomainInterface.req_cons, "struct xenstore_domain_interface", "req_cons"),
        off!(xs::XenstoreDomainInterface.req_prod, "struct xenstore_domain_interface", "req_prod"),
        off!(xs::XenstoreDomainInterface.rsp_cons, "struct xenstore_domain_interface", "rsp_cons"),
        off!(xs::XenstoreDomainInterface.rsp_prod, "struct xenstore_domain_interface", "rsp_prod"),
        off!(xs::XenstoreDomainInterface.server_features, "struct xenstore_domain_interface", "server_features"),
        off!(xs::XenstoreDomainInterface.connection, "struct xenstore_domain_interface", "connection"),
        off!(xs::XenstoreDomainInterface.error, "struct xenstore_domain_interface", "error"),
        cst!(xs::XENSTORE_SERVER_FEATURE_RECONNECTION, "XENSTORE_SERVER_FEATURE_RECONNECTION"),
        cst!(xs::XENSTORE_SERVER_FEATURE_ERROR, "XENSTORE_SERVER_FEATURE_ERROR"),
        cst!(xs::XENSTORE_CONNECTED, "XENSTORE_CONNECTED"),
        cst!(xs::XENSTORE_RECONNECT, "XENSTORE_RECONNECT"),
        cst!(xs::XENSTORE_ERROR_NONE, "XENSTORE_ERROR_NONE"),
        cst!(xs::XENSTORE_ERROR_COMM, "XENSTORE_ERROR_COMM"),
        cst!(xs::XENSTORE_ERROR_RINGIDX, "XENSTORE_ERROR_RINGIDX"),
        cst!(xs::XENSTORE_ERROR_PROTO, "XENSTORE_ERROR_PROTO"),
        // xenbus.rs
        ty!(xenbus::XenbusState, "XenbusState"),
        cst!(xenbus::XENBUS_STATE_UNKNOWN, "XenbusStateUnknown"),
        cst!(xenbus::XENBUS_STATE_INITIALISING, "XenbusStateInitialising"),
        cst!(xenbus::XENBUS_STATE_INIT_WAIT, "XenbusStateInitWait"),
        cst!(xenbus::XENBUS_STATE_INITIALISED, "XenbusStateInitialised"),
        cst!(xenbus::XENBUS_STATE_CONNECTED, "XenbusStateConnected"),
        cst!(xenbus::XENBUS_STATE_CLOSING, "XenbusStateClosing"),
        cst!(xenbus::XENBUS_STATE_CLOSED, "XenbusStateClosed"),
        cst!(xenbus::XENBUS_STATE_RECONFIGURING, "XenbusStateReconfiguring"),
        cst!(xenbus::XENBUS_STATE_RECONFIGURED, "XenbusStateReconfigured"),
        // linux.rs: gntalloc
        cst!(linux::GNTALLOC_FLAG_WRITABLE, "GNTALLOC_FLAG_WRITABLE"),
        cst!(linux::UNMAP_NOTIFY_CLEAR_BYTE, "UNMAP_NOTIFY_CLEAR_BYTE"),
        cst!(linux::UNMAP_NOTIFY_SEND_EVENT, "UNMAP_NOTIFY_SEND_EVENT"),
        size!(linux::IoctlGntallocAllocGref, "struct ioctl_gntalloc_alloc_gref"),
        off!(linux::IoctlGntallocAllocGref.domid, "struct ioctl_gntalloc_alloc_gref", "domid"),
        off!(linux::IoctlGntallocAllocGref.flags, "struct ioctl_gntalloc_alloc_gref", "flags"),
        off!(linux::IoctlGntallocAllocGref.count, "struct ioctl_gntalloc_alloc_gref", "count"),
        off!(linux::IoctlGntallocAllocGref.index, "struct ioctl_gntalloc_alloc_gref", "index"),
        off!(linux::IoctlGntallocAllocGref.gref_ids, "struct ioctl_gntalloc_alloc_gref", "gref_ids"),
        size!(linux::IoctlGntallocDeallocGref, "struct ioctl_gntalloc_dealloc_gref"),
        off!(linux::IoctlGntallocDeallocGref.index, "struct ioctl_gntalloc_dealloc_gref", "index"),
        off!(linux::IoctlGntallocDeallocGref.count, "struct ioctl_gntalloc_dealloc_gref", "count"),
        size!(linux::IoctlUnmapNotify, "struct ioctl_gntalloc_unmap_notify"),
        off!(linux::IoctlUnmapNotify.index, "struct ioctl_gntalloc_unmap_notify", "index"),
        off!(linux::IoctlUnmapNotify.action, "struct ioctl_gntalloc_unmap_notify", "action"),
        off!(linux::IoctlUnmapNotify.event_channel_port, "struct ioctl_gntalloc_unmap_notify", "event_channel_port"),
        val!("size:ioctl_gntdev_unmap_notify", size_of::<linux::IoctlUnmapNotify>(), "sizeof(struct ioctl_gntdev_unmap_notify)"),
        val!("offset:ioctl_gntdev_unmap_notify.event_channel_port", core::mem::offset_of!(linux::IoctlUnmapNotify, event_channel_port), "offsetof(struct ioctl_gntdev_unmap_notify, event_channel_port)"),
        cst!(linux::IOCTL_GNTALLOC_ALLOC_GREF, "IOCTL_GNTALLOC_ALLOC_GREF"),
        cst!(linux::IOCTL_GNTALLOC_DEALLOC_GREF, "IOCTL_GNTALLOC_DEALLOC_GREF"),
        cst!(linux::IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY"),
        // linux.rs: gntdev
        size!(linux::IoctlGntdevGrantRef, "struct ioctl_gntdev_grant_ref"),
        off!(linux::IoctlGntdevGrantRef.domid, "struct ioctl_gntdev_grant_ref", "domid"),
        off!(linux::IoctlGntdevGrantRef.r#ref, "struct ioctl_gntdev_grant_ref", "ref"),
        size!(linux::IoctlGntdevMapGrantRef, "struct ioctl_gntdev_map_grant_ref"),
        off!(linux::IoctlGntdevMapGrantRef.count, "struct ioctl_gntdev_map_grant_ref", "count"),
        off!(linux::IoctlGntdevMapGrantRef.pad, "struct ioctl_gntdev_map_grant_ref", "pad"),
        off!(linux::IoctlGntdevMapGrantRef.index, "struct ioctl_gntdev_map_grant_ref", "index"),
        off!(linux::IoctlGntdevMapGrantRef.refs, "struct ioctl_gntdev_map_grant_ref", "refs"),
        size!(linux::IoctlGntdevUnmapGrantRef, "struct ioctl_gntdev_unmap_grant_ref"),
        off!(linux::IoctlGntdevUnmapGrantRef.index, "struct ioctl_gntdev_unmap_grant_ref", "index"),
        off!(linux::IoctlGntdevUnmapGrantRef.count, "struct ioctl_gntdev_unmap_grant_ref", "count"),
        off!(linux::IoctlGntdevUnmapGrantRef.pad, "struct ioctl_gntdev_unmap_grant_ref", "pad"),
        size!(linux::IoctlGntdevGetOffsetForVaddr, "struct ioctl_gntdev_get_offset_for_vaddr"),
        off!(linux::IoctlGntdevGetOffsetForVaddr.vaddr, "struct ioctl_gntdev_get_offset_for_vaddr", "vaddr"),
        off!(linux::IoctlGntdevGetOffsetForVaddr.offset, "struct ioctl_gntdev_get_offset_for_vaddr", "offset"),
        off!(linux::IoctlGntdevGetOffsetForVaddr.count, "struct ioctl_gntdev_get_offset_for_vaddr", "count"),
        off!(linux::IoctlGntdevGetOffsetForVaddr.pad, "struct ioctl_gntdev_get_offset_for_vaddr", "pad"),
        size!(linux::IoctlGntdevSetMaxGrants, "struct ioctl_gntdev_set_max_grants"),
        off!(linux::IoctlGntdevSetMaxGrants.count, "struct ioctl_gntdev_set_max_grants", "count"),
        size!(linux::GntdevCopyForeign, "((struct gntdev_grant_copy_segment *)0)->source.foreign"),
        offx!(linux::GntdevCopyForeign.r#ref, "offsetof(struct gntdev_grant_copy_segment, source.foreign.ref)"),
        offx!(linux::GntdevCopyForeign.offset, "offsetof(struct gntdev_grant_copy_segment, source.foreign.offset)"),
        offx!(linux::GntdevCopyForeign.domid, "offsetof(struct gntdev_grant_copy_segment, source.foreign.domid)"),
        size!(linux::GntdevGrantCopySegment, "struct gntdev_grant_copy_segment"),
        off!(linux::GntdevGrantCopySegment.source, "struct gntdev_grant_copy_segment", "source"),
        off!(linux::GntdevGrantCopySegment.dest, "struct gntdev_grant_copy_segment", "dest"),
        off!(linux::GntdevGrantCopySegment.len, "struct gntdev_grant_copy_segment", "len"),
        off!(linux::GntdevGrantCopySegment.flags, "struct gntdev_grant_copy_segment", "flags"),
        off!(linux::GntdevGrantCopySegment.status, "struct gntdev_grant_copy_segment", "status"),
        size!(linux::IoctlGntdevGrantCopy, "struct ioctl_gntdev_grant_copy"),
        off!(linux::IoctlGntdevGrantCopy.count, "struct ioctl_gntdev_grant_copy", "count"),
        off!(linux::IoctlGntdevGrantCopy.segments, "struct ioctl_gntdev_grant_copy", "segments"),
        cst!(linux::GNTDEV_DMA_FLAG_WC, "GNTDEV_DMA_FLAG_WC"),
        cst!(linux::GNTDEV_DMA_FLAG_COHERENT, "GNTDEV_DMA_FLAG_COHERENT"),
        size!(linux::IoctlGntdevDmabufExpFromRefs, "struct ioctl_gntdev_dmabuf_exp_from_refs"),
        off!(linux::IoctlGntdevDmabufExpFromRefs.flags, "struct ioctl_gntdev_dmabuf_exp_from_refs", "flags"),
        off!(linux::IoctlGntdevDmabufExpFromRefs.count, "struct ioctl_gntdev_dmabuf_exp_from_refs", "count"),
        off!(linux::IoctlGntdevDmabufExpFromRefs.fd, "struct ioctl_gntdev_dmabuf_exp_from_refs", "fd"),
        off!(linux::IoctlGntdevDmabufExpFromRefs.domid, "struct ioctl_gntdev_dmabuf_exp_from_refs", "domid"),
        off!(linux::IoctlGntdevDmabufExpFromRefs.refs, "struct ioctl_gntdev_dmabuf_exp_from_refs", "refs"),
        size!(linux::IoctlGntdevDmabufExpWaitReleased, "struct ioctl_gntdev_dmabuf_exp_wait_released"),
        off!(linux::IoctlGntdevDmabufExpWaitReleased.fd, "struct ioctl_gntdev_dmabuf_exp_wait_released", "fd"),
        off!(linux::IoctlGntdevDmabufExpWaitReleased.wait_to_ms, "struct ioctl_gntdev_dmabuf_exp_wait_released", "wait_to_ms"),
        size!(linux::IoctlGntdevDmabufImpToRefs, "struct ioctl_gntdev_dmabuf_imp_to_refs"),
        off!(linux::IoctlGntdevDmabufImpToRefs.fd, "struct ioctl_gntdev_dmabuf_imp_to_refs", "fd"),
        off!(linux::IoctlGntdevDmabufImpToRefs.count, "struct ioctl_gntdev_dmabuf_imp_to_refs", "count"),
        off!(linux::IoctlGntdevDmabufImpToRefs.domid, "struct ioctl_gntdev_dmabuf_imp_to_refs", "domid"),
        off!(linux::IoctlGntdevDmabufImpToRefs.reserved, "struct ioctl_gntdev_dmabuf_imp_to_refs", "reserved"),
        off!(linux::IoctlGntdevDmabufImpToRefs.refs, "struct ioctl_gntdev_dmabuf_imp_to_refs", "refs"),
        size!(linux::IoctlGntdevDmabufImpRelease, "struct ioctl_gntdev_dmabuf_imp_release"),
        off!(linux::IoctlGntdevDmabufImpRelease.fd, "struct ioctl_gntdev_dmabuf_imp_release", "fd"),
        off!(linux::IoctlGntdevDmabufImpRelease.reserved, "struct ioctl_gntdev_dmabuf_imp_release", "reserved"),
        cst!(linux::IOCTL_GNTDEV_MAP_GRANT_REF, "IOCTL_GNTDEV_MAP_GRANT_REF"),
        cst!(linux::IOCTL_GNTDEV_UNMAP_GRANT_REF, "IOCTL_GNTDEV_UNMAP_GRANT_REF"),
        cst!(linux::IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR, "IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR"),
        cst!(linux::IOCTL_GNTDEV_SET_MAX_GRANTS, "IOCTL_GNTDEV_SET_MAX_GRANTS"),
        cst!(linux::IOCTL_GNTDEV_SET_UNMAP_NOTIFY, "IOCTL_GNTDEV_SET_UNMAP_NOTIFY"),
        cst!(linux::IOCTL_GNTDEV_GRANT_COPY, "IOCTL_GNTDEV_GRANT_COPY"),
        cst!(linux::IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS, "IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS"),
        cst!(linux::IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED, "IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED"),
        cst!(linux::IOCTL_GNTDEV_DMABUF_IMP_TO_REFS, "IOCTL_GNTDEV_DMABUF_IMP_TO_REFS"),
        cst!(linux::IOCTL_GNTDEV_DMABUF_IMP_RELEASE, "IOCTL_GNTDEV_DMABUF_IMP_RELEASE"),
        // linux.rs: evtchn
        size!(linux::IoctlEvtchnBindVirq, "struct ioctl_evtchn_bind_virq"),
        off!(linux::IoctlEvtchnBindVirq.virq, "struct ioctl_evtchn_bind_virq", "virq"),
        size!(linux::IoctlEvtchnBindInterdomain, "struct ioctl_evtchn_bind_interdomain"),
        off!(linux::IoctlEvtchnBindInterdomain.remote_domain, "struct ioctl_evtchn_bind_interdomain", "remote_domain"),
        off!(linux::IoctlEvtchnBindInterdomain.remote_port, "struct ioctl_evtchn_bind_interdomain", "remote_port"),
        size!(linux::IoctlEvtchnBindUnboundPort, "struct ioctl_evtchn_bind_unbound_port"),
        off!(linux::IoctlEvtchnBindUnboundPort.remote_domain, "struct ioctl_evtchn_bind_unbound_port", "remote_domain"),
        size!(linux::IoctlEvtchnPort, "struct ioctl_evtchn_unbind"),
        off!(linux::IoctlEvtchnPort.port, "struct ioctl_evtchn_unbind", "port"),
        val!("size:ioctl_evtchn_notify", size_of::<linux::IoctlEvtchnPort>(), "sizeof(struct ioctl_evtchn_notify)"),
        size!(linux::IoctlEvtchnRestrictDomid, "struct ioctl_evtchn_restrict_domid"),
        off!(linux::IoctlEvtchnRestrictDomid.domid, "struct ioctl_evtchn_restrict_domid", "domid"),
        cst!(linux::IOCTL_EVTCHN_BIND_VIRQ, "IOCTL_EVTCHN_BIND_VIRQ"),
        cst!(linux::IOCTL_EVTCHN_BIND_INTERDOMAIN, "IOCTL_EVTCHN_BIND_INTERDOMAIN"),
        cst!(linux::IOCTL_EVTCHN_BIND_UNBOUND_PORT, "IOCTL_EVTCHN_BIND_UNBOUND_PORT"),
        cst!(linux::IOCTL_EVTCHN_UNBIND, "IOCTL_EVTCHN_UNBIND"),
        cst!(linux::IOCTL_EVTCHN_NOTIFY, "IOCTL_EVTCHN_NOTIFY"),
        cst!(linux::IOCTL_EVTCHN_RESET, "IOCTL_EVTCHN_RESET"),
        cst!(linux::IOCTL_EVTCHN_RESTRICT_DOMID, "IOCTL_EVTCHN_RESTRICT_DOMID"),
        cst!(linux::IOCTL_EVTCHN_BIND_STATIC, "IOCTL_EVTCHN_BIND_STATIC"),
    ];
    let mut all = rows.concat();
    all.extend(arch_table().concat());
    let mut names = BTreeSet::new();
    for c in &all {
        // The probe prints `name value` lines.
        assert!(!c.name.contains(char::is_whitespace), "check name {:?} has whitespace", c.name);
        assert!(names.insert(c.name.as_str()), "check name {:?} appears twice", c.name);
    }
    all
}

/// The x86_64 `shared_info` layout (Arm's differs: one legacy vCPU slot).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
fn arch_table() -> Vec<Vec<Check>> {
    vec![
        cst!(event::XEN_LEGACY_MAX_VCPUS, "XEN_LEGACY_MAX_VCPUS"),
        size!(event::VcpuInfo, "struct vcpu_info"),
        off!(event::VcpuInfo.evtchn_upcall_pending, "struct vcpu_info", "evtchn_upcall_pending"),
        off!(event::VcpuInfo.evtchn_upcall_mask, "struct vcpu_info", "evtchn_upcall_mask"),
        off!(event::VcpuInfo.evtchn_pending_sel, "struct vcpu_info", "evtchn_pending_sel"),
        off!(event::VcpuInfo.arch, "struct vcpu_info", "arch"),
        off!(event::VcpuInfo.time, "struct vcpu_info", "time"),
        size!(event::SharedInfo, "struct shared_info"),
        off!(event::SharedInfo.vcpu_info, "struct shared_info", "vcpu_info"),
        off!(event::SharedInfo.evtchn_pending, "struct shared_info", "evtchn_pending"),
        off!(event::SharedInfo.evtchn_mask, "struct shared_info", "evtchn_mask"),
        off!(event::SharedInfo.wc_version, "struct shared_info", "wc_version"),
        off!(event::SharedInfo.wc_sec, "struct shared_info", "wc_sec"),
        off!(event::SharedInfo.wc_nsec, "struct shared_info", "wc_nsec"),
        off!(event::SharedInfo.wc_sec_hi, "struct shared_info", "wc_sec_hi"),
        off!(event::SharedInfo.arch, "struct shared_info", "arch"),
        cst!(event::SHARED_INFO_PENDING_OFFSET, "offsetof(struct shared_info, evtchn_pending)"),
        cst!(event::SHARED_INFO_MASK_OFFSET, "offsetof(struct shared_info, evtchn_mask)"),
    ]
}

/// On other architectures the x86_64 `shared_info` items have no C counterpart.
#[cfg(not(target_arch = "x86_64"))]
fn arch_table() -> Vec<Vec<Check>> {
    const WHY: &str = "x86_64 layout; this host's headers describe another architecture";
    let absent = |name: &str| Check::absent(name, WHY, Val::Int(0));
    let mut v = vec![absent("const:event::XEN_LEGACY_MAX_VCPUS")];
    v.push(absent("const:event::SHARED_INFO_PENDING_OFFSET"));
    v.push(absent("const:event::SHARED_INFO_MASK_OFFSET"));
    for t in ["VcpuInfo", "SharedInfo"] {
        v.push(absent(&format!("size:event::{t}")));
    }
    for f in [
        "evtchn_upcall_pending",
        "evtchn_upcall_mask",
        "evtchn_pending_sel",
        "arch",
        "time",
    ] {
        v.push(absent(&format!("offset:event::VcpuInfo.{f}")));
    }
    for f in [
        "vcpu_info",
        "evtchn_pending",
        "evtchn_mask",
        "wc_version",
        "wc_sec",
        "wc_nsec",
        "wc_sec_hi",
        "arch",
    ] {
        v.push(absent(&format!("offset:event::SharedInfo.{f}")));
    }
    vec![v]
}

/// The C program printing `name value` for every check with a C side.
fn c_program(checks: &[Check]) -> String {
    let mut s = String::from("#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n");
    s.push_str("#include <errno.h>\n#include <sys/ioctl.h>\n");
    for h in HEADERS {
        s.push_str(&format!("#include <{h}>\n"));
    }
    s.push_str(C_PRELUDE);
    s.push_str("\nint main(void)\n{\n");
    for c in checks {
        match &c.c {
            CSide::Int(e) => s.push_str(&format!(
                "    printf(\"%s %lld\\n\", \"{}\", (long long)({e}));\n",
                c.name
            )),
            CSide::Str(e) => {
                s.push_str(&format!("    printf(\"%s %s\\n\", \"{}\", {e});\n", c.name))
            }
            CSide::Absent(_) => {}
        }
    }
    s.push_str("    return 0;\n}\n");
    s
}

/// Compares the probe's output with the Rust values; one message per
/// mismatch, missing or unparsable line.
fn compare(checks: &[Check], output: &str) -> Vec<String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut errors = Vec::new();
    for line in output.lines() {
        match line.split_once(' ') {
            Some((name, value)) => {
                seen.insert(name, value);
            }
            None => errors.push(format!("unparsable probe output line {line:?}")),
        }
    }
    for c in checks {
        let expr = match &c.c {
            CSide::Int(e) | CSide::Str(e) => e,
            CSide::Absent(_) => continue,
        };
        let Some(raw) = seen.get(c.name.as_str()) else {
            errors.push(format!("{}: no value from C  [{expr}]", c.name));
            continue;
        };
        let got = match &c.c {
            CSide::Int(_) => match raw.trim().parse::<i128>() {
                Ok(v) => Val::Int(v),
                Err(_) => {
                    errors.push(format!(
                        "{}: C printed {raw:?}, not an integer  [{expr}]",
                        c.name
                    ));
                    continue;
                }
            },
            _ => Val::Str((*raw).to_string()),
        };
        if got != c.rust {
            errors.push(format!("{}: Rust {}, C {got}  [{expr}]", c.name, c.rust));
        }
    }
    errors
}

#[path = "../../conformance/src/support.rs"]
mod support;

fn skip(reason: &str) {
    support::skip_or_fail(
        "c_probe (the abi crate NOT checked against the C headers)",
        reason,
        "libxen-dev, linux-libc-dev and a C compiler (gcc, libc6-dev)",
    );
}

fn include_root() -> PathBuf {
    std::env::var_os("XENSHARE_C_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"))
}

fn c_compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_string())
}

#[test]
fn layouts_and_constants_match_c_headers() {
    let root = include_root();
    let missing: Vec<_> = HEADERS.iter().filter(|h| !root.join(h).is_file()).collect();
    if !missing.is_empty() {
        return skip(&format!(
            "headers not found under {}: {missing:?}",
            root.display()
        ));
    }
    let cc = c_compiler();
    if Command::new(&cc)
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return skip(&format!(
            "no working C compiler `{cc}` (set CC to choose one)"
        ));
    }

    let checks = table();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_probe");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, c_program(&checks)).unwrap();

    let out = Command::new(&cc)
        .args(["-std=gnu11", "-D__XEN_TOOLS__", "-Wall", "-o"])
        .arg(&bin)
        .arg("-I")
        .arg(&root)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compiling {} failed (a C expression in the table is wrong, or the headers changed):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().unwrap();
    assert!(
        run.status.success(),
        "{} failed: {:?}",
        bin.display(),
        run.status
    );
    let stdout = String::from_utf8(run.stdout).unwrap();

    let errors = compare(&checks, &stdout);
    let compared = checks
        .iter()
        .filter(|c| !matches!(c.c, CSide::Absent(_)))
        .count();
    assert!(
        errors.is_empty(),
        "{} of {compared} checks differ from the C headers:\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
    eprintln!("c_probe: all {compared} checks match the C headers; without a C counterpart:");
    for c in &checks {
        if let CSide::Absent(why) = c.c {
            eprintln!("  {} = {}  ({why})", c.name, c.rust);
        }
    }
}

/// Every `pub const`, `pub type`, struct and (non-padding) field in the
/// crate's sources, named the way the table names its checks.
fn abi_items() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut items = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut in_struct: Option<String> = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(s) = &in_struct {
                if line.starts_with('}') {
                    in_struct = None;
                } else if let Some(rest) = line.strip_prefix("pub ") {
                    let field = rest.split(':').next().unwrap().trim();
                    if !field.starts_with('_') {
                        items.insert(format!("offset:{module}::{s}.{field}"));
                    }
                }
            } else if let Some(rest) = line.strip_prefix("pub struct ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                items.insert(format!("size:{module}::{name}"));
                if line.ends_with('{') {
                    in_struct = Some(name);
                }
            } else if let Some(rest) = line.strip_prefix("pub const ") {
                if !rest.starts_with("fn ") {
                    let name = rest.split(':').next().unwrap().trim();
                    items.insert(format!("const:{module}::{name}"));
                }
            } else if let Some(rest) = line.strip_prefix("pub type ") {
                let name = rest.split([' ', '=']).next().unwrap().trim();
                items.insert(format!("type:{module}::{name}"));
            }
        }
    }
    items
}

#[test]
fn every_abi_item_is_in_the_table() {
    let checked: BTreeSet<String> = table().into_iter().map(|c| c.name).collect();
    let items = abi_items();
    assert!(
        items.len() > 300,
        "the source scan found only {} items",
        items.len()
    );
    let unchecked: Vec<_> = items.iter().filter(|i| !checked.contains(*i)).collect();
    assert!(
        unchecked.is_empty(),
        "{} abi items have no line in the c_probe table (add one, or a none!() naming \
         where the value comes from):\n  {}",
        unchecked.len(),
        unchecked
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn compare_reports_every_mismatch_by_name() {
    let checks = vec![
        Check::int("a", "A", 1),
        Check::int("b", "B", 2),
        Check::int("c", "C", 3),
        Check::str("d", "D", "x86_64-abi"),
        Check::absent("e", "nowhere", Val::Int(5)),
    ];
    assert!(compare(&checks, "a 1\nb 2\nc 3\nd x86_64-abi\n").is_empty());
    let errors = compare(&checks, "a 1\nb 7\nd arm-abi\n");
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("b: Rust 2, C 7"), "{errors:?}");
    assert!(errors[1].starts_with("c: no value from C"), "{errors:?}");
    assert!(
        errors[2].starts_with("d: Rust \"x86_64-abi\", C \"arm-abi\""),
        "{errors:?}"
    );
}
