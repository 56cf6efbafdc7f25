//! The Admin rpcs of quotas, snapshots, the trash, `du` and the consistency
//! check. Paths are absolute from the filesystem root. Each mutation is one
//! changelog op (a snapshot of a whole tree included), so it is atomic across a
//! crash and consistent to one moment under concurrent writes.

use std::collections::HashSet;

use alces_proto::pb::{self, changelog_record::Op};
use tonic::Status;

use crate::core::{now_ns, Core, Inner};
use crate::state::error::{err, FsError, FsResult};
use crate::state::namespace::{check_absolute, check_name, State, ROOT_INODE};
use crate::state::namespace::{Quota, Trashed, Usage};
use crate::state::volumes;

/// Splits an absolute path into (parent directory inode, last name).
fn parent_and_name(st: &State, path: &str) -> FsResult<(u64, Vec<u8>)> {
    check_absolute(path)?;
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return err(
            libc::EINVAL,
            format!("'{path}' does not end with a name to create"),
        );
    }
    check_name(name.as_bytes())?;
    let parent = st.resolve(ROOT_INODE, if dir.is_empty() { "/" } else { dir })?;
    if !st.get(parent)?.is_dir() {
        return err(libc::ENOTDIR, format!("'{dir}' is not a directory"));
    }
    Ok((parent, name.as_bytes().to_vec()))
}

fn quota_info(st: &State, dir: u64, q: &Quota) -> pb::QuotaInfo {
    let u = st.usage.get(&dir).copied().unwrap_or_default();
    pb::QuotaInfo {
        path: volumes::path_of(st, dir),
        inode: dir,
        soft_bytes: q.soft_bytes,
        hard_bytes: q.hard_bytes,
        soft_inodes: q.soft_inodes,
        hard_inodes: q.hard_inodes,
        grace_secs: q.grace_secs,
        used_bytes: u.bytes,
        used_inodes: u.inodes,
        soft_exceeded_since_ns: q.soft_since,
    }
}

/// Makes a statfs reply show the quota of `dir` as the filesystem's size and usage.
pub fn quota_statfs(st: &State, dir: u64, q: &Quota, reply: &mut pb::StatfsReply) {
    let u = st.usage.get(&dir).copied().unwrap_or_default();
    let bytes_limit = if q.hard_bytes > 0 {
        q.hard_bytes
    } else {
        q.soft_bytes
    };
    if bytes_limit > 0 {
        let free = bytes_limit.saturating_sub(u.bytes).min(reply.free_bytes);
        reply.total_bytes = bytes_limit;
        reply.free_bytes = free;
        reply.avail_bytes = free;
    }
    let inode_limit = if q.hard_inodes > 0 {
        q.hard_inodes
    } else {
        q.soft_inodes
    };
    if inode_limit > 0 {
        reply.total_inodes = inode_limit;
        reply.free_inodes = inode_limit.saturating_sub(u.inodes);
    }
}

/// `SetQuota`.
pub async fn set_quota(core: &Core, r: pb::SetQuotaRequest) -> Result<pb::QuotaInfo, Status> {
    core.mutate(|core, inner| {
        let st = &inner.state;
        let dir = st.resolve_absolute(&r.path)?;
        if !st.get(dir)?.is_dir() {
            return err(
                libc::ENOTDIR,
                format!("'{}' is not a directory: quotas apply to directories", r.path),
            );
        }
        let op = pb::SetQuotaOp {
            inode: dir,
            soft_bytes: r.soft_bytes,
            hard_bytes: r.hard_bytes,
            soft_inodes: r.soft_inodes,
            hard_inodes: r.hard_inodes,
            grace_secs: r.grace_secs,
        };
        volumes::check_limits(&op)?;
        let u = st.usage.get(&dir).copied().unwrap_or_default();
        if r.hard_bytes > 0 && u.bytes > r.hard_bytes {
            return err(
                libc::EINVAL,
                format!(
                    "hard byte limit {} is below the current usage of '{}' ({} bytes): free space first or set a larger limit",
                    r.hard_bytes, r.path, u.bytes
                ),
            );
        }
        if r.hard_inodes > 0 && u.inodes > r.hard_inodes {
            return err(
                libc::EINVAL,
                format!(
                    "hard inode limit {} is below the current usage of '{}' ({} inodes): remove files first or set a larger limit",
                    r.hard_inodes, r.path, u.inodes
                ),
            );
        }
        let v = core.commit(inner, Op::SetQuota(op))?;
        let q = inner.state.quotas.get(&dir).copied().unwrap_or_default();
        Ok((Some(v), quota_info(&inner.state, dir, &q)))
    })
    .await
}

