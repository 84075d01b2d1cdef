#![no_main]
//! See fuzz/README.md and `goim_fuzz::edge_props::auth_body` for the input format and the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| goim_fuzz::edge_props::auth_body(data));
