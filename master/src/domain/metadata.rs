//! The Master service's metadata operations: lookups and attributes, creating,
//! linking, removing and renaming entries (with their quota checks), extended
//! attributes and statfs. Each mutation checks the session,
//! decides one changelog op, commits it and answers once it is durable.

use std::time::Instant;

use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::{self, FileType, SetAttrField};
use tonic::Status;

use crate::core::{now_ns, Core, Inner};
use crate::domain::volumes::quota_statfs;
use crate::runtime::tails::{recheck, Growth};
use crate::state::error::{err, FsResult};
use crate::state::namespace::{Usage, MAX_INODES};
use crate::state::ops::{check_xattr_name, prepare_create, NewInode, Owner, SETATTR_KNOWN};
use crate::state::replies::{tag, Tag};
use crate::state::volumes;

/// Default and largest readdir batch.
pub const READDIR_DEFAULT: usize = 1000;
/// Largest readdir batch the master returns.
pub const READDIR_MAX: usize = 10_000;

/// The attributes of `ino` as a reply.
pub fn attr_reply(inner: &Inner, ino: u64) -> FsResult<pb::AttrReply> {
    Ok(pb::AttrReply {
        attr: Some(inner.state.attr(ino)?),
        parent: None,
        first_chunk: None,
        leased: false,
    })
}

/// The directories' attributes after an entry was removed or moved.
fn entry_change(inner: &Inner, parent: u64, new_parent: u64) -> pb::EntryChangeReply {
    pb::EntryChangeReply {
        parent: inner.state.attr(parent).ok(),
        new_parent: (new_parent != parent)
            .then(|| inner.state.attr(new_parent).ok())
            .flatten(),
        leased: false,
    }
}

fn owner(c: &Option<pb::Caller>) -> Owner {
    c.as_ref()
        .map(|c| Owner {
            uid: c.uid,
            gid: c.gid,
        })
        .unwrap_or_default()
}

/// `Lookup`: `name` in directory `parent`. The session is granted leases
/// on the parent's entries and the found inode when its lease stream is open
/// (see [`crate::runtime::leases`]); with `negative_reply`, a missing name is
/// answered as a reply without attributes (leased on the parent).
pub fn lookup(core: &Core, r: &pb::EntryRequest) -> Result<pb::AttrReply, Status> {
    let now = Instant::now();
    core.locked(|i| match i.state.lookup(r.parent, &r.name) {
        Ok(ino) => {
            let mut rep = attr_reply(i, ino)?;
            rep.leased = i.leases.grant(r.session_id, &[r.parent, ino], now);
            Ok(rep)
        }
        Err(e) if e.errno == libc::ENOENT && r.negative_reply && i.state.get(r.parent).is_ok() => {
            Ok(pb::AttrReply {
                leased: i.leases.grant(r.session_id, &[r.parent], now),
                ..Default::default()
            })
        }
        Err(e) => Err(e),
    })
}

/// `GetAttr`.
pub fn get_attr(core: &Core, inode: u64) -> Result<pb::AttrReply, Status> {
    core.read(|i| attr_reply(i, inode))
}

/// `GetAttr` for session `sid`, granting it a lease on `inode` when its lease
/// stream is open.
pub fn get_attr_leased(core: &Core, sid: u64, inode: u64) -> Result<pb::AttrReply, Status> {
    let now = Instant::now();
    core.locked(|i| {
        let mut rep = attr_reply(i, inode)?;
        rep.leased = i.leases.grant(sid, &[inode], now);
        Ok(rep)
    })
}

/// `SetAttr`: growing a file first cuts bytes stored past its old end (see
/// [`crate::domain::tails`]), and is refused when its quota is full.
pub async fn set_attr(core: &Core, r: pb::SetAttrRequest) -> Result<pb::AttrReply, Status> {
    let growth = Growth::Size(r.size);
    if r.valid & SetAttrField::SetAttrSize as u32 != 0 {
        crate::domain::tails::settle_as(core, r.session_id, r.inode, growth).await?;
    }
    core.mutate_as(r.session_id, |core, inner| {
        inner.state.get(r.inode)?;
        if r.valid & !SETATTR_KNOWN != 0 {
            return err(libc::EINVAL, format!("unknown SetAttr bits {:#x}", r.valid));
        }
        if r.valid == SetAttrField::SetAttrNone as u32 {
            return Ok((None, attr_reply(inner, r.inode)?));
        }
        if r.valid & SetAttrField::SetAttrSize as u32 != 0 {
            recheck(&inner.tails, &inner.state, r.session_id, r.inode, growth)?;
            let i = inner.state.get(r.inode)?;
            if i.nlink > 0 && r.size > i.size && !i.is_dir() {
                volumes::check_quota(
                    &inner.state,
                    0,
                    i.parent,
                    Usage {
                        bytes: r.size - i.size,
                        inodes: 0,
                    },
                    now_ns(),
                )?;
            }
        }
        let op = Op::SetAttr(pb::SetAttrOp {
            inode: r.inode,
            valid: r.valid,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime_ns: r.atime_ns,
            mtime_ns: r.mtime_ns,
            ctime_ns: r.ctime_ns,
        });
        let v = core.commit(inner, op)?;
        Ok((Some(v), attr_reply(inner, r.inode)?))
    })
    .await
}

