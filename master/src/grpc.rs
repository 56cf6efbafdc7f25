//! The gRPC services: Master (clients), ChunkMaster (chunkservers) and Admin.

use std::sync::Arc;
use std::time::Instant;

use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::{
    self, admin_server::Admin, chunk_master_server::ChunkMaster, master_server::Master, FileType,
    SetAttrField,
};
use tonic::{Request, Response, Status};

use crate::core::{Core, Inner};
use crate::namespace::{err, FsError, FsResult, MAX_INODES, ROOT_INODE};
use crate::ops::{check_regular, prepare_create, Owner};
use crate::sessions::Session;
use crate::volume_rpcs;
use crate::volumes::{self, Usage};

/// Default and largest readdir batch.
pub const READDIR_DEFAULT: usize = 1000;
/// Largest readdir batch the master returns.
pub const READDIR_MAX: usize = 10_000;
/// Heartbeat period asked of chunkservers.
pub const HEARTBEAT_MS: u32 = 1000;

/// Implementation of the three services over one [`Core`].
#[derive(Clone)]
pub struct Services {
    core: Arc<Core>,
}

type Reply<T> = Result<Response<T>, Status>;

impl Services {
    /// Services over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn done<T>(&self, rpc: &str, r: Result<T, Status>) -> Reply<T> {
        self.core.metrics.count(rpc, r.is_ok());
        if let Err(e) = &r {
            tracing::debug!(rpc, code = ?e.code(), message = e.message(), "request failed");
        }
        r.map(Response::new)
    }

    fn check_epoch(&self, seen: u64) -> Result<(), Status> {
        if seen > self.core.epoch {
            if !self.core.hub.is_fenced() {
                tracing::error!(
                    epoch = self.core.epoch,
                    newer = seen,
                    "a peer has seen a newer master epoch: this master is deposed and stops accepting mutations"
                );
            }
            self.core.hub.set_fence(seen);
            return Err(Status::failed_precondition(format!(
                "this master's epoch {} is older than epoch {seen} already seen: it has been replaced by a newer master",
                self.core.epoch
            )));
        }
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> FsResult<T>) -> Result<T, Status> {
        let g = self.core.inner.lock();
        f(&g).map_err(Status::from)
    }

    /// Cuts bytes stored past the end of `inode` that `growth` by a known,
    /// writable `session` would make part of the file (see `tails`).
    async fn settle_tail(
        &self,
        session: u64,
        inode: u64,
        growth: crate::tails::Growth,
    ) -> Result<(), Status> {
        self.read(|i| self.core.check_writable(i, session))?;
        crate::tails::settle(&self.core, session, inode, growth).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        session_id: u64,
        parent: u64,
        name: &[u8],
        kind: FileType,
        mode: u32,
        umask: u32,
        rdev: u64,
        caller: &Option<pb::Caller>,
        target: &[u8],
        exclusive: bool,
        open: bool,
    ) -> Result<pb::AttrReply, Status> {
        let owner = owner(caller);
        // Create + open in one call: the file is marked open in the session under
        // the same lock, exactly as a following Open would.
        let mark_open = |inner: &mut Inner, reply: &pb::AttrReply| {
            if let Some(a) = reply.attr.as_ref() {
                if open && a.kind == FileType::Regular as i32 {
                    inner.sessions.open(session_id, a.inode);
                }
            }
        };
        self.core
            .mutate(|core, inner| {
                core.check_writable(inner, session_id)?;
                if !exclusive {
                    if let Some(ino) = inner.state.dir(parent)?.get(name).copied() {
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
                        bytes: target.len() as u64,
                        inodes: 1,
                    },
                    crate::core::now_ns(),
                )?;
                let op = prepare_create(
                    &inner.state,
                    parent,
                    name,
                    kind,
                    mode,
                    umask,
                    rdev,
                    owner,
                    target,
                )?;
                let ino = match &op {
                    Op::Create(c) => c.inode,
                    _ => 0,
                };
                let v = core.commit(inner, op)?;
                let mut reply = attr_reply(inner, ino)?;
                reply.parent = inner.state.attr(parent).ok();
                mark_open(inner, &reply);
                Ok((Some(v), reply))
            })
            .await
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

/// What ReadChunk answers for chunk `index` of regular file `inode`: its id,
/// version and valid copies (id 0 for a hole or past the end), and the file size.
fn read_chunk_reply(i: &Inner, inode: u64, index: u64) -> FsResult<pb::ReadChunkReply> {
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

fn attr_reply(inner: &Inner, ino: u64) -> FsResult<pb::AttrReply> {
    Ok(pb::AttrReply {
        attr: Some(inner.state.attr(ino)?),
        parent: None,
        first_chunk: None,
    })
}

/// The directories' attributes after an entry was removed or moved.
fn entry_change(inner: &Inner, parent: u64, new_parent: u64) -> pb::EntryChangeReply {
    pb::EntryChangeReply {
        parent: inner.state.attr(parent).ok(),
        new_parent: (new_parent != parent)
            .then(|| inner.state.attr(new_parent).ok())
            .flatten(),
    }
}

/// Normalises a session subdirectory and resolves it to a directory inode.
fn resolve_subdir(inner: &Inner, subdir: &str) -> FsResult<u64> {
    if subdir.contains('\0') {
        return err(libc::EINVAL, "subdir contains NUL");
    }
    let ino = inner.state.resolve(ROOT_INODE, subdir).map_err(|e| {
        FsError::new(
            e.errno,
            format!("cannot use subdir '{subdir}': {}", e.message),
        )
    })?;
    if !inner.state.get(ino)?.is_dir() {
        return err(
            libc::ENOTDIR,
            format!("cannot use subdir '{subdir}': it is not a directory"),
        );
    }
    Ok(ino)
}

#[tonic::async_trait]
impl Master for Services {
    async fn register_session(
        &self,
        req: Request<pb::RegisterSessionRequest>,
    ) -> Reply<pb::RegisterSessionReply> {
        let r = req.into_inner();
        let res = (|| {
            self.check_epoch(r.seen_epoch)?;
            let mut g = self.core.inner.lock();
            let inner = &mut *g;
            let root = resolve_subdir(inner, &r.subdir)?;
            let sid = if r.session_id != 0 {
                r.session_id
            } else {
                loop {
                    let id: u64 = rand::random();
                    if id != 0 && !inner.sessions.map.contains_key(&id) {
                        break id;
                    }
                }
            };
            let resumed = inner.sessions.close(sid);
            inner.sessions.map.insert(
                sid,
                Session {
                    root,
                    read_only: r.read_only,
                    client_name: r.client_name.clone(),
                    hostname: r.hostname.clone(),
                    renewed: Instant::now(),
                    open: Default::default(),
                },
            );
            for ino in &r.open_inodes {
                if inner.state.inodes.contains_key(ino) {
                    inner.sessions.open(sid, *ino);
                }
            }
            for w in &r.write_sessions {
                if inner.state.chunks.contains_key(&w.chunk_id) {
                    inner.tails.opened(w.chunk_id, sid, w.version);
                }
            }
            // Inodes the previous incarnation held but the client no longer lists.
            self.core.purge_unused(inner, &resumed);
            tracing::info!(session = sid, client = %r.client_name, host = %r.hostname, subdir = %r.subdir, read_only = r.read_only, resumed = r.session_id != 0, "session registered");
            Ok(pb::RegisterSessionReply {
                session_id: sid,
                root_inode: root,
                lease_secs: self.core.settings.session_timeout.as_secs() as u32,
                epoch: self.core.epoch,
                chunk_size: inner.state.chunk_size,
                cluster_id: inner.state.cluster_id.clone(),
                read_only: r.read_only,
            })
        })();
        self.done("RegisterSession", res)
    }

    async fn renew_session(&self, req: Request<pb::SessionRef>) -> Reply<pb::RenewSessionReply> {
        let sid = req.into_inner().session_id;
        let res = {
            let mut g = self.core.inner.lock();
            match g.sessions.map.get_mut(&sid) {
                Some(s) => {
                    s.renewed = Instant::now();
                    Ok(pb::RenewSessionReply {
                        epoch: self.core.epoch,
                    })
                }
                None => Err(alces_proto::errno::session_unknown(sid)),
            }
        };
        self.done("RenewSession", res)
    }

    async fn close_session(&self, req: Request<pb::SessionRef>) -> Reply<pb::Empty> {
        let sid = req.into_inner().session_id;
        let res = self
            .core
            .mutate(|core, inner| {
                let freed = inner.sessions.close(sid);
                inner.tails.session_gone(&inner.state, sid);
                Ok((core.purge_unused(inner, &freed), pb::Empty {}))
            })
            .await;
        self.done("CloseSession", res)
    }

    async fn lookup(&self, req: Request<pb::EntryRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = self.read(|i| {
            let ino = i.state.lookup(r.parent, &r.name)?;
            attr_reply(i, ino)
        });
        self.done("Lookup", res)
    }

    async fn get_attr(&self, req: Request<pb::InodeRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = self.read(|i| attr_reply(i, r.inode));
        self.done("GetAttr", res)
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        // Growing a file cuts bytes stored past its old end first (see `tails`).
        let growth = crate::tails::Growth::Size(r.size);
        if r.valid & SetAttrField::SetAttrSize as u32 != 0 {
            if let Err(e) = self.settle_tail(r.session_id, r.inode, growth).await {
                return self.done("SetAttr", Err(e));
            }
        }
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
                inner.state.get(r.inode)?;
                if r.valid & !crate::ops::SETATTR_KNOWN != 0 {
                    return err(libc::EINVAL, format!("unknown SetAttr bits {:#x}", r.valid));
                }
                if r.valid == SetAttrField::SetAttrNone as u32 {
                    return Ok((None, attr_reply(inner, r.inode)?));
                }
                if r.valid & SetAttrField::SetAttrSize as u32 != 0 {
                    crate::tails::recheck(
                        &inner.tails,
                        &inner.state,
                        r.session_id,
                        r.inode,
                        growth,
                    )?;
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
                            crate::core::now_ns(),
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
            .await;
        self.done("SetAttr", res)
    }

    async fn mknod(&self, req: Request<pb::MknodRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = async {
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
                        format!("Mknod cannot create file type {}: use a regular file, fifo, socket or device", r.kind),
                    ))
                }
            };
            let rdev = if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
                r.rdev
            } else {
                0
            };
            self.create(
                r.session_id,
                r.parent,
                &r.name,
                kind,
                r.mode,
                r.umask,
                rdev,
                &r.caller,
                b"",
                r.exclusive,
                r.open,
            )
            .await
        }
        .await;
        self.done("Mknod", res)
    }

    async fn mkdir(&self, req: Request<pb::MkdirRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = self
            .create(
                r.session_id,
                r.parent,
                &r.name,
                FileType::Directory,
                r.mode,
                r.umask,
                0,
                &r.caller,
                b"",
                true,
                false,
            )
            .await;
        self.done("Mkdir", res)
    }

    async fn symlink(&self, req: Request<pb::SymlinkRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = self
            .create(
                r.session_id,
                r.parent,
                &r.name,
                FileType::Symlink,
                0o777,
                0,
                0,
                &r.caller,
                &r.target,
                true,
                false,
            )
            .await;
        self.done("Symlink", res)
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
                if let Ok(i) = inner.state.get(r.inode) {
                    volumes::check_quota(
                        &inner.state,
                        i.parent,
                        r.new_parent,
                        volumes::subtree(&inner.state, r.inode),
                        crate::core::now_ns(),
                    )?;
                }
                let v = core.commit(
                    inner,
                    Op::Link(pb::LinkOp {
                        inode: r.inode,
                        parent: r.new_parent,
                        name: r.new_name.clone(),
                    }),
                )?;
                let mut reply = attr_reply(inner, r.inode)?;
                reply.parent = inner.state.attr(r.new_parent).ok();
                Ok((Some(v), reply))
            })
            .await;
        self.done("Link", res)
    }

    async fn unlink(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let res = self.remove(req.into_inner(), false).await;
        self.done("Unlink", res)
    }

    async fn rmdir(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let res = self.remove(req.into_inner(), true).await;
        self.done("Rmdir", res)
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> Reply<pb::EntryChangeReply> {
        let r = req.into_inner();
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
                let victim = inner
                    .state
                    .dir(r.new_parent)
                    .ok()
                    .and_then(|d| d.get(&r.new_name[..]).copied());
                let keep_orphan = victim.is_some_and(|v| inner.sessions.is_open(v));
                let now = crate::core::now_ns();
                if let Some(src) = inner
                    .state
                    .dir(r.parent)
                    .ok()
                    .and_then(|d| d.get(&r.name[..]).copied())
                {
                    let st = &inner.state;
                    let from = st.get(src)?.parent;
                    volumes::check_quota(st, from, r.new_parent, volumes::subtree(st, src), now)?;
                    if let Some(v) =
                        victim.filter(|_| r.flags & pb::RenameFlag::RenameExchange as u32 != 0)
                    {
                        let from = st.get(v)?.parent;
                        volumes::check_quota(st, from, r.parent, volumes::subtree(st, v), now)?;
                    }
                }
                let v = core.commit(
                    inner,
                    Op::Rename(pb::RenameOp {
                        parent: r.parent,
                        name: r.name.clone(),
                        new_parent: r.new_parent,
                        new_name: r.new_name.clone(),
                        flags: r.flags,
                        keep_orphan,
                    }),
                )?;
                Ok((Some(v), entry_change(inner, r.parent, r.new_parent)))
            })
            .await;
        self.done("Rename", res)
    }

    async fn readlink(&self, req: Request<pb::InodeRequest>) -> Reply<pb::ReadlinkReply> {
        let r = req.into_inner();
        let res = self.read(|i| {
            Ok(pb::ReadlinkReply {
                target: i.state.readlink(r.inode)?.to_vec(),
            })
        });
        self.done("Readlink", res)
    }

    async fn readdir(&self, req: Request<pb::ReaddirRequest>) -> Reply<pb::ReaddirReply> {
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => READDIR_DEFAULT,
            n => n.min(READDIR_MAX),
        };
        let res = self.read(|i| {
            let (list, eof) = i.state.readdir(r.inode, &r.after_name, limit)?;
            let mut entries = Vec::with_capacity(list.len());
            for (name, ino) in list {
                let child = i.state.get(ino)?;
                entries.push(pb::DirEntry {
                    name: name.to_vec(),
                    inode: ino,
                    kind: child.kind as i32,
                    attr: r.plus.then(|| child.attr(ino)),
                });
            }
            Ok(pb::ReaddirReply {
                entries,
                eof,
                parent: i.state.get(r.inode)?.parent,
            })
        });
        self.done("Readdir", res)
    }

    async fn open(&self, req: Request<pb::OpenRequest>) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = (|| {
            let mut g = self.core.inner.lock();
            let writes = r.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32
                || r.flags & libc::O_TRUNC as u32 != 0;
            if writes {
                self.core.check_writable(&g, r.session_id)?;
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
        })();
        self.done("Open", res)
    }

    async fn release(&self, req: Request<pb::InodeRequest>) -> Reply<pb::Empty> {
        let r = req.into_inner();
        let res = self
            .core
            .mutate(|core, inner| {
                let unused = inner.sessions.release(r.session_id, r.inode);
                let v = if unused {
                    core.purge_unused(inner, &[r.inode])
                } else {
                    None
                };
                Ok((v, pb::Empty {}))
            })
            .await;
        self.done("Release", res)
    }

    async fn statfs(&self, req: Request<pb::InodeRequest>) -> Reply<pb::StatfsReply> {
        let r = req.into_inner();
        let res = self.read(|i| {
            let (total, _used, free) = i.chunks.space();
            let inodes = i.state.inodes.len() as u64;
            let mut reply = pb::StatfsReply {
                total_bytes: total,
                free_bytes: free,
                avail_bytes: free,
                total_inodes: MAX_INODES,
                free_inodes: MAX_INODES.saturating_sub(inodes),
            };
            if let Some((dir, q)) = volumes::quota_above(&i.state, r.inode) {
                volume_rpcs::quota_statfs(&i.state, dir, &q, &mut reply);
            }
            Ok(reply)
        });
        self.done("Statfs", res)
    }

    async fn get_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::XattrReply> {
        let r = req.into_inner();
        let res = self.read(|i| {
            crate::ops::check_xattr_name(&r.name)?;
            Ok(pb::XattrReply {
                value: i.state.getxattr(r.inode, &r.name)?.to_vec(),
            })
        });
        self.done("GetXattr", res)
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let r = req.into_inner();
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
                let v = core.commit(
                    inner,
                    Op::SetXattr(pb::SetXattrOp {
                        inode: r.inode,
                        name: r.name.clone(),
                        value: r.value.clone(),
                        flags: r.flags,
                    }),
                )?;
                Ok((Some(v), pb::Empty {}))
            })
            .await;
        self.done("SetXattr", res)
    }

    async fn list_xattr(&self, req: Request<pb::InodeRequest>) -> Reply<pb::ListXattrReply> {
        let r = req.into_inner();
        let res = self.read(|i| {
            Ok(pb::ListXattrReply {
                names: i.state.listxattr(r.inode)?,
            })
        });
        self.done("ListXattr", res)
    }

    async fn remove_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::Empty> {
        let r = req.into_inner();
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
                let v = core.commit(
                    inner,
                    Op::RemoveXattr(pb::RemoveXattrOp {
                        inode: r.inode,
                        name: r.name.clone(),
                    }),
                )?;
                Ok((Some(v), pb::Empty {}))
            })
            .await;
        self.done("RemoveXattr", res)
    }

    async fn read_chunk(&self, req: Request<pb::ChunkRequest>) -> Reply<pb::ReadChunkReply> {
        let r = req.into_inner();
        let res = self.read(|i| read_chunk_reply(i, r.inode, r.chunk_index));
        self.done("ReadChunk", res)
    }

    async fn write_chunk(&self, req: Request<pb::ChunkRequest>) -> Reply<pb::WriteChunkReply> {
        let r = req.into_inner();
        // Bytes past the file's end in the chunks this session can make part of
        // the file are cut first (see `tails`).
        let growth = crate::tails::Growth::Chunk(r.chunk_index);
        if let Err(e) = self.settle_tail(r.session_id, r.inode, growth).await {
            return self.done("WriteChunk", Err(e));
        }
        let mut plan: Option<crate::cow::Plan> = None;
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
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
                crate::tails::recheck(&inner.tails, &inner.state, r.session_id, r.inode, growth)?;
                if f.nlink > 0 && r.chunk_index.saturating_mul(inner.state.chunk_size) >= file_size
                {
                    // Writing past the end: refuse when the quota is already full.
                    volumes::check_quota(
                        &inner.state,
                        0,
                        f.parent,
                        Usage {
                            bytes: 1,
                            inodes: 0,
                        },
                        crate::core::now_ns(),
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
                    let chain = chain
                        .iter()
                        .filter_map(|s| inner.chunks.servers.get(s))
                        .map(|s| s.location())
                        .collect();
                    return Ok((
                        Some(v),
                        pb::WriteChunkReply {
                            chunk_id: id,
                            version: 1,
                            old_version: 0,
                            chain,
                            file_size,
                            ..Default::default()
                        },
                    ));
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
                let holders: Vec<u64> = inner
                    .chunks
                    .valid(current, old)
                    .iter()
                    .map(|s| s.id)
                    .collect();
                if holders.is_empty() {
                    return err(
                        libc::EIO,
                        format!("chunk {current} has no valid copy on a connected chunkserver"),
                    );
                }
                if inner.state.chunks.get(&current).is_some_and(|c| c.refs > 1) {
                    // Shared with a snapshot: the master makes a private copy
                    // first and switches the file to it after (see `cow`).
                    let (v, p) = crate::cow::reserve(
                        core,
                        inner,
                        r.inode,
                        r.chunk_index,
                        current,
                        old,
                        &holders,
                    )?;
                    plan = Some(p);
                    return Ok((Some(v), pb::WriteChunkReply::default()));
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
                let chain = holders
                    .iter()
                    .filter_map(|s| inner.chunks.servers.get(s))
                    .map(|s| s.location())
                    .collect();
                Ok((
                    Some(v),
                    pb::WriteChunkReply {
                        chunk_id: current,
                        version: old + 1,
                        old_version: old,
                        chain,
                        file_size,
                        ..Default::default()
                    },
                ))
            })
            .await;
        let res = match (plan, res) {
            (Some(p), Ok(_)) => {
                let copied = crate::cow::copy(&self.core, &p).await;
                self.core
                    .mutate(|core, inner| {
                        crate::cow::finish(core, inner, r.session_id, growth, &p, &copied)
                            .map(|(v, reply)| (Some(v), reply))
                    })
                    .await
            }
            (Some(p), Err(e)) => {
                // The reservation was not made durable: no copy is made.
                self.core
                    .inner
                    .lock()
                    .chunks
                    .end_copy(p.chunk_id, &[], false);
                Err(e)
            }
            (None, res) => res,
        };
        self.done("WriteChunk", res)
    }

    async fn write_chunk_end(
        &self,
        req: Request<pb::WriteChunkEndRequest>,
    ) -> Reply<pb::AttrReply> {
        let r = req.into_inner();
        let res = self
            .core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
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
                        crate::core::now_ns(),
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
            .await;
        self.done("WriteChunkEnd", res)
    }
}

