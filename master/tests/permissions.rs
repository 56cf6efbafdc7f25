//! POSIX permission checks of credential sessions, on a real master over
//! loopback, talking gRPC directly as a hostile client would (no kernel in
//! between): every rule refused and allowed (search on every directory
//! walked, w+x on parents, the sticky bit, open modes and the chunk grants
//! they give, setattr, extended attributes, device nodes), root squash
//! keeping root out of another user's 0600 file, reopens allowed for the
//! accesses granted to the session's own opens only (also after a takeover
//! and a reconnect), locks needing an open with the access, and the cluster
//! secret's sessions left to the kernel.

mod common;

use alces_master::server::Running;
use alces_proto::auth::ClientAuth;
use alces_proto::net::{channel, AuthChannel};
use alces_proto::pb::{self, master_client::MasterClient, FileType, SetAttrField as F};
use common::*;

type Client = MasterClient<AuthChannel>;

/// A caller with `uid`, gid `uid` and supplementary `groups`.
fn who(uid: u32, groups: &[u32]) -> Option<pb::Caller> {
    Some(pb::Caller {
        uid,
        gid: uid,
        groups: groups.to_vec(),
        pid: 1,
    })
}

/// Group 500 is shared by uid 1000 (owner of most things) and, as a
/// supplementary group, by callers the tests name.
const GRP: u32 = 500;
const ANON: u32 = 65534;

/// The namespace every test starts from, made with the cluster secret:
///
/// ```text
/// /vol            0755 0:0
/// /vol/priv       0700 1000:1000    /vol/priv/f  0644 1000:1000
/// /vol/pub        1777 0:0          /vol/pub/mine 0644 1000:1000
/// /vol/shared     0775 1000:500
/// /vol/secret     0600 1000:1000
/// /vol/grp        0640 1000:500
/// ```
struct Tree {
    vol: u64,
    priv_dir: u64,
    priv_f: u64,
    pub_dir: u64,
    shared: u64,
    secret: u64,
    grp: u64,
}

