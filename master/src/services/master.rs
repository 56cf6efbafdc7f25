//! The `Master` service clients call: sessions, the namespace and file data
//! locations, over [`crate::domain::sessions`], [`crate::domain::metadata`]
//! [`crate::domain::io`] and [`crate::domain::locks`]. A call made with a
//! credential is first admitted by [`crate::domain::credentials::admit`]
//! (its session, and every inode it names inside the session's subtree) and
//! its caller squashed as the credential says.

use std::sync::Arc;

use alces_proto::auth::Identity;
use alces_proto::pb::{self, master_server::Master};
use tonic::{Request, Status};

use super::{reply, Reply};
use crate::core::Core;
use crate::domain::credentials::{self, Export};
use crate::domain::{io, locks, metadata, sessions};

/// The `Master` service over one [`Core`].
#[derive(Clone)]
pub struct MasterService {
    core: Arc<Core>,
}

impl MasterService {
    /// The service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Admits a call of session `sid` naming `inodes` (see
    /// [`credentials::admit`]).
    fn admit<T>(
        &self,
        req: &Request<T>,
        sid: u64,
        inodes: &[u64],
    ) -> Result<Option<Export>, Status> {
        credentials::admit(&self.core, Identity::of(req), sid, inodes)
    }
}

/// Runs `$body` when the call is admitted, else answers the refusal.
macro_rules! admitted {
    ($self:ident, $rpc:literal, $e:expr, $body:expr) => {
        match $e {
            Ok(e) => {
                let res = $body(e);
                reply(&$self.core, $rpc, res)
            }
            Err(s) => reply(&$self.core, $rpc, Err(s)),
        }
    };
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn register_session(
        &self,
        req: Request<pb::RegisterSessionRequest>,
    ) -> Reply<pb::RegisterSessionReply> {
        let who = Identity::of(&req);
        let res = sessions::register(&self.core, who, req.into_inner());
        reply(&self.core, "RegisterSession", res)
    }

    async fn renew_session(&self, req: Request<pb::SessionRef>) -> Reply<pb::RenewSessionReply> {
        let sid = req.get_ref().session_id;
        admitted!(self, "RenewSession", self.admit(&req, sid, &[]), |_| {
            sessions::renew(&self.core, sid)
        })
    }

    async fn close_session(&self, req: Request<pb::SessionRef>) -> Reply<pb::Empty> {
        let sid = req.get_ref().session_id;
        if let Err(e) = self.admit(&req, sid, &[]) {
            return reply(&self.core, "CloseSession", Err(e));
        }
        let res = sessions::close(&self.core, sid).await;
        reply(&self.core, "CloseSession", res)
    }

    async fn lookup(&self, req: Request<pb::EntryRequest>) -> Reply<pb::AttrReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "Lookup",
            self.admit(&req, r.session_id, &[r.parent]),
            |e: Option<Export>| {
                match e {
                    // `..` at the root of an export stays there.
                    Some(e) if r.parent == e.root && r.name == b".." => {
                        metadata::get_attr(&self.core, e.root)
                    }
                    _ => metadata::lookup(&self.core, r),
                }
            }
        )
    }

    async fn get_attr(&self, req: Request<pb::InodeRequest>) -> Reply<pb::AttrReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "GetAttr",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| metadata::get_attr(&self.core, r.inode)
        )
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        let e = match self.admit(&req, req.get_ref().session_id, &ins) {
            Ok(e) => e,
            Err(s) => return reply(&self.core, "SetAttr", Err(s)),
        };
        let mut r = req.into_inner();
        credentials::squash(&e, &mut r.caller);
        if let Err(err) = credentials::check_set_attr(&self.core, &e, &r) {
            return reply(&self.core, "SetAttr", Err(err.into()));
        }
        let res = metadata::set_attr(&self.core, r).await;
        reply(&self.core, "SetAttr", res)
    }

    async fn mknod(&self, req: Request<pb::MknodRequest>) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.parent]
        };
        let e = match self.admit(&req, req.get_ref().session_id, &ins) {
            Ok(e) => e,
            Err(s) => return reply(&self.core, "Mknod", Err(s)),
        };
        let mut r = req.into_inner();
        credentials::squash(&e, &mut r.caller);
        let res = metadata::mknod(&self.core, r).await;
        reply(&self.core, "Mknod", res)
    }

    async fn mkdir(&self, req: Request<pb::MkdirRequest>) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.parent]
        };
        let e = match self.admit(&req, req.get_ref().session_id, &ins) {
            Ok(e) => e,
            Err(s) => return reply(&self.core, "Mkdir", Err(s)),
        };
        let mut r = req.into_inner();
        credentials::squash(&e, &mut r.caller);
        let res = metadata::mkdir(&self.core, r).await;
        reply(&self.core, "Mkdir", res)
    }

    async fn symlink(&self, req: Request<pb::SymlinkRequest>) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.parent]
        };
        let e = match self.admit(&req, req.get_ref().session_id, &ins) {
            Ok(e) => e,
            Err(s) => return reply(&self.core, "Symlink", Err(s)),
        };
        let mut r = req.into_inner();
        credentials::squash(&e, &mut r.caller);
        let res = metadata::symlink(&self.core, r).await;
        reply(&self.core, "Symlink", res)
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.inode, r.new_parent]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "Link", Err(s));
        }
        let res = metadata::link(&self.core, req.into_inner()).await;
        reply(&self.core, "Link", res)
    }

    async fn unlink(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let r = req.get_ref();
        if let Err(e) = self.admit(&req, r.session_id, &[r.parent]) {
            return reply(&self.core, "Unlink", Err(e));
        }
        let res = metadata::remove(&self.core, req.into_inner(), false).await;
        reply(&self.core, "Unlink", res)
    }

    async fn rmdir(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let r = req.get_ref();
        if let Err(e) = self.admit(&req, r.session_id, &[r.parent]) {
            return reply(&self.core, "Rmdir", Err(e));
        }
        let res = metadata::remove(&self.core, req.into_inner(), true).await;
        reply(&self.core, "Rmdir", res)
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> Reply<pb::EntryChangeReply> {
        let ins = {
            let r = req.get_ref();
            [r.parent, r.new_parent]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "Rename", Err(s));
        }
        let res = metadata::rename(&self.core, req.into_inner()).await;
        reply(&self.core, "Rename", res)
    }

    async fn readlink(&self, req: Request<pb::InodeRequest>) -> Reply<pb::ReadlinkReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "Readlink",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| metadata::readlink(&self.core, r.inode)
        )
    }

    async fn readdir(&self, req: Request<pb::ReaddirRequest>) -> Reply<pb::ReaddirReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "Readdir",
            self.admit(&req, r.session_id, &[r.inode]),
            |e: Option<Export>| {
                let mut res = metadata::readdir(&self.core, r);
                // `..` of an export's root is the root itself.
                if let (Some(e), Ok(reply)) = (e, res.as_mut()) {
                    if r.inode == e.root {
                        reply.parent = e.root;
                    }
                }
                res
            }
        )
    }

    async fn open(&self, req: Request<pb::OpenRequest>) -> Reply<pb::AttrReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "Open",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| io::open(&self.core, r)
        )
    }

    async fn release(&self, req: Request<pb::InodeRequest>) -> Reply<pb::Empty> {
        let r = req.get_ref();
        if let Err(e) = self.admit(&req, r.session_id, &[r.inode]) {
            return reply(&self.core, "Release", Err(e));
        }
        let res = io::release(&self.core, req.get_ref()).await;
        reply(&self.core, "Release", res)
    }

    async fn statfs(&self, req: Request<pb::InodeRequest>) -> Reply<pb::StatfsReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "Statfs",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| metadata::statfs(&self.core, r.inode)
        )
    }

    async fn get_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::XattrReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "GetXattr",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| metadata::get_xattr(&self.core, r)
        )
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "SetXattr", Err(s));
        }
        let res = metadata::set_xattr(&self.core, req.into_inner()).await;
        reply(&self.core, "SetXattr", res)
    }

    async fn list_xattr(&self, req: Request<pb::InodeRequest>) -> Reply<pb::ListXattrReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "ListXattr",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| metadata::list_xattr(&self.core, r.inode)
        )
    }

    async fn remove_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::Empty> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "RemoveXattr", Err(s));
        }
        let res = metadata::remove_xattr(&self.core, req.into_inner()).await;
        reply(&self.core, "RemoveXattr", res)
    }

    async fn read_chunk(&self, req: Request<pb::ChunkRequest>) -> Reply<pb::ReadChunkReply> {
        let r = req.get_ref();
        admitted!(
            self,
            "ReadChunk",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| io::read_chunk(&self.core, r).map(|mut rep| {
                rep.access = credentials::chunk_access(
                    &self.core,
                    Identity::of(&req),
                    rep.chunk_id,
                    rep.version,
                    false,
                    0,
                    &[],
                );
                rep
            })
        )
    }

    async fn write_chunk(&self, req: Request<pb::ChunkRequest>) -> Reply<pb::WriteChunkReply> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "WriteChunk", Err(s));
        }
        let who = Identity::of(&req);
        let res = io::write_chunk(&self.core, req.into_inner())
            .await
            .map(|mut rep| {
                rep.access = credentials::chunk_access(
                    &self.core,
                    who,
                    rep.chunk_id,
                    rep.version,
                    true,
                    rep.copy_from_chunk_id,
                    &rep.chain,
                );
                rep
            });
        reply(&self.core, "WriteChunk", res)
    }

    async fn write_chunk_end(
        &self,
        req: Request<pb::WriteChunkEndRequest>,
    ) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "WriteChunkEnd", Err(s));
        }
        let res = io::write_chunk_end(&self.core, req.into_inner()).await;
        reply(&self.core, "WriteChunkEnd", res)
    }

    async fn set_lock(&self, req: Request<pb::SetLockRequest>) -> Reply<pb::SetLockReply> {
        let ins = {
            let r = req.get_ref();
            [r.lock.as_ref().map_or(0, |l| l.inode)]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "SetLock", Err(s));
        }
        let res = locks::set_lock(&self.core, req.into_inner()).await;
        reply(&self.core, "SetLock", res)
    }

    async fn get_lock(&self, req: Request<pb::SetLockRequest>) -> Reply<pb::GetLockReply> {
        let ins = {
            let r = req.get_ref();
            [r.lock.as_ref().map_or(0, |l| l.inode)]
        };
        if let Err(s) = self.admit(&req, req.get_ref().session_id, &ins) {
            return reply(&self.core, "GetLock", Err(s));
        }
        let res = locks::get_lock(&self.core, req.into_inner()).await;
        reply(&self.core, "GetLock", res)
    }

    async fn release_locks(&self, req: Request<pb::ReleaseLocksRequest>) -> Reply<pb::Empty> {
        let r = req.get_ref();
        admitted!(
            self,
            "ReleaseLocks",
            self.admit(&req, r.session_id, &[r.inode]),
            |_| locks::release_locks(&self.core, r)
        )
    }

    async fn reassert_locks(
        &self,
        req: Request<pb::ReassertLocksRequest>,
    ) -> Reply<pb::ReassertLocksReply> {
        let r = req.get_ref();
        let ins: Vec<u64> = r.locks.iter().map(|l| l.inode).collect();
        if let Err(e) = self.admit(&req, r.session_id, &ins) {
            return reply(&self.core, "ReassertLocks", Err(e));
        }
        let res = locks::reassert(&self.core, req.into_inner());
        reply(&self.core, "ReassertLocks", res)
    }
}
