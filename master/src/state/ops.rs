//! Changelog operations: `prepare_*` decide every value of a mutation (inode
//! numbers, chunk ids, versions, final modes) from the current state, and
//! [`apply`] carries a [`ChangelogRecord`] out deterministically. The live master
//! and changelog replay (and metaloggers) use the same [`apply`].
//!
//! [`apply`] checks everything before it changes anything, so a refused record
//! leaves the state untouched.

use alces_proto::geometry::{MAX_FILE_SIZE, MAX_GOAL};
use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::{self, ChangelogRecord, FileType, SetAttrField};

use crate::state::error::{err, FsError, FsResult};
use crate::state::inode::{Body, Entries, Inode, Kind};
use crate::state::namespace::{
    check_name, show, ChunkMeta, State, Usage, MAX_LINKS, MAX_SYMLINK, MAX_XATTR_NAME,
    MAX_XATTR_VALUE,
};
use crate::state::volumes;

/// Linux XATTR_CREATE.
pub const XATTR_CREATE: u32 = 1;
/// Linux XATTR_REPLACE.
pub const XATTR_REPLACE: u32 = 2;
/// Every SetAttrField bit the master understands.
pub const SETATTR_KNOWN: u32 = 0x1ff;

const S_ISGID: u16 = 0o2000;

/// What applying a record freed, for the chunk bookkeeping outside the state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Chunks removed from the chunk table (their copies are to be deleted).
    pub freed_chunks: Vec<u64>,
}

/// Who asks for a new entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner {
    /// Caller uid.
    pub uid: u32,
    /// Caller gid.
    pub gid: u32,
}

/// A new inode as a caller asks for it (see [`prepare_create`]).
#[derive(Debug, Clone, Copy)]
pub struct NewInode<'a> {
    /// Directory of the new entry.
    pub parent: u64,
    /// Name of the new entry.
    pub name: &'a [u8],
    /// Kind of inode.
    pub kind: FileType,
    /// Permission bits asked for (before `umask`).
    pub mode: u32,
    /// The caller's umask.
    pub umask: u32,
    /// Device number (devices only).
    pub rdev: u64,
    /// Who creates it.
    pub owner: Owner,
    /// Symlink target (symlinks only).
    pub target: &'a [u8],
}

/// Decides a [`pb::CreateOp`]: the next inode number, the mode after umask, and
/// the owner with set-gid inheritance (gid of a set-gid parent; directories
/// inherit the set-gid bit).
pub fn prepare_create(st: &State, n: &NewInode) -> FsResult<Op> {
    let NewInode {
        parent,
        name,
        kind,
        mode,
        umask,
        rdev,
        owner,
        target,
    } = *n;
    let p = st.get(parent)?;
    if !p.is_dir() {
        return err(libc::ENOTDIR, format!("inode {parent} is not a directory"));
    }
    let mut mode = mode & !umask & 0o7777;
    let mut gid = owner.gid;
    if p.mode & S_ISGID != 0 {
        gid = p.gid;
        if kind == FileType::Directory {
            mode |= u32::from(S_ISGID);
        }
    }
    if kind == FileType::Symlink {
        mode = 0o777;
    }
    Ok(Op::Create(pb::CreateOp {
        parent,
        name: name.to_vec(),
        inode: st.next_inode,
        kind: kind as i32,
        mode,
        uid: owner.uid,
        gid,
        rdev,
        symlink_target: target.to_vec(),
    }))
}

