//! The grant inspector's reply (`xenshare grants`), paged: one reply holds
//! as many records as fit in a message ([`crate::wire::MAX_MSG`]) and a
//! cursor to ask for the rest, so a full grant table (or many) never makes
//! the reply too large to send.
//!
//! A page is a run of tagged records: a domain header, then that domain's
//! table entries, pins and quarantined refs, then the next domain; it ends
//! with a trailer (tag 0) saying whether more follows and where to resume.
//! Each page is a fresh look at the live tables, so a report of a busy
//! domain is a consistent view of each page, not of the whole.

use std::collections::{BTreeSet, HashMap};

use xenshare::grant::TableEntry;
use xenshare::{DomId, GrantRef};
use xenshare_sim::{ActiveGrant, Domain};

use crate::wire::{Reader, WireError, Writer, MAX_MSG};

const T_END: u8 = 0;
const T_DOMAIN: u8 = 1;
const T_ENTRY: u8 = 2;
const T_PIN: u8 = 3;
const T_QUARANTINED: u8 = 4;

/// Largest record (a domain header: tag, domid, used pages, mapped).
const MAX_RECORD: usize = 1 + 2 + 8 + 4;
/// The trailer: tag, more, domid, section, index.
const TRAILER: usize = 1 + 1 + 2 + 1 + 4;
/// Most pages a client reads before giving up (a bound against a daemon
/// that never says "done").
pub const MAX_PAGES: usize = 1 << 16;

/// Where a page starts: a domain, a section of its report (0 header, 1
/// entries, 2 pins, 3 quarantined refs) and an index in that section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Domains with a smaller id are done.
    pub dom: u16,
    /// Section of `dom`'s report.
    pub section: u8,
    /// Index in the section.
    pub index: u32,
}

impl Cursor {
    /// Appends the cursor to a request.
    pub fn encode(&self, w: &mut Writer) {
        w.u16(self.dom).u8(self.section).u32(self.index);
    }

    /// Reads a cursor.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let c = Cursor {
            dom: r.u16()?,
            section: r.u8()?,
            index: r.u32()?,
        };
        if c.section > 3 {
            return Err(WireError::BadField("cursor section"));
        }
        Ok(c)
    }
}

/// Writes one page of the report of `doms` (sorted by id) into `w`,
/// starting at `at`.
pub(crate) fn write_page(
    w: &mut Writer,
    doms: &[Domain],
    quarantined: &HashMap<u16, BTreeSet<u32>>,
    at: Cursor,
) {
    let no_refs = BTreeSet::new();
    for d in doms.iter().filter(|d| d.id().0 >= at.dom) {
        let id = d.id().0;
        let mut here = if id == at.dom {
            at
        } else {
            Cursor {
                dom: id,
                section: 0,
                index: 0,
            }
        };
        while here.section <= 3 {
            let fitted = match here.section {
                0 => {
                    // One record: an index in this section means nothing.
                    here.index = 0;
                    write_records(w, &mut here, [d], |w, d| {
                        w.u8(T_DOMAIN)
                            .u16(id)
                            .u64(d.memory().used_pages())
                            .u32(u32::try_from(d.mapped_count()).unwrap_or(u32::MAX));
                    })
                }
                1 => {
                    let entries = d
                        .exporter()
                        .table()
                        .map(|t| t.active_entries())
                        .unwrap_or_default();
                    write_records(w, &mut here, &entries, |w, e| {
                        w.u8(T_ENTRY)
                            .u32(e.gref.0)
                            .u16(e.flags)
                            .u16(e.domid.0)
                            .u32(e.frame);
                    })
                }
                2 => write_records(w, &mut here, &d.active_grants(), |w, p| {
                    w.u8(T_PIN)
                        .u32(p.gref.0)
                        .u16(p.mapper.0)
                        .u32(p.readers)
                        .u32(p.writers);
                }),
                _ => {
                    let q = quarantined.get(&id).unwrap_or(&no_refs);
                    write_records(w, &mut here, q, |w, r| {
                        w.u8(T_QUARANTINED).u32(*r);
                    })
                }
            };
            if !fitted {
                w.u8(T_END).u8(1);
                here.encode(w);
                return;
            }
            here = Cursor {
                dom: id,
                section: here.section + 1,
                index: 0,
            };
        }
    }
    w.u8(T_END).u8(0);
    Cursor::default().encode(w);
}

