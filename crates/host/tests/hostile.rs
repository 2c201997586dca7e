//! Hostile domain processes against the host daemon: every resource a
//! domain can make the daemon allocate is bounded, nothing a domain does
//! with the fds it gets can block or crash the daemon, and other domains
//! keep being served.
//!
//! Most attackers speak the raw RPC protocol (a hostile process need not
//! use the client library); the fd-limit test runs its domains as separate
//! processes (this binary re-executed in a child role, the ignored `child`
//! test).

use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
mod common;

use common::Proc;
use common::{support, wait_for};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xenshare::grant::GntSt;
use xenshare::platform::EventChannels;
use xenshare::{Access, DomId, GrantRef, Port};
use xenshare_abi::event::{
    port_word_bit, EVTCHN_2L_NR_CHANNELS, SHARED_INFO_MASK_OFFSET, SHARED_INFO_PENDING_OFFSET,
};
use xenshare_abi::PAGE_SIZE;
use xenshare_host::client::{ClientError, Conn};
use xenshare_host::limits::{MAX_CHUNKS, MAX_EVT_HANDLES};
use xenshare_host::sock::Packet;
use xenshare_host::wire::{op, Reader, RemoteError, Writer, MAX_FDS, MAX_MAP_REFS};
use xenshare_host::{HostConfig, RemoteDomain};
use xenshare_sim::region::Region;

/// A raw connection joined as `dom`: the connection and the join reply
/// (grant table and shared_info memfds).
fn raw_join(sock: &std::path::Path, dom: u16) -> (Arc<Conn>, Packet) {
    let c = Conn::connect(sock).unwrap();
    c.authenticate(sock).unwrap();
    let mut w = Writer::new(op::JOIN);
    w.u32(u32::from(dom));
    let p = c.call(&w, &[]).unwrap();
    (c, p)
}

fn refused(r: Result<Packet, ClientError>) -> String {
    match r {
        Err(ClientError::Remote(RemoteError::Refused(m))) => m,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got success"),
    }
}

fn gnt_refused(r: Result<Packet, ClientError>) -> GntSt {
    match r {
        Err(ClientError::Remote(RemoteError::Gnt(s))) => s,
        Err(e) => panic!("expected a grant status, got {e}"),
        Ok(_) => panic!("expected a grant status, got success"),
    }
}

fn u64_of(p: &Packet) -> u64 {
    Reader::new(&p.data).unwrap().u64().unwrap()
}

fn u32_of(p: &Packet) -> u32 {
    Reader::new(&p.data).unwrap().u32().unwrap()
}

/// Two well-behaved domains still exchange an event through the daemon.
fn events_still_work(sock: &std::path::Path, a: DomId, b: DomId) {
    let da = RemoteDomain::join(sock, Some(a)).unwrap();
    let db = RemoteDomain::join(sock, Some(b)).unwrap();
    let ea = da.evtchn().unwrap();
    let eb = db.evtchn().unwrap();
    let pa = ea.alloc_unbound(b).unwrap();
    let pb = eb.bind_interdomain(a, pa).unwrap();
    // Binding marks pb pending; consume that first.
    assert_eq!(eb.wait(Some(Duration::from_secs(30))).unwrap(), Some(pb));
    eb.notify(pb).unwrap();
    assert_eq!(
        ea.wait(Some(Duration::from_secs(30))).unwrap(),
        Some(pa),
        "the event was not delivered"
    );
    let s = da.exporter().share(b, 1, Access::ReadWrite).unwrap();
    s.mem().fill(0, PAGE_SIZE, 0x3C).unwrap();
    let m = db.importer().map_rw(a, s.refs()).unwrap();
    let mut page = vec![0u8; PAGE_SIZE];
    m.mem().read(0, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == 0x3C));
}