/// Applies one changelog record. The record must carry the next metadata version.
pub fn apply(st: &mut State, rec: &ChangelogRecord) -> FsResult<Applied> {
    if rec.version != st.version + 1 {
        return err(
            libc::EINVAL,
            format!(
                "changelog record version {} does not follow metadata version {}",
                rec.version, st.version
            ),
        );
    }
    let t = rec.time_ns;
    let op = rec.op.as_ref().ok_or_else(|| {
        FsError::new(
            libc::EINVAL,
            "changelog record without an operation (a record of a newer version of Alces?)",
        )
    })?;
    if let Some(r) = &rec.reply {
        st.replies.check_new(r)?;
    }
    let mut applied = Applied::default();
    match op {
        Op::Create(o) => create(st, t, o)?,
        Op::Link(o) => link(st, t, o)?,
        Op::Unlink(o) => unlink(st, t, o, &mut applied)?,
        Op::Rename(o) => rename(st, t, o, &mut applied)?,
        Op::SetAttr(o) => set_attr(st, t, o, &mut applied)?,
        Op::SetXattr(o) => set_xattr(st, t, o)?,
        Op::RemoveXattr(o) => remove_xattr(st, t, o)?,
        Op::WriteChunk(o) => write_chunk(st, o)?,
        Op::WriteChunkEnd(o) => write_chunk_end(st, t, o)?,
        Op::Purge(o) => {
            let i = st.get(o.inode)?;
            if i.nlink != 0 {
                return err(
                    libc::EINVAL,
                    format!("inode {} still has links and cannot be purged", o.inode),
                );
            }
            free_inode(st, o.inode, &mut applied);
        }
        Op::SetChunkVersion(o) => {
            let c = st.chunks.get_mut(&o.chunk_id).ok_or_else(|| {
                FsError::new(libc::ENOENT, format!("chunk {} does not exist", o.chunk_id))
            })?;
            c.version = o.version;
        }
        Op::ReserveChunkId(o) => {
            if o.chunk_id == 0 || o.chunk_id < st.next_chunk_id {
                return err(
                    libc::EINVAL,
                    format!("chunk id {} is already used", o.chunk_id),
                );
            }
            st.next_chunk_id = o.chunk_id + 1;
        }
        Op::SetGoal(o) => set_goal(st, o)?,
        Op::SetQuota(o) => volumes::set_quota(st, t, o)?,
        Op::RemoveQuota(o) => volumes::remove_quota(st, o)?,
        Op::Snapshot(o) => volumes::snapshot(st, t, o)?,
        Op::SetTrashTime(o) => volumes::set_trash_time(st, o)?,
        Op::Restore(o) => volumes::restore(st, t, o)?,
        Op::SetDraining(o) => set_draining(st, o),
        Op::IssueCredential(o) => {
            let root_is_dir = st.get(o.root_inode).is_ok_and(|i| i.is_dir());
            st.credentials.issue(o, root_is_dir)?
        }
        Op::RevokeCredential(o) => st.credentials.revoke(o)?,
        Op::ForgetReplies(o) => {
            st.replies.forget(o.session_id);
        }
    }
    if let Some(r) = &rec.reply {
        st.replies.insert(rec.version, r);
    }
    st.version = rec.version;
    Ok(applied)
}

fn kind_of(k: i32) -> FsResult<Kind> {
    match Kind::from_wire(k) {
        Some(t) => Ok(t),
        None => err(libc::EINVAL, format!("unknown file type {k}")),
    }
}

/// Checks `parent` is a directory and `name` a valid, free entry name in it.
fn check_new_entry(st: &State, parent: u64, name: &[u8]) -> FsResult<()> {
    check_name(name)?;
    let entries = st.dir(parent)?;
    if entries.contains_key(name) {
        return err(
            libc::EEXIST,
            format!("'{}' already exists in directory {parent}", show(name)),
        );
    }
    Ok(())
}

fn touch_dir(st: &mut State, dir: u64, t: i64) {
    if let Some(d) = st.inodes.get_mut(&dir) {
        d.mtime = t;
        d.ctime = t;
    }
}

fn dir_entries_mut(st: &mut State, dir: u64) -> FsResult<&mut Entries> {
    match &mut st.get_mut(dir)?.body {
        Body::Dir(e) => Ok(e),
        _ => err(libc::ENOTDIR, format!("inode {dir} is not a directory")),
    }
}

