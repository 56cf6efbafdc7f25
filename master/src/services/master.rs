//! The `Master` service clients call: sessions, the namespace and file data
//! locations, over [`crate::domain::sessions`], [`crate::domain::metadata`]
//! [`crate::domain::io`] and [`crate::domain::locks`]. A call made with a
//! credential is first admitted by [`crate::domain::credentials::admit`]
//! (its session, and every inode it names inside the session's subtree) and
//! its caller squashed as the credential says, then its permissions are
//! checked by [`crate::domain::permissions`].

use std::sync::Arc;

use alces_proto::auth::Identity;
use alces_proto::pb::{self, master_server::Master};
use tonic::{Request, Status};

use super::{reply, Reply};
use crate::core::Core;
use crate::domain::credentials::{self, Export};
use crate::domain::permissions::{self, Call};
use crate::domain::{io, leases, locks, metadata, sessions};

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

    /// Admits a call (see [`Self::admit`]) and checks a credential
    /// session's permission for it, as `caller` squashed.
    fn checked<T>(
        &self,
        req: &Request<T>,
        sid: u64,
        inodes: &[u64],
        caller: Option<&pb::Caller>,
        call: Call<'_>,
    ) -> Result<Option<Export>, Status> {
        let e = self.admit(req, sid, inodes)?;
        if e.is_some() {
            let mut c = caller.cloned();
            credentials::squash(&e, &mut c);
            permissions::check(&self.core, sid, &e, c.as_ref(), call)?;
        }
        Ok(e)
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

/// The master's half of a session's lease stream.
type LeaseStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeaseDown, Status>> + Send>>;

#[tonic::async_trait]
impl Master for MasterService {
    type LeasesStream = LeaseStream;

    async fn leases(
        &self,
        req: Request<tonic::Streaming<pb::LeaseUp>>,
    ) -> Reply<Self::LeasesStream> {
        let who = Identity::of(&req);
        let mut up = req.into_inner();
        let first = match up.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let e = Status::invalid_argument("the lease stream ended before its hello");
                return reply(&self.core, "Leases", Err(e));
            }
            Err(e) => return reply(&self.core, "Leases", Err(e)),
        };
        let sid = match first.msg {
            Some(pb::lease_up::Msg::Hello(r)) => r.session_id,
            _ => {
                let e = Status::invalid_argument(
                    "a lease stream must begin with hello naming the session",
                );
                return reply(&self.core, "Leases", Err(e));
            }
        };
        if let Err(e) = credentials::admit(&self.core, who, sid, &[]) {
            return reply(&self.core, "Leases", Err(e));
        }
        let (stream, mut down) = match leases::open(&self.core, sid) {
            Ok(r) => r,
            Err(e) => return reply(&self.core, "Leases", Err(e)),
        };
        let core = self.core.clone();
        let out = async_stream_of(move |tx| async move {
            if tx.send(Ok(leases::hello())).await.is_err() {
                leases::close(&core, sid, stream);
                return;
            }
            loop {
                tokio::select! {
                    m = down.recv() => match m {
                        Some(m) => if tx.send(Ok(m)).await.is_err() { break },
                        None => break,
                    },
                    m = up.message() => match m {
                        Ok(Some(m)) => match leases::handle(&core, sid, m) {
                            Ok(Some(a)) => if tx.send(Ok(a)).await.is_err() { break },
                            Ok(None) => {}
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                break;
                            }
                        },
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            leases::close(&core, sid, stream);
        });
        reply(&self.core, "Leases", Ok(out))
    }

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
            self.checked(
                &req,
                r.session_id,
                &[r.parent],
                r.caller.as_ref(),
                Call::Lookup { parent: r.parent }
            ),
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
            |_| metadata::get_attr_leased(&self.core, r.session_id, r.inode)
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
        if let Err(err) = permissions::check_set_attr(&self.core, &e, &mut r) {
            return reply(&self.core, "SetAttr", Err(err));
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
        let device = matches!(
            pb::FileType::try_from(r.kind),
            Ok(pb::FileType::CharDevice | pb::FileType::BlockDevice)
        );
        let call = Call::Create {
            parent: r.parent,
            name: &r.name,
            device,
            open: r.open && !r.exclusive,
        };
        if let Err(s) = permissions::check(&self.core, r.session_id, &e, r.caller.as_ref(), call) {
            return reply(&self.core, "Mknod", Err(s));
        }
        let existed = e.is_some() && r.open && permissions::exists(&self.core, r.parent, &r.name);
        let (sid, open, caller) = (r.session_id, r.open, r.caller.clone());
        let res = metadata::mknod(&self.core, r).await;
        if let (true, Ok(Some(a))) = (open, res.as_ref().map(|a| a.attr.as_ref())) {
            permissions::grant_created(&self.core, &e, sid, caller.as_ref(), a.inode, !existed);
        }
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
        let call = Call::Create {
            parent: r.parent,
            name: &r.name,
            device: false,
            open: false,
        };
        if let Err(s) = permissions::check(&self.core, r.session_id, &e, r.caller.as_ref(), call) {
            return reply(&self.core, "Mkdir", Err(s));
        }
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
        let call = Call::Create {
            parent: r.parent,
            name: &r.name,
            device: false,
            open: false,
        };
        if let Err(s) = permissions::check(&self.core, r.session_id, &e, r.caller.as_ref(), call) {
            return reply(&self.core, "Symlink", Err(s));
        }
        let res = metadata::symlink(&self.core, r).await;
        reply(&self.core, "Symlink", res)
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let ins = {
            let r = req.get_ref();
            [r.inode, r.new_parent]
        };
        let r = req.get_ref();
        let call = Call::Link {
            inode: r.inode,
            new_parent: r.new_parent,
        };
        if let Err(s) = self.checked(&req, r.session_id, &ins, r.caller.as_ref(), call) {
            return reply(&self.core, "Link", Err(s));
        }
        let res = metadata::link(&self.core, req.into_inner()).await;
        reply(&self.core, "Link", res)
    }

    async fn unlink(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let r = req.get_ref();
        let call = Call::Remove {
            parent: r.parent,
            name: &r.name,
        };
        if let Err(e) = self.checked(&req, r.session_id, &[r.parent], r.caller.as_ref(), call) {
            return reply(&self.core, "Unlink", Err(e));
        }
        let res = metadata::remove(&self.core, req.into_inner(), false).await;
        reply(&self.core, "Unlink", res)
    }

    async fn rmdir(&self, req: Request<pb::EntryRequest>) -> Reply<pb::EntryChangeReply> {
        let r = req.get_ref();
        let call = Call::Remove {
            parent: r.parent,
            name: &r.name,
        };
        if let Err(e) = self.checked(&req, r.session_id, &[r.parent], r.caller.as_ref(), call) {
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
        let r = req.get_ref();
        let call = Call::Rename {
            parent: r.parent,
            name: &r.name,
            new_parent: r.new_parent,
            new_name: &r.new_name,
        };
        if let Err(s) = self.checked(&req, r.session_id, &ins, r.caller.as_ref(), call) {
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
            self.checked(
                &req,
                r.session_id,
                &[r.inode],
                r.caller.as_ref(),
                Call::Readdir { inode: r.inode }
            ),
            |e: Option<Export>| {
                // Attributes of the entries need search permission on the
                // directory too (as a Lookup of each would): without it a
                // credential session gets the names only.
                let names_only = r.plus
                    && e.is_some()
                    && self
                        .checked(
                            &req,
                            r.session_id,
                            &[r.inode],
                            r.caller.as_ref(),
                            Call::Lookup { parent: r.inode },
                        )
                        .is_err();
                let mut res = if names_only {
                    let mut names = r.clone();
                    names.plus = false;
                    metadata::readdir(&self.core, &names)
                } else {
                    metadata::readdir(&self.core, r)
                };
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
            self.checked(
                &req,
                r.session_id,
                &[r.inode],
                r.caller.as_ref(),
                Call::Open {
                    inode: r.inode,
                    flags: r.flags,
                    reopen: r.reopen,
                }
            ),
            |e: Option<Export>| {
                let res = io::open(&self.core, r);
                if res.is_ok() {
                    let mask = permissions::open_mask(r.flags);
                    permissions::grant(&self.core, &e, r.session_id, r.inode, mask);
                }
                res
            }
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
            self.checked(
                &req,
                r.session_id,
                &[r.inode],
                r.caller.as_ref(),
                Call::Xattr {
                    inode: r.inode,
                    name: &r.name,
                    set: false
                }
            ),
            |_| metadata::get_xattr(&self.core, r)
        )
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        let r = req.get_ref();
        let call = Call::Xattr {
            inode: r.inode,
            name: &r.name,
            set: true,
        };
        if let Err(s) = self.checked(&req, r.session_id, &ins, r.caller.as_ref(), call) {
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
            self.checked(
                &req,
                r.session_id,
                &[r.inode],
                r.caller.as_ref(),
                Call::Reach { inode: r.inode }
            ),
            |_| metadata::list_xattr(&self.core, r.inode)
        )
    }

    async fn remove_xattr(&self, req: Request<pb::XattrRequest>) -> Reply<pb::Empty> {
        let ins = {
            let r = req.get_ref();
            [r.inode]
        };
        let r = req.get_ref();
        let call = Call::Xattr {
            inode: r.inode,
            name: &r.name,
            set: true,
        };
        if let Err(s) = self.checked(&req, r.session_id, &ins, r.caller.as_ref(), call) {
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
            self.checked(
                &req,
                r.session_id,
                &[r.inode],
                r.caller.as_ref(),
                Call::Chunk {
                    inode: r.inode,
                    write: false
                }
            ),
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
        let r = req.get_ref();
        let call = Call::Chunk {
            inode: r.inode,
            write: true,
        };
        if let Err(s) = self.checked(&req, r.session_id, &ins, r.caller.as_ref(), call) {
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

/// A stream fed by the task `f` spawns, through a small channel (the task
/// ends when the client stops reading).
fn async_stream_of<F, Fut>(f: F) -> LeaseStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::LeaseDown, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