/// Item 1: the daemon makes every wake-up channel and never blocks on it.
/// A domain that hands over a pipe of its own is refused; one that makes
/// its end of the daemon's pipe blocking and never reads it while a peer
/// notifies it 20,000 times (its own thread clearing the pending and mask
/// bits so that every notify is a delivery with a token) neither blocks
/// the notifier nor the daemon, and what the kernel holds for it stays one
/// page of tokens.
#[test]
fn wake_channel_never_blocks_the_daemon() {
    let (_h, sock) = common::host("hostile", "wake");
    let (a, joined) = raw_join(&sock, 1);
    let mut jfds = joined.fds.into_iter();
    let (Some(_table), Some(shinfo)) = (jfds.next(), jfds.next()) else {
        panic!("join gave no fds");
    };
    let shinfo = Region::from_fd(shinfo, true).unwrap();

    // Handing over our own fd (a pipe) is not how it works any more.
    let (_rd, wr) = rustix::pipe::pipe().unwrap();
    let m = refused(a.call(&Writer::new(op::EVT_OPEN), &[wr.as_fd()]));
    assert!(m.contains("expected 0 fds"), "{m}");

    let p = a.call(&Writer::new(op::EVT_OPEN), &[]).unwrap();
    let id = u32_of(&p);
    let mut pfds = p.fds.into_iter();
    let (Some(wake), None) = (pfds.next(), pfds.next()) else {
        panic!("EVT_OPEN must give exactly one wake-up fd");
    };
    // Clear O_NONBLOCK on our copy: the daemon must not care.
    let fl = rustix::fs::fcntl_getfl(&wake).unwrap();
    rustix::fs::fcntl_setfl(&wake, fl - rustix::fs::OFlags::NONBLOCK).unwrap();
    assert!(!rustix::fs::fcntl_getfl(&wake)
        .unwrap()
        .contains(rustix::fs::OFlags::NONBLOCK));

    let mut w = Writer::new(op::EVT_ALLOC_UNBOUND);
    w.u32(id).u32(2).u32(0);
    let port = u32_of(&a.call(&w, &[]).unwrap());

    // Keep the pending and mask bits clear so that every notify is a
    // delivery.
    let stop = Arc::new(AtomicBool::new(false));
    let clearer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (word, bit) = port_word_bit(port);
            let word_at = |base: usize| shinfo.mem().atomic_u64(base + word * 8).unwrap();
            let pending = word_at(SHARED_INFO_PENDING_OFFSET);
            let mask = word_at(SHARED_INFO_MASK_OFFSET);
            while !stop.load(Ordering::Relaxed) {
                pending.fetch_and(!(1u64 << bit), Ordering::AcqRel);
                mask.fetch_and(!(1u64 << bit), Ordering::AcqRel);
                std::hint::spin_loop();
            }
        })
    };

    let b = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let eb = b.evtchn().unwrap();
    let pb = eb.bind_interdomain(DomId(1), Port(port)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let notifier = std::thread::spawn(move || {
        let mut r = Ok(());
        for _ in 0..20_000 {
            r = r.and(eb.notify(pb));
        }
        let _ = tx.send(r);
        eb
    });
    let res = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the notifier blocked: the daemon is stuck on a domain's wake-up fd");
    res.unwrap();
    stop.store(true, Ordering::Relaxed);
    clearer.join().unwrap();
    let _eb = notifier.join().unwrap();

    // What the daemon queued on our end is bounded (tokens past one page
    // were dropped), and it is the daemon's pipe, not something we made.
    let st = rustix::fs::fstat(&wake).unwrap();
    assert_eq!(
        rustix::fs::FileType::from_raw_mode(st.st_mode),
        rustix::fs::FileType::Fifo
    );
    assert!(
        rustix::pipe::fcntl_getpipe_size(&wake).unwrap() <= EVTCHN_2L_NR_CHANNELS,
        "the pipe holds more than a token per port"
    );
    rustix::fs::fcntl_setfl(&wake, fl).unwrap();
    let mut queued = 0;
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = rustix::io::read(&wake, &mut buf) {
        queued += n;
        assert!(queued <= 1 << 20, "unbounded wake-up queue");
    }
    eprintln!("wake-up tokens queued for a domain that never read: {queued}");
    assert!(queued >= 1, "no wake-up was delivered at all");
    assert!(queued <= EVTCHN_2L_NR_CHANNELS, "{queued} tokens queued");

    // The daemon still serves everyone.
    events_still_work(&sock, DomId(3), DomId(4));
}