fn create(st: &mut State, t: i64, o: &pb::CreateOp) -> FsResult<()> {
    let kind = kind_of(o.kind)?;
    check_new_entry(st, o.parent, &o.name)?;
    if o.inode < st.next_inode || st.inodes.contains_key(&o.inode) {
        return err(
            libc::EINVAL,
            format!("inode number {} is already used", o.inode),
        );
    }
    let body = match kind {
        Kind::Regular => Body::File(thin_vec::ThinVec::new()),
        Kind::Directory => Body::Dir(Box::default()),
        Kind::Symlink => {
            if o.symlink_target.is_empty() {
                return err(libc::ENOENT, "symbolic link target is empty");
            }
            if o.symlink_target.len() > MAX_SYMLINK {
                return err(
                    libc::ENAMETOOLONG,
                    format!(
                        "symbolic link target is {} bytes, the limit is {MAX_SYMLINK}",
                        o.symlink_target.len()
                    ),
                );
            }
            if o.symlink_target.contains(&0) {
                return err(libc::EINVAL, "symbolic link target contains NUL");
            }
            Body::Symlink(o.symlink_target.as_slice().into())
        }
        Kind::CharDevice | Kind::BlockDevice => Body::Device(o.rdev),
        Kind::Fifo | Kind::Socket => Body::Special,
    };
    let parent = st.get(o.parent)?;
    let goal = parent.goal;
    let is_dir = kind == Kind::Directory;
    let size = match &body {
        Body::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    let inode = Inode {
        kind,
        mode: (o.mode & 0o7777) as u16,
        goal,
        nlink: if is_dir { 2 } else { 1 },
        uid: o.uid,
        gid: o.gid,
        size,
        atime: t,
        mtime: t,
        ctime: t,
        parent: o.parent,
        body,
        xattrs: None,
    };
    st.inodes.insert(o.inode, inode);
    st.next_inode = o.inode + 1;
    dir_entries_mut(st, o.parent)?.insert(o.name.as_slice().into(), o.inode);
    if is_dir {
        st.get_mut(o.parent)?.nlink += 1;
        st.usage.insert(o.inode, Usage::default());
    }
    volumes::add(
        st,
        o.parent,
        Usage {
            bytes: size,
            inodes: 1,
        },
        t,
    );
    touch_dir(st, o.parent, t);
    Ok(())
}

fn link(st: &mut State, t: i64, o: &pb::LinkOp) -> FsResult<()> {
    let i = st.get(o.inode)?;
    if i.is_dir() {
        return err(
            libc::EPERM,
            format!(
                "inode {} is a directory: directories cannot be hard-linked",
                o.inode
            ),
        );
    }
    if i.nlink == 0 {
        return err(libc::ENOENT, format!("inode {} has been removed", o.inode));
    }
    if i.nlink >= MAX_LINKS {
        return err(
            libc::EMLINK,
            format!("inode {} has too many links", o.inode),
        );
    }
    check_new_entry(st, o.parent, &o.name)?;
    let i = st.get_mut(o.inode)?;
    i.nlink += 1;
    i.ctime = t;
    let (old_parent, u) = (
        i.parent,
        Usage {
            bytes: volumes::charged_bytes(i),
            inodes: 1,
        },
    );
    i.parent = o.parent;
    volumes::sub(st, old_parent, u, t);
    volumes::add(st, o.parent, u, t);
    dir_entries_mut(st, o.parent)?.insert(o.name.as_slice().into(), o.inode);
    touch_dir(st, o.parent, t);
    Ok(())
}

/// Removes one link of `ino` (a removed directory loses all); frees it or keeps it
/// as an orphan when no link is left.
fn drop_link(
    st: &mut State,
    ino: u64,
    from: u64,
    t: i64,
    keep_orphan: bool,
    applied: &mut Applied,
) {
    let Some(i) = st.inodes.get_mut(&ino) else {
        return;
    };
    let charged_to = i.parent;
    let u = Usage {
        bytes: volumes::charged_bytes(i),
        inodes: 1,
    };
    if i.is_dir() {
        i.nlink = 0;
        volumes::sub(st, charged_to, u, t);
        free_inode(st, ino, applied);
        return;
    }
    i.nlink = i.nlink.saturating_sub(1);
    i.ctime = t;
    if i.nlink > 0
        && charged_to == from
        && !st.dir(from).is_ok_and(|e| e.values().any(|&c| c == ino))
    {
        // The link the file was charged to is gone: charge the directory of
        // another link (found by a scan; only multiply-linked files need it).
        let other = st
            .inodes
            .iter()
            .filter_map(|(d, i)| i.entries().map(|e| (d, e)))
            .filter(|(_, e)| e.values().any(|&c| c == ino))
            .map(|(d, _)| d)
            .min();
        if let Some(other) = other {
            volumes::sub(st, from, u, t);
            volumes::add(st, other, u, t);
            if let Some(i) = st.inodes.get_mut(&ino) {
                i.parent = other;
            }
        }
    }
    if st.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
        volumes::sub(st, charged_to, u, t);
        if keep_orphan {
            st.orphans.insert(ino);
        } else {
            free_inode(st, ino, applied);
        }
    }
}

