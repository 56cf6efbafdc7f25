//! What a directory needs to serve as a volume: quotas with incremental usage,
//! the trash, copy-on-write snapshots and the consistency check.
//!
//! Usage accounting: every directory has the recursive usage of its subtree in
//! [`State::usage`] (bytes = sum of the logical sizes of regular files and
//! symlinks, so a sparse file counts its full size; inodes = every inode below
//! it). A file is charged to the directory in its `parent` field (the directory
//! of its latest link), so a hard-linked file counts once. Orphans and trashed
//! files are charged nowhere. Every change walks the parent chain once (O(depth)),
//! never the tree.

use std::collections::{HashMap, VecDeque};

use alces_proto::pb::{self, FileType};

use crate::state::error::{err, FsResult};
use crate::state::inode::{Body, Inode, Name};
use crate::state::namespace::{
    check_name, show, Quota, State, Trashed, Usage, MAX_INODES, ROOT_INODE,
};

/// Trash time of a directory without its own setting or an ancestor's.
pub const DEFAULT_TRASH_SECS: u64 = 24 * 3600;
/// Largest byte limit a quota accepts (1 EiB).
pub const MAX_QUOTA_BYTES: u64 = 1 << 60;
/// Largest inode limit a quota accepts.
pub const MAX_QUOTA_INODES: u64 = MAX_INODES;
/// Longest trash time (10 years).
pub const MAX_TRASH_SECS: u64 = 10 * 365 * 24 * 3600;
/// Longest soft-limit grace period (1 year).
pub const MAX_GRACE_SECS: u64 = 365 * 24 * 3600;

/// Bytes an inode is charged for.
pub fn charged_bytes(i: &Inode) -> u64 {
    if i.is_dir() {
        0
    } else {
        i.size
    }
}

/// Usage of the subtree at `ino` including itself.
pub fn subtree(st: &State, ino: u64) -> Usage {
    match st.inodes.get(&ino) {
        Some(i) if i.is_dir() => {
            let u = st.usage.get(&ino).copied().unwrap_or_default();
            Usage {
                bytes: u.bytes,
                inodes: u.inodes + 1,
            }
        }
        Some(i) => Usage {
            bytes: charged_bytes(i),
            inodes: 1,
        },
        None => Usage::default(),
    }
}

/// Adds `bytes`/`inodes` (may be negative) to directory `dir` and every
/// ancestor; updates the soft-limit state of quotas on the way at time `t`.
pub fn charge(st: &mut State, dir: u64, bytes: i64, inodes: i64, t: i64) {
    if bytes == 0 && inodes == 0 {
        return;
    }
    let mut cur = dir;
    for _ in 0..=st.inodes.len() {
        let Some(i) = st.inodes.get(&cur) else {
            return;
        };
        if !i.is_dir() {
            return;
        }
        let parent = i.parent;
        let u = st.usage.entry(cur).or_default();
        u.bytes = u.bytes.saturating_add_signed(bytes);
        u.inodes = u.inodes.saturating_add_signed(inodes);
        let u = *u;
        if let Some(q) = st.quotas.get_mut(&cur) {
            if q.soft_exceeded(u) {
                if q.soft_since == 0 {
                    q.soft_since = t;
                }
            } else {
                q.soft_since = 0;
            }
        }
        if cur == ROOT_INODE {
            return;
        }
        cur = parent;
    }
}

fn signed(u: Usage) -> (i64, i64) {
    (
        i64::try_from(u.bytes).unwrap_or(i64::MAX),
        i64::try_from(u.inodes).unwrap_or(i64::MAX),
    )
}

/// Charges `u` to `dir` and its ancestors.
pub fn add(st: &mut State, dir: u64, u: Usage, t: i64) {
    let (b, i) = signed(u);
    charge(st, dir, b, i, t);
}

/// Removes `u` from `dir` and its ancestors.
pub fn sub(st: &mut State, dir: u64, u: Usage, t: i64) {
    let (b, i) = signed(u);
    charge(st, dir, -b, -i, t);
}