/// Item 2: a domain opening event channel handles, then registering
/// memory chunks, until refused gets a clear "limit" refusal at the
/// per-domain limits; the daemon's fd accounting follows; another domain
/// joins and works meanwhile; all is given back when the hostile domain
/// goes.
#[test]
fn per_domain_limits_refuse_clearly_and_others_keep_working() {
    let (h, sock) = common::host("hostile", "limits");
    let (a, _j) = raw_join(&sock, 1);
    let mut kept = Vec::new();
    let msg = loop {
        match a.call(&Writer::new(op::EVT_OPEN), &[]) {
            Ok(p) => {
                kept.push(p);
                assert!(kept.len() <= MAX_EVT_HANDLES, "no limit on handles");
            }
            Err(ClientError::Remote(RemoteError::Refused(m))) => break m,
            Err(e) => panic!("unclear failure: {e}"),
        }
    };
    assert_eq!(kept.len(), MAX_EVT_HANDLES);
    assert!(
        msg.contains("limit") && msg.contains("event channel handles"),
        "{msg}"
    );
    assert_eq!(h.fds_held(), MAX_EVT_HANDLES);

    let mut chunks = 0usize;
    let mut first = None;
    let msg = loop {
        let r = Region::new_share("hostile", PAGE_SIZE).unwrap();
        let mut w = Writer::new(op::ADD_CHUNK);
        w.u64(1);
        match a.call(&w, &[r.fd()]) {
            Ok(p) => {
                first.get_or_insert(Reader::new(&p.data).unwrap().u64().unwrap());
                chunks += 1;
                assert!(chunks <= MAX_CHUNKS, "no limit on chunks");
            }
            Err(ClientError::Remote(RemoteError::Refused(m))) => break m,
            Err(e) => panic!("unclear failure: {e}"),
        }
    };
    // With a small RLIMIT_NOFILE the daemon-wide budget refuses first
    // (other tests of this binary hold fds too): also a clear refusal.
    let roomy = xenshare_host::limits::nofile() >= 2 * (MAX_CHUNKS + MAX_EVT_HANDLES) + 4096;
    if roomy {
        assert_eq!(chunks, MAX_CHUNKS);
        assert!(
            msg.contains("limit") && msg.contains("memory chunks"),
            "{msg}"
        );
    } else {
        eprintln!("note: small fd limit; the daemon's budget refused after {chunks} chunks");
        assert!(
            (msg.contains("limit") && msg.contains("memory chunks"))
                || msg.contains("out of file descriptors"),
            "{msg}"
        );
    }
    assert_eq!(h.fds_held(), MAX_EVT_HANDLES + chunks);

    // Retiring a chunk gives its place back.
    let mut w = Writer::new(op::RETIRE_CHUNK);
    w.u64(first.unwrap());
    a.call(&w, &[]).unwrap();
    assert_eq!(h.fds_held(), MAX_EVT_HANDLES + chunks - 1);

    // Others are served meanwhile.
    events_still_work(&sock, DomId(2), DomId(3));

    // The hostile domain goes: everything it held is given back.
    drop((a, kept));
    wait_for("the hostile domain's fds to be given back", || {
        h.fds_held() == 0
    });
}

