//! `xenshare bench net`: Ethernet frames through netfront → netback (tx)
//! and netback → netfront (rx-copy) on the emulator, the back end's host
//! side an in-memory queue, for several frame sizes. Every frame moves as
//! on the real data path: tx pages granted, rx pages posted, the data
//! grant-copied by the back end.
//!
//! Both directions are measured the same way (see
//! `xenshare_devices::net::demo::throughput`): a producer thread copies each
//! frame in (tx: the guest into granted pages; rx: the host into its queue),
//! the back end's thread grant-copies it across, and a consumer thread
//! looks at it where it landed without copying it again (tx: the host in
//! its queue buffer; rx: the guest in its rx pages, `Netfront::recv_with`).
//! `rx copied out` repeats rx with the guest copying every frame into a
//! buffer of its own (`Netfront::recv_timeout`), what an application that
//! keeps frames pays. Baseline in the same run: the same frames between
//! two threads over a Unix datagram socketpair (one kernel hop, as a veth
//! or TAP pair costs; the reader copies each frame out).

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
    /// Rounds of every measurement; medians and [min–max] are reported.
    #[arg(long, default_value_t = super::stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,
    /// Measure only this frame size (repeatable; default: 64, 1514, 9000
    /// and 65535), e.g. to profile one size.
    #[arg(long = "size", value_parser = clap::value_parser!(u64).range(14..=65535))]
    sizes: Vec<u64>,
}

/// Frames per second of `size`-byte datagrams from one thread to another.
fn socket_fps(size: usize, n: u64) -> Result<f64, String> {
    let (tx, rx) = UnixDatagram::pair().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        // Page-aligned, as every bench buffer: the kernel's copy into a
        // destination off a 64-byte line runs several times slower here.
        let mut buf = super::AlignedBuf::new(size.max(1), 0);
        for _ in 0..n {
            rx.recv(&mut buf)?;
        }
        Ok(())
    });
    let frame = super::AlignedBuf::new(size, 0x5A);
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

/// The frame sizes measured.
const SIZES: [usize; 4] = [64, 1514, 9000, 65535];

/// Runs the benchmark.
pub fn run(a: NetArgs) -> Result<(), String> {
    let sizes: Vec<usize> = if a.sizes.is_empty() {
        SIZES.to_vec()
    } else {
        a.sizes.iter().map(|&s| s as usize).collect()
    };
    let mut progress = super::Progress::new("bench net", a.repeats as usize);
    let samples = super::stats::repeat(a.repeats, |i, st| {
        progress.phase(&format!("round {} of {}", i + 1, a.repeats));
        for &size in &sizes {
            let n = if size > 1514 {
                (a.frames / 10).max(10)
            } else {
                a.frames
            };
            let t = throughput(size, n)?;
            let sock = socket_fps(size, n)?;
            st.add(format!("socketpair_fps_{size}"), sock);
            st.add(format!("tx_vs_socketpair_{size}"), t.tx_fps / sock);
            st.add(format!("rx_vs_tx_{size}"), t.rx_fps / t.tx_fps);
            st.add(format!("net_tx_fps_{size}"), t.tx_fps);
            st.add(format!("net_rx_fps_{size}"), t.rx_fps);
            st.add(format!("net_rx_copy_fps_{size}"), t.rx_copy_fps);
            st.add(format!("rx_copy_vs_tx_{size}"), t.rx_copy_fps / t.tx_fps);
            st.add(format!("net_tx_mbps_{size}"), t.tx_mbps());
            st.add(format!("net_rx_mbps_{size}"), t.rx_mbps());
        }
        Ok(())
    })?;
    drop(progress);
    let head = "netif on the emulator: frames/s and MB/s per direction (";
    if !super::json_or_title(&samples, a.json, head) {
        return Ok(());
    }
    println!(
        "each way: a producer thread copies frames in, the back end grant-copies them,\n\
         a consumer thread looks at them in place (rx: Netfront::recv_with);\n\
         rx copied out: the guest copies every frame out (Netfront::recv_timeout)"
    );
    for &size in &sizes {
        let g = |k: &str| samples.get(&format!("{k}_{size}"));
        println!("{size:>7} B frames");
        println!(
            "  guest->host (tx) {} frames/s {} MB/s",
            g("net_tx_fps").show(10, 0),
            g("net_tx_mbps").show(8, 1)
        );
        println!(
            "  host->guest (rx) {} frames/s {} MB/s   rx/tx {}",
            g("net_rx_fps").show(10, 0),
            g("net_rx_mbps").show(8, 1),
            g("rx_vs_tx").show(4, 2)
        );
        println!(
            "  rx copied out    {} frames/s                                rx/tx {}",
            g("net_rx_copy_fps").show(10, 0),
            g("rx_copy_vs_tx").show(4, 2)
        );
        println!(
            "  socketpair       {} frames/s              tx/socketpair {}",
            g("socketpair_fps").show(10, 0),
            g("tx_vs_socketpair").show(4, 2)
        );
    }
    Ok(())
}
