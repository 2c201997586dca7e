//! `xenshare bench xenstore`: read and write operations per second against
//! the daemon over its Unix socket with several concurrent clients, next to
//! three baselines measured in the same run: the daemon in-process (no
//! socket, the store's own cost), a bare Unix-socket echo of the same
//! message sizes with a thread per connection (the transport's ceiling),
//! and the same echo served by one `epoll` thread (the ceiling of a
//! single-threaded daemon, which xenshare's xenstored is, like C xenstored
//! and oxenstored).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use xenshare::store::client::Client;
use xenshare::store::UnixTransport;
use xenshare::DomId;
use xenshare_xenstored::{inproc, spawn, Config, Daemon};

type Res<T> = Result<T, String>;

/// Options of `bench xenstore`.
#[derive(Args)]
pub struct XenstoreArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Operations per client and kind.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ops: u64,
    /// Rounds of every measurement; medians and [min–max] are reported.
    #[arg(long, default_value_t = super::stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,
    /// The daemon's poll budget in microseconds (`Config::poll_budget`:
    /// how long its loop polls after work before it sleeps; 0 = never).
    #[arg(long, value_name = "US", default_value_t = Config::default().poll_budget.as_micros() as u64)]
    poll_us: u64,
    /// Measure only the daemon already serving this socket (for example
    /// `xenshare xenstored --socket PATH`, or C xenstored), without the
    /// baselines: to profile or trace the daemon as its own process.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

struct TempSock(PathBuf);

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sock(tag: &str) -> TempSock {
    TempSock(std::env::temp_dir().join(format!("xenshare-bench-{tag}-{}.sock", std::process::id())))
}