/// `GetQuota`.
pub fn get_quota(core: &Core, r: pb::PathRequest) -> Result<pb::QuotaInfo, Status> {
    core.read(|inner| {
        let st = &inner.state;
        let dir = st.resolve_absolute(&r.path)?;
        let q = st
            .quotas
            .get(&dir)
            .ok_or_else(|| FsError::new(libc::ENOENT, format!("'{}' has no quota", r.path)))?;
        Ok(quota_info(st, dir, q))
    })
}

/// `RemoveQuota`.
pub async fn remove_quota(core: &Core, r: pb::PathRequest) -> Result<pb::Empty, Status> {
    core.mutate(|core, inner| {
        let dir = inner.state.resolve_absolute(&r.path)?;
        if !inner.state.quotas.contains_key(&dir) {
            return err(libc::ENOENT, format!("'{}' has no quota", r.path));
        }
        let v = core.commit(inner, Op::RemoveQuota(pb::RemoveQuotaOp { inode: dir }))?;
        Ok((Some(v), pb::Empty {}))
    })
    .await
}

/// How long a snapshot waits for write sessions open on the source's chunks.
pub const SNAPSHOT_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// True when a write session is open on a chunk of the tree at `ino`: data of
/// that session could still land in a chunk the snapshot would share. Also
/// true while a file's chunk at its end may hold unrecorded bytes past it
/// (cut first: a shared chunk is never cut in place).
fn tree_busy(inner: &Inner, ino: u64) -> bool {
    let st = &inner.state;
    let mut stack = vec![ino];
    while let Some(i) = stack.pop() {
        match st.inodes.get(&i).map(|n| &n.body) {
            Some(crate::state::inode::Body::Dir(e)) => stack.extend(e.values().copied()),
            Some(crate::state::inode::Body::File(c))
                if c.iter().any(|c| *c != 0 && inner.chunks.is_writing(*c))
                    || inner.tails.dirty_tail(st, i).is_some() =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

/// `Snapshot`: applied once no write session is open on the source's chunks
/// (checked and applied under one lock, so no session can open in between);
/// waits up to [`SNAPSHOT_BUSY_WAIT`] for that.
pub async fn snapshot(core: &Core, r: pb::SnapshotRequest) -> Result<pb::SnapshotReply, Status> {
    let deadline = std::time::Instant::now() + SNAPSHOT_BUSY_WAIT;
    loop {
        let src = core
            .read(|inner| inner.state.resolve_absolute(&r.source))
            .ok();
        if let Some(src) = src {
            crate::domain::tails::clean_tree(core, src).await?;
        }
        match snapshot_once(core, &r).await {
            Err(s)
                if alces_proto::errno::of(&s) == libc::EBUSY
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

async fn snapshot_once(core: &Core, r: &pb::SnapshotRequest) -> Result<pb::SnapshotReply, Status> {
    core.mutate(|core, inner| {
        let st = &inner.state;
        let src = st.resolve_absolute(&r.source).map_err(|e| {
            FsError::new(
                e.errno,
                format!("snapshot source '{}': {}", r.source, e.message),
            )
        })?;
        let (parent, name) = parent_and_name(st, &r.destination).map_err(|e| {
            FsError::new(
                e.errno,
                format!("snapshot destination '{}': {}", r.destination, e.message),
            )
        })?;
        if st.dir(parent)?.contains_key(&name[..]) {
            return err(
                libc::EEXIST,
                format!(
                    "snapshot destination '{}' already exists: remove it or pick another name",
                    r.destination
                ),
            );
        }
        if st.get(src)?.is_dir() && st.is_ancestor(src, parent) {
            return err(
                libc::EINVAL,
                format!(
                    "cannot snapshot '{}' into its own subtree ('{}')",
                    r.source, r.destination
                ),
            );
        }
        let u = volumes::subtree(st, src);
        volumes::check_quota(st, 0, parent, u, now_ns())?;
        if tree_busy(inner, src) {
            return err(
                libc::EBUSY,
                format!(
                    "'{}' has chunks with write sessions open for {} s (a writer that never closed them?); retry later",
                    r.source,
                    SNAPSHOT_BUSY_WAIT.as_secs()
                ),
            );
        }
        let first = st.next_inode;
        let v = core.commit(
            inner,
            Op::Snapshot(pb::SnapshotOp {
                source: src,
                parent,
                name,
                first_inode: first,
            }),
        )?;
        let shared = inner.state.chunks.values().filter(|c| c.refs > 1).count() as u64;
        Ok((
            Some(v),
            pb::SnapshotReply {
                inode: first,
                inodes: u.inodes,
                bytes: u.bytes,
                shared_chunks: shared,
            },
        ))
    })
    .await
}

/// `SetTrashTime`.
pub async fn set_trash_time(
    core: &Core,
    r: pb::SetTrashTimeRequest,
) -> Result<pb::TrashTimeReply, Status> {
    core.mutate(|core, inner| {
        let dir = inner.state.resolve_absolute(&r.path)?;
        let v = core.commit(
            inner,
            Op::SetTrashTime(pb::SetTrashTimeOp {
                inode: dir,
                seconds: r.seconds,
            }),
        )?;
        Ok((
            Some(v),
            pb::TrashTimeReply {
                path: r.path.clone(),
                seconds: r.seconds,
                explicit: true,
            },
        ))
    })
    .await
}

/// `GetTrashTime`.
pub fn get_trash_time(core: &Core, r: pb::PathRequest) -> Result<pb::TrashTimeReply, Status> {
    core.read(|inner| {
        let st = &inner.state;
        let ino = st.resolve_absolute(&r.path)?;
        let dir = match st.get(ino)? {
            i if i.is_dir() => ino,
            i => i.parent,
        };
        let (seconds, explicit) = volumes::trash_secs(st, dir);
        Ok(pb::TrashTimeReply {
            path: r.path.clone(),
            seconds,
            explicit,
        })
    })
}

fn entry(st: &State, ino: u64, e: &Trashed) -> pb::TrashEntry {
    pb::TrashEntry {
        id: ino,
        path: e.path.to_string(),
        size: st.inodes.get(&ino).map_or(0, |i| i.size),
        deleted_ns: e.deleted,
        expires_ns: e.expires,
    }
}

/// `ListTrash`.
pub fn list_trash(core: &Core) -> Result<pb::TrashList, Status> {
    core.read(|inner| {
        let st = &inner.state;
        Ok(pb::TrashList {
            entries: st.trash.iter().map(|(i, e)| entry(st, *i, e)).collect(),
        })
    })
}

/// `RestoreTrash`: to the original path, or `destination`. A path that exists
/// now is refused (EEXIST) rather than silently renamed.
pub async fn restore_trash(
    core: &Core,
    r: pb::RestoreTrashRequest,
) -> Result<pb::TrashEntry, Status> {
    core.mutate(|core, inner| {
        let st = &inner.state;
        let id = if r.id != 0 {
            if !st.trash.contains_key(&r.id) {
                return err(
                    libc::ENOENT,
                    format!("trash id {} does not exist (see `alces trash list`)", r.id),
                );
            }
            r.id
        } else {
            st.trash
                .iter()
                .filter(|(_, e)| *e.path == *r.path)
                .max_by_key(|(_, e)| e.deleted)
                .map(|(i, _)| *i)
                .ok_or_else(|| {
                    FsError::new(
                        libc::ENOENT,
                        format!("no trashed file was at '{}' (see `alces trash list`)", r.path),
                    )
                })?
        };
        let e = st.trash.get(&id).cloned().ok_or_else(|| {
            FsError::new(libc::ENOENT, format!("trash id {id} does not exist"))
        })?;
        let target = if r.destination.is_empty() {
            e.path.to_string()
        } else {
            r.destination.clone()
        };
        let (parent, name) = parent_and_name(st, &target).map_err(|err| {
            FsError::new(
                err.errno,
                format!("cannot restore to '{target}': {} (pass another destination)", err.message),
            )
        })?;
        if st.dir(parent)?.contains_key(&name[..]) {
            return err(
                libc::EEXIST,
                format!("cannot restore trash id {id}: '{target}' exists now; restore it under another path"),
            );
        }
        let size = st.get(id)?.size;
        volumes::check_quota(
            st,
            0,
            parent,
            Usage {
                bytes: size,
                inodes: 1,
            },
            now_ns(),
        )?;
        let reply = pb::TrashEntry {
            id,
            path: target.clone(),
            size,
            deleted_ns: e.deleted,
            expires_ns: e.expires,
        };
        let v = core.commit(
            inner,
            Op::Restore(pb::RestoreOp {
                inode: id,
                parent,
                name,
            }),
        )?;
        Ok((Some(v), reply))
    })
    .await
}

/// `PurgeTrash`: frees trashed files now (files still open somewhere wait for
/// their last close).
pub async fn purge_trash(
    core: &Core,
    r: pb::PurgeTrashRequest,
) -> Result<pb::PurgeTrashReply, Status> {
    core.mutate(|core, inner| {
        let ids: Vec<u64> = if r.id != 0 {
            if !inner.state.trash.contains_key(&r.id) {
                return err(
                    libc::ENOENT,
                    format!("trash id {} does not exist (see `alces trash list`)", r.id),
                );
            }
            vec![r.id]
        } else {
            inner.state.trash.keys().copied().collect()
        };
        let (last, purged, bytes) = purge(core, inner, &ids);
        Ok((last, pb::PurgeTrashReply { purged, bytes }))
    })
    .await
}

/// Purges the trash entries `ids` not open in a session: (last version, count, bytes).
fn purge(core: &Core, inner: &mut Inner, ids: &[u64]) -> (Option<u64>, u64, u64) {
    let mut last = None;
    let (mut n, mut bytes) = (0, 0);
    for id in ids {
        if inner.sessions.is_open(*id) {
            continue;
        }
        let size = inner.state.inodes.get(id).map_or(0, |i| i.size);
        match core.commit(inner, Op::Purge(pb::PurgeOp { inode: *id })) {
            Ok(v) => {
                last = Some(v);
                n += 1;
                bytes += size;
            }
            Err(e) => tracing::error!(inode = id, error = %e, "cannot purge a trashed file"),
        }
    }
    (last, n, bytes)
}

/// Trash entries freed per maintenance tick (1 s) when their time runs out:
/// a large expiry is spread over ticks rather than holding the master lock
/// for all of it at once (the earliest expired first).
pub const PURGE_PER_TICK: usize = 1000;

/// Frees up to [`PURGE_PER_TICK`] trash entries whose time ran out
/// (maintenance tick).
pub fn purge_expired(core: &Core, inner: &mut Inner) {
    let now = now_ns();
    let mut due: Vec<(i64, u64)> = inner
        .state
        .trash
        .iter()
        .filter(|(i, e)| e.expires <= now && !inner.sessions.is_open(**i))
        .map(|(i, e)| (e.expires, *i))
        .collect();
    if due.len() > PURGE_PER_TICK {
        due.select_nth_unstable(PURGE_PER_TICK);
        due.truncate(PURGE_PER_TICK);
    }
    let ids: Vec<u64> = due.into_iter().map(|(_, i)| i).collect();
    if !ids.is_empty() {
        let (_, n, bytes) = purge(core, inner, &ids);
        if n > 0 {
            tracing::info!(files = n, bytes, "trash time ran out: freed");
        }
    }
}

/// `DiskUsage`.
pub fn disk_usage(core: &Core, r: pb::PathRequest) -> Result<pb::DiskUsageReply, Status> {
    core.read(|inner| {
        let ino = inner.state.resolve_absolute(&r.path)?;
        let u = volumes::subtree(&inner.state, ino);
        Ok(pb::DiskUsageReply {
            path: r.path.clone(),
            bytes: u.bytes,
            inodes: u.inodes,
        })
    })
}

/// `CheckConsistency`.
pub fn check_consistency(core: &Core) -> Result<pb::ConsistencyReport, Status> {
    core.read(|inner| {
        let st = &inner.state;
        let problems = volumes::check(st);
        let mut on_servers: HashSet<u64> = HashSet::new();
        for s in inner.chunks.servers.values().filter(|s| s.counted) {
            on_servers.extend(s.held.iter().copied());
        }
        let unknown = on_servers
            .iter()
            .filter(|c| !st.chunks.contains_key(c))
            .count() as u64;
        let root = volumes::subtree(st, ROOT_INODE);
        Ok(pb::ConsistencyReport {
            ok: problems.is_empty(),
            problems,
            chunks: st.chunks.len() as u64,
            shared_chunks: st.chunks.values().filter(|c| c.refs > 1).count() as u64,
            trash_entries: st.trash.len() as u64,
            quotas: st.quotas.len() as u64,
            chunks_on_servers: on_servers.len() as u64,
            unknown_chunks_on_servers: unknown,
            namespace_bytes: root.bytes,
        })
    })
}