/// Directories from `dir` up to the root.
fn ancestors(st: &State, dir: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut cur = dir;
    for _ in 0..=st.inodes.len() {
        out.push(cur);
        if cur == ROOT_INODE {
            break;
        }
        match st.inodes.get(&cur) {
            Some(i) => cur = i.parent,
            None => break,
        }
    }
    out
}

/// Checks that adding `add` under `to` (coming from `from`, 0 = new) keeps every
/// quota whose tree gains it within its limits at time `now` (EDQUOT).
pub fn check_quota(st: &State, from: u64, to: u64, add: Usage, now: i64) -> FsResult<()> {
    if st.quotas.is_empty() || (add.bytes == 0 && add.inodes == 0) {
        return Ok(());
    }
    let old = if from == 0 {
        Vec::new()
    } else {
        ancestors(st, from)
    };
    for d in ancestors(st, to) {
        if old.contains(&d) {
            break;
        }
        let Some(q) = st.quotas.get(&d) else {
            continue;
        };
        let u = st.usage.get(&d).copied().unwrap_or_default();
        let after = Usage {
            bytes: u.bytes.saturating_add(add.bytes),
            inodes: u.inodes.saturating_add(add.inodes),
        };
        let over = |limit: u64, used: u64, adds: u64| limit > 0 && adds > 0 && used > limit;
        let path = || path_of(st, d);
        if over(q.hard_bytes, after.bytes, add.bytes) {
            return err(
                libc::EDQUOT,
                format!(
                    "quota of '{}' exceeded: {} of {} bytes used, {} more asked",
                    path(),
                    u.bytes,
                    q.hard_bytes,
                    add.bytes
                ),
            );
        }
        if over(q.hard_inodes, after.inodes, add.inodes) {
            return err(
                libc::EDQUOT,
                format!(
                    "quota of '{}' exceeded: {} of {} inodes used",
                    path(),
                    u.inodes,
                    q.hard_inodes
                ),
            );
        }
        let grace_over = q.soft_since != 0
            && now.saturating_sub(q.soft_since)
                > i64::try_from(q.grace_secs.saturating_mul(1_000_000_000)).unwrap_or(i64::MAX);
        if grace_over
            && (over(q.soft_bytes, after.bytes, add.bytes)
                || over(q.soft_inodes, after.inodes, add.inodes))
        {
            return err(
                libc::EDQUOT,
                format!(
                    "soft quota of '{}' exceeded for longer than its grace period of {} s",
                    path(),
                    q.grace_secs
                ),
            );
        }
    }
    Ok(())
}

/// The nearest quota at or above `ino`: (directory, quota).
pub fn quota_above(st: &State, ino: u64) -> Option<(u64, Quota)> {
    let start = match st.inodes.get(&ino) {
        Some(i) if !i.is_dir() => i.parent,
        _ => ino,
    };
    ancestors(st, start)
        .into_iter()
        .find_map(|d| st.quotas.get(&d).map(|q| (d, *q)))
}

/// Trash time in force for files deleted from directory `dir`.
pub fn trash_secs(st: &State, dir: u64) -> (u64, bool) {
    for (n, d) in ancestors(st, dir).into_iter().enumerate() {
        if let Some(s) = st.trash_times.get(&d) {
            return (*s, n == 0);
        }
    }
    (DEFAULT_TRASH_SECS, false)
}

