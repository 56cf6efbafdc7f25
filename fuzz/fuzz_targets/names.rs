//! Entry names and administrator paths through the master's checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alces_master::fuzzing::names(data));
