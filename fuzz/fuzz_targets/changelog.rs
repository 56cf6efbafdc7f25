//! Changelog files and replication batches: framing, record decoding and
//! `ops::apply` on a new filesystem (see `alces_master::fuzzing::changelog`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alces_master::fuzzing::changelog(data));