/// Item 2: retiring a chunk that a peer process still maps closes the
/// daemon's memfd (the peer's mapping is its own) and gives the place
/// back, while the peer's mapping and the granter's memory stay the same
/// pages: retire-and-re-add cannot grow the daemon's fds.
#[test]
fn retiring_a_mapped_chunk_closes_the_daemon_fd() {
    let (h, sock) = common::host("hostile", "retired");
    let (a, j) = raw_join(&sock, 1);
    let table = Region::from_fd(j.fds.into_iter().next().unwrap(), true).unwrap();
    let chunk = Region::new_share("c", PAGE_SIZE).unwrap();
    chunk.mem().fill(0, PAGE_SIZE, 0x42).unwrap();
    let mut w = Writer::new(op::ADD_CHUNK);
    w.u64(1);
    let frame = u64_of(&a.call(&w, &[chunk.fd()]).unwrap());
    // A raw v1 grant entry at ref 8: flags, domid, frame.
    let gref = 8usize;
    table
        .mem()
        .write(gref * 8 + 2, &2u16.to_le_bytes())
        .unwrap();
    table
        .mem()
        .write(gref * 8 + 4, &(frame as u32).to_le_bytes())
        .unwrap();
    table
        .mem()
        .atomic_u16(gref * 8)
        .unwrap()
        .store(xenshare_abi::grant::GTF_PERMIT_ACCESS, Ordering::Release);
    let peer = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let map = peer
        .importer()
        .map_rw(DomId(1), &[GrantRef(gref as u32)])
        .unwrap();
    assert_eq!(h.fds_held(), 1);
    let mut w = Writer::new(op::RETIRE_CHUNK);
    w.u64(frame);
    a.call(&w, &[]).unwrap();
    assert_eq!(h.fds_held(), 0, "the retired chunk is still on the budget");
    let mut page = vec![0u8; PAGE_SIZE];
    map.mem().read(0, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == 0x42));
    map.mem().fill(0, 16, 0x43).unwrap();
    chunk.mem().read(0, &mut page[..16]).unwrap();
    assert!(page[..16].iter().all(|b| *b == 0x43));
}

/// Item 2: connections are bounded too (each is a thread and an fd):
/// past the limit the daemon closes new ones at once, and serves again
/// when one goes.
#[test]
fn connections_are_bounded() {
    use xenshare_host::limits::MAX_CONNS;
    let (h, sock) = common::host("hostile", "conns");
    let live = || h.stats().live_conns.load(Ordering::Relaxed);
    let mut conns: Vec<_> = (0..MAX_CONNS)
        .map(|_| Conn::connect(&sock).unwrap())
        .collect();
    wait_for("every connection to be served", || live() == MAX_CONNS);
    let extra = Conn::connect(&sock).unwrap();
    let mut w = Writer::new(op::JOIN);
    w.u32(1);
    match extra.call(&w, &[]) {
        Err(ClientError::Io(_)) => {}
        Err(e) => panic!("expected the connection closed, got {e}"),
        Ok(_) => panic!("a connection past the limit was served"),
    }
    assert!(h.stats().conns_refused.load(Ordering::Relaxed) >= 1);
    conns.pop();
    wait_for("a place to come free", || live() < MAX_CONNS);
    let d = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    d.exporter().share(DomId(2), 1, Access::ReadWrite).unwrap();
}

/// Item 3: a map of more separate chunks than one message can carry fds
/// for works (several replies), and every page is the right one.
#[test]
fn map_of_more_chunks_than_one_message_carries() {
    let (_h, sock) = common::host("hostile", "bigmap");
    let g = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let m = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let n = 3 * MAX_FDS + 5;
    let shares: Vec<_> = (0..n)
        .map(|i| {
            let s = g.exporter().share(DomId(2), 1, Access::ReadWrite).unwrap();
            s.mem().fill(0, PAGE_SIZE, (i % 251) as u8).unwrap();
            s
        })
        .collect();
    // Non-contiguous too: map them in a shuffled order.
    let mut order: Vec<usize> = (0..n).collect();
    order.reverse();
    order.swap(0, n / 2);
    let refs: Vec<GrantRef> = order.iter().map(|i| shares[*i].refs()[0]).collect();
    let map = m.importer().map_rw(DomId(1), &refs).unwrap();
    let mut page = vec![0u8; PAGE_SIZE];
    for (k, i) in order.iter().enumerate() {
        map.mem().read(k * PAGE_SIZE, &mut page).unwrap();
        assert!(
            page.iter().all(|b| *b == (*i % 251) as u8),
            "page {k} is not share {i}"
        );
    }
    // Writes go to the right granter pages.
    map.mem().fill(0, PAGE_SIZE, 0xEE).unwrap();
    shares[order[0]].mem().read(0, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == 0xEE));
    // Read-only too (separate fds, sealed before they leave the daemon).
    let ro: Vec<_> = (0..MAX_FDS + 3)
        .map(|_| g.exporter().share(DomId(2), 1, Access::ReadOnly).unwrap())
        .collect();
    let refs: Vec<GrantRef> = ro.iter().map(|s| s.refs()[0]).collect();
    let rmap = m.importer().map_ro(DomId(1), &refs).unwrap();
    assert_eq!(rmap.mem().len(), refs.len() * PAGE_SIZE);
}

