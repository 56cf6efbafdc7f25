//! Snapshot files (`snapshot.<version, 20 digits>.alces`): a header record, one
//! record per inode, and an end record, each framed and checksummed. Written to a
//! temporary file, fsynced, renamed into place and the directory fsynced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use alces_proto::pb::{self, snapshot_record::Record, SnapshotRecord};
use prost::Message;

use crate::disk::changelog::sync_dir;
use crate::disk::frame;
use crate::state::inode::{Body, Inode, Kind};
use crate::state::namespace::{ChunkMeta, State};

/// Snapshot format version written: 2 adds the reply cache (`SnapshotReply`
/// records), 3 the issued credentials (`IssueCredentialOp` records). Formats
/// 1 and 2 (neither) are still read.
pub const FORMAT: u32 = 3;
/// Oldest snapshot format read.
pub const OLDEST_FORMAT: u32 = 1;

/// File name of the snapshot of metadata version `version`.
pub fn file_name(version: u64) -> String {
    format!("snapshot.{version:020}.alces")
}

/// Version encoded in a snapshot file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot.")?
        .strip_suffix(".alces")?
        .parse()
        .ok()
}

fn push(rec: Record, out: &mut Vec<u8>) {
    let payload = SnapshotRecord { record: Some(rec) }.encode_to_vec();
    frame::encode(&payload, out);
}

fn inode_record(ino: u64, i: &Inode, st: &State) -> pb::SnapshotInode {
    let mut r = pb::SnapshotInode {
        inode: ino,
        kind: i.kind as i32,
        mode: u32::from(i.mode),
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        nlink: i.nlink,
        atime_ns: i.atime,
        mtime_ns: i.mtime,
        ctime_ns: i.ctime,
        rdev: i.rdev(),
        goal: u32::from(i.goal),
        parent: i.parent,
        ..Default::default()
    };
    match &i.body {
        Body::File(chunks) => {
            r.chunks = chunks.to_vec();
            r.chunk_versions = chunks
                .iter()
                .map(|c| st.chunks.get(c).map_or(0, |m| m.version))
                .collect();
        }
        Body::Dir(entries) => {
            r.entries = entries
                .iter()
                .map(|(n, c)| pb::SnapshotDirEntry {
                    name: n.to_vec(),
                    inode: *c,
                })
                .collect();
        }
        Body::Symlink(t) => r.symlink_target = t.to_vec(),
        Body::Device(_) | Body::Special => {}
    }
    if let Some(x) = &i.xattrs {
        r.xattrs = x
            .iter()
            .map(|(n, v)| pb::SnapshotXattr {
                name: n.to_vec(),
                value: v.to_vec(),
            })
            .collect();
    }
    r
}

/// Serialises `st` into snapshot bytes.
pub fn encode(st: &State, created_ns: i64) -> Vec<u8> {
    let mut out = Vec::new();
    push(
        Record::Header(pb::SnapshotHeader {
            format: FORMAT,
            version: st.version,
            cluster_id: st.cluster_id.clone(),
            next_inode: st.next_inode,
            next_chunk_id: st.next_chunk_id,
            chunk_size: st.chunk_size,
            inode_count: st.inodes.len() as u64,
            created_ns,
        }),
        &mut out,
    );
    let mut inos: Vec<u64> = st.inodes.keys().collect();
    inos.sort_unstable();
    for ino in inos {
        if let Some(i) = st.inodes.get(&ino) {
            push(Record::Inode(inode_record(ino, i, st)), &mut out);
        }
    }
    for (ino, q) in &st.quotas {
        push(
            Record::Quota(pb::SnapshotQuota {
                inode: *ino,
                soft_bytes: q.soft_bytes,
                hard_bytes: q.hard_bytes,
                soft_inodes: q.soft_inodes,
                hard_inodes: q.hard_inodes,
                grace_secs: q.grace_secs,
                soft_since_ns: q.soft_since,
            }),
            &mut out,
        );
    }
    for (ino, e) in &st.trash {
        push(
            Record::Trash(pb::SnapshotTrash {
                inode: *ino,
                path: e.path.to_string(),
                deleted_ns: e.deleted,
                expires_ns: e.expires,
            }),
            &mut out,
        );
    }
    for (ino, secs) in &st.trash_times {
        push(
            Record::TrashTime(pb::SnapshotTrashTime {
                inode: *ino,
                seconds: *secs,
            }),
            &mut out,
        );
    }
    for id in &st.draining {
        push(
            Record::Draining(pb::SnapshotDraining { server_id: *id }),
            &mut out,
        );
    }
    for c in st.credentials.map.values() {
        push(Record::Credential(c.clone()), &mut out);
    }
    for (version, reply) in st.replies.records() {
        push(
            Record::Reply(pb::SnapshotReplyEntry {
                version,
                reply: Some(reply),
            }),
            &mut out,
        );
    }
    push(
        Record::End(pb::SnapshotEnd {
            inode_count: st.inodes.len() as u64,
            version: st.version,
        }),
        &mut out,
    );
    out
}

