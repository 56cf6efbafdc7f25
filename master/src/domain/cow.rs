//! Copy-on-write of a chunk shared with a snapshot.
//!
//! A write session on a chunk whose reference count is above one must not
//! change the shared chunk: the file gets a private copy. The copy is made by
//! the master, on the chunkservers holding the shared chunk, BEFORE the file's
//! slot is switched to it:
//!
//! 1. under the lock, the next chunk id is reserved by a logged
//!    `ReserveChunkIdOp` (durable before any chunkserver stores data under
//!    it, so the id is never handed out twice, even after a crash);
//! 2. without the lock, each valid holder of the shared chunk is asked to
//!    create the reserved id as a copy of it (an empty `Write` with `create`
//!    and `copy_from_chunk_id`);
//! 3. under the lock again, if the file still points at the same shared chunk
//!    at the same version, the logged `WriteChunkOp` (`copy_from_chunk_id`)
//!    switches the slot to the copy and releases the file's reference on the
//!    shared chunk; the write session opens on the copy like on any existing
//!    chunk (the copies the master made are its chain).
//!
//! So the file never points at a chunk no chunkserver holds: a client that dies
//! after `WriteChunk`, or whose writes fail, leaves a complete copy of the
//! file's data behind, and a retry is an ordinary write session on it. A copy
//! that is not recorded (the file changed meanwhile, every copy failed, the
//! master crashed) is deleted: by the master at once, or after a crash as an
//! id unknown to the chunk table when its chunkserver reports it.

use std::time::{Duration, Instant};

use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::{self, chunkserver_client::ChunkserverClient, ChunkLocation};

use crate::core::{Core, Inner};
use crate::runtime::tails::{recheck, Growth};
use crate::state::error::{err, FsResult};
use crate::state::ops::check_regular;

/// Time limit of one chunkserver's copy of a shared chunk.
const COPY_TIMEOUT: Duration = Duration::from_secs(60);

/// A copy-on-write copy decided under the lock, to be made without it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file.
    pub inode: u64,
    /// Index of the chunk in the file.
    pub index: u64,
    /// The reserved id of the copy.
    pub chunk_id: u64,
    /// The shared chunk.
    pub src: u64,
    /// Its version.
    pub src_version: u64,
    /// Servers holding a valid copy of the shared chunk.
    pub holders: Vec<ChunkLocation>,
}

/// The shared chunk a write session needs a private copy of.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The file.
    pub inode: u64,
    /// Index of the chunk in the file.
    pub index: u64,
    /// The shared chunk.
    pub chunk_id: u64,
    /// Its version.
    pub version: u64,
}

/// Reserves the id of a private copy of `src` (valid on `holders`): commits
/// the reservation and marks the copy as being made. Returns the plan and the
/// version to wait for.
pub fn reserve(
    core: &Core,
    inner: &mut Inner,
    src: Source,
    holders: &[u64],
) -> FsResult<(u64, Plan)> {
    let Source {
        inode,
        index,
        chunk_id: src,
        version: src_version,
    } = src;
    if inner.chunks.is_copying(inode, index) {
        return err(
            libc::EAGAIN,
            format!("chunk {index} of inode {inode} is being copied (copy-on-write); retry"),
        );
    }
    let chunk_id = inner.state.next_chunk_id;
    let v = core.commit(inner, Op::ReserveChunkId(pb::ReserveChunkIdOp { chunk_id }))?;
    inner.chunks.start_copy(chunk_id, inode, index);
    let holders = holders
        .iter()
        .filter_map(|s| inner.chunks.servers.get(s))
        .map(|s| s.location())
        .collect();
    Ok((
        v,
        Plan {
            inode,
            index,
            chunk_id,
            src,
            src_version,
            holders,
        },
    ))
}