fn per_sec(ops: u64, f: impl FnOnce() -> Res<()>) -> Res<f64> {
    let t = Instant::now();
    f()?;
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

/// The shared client workload (`xenshare_xenstored::bench`, also used by
/// the Xen lab's side-by-side test); returns (write ops/s, read ops/s).
fn run_clients<T, F>(clients: u64, ops: u64, connect: F) -> Res<(f64, f64)>
where
    T: xenshare::store::Transport + Send + 'static,
    F: Fn() -> Res<Client<T>>,
{
    let r = xenshare_xenstored::bench::run_clients(clients, ops, "/bench", connect)?;
    Ok((r.write_ops, r.read_ops))
}

/// Request and reply sizes of the echo baselines: a header plus a path
/// like the bench's, and a header plus a short answer.
const ECHO_REQ: usize = 16 + 24;
const ECHO_RSP: usize = 16 + 3;

/// `clients` threads, each sending `ops` requests of [`ECHO_REQ`] bytes on
/// its stream and waiting for each [`ECHO_RSP`]-byte reply; round trips/s.
fn echo_clients(streams: Vec<UnixStream>, ops: u64) -> Res<f64> {
    let total = streams.len() as u64 * ops;
    per_sec(total, || {
        let hs: Vec<_> = streams
            .into_iter()
            .map(|mut st| {
                std::thread::spawn(move || -> std::io::Result<()> {
                    let req = [7u8; ECHO_REQ];
                    let mut rsp = [0u8; ECHO_RSP];
                    for _ in 0..ops {
                        st.write_all(&req)?;
                        st.read_exact(&mut rsp)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| "echo client panicked".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A bare echo server with a thread per connection, answering each
/// request with a reply of the same shape: what any socket protocol with
/// one request in flight per client costs at best, with as many server
/// threads as clients.
fn echo_baseline(clients: u64, ops: u64) -> Res<f64> {
    let s = sock("echo");
    let listener = UnixListener::bind(&s.0).map_err(|e| e.to_string())?;
    let n = clients;
    let server = std::thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..n {
            let Ok((mut st, _)) = listener.accept() else {
                break;
            };
            hs.push(std::thread::spawn(move || {
                let mut req = [0u8; ECHO_REQ];
                while st.read_exact(&mut req).is_ok() {
                    if st.write_all(&req[..ECHO_RSP]).is_err() {
                        break;
                    }
                }
            }));
        }
        for h in hs {
            let _ = h.join();
        }
    });
    let streams: Vec<UnixStream> = (0..clients)
        .map(|_| UnixStream::connect(&s.0).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    let rate = echo_clients(streams, ops)?;
    let _ = server.join();
    Ok(rate)
}

/// The same echo served by one thread in `epoll` over non-blocking
/// sockets, shaped like the daemon's loop (every ready connection's
/// requests first, then the replies, one recv and one send per connection
/// per turn): the ceiling of a single-threaded server such as xenshare's
/// xenstored, C xenstored and oxenstored.
fn echo_one_thread_baseline(clients: u64, ops: u64) -> Res<f64> {
    use rustix::event::epoll;
    use rustix::io::Errno;
    use rustix::net::{RecvFlags, SendFlags};

    let (mine, theirs): (Vec<UnixStream>, Vec<UnixStream>) = (0..clients)
        .map(|_| UnixStream::pair().map_err(|e| e.to_string()))
        .collect::<Res<Vec<_>>>()?
        .into_iter()
        .unzip();
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| e.to_string())?;
    for (i, st) in theirs.iter().enumerate() {
        st.set_nonblocking(true).map_err(|e| e.to_string())?;
        epoll::add(
            &ep,
            st,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )
        .map_err(|e| e.to_string())?;
    }
    let server = std::thread::spawn(move || {
        // Bytes of each connection's partial request, replies owed.
        let mut partial = vec![0usize; theirs.len()];
        let mut owed = vec![0usize; theirs.len()];
        let mut open = theirs.len();
        let mut buf = vec![0u8; 16 * 1024];
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let mut flush: Vec<usize> = Vec::with_capacity(256);
        let rsp = [0u8; ECHO_RSP];
        while open > 0 {
            events.clear();
            if epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None).is_err() {
                continue;
            }
            for ev in &events {
                let i = ev.data.u64() as usize;
                match rustix::net::recv(&theirs[i], &mut buf, RecvFlags::DONTWAIT) {
                    Ok((0, _)) | Err(Errno::CONNRESET) => {
                        let _ = epoll::delete(&ep, &theirs[i]);
                        open -= 1;
                    }
                    Ok((n, _)) => {
                        let all = partial[i] + n;
                        owed[i] += all / ECHO_REQ;
                        partial[i] = all % ECHO_REQ;
                        flush.push(i);
                    }
                    Err(_) => {}
                }
            }
            for i in flush.drain(..) {
                while owed[i] > 0 {
                    match rustix::net::send(
                        &theirs[i],
                        &rsp,
                        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                    ) {
                        Ok(_) => owed[i] -= 1,
                        Err(_) => break,
                    }
                }
            }
        }
    });
    let rate = echo_clients(mine, ops)?;
    let _ = server.join();
    Ok(rate)
}

/// Only the client workload, against the daemon serving `path`.
fn run_external(a: &XenstoreArgs, path: &std::path::Path) -> Res<()> {
    let samples = super::stats::repeat(a.repeats, |_, st| {
        let (w, r) = run_clients(a.clients, a.ops, || {
            UnixTransport::connect(path)
                .map(Client::new)
                .map_err(|e| e.to_string())
        })?;
        st.add("xs_read_ops", r);
        st.add("xs_write_ops", w);
        Ok(())
    })?;
    if a.json {
        println!("{}", samples.json(&[("clients", a.clients as f64)]));
    } else {
        println!(
            "xenstore benchmark against {} ({} clients x {} ops each; median [min–max] of {} rounds)",
            path.display(),
            a.clients,
            a.ops,
            samples.rounds()
        );
        println!(
            "  write {} ops/s   read {} ops/s",
            samples.get("xs_write_ops").show(10, 0),
            samples.get("xs_read_ops").show(10, 0)
        );
    }
    Ok(())
}

/// Runs the benchmark.
pub fn run(a: XenstoreArgs) -> Res<()> {
    if let Some(path) = &a.socket {
        return run_external(&a, path);
    }
    let mut progress = super::Progress::new("bench xenstore", a.repeats as usize);
    let samples = super::stats::repeat(a.repeats, |i, st| {
        progress.phase(&format!("round {} of {}", i + 1, a.repeats));
        let s = sock("xs");
        let config = Config {
            poll_budget: std::time::Duration::from_micros(a.poll_us),
            ..Config::default()
        };
        let server = spawn(config, &s.0).map_err(|e| e.to_string())?;
        let path = s.0.clone();
        let (xs_write_ops, xs_read_ops) = run_clients(a.clients, a.ops, || {
            UnixTransport::connect(&path)
                .map(Client::new)
                .map_err(|e| e.to_string())
        })?;
        drop(server);
        let daemon = Daemon::new(Config::default());
        let (inproc_write_ops, inproc_read_ops) =
            run_clients(a.clients, a.ops, || Ok(inproc::client(&daemon, DomId(0))))?;
        let echo_ops = echo_baseline(a.clients, a.ops)?;
        let echo1_ops = echo_one_thread_baseline(a.clients, a.ops)?;
        st.add("xs_read_ops", xs_read_ops);
        st.add("xs_write_ops", xs_write_ops);
        st.add("inproc_read_ops", inproc_read_ops);
        st.add("inproc_write_ops", inproc_write_ops);
        st.add("socket_echo_ops", echo_ops);
        st.add("read_vs_echo", xs_read_ops / echo_ops);
        st.add("write_vs_echo", xs_write_ops / echo_ops);
        st.add("socket_echo_1thread_ops", echo1_ops);
        st.add("read_vs_echo_1thread", xs_read_ops / echo1_ops);
        st.add("write_vs_echo_1thread", xs_write_ops / echo1_ops);
        Ok(())
    })?;
    drop(progress);

    if a.json {
        println!(
            "{}",
            samples.json(&[("clients", a.clients as f64), ("poll_us", a.poll_us as f64)])
        );
    } else {
        let g = |k: &str| samples.get(k).show(10, 0);
        println!(
            "xenstore benchmark ({} clients x {} ops each, daemon poll budget {} µs; median [min–max] of {} rounds)",
            a.clients,
            a.ops,
            a.poll_us,
            samples.rounds()
        );
        println!(
            "  unix socket   write {} ops/s   read {} ops/s",
            g("xs_write_ops"),
            g("xs_read_ops")
        );
        println!(
            "  in-process    write {} ops/s   read {} ops/s",
            g("inproc_write_ops"),
            g("inproc_read_ops")
        );
        println!(
            "  baseline: bare socket echo {} round trips/s",
            g("socket_echo_ops")
        );
        println!(
            "  baseline: one-thread epoll echo {} round trips/s",
            g("socket_echo_1thread_ops")
        );
        println!(
            "  socket daemon / bare echo: write {}x, read {}x",
            samples.get("write_vs_echo").show(4, 2),
            samples.get("read_vs_echo").show(4, 2)
        );
        println!(
            "  socket daemon / one-thread echo: write {}x, read {}x",
            samples.get("write_vs_echo_1thread").show(4, 2),
            samples.get("read_vs_echo_1thread").show(4, 2)
        );
    }
    Ok(())
}