/// Writes the records of one section from `here.index` on with `put`,
/// counting them in `here.index`; false (page full) where the next one
/// might not fit before the trailer.
fn write_records<T>(
    w: &mut Writer,
    here: &mut Cursor,
    records: impl IntoIterator<Item = T>,
    put: impl Fn(&mut Writer, T),
) -> bool {
    for r in records.into_iter().skip(here.index as usize) {
        if w.0.len() + MAX_RECORD > MAX_MSG - TRAILER {
            return false;
        }
        put(w, r);
        here.index += 1;
    }
    true
}

/// One domain's grant table as the daemon sees it.
#[derive(Debug, Clone)]
pub struct GrantReport {
    /// The domain.
    pub domid: DomId,
    /// Entries in use (not invalid).
    pub entries: Vec<TableEntry>,
    /// Entries peers hold pinned, with pin counts.
    pub pins: Vec<ActiveGrant>,
    /// Pages of RAM in live chunks.
    pub used_pages: u64,
    /// Grants this domain has mapped.
    pub mapped: u32,
    /// References of shares waiting in the domain's quarantine (the peer
    /// still maps them), as the domain reported them.
    pub quarantined: Vec<GrantRef>,
}

/// Most records of one kind accepted for one domain (above any table).
const MAX_RECORDS: usize = 1 << 20;

/// Reads one page (after the reply's status header) into `out`; returns
/// where to resume, or `None` when the report is complete.
pub(crate) fn read_page(
    r: &mut Reader<'_>,
    out: &mut Vec<GrantReport>,
) -> Result<Option<Cursor>, WireError> {
    fn last(out: &mut [GrantReport]) -> Result<&mut GrantReport, WireError> {
        out.last_mut()
            .ok_or(WireError::BadField("record before any domain"))
    }
    let push = |len: usize| {
        if len >= MAX_RECORDS {
            Err(WireError::BadField("too many records"))
        } else {
            Ok(())
        }
    };
    loop {
        match r.u8()? {
            T_END => {
                let more = r.bool()?;
                let c = Cursor::decode(r)?;
                r.end()?;
                return Ok(more.then_some(c));
            }
            T_DOMAIN => {
                let domid = DomId(r.u16()?);
                let used_pages = r.u64()?;
                let mapped = r.u32()?;
                if out.len() > usize::from(u16::MAX) {
                    return Err(WireError::BadField("too many domains"));
                }
                out.push(GrantReport {
                    domid,
                    entries: Vec::new(),
                    pins: Vec::new(),
                    used_pages,
                    mapped,
                    quarantined: Vec::new(),
                });
            }
            T_ENTRY => {
                let e = TableEntry {
                    gref: GrantRef(r.u32()?),
                    flags: r.u16()?,
                    domid: DomId(r.u16()?),
                    frame: r.u32()?,
                };
                let rep = last(out)?;
                push(rep.entries.len())?;
                rep.entries.push(e);
            }
            T_PIN => {
                let p = ActiveGrant {
                    gref: GrantRef(r.u32()?),
                    mapper: DomId(r.u16()?),
                    readers: r.u32()?,
                    writers: r.u32()?,
                };
                let rep = last(out)?;
                push(rep.pins.len())?;
                rep.pins.push(p);
            }
            T_QUARANTINED => {
                let g = GrantRef(r.u32()?);
                let rep = last(out)?;
                push(rep.quarantined.len())?;
                rep.quarantined.push(g);
            }
            _ => return Err(WireError::BadField("record tag")),
        }
    }
}
