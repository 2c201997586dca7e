//! vchan on real Xen: two dom0 processes over real grants, and xenshare's
//! vchan against Xen's own C libxenvchan.
//!
//! Each end runs in its own process: `xenshare-lab-tests vchan-server ...`
//! / `vchan-client ...` (xenshare's Rust vchan over gntalloc, gntdev,
//! evtchn and `/dev/xen/xenbus`), or the lab's C peer
//! (`crates/linux/tests/c/vchan_peer.c`, linked against Debian's
//! libxenvchan, installed as [`C_PEER`]) with the same arguments:
//!
//! ```text
//! server PEER PATH READ_MIN WRITE_MIN SEND_SEED RECV_SEED BYTES first|wait
//! client PEER PATH SEND_SEED RECV_SEED BYTES first|wait
//! ```
//!
//! Both ends move BYTES bytes of a splitmix64 stream each way at once,
//! checking every byte, then one closes (`first`) and the other (`wait`)
//! checks that `is_open` goes false and nothing is left to read. Each end
//! prints `VCHAN-END impl=.. role=.. sent=N sent_fnv=H received=N
//! received_fnv=H`; the runner ([`pairs`]) checks both exited 0 and that
//! each side received exactly what the other sent.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::store::{Client, Transport};
use xenshare::vchan::{client_init, server_init};
use xenshare::DomId;
use xenshare_conformance::{finish, pump, Closer, Outcome, TestResult, Transfer};
use xenshare_linux::LinuxPlatform;

use crate::Tally;

/// Where the lab installs the C libxenvchan peer.
pub const C_PEER: &str = "/bin/xenshare-vchan-peer";

/// How long one end may take to move its data, and to see the close.
const END_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the runner waits for a pair of processes.
const PAIR_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the runner waits for the server's XenStore keys.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// Which vchan implementation runs an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Impl {
    /// xenshare (this program, in a child process).
    Rust,
    /// Xen's libxenvchan ([`C_PEER`]).
    C,
}

impl Impl {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Impl::Rust => "rust",
            Impl::C => "c",
        }
    }
}

/// One pair of processes.
struct PairSpec {
    name: &'static str,
    server: Impl,
    client: Impl,
    read_min: usize,
    write_min: usize,
    bytes: usize,
    closer: Closer,
}

/// Every pair the lab runs: Rust with Rust, C with C (to tell a broken C
/// peer from an incompatibility), and each of C and Rust as the server of
/// the other, with rings inside the control page and in separate pages, and
/// each side closing first.
///
/// Small rings cost a wake-up per ring's worth of data, which under TCG
/// takes milliseconds: those pairs move less data (still over a hundred
/// wrap-arounds).
const PAIRS: [PairSpec; 7] = [
    PairSpec {
        name: "vchan_rust_server_rust_client_ext",
        server: Impl::Rust,
        client: Impl::Rust,
        read_min: 1 << 16,
        write_min: 1 << 16,
        bytes: 4 << 20,
        closer: Closer::Client,
    },
    PairSpec {
        name: "vchan_rust_server_rust_client_inpage",
        server: Impl::Rust,
        client: Impl::Rust,
        read_min: 1024,
        write_min: 2048,
        bytes: 128 << 10,
        closer: Closer::Server,
    },
    PairSpec {
        name: "vchan_c_server_c_client_ext",
        server: Impl::C,
        client: Impl::C,
        read_min: 1 << 16,
        write_min: 1 << 16,
        bytes: 1 << 20,
        closer: Closer::Client,
    },
    PairSpec {
        name: "vchan_c_server_rust_client_ext",
        server: Impl::C,
        client: Impl::Rust,
        read_min: 1 << 16,
        write_min: 1 << 16,
        bytes: 4 << 20,
        closer: Closer::Server,
    },
    PairSpec {
        name: "vchan_c_server_rust_client_inpage",
        server: Impl::C,
        client: Impl::Rust,
        read_min: 2048,
        write_min: 1024,
        bytes: 128 << 10,
        closer: Closer::Client,
    },
    PairSpec {
        name: "vchan_rust_server_c_client_ext",
        server: Impl::Rust,
        client: Impl::C,
        read_min: 1 << 16,
        write_min: 1 << 16,
        bytes: 4 << 20,
        closer: Closer::Client,
    },
    PairSpec {
        name: "vchan_rust_server_c_client_mixed",
        server: Impl::Rust,
        client: Impl::C,
        read_min: 4096,
        write_min: 1 << 20,
        bytes: 1 << 20,
        closer: Closer::Server,
    },
];

// ------------------------------------------------------------ one end

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let s = args.get(i).ok_or_else(|| format!("missing {what}"))?;
    s.parse::<T>().map_err(|e| format!("bad {what} {s:?}: {e}"))
}

