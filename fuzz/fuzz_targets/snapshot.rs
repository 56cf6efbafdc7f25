//! Snapshot files as start-up and a metalogger's download read them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alces_master::fuzzing::snapshot(data));
