//! Cutting bytes stored past a file's end before the file grows over them
//! (see [`crate::runtime::tails`] for why and for what the master knows):
//! the master's own write session on the chunk and its `Truncate` through
//! the copies' chain, the wait of a request that would grow a file over such
//! a chunk, and the cleaning of a tree a snapshot is about to share.

use std::time::{Duration, Instant};

use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::{self, chunkserver_client::ChunkserverClient, ChunkLocation};
use tonic::Status;

use crate::core::Core;
use crate::runtime::tails::{end_in_chunk, Growth, Need};
use crate::state::error::FsError;
use crate::state::inode::Body;

/// How long a request waits for a chunk past the end to be cut (or for the
/// write sessions that may own its bytes to close) before `EAGAIN`.
pub const WAIT: Duration = Duration::from_secs(10);
/// Time limit of the master's `Truncate` through a chain.
const CUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Metadata key (decimal server id) by which a chunkserver names the chain
/// server further down that failed (the chunkserver's wire contract).
const FAILED_SERVER_KEY: &str = "x-alces-failed-server";

/// What the master's cut of one chunk is about.
struct Plan {
    chunk: u64,
    old_version: u64,
    version: u64,
    length: u64,
    chain: Vec<ChunkLocation>,
}

/// Cuts chunk `index` of `inode` at the file's end (see the module notes);
/// nothing when it no longer needs it.
pub async fn cut(core: &Core, inode: u64, index: u64) -> Result<(), Status> {
    let plan = core
        .mutate(|core, inner| {
            let st = &inner.state;
            let f = crate::state::ops::check_regular(st, inode)?;
            let chunk = f
                .chunks()
                .and_then(|c| c.get(index as usize))
                .copied()
                .unwrap_or(0);
            let length = end_in_chunk(f.size, index, st.chunk_size.max(1));
            if chunk == 0 || length >= st.chunk_size || !matches!(inner.tails.may_cut(chunk, length), Ok(true)) {
                return Ok((None, None));
            }
            let meta = st.chunks.get(&chunk).ok_or_else(|| {
                FsError::new(libc::EIO, format!("chunk {chunk} is missing from the chunk table"))
            })?;
            if meta.refs > 1 {
                return Ok((None, None));
            }
            if length == 0 {
                return drop_past_end(core, inner, inode, chunk).map(|v| (Some(v), None));
            }
            let old = meta.version;
            let holders: Vec<u64> = inner.chunks.holders(chunk, old);
            if holders.is_empty() {
                return Err(FsError::new(
                    libc::EIO,
                    format!("chunk {chunk} has bytes past its file's end to cut but no valid copy on a connected chunkserver"),
                ));
            }
            let v = core.commit(
                inner,
                Op::WriteChunk(pb::WriteChunkOp {
                    inode,
                    chunk_index: index,
                    chunk_id: chunk,
                    version: old + 1,
                    created: false,
                    copy_from_chunk_id: 0,
                }),
            )?;
            inner.chunks.start_write(chunk, old + 1, &holders, Instant::now());
            inner.tails.cut_started(chunk);
            let chain = holders
                .iter()
                .filter_map(|s| inner.chunks.servers.get(s))
                .map(|s| s.location())
                .collect();
            Ok((
                Some(v),
                Some(Plan {
                    chunk,
                    old_version: old,
                    version: old + 1,
                    length,
                    chain,
                }),
            ))
        })
        .await?;
    let Some(plan) = plan else {
        return Ok(());
    };
    let (result, failed) = send_truncate(core, &plan).await;
    let mut g = core.inner.lock();
    let inner = &mut *g;
    match result {
        Ok(()) => {
            inner.chunks.end_write(plan.chunk, plan.version, &failed);
            inner
                .tails
                .cut_ended(plan.chunk, Some((plan.version, plan.length)));
            tracing::info!(
                chunk = plan.chunk,
                inode,
                index,
                length = plan.length,
                version = plan.version,
                "cut bytes past the file's end"
            );
            Ok(())
        }
        Err(st) => {
            // The copies' versions are unknown now: their servers report
            // them again, and the chunk stays to be cut.
            inner.tails.cut_ended(plan.chunk, None);
            inner.chunks.abandon_write(plan.chunk);
            tracing::warn!(chunk = plan.chunk, inode, index, error = %st.message(), "cutting bytes past the file's end failed");
            Err(st)
        }
    }
}

/// Takes `chunk`, wholly past the end of `inode`, out of the file instead of
/// cutting it: the file needs none of its bytes, and its copies may be gone
/// for good (a chunk created by a write session whose client died before any
/// chunkserver stored it has no copy to cut, and never will). A logged
/// `SetAttr` to the file's own size and times frees every chunk past the end
/// (their copies are deleted once the free is durable), so it waits while a
/// write session is open on any of them. Returns the committed version.
fn drop_past_end(
    core: &Core,
    inner: &mut crate::core::Inner,
    inode: u64,
    chunk: u64,
) -> Result<u64, FsError> {
    let st = &inner.state;
    let f = crate::state::ops::check_regular(st, inode)?;
    let keep = f.size.div_ceil(st.chunk_size.max(1));
    let past: Vec<u64> = f
        .chunks()
        .and_then(|c| c.get(usize::try_from(keep).unwrap_or(usize::MAX)..))
        .unwrap_or(&[])
        .iter()
        .copied()
        .filter(|&c| c != 0)
        .collect();
    if let Some(busy) = past
        .iter()
        .find(|&&c| c != chunk && (inner.tails.has_writers(c) || inner.tails.is_cutting(c)))
    {
        return Err(FsError::new(
            libc::EAGAIN,
            format!(
                "chunk {chunk} lies wholly past the end of inode {inode} and is to be taken out of the file, but chunk {busy} past the end is being written; retry once that write session is closed"
            ),
        ));
    }
    let op = Op::SetAttr(pb::SetAttrOp {
        inode,
        valid: pb::SetAttrField::SetAttrSize as u32
            | pb::SetAttrField::SetAttrMtime as u32
            | pb::SetAttrField::SetAttrCtime as u32,
        size: f.size,
        mtime_ns: f.mtime,
        ctime_ns: f.ctime,
        ..Default::default()
    });
    let v = core.commit(inner, op)?;
    tracing::info!(
        chunk,
        inode,
        chunks = past.len(),
        "took chunks wholly past the file's end out of the file (they may hold bytes no one recorded, and may have no copy left)"
    );
    Ok(v)
}