fn free_inode(st: &mut State, ino: u64, applied: &mut Applied) {
    st.orphans.remove(&ino);
    volumes::forget(st, ino);
    if let Some(i) = st.inodes.remove(&ino) {
        if let Body::File(chunks) = i.body {
            for c in chunks.into_iter().filter(|&c| c != 0) {
                volumes::release_chunk(st, c, &mut applied.freed_chunks);
            }
        }
    }
}

fn unlink(st: &mut State, t: i64, o: &pb::UnlinkOp, applied: &mut Applied) -> FsResult<()> {
    check_name(&o.name)?;
    let child = st.lookup(o.parent, &o.name)?;
    let c = st.get(child)?;
    if o.directory {
        match c.entries() {
            None => {
                return err(
                    libc::ENOTDIR,
                    format!("'{}' is not a directory", show(&o.name)),
                )
            }
            Some(e) if !e.is_empty() => {
                return err(
                    libc::ENOTEMPTY,
                    format!("directory '{}' is not empty", show(&o.name)),
                )
            }
            Some(_) => {}
        }
    } else if c.is_dir() {
        return err(
            libc::EISDIR,
            format!("'{}' is a directory: use rmdir", show(&o.name)),
        );
    }
    let is_dir = c.is_dir();
    let to_trash = o.trash_secs > 0 && c.kind == FileType::Regular && c.nlink == 1;
    dir_entries_mut(st, o.parent)?.remove(&o.name[..]);
    if is_dir {
        let p = st.get_mut(o.parent)?;
        p.nlink = p.nlink.saturating_sub(1);
    }
    touch_dir(st, o.parent, t);
    if to_trash {
        let i = st.get_mut(child)?;
        i.nlink = 0;
        i.ctime = t;
        let (charged_to, u) = (
            i.parent,
            Usage {
                bytes: volumes::charged_bytes(i),
                inodes: 1,
            },
        );
        volumes::sub(st, charged_to, u, t);
        volumes::trash(st, child, o.parent, &o.name, t, o.trash_secs);
        return Ok(());
    }
    drop_link(st, child, o.parent, t, o.keep_orphan, applied);
    Ok(())
}

