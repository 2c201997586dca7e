//! Model-based test of the safe grant API across three domains: random
//! share / map / unmap / try_unshare / drop / reclaim sequences, checked
//! against a simple model.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use xenshare::platform::PageSet;
use xenshare::{Access, DomId, GrantRef};
use xenshare_sim::{Domain, DomainConfig, Hypervisor, SimShare};

#[derive(Debug, Clone)]
enum Op {
    Share {
        from: usize,
        to: usize,
        pages: usize,
        ro: bool,
    },
    Map {
        share: usize,
        ro: bool,
    },
    Unmap {
        map: usize,
    },
    TryUnshare {
        share: usize,
    },
    Drop {
        share: usize,
    },
    Reclaim {
        dom: usize,
        budget: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..3usize, 1..4usize, any::<bool>()).prop_map(|(from, to, pages, ro)| Op::Share { from, to, pages, ro }),
        3 => (0..64usize, any::<bool>()).prop_map(|(share, ro)| Op::Map { share, ro }),
        2 => (0..64usize).prop_map(|map| Op::Unmap { map }),
        2 => (0..64usize).prop_map(|share| Op::TryUnshare { share }),
        1 => (0..64usize).prop_map(|share| Op::Drop { share }),
        1 => (0..3usize, 0..4usize).prop_map(|(dom, budget)| Op::Reclaim { dom, budget }),
    ]
}

struct LiveShare {
    share: SimShare,
    from: usize,
    id: u64,
}

struct LiveMap {
    _m: Box<dyn std::any::Any>,
    share_id: u64,
    granter: usize,
    refs: Vec<GrantRef>,
}

fn frames_of(d: &Domain, refs: &[GrantRef]) -> Vec<u32> {
    refs.iter()
        .map(|r| d.exporter().table().unwrap().entry(*r).unwrap().frame)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn safe_grant_api_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let hv = Hypervisor::new();
        let doms: Vec<Domain> = (0..3)
            .map(|_| hv.create_domain(DomainConfig { mem_pages: 32, grant_frames: 1, ..Default::default() }).unwrap())
            .collect();
        let mut shares: Vec<LiveShare> = Vec::new();
        let mut maps: Vec<LiveMap> = Vec::new();
        // Model: share id -> (granter, refs, frames, ro); and which are quarantined.
        let mut model: HashMap<u64, (usize, Vec<GrantRef>, Vec<u32>, bool)> = HashMap::new();
        let mut quarantined: HashSet<u64> = HashSet::new();
        let mut next_id = 0u64;

        for op in ops {
            match op {
                Op::Share { from, to, pages, ro } => {
                    let access = if ro { Access::ReadOnly } else { Access::ReadWrite };
                    if let Ok(s) = doms[from].exporter().share(doms[to].id(), pages, access) {
                        let refs = s.refs().to_vec();
                        prop_assert_eq!(refs.len(), pages);
                        // Refs are unique among everything the granter has live or
                        // still quarantined (the share may have reclaimed some).
                        let q: HashSet<Vec<GrantRef>> = doms[from].exporter().quarantine_snapshot().into_iter().map(|(_, r, _)| r).collect();
                        for (id, (g, r, _, _)) in model.iter() {
                            if *g == from && (!quarantined.contains(id) || q.contains(r)) {
                                prop_assert!(r.iter().all(|x| !refs.contains(x)), "ref reused while live");
                            }
                        }
                        let frames = frames_of(&doms[from], &refs);
                        model.insert(next_id, (from, refs, frames, ro));
                        shares.push(LiveShare { share: s, from, id: next_id });
                        next_id += 1;
                    }
                }
                Op::Map { share, ro } => {
                    if shares.is_empty() { continue; }
                    let s = &shares[share % shares.len()];
                    let peer = s.share.peer();
                    let mapper = doms.iter().position(|d| d.id() == peer).unwrap();
                    let imp = doms[mapper].importer();
                    let (granter, refs) = (doms[s.from].id(), s.share.refs());
                    let res: Result<Box<dyn std::any::Any>, _> = if ro {
                        imp.map_ro(granter, refs).map(|m| Box::new(m) as Box<dyn std::any::Any>)
                    } else {
                        imp.map_rw(granter, refs).map(|m| Box::new(m) as Box<dyn std::any::Any>)
                    };
                    let granted_ro = model[&s.id].3;
                    prop_assert_eq!(res.is_ok(), ro || !granted_ro, "map rule mismatch");
                    if let Ok(m) = res {
                        maps.push(LiveMap { _m: m, share_id: s.id, granter: s.from, refs: s.share.refs().to_vec() });
                    }
                }
                Op::Unmap { map } => {
                    if maps.is_empty() { continue; }
                    maps.swap_remove(map % maps.len());
                }
                Op::TryUnshare { share } => {
                    if shares.is_empty() { continue; }
                    let s = shares.swap_remove(share % shares.len());
                    let id = s.id;
                    let mapped = maps.iter().any(|m| m.share_id == id);
                    match s.share.try_unshare() {
                        Ok(revoked) => {
                            prop_assert!(!mapped, "pages returned while mapped");
                            let pages = revoked.pages();
                            prop_assert!(pages.is_some(), "the in-process emulator gives pages back");
                            prop_assert_eq!(pages.map_or(0, |p| p.page_count()), model[&id].1.len());
                            model.remove(&id);
                        }
                        Err(busy) => {
                            prop_assert!(mapped, "busy although nothing mapped");
                            shares.push(LiveShare { share: busy.into_inner(), from: s.from, id });
                        }
                    }
                }
                Op::Drop { share } => {
                    if shares.is_empty() { continue; }
                    let s = shares.swap_remove(share % shares.len());
                    if maps.iter().any(|m| m.share_id == s.id) {
                        quarantined.insert(s.id);
                    } else {
                        model.remove(&s.id);
                    }
                    drop(s);
                }
                Op::Reclaim { dom, budget } => {
                    doms[dom].exporter().reclaim(budget);
                }
            }
            // Sync the model with what reclaim (explicit or opportunistic) freed.
            for (i, d) in doms.iter().enumerate() {
                let q: HashSet<Vec<GrantRef>> = d.exporter().quarantine_snapshot().into_iter().map(|(_, r, _)| r).collect();
                let gone: Vec<u64> = quarantined
                    .iter()
                    .filter(|id| model[id].0 == i && !q.contains(&model[id].1))
                    .copied()
                    .collect();
                for id in gone {
                    prop_assert!(!maps.iter().any(|m| m.share_id == id), "quarantined share freed while mapped");
                    quarantined.remove(&id);
                    model.remove(&id);
                }
            }
            // Invariants.
            for (i, d) in doms.iter().enumerate() {
                let st = d.exporter().stats();
                prop_assert_eq!(st.granted, st.live + st.revoked + st.quarantined + st.reclaimed + st.leaked);
                let live = shares.iter().filter(|s| s.from == i).count() as u64;
                prop_assert_eq!(st.live, live);
                let q = quarantined.iter().filter(|id| model[id].0 == i).count() as u64;
                prop_assert_eq!(st.quarantined, q);
                // Every frame of a live or quarantined share stays allocated.
                for (g, _, frames, _) in model.values() {
                    if *g == i {
                        for f in frames {
                            prop_assert!(d.memory().is_allocated(u64::from(*f)));
                        }
                    }
                }
                // Every mapped ref is busy in its granter's table.
                for m in maps.iter().filter(|m| m.granter == i) {
                    for r in &m.refs {
                        prop_assert!(d.grant_busy(*r));
                    }
                }
            }
            let _ = DomId(0);
        }
    }
}