/// A new entry a session asks for.
#[derive(Debug, Clone, Copy)]
pub struct Create<'a> {
    /// The asking session.
    pub session_id: u64,
    /// What to create, and where.
    pub inode: NewInode<'a>,
    /// Refuse an existing entry (EEXIST) rather than answer with it.
    pub exclusive: bool,
    /// Also open the new regular file in the session (create + open in one call).
    pub open: bool,
    /// The request's reply cache tag.
    pub tag: Option<Tag>,
}

/// Creates an entry of any kind (quota checked), or with `exclusive` unset
/// answers with the existing one.
pub async fn create(core: &Core, c: Create<'_>) -> Result<pb::AttrReply, Status> {
    let (sid, parent) = (c.session_id, c.inode.parent);
    // Create + open in one call: the file is marked open in the session under
    // the same lock, exactly as a following Open would.
    let mark_open = |inner: &mut Inner, reply: &pb::AttrReply| {
        if let Some(a) = reply.attr.as_ref() {
            if c.open && a.kind == FileType::Regular as i32 {
                inner.sessions.open(sid, a.inode);
            }
        }
    };
    core.mutate_as(sid, |core, inner| {
        if let Some((v, reply)) = core.cached_reply::<pb::AttrReply>(inner, c.tag)? {
            // A retry: the first run marked the file open in this session,
            // unless that was on a master that has since been replaced (the
            // client could not list a file whose create it never saw).
            let held = reply.attr.is_some_and(|a| {
                inner
                    .sessions
                    .map
                    .get(&sid)
                    .is_some_and(|s| s.open.contains_key(&a.inode))
            });
            if !held {
                mark_open(inner, &reply);
            }
            return Ok((Some(v), reply));
        }
        if !c.exclusive {
            if let Some(ino) = inner.state.dir(parent)?.get(c.inode.name).copied() {
                let reply = attr_reply(inner, ino)?;
                mark_open(inner, &reply);
                return Ok((None, reply));
            }
        }
        volumes::check_quota(
            &inner.state,
            0,
            parent,
            Usage {
                bytes: c.inode.target.len() as u64,
                inodes: 1,
            },
            now_ns(),
        )?;
        let op = prepare_create(&inner.state, &c.inode)?;
        let ino = match &op {
            Op::Create(c) => c.inode,
            _ => 0,
        };
        let (v, reply) = core.commit_replied(inner, op, c.tag, |inner| {
            let mut reply = attr_reply(inner, ino)?;
            reply.parent = inner.state.attr(parent).ok();
            Ok(reply)
        })?;
        mark_open(inner, &reply);
        let mut reply = reply;
        reply.leased = inner.leases.grant(sid, &[parent, ino], Instant::now());
        Ok((Some(v), reply))
    })
    .await
}

/// `Mknod`: a regular file, fifo, socket or device.
pub async fn mknod(core: &Core, r: pb::MknodRequest) -> Result<pb::AttrReply, Status> {
    let kind = match FileType::try_from(r.kind) {
        Ok(
            k @ (FileType::Regular
            | FileType::Fifo
            | FileType::Socket
            | FileType::CharDevice
            | FileType::BlockDevice),
        ) => k,
        _ => {
            return Err(alces_proto::errno::status(
                libc::EINVAL,
                format!(
                    "Mknod cannot create file type {}: use a regular file, fifo, socket or device",
                    r.kind
                ),
            ))
        }
    };
    let rdev = if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
        r.rdev
    } else {
        0
    };
    let inode = NewInode {
        parent: r.parent,
        name: &r.name,
        kind,
        mode: r.mode,
        umask: r.umask,
        rdev,
        owner: owner(&r.caller),
        target: b"",
    };
    create(
        core,
        Create {
            session_id: r.session_id,
            inode,
            exclusive: r.exclusive,
            open: r.open,
            tag: tag(r.session_id, r.tag.as_ref())?,
        },
    )
    .await
}

/// `Mkdir`.
pub async fn mkdir(core: &Core, r: pb::MkdirRequest) -> Result<pb::AttrReply, Status> {
    let inode = NewInode {
        parent: r.parent,
        name: &r.name,
        kind: FileType::Directory,
        mode: r.mode,
        umask: r.umask,
        rdev: 0,
        owner: owner(&r.caller),
        target: b"",
    };
    create(
        core,
        Create {
            session_id: r.session_id,
            inode,
            exclusive: true,
            open: false,
            tag: tag(r.session_id, r.tag.as_ref())?,
        },
    )
    .await
}

