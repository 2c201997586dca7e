#![no_main]
//! See `xenshare_fuzz_targets::xs_wire` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenshare_fuzz_targets::xs_wire(data));