async fn set(c: &mut Client, sid: u64, inode: u64, mode: u32, uid: u32, gid: u32) {
    c.set_attr(pb::SetAttrRequest {
        session_id: sid,
        inode,
        valid: F::SetAttrMode as u32 | F::SetAttrUid as u32 | F::SetAttrGid as u32,
        mode,
        uid,
        gid,
        caller: who(0, &[]),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn tree(m: &Running) -> Tree {
    let mut c = master(m);
    let sid = session(&mut c).await;
    let vol = mkdir(&mut c, sid, 1, "vol").await.inode;
    set(&mut c, sid, vol, 0o755, 0, 0).await;
    let priv_dir = mkdir(&mut c, sid, vol, "priv").await.inode;
    set(&mut c, sid, priv_dir, 0o700, 1000, 1000).await;
    let priv_f = file(&mut c, sid, priv_dir, "f").await.inode;
    set(&mut c, sid, priv_f, 0o644, 1000, 1000).await;
    let pub_dir = mkdir(&mut c, sid, vol, "pub").await.inode;
    set(&mut c, sid, pub_dir, 0o1777, 0, 0).await;
    let mine = file(&mut c, sid, pub_dir, "mine").await.inode;
    set(&mut c, sid, mine, 0o644, 1000, 1000).await;
    let shared = mkdir(&mut c, sid, vol, "shared").await.inode;
    set(&mut c, sid, shared, 0o775, 1000, GRP).await;
    let secret = file(&mut c, sid, vol, "secret").await.inode;
    set(&mut c, sid, secret, 0o600, 1000, 1000).await;
    let grp = file(&mut c, sid, vol, "grp").await.inode;
    set(&mut c, sid, grp, 0o640, 1000, GRP).await;
    Tree {
        vol,
        priv_dir,
        priv_f,
        pub_dir,
        shared,
        secret,
        grp,
    }
}

/// A session of a credential for /vol squashing as `squash`.
async fn session_of(m: &Running, squash: pb::Squash) -> (Client, u64) {
    let token = admin(m)
        .issue_credential(pb::IssueCredentialRequest {
            rule: Some(pb::CredentialRule {
                path: "/vol".into(),
                squash: squash as i32,
                anon_uid: ANON,
                anon_gid: ANON,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut c = MasterClient::new(
        channel(&m.grpc_addr.to_string(), &ClientAuth::new(&token).unwrap()).unwrap(),
    );
    let sid = c
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    (c, sid)
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, errno: i32, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(alces_proto::errno::of(&s), errno, "{what}: {s:?}");
}

#[track_caller]
fn allowed<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    match r {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("{what}: {s:?}"),
    }
}

fn entry(sid: u64, parent: u64, name: &str, caller: Option<pb::Caller>) -> pb::EntryRequest {
    pb::EntryRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        caller,
        tag: None,
        negative_reply: false,
    }
}

fn open(sid: u64, inode: u64, flags: i32, caller: Option<pb::Caller>) -> pb::OpenRequest {
    pb::OpenRequest {
        session_id: sid,
        inode,
        flags: flags as u32,
        caller,
        reopen: false,
    }
}

/// A reopen (`OpenRequest.reopen`), as a daemon that took a session over sends.
fn reopen(sid: u64, inode: u64, flags: i32, caller: Option<pb::Caller>) -> pb::OpenRequest {
    pb::OpenRequest {
        reopen: true,
        ..open(sid, inode, flags, caller)
    }
}

fn chunk(sid: u64, inode: u64, caller: Option<pb::Caller>) -> pb::ChunkRequest {
    pb::ChunkRequest {
        session_id: sid,
        inode,
        chunk_index: 0,
        caller,
    }
}

fn create(
    sid: u64,
    parent: u64,
    name: &str,
    kind: FileType,
    caller: Option<pb::Caller>,
) -> pb::MknodRequest {
    pb::MknodRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        kind: kind as i32,
        mode: 0o644,
        caller,
        exclusive: true,
        ..Default::default()
    }
}

fn mkdir_req(sid: u64, parent: u64, name: &str, caller: Option<pb::Caller>) -> pb::MkdirRequest {
    pb::MkdirRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        caller,
        ..Default::default()
    }
}

fn rename(
    sid: u64,
    parent: u64,
    name: &str,
    new_parent: u64,
    new_name: &str,
    caller: Option<pb::Caller>,
) -> pb::RenameRequest {
    pb::RenameRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        new_parent,
        new_name: new_name.as_bytes().to_vec(),
        caller,
        ..Default::default()
    }
}

/// The case the checks exist for: a root-squashed client (root mapped to
/// nobody) talking to the master directly cannot open, read the chunks of,
/// truncate or chmod another user's 0600 file; its owner can.
#[tokio::test]
async fn root_squashed_root_cannot_read_another_users_private_file() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    register(&m, 1).await;
    let (mut c, sid) = session_of(&m, pb::Squash::Root).await;
    refused(
        c.open(open(sid, t.secret, libc::O_RDONLY, who(0, &[])))
            .await,
        libc::EACCES,
        "open by squashed root",
    );
    refused(
        c.read_chunk(chunk(sid, t.secret, who(0, &[]))).await,
        libc::EACCES,
        "read chunk by squashed root",
    );
    refused(
        c.read_chunk(chunk(sid, t.secret, None)).await,
        libc::EACCES,
        "read chunk without a caller (anonymous)",
    );
    refused(
        c.write_chunk(chunk(sid, t.secret, who(0, &[]))).await,
        libc::EACCES,
        "write chunk by squashed root",
    );
    let trunc = pb::SetAttrRequest {
        session_id: sid,
        inode: t.secret,
        valid: F::SetAttrSize as u32,
        size: 0,
        caller: who(0, &[]),
        ..Default::default()
    };
    refused(c.set_attr(trunc.clone()).await, libc::EACCES, "truncate");
    let e = c
        .open(open(sid, t.secret, libc::O_RDONLY, who(0, &[])))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains(&format!("uid {ANON} may not open for reading")),
        "{e:?}"
    );
    // The owner, through the same session.
    allowed(
        c.open(open(sid, t.secret, libc::O_RDWR, who(1000, &[])))
            .await,
        "open by the owner",
    );
    allowed(
        c.read_chunk(chunk(sid, t.secret, who(1000, &[]))).await,
        "read chunk by the owner",
    );
    allowed(
        c.set_attr(pb::SetAttrRequest {
            caller: who(1000, &[]),
            ..trunc
        })
        .await,
        "truncate by the owner",
    );
    m.stop().await.unwrap();
}

