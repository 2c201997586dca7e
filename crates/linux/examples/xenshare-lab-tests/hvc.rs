//! `linux_hvc_on_xenshare_console`: the domU kernel's `hvc_xen` secondary
//! console (`/dev/hvc1`) served by xenshare's console back end in dom0.
//!
//! * dom0 (`hvc DOMID`): the toolstack's part (`device/console/1` and
//!   `backend/console/DOMID/1`, as libxl lays out a channel), then
//!   `connect_back` (map `ring-ref`, bind `port`, Connected), then ROUNDS
//!   ping-pongs: dom0 writes `ping i <payload>` into the `in` ring, the
//!   guest answers `pong i <payload>` through `out`; dom0 checks every
//!   payload and times every round. Then `quit`, close, remove the nodes.
//! * domU (`hvc-domu`): waits for its front end to be Connected, then
//!   answers pings on `/dev/hvc1` until `quit`. The guest tty is in its
//!   default cooked mode, so it echoes what it reads and turns `\n` into
//!   `\r\n`; dom0 ignores the echoed lines and the `\r`.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::console::xenbus::{connect_back, DEVTYPE};
use xenshare::store::xenbus::{create_device, read_state, DeviceSpec, XenbusState};
use xenshare_conformance::Context;
use xenshare_linux::LinuxPlatform;

const DEVID: u32 = 1;
const ROUNDS: usize = 100;
const TTY: &str = "/dev/hvc1";

fn payload(i: usize) -> String {
    // 80 printable bytes that differ per round.
    (0..80)
        .map(|k| char::from(b'!' + ((i * 7 + k * 13) % 90) as u8))
        .collect()
}

/// The domU side: answer pings until `quit`.
pub fn domu() -> Result<String, String> {
    let plat = LinuxPlatform::open().ctx("open")?;
    let mut xs = plat.xenstore().ctx("xenstore")?;
    let dir = format!("/local/domain/{}/device/{DEVTYPE}/{DEVID}", plat.domid().0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let t0 = Instant::now();
    loop {
        if matches!(read_state(&mut xs, &dir), Ok(XenbusState::Connected)) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{dir} did not reach Connected within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let connected_ms = t0.elapsed().as_millis();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TTY)
        .ctx(TTY)?;
    let mut out = f.try_clone().ctx("dup")?;
    // The ping's `dom0 is listening` line: dom0 starts once it reads it.
    out.write_all(b"ready\n").ctx("write ready")?;
    let mut answered = 0;
    for line in BufReader::new(f).lines() {
        let line = line.ctx("read")?;
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("ping ") {
            out.write_all(format!("pong {rest}\n").as_bytes())
                .ctx("write pong")?;
            answered += 1;
        } else if line == "quit" {
            return Ok(format!(
                "connected after {connected_ms} ms, answered {answered} pings"
            ));
        }
    }
    Err(format!("{TTY} ended after {answered} pings"))
}

/// Reads guest output until a whole line satisfying `want` arrives.
struct Lines {
    pending: Vec<u8>,
    bytes: usize,
}

impl Lines {
    fn next_matching<M, E>(
        &mut self,
        con: &mut xenshare::console::ConsoleBack<M, E>,
        deadline: Instant,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String>
    where
        M: xenshare::console::ConsolePage,
        E: xenshare::platform::EventChannels,
    {
        let mut buf = [0u8; 2048];
        loop {
            while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if want(text) {
                    return Ok(text.to_string());
                }
            }
            let n = con.read_output(&mut buf).ctx("read_output")?;
            self.bytes += n;
            self.pending.extend_from_slice(&buf[..n]);
            if n == 0 {
                if Instant::now() > deadline {
                    return Err(format!(
                        "timed out; pending {:?}",
                        String::from_utf8_lossy(&self.pending)
                    ));
                }
                con.wait(Some(Duration::from_millis(50))).ctx("wait")?;
            }
        }
    }
}

fn send<M, E>(
    con: &mut xenshare::console::ConsoleBack<M, E>,
    mut data: &[u8],
    deadline: Instant,
) -> Result<(), String>
where
    M: xenshare::console::ConsolePage,
    E: xenshare::platform::EventChannels,
{
    while !data.is_empty() {
        let n = con.write_input(data).ctx("write_input")?;
        data = &data[n..];
        if n == 0 {
            if Instant::now() > deadline {
                return Err("the guest stopped reading its console".into());
            }
            con.wait(Some(Duration::from_millis(50))).ctx("wait")?;
        }
    }
    Ok(())
}

/// The dom0 side.
pub fn dom0(args: &[String]) -> Result<String, String> {
    let (fe, plat, mut xs) = crate::dom0_open(args)?;
    let paths = create_device(
        &mut xs,
        &DeviceSpec {
            devtype: DEVTYPE,
            devid: DEVID,
            frontend: fe,
            backend: plat.domid(),
            front_keys: &[("protocol", "vt100")],
            back_keys: &[("protocol", "vt100"), ("name", "xenshare-lab")],
        },
    )
    .ctx("create the console device")?;
    let r = serve(&plat, &mut xs, fe);
    let _ = xs.rm(&paths.front);
    let _ = xs.rm(&paths.back);
    r
}

fn serve(
    plat: &LinuxPlatform,
    xs: &mut xenshare::store::Client<xenshare_linux::XenbusTransport>,
    fe: xenshare::DomId,
) -> Result<String, String> {
    let importer = plat.importer().ctx("importer")?;
    let evt = Arc::new(plat.evtchn().ctx("evtchn")?);
    let t0 = Instant::now();
    let mut back = connect_back(&importer, &evt, xs, fe, DEVID, Duration::from_secs(60))
        .ctx("connect_back")?;
    let connect_ms = t0.elapsed().as_millis();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Lines {
        pending: Vec::new(),
        bytes: 0,
    };
    let con = back.console();
    lines
        .next_matching(con, deadline, |l| l == "ready")
        .ctx("waiting for the guest's ready line")?;
    let mut rtts = Vec::with_capacity(ROUNDS);
    let mut sent = 0;
    let t = Instant::now();
    for i in 0..ROUNDS {
        let p = payload(i);
        let ping = format!("ping {i} {p}\n");
        let start = Instant::now();
        send(con, ping.as_bytes(), deadline)?;
        sent += ping.len();
        let want = format!("pong {i} ");
        let got = lines
            .next_matching(con, deadline, |l| l.starts_with(&want))
            .ctx(&format!("round {i}"))?;
        rtts.push(start.elapsed());
        if got != format!("pong {i} {p}") {
            return Err(format!("round {i}: the guest answered {got:?}"));
        }
    }
    let total = t.elapsed();
    send(con, b"quit\n", deadline)?;
    let received = lines.bytes;
    let state = back.frontend_state(xs).ctx("front state")?;
    back.close(xs).ctx("close")?;
    if state != XenbusState::Connected {
        return Err(format!("hvc_xen is {state:?}, not Connected"));
    }
    rtts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(format!(
        "hvc_xen connected in {connect_ms} ms (ring-ref grant + port, protocol vt100); \
         {ROUNDS} ping-pongs with 80-byte payloads checked: {sent} bytes in, {received} bytes out \
         (with the tty's echo), RTT median {:.1} ms, max {:.1} ms, {:.1} KB/s round trip",
        ms(rtts[rtts.len() / 2]),
        ms(rtts[rtts.len() - 1]),
        (sent + received) as f64 / 1e3 / total.as_secs_f64().max(1e-6),
    ))
}
