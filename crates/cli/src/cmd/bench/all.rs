//! `xenshare bench all --json`: every benchmark, each in a process of its
//! own (so one's threads, memory and page cache state do not colour the
//! next), gathered into one JSON object:
//!
//! - `figures`: the medians behind each line of the performance table (the
//!   table in the README), under stable names;
//! - `goals`: the goal of each figure, and `met`: 1 where the median meets
//!   it, 0 where not;
//! - one member per benchmark with its whole `--json` output (medians,
//!   `_min`/`_max` spreads, repeats).

use std::process::Command;

use clap::Args;

type Res<T> = Result<T, String>;

/// Options of `bench all`.
#[derive(Args)]
pub struct AllArgs {
    /// Print one JSON object (the only output format of `bench all`; the
    /// flag is accepted for symmetry with the other benchmarks).
    #[arg(long)]
    json: bool,
    /// Rounds of every measurement of every benchmark.
    #[arg(long, default_value_t = super::stats::DEFAULT_REPEATS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,
    /// Smaller measurements (a tenth of the work), for a quick look.
    #[arg(long)]
    quick: bool,
}

/// Whether a figure's goal is a floor or a ceiling.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

/// The performance table: (figure, benchmark, key in its JSON, goal).
const TABLE: &[(&str, &str, &str, Goal)] = &[
    (
        "vchan_vs_socketpair",
        "vchan",
        "vchan_vs_socketpair",
        Goal::AtLeast(4.0),
    ),
    // Measured in adjacent segment pairs (`paired_vs_ideal` in the vchan
    // benchmark); the ratio of whole streams, `vchan_vs_spsc`, is in the
    // vchan member.
    (
        "vchan_vs_ideal_ring",
        "vchan",
        "vchan_vs_spsc_paired",
        Goal::AtLeast(0.8),
    ),
    (
        "vchan_64b_gbps",
        "vchan",
        "vchan_64b_batched_gbps",
        Goal::AtLeast(2.0),
    ),
    (
        "vchan_rtt_vs_socketpair",
        "vchan",
        "rtt_vs_socketpair",
        Goal::AtMost(0.02),
    ),
    (
        "xs_read_ops",
        "xenstore",
        "xs_read_ops",
        Goal::AtLeast(150_000.0),
    ),
    (
        "xs_write_ops",
        "xenstore",
        "xs_write_ops",
        Goal::AtLeast(120_000.0),
    ),
    (
        "xs_read_vs_echo",
        "xenstore",
        "read_vs_echo",
        Goal::AtLeast(0.8),
    ),
    (
        "blk_4k_iops_vs_pread",
        "blk",
        "iops_ratio",
        Goal::AtLeast(0.8),
    ),
    (
        "blk_1m_seq_vs_pread",
        "blk",
        "seq_ratio",
        Goal::AtLeast(0.6),
    ),
    (
        "net_tx_64k_vs_socketpair",
        "net",
        "tx_vs_socketpair_65535",
        Goal::AtLeast(1.0),
    ),
    // The guest copying every received frame into its own buffer (the
    // stricter of the two rx figures; `rx_vs_tx_65535`, the frame read in
    // place as tx's host side reads it, is in the net member).
    (
        "net_rx_vs_tx_64k",
        "net",
        "rx_copy_vs_tx_65535",
        Goal::AtLeast(0.9),
    ),
    (
        "grant_cycle_ns",
        "grants",
        "grant_cycle_ns",
        Goal::AtMost(400.0),
    ),
];

/// The benchmarks run, with their arguments for a full and a quick run.
const BENCHES: &[(&str, &[&str], &[&str])] = &[
    ("grants", &[], &["--iters", "20000"]),
    (
        "vchan",
        &["--quick"],
        &["--quick", "--mib", "64", "--round-trips", "5000"],
    ),
    ("xenstore", &[], &["--ops", "2000"]),
    (
        "blk",
        &[],
        &["--ops", "20000", "--mib", "16", "--passes", "1"],
    ),
    ("net", &[], &["--frames", "5000"]),
];

/// Parses a flat object of numbers as `crate::json::object` writes it
/// (`null` for a missing figure becomes NaN).
fn parse_flat(s: &str) -> Res<Vec<(String, f64)>> {
    let body = s
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| format!("not a JSON object: {s:?}"))?;
    let mut out = Vec::new();
    for field in body.split(", ").filter(|f| !f.trim().is_empty()) {
        let (k, v) = field
            .split_once(": ")
            .ok_or_else(|| format!("bad field {field:?}"))?;
        let k = k
            .trim()
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .ok_or_else(|| format!("bad key in {field:?}"))?;
        let v = match v.trim() {
            "null" => f64::NAN,
            n => n
                .parse::<f64>()
                .map_err(|_| format!("bad number in {field:?}"))?,
        };
        out.push((k.to_string(), v));
    }
    Ok(out)
}

