//! MSA02 across processes: a domain process can send `UNMAP` and keep its
//! own mmap of the memfd the daemon passed it. Revocation must then retire
//! the memory (as gntalloc defers it on Linux), never hand it back for
//! reuse: the watcher sees none of what the granter writes afterwards, and
//! the granter's new pages never see the watcher's writes.

use xenshare::{Access, DomId, GrantRef};
use xenshare_host::client::Conn;
use xenshare_host::wire::{op, Reader, Writer};
use xenshare_host::{Host, HostConfig, RemoteDomain};
use xenshare_sim::region::Region;

#[path = "../../conformance/src/support.rs"]
mod support;

const PAGE: usize = 4096;
const SECRET: u8 = 0x5E;

/// Maps `gref` of `granter` writable through raw RPCs, keeps the mmap of the
/// fd it got, and tells the daemon it unmapped. Returns the kept memory and
/// the page's offset in it.
fn map_then_lie(c: &Conn, granter: DomId, gref: GrantRef) -> (Region, usize) {
    let mut w = Writer::new(op::MAP);
    w.u16(granter.0).u8(0).u16(1).u32(gref.0);
    let p = c.call(&w, &[]).expect("map");
    let mut r = Reader::new(&p.data).unwrap();
    assert_eq!(r.u16().unwrap(), 1);
    assert_eq!(r.u16().unwrap(), 0, "map status");
    let (handle, idx, page) = (r.u32().unwrap(), r.u16().unwrap(), r.u64().unwrap());
    let fd = p.fds.into_iter().nth(idx as usize).expect("the page's fd");
    let kept = Region::from_fd(fd, true).expect("mmap the passed memfd");
    let mut w = Writer::new(op::UNMAP);
    w.u32(handle);
    c.call(&w, &[]).expect("unmap");
    (kept, page as usize * PAGE)
}

#[test]
fn a_mapper_that_unmaps_but_keeps_its_mmap_never_sees_reused_memory() {
    let dir = support::TempDir::new("retire");
    let host = Host::spawn(HostConfig::new(dir.join("h.sock"))).unwrap();
    let granter = RemoteDomain::join(host.path(), Some(DomId(1))).unwrap();
    let watcher = Conn::connect(host.path()).unwrap();
    watcher.authenticate(host.path()).unwrap();
    let mut w = Writer::new(op::JOIN);
    w.u32(2);
    watcher.call(&w, &[]).expect("watcher joins as domain 2");

    let share = granter
        .exporter()
        .share(DomId(2), 1, Access::ReadWrite)
        .unwrap();
    share.mem().fill(0, PAGE, 0x11).unwrap();
    let (kept, at) = map_then_lie(&watcher, DomId(1), share.refs()[0]);
    let mut seen = vec![0u8; PAGE];
    kept.mem().read(at, &mut seen).unwrap();
    assert!(
        seen.iter().all(|&b| b == 0x11),
        "the mapping works before the lie"
    );

    // The daemon believes the unmap, so revocation succeeds — but the
    // memory must not come back as reusable pages.
    let revoked = share
        .try_unshare()
        .expect("the daemon dropped its pin, so the entry revokes");
    assert!(
        revoked.is_retired(),
        "a chunk whose fd went to another process was handed back for reuse"
    );
    let stats = granter.exporter().stats();
    assert_eq!(
        stats.retired, 1,
        "retirement shows in the counters: {stats:?}"
    );

    // The granter reuses memory for secrets: 64 fresh pages.
    let secrets: Vec<_> = (0..64)
        .map(|_| {
            let s = granter
                .exporter()
                .share(DomId(3), 1, Access::ReadOnly)
                .unwrap();
            s.mem().fill(0, PAGE, SECRET).unwrap();
            s
        })
        .collect();
    // The watcher reads and writes through its kept mapping.
    kept.mem().read(at, &mut seen).unwrap();
    assert!(
        !seen.contains(&SECRET),
        "the watcher saw memory the granter reused"
    );
    kept.mem().fill(at, PAGE, 0xEE).unwrap();
    for s in &secrets {
        let mut page = vec![0u8; PAGE];
        s.mem().read(0, &mut page).unwrap();
        assert!(
            page.iter().all(|&b| b == SECRET),
            "the watcher's write reached a reused page"
        );
    }
    drop((secrets, kept, watcher, granter));
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}