/// Lookups need search on the directory; an inode named by number needs
/// search on every directory from the session's root down to it; listing
/// needs read.
#[tokio::test]
async fn search_on_every_directory_and_read_to_list() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (mut c, sid) = session_of(&m, pb::Squash::None).await;
    refused(
        c.lookup(entry(sid, t.priv_dir, "f", who(2000, &[]))).await,
        libc::EACCES,
        "lookup in 0700 dir of another",
    );
    // Skipping the lookup: the file's inode number directly.
    refused(
        c.open(open(sid, t.priv_f, libc::O_RDONLY, who(2000, &[])))
            .await,
        libc::EACCES,
        "open by inode number below an unsearchable dir",
    );
    refused(
        c.get_xattr(pb::XattrRequest {
            session_id: sid,
            inode: t.priv_f,
            name: b"user.x".to_vec(),
            caller: who(2000, &[]),
            tag: None,
        })
        .await,
        libc::EACCES,
        "getxattr below an unsearchable dir",
    );
    let list = |uid: u32| pb::ReaddirRequest {
        session_id: sid,
        inode: t.priv_dir,
        caller: who(uid, &[]),
        ..Default::default()
    };
    refused(c.readdir(list(2000)).await, libc::EACCES, "readdir 0700");
    refused(
        c.readdir(pb::ReaddirRequest {
            caller: None,
            ..list(2000)
        })
        .await,
        libc::EACCES,
        "readdir without a caller (anonymous)",
    );
    let l = allowed(c.readdir(list(1000)).await, "readdir by owner");
    assert_eq!(l.entries.len(), 1);
    // Attributes in a listing need search as well as read: a directory
    // readable but not searchable by others lists names only for them.
    let plus = |uid: u32| pb::ReaddirRequest {
        plus: true,
        ..list(uid)
    };
    let l = allowed(c.readdir(plus(1000)).await, "readdir plus by owner");
    assert!(l.entries.iter().all(|e| e.attr.is_some()), "{l:?}");
    let mut a = master(&m);
    let asid = session(&mut a).await;
    set(&mut a, asid, t.priv_dir, 0o704, 1000, 1000).await;
    let l = allowed(c.readdir(plus(2000)).await, "readdir plus, read only");
    assert_eq!(l.entries.len(), 1);
    assert!(
        l.entries.iter().all(|e| e.attr.is_none() && !e.leased) && !l.leased,
        "{l:?}"
    );
    set(&mut a, asid, t.priv_dir, 0o700, 1000, 1000).await;
    allowed(
        c.lookup(entry(sid, t.priv_dir, "f", who(1000, &[]))).await,
        "lookup by owner",
    );
    allowed(
        c.open(open(sid, t.priv_f, libc::O_RDONLY, who(1000, &[])))
            .await,
        "open by owner",
    );
    // Root searches anything.
    allowed(
        c.lookup(entry(sid, t.priv_dir, "f", who(0, &[]))).await,
        "lookup by root (squash none)",
    );
    // A directory searchable by the group only: a member passes through
    // its supplementary groups.
    let mut a = master(&m);
    let asid = session(&mut a).await;
    let gdir = mkdir(&mut a, asid, t.vol, "gdir").await.inode;
    set(&mut a, asid, gdir, 0o710, 1000, GRP).await;
    let inner = file(&mut a, asid, gdir, "x").await.inode;
    set(&mut a, asid, inner, 0o644, 1000, GRP).await;
    refused(
        c.open(open(sid, inner, libc::O_RDONLY, who(2000, &[])))
            .await,
        libc::EACCES,
        "open below a group-only dir by a non-member",
    );
    allowed(
        c.open(open(sid, inner, libc::O_RDONLY, who(2000, &[7, GRP])))
            .await,
        "open below a group-only dir by a member",
    );
    m.stop().await.unwrap();
}

/// Creating, removing, linking and renaming need write and search on the
/// directories changed; device nodes need root.
#[tokio::test]
async fn entries_need_write_and_search_on_the_parent() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (mut c, sid) = session_of(&m, pb::Squash::None).await;
    let u = || who(2000, &[]);
    let member = || who(2000, &[GRP]);
    refused(
        c.mkdir(mkdir_req(sid, t.vol, "d", u())).await,
        libc::EACCES,
        "mkdir in a root 0755 dir",
    );
    refused(
        c.mknod(create(sid, t.shared, "f", FileType::Regular, u()))
            .await,
        libc::EACCES,
        "create in a group-writable dir by a non-member",
    );
    refused(
        c.symlink(pb::SymlinkRequest {
            session_id: sid,
            parent: t.vol,
            name: b"l".to_vec(),
            target: b"x".to_vec(),
            caller: u(),
            tag: None,
        })
        .await,
        libc::EACCES,
        "symlink in a root 0755 dir",
    );
    let f = allowed(
        c.mknod(create(sid, t.shared, "f", FileType::Regular, member()))
            .await,
        "create by a member",
    )
    .attr
    .unwrap();
    assert_eq!(f.uid, 2000);
    allowed(
        c.mkdir(mkdir_req(sid, t.shared, "d", member())).await,
        "mkdir by a member",
    );
    refused(
        c.link(pb::LinkRequest {
            session_id: sid,
            inode: f.inode,
            new_parent: t.vol,
            new_name: b"l".to_vec(),
            caller: member(),
            tag: None,
        })
        .await,
        libc::EACCES,
        "link into a root 0755 dir",
    );
    refused(
        c.rename(rename(sid, t.shared, "f", t.vol, "f", member()))
            .await,
        libc::EACCES,
        "rename into a root 0755 dir",
    );
    refused(
        c.unlink(entry(sid, t.vol, "secret", who(1000, &[]))).await,
        libc::EACCES,
        "unlink from a root 0755 dir (even the file's owner)",
    );
    refused(
        c.unlink(entry(sid, t.shared, "f", u())).await,
        libc::EACCES,
        "unlink by a non-member",
    );
    refused(
        c.rmdir(entry(sid, t.shared, "d", u())).await,
        libc::EACCES,
        "rmdir by a non-member",
    );
    allowed(
        c.rename(rename(sid, t.shared, "f", t.shared, "g", member()))
            .await,
        "rename by a member",
    );
    allowed(
        c.unlink(entry(sid, t.shared, "g", member())).await,
        "unlink",
    );
    allowed(c.rmdir(entry(sid, t.shared, "d", member())).await, "rmdir");
    // Device nodes: root only (fifos are anybody's).
    refused(
        c.mknod(create(sid, t.shared, "dev", FileType::CharDevice, member()))
            .await,
        libc::EPERM,
        "mknod of a device by a user",
    );
    allowed(
        c.mknod(create(sid, t.shared, "fifo", FileType::Fifo, member()))
            .await,
        "mkfifo by a member",
    );
    allowed(
        c.mknod(create(
            sid,
            t.shared,
            "dev",
            FileType::CharDevice,
            who(0, &[]),
        ))
        .await,
        "mknod of a device by root",
    );
    m.stop().await.unwrap();
}

