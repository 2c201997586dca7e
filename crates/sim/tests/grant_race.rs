//! The revoke/map race (XSA-396's check-then-revoke class): a granter revoking
//! while mappers keep mapping the same ref. A revocation must never succeed
//! while a mapping exists, and a map must never succeed after revocation.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use xenshare::{Access, GrantRef};
use xenshare_testkit::small_granter_and_peer;

const ROUNDS: u32 = 3000;

#[test]
fn revoke_never_succeeds_while_mapped() {
    let (_hv, guest, peer) = small_granter_and_peer(16);
    // (round << 32) | gref of the grant currently offered; 0 = none.
    let offered = Arc::new(AtomicU64::new(0));
    let revoked_round = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let maps_ok = Arc::new(AtomicU64::new(0));

    let mappers: Vec<_> = (0..2)
        .map(|_| {
            let (offered, revoked_round, done, maps_ok) = (
                offered.clone(),
                revoked_round.clone(),
                done.clone(),
                maps_ok.clone(),
            );
            let (peer, gid) = (peer.clone(), guest.id());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let o = offered.load(Ordering::SeqCst);
                    if o == 0 {
                        std::hint::spin_loop();
                        continue;
                    }
                    let gref = GrantRef(o as u32);
                    if let Ok(m) = peer.importer().map_rw(gid, &[gref]) {
                        // The page carries the round it was granted in; while
                        // we hold the mapping, that round cannot be revoked.
                        // A freed ref can be granted again for the next round
                        // before the granter stamps the page: a 0 is that
                        // fresh, not yet offered grant, which is legitimately
                        // mappable (and revocation of it must wait for us).
                        let round = m.mem().atomic_u32(0).unwrap().load(Ordering::SeqCst);
                        if round == 0 {
                            drop(m);
                            continue;
                        }
                        assert!(
                            revoked_round.load(Ordering::SeqCst) < round,
                            "round {round} was revoked while mapped"
                        );
                        maps_ok.fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                        assert!(revoked_round.load(Ordering::SeqCst) < round);
                        drop(m);
                    }
                }
            })
        })
        .collect();

    let mut busy = 0u64;
    // At least ROUNDS rounds; on a loaded machine the mappers may not have
    // been scheduled in time, so go on (bounded) until a revoke has seen a
    // mapping, giving the mappers a moment per extra round.
    let start = std::time::Instant::now();
    let mut round = 0;
    while round < ROUNDS || (busy == 0 && start.elapsed() < std::time::Duration::from_secs(60)) {
        round += 1;
        let share = guest
            .exporter()
            .share(peer.id(), 1, Access::ReadWrite)
            .unwrap();
        share
            .mem()
            .atomic_u32(0)
            .unwrap()
            .store(round, Ordering::SeqCst);
        let gref = share.refs()[0];
        offered.store(u64::from(round) << 32 | u64::from(gref.0), Ordering::SeqCst);
        // Let the mappers at it for a moment, then revoke until it works.
        for _ in 0..(round % 64) {
            std::hint::spin_loop();
        }
        if round > ROUNDS {
            let seen = maps_ok.load(Ordering::SeqCst);
            let wait = std::time::Instant::now();
            while maps_ok.load(Ordering::SeqCst) == seen
                && wait.elapsed() < std::time::Duration::from_millis(20)
            {
                std::thread::yield_now();
            }
        }
        let mut share = share;
        loop {
            match share.try_unshare() {
                Ok(_pages) => break,
                Err(b) => {
                    busy += 1;
                    share = b.into_inner();
                    std::thread::yield_now();
                }
            }
        }
        revoked_round.store(round, Ordering::SeqCst);
        // The hypervisor agrees: no pin on that ref survives a revocation.
        assert!(guest.active_grants().iter().all(|a| a.gref != gref));
        offered.store(0, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for m in mappers {
        m.join().unwrap();
    }
    eprintln!(
        "race: {round} rounds, {} successful maps, {busy} busy revocations",
        maps_ok.load(Ordering::Relaxed)
    );
    assert!(
        busy > 0,
        "the race was never exercised (no revoke ever saw a mapping)"
    );
    assert_eq!(guest.exporter().stats().live, 0);
}