fn rename(st: &mut State, t: i64, o: &pb::RenameOp, applied: &mut Applied) -> FsResult<()> {
    let noreplace = o.flags & pb::RenameFlag::RenameNoreplace as u32 != 0;
    let exchange = o.flags & pb::RenameFlag::RenameExchange as u32 != 0;
    if o.flags & !3 != 0 || (noreplace && exchange) {
        return err(libc::EINVAL, format!("invalid rename flags {:#x}", o.flags));
    }
    check_name(&o.name)?;
    check_name(&o.new_name)?;
    st.dir(o.parent)?;
    st.dir(o.new_parent)?;
    let src = st.lookup(o.parent, &o.name)?;
    let dst = st.dir(o.new_parent)?.get(&o.new_name[..]).copied();
    let src_dir = st.get(src)?.is_dir();
    // Checks in the order Linux makes them: NOREPLACE, EXCHANGE without a
    // target, source an ancestor of the target, target an ancestor of the source.
    if noreplace && dst.is_some() {
        return err(
            libc::EEXIST,
            format!("'{}' already exists (RENAME_NOREPLACE)", show(&o.new_name)),
        );
    }
    if exchange && dst.is_none() {
        return err(
            libc::ENOENT,
            format!(
                "'{}' does not exist: RENAME_EXCHANGE needs both names",
                show(&o.new_name)
            ),
        );
    }
    if src_dir && st.is_ancestor(src, o.new_parent) {
        return err(
            libc::EINVAL,
            format!("cannot move directory '{}' into itself", show(&o.name)),
        );
    }
    if let Some(dst) = dst {
        if dst != src && st.get(dst)?.is_dir() && st.is_ancestor(dst, o.parent) {
            return if exchange {
                err(
                    libc::EINVAL,
                    format!("cannot move directory '{}' into itself", show(&o.new_name)),
                )
            } else {
                err(
                    libc::ENOTEMPTY,
                    format!("'{}' is an ancestor of the source", show(&o.new_name)),
                )
            };
        }
    }
    if exchange {
        let Some(dst) = dst else {
            return err(libc::ENOENT, "RENAME_EXCHANGE needs both names");
        };
        let dst_dir = st.get(dst)?.is_dir();
        if src == dst {
            return Ok(());
        }
        let (src_from, src_u) = (st.get(src)?.parent, volumes::subtree(st, src));
        let (dst_from, dst_u) = (st.get(dst)?.parent, volumes::subtree(st, dst));
        volumes::sub(st, src_from, src_u, t);
        volumes::sub(st, dst_from, dst_u, t);
        dir_entries_mut(st, o.parent)?.insert(o.name.as_slice().into(), dst);
        dir_entries_mut(st, o.new_parent)?.insert(o.new_name.as_slice().into(), src);
        if o.parent != o.new_parent && src_dir != dst_dir {
            // One directory moves each way: the parents' link counts follow.
            let (to_new, to_old) = if src_dir { (1i64, -1i64) } else { (-1, 1) };
            adjust_nlink(st, o.new_parent, to_new);
            adjust_nlink(st, o.parent, to_old);
        }
        if let Some(i) = st.inodes.get_mut(&src) {
            i.parent = o.new_parent;
            i.ctime = t;
        }
        if let Some(i) = st.inodes.get_mut(&dst) {
            i.parent = o.parent;
            i.ctime = t;
        }
        volumes::add(st, o.new_parent, src_u, t);
        volumes::add(st, o.parent, dst_u, t);
        touch_dir(st, o.parent, t);
        touch_dir(st, o.new_parent, t);
        return Ok(());
    }
    if let Some(dst) = dst {
        if src == dst {
            return Ok(());
        }
        let d = st.get(dst)?;
        match (src_dir, d.entries()) {
            (true, None) => {
                return err(
                    libc::ENOTDIR,
                    format!("'{}' is not a directory", show(&o.new_name)),
                )
            }
            (false, Some(_)) => {
                return err(
                    libc::EISDIR,
                    format!("'{}' is a directory", show(&o.new_name)),
                )
            }
            (true, Some(e)) if !e.is_empty() => {
                return err(
                    libc::ENOTEMPTY,
                    format!("directory '{}' is not empty", show(&o.new_name)),
                )
            }
            _ => {}
        }
        // Replace the target.
        dir_entries_mut(st, o.new_parent)?.remove(&o.new_name[..]);
        if src_dir {
            adjust_nlink(st, o.new_parent, -1);
        }
        drop_link(st, dst, o.new_parent, t, o.keep_orphan, applied);
    }
    let (src_from, src_u) = (st.get(src)?.parent, volumes::subtree(st, src));
    volumes::sub(st, src_from, src_u, t);
    dir_entries_mut(st, o.parent)?.remove(&o.name[..]);
    dir_entries_mut(st, o.new_parent)?.insert(o.new_name.as_slice().into(), src);
    if src_dir {
        adjust_nlink(st, o.parent, -1);
        adjust_nlink(st, o.new_parent, 1);
    }
    if let Some(i) = st.inodes.get_mut(&src) {
        i.parent = o.new_parent;
        i.ctime = t;
    }
    volumes::add(st, o.new_parent, src_u, t);
    touch_dir(st, o.parent, t);
    touch_dir(st, o.new_parent, t);
    Ok(())
}