/// Asks every holder of the shared chunk to create the copy; returns the
/// servers that did.
pub async fn copy(core: &Core, plan: &Plan) -> Vec<u64> {
    let Some(auth) = core.settings.chunk_auth.as_ref() else {
        tracing::error!(
            chunk = plan.src,
            "the master has no cluster secret to reach chunkservers: cannot copy a shared chunk"
        );
        return Vec::new();
    };
    let mut tasks = tokio::task::JoinSet::new();
    for loc in &plan.holders {
        let loc = loc.clone();
        let auth = auth.0.clone();
        let req = pb::WriteRequest {
            chunk_id: plan.chunk_id,
            expected_version: 0,
            version: 1,
            create: true,
            offset: 0,
            data: Default::default(),
            chain: Vec::new(),
            copy_from_chunk_id: plan.src,
            copy_from_version: plan.src_version,
            access: None,
        };
        tasks.spawn(async move {
            let res = match alces_proto::net::channel(&loc.address, &auth) {
                Err(e) => Err(format!("chunkserver address {}: {e}", loc.address)),
                Ok(ch) => {
                    let mut cs = ChunkserverClient::new(ch)
                        .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES);
                    match tokio::time::timeout(COPY_TIMEOUT, cs.write(req)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(st)) => Err(st.message().to_string()),
                        Err(_) => Err(format!("no answer within {} s", COPY_TIMEOUT.as_secs())),
                    }
                }
            };
            (loc.server_id, res)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((sid, Ok(()))) => done.push(sid),
            Ok((sid, Err(e))) => tracing::warn!(
                chunk = plan.src,
                copy = plan.chunk_id,
                server = sid,
                error = %e,
                "copy-on-write copy of a shared chunk failed on a chunkserver"
            ),
            Err(e) => tracing::error!(error = %e, "copy-on-write task failed"),
        }
    }
    done
}

/// Records the copy made on `copied` in the file and opens `session`'s write
/// session on it (under the lock). Returns the version to wait for and the
/// reply. When the file no longer points at the shared chunk at the same
/// version (EAGAIN: the client asks again) or no copy was made (EIO), the
/// copies are deleted and the file is unchanged.
pub fn finish(
    core: &Core,
    inner: &mut Inner,
    session: u64,
    growth: Growth,
    plan: &Plan,
    copied: &[u64],
) -> FsResult<(u64, pb::WriteChunkReply)> {
    let asked: Vec<u64> = plan.holders.iter().map(|l| l.server_id).collect();
    let (v, file_size, chain) = match decide(core, inner, session, growth, plan, copied) {
        Ok(d) => d,
        Err(e) => {
            inner.chunks.end_copy(plan.chunk_id, &asked, false);
            return Err(e);
        }
    };
    inner
        .chunks
        .start_write(plan.chunk_id, 1, &chain, Instant::now());
    // A copy that failed (or did not answer in time) may still be completed
    // later without this session's data, at the session's version: such a
    // copy is deleted, never counted.
    let failed: Vec<u64> = asked.into_iter().filter(|s| !chain.contains(s)).collect();
    inner.chunks.end_copy(plan.chunk_id, &failed, true);
    inner.tails.opened(plan.chunk_id, session, 1);
    let chain = chain
        .iter()
        .filter_map(|s| inner.chunks.servers.get(s))
        .map(|s| s.location())
        .collect();
    // The copies exist at version 1: the session writes them as they are
    // (like the first session of a new chunk).
    Ok((
        v,
        pb::WriteChunkReply {
            chunk_id: plan.chunk_id,
            version: 1,
            old_version: 1,
            chain,
            file_size,
            ..Default::default()
        },
    ))
}

/// The checks and the commit of [`finish`]: (version, file size, chain).
fn decide(
    core: &Core,
    inner: &mut Inner,
    session: u64,
    growth: Growth,
    plan: &Plan,
    copied: &[u64],
) -> FsResult<(u64, u64, Vec<u64>)> {
    core.check_writable(inner, session)?;
    let f = check_regular(&inner.state, plan.inode)?;
    let file_size = f.size;
    let current = f
        .chunks()
        .and_then(|c| c.get(plan.index as usize))
        .copied()
        .unwrap_or(0);
    let version = inner.state.chunks.get(&plan.src).map(|c| c.version);
    if current != plan.src || version != Some(plan.src_version) {
        return err(
            libc::EAGAIN,
            format!(
                "chunk {} of inode {} changed while it was copied (copy-on-write); retry",
                plan.index, plan.inode
            ),
        );
    }
    let chain: Vec<u64> = copied
        .iter()
        .copied()
        .filter(|s| inner.chunks.servers.get(s).is_some_and(|s| s.counted))
        .collect();
    if chain.is_empty() {
        return err(
            libc::EIO,
            format!(
                "no chunkserver holding chunk {} (shared with a snapshot) could copy it for a write; the file is unchanged",
                plan.src
            ),
        );
    }
    recheck(&inner.tails, &inner.state, session, plan.inode, growth)?;
    let v = core.commit(
        inner,
        Op::WriteChunk(pb::WriteChunkOp {
            inode: plan.inode,
            chunk_index: plan.index,
            chunk_id: plan.chunk_id,
            version: 1,
            created: true,
            copy_from_chunk_id: plan.src,
        }),
    )?;
    Ok((v, file_size, chain))
}