/// Item 4: QUARANTINE and SET_EXPORT_NOTIFY refs must be in the domain's
/// table, and a QUARANTINE message carries a bounded count.
#[test]
fn quarantine_and_export_notify_input_is_checked() {
    let (_h, sock) = common::host("hostile", "quar");
    let (a, _j) = raw_join(&sock, 1);
    let entries = HostConfig::new("x").domain.grant_frames * (PAGE_SIZE as u32 / 8);
    let quarantine = |refs: &[u32]| {
        let mut w = Writer::new(op::QUARANTINE);
        w.u8(1).u16(refs.len() as u16);
        for r in refs {
            w.u32(*r);
        }
        a.call(&w, &[])
    };
    quarantine(&[entries - 1]).unwrap();
    assert_eq!(gnt_refused(quarantine(&[entries])), GntSt::BadGntref);
    assert_eq!(gnt_refused(quarantine(&[7, u32::MAX])), GntSt::BadGntref);
    let many: Vec<u32> = (0..MAX_MAP_REFS as u32 + 1).collect();
    assert!(refused(quarantine(&many)).contains("quarantine count"));
    // Not a boolean.
    let mut w = Writer::new(op::QUARANTINE);
    w.u8(7).u16(0);
    assert!(refused(a.call(&w, &[])).contains("malformed"));
    // Only the accepted ref was recorded.
    let rep = xenshare_host::grant_reports(&sock, Some(DomId(1))).unwrap();
    assert_eq!(rep[0].quarantined, vec![GrantRef(entries - 1)]);

    // An export notify for a ref outside the table is refused.
    let r = Region::new_share("chunk", PAGE_SIZE).unwrap();
    let mut w = Writer::new(op::ADD_CHUNK);
    w.u64(1);
    let frame = Reader::new(&a.call(&w, &[r.fd()]).unwrap().data)
        .unwrap()
        .u64()
        .unwrap();
    let notify = |first: u32| {
        let mut w = Writer::new(op::SET_EXPORT_NOTIFY);
        w.u32(first).u64(frame).opt_u32(Some(0)).opt_u32(None);
        a.call(&w, &[])
    };
    notify(entries - 1).unwrap();
    assert_eq!(gnt_refused(notify(entries)), GntSt::BadGntref);
    assert_eq!(gnt_refused(notify(u32::MAX)), GntSt::BadGntref);
}