fn adjust_nlink(st: &mut State, ino: u64, delta: i64) {
    if let Some(i) = st.inodes.get_mut(&ino) {
        i.nlink = (i64::from(i.nlink) + delta).clamp(0, i64::from(u32::MAX)) as u32;
    }
}

fn set_attr(st: &mut State, t: i64, o: &pb::SetAttrOp, applied: &mut Applied) -> FsResult<()> {
    if o.valid & !SETATTR_KNOWN != 0 {
        return err(libc::EINVAL, format!("unknown SetAttr bits {:#x}", o.valid));
    }
    let chunk_size = st.chunk_size.max(1);
    let has = |f: SetAttrField| o.valid & f as u32 != 0;
    let i = st.get(o.inode)?;
    if has(SetAttrField::SetAttrSize) {
        match i.kind {
            Kind::Regular => {}
            Kind::Directory => {
                return err(libc::EISDIR, format!("inode {} is a directory", o.inode))
            }
            _ => {
                return err(
                    libc::EINVAL,
                    format!(
                        "inode {} is not a regular file: its size cannot change",
                        o.inode
                    ),
                )
            }
        }
        if o.size > MAX_FILE_SIZE {
            return err(
                libc::EFBIG,
                format!("size {} is larger than the limit {MAX_FILE_SIZE}", o.size),
            );
        }
    }
    let mut freed = Vec::new();
    let i = st.get_mut(o.inode)?;
    let (old_size, linked, charged_to) = (i.size, i.nlink > 0, i.parent);
    if has(SetAttrField::SetAttrMode) {
        i.mode = (o.mode & 0o7777) as u16;
    }
    if has(SetAttrField::SetAttrUid) {
        i.uid = o.uid;
    }
    if has(SetAttrField::SetAttrGid) {
        i.gid = o.gid;
    }
    if has(SetAttrField::SetAttrSize) {
        if let Body::File(chunks) = &mut i.body {
            let keep = o.size.div_ceil(chunk_size);
            if (chunks.len() as u64) > keep {
                freed.extend(chunks.drain(keep as usize..).filter(|&c| c != 0));
            }
            while chunks.last() == Some(&0) {
                chunks.pop();
            }
        }
        i.size = o.size;
        i.mtime = t;
    }
    if has(SetAttrField::SetAttrAtimeNow) {
        i.atime = t;
    } else if has(SetAttrField::SetAttrAtime) {
        i.atime = o.atime_ns;
    }
    if has(SetAttrField::SetAttrMtimeNow) {
        i.mtime = t;
    } else if has(SetAttrField::SetAttrMtime) {
        i.mtime = o.mtime_ns;
    }
    i.ctime = if has(SetAttrField::SetAttrCtime) {
        o.ctime_ns
    } else {
        t
    };
    let new_size = i.size;
    for c in freed {
        volumes::release_chunk(st, c, &mut applied.freed_chunks);
    }
    if linked && new_size != old_size {
        let d = i64::try_from(new_size).unwrap_or(i64::MAX)
            - i64::try_from(old_size).unwrap_or(i64::MAX);
        volumes::charge(st, charged_to, d, 0, t);
    }
    Ok(())
}

