//! `xenshare bench net`: Ethernet frames through netfront → netback (tx)
//! and netback → netfront (rx-copy) on the emulator, the back end's host
//! side an in-memory queue, for several frame sizes. Every frame is
//! granted, copied by grant copy and revoked, as on the real data path.
//! Baseline in the same run: the same frames between two threads over a
//! Unix datagram socketpair (one kernel hop, as a veth or TAP pair costs).

use std::os::unix::net::UnixDatagram;
use std::time::Instant;

use clap::Args;
use xenshare_devices::net::demo::throughput;

/// Options of `bench net`.
#[derive(Args)]
pub struct NetArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Frames per direction and size (large frames use a tenth of this).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    frames: u64,
}

/// Frames per second of `size`-byte datagrams from one thread to another.
fn socket_fps(size: usize, n: u64) -> Result<f64, String> {
    let (tx, rx) = UnixDatagram::pair().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; size.max(1)];
        for _ in 0..n {
            rx.recv(&mut buf)?;
        }
        Ok(())
    });
    let frame = vec![0x5Au8; size];
    let t = Instant::now();
    for _ in 0..n {
        tx.send(&frame).map_err(|e| e.to_string())?;
    }
    reader
        .join()
        .map_err(|_| "baseline reader panicked".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Runs the benchmark.
pub fn run(a: NetArgs) -> Result<(), String> {
    let mut fields = Vec::new();
    if !a.json {
        println!("netif on the emulator: frames/s and MB/s per direction");
        println!(
            "{:>8}  {:>14} {:>10}  {:>14} {:>10}  {:>14} {:>8}",
            "frame", "guest->host/s", "MB/s", "host->guest/s", "MB/s", "socketpair/s", "tx/sock"
        );
    }
    for size in [64usize, 1514, 9000, 65535] {
        let n = if size > 1514 {
            (a.frames / 10).max(10)
        } else {
            a.frames
        };
        let t = throughput(size, n)?;
        let sock = socket_fps(size, n)?;
        if a.json {
            fields.push((format!("socketpair_fps_{size}"), sock));
            fields.push((format!("tx_vs_socketpair_{size}"), t.tx_fps / sock));
            fields.push((format!("net_tx_fps_{size}"), t.tx_fps));
            fields.push((format!("net_rx_fps_{size}"), t.rx_fps));
            fields.push((format!("net_tx_mbps_{size}"), t.tx_mbps()));
            fields.push((format!("net_rx_mbps_{size}"), t.rx_mbps()));
        } else {
            println!(
                "{size:>7}B  {:>14.0} {:>10.1}  {:>14.0} {:>10.1}  {:>14.0} {:>7.2}x",
                t.tx_fps,
                t.tx_mbps(),
                t.rx_fps,
                t.rx_mbps(),
                sock,
                t.tx_fps / sock
            );
        }
    }
    if a.json {
        let f: Vec<(&str, f64)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        println!("{}", crate::json::object(&f));
    }
    Ok(())
}
