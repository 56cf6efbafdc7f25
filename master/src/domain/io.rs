//! Files opened and where their data goes: open/release, the locations a
//! read gets, and write sessions (`WriteChunk` ... `WriteChunkEnd`).
//! Opening a write session decides
//! placement of a new chunk, the quota of a file growing past its end, the
//! copy-on-write of a chunk shared with a snapshot ([`crate::domain::cow`])
//! and the cut of bytes stored past the file's end
//! ([`crate::domain::tails`]); ending one records the new length.

use std::time::Instant;

use alces_proto::pb;
use alces_proto::pb::changelog_record::Op;
use tonic::Status;

use crate::core::{now_ns, Core, Inner};
use crate::domain::cow;
use crate::domain::metadata::attr_reply;
use crate::runtime::tails::{recheck, Growth};
use crate::state::error::{err, FsError, FsResult};
use crate::state::namespace::Usage;
use crate::state::ops::check_regular;
use crate::state::volumes;

/// What ReadChunk answers for chunk `index` of regular file `inode`: its id,
/// version and valid copies (id 0 for a hole or past the end), and the file size.
pub fn read_chunk_reply(i: &Inner, inode: u64, index: u64) -> FsResult<pb::ReadChunkReply> {
    let f = check_regular(&i.state, inode)?;
    let id = usize::try_from(index)
        .ok()
        .and_then(|idx| f.chunks().and_then(|c| c.get(idx)).copied())
        .unwrap_or(0);
    let mut reply = pb::ReadChunkReply {
        file_size: f.size,
        ..Default::default()
    };
    if let Some(meta) = (id != 0).then(|| i.state.chunks.get(&id)).flatten() {
        reply.chunk_id = id;
        reply.version = meta.version;
        reply.locations = i
            .chunks
            .valid(id, meta.version)
            .iter()
            .map(|s| s.location())
            .collect();
    }
    Ok(reply)
}

/// `ReadChunk`.
pub fn read_chunk(core: &Core, r: &pb::ChunkRequest) -> Result<pb::ReadChunkReply, Status> {
    core.read(|i| read_chunk_reply(i, r.inode, r.chunk_index))
}

/// `Open`: marks the file open in the session (a file removed while open
/// lives until released); a read of a non-empty regular file also gets the
/// locations of chunk 0.
pub fn open(core: &Core, r: &pb::OpenRequest) -> Result<pb::AttrReply, Status> {
    let mut g = core.inner.lock();
    let writes = r.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32
        || r.flags & libc::O_TRUNC as u32 != 0;
    if writes {
        core.check_writable(&g, r.session_id)?;
    }
    let mut reply = attr_reply(&g, r.inode)?;
    let reads = r.flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32;
    let has_data = reply
        .attr
        .as_ref()
        .is_some_and(|a| a.kind == pb::FileType::Regular as i32 && a.size > 0);
    if reads && has_data {
        reply.first_chunk = Some(read_chunk_reply(&g, r.inode, 0)?);
    }
    g.sessions.open(r.session_id, r.inode);
    Ok(reply)
}

/// `Release`: a file no session holds open any more and without links is purged.
pub async fn release(core: &Core, r: &pb::InodeRequest) -> Result<pb::Empty, Status> {
    core.mutate(|core, inner| {
        let unused = inner.sessions.release(r.session_id, r.inode);
        let v = if unused {
            core.purge_unused(inner, &[r.inode])
        } else {
            None
        };
        Ok((v, pb::Empty {}))
    })
    .await
}

/// The chain of servers `ids` on the wire.
fn chain_of(inner: &Inner, ids: &[u64]) -> Vec<pb::ChunkLocation> {
    ids.iter()
        .filter_map(|s| inner.chunks.servers.get(s))
        .map(|s| s.location())
        .collect()
}

/// What opening a write session decided under the lock.
enum Opened {
    /// The session is open: the reply to send once the version is durable.
    Session(pb::WriteChunkReply),
    /// The chunk is shared with a snapshot: a private copy is to be made first.
    Copy(cow::Plan),
}

