//! The grant table, both sides.
//!
//! Export: [`setup_table`] asks Xen for the table (`GNTTABOP_query_size`,
//! `GNTTABOP_setup_table`, which returns the frames' MFNs for a PV guest)
//! and maps its frames over page slots of the image; the result is the
//! core's [`TableMemory`], so sharing runs the core's own entry protocol
//! ([`xenshare::grant::TableBackend`]): the same compare-and-swap revocation
//! the emulator and loom check, here against the real hypervisor's
//! `GTF_reading` / `GTF_writing` bits.
//!
//! Import: [`PvMapper`] maps other domains' grants with
//! `GNTTABOP_map_grant_ref` over page slots reserved for it and unmaps them
//! with `GNTTABOP_unmap_grant_ref`, checking the status of every element.

use alloc::vec::Vec;
use core::ptr::NonNull;

use spin::Mutex;
use xenshare::grant::GntSt;
use xenshare::mem::SharedMem;
use xenshare::platform::{CopyOp, ForeignMapper, TableMemory};
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::grant::{
    GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable, GnttabUnmapGrantRef, GNTMAP_HOST_MAP,
    GNTMAP_READONLY, GNTTABOP_MAP_GRANT_REF, GNTTABOP_QUERY_SIZE, GNTTABOP_SETUP_TABLE,
    GNTTABOP_UNMAP_GRANT_REF,
};
use xenshare_abi::xen::DOMID_SELF;

use crate::frames::RunBitmap;
use crate::hypercall;
use crate::mm::{self, PageSlot, PAGE};

/// Grant-table frames this platform maps (512 entries each).
pub const TABLE_FRAMES: usize = 4;

static TABLE_SLOTS: [PageSlot; TABLE_FRAMES] = [const { PageSlot::new() }; TABLE_FRAMES];

/// Why the grant table could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// A hypercall failed (Xen errno).
    Hypercall(&'static str, isize),
    /// A grant status was not okay.
    Status(&'static str, GntSt),
    /// Mapping a frame failed (Xen errno).
    Map(isize),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Hypercall(op, rc) => write!(f, "{op}: hypercall error {rc}"),
            Self::Status(op, st) => write!(f, "{op}: {st}"),
            Self::Map(rc) => write!(f, "update_va_mapping of a table frame: error {rc}"),
        }
    }
}

/// The mapped grant table: contiguous page slots of the image, each now
/// mapping a frame of this domain's table.
#[derive(Debug)]
pub struct GrantFrames {
    frames: usize,
    max_frames: u32,
}

impl GrantFrames {
    /// Frames mapped.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The most frames Xen would give this domain.
    pub fn max_frames(&self) -> u32 {
        self.max_frames
    }
}

// SAFETY: the slots map this domain's own grant-table frames (setup_table);
// `setup_table` hands out one GrantFrames only (a second call fails), which
// the caller gives to one TableBackend.
unsafe impl TableMemory for GrantFrames {
    fn table(&self) -> SharedMem<'_> {
        // SAFETY: the slots are contiguous statics of the image, mapped over
        // the table frames for the domain's life.
        unsafe {
            SharedMem::from_raw(
                NonNull::new_unchecked(TABLE_SLOTS[0].va() as *mut u8),
                self.frames * PAGE,
            )
        }
    }
}

