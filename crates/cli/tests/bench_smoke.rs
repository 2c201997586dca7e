//! Every benchmark runs to completion with tiny sizes and prints one JSON
//! object carrying its figures and their baselines (measured in the same
//! run), so a change that breaks a bench or drops a figure `bench all`
//! reads fails here rather than on the next measuring day. The figures'
//! values are not checked: they are timings (see the README's Performance
//! section for how they are measured).

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_xenshare");

/// Runs `xenshare bench ARGS --json --repeats 1` and returns its stdout.
fn bench_json(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--json", "--repeats", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run xenshare bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The value of `"key": <number>` in a one-level JSON object.
fn number(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\": ");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing from {json}"))
        + pat.len();
    let end = json[at..].find([',', '}']).map_or(json.len(), |i| at + i);
    json[at..end]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e} in {json}"))
}

/// Each key is there, a finite positive number.
fn assert_figures(json: &str, keys: &[&str]) {
    assert!(json.trim_start().starts_with('{'), "not one object: {json}");
    for k in keys {
        let v = number(json, k);
        assert!(v.is_finite() && v > 0.0, "{k} = {v} in {json}");
    }
}

#[test]
fn bench_vchan_reports_throughput_and_median_round_trips_with_their_floors() {
    let j = bench_json(&["vchan", "--quick", "--mib", "1", "--round-trips", "200"]);
    assert_figures(
        &j,
        &[
            "vchan_gbps",
            "socketpair_gbps",
            "spsc_gbps",
            "vchan_vs_socketpair",
            "vchan_vs_spsc",
            "vchan_64b_batched_gbps",
            "vchan_rtt_us",
            "vchan_rtt_p99_us",
            "vchan_rtt_mean_us",
            "socketpair_rtt_us",
            "spsc_rtt_us",
            "rtt_vs_socketpair",
            "rtt_vs_spsc",
            "vchan_protocol_rtt_us",
            "rtt_vs_vchan_protocol",
        ],
    );
    // A median trip is never above the 99th percentile of the same run.
    assert!(number(&j, "vchan_rtt_us") <= number(&j, "vchan_rtt_p99_us"));
}

#[test]
fn bench_blk_reports_iops_against_pread_and_the_hand_off_floor() {
    let j = bench_json(&["blk", "--mib", "2", "--ops", "300", "--passes", "1"]);
    assert_figures(
        &j,
        &[
            "blk_iops",
            "pread_iops",
            "iops_ratio",
            "blk_copy_iops",
            "iops_copy_ratio",
            "handoff_iops",
            "iops_vs_handoff",
            "handoff_vs_pread",
            "blk_seq_mbps",
            "pread_seq_mbps",
            "seq_ratio",
            "blk_seq_copy_mbps",
            "seq_copy_ratio",
            "handoff_seq_mbps",
            "handoff_seq_vs_pread",
            "seq_copy_vs_handoff",
        ],
    );
}

#[test]
fn bench_net_reports_both_directions_against_the_socketpair() {
    let j = bench_json(&["net", "--frames", "20", "--size", "65535", "--size", "64"]);
    assert_figures(
        &j,
        &[
            "tx_vs_socketpair_65535",
            "rx_vs_tx_65535",
            "rx_copy_vs_tx_65535",
            "socketpair_fps_65535",
            "net_tx_fps_64",
            "net_rx_fps_64",
        ],
    );
}

#[test]
fn bench_xenstore_reports_the_daemon_against_both_echoes() {
    let j = bench_json(&["xenstore", "--ops", "50", "--clients", "2"]);
    assert_figures(
        &j,
        &[
            "xs_read_ops",
            "xs_write_ops",
            "socket_echo_ops",
            "socket_echo_1thread_ops",
            "read_vs_echo",
            "read_vs_echo_1thread",
        ],
    );
}