impl Services {
    async fn remove(
        &self,
        r: pb::EntryRequest,
        directory: bool,
    ) -> Result<pb::EntryChangeReply, Status> {
        self.core
            .mutate(|core, inner| {
                core.check_writable(inner, r.session_id)?;
                let child = inner.state.lookup(r.parent, &r.name).ok();
                let keep_orphan = child.is_some_and(|c| inner.sessions.is_open(c));
                let trash_secs = match child.and_then(|c| inner.state.inodes.get(&c)) {
                    Some(i) if !directory && i.kind == FileType::Regular && i.nlink == 1 => {
                        volumes::trash_secs(&inner.state, r.parent).0
                    }
                    _ => 0,
                };
                let v = core.commit(
                    inner,
                    Op::Unlink(pb::UnlinkOp {
                        parent: r.parent,
                        name: r.name.clone(),
                        directory,
                        keep_orphan,
                        trash_secs,
                    }),
                )?;
                Ok((Some(v), entry_change(inner, r.parent, r.parent)))
            })
            .await
    }
}

#[tonic::async_trait]
impl ChunkMaster for Services {
    async fn register_chunkserver(
        &self,
        req: Request<pb::RegisterChunkserverRequest>,
    ) -> Reply<pb::RegisterChunkserverReply> {
        let r = req.into_inner();
        let res = (|| {
            self.check_epoch(r.seen_epoch)?;
            if r.server_id == 0 {
                return Err(alces_proto::errno::status(
                    libc::EINVAL,
                    "server_id 0 is not valid: a chunkserver must generate a random non-zero id",
                ));
            }
            alces_proto::net::validate_addr(&r.address).map_err(|e| {
                alces_proto::errno::status(libc::EINVAL, format!("chunkserver address: {e}"))
            })?;
            let mut g = self.core.inner.lock();
            let inner = &mut *g;
            let now = Instant::now();
            let adoptions = inner.chunks.register(&r, now, &inner.state);
            self.core.adopt(inner, &adoptions);
            // The quorum is known again at once, not at the next maintenance tick.
            self.core
                .hub
                .set_isolated(!crate::replication::chunkserver_quorum(&inner.chunks, now));
            inner.tails.registered(&inner.state, &r.chunks);
            tracing::info!(server = r.server_id, address = %r.address, label = %r.label, chunks = r.chunks.len(), "chunkserver registered");
            Ok(pb::RegisterChunkserverReply {
                epoch: self.core.epoch,
                cluster_id: inner.state.cluster_id.clone(),
                heartbeat_ms: HEARTBEAT_MS,
            })
        })();
        self.done("RegisterChunkserver", res)
    }