/// `WriteChunk`: opens a write session on chunk `chunk_index` of a file,
/// creating the chunk (placed on `goal` servers) or moving an existing one to a
/// new version; a chunk shared with a snapshot is first copied (see
/// [`crate::domain::cow`]).
pub async fn write_chunk(core: &Core, r: pb::ChunkRequest) -> Result<pb::WriteChunkReply, Status> {
    // Bytes past the file's end in the chunks this session can make part of
    // the file are cut first (see `tails`).
    let growth = Growth::Chunk(r.chunk_index);
    crate::domain::tails::settle_as(core, r.session_id, r.inode, growth).await?;
    let mut plan: Option<cow::Plan> = None;
    let opened = core
        .mutate_as(r.session_id, |core, inner| {
            let (v, opened) = open_session(core, inner, &r, growth)?;
            if let Opened::Copy(p) = &opened {
                plan = Some(p.clone());
            }
            Ok((v, opened))
        })
        .await;
    match (opened, plan) {
        (Ok(Opened::Session(reply)), _) => Ok(reply),
        (Ok(Opened::Copy(p)), _) => {
            let copied = cow::copy(core, &p).await;
            core.mutate(|core, inner| {
                cow::finish(core, inner, r.session_id, growth, &p, &copied)
                    .map(|(v, reply)| (Some(v), reply))
            })
            .await
        }
        (Err(e), Some(p)) => {
            // The reservation was not made durable: no copy is made.
            core.inner.lock().chunks.end_copy(p.chunk_id, &[], false);
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// The decisions of [`write_chunk`] under the lock.
fn open_session(
    core: &Core,
    inner: &mut Inner,
    r: &pb::ChunkRequest,
    growth: Growth,
) -> FsResult<(Option<u64>, Opened)> {
    let f = check_regular(&inner.state, r.inode)?;
    if r.chunk_index >= inner.state.max_chunk_index() {
        return err(
            libc::EFBIG,
            format!(
                "chunk index {} is past the largest file size",
                r.chunk_index
            ),
        );
    }
    let goal = usize::from(f.goal);
    let file_size = f.size;
    let current = f
        .chunks()
        .and_then(|c| c.get(r.chunk_index as usize))
        .copied()
        .unwrap_or(0);
    let now = Instant::now();
    recheck(&inner.tails, &inner.state, r.session_id, r.inode, growth)?;
    if f.nlink > 0 && r.chunk_index.saturating_mul(inner.state.chunk_size) >= file_size {
        // Writing past the end: refuse when the quota is already full.
        volumes::check_quota(
            &inner.state,
            0,
            f.parent,
            Usage {
                bytes: 1,
                inodes: 0,
            },
            now_ns(),
        )?;
    }
    if current == 0 {
        let chain = inner.chunks.place(goal, &[]);
        if chain.is_empty() {
            return err(
                libc::ENOSPC,
                "no connected chunkserver with free space to hold a new chunk",
            );
        }
        let id = inner.state.next_chunk_id;
        let v = core.commit(
            inner,
            Op::WriteChunk(pb::WriteChunkOp {
                inode: r.inode,
                chunk_index: r.chunk_index,
                chunk_id: id,
                version: 1,
                created: true,
                copy_from_chunk_id: 0,
            }),
        )?;
        inner.chunks.start_write(id, 1, &chain, now);
        inner.tails.opened(id, r.session_id, 1);
        let reply = pb::WriteChunkReply {
            chunk_id: id,
            version: 1,
            old_version: 0,
            chain: chain_of(inner, &chain),
            file_size,
            ..Default::default()
        };
        return Ok((Some(v), Opened::Session(reply)));
    }
    let old = inner
        .state
        .chunks
        .get(&current)
        .map(|c| c.version)
        .ok_or_else(|| {
            FsError::new(
                libc::EIO,
                format!("chunk {current} is missing from the chunk table"),
            )
        })?;
    let holders: Vec<u64> = inner.chunks.holders(current, old);
    if holders.is_empty() && afresh_allowed(inner, r, current, file_size) {
        let chain = inner.chunks.place(goal, &[]);
        if !chain.is_empty() {
            return start_afresh(core, inner, r, current, old, &chain, file_size, now);
        }
    }
    if holders.is_empty() {
        // Right after this master started or was promoted no chunkserver may have
        // registered yet: EAGAIN, which clients retry for a bounded time (as the
        // ENOSPC of a new chunk above), rather than an I/O error at once.
        return err(
            libc::EAGAIN,
            format!("chunk {current} has no valid copy on a connected chunkserver (yet)"),
        );
    }
    if let Some((dest, age)) = inner.chunks.replication_blocking_write(current, now) {
        // A copy is being made at this version: a write session now would make
        // it stale before it lands. Clients retry EAGAIN for a bounded time.
        return err(
            libc::EAGAIN,
            format!(
                "chunk {current} is being copied to chunkserver {dest} (for {} ms); try again",
                age.as_millis()
            ),
        );
    }
    if inner.state.chunks.get(&current).is_some_and(|c| c.refs > 1) {
        // Shared with a snapshot: the master makes a private copy first and
        // switches the file to it after (see `cow`).
        let source = cow::Source {
            inode: r.inode,
            index: r.chunk_index,
            chunk_id: current,
            version: old,
        };
        let (v, p) = cow::reserve(core, inner, source, &holders)?;
        return Ok((Some(v), Opened::Copy(p)));
    }
    let v = core.commit(
        inner,
        Op::WriteChunk(pb::WriteChunkOp {
            inode: r.inode,
            chunk_index: r.chunk_index,
            chunk_id: current,
            version: old + 1,
            created: false,
            copy_from_chunk_id: 0,
        }),
    )?;
    inner.chunks.start_write(current, old + 1, &holders, now);
    inner.tails.opened(current, r.session_id, old + 1);
    let reply = pb::WriteChunkReply {
        chunk_id: current,
        version: old + 1,
        old_version: old,
        chain: chain_of(inner, &holders),
        file_size,
        ..Default::default()
    };
    Ok((Some(v), Opened::Session(reply)))
}

/// True when chunk `current` (slot `r.chunk_index` of the file, `file_size`
/// long), of which no connected chunkserver holds a valid copy, may be created
/// again, empty: its creation was logged (and so replayed after a restart) but
/// the master may have died before its reply, so no client ever wrote it and no
/// chunkserver will ever report it. Only when nothing can be lost:
/// - it lies wholly past the file's end: no byte of it was ever recorded, so no
///   reader saw one and no fsync promised one;
/// - it is not shared with a snapshot;
/// - no chunkserver reported a copy of it at any version (a copy at an older
///   version goes through version adoption instead);
/// - the master knows no write session, bytes past the end or cut on it.
///
/// A chunk whose bytes were recorded is never replaced by zeros: it waits for
/// its chunkservers (EAGAIN), then fails with EIO.
fn afresh_allowed(inner: &Inner, r: &pb::ChunkRequest, current: u64, file_size: u64) -> bool {
    let past_end = r.chunk_index.saturating_mul(inner.state.chunk_size) >= file_size;
    let shared = inner.state.chunks.get(&current).is_none_or(|c| c.refs > 1);
    past_end
        && !shared
        && inner.chunks.copies(current).is_empty()
        && !inner.chunks.is_writing(current)
        && !inner.tails.knows(current)
}

/// Creates chunk `current` again (see [`afresh_allowed`]): same id, the next
/// version, a newly placed `chain` that creates it (`old_version` 0). The start
/// is remembered as a cut to length 0 ([`crate::runtime::tails::Tails::started_afresh`]),
/// so a write session from before it that claims bytes in an old copy gets EIO
/// instead of the file growing over zeros; such a copy, reported later, carries
/// an older version and is deleted as stale.
#[allow(clippy::too_many_arguments)]
fn start_afresh(
    core: &Core,
    inner: &mut Inner,
    r: &pb::ChunkRequest,
    current: u64,
    old: u64,
    chain: &[u64],
    file_size: u64,
    now: Instant,
) -> FsResult<(Option<u64>, Opened)> {
    let version = old + 1;
    tracing::warn!(
        chunk = current,
        inode = r.inode,
        index = r.chunk_index,
        version,
        "a chunk past its file's end has no copy on any chunkserver (its creation was logged, its reply lost in a crash): creating it again, empty"
    );
    let v = core.commit(
        inner,
        Op::WriteChunk(pb::WriteChunkOp {
            inode: r.inode,
            chunk_index: r.chunk_index,
            chunk_id: current,
            version,
            created: false,
            copy_from_chunk_id: 0,
        }),
    )?;
    inner.chunks.start_write(current, version, chain, now);
    inner.tails.started_afresh(current, version);
    inner.tails.opened(current, r.session_id, version);
    let reply = pb::WriteChunkReply {
        chunk_id: current,
        version,
        old_version: 0,
        chain: chain_of(inner, chain),
        file_size,
        ..Default::default()
    };
    Ok((Some(v), Opened::Session(reply)))
}

/// `WriteChunkEnd`: ends a write session: copies that failed are dropped,
/// the file's length and times are recorded (quota checked when it grows).
pub async fn write_chunk_end(
    core: &Core,
    r: pb::WriteChunkEndRequest,
) -> Result<pb::AttrReply, Status> {
    core.mutate_as(r.session_id, |core, inner| {
        let f = check_regular(&inner.state, r.inode)?;
        let slot = usize::try_from(r.chunk_index)
            .ok()
            .and_then(|idx| f.chunks().and_then(|c| c.get(idx)).copied())
            .unwrap_or(0);
        let grows = r.file_size > f.size;
        if slot != 0 && slot == r.chunk_id {
            let version = inner.state.chunks.get(&slot).map_or(0, |c| c.version);
            inner.chunks.end_write(slot, version, &r.failed_servers);
        }
        inner.tails.ended(r.chunk_id, r.session_id, r.version);
        if r.modified {
            let start = r.chunk_index.saturating_mul(inner.state.chunk_size);
            let claim = r.file_size.saturating_sub(start);
            let since = match r.written_since {
                0 => r.version,
                v => v,
            };
            inner.tails.check_claim(r.chunk_id, since, claim)?;
        }
        if grows && f.nlink > 0 {
            let quota = volumes::check_quota(
                &inner.state,
                0,
                f.parent,
                Usage {
                    bytes: r.file_size - f.size,
                    inodes: 0,
                },
                now_ns(),
            );
            if let Err(e) = quota {
                // The session's bytes past the end stay unrecorded.
                if slot != 0 && slot == r.chunk_id {
                    let start = r.chunk_index.saturating_mul(inner.state.chunk_size);
                    inner.tails.refused(slot, r.file_size.saturating_sub(start));
                }
                return Err(e);
            }
        }
        let v = if grows || r.modified {
            Some(core.commit(
                inner,
                Op::WriteChunkEnd(pb::WriteChunkEndOp {
                    inode: r.inode,
                    file_size: r.file_size,
                    modified: r.modified,
                }),
            )?)
        } else {
            None
        };
        Ok((v, attr_reply(inner, r.inode)?))
    })
    .await
}