fn close_mode(args: &[String], i: usize) -> Result<bool, String> {
    match args.get(i).map(String::as_str) {
        Some("first") => Ok(true),
        Some("wait") => Ok(false),
        other => Err(format!("close mode must be first or wait, not {other:?}")),
    }
}

fn end_line(role: &str, t: &Transfer) -> String {
    format!(
        "VCHAN-END impl=rust role={role} sent={} sent_fnv={:016x} received={} received_fnv={:016x}",
        t.sent, t.sent_fnv.0, t.received, t.received_fnv.0
    )
}

/// `vchan-server PEER PATH READ_MIN WRITE_MIN SEND_SEED RECV_SEED BYTES first|wait`
fn server_end(args: &[String]) -> Result<String, String> {
    let peer = DomId(arg(args, 0, "PEER")?);
    let path: String = arg(args, 1, "PATH")?;
    let (read_min, write_min): (usize, usize) =
        (arg(args, 2, "READ_MIN")?, arg(args, 3, "WRITE_MIN")?);
    let (send_seed, recv_seed): (u64, u64) =
        (arg(args, 4, "SEND_SEED")?, arg(args, 5, "RECV_SEED")?);
    let bytes: usize = arg(args, 6, "BYTES")?;
    let close_first = close_mode(args, 7)?;

    let plat = LinuxPlatform::open().map_err(|e| e.to_string())?;
    let exporter = plat.exporter().map_err(|e| e.to_string())?;
    let evt = Arc::new(plat.evtchn().map_err(|e| e.to_string())?);
    let mut xs = plat.xenstore().map_err(|e| e.to_string())?;
    let mut v = server_init(&exporter, &evt, &mut xs, peer, &path, read_min, write_min)
        .map_err(|e| format!("server_init: {e}"))?;
    let t = pump(&mut v, send_seed, recv_seed, bytes, END_TIMEOUT)?;
    finish(&mut v, close_first, END_TIMEOUT)?;
    xs.rm(&path).map_err(|e| format!("rm {path}: {e}"))?;
    Ok(end_line("server", &t))
}

/// `vchan-client PEER PATH SEND_SEED RECV_SEED BYTES first|wait`
fn client_end(args: &[String]) -> Result<String, String> {
    let peer = DomId(arg(args, 0, "PEER")?);
    let path: String = arg(args, 1, "PATH")?;
    let (send_seed, recv_seed): (u64, u64) =
        (arg(args, 2, "SEND_SEED")?, arg(args, 3, "RECV_SEED")?);
    let bytes: usize = arg(args, 4, "BYTES")?;
    let close_first = close_mode(args, 5)?;

    let plat = LinuxPlatform::open().map_err(|e| e.to_string())?;
    let importer = plat.importer().map_err(|e| e.to_string())?;
    let evt = Arc::new(plat.evtchn().map_err(|e| e.to_string())?);
    let mut xs = plat.xenstore().map_err(|e| e.to_string())?;
    let mut v = client_init(&importer, &evt, &mut xs, peer, &path)
        .map_err(|e| format!("client_init: {e}"))?;
    let t = pump(&mut v, send_seed, recv_seed, bytes, END_TIMEOUT)?;
    finish(&mut v, close_first, END_TIMEOUT)?;
    Ok(end_line("client", &t))
}

