//! Master and Admin requests through the checks their handlers make before
//! they touch the namespace (see `alces_master::fuzzing::requests`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alces_master::fuzzing::requests(data));