    async fn chunkserver_heartbeat(
        &self,
        req: Request<pb::ChunkserverHeartbeatRequest>,
    ) -> Reply<pb::ChunkserverHeartbeatReply> {
        let r = req.into_inner();
        let res = (|| {
            self.check_epoch(r.seen_epoch)?;
            let mut g = self.core.inner.lock();
            let inner = &mut *g;
            inner.chunks.release_durable(self.core.durable_version());
            let now = Instant::now();
            let heard = inner.chunks.heartbeat(&r, now, &inner.state);
            if self.core.hub.is_isolated() {
                self.core
                    .hub
                    .set_isolated(!crate::replication::chunkserver_quorum(&inner.chunks, now));
            }
            let reply = match heard {
                None => pb::ChunkserverHeartbeatReply {
                    commands: Vec::new(),
                    epoch: self.core.epoch,
                    reregister: true,
                },
                Some((commands, adoptions)) => {
                    self.core.adopt(inner, &adoptions);
                    pb::ChunkserverHeartbeatReply {
                        commands,
                        epoch: self.core.epoch,
                        reregister: false,
                    }
                }
            };
            Ok(reply)
        })();
        self.done("ChunkserverHeartbeat", res)
    }
}

#[tonic::async_trait]
impl Admin for Services {
    async fn status(&self, _req: Request<pb::Empty>) -> Reply<pb::ClusterStatus> {
        let res = self.read(|i| {
            let now = Instant::now();
            let (inodes, files, dirs) = i.state.counts();
            let c = i.chunks.counts(&i.state);
            let (total, used, free) = i.chunks.space();
            let mut servers: Vec<pb::ChunkserverStatus> = i
                .chunks
                .servers
                .values()
                .map(|s| {
                    let (t, u, f) = s.space();
                    pb::ChunkserverStatus {
                        server_id: s.id,
                        address: s.address.clone(),
                        label: s.label.clone(),
                        connected: s.connected,
                        disks: s.disks.clone(),
                        chunks: s.held.len() as u64,
                        total_bytes: t,
                        used_bytes: u,
                        free_bytes: f,
                        last_seen_ms: now.saturating_duration_since(s.last_seen).as_millis() as u64,
                        ..crate::admin::drain_status(i, s.id)
                    }
                })
                .collect();
            servers.sort_by(|a, b| {
                a.address
                    .cmp(&b.address)
                    .then(a.server_id.cmp(&b.server_id))
            });
            Ok(pb::ClusterStatus {
                epoch: self.core.epoch,
                metadata_version: i.state.version,
                cluster_id: i.state.cluster_id.clone(),
                inodes,
                files,
                directories: dirs,
                chunks: i.state.chunks.len() as u64,
                chunkservers: servers,
                chunk_counts: Some(pb::ChunkCounts {
                    missing: c.missing,
                    under_goal: c.under,
                    at_goal: c.at,
                    over_goal: c.over,
                    max_goal: c.max_goal as u32,
                }),
                metaloggers: self.core.hub.status(i.state.version),
                sessions: i.sessions.map.len() as u64,
                total_bytes: total,
                used_bytes: used,
                free_bytes: free,
                role: "master".to_string(),
                chunk_size: i.state.chunk_size,
                default_goal: i.state.get(ROOT_INODE).map_or(0, |r| u32::from(r.goal)),
                replications_in_flight: i.chunks.replications_in_flight() as u64,
                conditions: self.core.hub.conditions(),
                sync_metaloggers: self.core.hub.sync as u32,
                tuning: Some(crate::admin::tuning(&self.core.settings)),
            })
        });
        self.done("Status", res)
    }

