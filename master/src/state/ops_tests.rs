//! Namespace semantics: every errno case, the rename matrix, hard links, xattrs,
//! orphans, truncation, and replay equivalence.

use super::*;
use crate::state::namespace::ROOT_INODE;
use alces_proto::pb::RenameFlag;

const CHUNK: u64 = 1 << 20;

/// A state plus the log of every record applied to it.
struct Fs {
    st: State,
    log: Vec<ChangelogRecord>,
    initial: State,
    t: i64,
}

impl Fs {
    fn new() -> Self {
        let st = State::format("test".into(), CHUNK, 2, 1000);
        Self {
            initial: st.clone(),
            st,
            log: Vec::new(),
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
        match &r {
            Ok(_) => self.log.push(rec),
            Err(_) => assert_eq!(before, self.st, "a refused record changed the state"),
        }
        r
    }

    fn errno(&mut self, op: Op) -> i32 {
        match self.run(op) {
            Ok(_) => panic!("operation succeeded but an error was expected"),
            Err(e) => e.errno,
        }
    }

    fn mk(&mut self, parent: u64, name: &str, kind: FileType) -> FsResult<u64> {
        self.mk_as(parent, name, kind, 0o644, Owner { uid: 10, gid: 20 })
    }

    fn mk_as(
        &mut self,
        parent: u64,
        name: &str,
        kind: FileType,
        mode: u32,
        o: Owner,
    ) -> FsResult<u64> {
        let target: &[u8] = if kind == FileType::Symlink {
            b"target"
        } else {
            b""
        };
        let op = prepare_create(
            &self.st,
            &NewInode {
                parent,
                name: name.as_bytes(),
                kind,
                mode,
                umask: 0o022,
                rdev: 7,
                owner: o,
                target,
            },
        )?;
        let ino = match &op {
            Op::Create(c) => c.inode,
            _ => unreachable!(),
        };
        self.run(op)?;
        Ok(ino)
    }

    fn file(&mut self, name: &str) -> u64 {
        self.mk(ROOT_INODE, name, FileType::Regular).unwrap()
    }

    fn dir(&mut self, parent: u64, name: &str) -> u64 {
        self.mk(parent, name, FileType::Directory).unwrap()
    }

    fn rename(&mut self, p: u64, n: &str, np: u64, nn: &str, flags: u32) -> FsResult<Applied> {
        self.run(Op::Rename(pb::RenameOp {
            parent: p,
            name: n.into(),
            new_parent: np,
            new_name: nn.into(),
            flags,
            keep_orphan: false,
        }))
    }

    fn unlink(&mut self, p: u64, n: &str, dir: bool) -> FsResult<Applied> {
        self.run(Op::Unlink(pb::UnlinkOp {
            parent: p,
            name: n.into(),
            directory: dir,
            keep_orphan: false,
            trash_secs: 0,
        }))
    }

    fn chunk(&mut self, ino: u64, idx: u64) -> u64 {
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
        id
    }

    fn nlink(&self, ino: u64) -> u32 {
        self.st.get(ino).unwrap().nlink
    }
}

#[test]
fn names_are_validated() {
    let mut fs = Fs::new();
    assert_eq!(
        fs.mk(ROOT_INODE, "", FileType::Regular).unwrap_err().errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.mk(ROOT_INODE, ".", FileType::Regular).unwrap_err().errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.mk(ROOT_INODE, "..", FileType::Regular)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.mk(ROOT_INODE, "a/b", FileType::Regular)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.mk(ROOT_INODE, "a\0b", FileType::Regular)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    let long = "x".repeat(256);
    assert_eq!(
        fs.mk(ROOT_INODE, &long, FileType::Regular)
            .unwrap_err()
            .errno,
        libc::ENAMETOOLONG
    );
    fs.mk(ROOT_INODE, &"x".repeat(255), FileType::Regular)
        .unwrap();
    let f = fs.file("f");
    assert_eq!(
        fs.mk(ROOT_INODE, "f", FileType::Regular).unwrap_err().errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.mk(f, "child", FileType::Regular).unwrap_err().errno,
        libc::ENOTDIR
    );
    assert_eq!(
        fs.mk(999, "child", FileType::Regular).unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.st.lookup(ROOT_INODE, b"nope").unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(fs.st.lookup(ROOT_INODE, b"f").unwrap(), f);
    assert_eq!(fs.st.lookup(ROOT_INODE, b"..").unwrap(), ROOT_INODE);
}

#[test]
fn every_kind_is_created_with_linux_attributes() {
    let mut fs = Fs::new();
    let root_mtime = fs.st.get(ROOT_INODE).unwrap().mtime;
    let d = fs.dir(ROOT_INODE, "d");
    assert_eq!(fs.nlink(d), 2);
    assert_eq!(fs.nlink(ROOT_INODE), 3);
    assert!(fs.st.get(ROOT_INODE).unwrap().mtime > root_mtime);
    let f = fs.file("f");
    let a = fs.st.attr(f).unwrap();
    assert_eq!(
        (a.mode, a.uid, a.gid, a.nlink, a.goal),
        (0o644, 10, 20, 1, 2)
    );
    let s = fs.mk(ROOT_INODE, "s", FileType::Symlink).unwrap();
    assert_eq!(fs.st.readlink(s).unwrap(), b"target");
    assert_eq!(fs.st.attr(s).unwrap().size, 6);
    assert_eq!(fs.st.readlink(f).unwrap_err().errno, libc::EINVAL);
    let c = fs.mk(ROOT_INODE, "c", FileType::CharDevice).unwrap();
    assert_eq!(fs.st.attr(c).unwrap().rdev, 7);
    for (n, k) in [
        ("p", FileType::Fifo),
        ("so", FileType::Socket),
        ("b", FileType::BlockDevice),
    ] {
        let i = fs.mk(ROOT_INODE, n, k).unwrap();
        assert_eq!(fs.st.attr(i).unwrap().kind, k as i32);
    }
    // Symlink target limits.
    let long = vec![b'a'; 4096];
    let op = prepare_create(
        &fs.st,
        &NewInode {
            parent: ROOT_INODE,
            name: b"l",
            kind: FileType::Symlink,
            mode: 0,
            umask: 0,
            rdev: 0,
            owner: Owner::default(),
            target: &long,
        },
    )
    .unwrap();
    assert_eq!(fs.errno(op), libc::ENAMETOOLONG);
    let op = prepare_create(
        &fs.st,
        &NewInode {
            parent: ROOT_INODE,
            name: b"l",
            kind: FileType::Symlink,
            mode: 0,
            umask: 0,
            rdev: 0,
            owner: Owner::default(),
            target: b"",
        },
    )
    .unwrap();
    assert_eq!(fs.errno(op), libc::ENOENT);
    // Bad kind.
    let mut op = prepare_create(
        &fs.st,
        &NewInode {
            parent: ROOT_INODE,
            name: b"z",
            kind: FileType::Regular,
            mode: 0,
            umask: 0,
            rdev: 0,
            owner: Owner::default(),
            target: b"",
        },
    )
    .unwrap();
    if let Op::Create(c) = &mut op {
        c.kind = 42;
    }
    assert_eq!(fs.errno(op), libc::EINVAL);
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let mut fs = Fs::new();
    let d = fs
        .mk_as(
            ROOT_INODE,
            "g",
            FileType::Directory,
            0o2775,
            Owner { uid: 1, gid: 500 },
        )
        .unwrap();
    assert_eq!(fs.st.attr(d).unwrap().mode, 0o2755);
    let f = fs
        .mk_as(d, "f", FileType::Regular, 0o644, Owner { uid: 2, gid: 7 })
        .unwrap();
    assert_eq!(fs.st.attr(f).unwrap().gid, 500);
    assert_eq!(fs.st.attr(f).unwrap().mode & 0o2000, 0);
    let sub = fs
        .mk_as(
            d,
            "sub",
            FileType::Directory,
            0o755,
            Owner { uid: 2, gid: 7 },
        )
        .unwrap();
    assert_eq!(fs.st.attr(sub).unwrap().gid, 500);
    assert_eq!(fs.st.attr(sub).unwrap().mode & 0o2000, 0o2000);
    let plain = fs.dir(ROOT_INODE, "plain");
    let g = fs
        .mk_as(
            plain,
            "f",
            FileType::Regular,
            0o644,
            Owner { uid: 2, gid: 7 },
        )
        .unwrap();
    assert_eq!(fs.st.attr(g).unwrap().gid, 7);
}

#[test]
fn hard_links() {
    let mut fs = Fs::new();
    let f = fs.file("f");
    let d = fs.dir(ROOT_INODE, "d");
    let link = |fs: &mut Fs, ino: u64, p: u64, n: &str| {
        fs.run(Op::Link(pb::LinkOp {
            inode: ino,
            parent: p,
            name: n.into(),
        }))
    };
    link(&mut fs, f, d, "g").unwrap();
    assert_eq!(fs.nlink(f), 2);
    assert_eq!(fs.st.lookup(d, b"g").unwrap(), f);
    assert_eq!(
        link(&mut fs, d, ROOT_INODE, "d2").unwrap_err().errno,
        libc::EPERM
    );
    assert_eq!(link(&mut fs, f, d, "g").unwrap_err().errno, libc::EEXIST);
    assert_eq!(link(&mut fs, 999, d, "x").unwrap_err().errno, libc::ENOENT);
    assert_eq!(link(&mut fs, f, f, "x").unwrap_err().errno, libc::ENOTDIR);
    fs.unlink(ROOT_INODE, "f", false).unwrap();
    assert_eq!(fs.nlink(f), 1);
    fs.unlink(d, "g", false).unwrap();
    assert!(fs.st.get(f).is_err());
}

#[test]
fn unlink_and_rmdir_errors() {
    let mut fs = Fs::new();
    let d = fs.dir(ROOT_INODE, "d");
    fs.file("f");
    fs.mk(d, "inner", FileType::Regular).unwrap();
    assert_eq!(
        fs.unlink(ROOT_INODE, "d", false).unwrap_err().errno,
        libc::EISDIR
    );
    assert_eq!(
        fs.unlink(ROOT_INODE, "f", true).unwrap_err().errno,
        libc::ENOTDIR
    );
    assert_eq!(
        fs.unlink(ROOT_INODE, "d", true).unwrap_err().errno,
        libc::ENOTEMPTY
    );
    assert_eq!(
        fs.unlink(ROOT_INODE, "none", false).unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.unlink(ROOT_INODE, ".", true).unwrap_err().errno,
        libc::EINVAL
    );
    fs.unlink(d, "inner", false).unwrap();
    assert_eq!(fs.nlink(ROOT_INODE), 3);
    fs.unlink(ROOT_INODE, "d", true).unwrap();
    assert_eq!(fs.nlink(ROOT_INODE), 2);
    assert!(fs.st.get(d).is_err());
    fs.unlink(ROOT_INODE, "f", false).unwrap();
    assert!(fs.st.dir(ROOT_INODE).unwrap().is_empty());
}

#[test]
fn orphans_live_until_purged_and_free_their_chunks() {
    let mut fs = Fs::new();
    let f = fs.file("f");
    let c = fs.chunk(f, 0);
    fs.run(Op::Unlink(pb::UnlinkOp {
        parent: ROOT_INODE,
        name: b"f".to_vec(),
        directory: false,
        keep_orphan: true,
        trash_secs: 0,
    }))
    .unwrap();
    assert_eq!(fs.nlink(f), 0);
    assert!(fs.st.orphans.contains(&f));
    assert!(fs.st.chunks.contains_key(&c));
    // A removed file cannot be linked back.
    assert_eq!(
        fs.errno(Op::Link(pb::LinkOp {
            inode: f,
            parent: ROOT_INODE,
            name: b"back".to_vec()
        })),
        libc::ENOENT
    );
    let g = fs.file("g");
    assert_eq!(fs.errno(Op::Purge(pb::PurgeOp { inode: g })), libc::EINVAL);
    let a = fs.run(Op::Purge(pb::PurgeOp { inode: f })).unwrap();
    assert_eq!(a.freed_chunks, vec![c]);
    assert!(fs.st.get(f).is_err());
    assert!(fs.st.orphans.is_empty());
    assert!(fs.st.chunks.is_empty());
}

#[test]
fn rename_matrix() {
    let mut fs = Fs::new();
    let a = fs.dir(ROOT_INODE, "a");
    let b = fs.dir(ROOT_INODE, "b");
    let a1 = fs.dir(a, "a1");
    let f = fs.file("f");
    let g = fs.file("g");
    fs.mk(b, "full", FileType::Regular).unwrap();
    let noreplace = RenameFlag::RenameNoreplace as u32;
    let exchange = RenameFlag::RenameExchange as u32;

    // File over directory, directory over file, directory over non-empty directory.
    assert_eq!(
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "a", 0)
            .unwrap_err()
            .errno,
        libc::EISDIR
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "a", ROOT_INODE, "f", 0)
            .unwrap_err()
            .errno,
        libc::ENOTDIR
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
            .unwrap_err()
            .errno,
        libc::ENOTEMPTY
    );
    // Into its own subtree, and onto its own ancestor.
    assert_eq!(
        fs.rename(ROOT_INODE, "a", a1, "x", 0).unwrap_err().errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "a", a, "x", 0).unwrap_err().errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.rename(a, "a1", ROOT_INODE, "a", 0).unwrap_err().errno,
        libc::ENOTEMPTY
    );
    // Missing source, bad flags, NOREPLACE, EXCHANGE with a missing target.
    assert_eq!(
        fs.rename(ROOT_INODE, "zz", ROOT_INODE, "y", 0)
            .unwrap_err()
            .errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "y", 3)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "y", 8)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "g", noreplace)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "y", exchange)
            .unwrap_err()
            .errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "..", 0)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );

    // Same inode (hard link): nothing happens.
    fs.run(Op::Link(pb::LinkOp {
        inode: f,
        parent: ROOT_INODE,
        name: b"f2".to_vec(),
    }))
    .unwrap();
    fs.rename(ROOT_INODE, "f", ROOT_INODE, "f2", 0).unwrap();
    assert_eq!(fs.st.lookup(ROOT_INODE, b"f").unwrap(), f);
    assert_eq!(fs.nlink(f), 2);
    fs.rename(ROOT_INODE, "f", ROOT_INODE, "f", 0).unwrap();

    // Directory move updates both parents' nlink and '..'.
    let root_links = fs.nlink(ROOT_INODE);
    fs.rename(a, "a1", b, "moved", 0).unwrap();
    assert_eq!(fs.nlink(a), 2);
    assert_eq!(fs.nlink(b), 3);
    assert_eq!(fs.nlink(ROOT_INODE), root_links);
    assert_eq!(fs.st.lookup(a1, b"..").unwrap(), b);
    assert_eq!(fs.st.get(a1).unwrap().ctime, fs.t);
    assert_eq!(fs.st.get(a).unwrap().mtime, fs.t);

    // Directory over an empty directory replaces it.
    let empty = fs.dir(ROOT_INODE, "empty");
    fs.rename(ROOT_INODE, "a", ROOT_INODE, "empty", 0).unwrap();
    assert!(fs.st.get(empty).is_err());
    assert_eq!(fs.st.lookup(ROOT_INODE, b"empty").unwrap(), a);
    assert_eq!(fs.nlink(ROOT_INODE), root_links);

    // File over file frees the victim and its chunks.
    let c = fs.chunk(g, 0);
    fs.run(Op::Unlink(pb::UnlinkOp {
        parent: ROOT_INODE,
        name: b"f2".to_vec(),
        directory: false,
        keep_orphan: false,
        trash_secs: 0,
    }))
    .unwrap();
    let applied = fs.rename(ROOT_INODE, "f", ROOT_INODE, "g", 0).unwrap();
    assert_eq!(applied.freed_chunks, vec![c]);
    assert!(fs.st.get(g).is_err());
    assert_eq!(fs.st.lookup(ROOT_INODE, b"g").unwrap(), f);
    assert!(fs.st.lookup(ROOT_INODE, b"f").is_err());

    // EXCHANGE swaps a file and a directory across parents.
    let d = fs.dir(ROOT_INODE, "d");
    let x = fs.mk(d, "x", FileType::Regular).unwrap();
    let root_links = fs.nlink(ROOT_INODE);
    fs.rename(ROOT_INODE, "empty", d, "x", exchange).unwrap();
    assert_eq!(fs.st.lookup(ROOT_INODE, b"empty").unwrap(), x);
    assert_eq!(fs.st.lookup(d, b"x").unwrap(), a);
    assert_eq!(fs.st.lookup(a, b"..").unwrap(), d);
    assert_eq!(fs.nlink(ROOT_INODE), root_links - 1);
    assert_eq!(fs.nlink(d), 3);
    // EXCHANGE may not put a directory inside itself.
    assert_eq!(
        fs.rename(ROOT_INODE, "d", a, "zz", exchange)
            .unwrap_err()
            .errno,
        libc::ENOENT
    );
    let inner = fs.mk(a, "inner", FileType::Regular).unwrap();
    assert_eq!(
        fs.rename(ROOT_INODE, "d", a, "inner", exchange)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    assert!(fs.st.get(inner).is_ok());
}

