//! Quotas, usage accounting, trash and copy-on-write snapshots, checked against
//! a recomputation from scratch after every step.

use super::*;
use crate::state::ops::{apply, prepare_create, Applied, NewInode, Owner};
use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::ChangelogRecord;

const CHUNK: u64 = 1 << 20;

struct Fs {
    st: State,
    t: i64,
}

impl Fs {
    fn new() -> Self {
        Self {
            st: State::format("test".into(), CHUNK, 2, 1000),
            t: 1000,
        }
    }

    fn run(&mut self, op: Op) -> FsResult<Applied> {
        self.t += 10;
        let rec = ChangelogRecord {
            reply: None,
            version: self.st.version + 1,
            time_ns: self.t,
            op: Some(op),
        };
        let before = self.st.clone();
        let r = apply(&mut self.st, &rec);
        if r.is_err() {
            assert_eq!(before, self.st, "a refused record changed the state");
        }
        let problems = check(&self.st);
        assert!(
            problems.is_empty(),
            "inconsistent after {rec:?}: {problems:?}"
        );
        r
    }

    fn errno(&mut self, op: Op) -> i32 {
        self.run(op).expect_err("an error was expected").errno
    }

    fn mk(&mut self, parent: u64, name: &str, kind: FileType) -> u64 {
        let op = prepare_create(
            &self.st,
            &NewInode {
                parent,
                name: name.as_bytes(),
                kind,
                mode: 0o755,
                umask: 0,
                rdev: 0,
                owner: Owner { uid: 1, gid: 1 },
                target: b"",
            },
        )
        .unwrap();
        let ino = match &op {
            Op::Create(c) => c.inode,
            _ => unreachable!(),
        };
        self.run(op).unwrap();
        ino
    }

    /// Writes chunk `idx` of `ino` (a new chunk) and grows the file to `size`.
    fn write(&mut self, ino: u64, idx: u64, size: u64) -> u64 {
        let id = self.st.next_chunk_id;
        self.run(Op::WriteChunk(pb::WriteChunkOp {
            inode: ino,
            chunk_index: idx,
            chunk_id: id,
            version: 1,
            created: true,
            copy_from_chunk_id: 0,
        }))
        .unwrap();
        self.run(Op::WriteChunkEnd(pb::WriteChunkEndOp {
            inode: ino,
            file_size: size,
            modified: true,
        }))
        .unwrap();
        id
    }

    fn usage(&self, dir: u64) -> Usage {
        self.st.usage.get(&dir).copied().unwrap_or_default()
    }

    fn unlink(&mut self, parent: u64, name: &str, trash_secs: u64) -> FsResult<Applied> {
        self.run(Op::Unlink(pb::UnlinkOp {
            parent,
            name: name.into(),
            directory: false,
            keep_orphan: false,
            trash_secs,
        }))
    }
}

fn u(bytes: u64, inodes: u64) -> Usage {
    Usage { bytes, inodes }
}

