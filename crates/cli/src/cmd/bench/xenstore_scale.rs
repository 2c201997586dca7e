//! The xenstored part of `xenshare bench scale`: how the daemon's costs
//! grow with 1,000 domains and 10,000 watches.
//!
//! Every domain gets its own socket (bound to it, as the multi-process
//! host gives each domain one) and one connection on it holding
//! [`WATCHES_PER_DOMAIN`] watches on nodes in its home: 1,000 listeners and
//! 1,000 connections served by the daemon's single event loop. Then:
//! - a quiet probe: dom0 writes one watched node at a time and waits for
//!   the event, for the delivery latency without load;
//! - a write storm: dom0 pipelines writes to watched nodes (up to
//!   [`STORM_WINDOW`] in flight) as fast as the daemon takes them, every
//!   write firing one event for one domain, and one thread collects all
//!   events; the latency of each event is measured from just before its
//!   write was sent.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use xenshare::store::wire::{Decoder, Message, MsgType, Request, WatchEvent};
use xenshare::store::Perms;
use xenshare::DomId;
use xenshare_xenstored::{inproc, serve, serve_as, Config, Daemon, ServerHandle, SocketAccess};

type Res<T> = Result<T, String>;

/// Domains introduced.
pub const DOMAINS: u16 = 1000;
/// Watches each domain's connection holds (10,000 in all).
pub const WATCHES_PER_DOMAIN: usize = 10;
/// Writes of the storm.
pub const STORM_WRITES: usize = 50_000;
/// Storm writes in flight at once (below dom0's outstanding-reply limit).
pub const STORM_WINDOW: usize = 256;
/// Quiet latency probes.
const PROBES: usize = 2000;
/// Overall deadline of each phase.
const DEADLINE: Duration = Duration::from_secs(300);

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// A temporary directory for the sockets, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The watched node `k` of domain `d`.
fn node(d: u16, k: usize) -> String {
    format!("/local/domain/{d}/data/k{k}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `msgs` on `s` and reads until every one has its reply; watch
/// events read on the way are counted and dropped. Returns the events.
fn call_all(s: &mut UnixStream, dec: &mut Decoder, msgs: &[Message]) -> Res<usize> {
    let mut bytes = Vec::new();
    for m in msgs {
        m.encode_into(&mut bytes).map_err(e)?;
    }
    s.write_all(&bytes).map_err(e)?;
    let (mut replies, mut events) = (0, 0);
    let mut buf = [0u8; 8192];
    let end = Instant::now() + DEADLINE;
    while replies < msgs.len() {
        while let Some(m) = dec.next_message().map_err(e)? {
            if m.ty == MsgType::WatchEvent {
                events += 1;
            } else if let Some(err) = m.as_error() {
                return Err(format!("request {} failed: {err}", m.req_id));
            } else {
                replies += 1;
            }
        }
        if replies == msgs.len() {
            break;
        }
        if Instant::now() > end {
            return Err("no reply from xenstored".into());
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("xenstored closed the connection".into()),
            Ok(n) => dec.push(&buf[..n]),
            Err(x) if x.kind() == std::io::ErrorKind::Interrupted => {}
            Err(x) => return Err(e(x)),
        }
    }
    Ok(events)
}

/// One domain's connection.
struct DomConn {
    sock: UnixStream,
    dec: Decoder,
}

/// Send times of writes whose events have not arrived yet, per node.
type Pending = Arc<Mutex<HashMap<String, VecDeque<Instant>>>>;

/// Collects `want` watch events, less those `dropped` says the daemon
/// dropped, from all `conns` (through one epoll); returns their latencies
/// in microseconds.
fn collect(
    conns: &mut [DomConn],
    pending: &Pending,
    want: usize,
    dropped: &dyn Fn() -> usize,
) -> Res<Vec<f64>> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(e)?;
    for (i, c) in conns.iter().enumerate() {
        c.sock.set_nonblocking(true).map_err(e)?;
        epoll::add(
            &ep,
            c.sock.as_fd(),
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )
        .map_err(e)?;
    }
    let mut lat = Vec::with_capacity(want);
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    let end = Instant::now() + DEADLINE;
    while lat.len() + dropped() < want {
        if Instant::now() > end {
            return Err(format!("only {} of {want} watch events arrived", lat.len()));
        }
        events.clear();
        let ts = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(x) => return Err(e(x)),
        }
        for ev in &events {
            let Some(c) = conns.get_mut(ev.data.u64() as usize) else {
                continue;
            };
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => return Err("xenstored closed a domain's connection".into()),
                    Ok(n) => c.dec.push(&buf[..n]),
                    Err(x) if x.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(x) if x.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(x) => return Err(e(x)),
                }
            }
            let now = Instant::now();
            while let Some(m) = c.dec.next_message().map_err(e)? {
                if m.ty != MsgType::WatchEvent {
                    continue;
                }
                let w = WatchEvent::parse(&m).map_err(e)?;
                let sent = pending
                    .lock()
                    .map_err(|_| "poisoned")?
                    .get_mut(&w.path)
                    .and_then(|q| q.pop_front());
                if let Some(t) = sent {
                    lat.push(now.saturating_duration_since(t).as_secs_f64() * 1e6);
                }
            }
        }
    }
    for c in conns.iter() {
        c.sock.set_nonblocking(false).map_err(e)?;
    }
    Ok(lat)
}