/// In a sticky directory only the owner of an entry or of the directory
/// removes or renames it (EPERM); a directory moved to another parent needs
/// write on itself.
#[tokio::test]
async fn sticky_directories_and_moving_directories() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (mut c, sid) = session_of(&m, pb::Squash::None).await;
    refused(
        c.unlink(entry(sid, t.pub_dir, "mine", who(2000, &[])))
            .await,
        libc::EPERM,
        "unlink of another's file in a sticky dir",
    );
    refused(
        c.rename(rename(
            sid,
            t.pub_dir,
            "mine",
            t.pub_dir,
            "x",
            who(2000, &[]),
        ))
        .await,
        libc::EPERM,
        "rename of another's file in a sticky dir",
    );
    allowed(
        c.mknod(create(
            sid,
            t.pub_dir,
            "his",
            FileType::Regular,
            who(2000, &[]),
        ))
        .await,
        "create in a 1777 dir",
    );
    refused(
        c.rename(rename(
            sid,
            t.pub_dir,
            "his",
            t.pub_dir,
            "mine",
            who(2000, &[]),
        ))
        .await,
        libc::EPERM,
        "rename over another's file in a sticky dir",
    );
    allowed(
        c.unlink(entry(sid, t.pub_dir, "his", who(2000, &[]))).await,
        "unlink of one's own file in a sticky dir",
    );
    allowed(
        c.rename(rename(
            sid,
            t.pub_dir,
            "mine",
            t.pub_dir,
            "mine2",
            who(1000, &[]),
        ))
        .await,
        "rename by the owner",
    );
    // A 0555 directory of uid 1000 moved from /vol/shared to /vol/pub: its
    // `..` changes, which needs write on it.
    let d = allowed(
        c.mkdir(mkdir_req(sid, t.shared, "ro", who(1000, &[])))
            .await,
        "mkdir",
    )
    .attr
    .unwrap();
    let chmod = |mode: u32| pb::SetAttrRequest {
        session_id: sid,
        inode: d.inode,
        valid: F::SetAttrMode as u32,
        mode,
        caller: who(1000, &[]),
        ..Default::default()
    };
    allowed(c.set_attr(chmod(0o555)).await, "chmod by owner");
    refused(
        c.rename(rename(sid, t.shared, "ro", t.pub_dir, "ro", who(1000, &[])))
            .await,
        libc::EACCES,
        "moving a directory without write on it",
    );
    allowed(
        c.rename(rename(sid, t.shared, "ro", t.shared, "ro2", who(1000, &[])))
            .await,
        "renaming it in place",
    );
    allowed(c.set_attr(chmod(0o755)).await, "chmod back");
    allowed(
        c.rename(rename(
            sid,
            t.shared,
            "ro2",
            t.pub_dir,
            "ro",
            who(1000, &[]),
        ))
        .await,
        "moving it with write on it",
    );
    m.stop().await.unwrap();
}