#[test]
fn usage_follows_writes_truncate_rename_links_and_unlink() {
    let mut fs = Fs::new();
    let a = fs.mk(ROOT_INODE, "a", FileType::Directory);
    let b = fs.mk(ROOT_INODE, "b", FileType::Directory);
    let f = fs.mk(a, "f", FileType::Regular);
    fs.write(f, 0, 1000);
    // A sparse file counts its full logical size.
    fs.write(f, 3, 3 * CHUNK + 10);
    assert_eq!(fs.usage(a), u(3 * CHUNK + 10, 1));
    fs.run(Op::SetAttr(pb::SetAttrOp {
        inode: f,
        valid: pb::SetAttrField::SetAttrSize as u32,
        size: 500,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(fs.usage(a), u(500, 1));
    assert_eq!(fs.usage(ROOT_INODE), u(500, 3));
    // Rename between trees moves the usage.
    fs.run(Op::Rename(pb::RenameOp {
        parent: a,
        name: b"f".to_vec(),
        new_parent: b,
        new_name: b"g".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!((fs.usage(a), fs.usage(b)), (u(0, 0), u(500, 1)));
    // A hard link counts once, in the directory of the latest link; removing
    // that link charges the other one.
    fs.run(Op::Link(pb::LinkOp {
        inode: f,
        parent: a,
        name: b"h".to_vec(),
    }))
    .unwrap();
    assert_eq!((fs.usage(a), fs.usage(b)), (u(500, 1), u(0, 0)));
    fs.unlink(a, "h", 0).unwrap();
    assert_eq!((fs.usage(a), fs.usage(b)), (u(0, 0), u(500, 1)));
    // Moving a whole directory moves its subtree.
    fs.run(Op::Rename(pb::RenameOp {
        parent: ROOT_INODE,
        name: b"b".to_vec(),
        new_parent: a,
        new_name: b"b".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(fs.usage(a), u(500, 2));
    fs.unlink(b, "g", 0).unwrap();
    assert_eq!(fs.usage(a), u(0, 1));
    assert!(fs.st.chunks.is_empty());
}

#[test]
fn quotas_refuse_growth_past_hard_limits_and_bad_limits() {
    let mut fs = Fs::new();
    let v = fs.mk(ROOT_INODE, "v", FileType::Directory);
    let f = fs.mk(v, "f", FileType::Regular);
    fs.write(f, 0, 100);
    fs.run(Op::SetQuota(pb::SetQuotaOp {
        inode: v,
        hard_bytes: 1000,
        hard_inodes: 2,
        ..Default::default()
    }))
    .unwrap();
    let now = fs.t;
    assert!(check_quota(&fs.st, 0, v, u(900, 0), now).is_ok());
    assert_eq!(
        check_quota(&fs.st, 0, v, u(901, 0), now).unwrap_err().errno,
        libc::EDQUOT
    );
    assert!(check_quota(&fs.st, 0, v, u(0, 1), now).is_ok());
    assert_eq!(
        check_quota(&fs.st, 0, v, u(0, 2), now).unwrap_err().errno,
        libc::EDQUOT
    );
    // A move inside the quota tree adds nothing to it.
    let sub = fs.mk(v, "sub", FileType::Directory);
    assert!(check_quota(&fs.st, v, sub, u(5000, 1), now).is_ok());
    // Soft limit with grace: allowed until the grace period runs out.
    fs.run(Op::SetQuota(pb::SetQuotaOp {
        inode: v,
        soft_bytes: 50,
        grace_secs: 1,
        ..Default::default()
    }))
    .unwrap();
    let since = fs.st.quotas[&v].soft_since;
    assert!(since != 0, "usage 100 is over the soft limit 50");
    assert!(check_quota(&fs.st, 0, v, u(10, 0), since + 500_000_000).is_ok());
    assert_eq!(
        check_quota(&fs.st, 0, v, u(10, 0), since + 2_000_000_000)
            .unwrap_err()
            .errno,
        libc::EDQUOT
    );
    // Bad limits.
    for (op, errno) in [
        (
            pb::SetQuotaOp {
                inode: v,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            pb::SetQuotaOp {
                inode: v,
                hard_bytes: u64::MAX,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            pb::SetQuotaOp {
                inode: v,
                soft_bytes: 10,
                hard_bytes: 5,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            pb::SetQuotaOp {
                inode: f,
                hard_bytes: 5,
                ..Default::default()
            },
            libc::ENOTDIR,
        ),
    ] {
        assert_eq!(fs.errno(Op::SetQuota(op)), errno);
    }
    assert_eq!(
        fs.errno(Op::RemoveQuota(pb::RemoveQuotaOp { inode: sub })),
        libc::ENOENT
    );
    fs.run(Op::RemoveQuota(pb::RemoveQuotaOp { inode: v }))
        .unwrap();
    assert!(fs.st.quotas.is_empty());
}

#[test]
fn snapshots_share_chunks_and_copy_on_write() {
    let mut fs = Fs::new();
    let src = fs.mk(ROOT_INODE, "src", FileType::Directory);
    let d = fs.mk(src, "d", FileType::Directory);
    let f = fs.mk(d, "f", FileType::Regular);
    let c0 = fs.write(f, 0, 10);
    let c1 = fs.write(f, 1, CHUNK + 10);
    let first = fs.st.next_inode;
    fs.run(Op::Snapshot(pb::SnapshotOp {
        source: src,
        parent: ROOT_INODE,
        name: b"snap".to_vec(),
        first_inode: first,
    }))
    .unwrap();
    let snap = fs.st.resolve(ROOT_INODE, "/snap").unwrap();
    let sf = fs.st.resolve(ROOT_INODE, "/snap/d/f").unwrap();
    assert_eq!(snap, first);
    assert_eq!(fs.st.get(sf).unwrap().chunks().unwrap(), &vec![c0, c1]);
    assert_eq!(fs.st.chunks[&c0].refs, 2);
    assert_eq!(fs.usage(snap), fs.usage(src));
    assert_eq!(fs.st.get(ROOT_INODE).unwrap().nlink, 4);
    // Errors: own subtree, existing destination, wrong inode numbering.
    let next = fs.st.next_inode;
    assert_eq!(
        fs.errno(Op::Snapshot(pb::SnapshotOp {
            source: src,
            parent: d,
            name: b"x".to_vec(),
            first_inode: next,
        })),
        libc::EINVAL
    );
    assert_eq!(
        fs.errno(Op::Snapshot(pb::SnapshotOp {
            source: f,
            parent: ROOT_INODE,
            name: b"snap".to_vec(),
            first_inode: next,
        })),
        libc::EEXIST
    );
    assert_eq!(
        fs.errno(Op::Snapshot(pb::SnapshotOp {
            source: f,
            parent: ROOT_INODE,
            name: b"y".to_vec(),
            first_inode: next + 1,
        })),
        libc::EINVAL
    );
    // A write to the shared chunk in the snapshot gets a private copy.
    let new = fs.st.next_chunk_id;
    fs.run(Op::WriteChunk(pb::WriteChunkOp {
        inode: sf,
        chunk_index: 0,
        chunk_id: new,
        version: 1,
        created: true,
        copy_from_chunk_id: c0,
    }))
    .unwrap();
    assert_eq!(fs.st.chunks[&c0].refs, 1);
    assert_eq!(fs.st.chunks[&new].refs, 1);
    assert_eq!(fs.st.get(f).unwrap().chunks().unwrap()[0], c0);
    // Deleting the source frees only what the snapshot does not share.
    let freed = fs.unlink(d, "f", 0).unwrap().freed_chunks;
    assert_eq!(freed, vec![c0]);
    assert_eq!(fs.st.chunks[&c1].refs, 1);
    let freed = fs
        .unlink(fs.st.resolve(ROOT_INODE, "/snap/d").unwrap(), "f", 0)
        .unwrap()
        .freed_chunks;
    let mut freed = freed;
    freed.sort_unstable();
    assert_eq!(freed, vec![c1, new]);
    assert!(fs.st.chunks.is_empty());
}

/// A copy-on-write copy made under a reserved id: the id is never handed out
/// again, the file switches to it only by the logged `WriteChunkOp`.
#[test]
fn copy_on_write_under_a_reserved_chunk_id() {
    let mut fs = Fs::new();
    let f = fs.mk(ROOT_INODE, "f", FileType::Regular);
    let c0 = fs.write(f, 0, 10);
    fs.run(Op::Snapshot(pb::SnapshotOp {
        source: f,
        parent: ROOT_INODE,
        name: b"snap".to_vec(),
        first_inode: fs.st.next_inode,
    }))
    .unwrap();
    let reserved = fs.st.next_chunk_id;
    fs.run(Op::ReserveChunkId(pb::ReserveChunkIdOp {
        chunk_id: reserved,
    }))
    .unwrap();
    assert_eq!(fs.st.next_chunk_id, reserved + 1);
    // Reserved: the file still points at the shared chunk.
    assert_eq!(fs.st.get(f).unwrap().chunks().unwrap()[0], c0);
    assert_eq!(fs.st.chunks[&c0].refs, 2);
    // An id already used (or 0) cannot be reserved.
    for id in [0, c0, reserved] {
        assert_eq!(
            fs.errno(Op::ReserveChunkId(pb::ReserveChunkIdOp { chunk_id: id })),
            libc::EINVAL
        );
    }
    // Meanwhile another file gets a new chunk: past the reserved id.
    let g = fs.mk(ROOT_INODE, "g", FileType::Regular);
    let other = fs.write(g, 0, 10);
    assert_eq!(other, reserved + 1);
    // The copy is recorded under the reserved id; ids never go back.
    fs.run(Op::WriteChunk(pb::WriteChunkOp {
        inode: f,
        chunk_index: 0,
        chunk_id: reserved,
        version: 1,
        created: true,
        copy_from_chunk_id: c0,
    }))
    .unwrap();
    assert_eq!(fs.st.get(f).unwrap().chunks().unwrap()[0], reserved);
    assert_eq!(fs.st.chunks[&c0].refs, 1);
    assert_eq!(fs.st.next_chunk_id, other + 1);
    // A new chunk (not a copy) cannot take a reserved id.
    let r2 = fs.st.next_chunk_id;
    fs.run(Op::ReserveChunkId(pb::ReserveChunkIdOp { chunk_id: r2 }))
        .unwrap();
    assert_eq!(
        fs.errno(Op::WriteChunk(pb::WriteChunkOp {
            inode: g,
            chunk_index: 1,
            chunk_id: r2,
            version: 1,
            created: true,
            copy_from_chunk_id: 0,
        })),
        libc::EINVAL
    );
}

#[test]
fn trash_keeps_files_until_purged_and_restores() {
    let mut fs = Fs::new();
    let dir = fs.mk(ROOT_INODE, "dir", FileType::Directory);
    let f = fs.mk(dir, "f", FileType::Regular);
    let c = fs.write(f, 0, 77);
    let applied = fs.unlink(dir, "f", 3600).unwrap();
    assert!(applied.freed_chunks.is_empty());
    assert_eq!(&*fs.st.trash[&f].path, "/dir/f");
    assert_eq!(fs.usage(dir), u(0, 0));
    assert!(!fs.st.orphans.contains(&f));
    // Restore to a path that exists now: refused.
    fs.mk(dir, "f", FileType::Regular);
    assert_eq!(
        fs.errno(Op::Restore(pb::RestoreOp {
            inode: f,
            parent: dir,
            name: b"f".to_vec(),
        })),
        libc::EEXIST
    );
    assert_eq!(
        fs.errno(Op::Restore(pb::RestoreOp {
            inode: 999_999,
            parent: dir,
            name: b"z".to_vec(),
        })),
        libc::ENOENT
    );
    fs.run(Op::Restore(pb::RestoreOp {
        inode: f,
        parent: dir,
        name: b"f.restored".to_vec(),
    }))
    .unwrap();
    assert_eq!(fs.usage(dir), u(77, 2));
    assert!(fs.st.trash.is_empty());
    // Trash again, survive a snapshot round trip, then purge.
    fs.unlink(dir, "f.restored", 3600).unwrap();
    let reloaded =
        crate::disk::snapshot::decode(&crate::disk::snapshot::encode(&fs.st, 0)).unwrap();
    assert_eq!(reloaded, fs.st);
    let applied = fs.run(Op::Purge(pb::PurgeOp { inode: f })).unwrap();
    assert_eq!(applied.freed_chunks, vec![c]);
    assert!(fs.st.trash.is_empty());
}

#[test]
fn snapshot_files_keep_quotas_trash_times_and_refcounts() {
    let mut fs = Fs::new();
    let v = fs.mk(ROOT_INODE, "v", FileType::Directory);
    let f = fs.mk(v, "f", FileType::Regular);
    fs.write(f, 0, 5);
    fs.run(Op::SetQuota(pb::SetQuotaOp {
        inode: v,
        hard_bytes: 1 << 30,
        soft_inodes: 1,
        grace_secs: 60,
        ..Default::default()
    }))
    .unwrap();
    fs.run(Op::SetTrashTime(pb::SetTrashTimeOp {
        inode: v,
        seconds: 0,
    }))
    .unwrap();
    assert_eq!(trash_secs(&fs.st, v), (0, true));
    assert_eq!(trash_secs(&fs.st, ROOT_INODE), (DEFAULT_TRASH_SECS, false));
    let next = fs.st.next_inode;
    fs.run(Op::Snapshot(pb::SnapshotOp {
        source: v,
        parent: ROOT_INODE,
        name: b"v2".to_vec(),
        first_inode: next,
    }))
    .unwrap();
    let reloaded =
        crate::disk::snapshot::decode(&crate::disk::snapshot::encode(&fs.st, 0)).unwrap();
    assert_eq!(reloaded, fs.st);
    assert!(check(&reloaded).is_empty());
}