    async fn file_info(&self, req: Request<pb::FileInfoRequest>) -> Reply<pb::FileInfoReply> {
        let r = req.into_inner();
        let res = self.read(|i| {
            if !r.path.starts_with('/') {
                return err(
                    libc::EINVAL,
                    format!(
                        "path '{}' is not absolute: give it from the filesystem root",
                        r.path
                    ),
                );
            }
            let ino = i.state.resolve(ROOT_INODE, &r.path)?;
            let f = i.state.get(ino)?;
            let mut chunks = Vec::new();
            if let Some(list) = f.chunks() {
                for (idx, id) in list.iter().enumerate().filter(|(_, id)| **id != 0) {
                    let version = i.state.chunks.get(id).map_or(0, |c| c.version);
                    chunks.push(pb::ChunkDetail {
                        index: idx as u64,
                        chunk_id: *id,
                        version,
                        copies: i
                            .chunks
                            .valid(*id, version)
                            .iter()
                            .map(|s| s.location())
                            .collect(),
                        goal: u32::from(f.goal),
                    });
                }
            }
            Ok(pb::FileInfoReply {
                attr: Some(f.attr(ino)),
                chunks,
                path: r.path.clone(),
            })
        });
        self.done("FileInfo", res)
    }

    async fn set_goal(&self, req: Request<pb::SetGoalRequest>) -> Reply<pb::SetGoalReply> {
        let res = crate::admin::set_goal(&self.core, req.into_inner()).await;
        self.done("SetGoal", res)
    }