/// Open checks read and/or write as the flags ask; the accesses it allowed
/// are granted to the session's chunk calls while the file is open (a
/// caller-less chunk call of an opened file passes, the other access does
/// not), and a session that did not open the file is checked as the caller
/// the chunk call names. A create that opens grants both to the creator,
/// whatever the new file's mode.
#[tokio::test]
async fn open_modes_and_chunk_grants() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    register(&m, 1).await;
    let (mut c, sid) = session_of(&m, pb::Squash::None).await;
    let member = || who(2000, &[GRP]);
    refused(
        c.open(open(sid, t.grp, libc::O_RDONLY, who(3000, &[])))
            .await,
        libc::EACCES,
        "read open by other on 0640",
    );
    refused(
        c.open(open(sid, t.grp, libc::O_WRONLY, member())).await,
        libc::EACCES,
        "write open by group on 0640",
    );
    refused(
        c.open(open(sid, t.grp, libc::O_RDWR, member())).await,
        libc::EACCES,
        "read-write open by group on 0640",
    );
    refused(
        c.open(open(sid, t.grp, libc::O_RDONLY | libc::O_TRUNC, member()))
            .await,
        libc::EACCES,
        "O_TRUNC open by group on 0640",
    );
    refused(
        c.read_chunk(chunk(sid, t.grp, None)).await,
        libc::EACCES,
        "read chunk before any open",
    );
    allowed(
        c.open(open(sid, t.grp, libc::O_RDONLY, member())).await,
        "read open by group",
    );
    allowed(
        c.read_chunk(chunk(sid, t.grp, None)).await,
        "read chunk granted by the open",
    );
    refused(
        c.write_chunk(chunk(sid, t.grp, None)).await,
        libc::EACCES,
        "write chunk of a file opened for reading",
    );
    // Released: the grant goes with the last open.
    allowed(
        c.release(pb::InodeRequest {
            session_id: sid,
            inode: t.grp,
            caller: None,
        })
        .await,
        "release",
    );
    refused(
        c.read_chunk(chunk(sid, t.grp, None)).await,
        libc::EACCES,
        "read chunk after release",
    );
    allowed(
        c.read_chunk(chunk(sid, t.grp, member())).await,
        "read chunk by a reader not holding it open",
    );
    refused(
        c.read_chunk(chunk(sid, t.grp, who(3000, &[]))).await,
        libc::EACCES,
        "read chunk by other not holding it open",
    );
    // Create + open of a 0444 file: the creator writes it.
    let mut req = create(sid, t.shared, "ro-new", FileType::Regular, member());
    req.mode = 0o444;
    req.open = true;
    let f = allowed(c.mknod(req).await, "create+open").attr.unwrap();
    allowed(
        c.write_chunk(chunk(sid, f.inode, None)).await,
        "write chunk of a file the session created open",
    );
    // Create + open (not exclusive) of an existing file another may not
    // write: no write grant.
    let mut req = create(sid, t.vol, "grp", FileType::Regular, member());
    req.exclusive = false;
    req.open = true;
    allowed(c.mknod(req).await, "O_CREAT open of an existing file");
    allowed(
        c.read_chunk(chunk(sid, t.grp, None)).await,
        "its read grant",
    );
    refused(
        c.write_chunk(chunk(sid, t.grp, None)).await,
        libc::EACCES,
        "no write grant",
    );
    m.stop().await.unwrap();
}