/// `Symlink`.
pub async fn symlink(core: &Core, r: pb::SymlinkRequest) -> Result<pb::AttrReply, Status> {
    let inode = NewInode {
        parent: r.parent,
        name: &r.name,
        kind: FileType::Symlink,
        mode: 0o777,
        umask: 0,
        rdev: 0,
        owner: owner(&r.caller),
        target: &r.target,
    };
    create(
        core,
        Create {
            session_id: r.session_id,
            inode,
            exclusive: true,
            open: false,
            tag: tag(r.session_id, r.tag.as_ref())?,
        },
    )
    .await
}

/// `Link`: a hard link (quota of the new place checked).
pub async fn link(core: &Core, r: pb::LinkRequest) -> Result<pb::AttrReply, Status> {
    let tag = tag(r.session_id, r.tag.as_ref())?;
    core.mutate_as(r.session_id, |core, inner| {
        if let Some((v, reply)) = core.cached_reply(inner, tag)? {
            return Ok((Some(v), reply));
        }
        if let Ok(i) = inner.state.get(r.inode) {
            volumes::check_quota(
                &inner.state,
                i.parent,
                r.new_parent,
                volumes::subtree(&inner.state, r.inode),
                now_ns(),
            )?;
        }
        let op = Op::Link(pb::LinkOp {
            inode: r.inode,
            parent: r.new_parent,
            name: r.new_name.clone(),
        });
        let (v, reply) = core.commit_replied(inner, op, tag, |inner| {
            let mut reply = attr_reply(inner, r.inode)?;
            reply.parent = inner.state.attr(r.new_parent).ok();
            Ok(reply)
        })?;
        let mut reply = reply;
        reply.leased = inner
            .leases
            .grant(r.session_id, &[r.new_parent, r.inode], Instant::now());
        Ok((Some(v), reply))
    })
    .await
}

/// `Unlink` (`directory` false) and `Rmdir` (true): a file still open stays as
/// an orphan, the last link of a regular file goes to the trash when its
/// directory has a trash time.
pub async fn remove(
    core: &Core,
    r: pb::EntryRequest,
    directory: bool,
) -> Result<pb::EntryChangeReply, Status> {
    let tag = tag(r.session_id, r.tag.as_ref())?;
    core.mutate_as(r.session_id, |core, inner| {
        if let Some((v, reply)) = core.cached_reply(inner, tag)? {
            return Ok((Some(v), reply));
        }
        let child = inner.state.lookup(r.parent, &r.name).ok();
        let keep_orphan = child.is_some_and(|c| inner.sessions.is_open(c));
        let trash_secs = match child.and_then(|c| inner.state.inodes.get(&c)) {
            Some(i) if !directory && i.kind == FileType::Regular && i.nlink == 1 => {
                volumes::trash_secs(&inner.state, r.parent).0
            }
            _ => 0,
        };
        let op = Op::Unlink(pb::UnlinkOp {
            parent: r.parent,
            name: r.name.clone(),
            directory,
            keep_orphan,
            trash_secs,
        });
        let (v, mut reply) = core.commit_replied(inner, op, tag, |inner| {
            Ok(entry_change(inner, r.parent, r.parent))
        })?;
        reply.leased = inner
            .leases
            .grant(r.session_id, &[r.parent], Instant::now());
        Ok((Some(v), reply))
    })
    .await
}

/// `Rename` (quotas of the places the entries move to checked).
pub async fn rename(core: &Core, r: pb::RenameRequest) -> Result<pb::EntryChangeReply, Status> {
    let tag = tag(r.session_id, r.tag.as_ref())?;
    core.mutate_as(r.session_id, |core, inner| {
        if let Some((v, reply)) = core.cached_reply(inner, tag)? {
            return Ok((Some(v), reply));
        }
        let victim = inner
            .state
            .dir(r.new_parent)
            .ok()
            .and_then(|d| d.get(&r.new_name[..]).copied());
        let keep_orphan = victim.is_some_and(|v| inner.sessions.is_open(v));
        let now = now_ns();
        if let Some(src) = inner
            .state
            .dir(r.parent)
            .ok()
            .and_then(|d| d.get(&r.name[..]).copied())
        {
            let st = &inner.state;
            let from = st.get(src)?.parent;
            volumes::check_quota(st, from, r.new_parent, volumes::subtree(st, src), now)?;
            if let Some(v) = victim.filter(|_| r.flags & pb::RenameFlag::RenameExchange as u32 != 0)
            {
                let from = st.get(v)?.parent;
                volumes::check_quota(st, from, r.parent, volumes::subtree(st, v), now)?;
            }
        }
        let op = Op::Rename(pb::RenameOp {
            parent: r.parent,
            name: r.name.clone(),
            new_parent: r.new_parent,
            new_name: r.new_name.clone(),
            flags: r.flags,
            keep_orphan,
        });
        let (v, mut reply) = core.commit_replied(inner, op, tag, |inner| {
            Ok(entry_change(inner, r.parent, r.new_parent))
        })?;
        reply.leased = inner
            .leases
            .grant(r.session_id, &[r.parent, r.new_parent], Instant::now());
        Ok((Some(v), reply))
    })
    .await
}

