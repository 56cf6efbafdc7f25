//! CSI volume and snapshot ids (from the CO, and from a volume's snapshot
//! source), cluster references and StorageClass parameters. An id that parses
//! must be printed back as the same id.
#![no_main]

use std::collections::HashMap;

use alces_csi::ids::{ClusterRef, EntryId, Kind};
use alces_csi::params;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [Kind::Volume, Kind::Snapshot] {
        if let Ok(id) = EntryId::parse(kind, s) {
            let _ = (id.path(), id.folder_path(), id.staging_name());
            assert_eq!(EntryId::parse(kind, &id.to_string()).as_ref(), Ok(&id));
        }
    }
    if let Ok(c) = ClusterRef::parse(s) {
        let _ = c.master_address();
    }
    let _ = ClusterRef::master(s);
    let _ = alces_csi::ids::validate_name("name", s);
    let _ = alces_csi::ids::validate_dir_path("root", s);
    let _ = params::parse_goal(s);
    let _ = params::parse_trash_time(s);
    // Parameters as "key=value" lines, first half static, second mutable.
    let mut p = HashMap::new();
    let mut m = HashMap::new();
    for (i, line) in s.lines().enumerate() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        if i % 2 == 0 { &mut p } else { &mut m }.insert(k.to_string(), v.to_string());
    }
    let _ = params::parse_class(&p, &m);
});
