//! The import side: mapping and copying grants of other domains.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use xenshare_abi::PAGE_SIZE;

use super::few::Few;
use super::{GntSt, MapError};
use crate::mem::{Perm, ReadOnly, ReadWrite, SharedMem};
use crate::platform::{CopyDst, CopyOp, CopySrc, ForeignMapper};
use crate::types::{Access, DomId, GrantRef, Port};

/// Counters of an [`Importer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Mappings currently alive.
    pub mapped: u64,
    /// Batches refused (and rolled back).
    pub refused: u64,
    /// Unmaps the platform reported as failed.
    pub unmap_errors: u64,
}

#[derive(Default)]
struct Counters {
    mapped: AtomicU64,
    refused: AtomicU64,
    unmap_errors: AtomicU64,
}

struct Inner<M: ForeignMapper> {
    mapper: M,
    counters: Counters,
}

impl<M: ForeignMapper> Inner<M> {
    fn unmap_all(&self, handles: Few<M::Handle>) {
        handles.for_each(|h| {
            if self.mapper.unmap(h).is_err() {
                self.counters.unmap_errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Maps and copies other domains' grants.
pub struct Importer<M: ForeignMapper> {
    inner: Arc<Inner<M>>,
}

impl<M: ForeignMapper> Clone for Importer<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<M: ForeignMapper> Importer<M> {
    /// An importer over a platform mapper.
    pub fn new(mapper: M) -> Self {
        Self {
            inner: Arc::new(Inner {
                mapper,
                counters: Counters::default(),
            }),
        }
    }

    /// The domain doing the mapping.
    pub fn domid(&self) -> DomId {
        self.inner.mapper.domid()
    }

    /// Maps `refs` of `dom` writable, as one contiguous region.
    pub fn map_rw(&self, dom: DomId, refs: &[GrantRef]) -> Result<Mapping<M>, MapError> {
        self.map_as(dom, refs)
    }

    /// Maps `refs` of `dom` read-only, as one contiguous region. The
    /// mapping's memory is a [`ReadOnly`] window: writing it does not
    /// compile.
    ///
    /// ```compile_fail,E0599
    /// # use xenshare::{grant::Importer, platform::ForeignMapper, DomId, GrantRef};
    /// # fn f<M: ForeignMapper>(imp: &Importer<M>) {
    /// let m = imp.map_ro(DomId(1), &[GrantRef(8)]).unwrap();
    /// m.mem().write(0, b"x"); // no write on a read-only window
    /// # }
    /// ```
    pub fn map_ro(&self, dom: DomId, refs: &[GrantRef]) -> Result<Mapping<M, ReadOnly>, MapError> {
        self.map_as(dom, refs)
    }

    /// Maps `refs` of `dom` as one contiguous region, with the access `P`
    /// ([`ReadWrite`] or [`ReadOnly`]).
    ///
    /// Every element's status is checked; if any failed, the ones that
    /// succeeded are unmapped again and the first failure is reported.
    pub fn map_as<P: Perm>(
        &self,
        dom: DomId,
        refs: &[GrantRef],
    ) -> Result<Mapping<M, P>, MapError> {
        let access = P::ACCESS;
        if refs.is_empty() {
            return Err(MapError::Empty);
        }
        let m = &self.inner.mapper;
        let handles = match refs {
            // One page: no lists, no allocation.
            [r] => match m.map_one(dom, *r, access) {
                Ok(h) => Few::One(h),
                Err(status) => {
                    self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(MapError::Refused {
                        dom,
                        gref: *r,
                        index: 0,
                        status,
                    });
                }
            },
            _ => Few::Many(self.map_many(dom, refs, access)?),
        };
        let window = match m.window(handles.as_slice()) {
            Ok(w) => w,
            Err(st) => {
                self.unmap_all(handles);
                return Err(MapError::Window(st));
            }
        };
        self.inner.counters.mapped.fetch_add(1, Ordering::Relaxed);
        Ok(Mapping {
            window: Some(window),
            handles,
            owner: self.inner.clone(),
            dom,
            refs: Few::from_slice(refs),
            _perm: core::marker::PhantomData,
        })
    }

    /// Maps a batch of several refs; on any failure unmaps the rest and
    /// reports the first failure.
    fn map_many(
        &self,
        dom: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<Vec<M::Handle>, MapError> {
        let m = &self.inner.mapper;
        let mut results = Vec::with_capacity(refs.len());
        m.map_batch(dom, refs, access, &mut results);
        let mut handles = Vec::with_capacity(refs.len());
        let mut failure = None;
        for (index, r) in results.into_iter().enumerate() {
            match r {
                Ok(h) => handles.push(h),
                Err(status) => {
                    failure.get_or_insert(MapError::Refused {
                        dom,
                        gref: refs.get(index).copied().unwrap_or_default(),
                        index,
                        status,
                    });
                }
            }
        }
        if failure.is_none() && handles.len() != refs.len() {
            // A platform that reported fewer results than asked is broken;
            // treat the missing ones as refused.
            failure = Some(MapError::Refused {
                dom,
                gref: refs[handles.len().min(refs.len() - 1)],
                index: handles.len(),
                status: GntSt::GeneralError,
            });
        }
        if let Some(e) = failure {
            self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.unmap_all(Few::Many(handles));
            return Err(e);
        }
        Ok(handles)
    }

    fn unmap_all(&self, handles: Few<M::Handle>) {
        self.inner.unmap_all(handles);
    }

    /// Runs grant copies. Local buffers shorter than `len` are refused with
    /// `GNTST_bad_copy_arg` before the platform sees them; every other
    /// status is the platform's.
    pub fn copy(&self, ops: &mut [CopyOp<'_>]) {
        let mut ok = true;
        for op in ops.iter_mut() {
            let len = op.len as usize;
            let short = matches!(&op.src, CopySrc::Local(b) if b.len() < len)
                || matches!(&op.dst, CopyDst::Local(b) if b.len() < len);
            if short {
                op.status = GntSt::BadCopyArg;
                ok = false;
            } else {
                op.status = GntSt::Okay;
            }
        }
        if ok {
            self.inner.mapper.copy(ops);
        } else {
            // Run only the well-formed ones, keeping the refused statuses.
            for op in ops.iter_mut().filter(|o| o.status.is_ok()) {
                self.inner.mapper.copy(core::slice::from_mut(op));
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ImportStats {
        let c = &self.inner.counters;
        ImportStats {
            mapped: c.mapped.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            unmap_errors: c.unmap_errors.load(Ordering::Relaxed),
        }
    }
}

/// Another domain's pages, mapped with access `P` ([`ReadWrite`] by
/// default, or [`ReadOnly`]). Unmapped on drop.
pub struct Mapping<M: ForeignMapper, P: Perm = ReadWrite> {
    window: Option<M::Window>,
    handles: Few<M::Handle>,
    owner: Arc<Inner<M>>,
    dom: DomId,
    refs: Few<GrantRef>,
    _perm: core::marker::PhantomData<P>,
}

impl<M: ForeignMapper, P: Perm> fmt::Debug for Mapping<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("dom", &self.dom)
            .field("refs", &self.refs.as_slice())
            .field("access", &P::ACCESS)
            .finish()
    }
}

impl<M: ForeignMapper> Mapping<M, ReadWrite> {
    /// The mapped pages as one writable window. The granter may change them
    /// at any time.
    pub fn mem(&self) -> SharedMem<'_> {
        self.raw_mem()
    }
}

impl<M: ForeignMapper> crate::mem::SharedMemory for Mapping<M, ReadWrite> {
    fn shared(&self) -> SharedMem<'_> {
        self.mem()
    }
}

impl<M: ForeignMapper> Mapping<M, ReadOnly> {
    /// The mapped pages as one read-only window. The granter may change
    /// them at any time.
    pub fn mem(&self) -> SharedMem<'_, ReadOnly> {
        self.raw_mem().read_only()
    }
}

impl<M: ForeignMapper, P: Perm> Mapping<M, P> {
    fn raw_mem(&self) -> SharedMem<'_> {
        match &self.window {
            // SAFETY: the window is written through only by
            // `Mapping<_, ReadWrite>::mem`, whose handles were all mapped
            // with `ReadWrite::ACCESS`; a read-only mapping downgrades it.
            Some(w) => unsafe { M::window_mem(w) },
            None => unreachable!("a Mapping holds its window until drop"),
        }
    }

    /// The granting domain.
    pub fn dom(&self) -> DomId {
        self.dom
    }

    /// The mapped references.
    pub fn refs(&self) -> &[GrantRef] {
        self.refs.as_slice()
    }

    /// How the pages are mapped.
    pub fn access(&self) -> Access {
        P::ACCESS
    }

    /// Asks for the byte at `byte_offset` to be cleared and/or `port`
    /// notified when this mapping goes away — by drop or by this domain's
    /// death (how vchan and the split drivers detect a dead peer).
    pub fn set_unmap_notify(
        &self,
        byte_offset: Option<usize>,
        port: Option<Port>,
    ) -> Result<(), MapError> {
        let len = self.refs.len() * PAGE_SIZE;
        let (page, in_page) = match byte_offset {
            Some(off) if off >= len => return Err(MapError::BadOffset { offset: off, len }),
            Some(off) => (off / PAGE_SIZE, Some((off % PAGE_SIZE) as u16)),
            None => (0, None),
        };
        let Some(h) = self.handles.as_slice().get(page) else {
            return Err(MapError::BadOffset { offset: 0, len });
        };
        self.owner
            .mapper
            .set_unmap_notify(h, in_page, port)
            .map_err(MapError::Notify)
    }
}

impl<M: ForeignMapper, P: Perm> Drop for Mapping<M, P> {
    fn drop(&mut self) {
        drop(self.window.take());
        self.owner.unmap_all(self.handles.take());
        self.owner.counters.mapped.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageBuf;
    use crate::platform::CopyOp;
    use alloc::sync::Arc;
    use core::sync::atomic::AtomicUsize;

    /// A platform whose batch map reports `results` results per ref asked
    /// (1 is correct; 0 and 2 are broken platforms), every one a success.
    struct Fake {
        results: usize,
        mapped: Arc<AtomicUsize>,
    }

    impl ForeignMapper for Fake {
        type Handle = u32;
        type Window = PageBuf;
        fn domid(&self) -> DomId {
            DomId(0)
        }
        fn map_batch(
            &self,
            _dom: DomId,
            refs: &[GrantRef],
            _access: Access,
            out: &mut Vec<Result<u32, GntSt>>,
        ) {
            for r in refs {
                for _ in 0..self.results {
                    self.mapped.fetch_add(1, Ordering::Relaxed);
                    out.push(Ok(r.0));
                }
            }
        }
        fn unmap(&self, _h: u32) -> Result<(), GntSt> {
            self.mapped.fetch_sub(1, Ordering::Relaxed);
            Ok(())
        }
        fn window(&self, hs: &[u32]) -> Result<PageBuf, GntSt> {
            Ok(PageBuf::new(hs.len()))
        }
        unsafe fn window_mem(w: &PageBuf) -> SharedMem<'_> {
            w.mem()
        }
        fn set_unmap_notify(&self, _: &u32, _: Option<u16>, _: Option<Port>) -> Result<(), GntSt> {
            Ok(())
        }
        fn copy(&self, _ops: &mut [CopyOp<'_>]) {}
    }

    #[test]
    fn one_ref_maps_through_map_one_and_a_miscounting_platform_is_rolled_back() {
        for (results, ok) in [(1, true), (0, false), (2, false)] {
            let mapped = Arc::new(AtomicUsize::new(0));
            let imp = Importer::new(Fake {
                results,
                mapped: mapped.clone(),
            });
            match imp.map_rw(DomId(1), &[GrantRef(9)]) {
                Ok(m) => {
                    assert!(ok, "{results} results accepted");
                    assert_eq!(m.refs(), &[GrantRef(9)]);
                    assert_eq!(mapped.load(Ordering::Relaxed), 1);
                    drop(m);
                }
                Err(e) => {
                    assert!(!ok, "{results} results refused: {e}");
                    assert!(matches!(
                        e,
                        MapError::Refused {
                            status: GntSt::GeneralError,
                            index: 0,
                            ..
                        }
                    ));
                    assert_eq!(imp.stats().refused, 1);
                }
            }
            assert_eq!(mapped.load(Ordering::Relaxed), 0, "{results}: left mapped");
            assert_eq!(imp.stats().mapped, 0);
        }
    }
}