/// The combined object from each benchmark's raw JSON output, and the
/// errors of those that failed (their figures are null and not met).
fn combine(outputs: &[(&str, String)], errors: &[(&str, String)]) -> Res<String> {
    let mut figures = Vec::new();
    let mut goals = Vec::new();
    let mut met = Vec::new();
    for (name, bench, key, goal) in TABLE {
        let v = match outputs.iter().find(|(b, _)| b == bench) {
            Some((_, raw)) => parse_flat(raw)?
                .into_iter()
                .find(|(k, _)| k == key)
                .map_or(f64::NAN, |(_, v)| v),
            None => f64::NAN,
        };
        let (g, ok) = match *goal {
            Goal::AtLeast(g) => (g, v >= g),
            Goal::AtMost(g) => (g, v <= g),
        };
        figures.push((*name, v));
        goals.push((*name, g));
        met.push((*name, if ok { 1.0 } else { 0.0 }));
    }
    let mut s = format!(
        "{{\"figures\": {}, \"goals\": {}, \"met\": {}",
        crate::json::object(&figures),
        crate::json::object(&goals),
        crate::json::object(&met)
    );
    for (bench, raw) in outputs {
        // Checked to be a flat object of numbers above or here, so the
        // result stays valid JSON.
        parse_flat(raw)?;
        s.push_str(&format!(", \"{bench}\": {}", raw.trim()));
    }
    if !errors.is_empty() {
        let list: Vec<String> = errors
            .iter()
            .map(|(b, e)| format!("\"{b}\": \"{}\"", json_string(e)))
            .collect();
        s.push_str(&format!(", \"errors\": {{{}}}", list.join(", ")));
    }
    s.push('}');
    Ok(s)
}

/// `e` with JSON's special characters escaped (no quotes added).
fn json_string(e: &str) -> String {
    let mut out = String::new();
    for c in e.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Runs the benchmark.
pub fn run(a: AllArgs) -> Res<()> {
    let _ = a.json;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let repeats = a.repeats.to_string();
    let mut progress = super::Progress::new("bench all", BENCHES.len());
    let mut outputs = Vec::new();
    let mut errors = Vec::new();
    for (bench, full, quick) in BENCHES {
        progress.phase(bench);
        let out = Command::new(&exe)
            .arg("bench")
            .arg(bench)
            .args(if a.quick { *quick } else { *full })
            .args(["--json", "--repeats", &repeats])
            .output()
            .map_err(|e| format!("bench {bench}: {e}"))?;
        let raw = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || parse_flat(&raw).is_err() {
            // One failing benchmark does not hide the others' figures.
            errors.push((
                *bench,
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
            continue;
        }
        outputs.push((*bench, raw));
    }
    drop(progress);
    println!("{}", combine(&outputs, &errors)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_json_object_writes() {
        let raw = crate::json::object(&[("a", 1.5), ("b_min", f64::NAN), ("c", -2.0)]);
        let p = parse_flat(&raw).unwrap();
        assert_eq!(p[0], ("a".to_string(), 1.5));
        assert!(p[1].1.is_nan());
        assert_eq!(p[2], ("c".to_string(), -2.0));
        assert_eq!(parse_flat("{}").unwrap(), vec![]);
        assert!(parse_flat("[1]").is_err());
        assert!(parse_flat("{\"a\": x}").is_err());
    }

    #[test]
    fn combine_takes_each_table_figure_from_its_benchmark_and_checks_its_goal() {
        let outputs = [
            (
                "grants",
                r#"{"grant_cycle_ns": 350, "repeats": 5}"#.to_string(),
            ),
            (
                "vchan",
                r#"{"vchan_vs_socketpair": 3.5, "rtt_vs_socketpair": 0.01}"#.to_string(),
            ),
        ];
        let s = combine(&outputs, &[("blk", "exit 1: \"full\"\n".to_string())]).unwrap();
        assert!(s.starts_with("{\"figures\": {\"vchan_vs_socketpair\": 3.5, "));
        assert!(s.contains("\"grant_cycle_ns\": 350}"), "{s}");
        assert!(s.contains("\"vchan_vs_ideal_ring\": null"), "{s}");
        let met = &s[s.find("\"met\": ").unwrap()..];
        assert!(
            met.starts_with("\"met\": {\"vchan_vs_socketpair\": 0, "),
            "{met}"
        );
        assert!(met.contains("\"vchan_rtt_vs_socketpair\": 1"), "{met}");
        assert!(met.contains("\"grant_cycle_ns\": 1}"), "{met}");
        assert!(s.contains(", \"grants\": {\"grant_cycle_ns\": 350, \"repeats\": 5}"));
        assert!(s.ends_with(
            "\"rtt_vs_socketpair\": 0.01}, \"errors\": {\"blk\": \"exit 1: \\\"full\\\"\\u000a\"}}"
        ), "{s}");
        assert!(s.contains("\"blk_4k_iops_vs_pread\": null"), "{s}");
    }
}