/// Sends the cut through the chain, leaving out servers that fail (the rest
/// are cut under the same versions); returns the result and the failed servers.
async fn send_truncate(core: &Core, plan: &Plan) -> (Result<(), Status>, Vec<u64>) {
    let Some(auth) = core.settings.chunk_auth.as_ref() else {
        return (
            Err(Status::failed_precondition(
                "the master has no cluster secret to reach chunkservers",
            )),
            Vec::new(),
        );
    };
    let mut chain = plan.chain.clone();
    let mut failed = Vec::new();
    loop {
        let Some(first) = chain.first().cloned() else {
            return (
                Err(alces_proto::errno::status(
                    libc::EIO,
                    format!("every copy of chunk {} failed while being cut", plan.chunk),
                )),
                failed,
            );
        };
        let st = match alces_proto::net::channel(&first.address, &auth.0) {
            Err(e) => Status::unavailable(format!("chunkserver address {}: {e}", first.address)),
            Ok(ch) => {
                let mut cs = ChunkserverClient::new(ch);
                let req = pb::TruncateRequest {
                    chunk_id: plan.chunk,
                    expected_version: plan.old_version,
                    version: plan.version,
                    create: false,
                    length: plan.length,
                    chain: chain[1..].to_vec(),
                    copy_from_chunk_id: 0,
                    copy_from_version: 0,
                    access: None,
                };
                match tokio::time::timeout(CUT_TIMEOUT, cs.truncate(req)).await {
                    Ok(Ok(_)) => return (Ok(()), failed),
                    Ok(Err(st)) => st,
                    Err(_) => Status::deadline_exceeded(format!(
                        "no answer from {} within {} s",
                        first.address,
                        CUT_TIMEOUT.as_secs()
                    )),
                }
            }
        };
        match failed_server(&st, &chain) {
            Some(bad) if chain.len() > 1 => {
                tracing::warn!(chunk = plan.chunk, server = bad, error = %st.message(), "chunkserver failed while a chunk was cut: continuing without it");
                chain.retain(|l| l.server_id != bad);
                failed.push(bad);
            }
            _ => return (Err(st), failed),
        }
    }
}

/// The chain server that failed for `st` answered by `chain[0]`, if a server
/// failed (rather than the request being refused).
fn failed_server(st: &Status, chain: &[ChunkLocation]) -> Option<u64> {
    if let Some(id) = st
        .metadata()
        .get(FAILED_SERVER_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        return chain.iter().any(|l| l.server_id == id).then_some(id);
    }
    let errno = alces_proto::errno::of(st);
    if matches!(
        errno,
        libc::ESTALE | libc::ENOSPC | libc::EROFS | libc::EINVAL | libc::EFBIG
    ) {
        return None;
    }
    chain.first().map(|l| l.server_id)
}

/// [`settle`] for a request of `session`, which must be a known, writable
/// session.
pub async fn settle_as(
    core: &Core,
    session: u64,
    inode: u64,
    growth: Growth,
) -> Result<(), Status> {
    core.read(|i| core.check_writable(i, session))?;
    settle(core, session, inode, growth).await
}

/// Makes sure no chunk `growth` covers holds unrecorded bytes past the end of
/// `inode` before `session` grows the file: cuts them, or waits for the
/// write sessions that may own them, up to [`WAIT`] (then `EAGAIN`).
pub async fn settle(core: &Core, session: u64, inode: u64, growth: Growth) -> Result<(), Status> {
    let deadline = Instant::now() + WAIT;
    loop {
        let need = {
            let g = core.inner.lock();
            g.tails.need(&g.state, session, inode, growth)
        };
        let why = match need {
            Need::Nothing => return Ok(()),
            Need::Cut(index) => match cut(core, inode, index).await {
                Ok(()) => continue,
                Err(e) => e.message().to_string(),
            },
            Need::Wait(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(alces_proto::errno::status(libc::EAGAIN, why));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cuts the dirty chunks at the end of every file under `root` (before a
/// snapshot shares them).
pub async fn clean_tree(core: &Core, root: u64) -> Result<(), Status> {
    let files: Vec<(u64, u64)> = {
        let g = core.inner.lock();
        if !g.tails.has_dirty() {
            return Ok(());
        }
        let st = &g.state;
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            match st.inodes.get(&i).map(|n| &n.body) {
                Some(Body::Dir(e)) => stack.extend(e.values().copied()),
                Some(Body::File(_)) => {
                    if let Some(idx) = g.tails.dirty_tail(st, i) {
                        out.push((i, idx));
                    }
                }
                _ => {}
            }
        }
        out
    };
    for (inode, idx) in files {
        cut(core, inode, idx).await?;
    }
    Ok(())
}
