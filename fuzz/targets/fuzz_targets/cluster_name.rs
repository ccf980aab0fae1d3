#![no_main]
//! See `lazyxds_fuzz_check::cluster_name` for the input format and the properties asserted.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lazyxds_fuzz_check::cluster_name::check(data));
