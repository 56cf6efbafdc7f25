//! What a new `alces-mount` reads from the memfds its predecessor left: the
//! write journal (scanned page by page) and the session record.
#![no_main]

use std::io::Write;

use alces_client::journal::Journal;
use alces_client::takeover::SessionRecord;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = SessionRecord::decode(data) {
        assert_eq!(SessionRecord::decode(r.encode().as_bytes()), Ok(Some(r)));
    }
    let mut f = tempfile::tempfile().expect("a temporary file");
    f.write_all(data).unwrap();
    let _ = Journal::scan(&f);
});
