//! Replays every committed corpus file of every fuzz target
//! (`fuzz/corpus/<target>/*`) through the same function the fuzzer calls,
//! so the inputs the fuzzers found — crash reproducers included — are
//! checked by `cargo test` on stable, without nightly or libFuzzer.

use std::path::{Path, PathBuf};

use xenshare_fuzz_targets::{seeds, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let r = std::panic::catch_unwind(|| f(&data));
        if r.is_err() {
            panic!("{target}: input {} breaks an invariant", path.display());
        }
    }
    // The built-in seeds too (they are also in the corpus when committed).
    for s in seeds(target) {
        f(&s);
    }
    eprintln!("{target}: replayed {} corpus inputs", files.len());
}

macro_rules! replay_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let f = TARGETS
                .iter()
                .find(|(n, _)| *n == stringify!($name))
                .map(|(_, f)| *f)
                .expect("target registered");
            replay(stringify!($name), f);
        }
    )*};
}

replay_tests!(xs_wire, xenstored, ring, vchan, blkback, netback, netfront, console);

#[test]
fn every_target_has_a_replay_test() {
    let tested = [
        "xs_wire",
        "xenstored",
        "ring",
        "vchan",
        "blkback",
        "netback",
        "netfront",
        "console",
    ];
    for (name, _) in TARGETS {
        assert!(tested.contains(name), "no replay test for target {name}");
    }
}
