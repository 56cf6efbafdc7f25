//! Writes the seeds that are not files of a running cluster (see
//! `fuzz/make-seeds`, which runs it): wire messages (every changelog and
//! snapshot record of the cluster's files, with the `wire` target's type
//! byte), the memfds a mount hands its successor, and CSI ids and
//! StorageClass parameters as the driver makes them.
//!
//! Usage: cargo run --manifest-path fuzz/Cargo.toml --example seeds -- SEEDS_DIR

use std::path::Path;

use alces_client::journal::Journal;
use alces_client::takeover::{KernelInit, SessionRecord};
use alces_csi::ids::{ClusterRef, EntryId, Kind};

fn main() {
    let out = std::env::args().nth(1).expect("usage: seeds SEEDS_DIR");
    let out = Path::new(&out);
    wire(out);
    mount_state(out);
    csi_ids(out);
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// The `wire` target's type byte of `message` (the order of build.rs).
fn type_byte(message: &str) -> u8 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/alces/v1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    let mut i = 0u8;
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            if let Some(rest) = line.strip_prefix("message ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name == message {
                    return i;
                }
                i += 1;
            }
        }
    }
    panic!("no message {message}")
}

/// Splits `[u32 len][u32 crc][payload]` frames.
fn frames(data: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 || pos + 8 + len > data.len() {
            break;
        }
        v.push(&data[pos + 8..pos + 8 + len]);
        pos += 8 + len;
    }
    v
}

fn wire(out: &Path) {
    let dir = out.join("wire");
    for (target, message) in [
        ("changelog", "ChangelogRecord"),
        ("snapshot", "SnapshotRecord"),
    ] {
        let b = type_byte(message);
        let src = out.join(target);
        let Ok(entries) = std::fs::read_dir(&src) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            for (i, f) in frames(&data).into_iter().enumerate().take(40) {
                let mut v = vec![b];
                v.extend_from_slice(f);
                put(&dir, &format!("{message}-{i}"), &v);
            }
        }
    }
}

fn mount_state(out: &Path) {
    let dir = out.join("mount_state");
    let r = SessionRecord {
        init: KernelInit {
            major: 7,
            minor: 31,
            max_readahead: 131072,
            flags: 0x3fff_fffb,
        },
        generation: 3,
        pid: 4242,
        master_session: 17,
        master_secret: vec![0x5a; 32],
        version: "0.1.0".into(),
    };
    put(&dir, "session-record", r.encode().as_bytes());
    let f = tempfile::tempfile().unwrap();
    let j = Journal::new(f.try_clone().unwrap()).unwrap();
    j.append(5, 0, b"hello journal").unwrap();
    j.append(5, 4096, &[7u8; 300]).unwrap();
    j.append(9, 1 << 20, b"x").unwrap();
    // The state memfd: the session record first, the journal after it.
    std::os::unix::fs::FileExt::write_all_at(&f, r.encode().as_bytes(), 0).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut bytes).unwrap();
    put(&dir, "journal", &bytes);
}

fn csi_ids(out: &Path) {
    let dir = out.join("csi_ids");
    let c = ClusterRef::master("alces-master.storage.svc:9421").unwrap();
    for (i, (kind, name)) in [
        (Kind::Volume, "pvc-3f1c2d4e-1111-2222-3333-444455556666"),
        (
            Kind::Snapshot,
            "snapshot-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = EntryId::new(kind, c.clone(), "/volumes", name).unwrap();
        put(&dir, &format!("id-{i}"), id.to_string().as_bytes());
    }
    put(&dir, "cluster", c.to_string().as_bytes());
    put(
        &dir,
        "parameters",
        b"master=alces-master.storage.svc:9421\ngoal=2\nroot=/volumes\ntrashTime=3600\nonDelete=trash\n",
    );
}