/// `Readlink`.
pub fn readlink(core: &Core, inode: u64) -> Result<pb::ReadlinkReply, Status> {
    core.read(|i| {
        Ok(pb::ReadlinkReply {
            target: i.state.readlink(inode)?.to_vec(),
        })
    })
}

/// `Readdir`: a page of entries after `after_name`, with attributes when asked.
/// A `plus` page is leased like the Lookups it replaces: the session is
/// granted a lease on the directory's entries (the reply's `leased`) and,
/// while that holds, on each listed inode (the entry's `leased`), when its
/// lease stream is open; an inode broken a moment ago is not leased (see
/// [`crate::runtime::leases::HOT`]), the rest of the page still is.
pub fn readdir(core: &Core, r: &pb::ReaddirRequest) -> Result<pb::ReaddirReply, Status> {
    let limit = match r.limit as usize {
        0 => READDIR_DEFAULT,
        n => n.min(READDIR_MAX),
    };
    let now = Instant::now();
    core.locked(|i| {
        let (list, eof) = i.state.readdir(r.inode, &r.after_name, limit)?;
        let mut entries = Vec::with_capacity(list.len());
        for (name, ino) in list {
            let child = i.state.get(ino)?;
            entries.push(pb::DirEntry {
                name: name.to_vec(),
                inode: ino,
                kind: child.kind as i32,
                attr: r.plus.then(|| child.attr(ino)),
                leased: false,
            });
        }
        let parent = i.state.get(r.inode)?.parent;
        let leased = r.plus && i.leases.grant(r.session_id, &[r.inode], now);
        if leased {
            for e in &mut entries {
                e.leased = i.leases.grant(r.session_id, &[e.inode], now);
            }
        }
        Ok(pb::ReaddirReply {
            entries,
            eof,
            parent,
            leased,
        })
    })
}

/// `Statfs`: the cluster's space, or the nearest quota's limits above `inode`.
pub fn statfs(core: &Core, inode: u64) -> Result<pb::StatfsReply, Status> {
    core.read(|i| {
        let (total, _used, free) = i.chunks.space();
        let inodes = i.state.inodes.len() as u64;
        let mut reply = pb::StatfsReply {
            total_bytes: total,
            free_bytes: free,
            avail_bytes: free,
            total_inodes: MAX_INODES,
            free_inodes: MAX_INODES.saturating_sub(inodes),
        };
        if let Some((dir, q)) = volumes::quota_above(&i.state, inode) {
            quota_statfs(&i.state, dir, &q, &mut reply);
        }
        Ok(reply)
    })
}

/// `GetXattr`.
pub fn get_xattr(core: &Core, r: &pb::XattrRequest) -> Result<pb::XattrReply, Status> {
    core.read(|i| {
        check_xattr_name(&r.name)?;
        Ok(pb::XattrReply {
            value: i.state.getxattr(r.inode, &r.name)?.to_vec(),
        })
    })
}

/// `SetXattr`.
pub async fn set_xattr(core: &Core, r: pb::SetXattrRequest) -> Result<pb::Empty, Status> {
    let tag = tag(r.session_id, r.tag.as_ref())?;
    let op = Op::SetXattr(pb::SetXattrOp {
        inode: r.inode,
        name: r.name,
        value: r.value,
        flags: r.flags,
    });
    core.commit_as_once(r.session_id, op, tag, |_| Ok(pb::Empty {}))
        .await
}

/// `ListXattr`.
pub fn list_xattr(core: &Core, inode: u64) -> Result<pb::ListXattrReply, Status> {
    core.read(|i| {
        Ok(pb::ListXattrReply {
            names: i.state.listxattr(inode)?,
        })
    })
}

/// `RemoveXattr`.
pub async fn remove_xattr(core: &Core, r: pb::XattrRequest) -> Result<pb::Empty, Status> {
    let tag = tag(r.session_id, r.tag.as_ref())?;
    let op = Op::RemoveXattr(pb::RemoveXattrOp {
        inode: r.inode,
        name: r.name,
    });
    core.commit_as_once(r.session_id, op, tag, |_| Ok(pb::Empty {}))
        .await
}
