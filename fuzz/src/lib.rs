//! The properties behind the fuzz targets, shared with the stable proptest smoke tests: 
//! `edge/tests/fuzz_smoke.rs` and `token/tests/fuzz_smoke.rs` include these files with `#[path]`, so a
//! property is written once and checked both by `make test` and by the long `cargo +nightly fuzz run`.
//!
//! Every function takes the raw fuzz input, never panics on its own account, and panics (= a finding)
//! only when the code under test panics or breaks a stated property.

pub mod edge_props;
pub mod token_props;