/// Runs one end (`vchan-server` or `vchan-client`) in this process.
pub fn end_main(server: bool, args: &[String]) -> ExitCode {
    let (role, r) = if server {
        ("vchan-server", server_end(args))
    } else {
        ("vchan-client", client_end(args))
    };
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{role}: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------ the runner

/// One end's process and its log file.
pub(crate) struct End {
    what: String,
    child: Child,
    log: String,
    status: Option<std::process::ExitStatus>,
}

impl End {
    pub(crate) fn spawn(
        what: String,
        imp: Impl,
        args: &[String],
        log: String,
    ) -> Result<End, String> {
        let program = match imp {
            Impl::Rust => std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
            Impl::C => C_PEER.into(),
        };
        let mut cmd = Command::new(&program);
        if imp == Impl::Rust {
            cmd.arg(format!("vchan-{}", args[0]));
            cmd.args(&args[1..]);
        } else {
            cmd.args(args);
        }
        let out = File::create(&log).map_err(|e| format!("{log}: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("{log}: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        Ok(End {
            what,
            child,
            log,
            status: None,
        })
    }

    /// True once the process has exited.
    pub(crate) fn poll(&mut self) -> bool {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status.is_some()
    }

    pub(crate) fn kill(&mut self) {
        if !self.poll() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .replace('\n', " | ")
    }

    /// The end's `VCHAN-END` line, split into its fields, if it succeeded.
    pub(crate) fn result(&self) -> Result<Vec<(String, String)>, String> {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let ok = self.status.map(|s| s.success()).unwrap_or(false);
        let line = out.lines().find(|l| l.starts_with("VCHAN-END "));
        match (ok, line) {
            (true, Some(l)) => Ok(l
                .split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()),
            _ => Err(format!(
                "{} failed ({}): {}",
                self.what,
                self.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "killed".into()),
                self.output()
            )),
        }
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn field<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    kv.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("?")
}

fn run_pair<T: Transport>(
    xs: &mut Client<T>,
    me: DomId,
    idx: usize,
    spec: &PairSpec,
) -> TestResult {
    if (spec.server == Impl::C || spec.client == Impl::C) && !Path::new(C_PEER).exists() {
        return Ok(Outcome::Skip(format!(
            "{C_PEER} (the libxenvchan peer) is not installed"
        )));
    }
    let path = format!("/local/domain/{}/data/vchan/{}/lab{idx}", me.0, me.0);
    let _ = xs.rm(&path);
    let (srv_seed, cli_seed) = (0x1ab0_0000 + 2 * idx as u64, 0x1ab0_0001 + 2 * idx as u64);
    let (srv_close, cli_close) = match spec.closer {
        Closer::Server => ("first", "wait"),
        Closer::Client => ("wait", "first"),
    };
    let s = |v: &dyn ToString| v.to_string();
    let srv_args: Vec<String> = vec![
        s(&"server"),
        s(&me.0),
        path.clone(),
        s(&spec.read_min),
        s(&spec.write_min),
        s(&srv_seed),
        s(&cli_seed),
        s(&spec.bytes),
        s(&srv_close),
    ];
    let cli_args: Vec<String> = vec![
        s(&"client"),
        s(&me.0),
        path.clone(),
        s(&cli_seed),
        s(&srv_seed),
        s(&spec.bytes),
        s(&cli_close),
    ];
    let start = Instant::now();
    let mut server = End::spawn(
        format!("the {} server", spec.server.name()),
        spec.server,
        &srv_args,
        format!("/tmp/vchan-lab{idx}-server.log"),
    )?;
    // The client reads the keys once: start it after the server's
    // transaction put them there.
    let key = format!("{path}/event-channel");
    loop {
        if matches!(xs.try_read(&key), Ok(Some(_))) {
            break;
        }
        if server.poll() {
            return Err(server
                .result()
                .err()
                .unwrap_or_else(|| "the server exited before publishing".into()));
        }
        if start.elapsed() > PUBLISH_TIMEOUT {
            return Err(format!(
                "the server did not publish {key} within {PUBLISH_TIMEOUT:?}: {}",
                server.output()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = End::spawn(
        format!("the {} client", spec.client.name()),
        spec.client,
        &cli_args,
        format!("/tmp/vchan-lab{idx}-client.log"),
    )?;
    while !(server.poll() && client.poll()) {
        if start.elapsed() > PAIR_TIMEOUT {
            server.kill();
            client.kill();
            let _ = xs.rm(&path);
            return Err(format!(
                "timed out after {PAIR_TIMEOUT:?}; server: {}; client: {}",
                server.output(),
                client.output()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ms = start.elapsed().as_millis();
    let (sr, cr) = (server.result(), client.result());
    let (sr, cr) = match (sr, cr) {
        (Ok(s), Ok(c)) => (s, c),
        (s, c) => {
            let _ = xs.rm(&path);
            let errs: Vec<String> = [s.err(), c.err()].into_iter().flatten().collect();
            return Err(errs.join("; "));
        }
    };
    let n = spec.bytes.to_string();
    for (kv, who) in [(&sr, "server"), (&cr, "client")] {
        if field(kv, "sent") != n || field(kv, "received") != n {
            return Err(format!("the {who} moved the wrong amount: {kv:?}"));
        }
    }
    if field(&sr, "sent_fnv") != field(&cr, "received_fnv")
        || field(&cr, "sent_fnv") != field(&sr, "received_fnv")
        || field(&sr, "sent_fnv") == "?"
        || field(&cr, "sent_fnv") == "?"
    {
        return Err(format!("checksums differ: server {sr:?}, client {cr:?}"));
    }
    if let Ok(Some(_)) = xs.try_read(&key) {
        return Err(format!(
            "{path} is still in XenStore after the server closed"
        ));
    }
    Ok(Outcome::Pass(format!(
        "{} KiB each way in {ms} ms, {:?} closed first, checksums {} / {}",
        spec.bytes >> 10,
        spec.closer,
        field(&sr, "sent_fnv"),
        field(&cr, "sent_fnv")
    )))
}

/// Runs every pair of processes, one result line each.
pub fn pairs<T: Transport>(t: &mut Tally, xs: &mut Client<T>, me: DomId) {
    for (idx, spec) in PAIRS.iter().enumerate() {
        let start = Instant::now();
        let r = run_pair(xs, me, idx, spec);
        t.one(spec.name, start, r);
    }
}