/// Writes the snapshot of `st` into `dir` durably; returns its path.
pub fn write(dir: &Path, st: &State, created_ns: i64) -> anyhow::Result<PathBuf> {
    write_encoded(dir, st.version, &encode(st, created_ns))
}

/// Writes a snapshot already encoded by [`encode`] from the state at `version`
/// (atomically: temporary file, fsync, rename, directory fsync).
pub fn write_encoded(dir: &Path, version: u64, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(file_name(version));
    let tmp = dir.join(format!("{}.tmp", file_name(version)));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    res.map_err(|e| anyhow::anyhow!("cannot write snapshot {}: {e}", path.display()))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads and checks a snapshot file.
pub fn read(path: &Path) -> anyhow::Result<State> {
    let data = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read snapshot {}: {e}", path.display()))?;
    decode(&data).map_err(|e| anyhow::anyhow!("snapshot {} is not valid: {e}", path.display()))
}

fn kind(k: i32) -> anyhow::Result<Kind> {
    Kind::from_wire(k).ok_or_else(|| anyhow::anyhow!("unknown file type {k}"))
}

/// Rebuilds a state from snapshot bytes.
pub fn decode(data: &[u8]) -> anyhow::Result<State> {
    let (frames, bad) = frame::split(data);
    if let Some(b) = bad {
        anyhow::bail!("damaged at offset {}: {}", b.offset, b.reason);
    }
    let mut it = frames.into_iter();
    let header = match it.next().map(SnapshotRecord::decode) {
        Some(Ok(SnapshotRecord {
            record: Some(Record::Header(h)),
        })) => h,
        _ => anyhow::bail!("does not start with a snapshot header"),
    };
    if !(OLDEST_FORMAT..=FORMAT).contains(&header.format) {
        anyhow::bail!(
            "format {} is not supported (this version reads formats {OLDEST_FORMAT} to {FORMAT}): it was written by a {} version of Alces",
            header.format,
            if header.format > FORMAT { "newer" } else { "older" }
        );
    }
    let format = header.format;
    let mut st = State {
        version: header.version,
        cluster_id: header.cluster_id,
        chunk_size: header.chunk_size,
        next_inode: header.next_inode,
        next_chunk_id: header.next_chunk_id,
        inodes: crate::state::inodes::InodeTable::new(),
        chunks: HashMap::new(),
        orphans: BTreeSet::new(),
        quotas: BTreeMap::new(),
        trash: BTreeMap::new(),
        trash_times: BTreeMap::new(),
        draining: BTreeSet::new(),
        credentials: Default::default(),
        replies: Default::default(),
        usage: HashMap::new(),
    };
    let mut ended = false;
    for f in it {
        if ended {
            anyhow::bail!("records follow the end record");
        }
        let rec = SnapshotRecord::decode(f)
            .map_err(|e| anyhow::anyhow!("record does not decode: {e}"))?;
        match rec.record {
            Some(Record::Inode(r)) => {
                let k = kind(r.kind)?;
                let body = match k {
                    Kind::Regular => {
                        if r.chunks.len() != r.chunk_versions.len() {
                            anyhow::bail!(
                                "inode {}: chunk list and versions differ in length",
                                r.inode
                            );
                        }
                        for (c, v) in r.chunks.iter().zip(&r.chunk_versions) {
                            if *c != 0 {
                                let goal = r.goal.clamp(1, alces_proto::geometry::MAX_GOAL) as u8;
                                let m = st.chunks.entry(*c).or_insert(ChunkMeta {
                                    version: *v,
                                    inode: r.inode,
                                    refs: 0,
                                    goal,
                                });
                                m.refs += 1;
                                m.goal = m.goal.max(goal);
                            }
                        }
                        Body::File(r.chunks.into())
                    }
                    Kind::Directory => Body::Dir(Box::new(
                        r.entries
                            .into_iter()
                            .map(|e| (crate::state::inode::Name::from_slice(&e.name), e.inode))
                            .collect::<BTreeMap<_, _>>(),
                    )),
                    Kind::Symlink => Body::Symlink(r.symlink_target.into()),
                    Kind::CharDevice | Kind::BlockDevice => Body::Device(r.rdev),
                    _ => Body::Special,
                };
                let xattrs = if r.xattrs.is_empty() {
                    None
                } else {
                    Some(Box::new(
                        r.xattrs
                            .into_iter()
                            .map(|x| (x.name.into_boxed_slice(), x.value.into_boxed_slice()))
                            .collect(),
                    ))
                };
                if r.nlink == 0 && k != Kind::Directory {
                    st.orphans.insert(r.inode);
                }
                let inode = Inode {
                    kind: k,
                    mode: (r.mode & 0o7777) as u16,
                    goal: r.goal.clamp(1, alces_proto::geometry::MAX_GOAL) as u8,
                    nlink: r.nlink,
                    uid: r.uid,
                    gid: r.gid,
                    size: r.size,
                    atime: r.atime_ns,
                    mtime: r.mtime_ns,
                    ctime: r.ctime_ns,
                    parent: r.parent,
                    body,
                    xattrs,
                };
                if st.inodes.insert(r.inode, inode).is_some() {
                    anyhow::bail!("inode {} appears twice", r.inode);
                }
            }
            Some(Record::Quota(q)) => {
                st.quotas.insert(
                    q.inode,
                    crate::state::namespace::Quota {
                        soft_bytes: q.soft_bytes,
                        hard_bytes: q.hard_bytes,
                        soft_inodes: q.soft_inodes,
                        hard_inodes: q.hard_inodes,
                        grace_secs: q.grace_secs,
                        soft_since: q.soft_since_ns,
                    },
                );
            }
            Some(Record::Trash(e)) => {
                st.trash.insert(
                    e.inode,
                    crate::state::namespace::Trashed {
                        path: e.path.into_boxed_str(),
                        deleted: e.deleted_ns,
                        expires: e.expires_ns,
                    },
                );
            }
            Some(Record::TrashTime(e)) => {
                st.trash_times.insert(e.inode, e.seconds);
            }
            Some(Record::Draining(d)) => {
                st.draining.insert(d.server_id);
            }
            Some(Record::Credential(c)) => {
                if format < 3 {
                    anyhow::bail!("a credential record in a format {format} snapshot");
                }
                if c.id == 0 || c.token_hash.len() != 32 {
                    anyhow::bail!(
                        "credential record {} has no id or a token hash that is not 32 bytes",
                        c.id
                    );
                }
                let Some(rule) = c.rule.as_ref() else {
                    anyhow::bail!("credential record {} has no export rule", c.id);
                };
                crate::state::credentials::check_rule(rule)
                    .map_err(|e| anyhow::anyhow!("credential record {}: {}", c.id, e.message))?;
                if st.credentials.map.insert(c.id, c).is_some() {
                    anyhow::bail!("two credential records with one id");
                }
            }
            Some(Record::Reply(r)) => {
                if format < 2 {
                    anyhow::bail!("a reply cache record in a format {format} snapshot");
                }
                let Some(reply) = r.reply else {
                    anyhow::bail!("reply cache record of version {} is empty", r.version);
                };
                if r.version == 0 || r.version > st.version {
                    anyhow::bail!(
                        "reply cache record of version {} outside the snapshot's versions 1..={}",
                        r.version,
                        st.version
                    );
                }
                st.replies
                    .record(r.version, &reply)
                    .map_err(|e| anyhow::anyhow!("reply cache record: {}", e.message))?;
            }
            Some(Record::End(e)) => {
                if e.inode_count != st.inodes.len() as u64 || e.version != st.version {
                    anyhow::bail!(
                        "end record says {} inodes at version {}, found {} at version {}",
                        e.inode_count,
                        e.version,
                        st.inodes.len(),
                        st.version
                    );
                }
                ended = true;
            }
            _ => anyhow::bail!("unexpected record"),
        }
    }
    if !ended {
        anyhow::bail!("incomplete: no end record");
    }
    if !st
        .inodes
        .get(&crate::state::namespace::ROOT_INODE)
        .is_some_and(|r| r.is_dir())
    {
        anyhow::bail!("no root directory");
    }
    crate::state::volumes::rebuild(&mut st);
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alces_proto::pb::reply_record::Outcome;

    fn reply(sid: u64, id: u64) -> pb::ReplyRecord {
        pb::ReplyRecord {
            session_id: sid,
            request_id: id,
            acked_below: 0,
            outcome: Some(Outcome::Entry(pb::EntryChangeReply::default())),
        }
    }

    /// The frames of `st`'s snapshot with `edit` applied to each record.
    fn reencode(st: &State, mut edit: impl FnMut(&mut SnapshotRecord)) -> Vec<u8> {
        let bytes = encode(st, 1);
        let (frames, bad) = frame::split(&bytes);
        assert!(bad.is_none());
        let mut out = Vec::new();
        for f in frames {
            let mut r = SnapshotRecord::decode(f).unwrap();
            edit(&mut r);
            if r.record.is_some() {
                frame::encode(&r.encode_to_vec(), &mut out);
            }
        }
        out
    }

    fn with_replies() -> State {
        let mut st = State::format("c".into(), 1 << 20, 1, 0);
        st.version = 10;
        st.replies.record(3, &reply(7, 1)).unwrap();
        st.replies.record(5, &reply(8, 4)).unwrap();
        st.replies.record(9, &reply(7, 2)).unwrap();
        st
    }

    #[test]
    fn the_reply_cache_round_trips() {
        let st = with_replies();
        let back = decode(&encode(&st, 1)).unwrap();
        assert_eq!(back.replies.len(), 3);
        assert_eq!(back.replies, st.replies);
        assert_eq!(back.replies.get(7, 2).map(|c| c.version), Some(9));
    }

    #[test]
    fn credentials_round_trip_and_need_format_3() {
        let mut st = with_replies();
        let c = pb::IssueCredentialOp {
            id: 4,
            token_hash: vec![7; 32],
            root_inode: crate::state::namespace::ROOT_INODE,
            rule: Some(pb::CredentialRule {
                path: "/".into(),
                read_only: true,
                squash: pb::Squash::All as i32,
                anon_uid: 65534,
                anon_gid: 65534,
                max_goal: 2,
                admin: false,
                name: "vol".into(),
            }),
            issued_ns: 5,
            revoked: true,
            revoked_ns: 6,
        };
        st.credentials.map.insert(4, c.clone());
        let back = decode(&encode(&st, 1)).unwrap();
        assert_eq!(back.credentials, st.credentials);
        // Formats 1 and 2 have no credential records.
        let e = decode(&reencode(&st, |r| {
            if let Some(Record::Header(h)) = &mut r.record {
                h.format = 2;
            }
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("credential record in a format 2"), "{e}");
        let e = decode(&reencode(&st, |r| {
            if let Some(Record::Credential(c)) = &mut r.record {
                c.token_hash.pop();
            }
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not 32 bytes"), "{e}");
    }

    #[test]
    fn format_1_is_read_and_other_formats_are_refused_clearly() {
        let st = with_replies();
        let set_format = |n: u32| {
            move |r: &mut SnapshotRecord| match &mut r.record {
                Some(Record::Header(h)) => h.format = n,
                Some(Record::Reply(_)) => r.record = None,
                _ => {}
            }
        };
        let old = decode(&reencode(&st, set_format(1))).unwrap();
        assert!(old.replies.is_empty());
        assert_eq!(old.inodes.len(), st.inodes.len());
        let e = decode(&reencode(&st, set_format(4)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format 4 is not supported") && e.contains("newer"),
            "{e}"
        );
        // A format 1 file cannot hold reply records.
        let e = decode(&reencode(&st, |r| {
            if let Some(Record::Header(h)) = &mut r.record {
                h.format = 1;
            }
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("format 1 snapshot"), "{e}");
    }

    #[test]
    fn bad_reply_records_are_refused_with_what_is_wrong() {
        let st = with_replies();
        type Spoil = fn(&mut pb::SnapshotReplyEntry);
        let cases: [(&str, Spoil); 4] = [
            ("is empty", |e| e.reply = None),
            ("outside the snapshot's versions", |e| e.version = 11),
            ("must be non-zero", |e| {
                if let Some(r) = &mut e.reply {
                    r.session_id = 0
                }
            }),
            ("has no outcome", |e| {
                if let Some(r) = &mut e.reply {
                    r.outcome = None
                }
            }),
        ];
        for (want, f) in cases {
            let mut first = true;
            let bytes = reencode(&st, |r| {
                if let Some(Record::Reply(e)) = &mut r.record {
                    if first {
                        f(e);
                        first = false;
                    }
                }
            });
            let e = decode(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?}: {e}");
        }
        // The same request twice.
        let bytes = reencode(&st, |r| {
            if let Some(Record::Reply(e)) = &mut r.record {
                if let Some(x) = &mut e.reply {
                    (x.session_id, x.request_id) = (7, 1);
                }
            }
        });
        let e = decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("recorded already"), "{e}");
    }
}