/// Absolute path of `ino` from the filesystem root (via parent links).
pub fn path_of(st: &State, ino: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = ino;
    for _ in 0..=st.inodes.len() {
        if cur == ROOT_INODE {
            break;
        }
        let Some(i) = st.inodes.get(&cur) else {
            break;
        };
        let name = st
            .inodes
            .get(&i.parent)
            .and_then(|p| p.entries())
            .and_then(|e| e.iter().find(|(_, c)| **c == cur).map(|(n, _)| show(n)))
            .unwrap_or_else(|| format!("#{cur}"));
        parts.push(name);
        cur = i.parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// Drops one reference of chunk `id`; at zero the chunk leaves the chunk table
/// and its id is added to `freed`.
pub fn release_chunk(st: &mut State, id: u64, freed: &mut Vec<u64>) {
    if id == 0 {
        return;
    }
    if let Some(c) = st.chunks.get_mut(&id) {
        c.refs = c.refs.saturating_sub(1);
        if c.refs == 0 {
            st.chunks.remove(&id);
            freed.push(id);
        }
    }
}

/// Applies [`pb::SetQuotaOp`].
pub fn set_quota(st: &mut State, t: i64, o: &pb::SetQuotaOp) -> FsResult<()> {
    check_limits(o)?;
    if !st.get(o.inode)?.is_dir() {
        return err(
            libc::ENOTDIR,
            format!(
                "'{}' is not a directory: quotas apply to directories",
                path_of(st, o.inode)
            ),
        );
    }
    let prev = st.quotas.get(&o.inode).map_or(0, |q| q.soft_since);
    let mut q = Quota {
        soft_bytes: o.soft_bytes,
        hard_bytes: o.hard_bytes,
        soft_inodes: o.soft_inodes,
        hard_inodes: o.hard_inodes,
        grace_secs: o.grace_secs,
        soft_since: 0,
    };
    let u = st.usage.get(&o.inode).copied().unwrap_or_default();
    if q.soft_exceeded(u) {
        q.soft_since = if prev != 0 { prev } else { t };
    }
    st.quotas.insert(o.inode, q);
    Ok(())
}

/// Checks quota limits for sense: something limited, soft <= hard, no absurd values.
pub fn check_limits(o: &pb::SetQuotaOp) -> FsResult<()> {
    if o.soft_bytes == 0 && o.hard_bytes == 0 && o.soft_inodes == 0 && o.hard_inodes == 0 {
        return err(
            libc::EINVAL,
            "a quota needs at least one limit (bytes or inodes, soft or hard)",
        );
    }
    for (what, v, max) in [
        ("soft byte limit", o.soft_bytes, MAX_QUOTA_BYTES),
        ("hard byte limit", o.hard_bytes, MAX_QUOTA_BYTES),
        ("soft inode limit", o.soft_inodes, MAX_QUOTA_INODES),
        ("hard inode limit", o.hard_inodes, MAX_QUOTA_INODES),
        ("grace period", o.grace_secs, MAX_GRACE_SECS),
    ] {
        if v > max {
            return err(
                libc::EINVAL,
                format!("{what} {v} is larger than the largest accepted, {max}"),
            );
        }
    }
    if o.hard_bytes > 0 && o.soft_bytes > o.hard_bytes {
        return err(
            libc::EINVAL,
            format!(
                "soft byte limit {} is above the hard limit {}",
                o.soft_bytes, o.hard_bytes
            ),
        );
    }
    if o.hard_inodes > 0 && o.soft_inodes > o.hard_inodes {
        return err(
            libc::EINVAL,
            format!(
                "soft inode limit {} is above the hard limit {}",
                o.soft_inodes, o.hard_inodes
            ),
        );
    }
    Ok(())
}

/// Applies [`pb::RemoveQuotaOp`].
pub fn remove_quota(st: &mut State, o: &pb::RemoveQuotaOp) -> FsResult<()> {
    if st.quotas.remove(&o.inode).is_none() {
        return err(
            libc::ENOENT,
            format!("'{}' has no quota", path_of(st, o.inode)),
        );
    }
    Ok(())
}

/// Applies [`pb::SetTrashTimeOp`].
pub fn set_trash_time(st: &mut State, o: &pb::SetTrashTimeOp) -> FsResult<()> {
    if !st.get(o.inode)?.is_dir() {
        return err(
            libc::ENOTDIR,
            format!(
                "'{}' is not a directory: trash times apply to directories",
                path_of(st, o.inode)
            ),
        );
    }
    if o.seconds > MAX_TRASH_SECS {
        return err(
            libc::EINVAL,
            format!(
                "trash time {} s is longer than the longest accepted, {MAX_TRASH_SECS} s",
                o.seconds
            ),
        );
    }
    st.trash_times.insert(o.inode, o.seconds);
    Ok(())
}

/// Moves regular file `ino` (its last link just removed from `parent`) to the
/// trash for `secs` seconds.
pub fn trash(st: &mut State, ino: u64, parent: u64, name: &[u8], t: i64, secs: u64) {
    let dir = path_of(st, parent);
    let path = if dir == "/" {
        format!("/{}", show(name))
    } else {
        format!("{dir}/{}", show(name))
    };
    let expires =
        t.saturating_add(i64::try_from(secs.saturating_mul(1_000_000_000)).unwrap_or(i64::MAX));
    st.trash.insert(
        ino,
        Trashed {
            path: path.into_boxed_str(),
            deleted: t,
            expires,
        },
    );
}

/// Applies [`pb::RestoreOp`].
pub fn restore(st: &mut State, t: i64, o: &pb::RestoreOp) -> FsResult<()> {
    if !st.trash.contains_key(&o.inode) {
        return err(
            libc::ENOENT,
            format!(
                "trash id {} does not exist (see `alces trash list`)",
                o.inode
            ),
        );
    }
    check_name(&o.name)?;
    if st.dir(o.parent)?.contains_key(&o.name[..]) {
        return err(
            libc::EEXIST,
            format!(
                "'{}' already exists in '{}': restore under another name",
                show(&o.name),
                path_of(st, o.parent)
            ),
        );
    }
    st.trash.remove(&o.inode);
    let i = st.get_mut(o.inode)?;
    i.nlink = 1;
    i.parent = o.parent;
    i.ctime = t;
    let u = Usage {
        bytes: charged_bytes(i),
        inodes: 1,
    };
    if let Body::Dir(e) = &mut st.get_mut(o.parent)?.body {
        e.insert(o.name.as_slice().into(), o.inode);
    }
    if let Some(p) = st.inodes.get_mut(&o.parent) {
        p.mtime = t;
        p.ctime = t;
    }
    add(st, o.parent, u, t);
    Ok(())
}

/// Applies [`pb::SnapshotOp`]: copies `source` as `parent`/`name`, sharing chunks.
pub fn snapshot(st: &mut State, t: i64, o: &pb::SnapshotOp) -> FsResult<()> {
    let src = st.get(o.source)?;
    if src.nlink == 0 {
        return err(
            libc::ENOENT,
            format!("snapshot source inode {} has been removed", o.source),
        );
    }
    let src_dir = src.is_dir();
    check_name(&o.name)?;
    if st.dir(o.parent)?.contains_key(&o.name[..]) {
        return err(
            libc::EEXIST,
            format!(
                "snapshot destination '{}' already exists in '{}'",
                show(&o.name),
                path_of(st, o.parent)
            ),
        );
    }
    if src_dir && st.is_ancestor(o.source, o.parent) {
        return err(
            libc::EINVAL,
            format!(
                "cannot snapshot '{}' into its own subtree",
                path_of(st, o.source)
            ),
        );
    }
    if o.first_inode != st.next_inode {
        return err(
            libc::EINVAL,
            format!(
                "snapshot inode numbers start at {}, not {}",
                st.next_inode, o.first_inode
            ),
        );
    }
    let mut next = st.next_inode;
    let mut work: VecDeque<(u64, u64, Name)> = VecDeque::new();
    work.push_back((o.source, o.parent, o.name.as_slice().into()));
    while let Some((old, new_parent, name)) = work.pop_front() {
        let Some(src) = st.inodes.get(&old) else {
            continue;
        };
        let new = next;
        next += 1;
        let mut copy = Inode {
            kind: src.kind,
            mode: src.mode,
            goal: src.goal,
            nlink: if src.is_dir() { 2 } else { 1 },
            uid: src.uid,
            gid: src.gid,
            size: src.size,
            atime: src.atime,
            mtime: src.mtime,
            ctime: t,
            parent: new_parent,
            body: Body::Special,
            xattrs: src.xattrs.clone(),
        };
        copy.body = match &src.body {
            Body::Dir(entries) => {
                for (n, c) in entries.iter() {
                    work.push_back((*c, new, n.clone()));
                }
                Body::Dir(Default::default())
            }
            other => other.clone(),
        };
        let is_dir = copy.is_dir();
        let u = Usage {
            bytes: charged_bytes(&copy),
            inodes: 1,
        };
        if let Body::File(chunks) = &copy.body {
            for c in chunks.iter().filter(|c| **c != 0) {
                if let Some(m) = st.chunks.get_mut(c) {
                    m.refs = m.refs.saturating_add(1);
                    m.goal = m.goal.max(copy.goal);
                }
            }
        }
        st.inodes.insert(new, copy);
        if let Some(Body::Dir(e)) = st.inodes.get_mut(&new_parent).map(|p| &mut p.body) {
            e.insert(name, new);
        }
        if is_dir {
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.nlink += 1;
            }
            st.usage.insert(new, Usage::default());
        }
        add(st, new_parent, u, t);
    }
    st.next_inode = next;
    if let Some(p) = st.inodes.get_mut(&o.parent) {
        p.mtime = t;
        p.ctime = t;
    }
    Ok(())
}

/// Forgets the volume state of a freed inode.
pub fn forget(st: &mut State, ino: u64) {
    st.quotas.remove(&ino);
    st.trash.remove(&ino);
    st.trash_times.remove(&ino);
    st.usage.remove(&ino);
}

/// Recursive usage of every directory, computed from scratch (one pass over the
/// inodes plus a parent walk per inode).
pub fn compute_usage(st: &State) -> HashMap<u64, Usage> {
    let mut usage: HashMap<u64, Usage> = st
        .inodes
        .iter()
        .filter(|(_, i)| i.is_dir())
        .map(|(n, _)| (n, Usage::default()))
        .collect();
    for (ino, i) in st.inodes.iter() {
        if ino == ROOT_INODE || i.nlink == 0 {
            continue;
        }
        let b = charged_bytes(i);
        let mut cur = i.parent;
        for _ in 0..=st.inodes.len() {
            if let Some(u) = usage.get_mut(&cur) {
                u.bytes += b;
                u.inodes += 1;
            }
            if cur == ROOT_INODE {
                break;
            }
            match st.inodes.get(&cur) {
                Some(p) => cur = p.parent,
                None => break,
            }
        }
    }
    usage
}

/// Chunk references counted from the file chunk lists.
pub fn compute_refs(st: &State) -> HashMap<u64, u32> {
    let mut refs: HashMap<u64, u32> = HashMap::new();
    for i in st.inodes.values() {
        if let Body::File(chunks) = &i.body {
            for c in chunks.iter().filter(|c| **c != 0) {
                *refs.entry(*c).or_default() += 1;
            }
        }
    }
    refs
}

/// Rebuilds the usage counters (after loading a snapshot).
pub fn rebuild(st: &mut State) {
    st.usage = compute_usage(st);
    for ino in st.trash.keys() {
        st.orphans.remove(ino);
    }
}

/// Compares the incremental counters with a recomputation; returns the problems.
pub fn check(st: &State) -> Vec<String> {
    let mut problems = Vec::new();
    let usage = compute_usage(st);
    for (d, u) in &usage {
        let have = st.usage.get(d).copied().unwrap_or_default();
        if have != *u {
            problems.push(format!(
                "directory {} ({}): counted {} bytes / {} inodes, recomputed {} / {}",
                d,
                path_of(st, *d),
                have.bytes,
                have.inodes,
                u.bytes,
                u.inodes
            ));
        }
    }
    for d in st.usage.keys() {
        if !usage.contains_key(d) {
            problems.push(format!(
                "usage counter for inode {d}, which is not a directory"
            ));
        }
    }
    let refs = compute_refs(st);
    for (id, n) in &refs {
        match st.chunks.get(id) {
            None => problems.push(format!(
                "chunk {id} is used by {n} file(s) but not in the chunk table"
            )),
            Some(m) if m.refs != *n => problems.push(format!(
                "chunk {id}: reference count {} but {n} file slot(s) use it",
                m.refs
            )),
            _ => {}
        }
    }
    for id in st.chunks.keys() {
        if !refs.contains_key(id) {
            problems.push(format!(
                "chunk {id} is in the chunk table but no file uses it"
            ));
        }
    }
    for ino in st.trash.keys() {
        match st.inodes.get(ino) {
            Some(i) if i.nlink == 0 && i.kind == FileType::Regular => {}
            _ => problems.push(format!("trash entry {ino} is not an unlinked regular file")),
        }
    }
    for q in st.quotas.keys() {
        if !st.inodes.get(q).is_some_and(|i| i.is_dir()) {
            problems.push(format!("quota on inode {q}, which is not a directory"));
        }
    }
    problems
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