/// Item 5: a chunk fd must be a memfd sealed against shrinking, of the
/// announced size, not hugetlb: pipes, sockets, disk files, unsealed or
/// wrongly sized memfds are refused, the daemon stays up, and a
/// registered chunk cannot be shrunk under the daemon.
#[test]
fn chunk_fds_are_checked() {
    use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
    let (_h, sock) = common::host("hostile", "memfd");
    let (a, _j) = raw_join(&sock, 1);
    let add = |fd: std::os::fd::BorrowedFd<'_>, pages: u64| {
        let mut w = Writer::new(op::ADD_CHUNK);
        w.u64(pages);
        a.call(&w, &[fd])
    };
    let (rd, _wr) = rustix::pipe::pipe().unwrap();
    assert!(refused(add(rd.as_fd(), 1)).contains("not a shared-memory file"));
    let (s1, _s2) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    assert!(refused(add(s1.as_fd(), 1)).contains("not a shared-memory file"));
    let tmp = support::TempDir::new("hostile-file");
    let path = tmp.join("f");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(PAGE_SIZE as u64).unwrap();
    let m = refused(add(file.as_fd(), 1));
    assert!(
        m.contains("not a shared-memory file") || m.contains("not a sealed memfd"),
        "{m}"
    );
    let _ = std::fs::remove_file(&path);

    let unsealed = memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&unsealed, PAGE_SIZE as u64).unwrap();
    assert!(refused(add(unsealed.as_fd(), 1)).contains("not a sealed memfd"));
    let open_seals = memfd_create("open", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&open_seals, PAGE_SIZE as u64).unwrap();
    assert!(refused(add(open_seals.as_fd(), 1)).contains("not a sealed memfd"));

    let small = Region::new_share("small", PAGE_SIZE).unwrap();
    assert!(refused(add(small.fd(), 2)).contains("announced"));
    assert!(refused(add(small.fd(), 0)).contains("bad chunk size"));
    assert!(refused(add(small.fd(), u64::MAX)).contains("bad chunk size"));

    match memfd_create(
        "huge",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB,
    ) {
        Ok(huge) => {
            let len = 2u64 << 20;
            if ftruncate(&huge, len).is_ok() {
                let _ = fcntl_add_seals(&huge, SealFlags::SHRINK);
                let m = refused(add(huge.as_fd(), len / PAGE_SIZE as u64));
                assert!(m.contains("not a shared-memory file"), "{m}");
            } else {
                eprintln!("note: hugetlb memfd cannot be sized here; that case not tried");
            }
        }
        Err(e) => eprintln!("note: no hugetlb memfd here ({e}); that case not tried"),
    }

    // A good one is accepted, and its owner cannot shrink it any more.
    add(small.fd(), 1).unwrap();
    assert!(
        ftruncate(small.fd(), 0).is_err(),
        "a registered chunk shrank"
    );
    events_still_work(&sock, DomId(2), DomId(3));
}