static TABLE_TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Sets up and maps this domain's grant table, up to [`TABLE_FRAMES`] frames.
/// Only the first call succeeds.
pub fn setup_table() -> Result<GrantFrames, SetupError> {
    if TABLE_TAKEN.swap(true, core::sync::atomic::Ordering::AcqRel) {
        return Err(SetupError::Hypercall("setup_table: already set up", 0));
    }
    let mut q = [GnttabQuerySize {
        dom: DOMID_SELF,
        ..Default::default()
    }];
    // SAFETY: the struct GNTTABOP_query_size takes.
    let rc = unsafe { hypercall::grant_table_op(GNTTABOP_QUERY_SIZE, &mut q) };
    if rc != 0 {
        return Err(SetupError::Hypercall("query_size", rc));
    }
    let st = GntSt::from_raw(q[0].status);
    if !st.is_ok() {
        return Err(SetupError::Status("query_size", st));
    }
    let want = (q[0].max_nr_frames as usize).clamp(1, TABLE_FRAMES);
    let mut list = [0u64; TABLE_FRAMES];
    let mut s = [GnttabSetupTable {
        dom: DOMID_SELF,
        nr_frames: want as u32,
        frame_list: list.as_mut_ptr() as u64,
        ..Default::default()
    }];
    // SAFETY: the struct GNTTABOP_setup_table takes; `list` has room for
    // `want` frames and lives across the call.
    let rc = unsafe { hypercall::grant_table_op(GNTTABOP_SETUP_TABLE, &mut s) };
    if rc != 0 {
        return Err(SetupError::Hypercall("setup_table", rc));
    }
    let st = GntSt::from_raw(s[0].status);
    if !st.is_ok() {
        return Err(SetupError::Status("setup_table", st));
    }
    for (slot, &mfn) in TABLE_SLOTS.iter().zip(&list[..want]) {
        // SAFETY: the table slots are used for nothing else, and the frames
        // are this domain's grant table, which it may map writable.
        unsafe { mm::map_frame(slot, mfn) }.map_err(SetupError::Map)?;
    }
    Ok(GrantFrames {
        frames: want,
        max_frames: q[0].max_nr_frames,
    })
}

/// Page slots for mapping other domains' grants.
pub const MAP_SLOTS: usize = 64;

static MAP_SLOT_PAGES: [PageSlot; MAP_SLOTS] = [const { PageSlot::new() }; MAP_SLOTS];

/// One mapped grant: the slot it occupies and Xen's handle.
#[derive(Debug)]
pub struct PvHandle {
    slot: usize,
    handle: u32,
}

/// Contiguous slots over one mapped batch.
#[derive(Debug)]
pub struct PvWindow {
    first: usize,
    n: usize,
}

/// The import side: `GNTTABOP_map_grant_ref` into reserved page slots.
///
/// A slot's original page is given up the first time a grant is mapped
/// over it (Xen clears the PTE on unmap), so the slots are only ever used
/// for grants. Grant copy and unmap-notify are not provided by this
/// platform (they report `GNTST_general_error`).
pub struct PvMapper {
    slots: Mutex<RunBitmap>,
}

impl PvMapper {
    /// The mapper. There must be only one (it owns the map slots).
    ///
    /// # Safety
    ///
    /// At most one `PvMapper` may exist.
    pub unsafe fn new() -> Self {
        Self {
            slots: Mutex::new(RunBitmap::new(MAP_SLOTS)),
        }
    }
}

/// A status value Xen never writes (they are 0 or negative): an element
/// that still holds it after the hypercall was not handled.
const NOT_DONE: i16 = 1;

/// An element's status after the hypercall.
fn status(raw: i16) -> GntSt {
    match raw {
        NOT_DONE => GntSt::GeneralError,
        s => GntSt::from_raw(s),
    }
}

fn slot_va(i: usize) -> u64 {
    MAP_SLOT_PAGES[i].va() as u64
}

impl ForeignMapper for PvMapper {
    type Handle = PvHandle;
    type Window = PvWindow;

    fn domid(&self) -> DomId {
        crate::events::domid()
    }

