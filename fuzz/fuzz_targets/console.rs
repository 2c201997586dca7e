#![no_main]
//! See `xenshare_fuzz_targets::console` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenshare_fuzz_targets::console(data));