/// Item 7: the mapper of a read-only grant gets an fd of the granter's
/// memory; nothing it does with it writes the granter's pages: reopening
/// it read-write through /proc/self/fd, then `write`, `fallocate`
/// (punching a hole), a writable shared mmap, `mprotect` of a read-only
/// mapping to writable, or a private writable mapping (whose writes stay
/// private). The granter can still write its page, and the mapper sees it.
#[test]
fn read_only_grant_cannot_be_written_through_its_fd() {
    use rustix::mm::{mmap, mprotect, munmap, MapFlags, MprotectFlags, ProtFlags};
    let (_h, sock) = common::host("hostile", "ro");
    let g = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let share = g.exporter().share(DomId(2), 1, Access::ReadOnly).unwrap();
    share.mem().fill(0, PAGE_SIZE, 0x11).unwrap();
    let (m, _j) = raw_join(&sock, 2);
    let mut w = Writer::new(op::MAP);
    w.u16(1).u8(1).u16(1).u32(share.refs()[0].0);
    let p = m.call(&w, &[]).unwrap();
    let mut r = Reader::new(&p.data).unwrap();
    assert_eq!(r.u16().unwrap(), 1);
    assert_eq!(r.u16().unwrap(), 0, "read-only map refused");
    let (_handle, idx, page) = (r.u32().unwrap(), r.u16().unwrap(), r.u64().unwrap());
    let fd = &p.fds[usize::from(idx)];
    let off = page * PAGE_SIZE as u64;
    let granter_intact = |what: &str| {
        let mut buf = vec![0u8; PAGE_SIZE];
        share.mem().read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0x11), "{what} reached the granter");
    };

    // Reopen read-write through /proc/self/fd (allowed for the owner).
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let rw = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let rw: OwnedFd = match rw {
        Ok(f) => f,
        Err(e) => {
            eprintln!("note: reopen read-write refused ({e}); using the fd itself");
            rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
        }
    };
    assert!(
        rustix::io::pwrite(&rw, &[0xEE; 64], off).is_err(),
        "write() through a reopened fd succeeded"
    );
    granter_intact("write()");
    assert!(
        rustix::fs::fallocate(
            &rw,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            off,
            PAGE_SIZE as u64,
        )
        .is_err(),
        "punching a hole succeeded"
    );
    granter_intact("fallocate(PUNCH_HOLE)");
    // SAFETY: a fresh mapping at an address the kernel chooses (expected
    // to be refused); unmapped below if it was not.
    let shared_rw = unsafe {
        mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &rw,
            off,
        )
    };
    if let Ok(p) = shared_rw {
        // SAFETY: the mapping just made.
        let _ = unsafe { munmap(p, PAGE_SIZE) };
        panic!("a writable shared mapping of a read-only grant was made");
    }
    // A read-only shared mapping, then mprotect to writable.
    // SAFETY: a fresh mapping at an address the kernel chooses.
    let ro_map = unsafe {
        mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            ProtFlags::READ,
            MapFlags::SHARED,
            &rw,
            off,
        )
    }
    .unwrap();
    // SAFETY: the mapping above, not reachable through any reference.
    let up = unsafe {
        mprotect(
            ro_map,
            PAGE_SIZE,
            MprotectFlags::READ | MprotectFlags::WRITE,
        )
    };
    assert!(up.is_err(), "mprotect made a read-only grant writable");
    // SAFETY: reading our own live mapping.
    let seen = unsafe { std::ptr::read_volatile(ro_map.cast::<u8>()) };
    assert_eq!(seen, 0x11);
    // A private writable mapping is allowed, but its writes stay private.
    // SAFETY: a fresh mapping at an address the kernel chooses.
    let private = unsafe {
        mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
            &rw,
            off,
        )
    };
    if let Ok(p) = private {
        // SAFETY: writing our own private copy-on-write mapping.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0xEE, PAGE_SIZE) };
        // SAFETY: the mapping just made.
        let _ = unsafe { munmap(p, PAGE_SIZE) };
    }
    granter_intact("a private mapping");
    // The granter still writes its own page, and the mapper sees it.
    share.mem().fill(0, PAGE_SIZE, 0x77).unwrap();
    // SAFETY: reading our own live mapping.
    let seen = unsafe { std::ptr::read_volatile(ro_map.cast::<u8>()) };
    assert_eq!(seen, 0x77, "sharing is broken: the mapper sees a copy");
    // SAFETY: the mapping above.
    let _ = unsafe { munmap(ro_map, PAGE_SIZE) };
}

/// Item 8: `xenshare grants` works with more live grants than one message
/// can describe (6,100 in one domain, plus a second domain after it).
#[test]
fn grant_inspector_pages_large_tables() {
    let (_h, sock) = common::host("hostile", "inspect");
    let a = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
    let b = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
    let big = a
        .exporter()
        .share(DomId(2), 6100, Access::ReadOnly)
        .unwrap();
    let small = b.exporter().share(DomId(1), 10, Access::ReadWrite).unwrap();
    let all = xenshare_host::grant_reports(&sock, None).unwrap();
    assert_eq!(all.len(), 2);
    let (ra, rb) = (&all[0], &all[1]);
    assert_eq!((ra.domid, rb.domid), (DomId(1), DomId(2)));
    for g in big.refs() {
        assert!(ra.entries.iter().any(|e| e.gref == *g), "ref {g:?} missing");
    }
    assert_eq!(ra.entries.len(), big.refs().len());
    assert_eq!(rb.entries.len(), small.refs().len());
    let only = xenshare_host::grant_reports(&sock, Some(DomId(1))).unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].entries.len(), 6100);
}

// ---- Item 6: a block front end's pool of 1024 single-page persistent
// grants, with a 1024 soft fd limit in both domain processes.