/// chmod, chown, chgrp, times and truncation follow the rules for an
/// unprivileged process; setgid and setuid are cleared as the kernel does.
#[tokio::test]
async fn setattr_rules() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (mut c, sid) = session_of(&m, pb::Squash::None).await;
    let req = |uid: u32, groups: &[u32], valid: u32| pb::SetAttrRequest {
        session_id: sid,
        inode: t.grp,
        valid,
        mode: 0o640,
        uid: 1000,
        gid: GRP,
        caller: who(uid, groups),
        ..Default::default()
    };
    let mode = F::SetAttrMode as u32;
    refused(
        c.set_attr(req(2000, &[GRP], mode)).await,
        libc::EPERM,
        "chmod by non-owner",
    );
    refused(
        c.set_attr(pb::SetAttrRequest {
            uid: 2000,
            ..req(1000, &[], F::SetAttrUid as u32)
        })
        .await,
        libc::EPERM,
        "chown by the owner",
    );
    refused(
        c.set_attr(pb::SetAttrRequest {
            gid: 777,
            ..req(1000, &[GRP], F::SetAttrGid as u32)
        })
        .await,
        libc::EPERM,
        "chgrp to a group the owner is not in",
    );
    refused(
        c.set_attr(pb::SetAttrRequest {
            gid: 1000,
            ..req(2000, &[1000, GRP], F::SetAttrGid as u32)
        })
        .await,
        libc::EPERM,
        "chgrp by a non-owner",
    );
    let a = allowed(
        c.set_attr(pb::SetAttrRequest {
            gid: 1000,
            ..req(1000, &[], F::SetAttrGid as u32)
        })
        .await,
        "chgrp to one's own group",
    );
    assert_eq!(a.attr.unwrap().gid, 1000);
    // chmod g+s on a file of group 1000 by its owner, now outside that
    // group: the kernel clears setgid.
    let a = allowed(
        c.set_attr(pb::SetAttrRequest {
            mode: 0o2755,
            caller: Some(pb::Caller {
                uid: 1000,
                gid: 5,
                groups: vec![],
                pid: 1,
            }),
            ..req(1000, &[], mode)
        })
        .await,
        "chmod g+s by owner outside the group",
    );
    assert_eq!(a.attr.unwrap().mode & 0o7777, 0o755);
    // By a member it stays; a chgrp by the owner then clears setuid/setgid.
    let a = allowed(
        c.set_attr(pb::SetAttrRequest {
            mode: 0o6755,
            ..req(1000, &[], mode)
        })
        .await,
        "chmod u+s,g+s by owner in the group",
    );
    assert_eq!(a.attr.unwrap().mode & 0o7777, 0o6755);
    let a = allowed(
        c.set_attr(pb::SetAttrRequest {
            gid: GRP,
            ..req(1000, &[GRP], F::SetAttrGid as u32)
        })
        .await,
        "chgrp by owner",
    );
    assert_eq!(a.attr.unwrap().mode & 0o7777, 0o755);
    // Root (squash none) may give the file away.
    let a = allowed(
        c.set_attr(pb::SetAttrRequest {
            uid: 3000,
            ..req(0, &[], F::SetAttrUid as u32)
        })
        .await,
        "chown by root",
    );
    assert_eq!(a.attr.unwrap().uid, 3000);
    // Now 0755 3000:500. Times: explicit ones by the owner only; "now" by
    // the owner or a writer.
    let times = |uid: u32, valid: u32| pb::SetAttrRequest {
        atime_ns: 1,
        mtime_ns: 1,
        ..req(uid, &[], valid)
    };
    let explicit = F::SetAttrAtime as u32 | F::SetAttrMtime as u32;
    let now = F::SetAttrAtimeNow as u32 | F::SetAttrMtimeNow as u32;
    refused(
        c.set_attr(times(1000, explicit)).await,
        libc::EPERM,
        "utimes by non-owner",
    );
    refused(
        c.set_attr(times(1000, now)).await,
        libc::EACCES,
        "utimes(NULL) by non-owner non-writer",
    );
    allowed(c.set_attr(times(3000, explicit)).await, "utimes by owner");
    // Truncation needs write.
    let trunc = |uid: u32| pb::SetAttrRequest {
        size: 0,
        ..req(uid, &[], F::SetAttrSize as u32)
    };
    refused(
        c.set_attr(trunc(1000)).await,
        libc::EACCES,
        "truncate by non-writer",
    );
    allowed(c.set_attr(trunc(3000)).await, "truncate by owner");
    m.stop().await.unwrap();
}

/// `user.` attributes need read to get and write to set or remove;
/// `trusted.` ones are root's; others are changed by the owner.
#[tokio::test]
async fn extended_attributes() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (mut c, sid) = session_of(&m, pb::Squash::None).await;
    let set = |name: &str, uid: u32, groups: &[u32]| pb::SetXattrRequest {
        session_id: sid,
        inode: t.grp,
        name: name.as_bytes().to_vec(),
        value: b"v".to_vec(),
        caller: who(uid, groups),
        ..Default::default()
    };
    let get = |name: &str, uid: u32, groups: &[u32]| pb::XattrRequest {
        session_id: sid,
        inode: t.grp,
        name: name.as_bytes().to_vec(),
        caller: who(uid, groups),
        tag: None,
    };
    refused(
        c.set_xattr(set("user.a", 2000, &[GRP])).await,
        libc::EACCES,
        "set user.* without write",
    );
    allowed(c.set_xattr(set("user.a", 1000, &[])).await, "set by owner");
    refused(
        c.get_xattr(get("user.a", 3000, &[])).await,
        libc::EACCES,
        "get user.* without read",
    );
    allowed(
        c.get_xattr(get("user.a", 2000, &[GRP])).await,
        "get by a reader",
    );
    refused(
        c.remove_xattr(get("user.a", 2000, &[GRP])).await,
        libc::EACCES,
        "remove user.* without write",
    );
    refused(
        c.set_xattr(set("trusted.a", 1000, &[])).await,
        libc::EPERM,
        "set trusted.* by a user",
    );
    refused(
        c.get_xattr(get("trusted.a", 1000, &[])).await,
        libc::EPERM,
        "get trusted.* by a user",
    );
    allowed(
        c.set_xattr(set("trusted.a", 0, &[])).await,
        "trusted.* by root",
    );
    refused(
        c.set_xattr(set("security.a", 2000, &[GRP])).await,
        libc::EPERM,
        "set security.* by non-owner",
    );
    allowed(
        c.remove_xattr(get("user.a", 1000, &[])).await,
        "remove by owner",
    );
    m.stop().await.unwrap();
}

/// Sessions of the cluster secret are not checked (an ordinary mount's
/// kernel does it): a caller of uid 2000 opens a 0600 file of uid 1000.
#[tokio::test]
async fn cluster_secret_sessions_are_left_to_the_kernel() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let mut c = master(&m);
    let sid = session(&mut c).await;
    allowed(
        c.open(open(sid, t.secret, libc::O_RDWR, who(2000, &[])))
            .await,
        "open with the cluster secret",
    );
    allowed(
        c.lookup(entry(sid, t.priv_dir, "f", who(2000, &[]))).await,
        "lookup with the cluster secret",
    );
    m.stop().await.unwrap();
}

