//! Writes the hand-made seed inputs into `fuzz/corpus/<target>/seed-<n>`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, _) in xenshare_fuzz_targets::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for (i, s) in xenshare_fuzz_targets::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s)?;
        }
    }
    Ok(())
}