/// Writes `total` watched nodes from `s`, with up to `window` writes in
/// flight, recording each send time in `pending`. Returns writes/s.
fn storm(s: &mut UnixStream, pending: &Pending, total: usize, window: usize) -> Res<f64> {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let (mut sent, mut done) = (0usize, 0usize);
    let per = usize::from(DOMAINS) * WATCHES_PER_DOMAIN;
    let t = Instant::now();
    let end = t + DEADLINE;
    while done < total {
        if Instant::now() > end {
            return Err("the write storm did not finish".into());
        }
        out.clear();
        let batch = (done + window).min(total).saturating_sub(sent);
        if batch > 0 {
            let mut p = pending.lock().map_err(|_| "poisoned")?;
            let now = Instant::now();
            for i in sent..sent + batch {
                let j = i % per;
                let path = node(
                    1 + (j % usize::from(DOMAINS)) as u16,
                    j / usize::from(DOMAINS),
                );
                Request::Write {
                    path: path.clone(),
                    value: i.to_string().into_bytes(),
                }
                .to_message(i as u32 + 1, 0)
                .encode_into(&mut out)
                .map_err(e)?;
                p.entry(path).or_default().push_back(now);
            }
            drop(p);
            s.write_all(&out).map_err(e)?;
            sent += batch;
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("xenstored closed dom0's connection".into()),
            Ok(n) => dec.push(&buf[..n]),
            Err(x) if x.kind() == std::io::ErrorKind::Interrupted => {}
            Err(x) => return Err(e(x)),
        }
        while let Some(m) = dec.next_message().map_err(e)? {
            if let Some(err) = m.as_error() {
                return Err(format!("storm write {} failed: {err}", m.req_id));
            }
            done += 1;
        }
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// Runs the xenstored scale measurement; returns named figures (times in
/// microseconds, rates per second).
pub fn measure() -> Res<Vec<(&'static str, f64)>> {
    // 1,000 sockets and as many connections.
    xenshare_host::limits::raise_nofile();
    let dir = TempDir(std::env::temp_dir().join(format!("xenshare-scale-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(e)?;
    let daemon = Daemon::new(Config::default());
    let dom0_server = serve(daemon.clone(), dir.0.join("dom0.sock")).map_err(e)?;
    let mut dom0 = inproc::client(&daemon, DomId::DOM0);
    let uid = rustix::process::getuid().as_raw();

    // 1,000 domains: home, own socket, introduction.
    let t = Instant::now();
    let mut servers: Vec<ServerHandle> = Vec::with_capacity(usize::from(DOMAINS));
    for d in 1..=DOMAINS {
        let home = format!("/local/domain/{d}");
        dom0.mkdir(&format!("{home}/data")).map_err(e)?;
        let perms = Perms::parse_fields(&[format!("n{d}").as_bytes()]).map_err(e)?;
        dom0.set_perms(&home, &perms).map_err(e)?;
        dom0.set_perms(&format!("{home}/data"), &perms).map_err(e)?;
        for k in 0..WATCHES_PER_DOMAIN {
            dom0.write(&node(d, k), b"0").map_err(e)?;
        }
        servers.push(
            serve_as(
                daemon.clone(),
                dir.0.join(format!("d{d}.sock")),
                SocketAccess {
                    domid: DomId(d),
                    mode: 0o600,
                    uid: Some(uid),
                },
            )
            .map_err(e)?,
        );
        daemon.introduce_domain(DomId(d)).map_err(e)?;
    }
    let domain_setup_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(DOMAINS);

    // 10,000 watches: each domain's connection watches its nodes.
    let t = Instant::now();
    let mut conns = Vec::with_capacity(usize::from(DOMAINS));
    // Initial events (one per watch) read while waiting for the replies.
    let mut seen = 0;
    for (i, server) in servers.iter().enumerate() {
        let d = i as u16 + 1;
        let mut sock = UnixStream::connect(server.path()).map_err(e)?;
        let mut dec = Decoder::new();
        let msgs: Vec<Message> = (0..WATCHES_PER_DOMAIN)
            .map(|k| {
                Request::Watch {
                    path: node(d, k),
                    token: format!("t{k}").into_bytes(),
                }
                .to_message(k as u32 + 1, 0)
            })
            .collect();
        seen += call_all(&mut sock, &mut dec, &msgs)?;
        conns.push(DomConn { sock, dec });
    }
    let watch_setup_us =
        t.elapsed().as_secs_f64() * 1e6 / (f64::from(DOMAINS) * WATCHES_PER_DOMAIN as f64);
    // Drain the initial events (one per watch) so later counts are exact.
    let pending: Pending = Arc::default();
    {
        let mut p = pending.lock().map_err(|_| "poisoned")?;
        let now = Instant::now();
        for d in 1..=DOMAINS {
            for k in 0..WATCHES_PER_DOMAIN {
                p.entry(node(d, k)).or_default().push_back(now);
            }
        }
    }
    let total = usize::from(DOMAINS) * WATCHES_PER_DOMAIN;
    collect(&mut conns, &pending, total - seen, &|| 0)?;
    pending.lock().map_err(|_| "poisoned")?.clear();

    let mut s = UnixStream::connect(dom0_server.path()).map_err(e)?;
    let mut dec0 = Decoder::new();

    // Quiet latency: one write at a time, its event awaited.
    let mut quiet = Vec::with_capacity(PROBES);
    let mut buf = [0u8; 4096];
    for i in 0..PROBES {
        let d = 1 + (i * 7919 % usize::from(DOMAINS)) as u16;
        let k = i % WATCHES_PER_DOMAIN;
        let path = node(d, k);
        let c = &mut conns[usize::from(d) - 1];
        let msg = Request::Write {
            path: path.clone(),
            value: b"q".to_vec(),
        }
        .to_message(i as u32 + 1, 0);
        let t = Instant::now();
        s.write_all(&msg.to_bytes().map_err(e)?).map_err(e)?;
        // The event on the domain's connection.
        let end = t + DEADLINE;
        let lat = loop {
            if let Some(m) = c.dec.next_message().map_err(e)? {
                if m.ty == MsgType::WatchEvent {
                    break t.elapsed();
                }
                continue;
            }
            if Instant::now() > end {
                return Err("a watch event never arrived".into());
            }
            let n = c.sock.read(&mut buf).map_err(e)?;
            if n == 0 {
                return Err("xenstored closed a domain's connection".into());
            }
            c.dec.push(&buf[..n]);
        };
        quiet.push(lat.as_secs_f64() * 1e6);
        // dom0's reply.
        loop {
            if let Some(m) = dec0.next_message().map_err(e)? {
                if let Some(err) = m.as_error() {
                    return Err(format!("probe write failed: {err}"));
                }
                break;
            }
            let n = s.read(&mut buf).map_err(e)?;
            if n == 0 {
                return Err("xenstored closed dom0's connection".into());
            }
            dec0.push(&buf[..n]);
        }
    }
    quiet.sort_by(f64::total_cmp);

    // The storm: writes pipelined from dom0, events collected meanwhile.
    let dropped_before = daemon.dropped_events();
    let collector = {
        let (pending, d) = (pending.clone(), daemon.clone());
        std::thread::spawn(move || -> Res<Vec<f64>> {
            // Events dropped for a slow collector never come: not waited for.
            let dropped = || (d.dropped_events() - dropped_before) as usize;
            collect(&mut conns, &pending, STORM_WRITES, &dropped)
        })
    };
    let storm_writes = storm(&mut s, &pending, STORM_WRITES, STORM_WINDOW)?;
    let mut lat = collector
        .join()
        .map_err(|_| "the event collector panicked".to_string())??;
    lat.sort_by(f64::total_cmp);
    let dropped = (daemon.dropped_events() - dropped_before) as f64;

    drop(servers);
    drop(dom0_server);
    Ok(vec![
        ("xs_domains", f64::from(DOMAINS)),
        ("xs_watches", f64::from(DOMAINS) * WATCHES_PER_DOMAIN as f64),
        ("xs_domain_setup_us", domain_setup_us),
        ("xs_watch_setup_us", watch_setup_us),
        ("xs_event_quiet_p50_us", percentile(&quiet, 0.5)),
        ("xs_event_quiet_p99_us", percentile(&quiet, 0.99)),
        ("xs_storm_writes_per_s", storm_writes),
        ("xs_storm_event_p50_us", percentile(&lat, 0.5)),
        ("xs_storm_event_p99_us", percentile(&lat, 0.99)),
        ("xs_storm_events_dropped", dropped),
    ])
}
