//! What the reply cache costs in the changelog: a real master (in-process,
//! over a temporary data directory) runs tagged mutations as the client sends
//! them (`RequestTag`, names like a program's files), then its changelog is
//! read back and every record is measured with and without the reply it
//! carries (protobuf-encoded bytes plus the frame header, as in the file).
//! One row per mutation: median bytes of the framed record without the reply,
//! median bytes the reply adds, and the share it adds.
//!
//! Sizes, not times: the figure depends on the protocol, not the machine.
//! `cargo bench -p alces-bench --bench reply_bytes`.

use std::collections::BTreeMap;
use std::sync::Arc;

use alces_master::disk::changelog;
use alces_master::server::{start, Options};
use alces_proto::auth::ClientAuth;
use alces_proto::net::channel;
use alces_proto::pb::{self, changelog_record::Op, master_client::MasterClient, ChangelogRecord};
use clap::Parser;
use prost::Message;

/// The frame header before each record in a changelog file: payload length
/// and CRC32C, four bytes each (`master/src/disk/frame.rs`).
const FRAME_HEADER: usize = 8;

/// Mutations of each kind.
const N: u64 = 200;

fn caller() -> Option<pb::Caller> {
    Some(pb::Caller {
        uid: 1000,
        gid: 1000,
        groups: vec![],
        pid: 4242,
    })
}

/// The client's tag for request `id` (it acknowledges all but the last few).
fn tag(id: u64) -> Option<pb::RequestTag> {
    Some(pb::RequestTag {
        id,
        acked_below: id.saturating_sub(4).max(1),
    })
}

/// The kind of a record, as the row's name.
fn kind(op: &Op) -> &'static str {
    match op {
        Op::Create(c) if c.kind == pb::FileType::Directory as i32 => "mkdir",
        Op::Create(c) if c.kind == pb::FileType::Symlink as i32 => "symlink",
        Op::Create(_) => "create (mknod)",
        Op::Link(_) => "link",
        Op::Unlink(_) => "unlink / rmdir",
        Op::Rename(_) => "rename",
        Op::SetXattr(_) => "setxattr",
        Op::RemoveXattr(_) => "removexattr",
        _ => "other",
    }
}

fn median(v: &mut [usize]) -> usize {
    v.sort_unstable();
    v[v.len() / 2]
}

async fn run(dir: &std::path::Path) {
    let secret = "bench-secret-0123456789";
    let args = alces_master::config::Args::try_parse_from([
        "alces-master",
        "--data-dir",
        dir.to_str().expect("utf-8 temp dir"),
        "--listen",
        "127.0.0.1:0",
    ])
    .expect("master flags");
    let mut opts = Options::from_args(&args, Arc::from(secret), Default::default());
    opts.http_listen = None;
    let m = start(opts).await.expect("master");
    let ch = channel(
        &m.grpc_addr.to_string(),
        &ClientAuth::new(secret).expect("secret"),
    )
    .expect("channel");
    let mut c = MasterClient::new(ch);
    let sid = c
        .register_session(pb::RegisterSessionRequest {
            client_name: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("session")
        .into_inner()
        .session_id;
    let mut id = 0u64;
    let mut next = || {
        id += 1;
        tag(id)
    };
    for i in 0..N {
        let d = c
            .mkdir(pb::MkdirRequest {
                tag: next(),
                session_id: sid,
                parent: 1,
                name: format!("dir-{i:06}").into_bytes(),
                mode: 0o755,
                umask: 0o022,
                caller: caller(),
            })
            .await
            .expect("mkdir")
            .into_inner()
            .attr
            .expect("attr")
            .inode;
        let f = c
            .mknod(pb::MknodRequest {
                tag: next(),
                session_id: sid,
                parent: d,
                name: b"data.sqlite-journal".to_vec(),
                kind: pb::FileType::Regular as i32,
                mode: 0o644,
                caller: caller(),
                exclusive: true,
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner()
            .attr
            .expect("attr")
            .inode;
        c.symlink(pb::SymlinkRequest {
            tag: next(),
            session_id: sid,
            parent: d,
            name: b"current".to_vec(),
            target: b"data.sqlite-journal".to_vec(),
            caller: caller(),
        })
        .await
        .expect("symlink");
        c.link(pb::LinkRequest {
            tag: next(),
            session_id: sid,
            inode: f,
            new_parent: d,
            new_name: b"data.sqlite-backup".to_vec(),
            caller: caller(),
        })
        .await
        .expect("link");
        c.rename(pb::RenameRequest {
            tag: next(),
            session_id: sid,
            parent: d,
            name: b"data.sqlite-backup".to_vec(),
            new_parent: d,
            new_name: b"data.sqlite-old".to_vec(),
            flags: 0,
            caller: caller(),
        })
        .await
        .expect("rename");
        c.set_xattr(pb::SetXattrRequest {
            tag: next(),
            session_id: sid,
            inode: f,
            name: b"user.origin".to_vec(),
            value: b"node-7".to_vec(),
            flags: 0,
            caller: caller(),
        })
        .await
        .expect("setxattr");
        for name in ["data.sqlite-old", "data.sqlite-journal", "current"] {
            c.unlink(pb::EntryRequest {
                tag: next(),
                session_id: sid,
                parent: d,
                name: name.as_bytes().to_vec(),
                caller: caller(),
                negative_reply: false,
            })
            .await
            .expect("unlink");
        }
        c.rmdir(pb::EntryRequest {
            tag: next(),
            session_id: sid,
            parent: 1,
            name: format!("dir-{i:06}").into_bytes(),
            caller: caller(),
            negative_reply: false,
        })
        .await
        .expect("rmdir");
    }
    m.stop().await.expect("stop");

    // Every record of the changelog, measured with and without its reply.
    let mut rows: BTreeMap<&'static str, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter(|e| changelog::parse_name(&e.file_name().to_string_lossy()).is_some())
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        for rec in changelog::read_file(&f).expect("changelog") {
            let (Some(op), Some(_)) = (rec.op.as_ref(), rec.reply.as_ref()) else {
                continue;
            };
            let with = rec.encoded_len();
            let without = ChangelogRecord {
                reply: None,
                ..rec.clone()
            }
            .encoded_len();
            let (with, without) = (with + FRAME_HEADER, without + FRAME_HEADER);
            let row = rows.entry(kind(op)).or_default();
            row.0.push(without);
            row.1.push(with - without);
        }
    }
    println!("reply records in the changelog ({N} tagged mutations of each kind, median bytes per framed record):\n");
    println!("| mutation | record without reply | reply adds | share |");
    println!("|---|---:|---:|---:|");
    for (name, (mut without, mut reply)) in rows {
        let (w, r) = (median(&mut without), median(&mut reply));
        println!(
            "| {name} | {w} | {r} | +{:.0}% |",
            100.0 * r as f64 / w as f64
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this measurement takes no options.
    let dir = tempfile::tempdir().expect("temp dir");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(dir.path()));
}