/// A session of a root-squash credential for /vol, with its secret (for a
/// takeover of it).
async fn squashed_session(m: &Running) -> (Client, u64, Vec<u8>) {
    let token = admin(m)
        .issue_credential(pb::IssueCredentialRequest {
            rule: Some(pb::CredentialRule {
                path: "/vol".into(),
                squash: pb::Squash::Root as i32,
                anon_uid: ANON,
                anon_gid: ANON,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut c = MasterClient::new(
        channel(&m.grpc_addr.to_string(), &ClientAuth::new(&token).unwrap()).unwrap(),
    );
    let r = c
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    (c, r.session_id, r.session_secret)
}

/// Resumes session `sid` (a takeover, or a plain reconnect listing `opens`).
async fn resume(c: &mut Client, sid: u64, secret: &[u8], takeover: bool, opens: Vec<u64>) {
    c.register_session(pb::RegisterSessionRequest {
        session_id: sid,
        session_secret: secret.to_vec(),
        takeover,
        open_inodes: opens,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// A daemon taking over a root-squashed session reopens (as root, squashed
/// to the anonymous ids) what uid 1000 opened in it: allowed without a
/// check for the accesses the master granted at that open, even after the
/// file was chmodded 000, after a takeover and after a reconnect.
#[tokio::test]
async fn a_reopen_of_a_granted_open_needs_no_permission() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    register(&m, 1).await;
    let (mut c, sid, secret) = squashed_session(&m).await;
    allowed(
        c.open(open(sid, t.secret, libc::O_RDWR, who(1000, &[])))
            .await,
        "open by the owner",
    );
    // A plain open by root of this mount is checked (and refused).
    refused(
        c.open(open(sid, t.secret, libc::O_WRONLY, who(0, &[])))
            .await,
        libc::EACCES,
        "plain open by squashed root",
    );
    let mut admin_c = master(&m);
    let admin_sid = session(&mut admin_c).await;
    set(&mut admin_c, admin_sid, t.secret, 0, 1000, 1000).await;
    refused(
        c.open(open(sid, t.secret, libc::O_WRONLY, who(1000, &[])))
            .await,
        libc::EACCES,
        "plain open by the owner after chmod 000",
    );
    for flags in [libc::O_WRONLY, libc::O_RDONLY, libc::O_RDWR] {
        allowed(
            c.open(reopen(sid, t.secret, flags, who(0, &[]))).await,
            &format!("reopen {flags:o} by squashed root of a granted open after chmod 000"),
        );
    }
    allowed(
        c.write_chunk(chunk(sid, t.secret, who(0, &[]))).await,
        "write chunk by squashed root through the granted open",
    );
    // The daemon dies; a new one takes the session over.
    resume(&mut c, sid, &secret, true, Vec::new()).await;
    allowed(
        c.open(reopen(sid, t.secret, libc::O_WRONLY, who(0, &[])))
            .await,
        "reopen for writing after a takeover",
    );
    allowed(
        c.open(reopen(sid, t.secret, libc::O_RDONLY, None)).await,
        "reopen for reading without a caller after a takeover",
    );
    // A reconnect listing the file keeps its grant.
    resume(&mut c, sid, &secret, false, vec![t.secret]).await;
    allowed(
        c.open(reopen(sid, t.secret, libc::O_RDWR, who(0, &[])))
            .await,
        "reopen after a reconnect listing the open",
    );
    m.stop().await.unwrap();
}

/// A reopen asking more than the session was granted, of a file the session
/// never opened (even one it lists at a reconnect), or by another session
/// of the same credential, is checked as any open: refused.
#[tokio::test]
async fn a_reopen_beyond_the_granted_access_is_refused() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    register(&m, 1).await;
    let (mut c, sid, secret) = squashed_session(&m).await;
    allowed(
        c.open(open(sid, t.secret, libc::O_RDONLY, who(1000, &[])))
            .await,
        "read open by the owner",
    );
    allowed(
        c.open(reopen(sid, t.secret, libc::O_RDONLY, who(0, &[])))
            .await,
        "reopen for reading",
    );
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        refused(
            c.open(reopen(sid, t.secret, flags, who(0, &[]))).await,
            libc::EACCES,
            &format!("reopen {flags:o} of a file opened for reading only"),
        );
    }
    // Never opened by this session.
    refused(
        c.open(reopen(sid, t.grp, libc::O_RDONLY, who(0, &[])))
            .await,
        libc::EACCES,
        "reopen of a file the session never opened",
    );
    // Another session of the same root-squash credential: uid 1000 holding
    // the file open in the first does not open it to root in the second.
    let (mut other, other_sid, _) = squashed_session(&m).await;
    refused(
        other
            .open(reopen(other_sid, t.secret, libc::O_RDONLY, who(0, &[])))
            .await,
        libc::EACCES,
        "reopen by another session",
    );
    // A reconnect listing a file it never opened grants nothing.
    resume(&mut c, sid, &secret, false, vec![t.secret, t.grp]).await;
    refused(
        c.open(reopen(sid, t.grp, libc::O_RDONLY, who(0, &[])))
            .await,
        libc::EACCES,
        "reopen of a file only listed at a reconnect",
    );
    refused(
        c.read_chunk(chunk(sid, t.grp, who(0, &[]))).await,
        libc::EACCES,
        "read chunk of a file only listed at a reconnect",
    );
    // The grant it had is kept, and no more.
    allowed(
        c.open(reopen(sid, t.secret, libc::O_RDONLY, who(0, &[])))
            .await,
        "reopen for reading after the reconnect",
    );
    refused(
        c.open(reopen(sid, t.secret, libc::O_WRONLY, who(0, &[])))
            .await,
        libc::EACCES,
        "reopen for writing after the reconnect",
    );
    m.stop().await.unwrap();
}

fn held(inode: u64, t: pb::LockType, start: u64, end: u64) -> pb::HeldLock {
    pb::HeldLock {
        inode,
        owner: 7,
        r#type: t as i32,
        start,
        end,
        pid: 4242,
        session_id: 0,
    }
}

fn setlk(sid: u64, l: pb::HeldLock) -> pb::SetLockRequest {
    pb::SetLockRequest {
        session_id: sid,
        lock: Some(l),
        wait: false,
    }
}

/// Locks of a credential session need the file open in the session (EBADF),
/// a read lock the read access, a write lock the write access; a
/// whole-file lock (a flock) any open; unlocks always pass; re-asserted
/// locks that fail so are reported lost.
#[tokio::test]
async fn locks_need_an_open_with_the_access() {
    use pb::LockType::{LockRead, LockUnlock, LockWrite};
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    register(&m, 1).await;
    let (mut c, sid, _) = squashed_session(&m).await;
    refused(
        c.set_lock(setlk(sid, held(t.secret, LockRead, 0, 9))).await,
        libc::EBADF,
        "read lock of a file not open",
    );
    refused(
        c.set_lock(setlk(sid, held(t.secret, LockWrite, 0, u64::MAX)))
            .await,
        libc::EBADF,
        "whole-file lock of a file not open",
    );
    refused(
        c.get_lock(setlk(sid, held(t.secret, LockWrite, 0, 9)))
            .await,
        libc::EBADF,
        "lock test on a file not open",
    );
    allowed(
        c.set_lock(setlk(sid, held(t.secret, LockUnlock, 0, u64::MAX)))
            .await,
        "unlock of a file not open",
    );
    allowed(
        c.release_locks(pb::ReleaseLocksRequest {
            session_id: sid,
            inode: t.secret,
            owner: 7,
        })
        .await,
        "release of the locks of a file not open",
    );
    allowed(
        c.open(open(sid, t.secret, libc::O_RDONLY, who(1000, &[])))
            .await,
        "read open by the owner",
    );
    refused(
        c.set_lock(setlk(sid, held(t.secret, LockWrite, 0, 9)))
            .await,
        libc::EBADF,
        "write lock of a file opened for reading",
    );
    allowed(
        c.set_lock(setlk(sid, held(t.secret, LockRead, 0, 9))).await,
        "read lock of a file opened for reading",
    );
    allowed(
        c.get_lock(setlk(sid, held(t.secret, LockWrite, 0, 9)))
            .await,
        "a write-lock test on a file opened for reading (as F_GETLK)",
    );
    allowed(
        c.set_lock(setlk(sid, held(t.secret, LockWrite, 0, u64::MAX)))
            .await,
        "whole-file (flock) write lock of a file opened for reading",
    );
    allowed(
        c.set_lock(setlk(sid, held(t.secret, LockUnlock, 0, u64::MAX)))
            .await,
        "unlock",
    );
    let lost = allowed(
        c.reassert_locks(pb::ReassertLocksRequest {
            session_id: sid,
            locks: vec![
                held(t.secret, LockRead, 0, 9),
                held(t.secret, LockWrite, 20, 29),
                held(t.grp, LockRead, 0, 9),
            ],
        })
        .await,
        "reassert",
    )
    .lost;
    let lost: Vec<(u64, u64)> = lost.iter().map(|l| (l.inode, l.start)).collect();
    assert_eq!(
        lost,
        vec![(t.secret, 20), (t.grp, 0)],
        "a write lock on a read open and a lock of a file not open are lost"
    );
    m.stop().await.unwrap();
}