/// Checks an xattr name (1..=255 bytes, no NUL): ERANGE as Linux.
pub fn check_xattr_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME {
        return err(
            libc::ERANGE,
            format!(
                "extended attribute name is {} bytes; it must be 1..={MAX_XATTR_NAME}",
                name.len()
            ),
        );
    }
    if name.contains(&0) {
        return err(libc::EINVAL, "extended attribute name contains NUL");
    }
    Ok(())
}

fn set_xattr(st: &mut State, t: i64, o: &pb::SetXattrOp) -> FsResult<()> {
    check_xattr_name(&o.name)?;
    if o.value.len() > MAX_XATTR_VALUE {
        return err(
            libc::E2BIG,
            format!(
                "extended attribute value is {} bytes, the limit is {MAX_XATTR_VALUE}",
                o.value.len()
            ),
        );
    }
    if o.flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || o.flags == XATTR_CREATE | XATTR_REPLACE {
        return err(
            libc::EINVAL,
            format!("invalid setxattr flags {:#x}", o.flags),
        );
    }
    let i = st.get_mut(o.inode)?;
    let exists = i
        .xattrs
        .as_ref()
        .is_some_and(|x| x.contains_key(&o.name[..]));
    if o.flags == XATTR_CREATE && exists {
        return err(
            libc::EEXIST,
            format!("extended attribute '{}' already exists", show(&o.name)),
        );
    }
    if o.flags == XATTR_REPLACE && !exists {
        return err(
            libc::ENODATA,
            format!("extended attribute '{}' does not exist", show(&o.name)),
        );
    }
    i.xattrs.get_or_insert_with(Default::default).insert(
        o.name.clone().into_boxed_slice(),
        o.value.clone().into_boxed_slice(),
    );
    i.ctime = t;
    Ok(())
}

fn remove_xattr(st: &mut State, t: i64, o: &pb::RemoveXattrOp) -> FsResult<()> {
    check_xattr_name(&o.name)?;
    let i = st.get_mut(o.inode)?;
    let removed = i.xattrs.as_mut().and_then(|x| x.remove(&o.name[..]));
    if removed.is_none() {
        return err(
            libc::ENODATA,
            format!("extended attribute '{}' does not exist", show(&o.name)),
        );
    }
    if i.xattrs.as_ref().is_some_and(|x| x.is_empty()) {
        i.xattrs = None;
    }
    i.ctime = t;
    Ok(())
}

/// Checks a goal given by an administrator.
pub fn check_goal(goal: u32) -> FsResult<()> {
    if goal == 0 || goal > MAX_GOAL {
        return err(
            libc::EINVAL,
            format!("goal {goal} is out of range: a goal is the number of copies, 1 to {MAX_GOAL}"),
        );
    }
    Ok(())
}

/// Applies a `SetGoal` op (validated fully before anything changes).
fn set_goal(st: &mut State, o: &pb::SetGoalOp) -> FsResult<()> {
    check_goal(o.goal)?;
    for i in &o.inodes {
        st.get(*i)?;
    }
    for i in &o.inodes {
        st.get_mut(*i)?.goal = o.goal as u8;
    }
    Ok(())
}

/// Applies a logged drain change (master, replay and metaloggers alike).
fn set_draining(st: &mut State, o: &pb::SetDrainingOp) {
    if o.draining {
        st.draining.insert(o.server_id);
    } else {
        st.draining.remove(&o.server_id);
    }
}

/// Checks that `ino` is a regular file (EISDIR / EINVAL otherwise).
pub fn check_regular(st: &State, ino: u64) -> FsResult<&Inode> {
    let i = st.get(ino)?;
    match i.kind {
        Kind::Regular => Ok(i),
        Kind::Directory => err(libc::EISDIR, format!("inode {ino} is a directory")),
        _ => err(libc::EINVAL, format!("inode {ino} is not a regular file")),
    }
}

