//! The `Master` service clients call: sessions, the namespace and file data
//! locations, over [`crate::domain::sessions`], [`crate::domain::metadata`]
//! [`crate::domain::io`] and [`crate::domain::locks`].

use std::sync::Arc;

use alces_proto::pb::{self, master_server::Master};
use tonic::Request;

use super::{reply, Reply};
use crate::core::Core;
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
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn register_session(
        &self,
        req: Request<pb::RegisterSessionRequest>,
    ) -> Reply<pb::RegisterSessionReply> {
        let res = sessions::register(&self.core, req.into_inner());
        reply(&self.core, "RegisterSession", res)
    }

    async fn renew_session(&self, req: Request<pb::SessionRef>) -> Reply<pb::RenewSessionReply> {
        let res = sessions::renew(&self.core, req.into_inner().session_id);
        reply(&self.core, "RenewSession", res)
    }

    async fn close_session(&self, req: Request<pb::SessionRef>) -> Reply<pb::Empty> {
        let res = sessions::close(&self.core, req.into_inner().session_id).await;
        reply(&self.core, "CloseSession", res)
    }

    async fn lookup(&self, req: Request<pb::EntryRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::lookup(&self.core, req.get_ref());
        reply(&self.core, "Lookup", res)
    }

    async fn get_attr(&self, req: Request<pb::InodeRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::get_attr(&self.core, req.get_ref().inode);
        reply(&self.core, "GetAttr", res)
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::set_attr(&self.core, req.into_inner()).await;
        reply(&self.core, "SetAttr", res)
    }

    async fn mknod(&self, req: Request<pb::MknodRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::mknod(&self.core, req.into_inner()).await;
        reply(&self.core, "Mknod", res)
    }

    async fn mkdir(&self, req: Request<pb::MkdirRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::mkdir(&self.core, req.into_inner()).await;
        reply(&self.core, "Mkdir", res)
    }

    async fn symlink(&self, req: Request<pb::SymlinkRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::symlink(&self.core, req.into_inner()).await;
        reply(&self.core, "Symlink", res)
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let res = metadata::link(&self.core, req.into_inner()).await;
        reply(&self.core, "Link", res)
    }

    async fn unlink(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let res = metadata::remove(&self.core, req.into_inner(), false).await;
        reply(&self.core, "Unlink", res)
    }

    async fn rmdir(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let res = metadata::remove(&self.core, req.into_inner(), true).await;
        reply(&self.core, "Rmdir", res)
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> Reply<pb::EntryChangeReply> {
        let res = metadata::rename(&self.core, req.into_inner()).await;
        reply(&self.core, "Rename", res)
    }

    async fn readlink(&self, req: Request<pb::InodeRequest>) -> Reply<pb::ReadlinkReply> {
        let res = metadata::readlink(&self.core, req.get_ref().inode);
        reply(&self.core, "Readlink", res)
    }

    async fn readdir(&self, req: Request<pb::ReaddirRequest>) -> Reply<pb::ReaddirReply> {
        let res = metadata::readdir(&self.core, req.get_ref());
        reply(&self.core, "Readdir", res)
    }

    async fn open(&self, req: Request<pb::OpenRequest>) -> Reply<pb::AttrReply> {
        let res = io::open(&self.core, req.get_ref());
        reply(&self.core, "Open", res)
    }

    async fn release(&self, req: Request<pb::InodeRequest>) -> Reply<pb::Empty> {
        let res = io::release(&self.core, req.get_ref()).await;
        reply(&self.core, "Release", res)
    }

    async fn statfs(&self, req: Request<pb::InodeRequest>) -> Reply<pb::StatfsReply> {
        let res = metadata::statfs(&self.core, req.get_ref().inode);
        reply(&self.core, "Statfs", res)
    }

    async fn get_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::XattrReply> {
        let res = metadata::get_xattr(&self.core, req.get_ref());
        reply(&self.core, "GetXattr", res)
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let res = metadata::set_xattr(&self.core, req.into_inner()).await;
        reply(&self.core, "SetXattr", res)
    }

    async fn list_xattr(&self, req: Request<pb::InodeRequest>) -> Reply<pb::ListXattrReply> {
        let res = metadata::list_xattr(&self.core, req.get_ref().inode);
        reply(&self.core, "ListXattr", res)
    }

    async fn remove_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::Empty> {
        let res = metadata::remove_xattr(&self.core, req.into_inner()).await;
        reply(&self.core, "RemoveXattr", res)
    }

    async fn read_chunk(&self, req: Request<pb::ChunkRequest>) -> Reply<pb::ReadChunkReply> {
        let res = io::read_chunk(&self.core, req.get_ref());
        reply(&self.core, "ReadChunk", res)
    }

    async fn write_chunk(&self, req: Request<pb::ChunkRequest>) -> Reply<pb::WriteChunkReply> {
        let res = io::write_chunk(&self.core, req.into_inner()).await;
        reply(&self.core, "WriteChunk", res)
    }

    async fn write_chunk_end(
        &self,
        req: Request<pb::WriteChunkEndRequest>,
    ) -> Reply<pb::AttrReply> {
        let res = io::write_chunk_end(&self.core, req.into_inner()).await;
        reply(&self.core, "WriteChunkEnd", res)
    }

    async fn set_lock(&self, req: Request<pb::SetLockRequest>) -> Reply<pb::SetLockReply> {
        let res = locks::set_lock(&self.core, req.into_inner()).await;
        reply(&self.core, "SetLock", res)
    }

    async fn get_lock(&self, req: Request<pb::SetLockRequest>) -> Reply<pb::GetLockReply> {
        let res = locks::get_lock(&self.core, req.into_inner()).await;
        reply(&self.core, "GetLock", res)
    }

    async fn release_locks(&self, req: Request<pb::ReleaseLocksRequest>) -> Reply<pb::Empty> {
        let res = locks::release_locks(&self.core, req.get_ref());
        reply(&self.core, "ReleaseLocks", res)
    }

    async fn reassert_locks(
        &self,
        req: Request<pb::ReassertLocksRequest>,
    ) -> Reply<pb::ReassertLocksReply> {
        let res = locks::reassert(&self.core, req.into_inner());
        reply(&self.core, "ReassertLocks", res)
    }
}