    fn map_batch(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        access: Access,
        out: &mut Vec<Result<PvHandle, GntSt>>,
    ) {
        let Some(first) = self.slots.lock().alloc(refs.len()) else {
            out.extend(refs.iter().map(|_| Err(GntSt::NoSpace)));
            return;
        };
        let flags = GNTMAP_HOST_MAP
            | match access {
                Access::ReadOnly => GNTMAP_READONLY,
                Access::ReadWrite => 0,
            };
        let mut ops: Vec<GnttabMapGrantRef> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| GnttabMapGrantRef {
                host_addr: slot_va(first + i),
                flags,
                r#ref: r.0,
                dom: dom.0,
                status: NOT_DONE,
                ..Default::default()
            })
            .collect();
        // SAFETY: the struct GNTTABOP_map_grant_ref takes; every host_addr
        // is a map slot reserved for this batch, never used through Rust
        // references.
        // The return value only reports a batch-level error, which stops
        // Xen part-way: the elements it handled carry their status, the
        // rest still read NOT_DONE. So the statuses alone decide.
        unsafe { hypercall::grant_table_op(GNTTABOP_MAP_GRANT_REF, &mut ops) };
        for (i, op) in ops.iter().enumerate() {
            let st = status(op.status);
            if st.is_ok() {
                out.push(Ok(PvHandle {
                    slot: first + i,
                    handle: op.handle,
                }));
            } else {
                // The slot of a failed element maps nothing: free it now.
                self.slots.lock().free(first + i, 1);
                out.push(Err(st));
            }
        }
    }

    fn unmap(&self, handle: PvHandle) -> Result<(), GntSt> {
        let mut op = [GnttabUnmapGrantRef {
            host_addr: slot_va(handle.slot),
            handle: handle.handle,
            status: NOT_DONE,
            ..Default::default()
        }];
        // SAFETY: the struct GNTTABOP_unmap_grant_ref takes; the slot is this
        // handle's, and the core drops every window over it first.
        // As for the map: the status decides (NOT_DONE if never handled).
        unsafe { hypercall::grant_table_op(GNTTABOP_UNMAP_GRANT_REF, &mut op) };
        let st = status(op[0].status);
        if st.is_ok() {
            self.slots.lock().free(handle.slot, 1);
            Ok(())
        } else {
            // Still mapped: the slot stays taken.
            Err(st)
        }
    }

    fn window(&self, handles: &[PvHandle]) -> Result<PvWindow, GntSt> {
        let Some(first) = handles.first().map(|h| h.slot) else {
            return Err(GntSt::GeneralError);
        };
        if handles.iter().enumerate().any(|(i, h)| h.slot != first + i) {
            return Err(GntSt::GeneralError);
        }
        Ok(PvWindow {
            first,
            n: handles.len(),
        })
    }

    unsafe fn window_mem(window: &PvWindow) -> SharedMem<'_> {
        // SAFETY: the window's slots map granted pages until its handles
        // are unmapped, which the core does only after dropping the window.
        unsafe {
            SharedMem::from_raw(
                NonNull::new_unchecked(slot_va(window.first) as *mut u8),
                window.n * PAGE,
            )
        }
    }

    fn set_unmap_notify(
        &self,
        _handle: &PvHandle,
        _clear_byte: Option<u16>,
        _port: Option<Port>,
    ) -> Result<(), GntSt> {
        // Xen has no unmap notify; Linux's gntdev implements it in the
        // kernel. A unikernel's death unmaps everything anyway.
        Err(GntSt::GeneralError)
    }

    fn copy(&self, ops: &mut [CopyOp<'_>]) {
        for op in ops {
            op.status = GntSt::GeneralError;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_element_xen_never_handled_is_an_error_not_okay() {
        assert_eq!(status(NOT_DONE), GntSt::GeneralError);
        assert_eq!(status(0), GntSt::Okay);
        assert_eq!(status(-3), GntSt::BadGntref);
        assert_eq!(
            GnttabMapGrantRef::default().status,
            0,
            "why the sentinel is needed"
        );
    }

    #[test]
    fn windows_need_consecutive_slots() {
        // SAFETY: host test; nothing is mapped.
        let m = unsafe { PvMapper::new() };
        let h = |slot| PvHandle { slot, handle: 0 };
        let w = m.window(&[h(3), h(4), h(5)]).unwrap();
        assert_eq!((w.first, w.n), (3, 3));
        assert!(m.window(&[h(3), h(5)]).is_err());
        assert!(m.window(&[]).is_err());
    }
}