fn write_chunk(st: &mut State, o: &pb::WriteChunkOp) -> FsResult<()> {
    check_regular(st, o.inode)?;
    if o.chunk_index >= st.max_chunk_index() {
        return err(
            libc::EFBIG,
            format!(
                "chunk index {} is past the largest file size",
                o.chunk_index
            ),
        );
    }
    let idx = o.chunk_index as usize;
    let current = st
        .get(o.inode)?
        .chunks()
        .and_then(|c| c.get(idx).copied())
        .unwrap_or(0);
    if o.created {
        if o.copy_from_chunk_id != 0 {
            if current != o.copy_from_chunk_id {
                return err(
                    libc::EINVAL,
                    format!(
                        "chunk {} of inode {} is not chunk {}",
                        o.chunk_index, o.inode, o.copy_from_chunk_id
                    ),
                );
            }
        } else if current != 0 {
            return err(
                libc::EINVAL,
                format!(
                    "chunk {} of inode {} already exists",
                    o.chunk_index, o.inode
                ),
            );
        }
        // A copy-on-write copy is made under an id reserved before
        // (`ReserveChunkIdOp`), so its id is below `next_chunk_id`.
        let reserved = o.copy_from_chunk_id != 0 && o.chunk_id < st.next_chunk_id;
        if o.chunk_id == 0
            || (o.chunk_id < st.next_chunk_id && !reserved)
            || st.chunks.contains_key(&o.chunk_id)
        {
            return err(
                libc::EINVAL,
                format!("chunk id {} is already used", o.chunk_id),
            );
        }
        let goal = st.get(o.inode)?.goal;
        if o.copy_from_chunk_id != 0 {
            let mut unused = Vec::new();
            volumes::release_chunk(st, o.copy_from_chunk_id, &mut unused);
        }
        st.next_chunk_id = st.next_chunk_id.max(o.chunk_id + 1);
        st.chunks.insert(
            o.chunk_id,
            ChunkMeta {
                version: o.version,
                inode: o.inode,
                refs: 1,
                goal,
            },
        );
        if let Body::File(chunks) = &mut st.get_mut(o.inode)?.body {
            if chunks.len() <= idx {
                chunks.resize(idx + 1, 0);
            }
            chunks[idx] = o.chunk_id;
        }
    } else {
        if current != o.chunk_id || current == 0 {
            return err(
                libc::EINVAL,
                format!(
                    "chunk {} of inode {} is not chunk {}",
                    o.chunk_index, o.inode, o.chunk_id
                ),
            );
        }
        let c = st.chunks.get_mut(&o.chunk_id).ok_or_else(|| {
            FsError::new(libc::ENOENT, format!("chunk {} does not exist", o.chunk_id))
        })?;
        c.version = o.version;
    }
    Ok(())
}

fn write_chunk_end(st: &mut State, t: i64, o: &pb::WriteChunkEndOp) -> FsResult<()> {
    check_regular(st, o.inode)?;
    if o.file_size > MAX_FILE_SIZE {
        return err(
            libc::EFBIG,
            format!(
                "size {} is larger than the limit {MAX_FILE_SIZE}",
                o.file_size
            ),
        );
    }
    let i = st.get_mut(o.inode)?;
    let grown = o.file_size.saturating_sub(i.size);
    let (linked, charged_to) = (i.nlink > 0, i.parent);
    i.size = i.size.max(o.file_size);
    if linked && grown > 0 {
        volumes::charge(
            st,
            charged_to,
            i64::try_from(grown).unwrap_or(i64::MAX),
            0,
            t,
        );
    }
    let i = st.get_mut(o.inode)?;
    if o.modified {
        i.mtime = t;
        i.ctime = t;
    }
    Ok(())
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