#[test]
fn xattrs() {
    let mut fs = Fs::new();
    let f = fs.file("f");
    let set = |fs: &mut Fs, name: &[u8], value: &[u8], flags: u32| {
        fs.run(Op::SetXattr(pb::SetXattrOp {
            inode: f,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        }))
    };
    let ctime = fs.st.get(f).unwrap().ctime;
    assert!(fs.st.attr(f).unwrap().no_xattrs, "a new file has no xattrs");
    set(&mut fs, b"user.a", b"1", 0).unwrap();
    assert!(!fs.st.attr(f).unwrap().no_xattrs);
    assert!(fs.st.get(f).unwrap().ctime > ctime);
    assert_eq!(fs.st.getxattr(f, b"user.a").unwrap(), b"1");
    assert_eq!(
        set(&mut fs, b"user.a", b"2", XATTR_CREATE)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    assert_eq!(
        set(&mut fs, b"user.b", b"2", XATTR_REPLACE)
            .unwrap_err()
            .errno,
        libc::ENODATA
    );
    set(&mut fs, b"user.a", b"3", XATTR_REPLACE).unwrap();
    assert_eq!(fs.st.getxattr(f, b"user.a").unwrap(), b"3");
    assert_eq!(
        set(&mut fs, b"user.a", b"3", 3).unwrap_err().errno,
        libc::EINVAL
    );
    assert_eq!(
        set(&mut fs, &[b'n'; 256], b"", 0).unwrap_err().errno,
        libc::ERANGE
    );
    assert_eq!(set(&mut fs, b"", b"", 0).unwrap_err().errno, libc::ERANGE);
    set(&mut fs, &[b'n'; 255], &vec![0u8; 65536], 0).unwrap();
    assert_eq!(
        set(&mut fs, b"user.big", &vec![0u8; 65537], 0)
            .unwrap_err()
            .errno,
        libc::E2BIG
    );
    assert_eq!(fs.st.listxattr(f).unwrap().len(), 2);
    assert_eq!(
        fs.st.getxattr(f, b"user.none").unwrap_err().errno,
        libc::ENODATA
    );
    let rm = |fs: &mut Fs, name: &[u8]| {
        fs.run(Op::RemoveXattr(pb::RemoveXattrOp {
            inode: f,
            name: name.to_vec(),
        }))
    };
    rm(&mut fs, b"user.a").unwrap();
    assert_eq!(rm(&mut fs, b"user.a").unwrap_err().errno, libc::ENODATA);
    assert!(!fs.st.attr(f).unwrap().no_xattrs, "one xattr is left");
    rm(&mut fs, &[b'n'; 255]).unwrap();
    assert!(fs.st.get(f).unwrap().xattrs.is_none());
    assert!(fs.st.attr(f).unwrap().no_xattrs, "the last xattr is gone");
    assert_eq!(
        fs.errno(Op::SetXattr(pb::SetXattrOp {
            inode: 999,
            name: b"a".to_vec(),
            value: vec![],
            flags: 0
        })),
        libc::ENOENT
    );
}

#[test]
fn setattr_truncates_and_stamps() {
    let mut fs = Fs::new();
    let f = fs.file("f");
    let c0 = fs.chunk(f, 0);
    let c1 = fs.chunk(f, 1);
    let c3 = fs.chunk(f, 3);
    fs.run(Op::WriteChunkEnd(pb::WriteChunkEndOp {
        inode: f,
        file_size: 3 * CHUNK + 10,
        modified: true,
    }))
    .unwrap();
    assert_eq!(fs.st.get(f).unwrap().mtime, fs.t);
    // Smaller size never shrinks through WriteChunkEnd.
    fs.run(Op::WriteChunkEnd(pb::WriteChunkEndOp {
        inode: f,
        file_size: 5,
        modified: false,
    }))
    .unwrap();
    assert_eq!(fs.st.get(f).unwrap().size, 3 * CHUNK + 10);
    let size = |s: u64| {
        Op::SetAttr(pb::SetAttrOp {
            inode: f,
            valid: SetAttrField::SetAttrSize as u32,
            size: s,
            ..Default::default()
        })
    };
    let a = fs.run(size(CHUNK + 1)).unwrap();
    assert_eq!(a.freed_chunks, vec![c3]);
    assert_eq!(fs.st.get(f).unwrap().chunks().unwrap(), &vec![c0, c1]);
    let a = fs.run(size(CHUNK)).unwrap();
    assert_eq!(a.freed_chunks, vec![c1]);
    let a = fs.run(size(10 * CHUNK)).unwrap();
    assert!(a.freed_chunks.is_empty());
    assert_eq!(fs.st.get(f).unwrap().size, 10 * CHUNK);
    assert_eq!(fs.st.chunks.keys().copied().collect::<Vec<_>>(), vec![c0]);
    assert_eq!(fs.errno(size(MAX_FILE_SIZE + 1)), libc::EFBIG);
    let d = fs.dir(ROOT_INODE, "d");
    let mut op = size(0);
    if let Op::SetAttr(s) = &mut op {
        s.inode = d;
    }
    assert_eq!(fs.errno(op), libc::EISDIR);
    // Mode, owner, explicit times; ctime follows every change.
    let op = Op::SetAttr(pb::SetAttrOp {
        inode: f,
        valid: (SetAttrField::SetAttrMode as u32)
            | (SetAttrField::SetAttrUid as u32)
            | (SetAttrField::SetAttrAtime as u32)
            | (SetAttrField::SetAttrMtimeNow as u32),
        mode: 0o104_755,
        uid: 42,
        atime_ns: -5,
        ..Default::default()
    });
    fs.run(op).unwrap();
    let a = fs.st.attr(f).unwrap();
    assert_eq!(
        (a.mode, a.uid, a.atime_ns, a.mtime_ns, a.ctime_ns),
        (0o4755, 42, -5, fs.t, fs.t)
    );
    assert_eq!(
        fs.errno(Op::SetAttr(pb::SetAttrOp {
            inode: f,
            valid: 1 << 12,
            ..Default::default()
        })),
        libc::EINVAL
    );
    assert_eq!(
        fs.errno(Op::SetAttr(pb::SetAttrOp {
            inode: 777,
            valid: 1,
            ..Default::default()
        })),
        libc::ENOENT
    );
}

#[test]
fn chunk_versions_and_limits() {
    let mut fs = Fs::new();
    let f = fs.file("f");
    let c = fs.chunk(f, 2);
    assert_eq!(fs.st.get(f).unwrap().chunks().unwrap(), &vec![0, 0, c]);
    fs.run(Op::WriteChunk(pb::WriteChunkOp {
        inode: f,
        chunk_index: 2,
        chunk_id: c,
        version: 2,
        created: false,
        copy_from_chunk_id: 0,
    }))
    .unwrap();
    assert_eq!(fs.st.chunks[&c].version, 2);
    // Creating over an existing chunk, reusing an id, a wrong id, past the limit.
    assert_eq!(
        fs.errno(Op::WriteChunk(pb::WriteChunkOp {
            inode: f,
            chunk_index: 2,
            chunk_id: 99,
            version: 1,
            created: true,
            copy_from_chunk_id: 0
        })),
        libc::EINVAL
    );
    assert_eq!(
        fs.errno(Op::WriteChunk(pb::WriteChunkOp {
            inode: f,
            chunk_index: 0,
            chunk_id: c,
            version: 1,
            created: true,
            copy_from_chunk_id: 0
        })),
        libc::EINVAL
    );
    assert_eq!(
        fs.errno(Op::WriteChunk(pb::WriteChunkOp {
            inode: f,
            chunk_index: 0,
            chunk_id: c,
            version: 3,
            created: false,
            copy_from_chunk_id: 0
        })),
        libc::EINVAL
    );
    let max = fs.st.max_chunk_index();
    assert_eq!(
        fs.errno(Op::WriteChunk(pb::WriteChunkOp {
            inode: f,
            chunk_index: max,
            chunk_id: 50,
            version: 1,
            created: true,
            copy_from_chunk_id: 0
        })),
        libc::EFBIG
    );
    let d = fs.dir(ROOT_INODE, "d");
    assert_eq!(
        fs.errno(Op::WriteChunk(pb::WriteChunkOp {
            inode: d,
            chunk_index: 0,
            chunk_id: 50,
            version: 1,
            created: true,
            copy_from_chunk_id: 0
        })),
        libc::EISDIR
    );
    fs.run(Op::SetChunkVersion(pb::SetChunkVersionOp {
        chunk_id: c,
        version: 1,
    }))
    .unwrap();
    assert_eq!(fs.st.chunks[&c].version, 1);
    assert_eq!(
        fs.errno(Op::SetChunkVersion(pb::SetChunkVersionOp {
            chunk_id: 12345,
            version: 1
        })),
        libc::ENOENT
    );
}

#[test]
fn records_must_follow_in_version_order() {
    let mut st = State::format("x".into(), CHUNK, 1, 0);
    let rec = ChangelogRecord {
        reply: None,
        version: 2,
        time_ns: 0,
        op: Some(Op::Purge(pb::PurgeOp { inode: 5 })),
    };
    assert_eq!(apply(&mut st, &rec).unwrap_err().errno, libc::EINVAL);
    let rec = ChangelogRecord {
        reply: None,
        version: 1,
        time_ns: 0,
        op: None,
    };
    assert_eq!(apply(&mut st, &rec).unwrap_err().errno, libc::EINVAL);
    assert_eq!(st.version, 0);
}

#[test]
fn replay_and_snapshot_reproduce_the_live_state() {
    let mut fs = Fs::new();
    let d = fs.dir(ROOT_INODE, "d");
    let f = fs.mk(d, "f", FileType::Regular).unwrap();
    fs.chunk(f, 0);
    fs.chunk(f, 4);
    fs.run(Op::SetXattr(pb::SetXattrOp {
        inode: f,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        flags: 0,
    }))
    .unwrap();
    fs.mk(ROOT_INODE, "s", FileType::Symlink).unwrap();
    fs.mk(ROOT_INODE, "dev", FileType::BlockDevice).unwrap();
    fs.run(Op::Link(pb::LinkOp {
        inode: f,
        parent: ROOT_INODE,
        name: b"hard".to_vec(),
    }))
    .unwrap();
    fs.rename(d, "f", ROOT_INODE, "moved", 0).unwrap();
    let o = fs.file("orphan");
    fs.chunk(o, 1);
    fs.run(Op::Unlink(pb::UnlinkOp {
        parent: ROOT_INODE,
        name: b"orphan".to_vec(),
        directory: false,
        keep_orphan: true,
        trash_secs: 0,
    }))
    .unwrap();
    // Replay.
    let mut replayed = fs.initial.clone();
    for r in &fs.log {
        apply(&mut replayed, r).unwrap();
    }
    assert_eq!(replayed, fs.st);
    // Snapshot round trip.
    let bytes = crate::disk::snapshot::encode(&fs.st, 1);
    let back = crate::disk::snapshot::decode(&bytes).unwrap();
    assert_eq!(back, fs.st);
    // Records survive encoding.
    for r in &fs.log {
        let again = <ChangelogRecord as prost::Message>::decode(
            prost::Message::encode_to_vec(r).as_slice(),
        )
        .unwrap();
        assert_eq!(&again, r);
    }
}

#[test]
fn a_reply_is_recorded_with_its_op_and_forgotten_with_its_session() {
    let mut st = State::format("x".into(), CHUNK, 1, 0);
    let reply = |sid: u64, id: u64| pb::ReplyRecord {
        session_id: sid,
        request_id: id,
        acked_below: 1,
        outcome: Some(pb::reply_record::Outcome::Empty(pb::Empty {})),
    };
    let set_goal = Op::SetGoal(pb::SetGoalOp {
        inodes: vec![ROOT_INODE],
        goal: 2,
    });
    let rec = |v: u64, op: Op, r: Option<pb::ReplyRecord>| ChangelogRecord {
        reply: r,
        version: v,
        time_ns: 0,
        op: Some(op),
    };
    apply(&mut st, &rec(1, set_goal.clone(), Some(reply(4, 1)))).unwrap();
    assert_eq!(st.replies.get(4, 1).map(|c| c.version), Some(1));
    // A bad reply refuses the whole record: the op is not applied either.
    let before = st.clone();
    let e = apply(&mut st, &rec(2, set_goal.clone(), Some(reply(0, 1)))).unwrap_err();
    assert!(e.message.contains("non-zero"), "{e}");
    let e = apply(&mut st, &rec(2, set_goal.clone(), Some(reply(4, 1)))).unwrap_err();
    assert!(e.message.contains("recorded already"), "{e}");
    assert_eq!(st, before);
    let forget = Op::ForgetReplies(pb::ForgetRepliesOp { session_id: 4 });
    apply(&mut st, &rec(2, forget, None)).unwrap();
    assert!(st.replies.is_empty());
    assert_eq!(st.version, 2);
}