const POOL: usize = 1024;
const SOFT_NOFILE: u64 = 1024;

/// Both domain processes run with a soft fd limit of 1024: the granter
/// makes 1024 single-page shares, the mapper maps each on its own and keeps
/// them all (a persistent pool), then maps all 1024 at once too, and checks
/// every page. Neither holds an fd per share.
#[test]
fn blkfront_pool_of_1024_shares_within_1024_fds() {
    let (h, sock) = common::host("hostile", "pool");
    let mut g = Proc::spawn("pool-granter", &[("XS_SOCK", sock.display().to_string())]);
    let line = g.expect("refs ");
    let refs = line.trim_start_matches("refs ").to_string();
    let gfds = g.expect("fds ");
    let mut m = Proc::spawn(
        "pool-mapper",
        &[("XS_SOCK", sock.display().to_string()), ("XS_REFS", refs)],
    );
    let mfds = m.expect("mapped ");
    eprintln!(
        "granter {gfds}; mapper {mfds}; daemon holds {} fds for domains",
        h.fds_held()
    );
    let open = |s: &str| -> usize { s.rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(open(&gfds) < 100, "granter holds an fd per share: {gfds}");
    assert!(open(&mfds) < 100, "mapper holds an fd per share: {mfds}");
    m.say("exit");
    g.say("exit");
    let _ = m.child.wait();
    let _ = g.child.wait();
}

fn lower_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(SOFT_NOFILE),
            maximum: cur.maximum,
        },
    )
    .unwrap();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Child roles for the tests above; run only when re-executed by them.
#[test]
#[ignore = "child role of the multi-process tests"]
fn child() {
    let Ok(role) = std::env::var("XENSHARE_TEST_ROLE") else {
        return;
    };
    lower_nofile();
    let sock = PathBuf::from(std::env::var("XS_SOCK").unwrap());
    let say = |s: &str| {
        println!("CHILD {s}");
        std::io::stdout().flush().unwrap();
    };
    let wait_exit = || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.map_or(true, |l| l == "exit") {
                break;
            }
        }
    };
    match role.as_str() {
        "pool-granter" => {
            let me = RemoteDomain::join(&sock, Some(DomId(1))).unwrap();
            let shares: Vec<_> = (0..POOL)
                .map(|i| {
                    let s = me.exporter().share(DomId(2), 1, Access::ReadWrite).unwrap();
                    s.mem().write(0, &(i as u32).to_le_bytes()).unwrap();
                    s
                })
                .collect();
            let refs: Vec<String> = shares.iter().map(|s| s.refs()[0].0.to_string()).collect();
            say(&format!("refs {}", refs.join(",")));
            say(&format!("fds open {}", open_fds()));
            wait_exit();
            drop(shares);
            std::process::exit(0);
        }
        "pool-mapper" => {
            let me = RemoteDomain::join(&sock, Some(DomId(2))).unwrap();
            let refs: Vec<GrantRef> = std::env::var("XS_REFS")
                .unwrap()
                .split(',')
                .map(|r| GrantRef(r.parse().unwrap()))
                .collect();
            assert_eq!(refs.len(), POOL);
            let stamp = |mem: xenshare::mem::SharedMem<'_>, off: usize| {
                let mut b = [0u8; 4];
                mem.read(off, &mut b).unwrap();
                u32::from_le_bytes(b) as usize
            };
            let pool: Vec<_> = refs
                .iter()
                .map(|r| me.importer().map_rw(DomId(1), &[*r]).unwrap())
                .collect();
            for (i, m) in pool.iter().enumerate() {
                assert_eq!(stamp(m.mem(), 0), i, "pool page {i}");
            }
            let all = me.importer().map_rw(DomId(1), &refs).unwrap();
            for i in 0..POOL {
                assert_eq!(stamp(all.mem(), i * PAGE_SIZE), i, "batch page {i}");
            }
            say(&format!("mapped {} fds open {}", pool.len(), open_fds()));
            wait_exit();
            drop((all, pool));
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}
