//! Text the daemons read from files: /proc/self/mountinfo as the CSI node
//! plugin parses it (mount points hold names users chose).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = alces_csi::node::sys::parse_mountinfo(s);
    }
});