    async fn get_goal(&self, req: Request<pb::GetGoalRequest>) -> Reply<pb::GetGoalReply> {
        let r = req.into_inner();
        let res = self.read(|i| crate::admin::get_goal(i, &r.path));
        self.done("GetGoal", res)
    }

    async fn drain_chunkserver(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Reply<pb::ChunkserverStatus> {
        let res = crate::admin::drain(&self.core, req.into_inner()).await;
        self.done("DrainChunkserver", res)
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> Reply<pb::QuotaInfo> {
        let res = volume_rpcs::set_quota(&self.core, req.into_inner()).await;
        self.done("SetQuota", res)
    }

    async fn get_quota(&self, req: Request<pb::PathRequest>) -> Reply<pb::QuotaInfo> {
        let res = volume_rpcs::get_quota(&self.core, req.into_inner());
        self.done("GetQuota", res)
    }

    async fn remove_quota(&self, req: Request<pb::PathRequest>) -> Reply<pb::Empty> {
        let res = volume_rpcs::remove_quota(&self.core, req.into_inner()).await;
        self.done("RemoveQuota", res)
    }

    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Reply<pb::SnapshotReply> {
        let res = volume_rpcs::snapshot(&self.core, req.into_inner()).await;
        self.done("Snapshot", res)
    }

    async fn set_trash_time(
        &self,
        req: Request<pb::SetTrashTimeRequest>,
    ) -> Reply<pb::TrashTimeReply> {
        let res = volume_rpcs::set_trash_time(&self.core, req.into_inner()).await;
        self.done("SetTrashTime", res)
    }

    async fn get_trash_time(&self, req: Request<pb::PathRequest>) -> Reply<pb::TrashTimeReply> {
        let res = volume_rpcs::get_trash_time(&self.core, req.into_inner());
        self.done("GetTrashTime", res)
    }

    async fn list_trash(&self, _req: Request<pb::Empty>) -> Reply<pb::TrashList> {
        let res = volume_rpcs::list_trash(&self.core);
        self.done("ListTrash", res)
    }

    async fn restore_trash(&self, req: Request<pb::RestoreTrashRequest>) -> Reply<pb::TrashEntry> {
        let res = volume_rpcs::restore_trash(&self.core, req.into_inner()).await;
        self.done("RestoreTrash", res)
    }

    async fn purge_trash(&self, req: Request<pb::PurgeTrashRequest>) -> Reply<pb::PurgeTrashReply> {
        let res = volume_rpcs::purge_trash(&self.core, req.into_inner()).await;
        self.done("PurgeTrash", res)
    }

    async fn disk_usage(&self, req: Request<pb::PathRequest>) -> Reply<pb::DiskUsageReply> {
        let res = volume_rpcs::disk_usage(&self.core, req.into_inner());
        self.done("DiskUsage", res)
    }

    async fn check_consistency(&self, _req: Request<pb::Empty>) -> Reply<pb::ConsistencyReport> {
        let res = volume_rpcs::check_consistency(&self.core);
        self.done("CheckConsistency", res)
    }
}
