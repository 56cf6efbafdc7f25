//! Credentials and exports on a real master over loopback: issuing, listing
//! and revoking credentials (persisted through the changelog and snapshots),
//! sessions rooted at a credential's directory with every escape refused
//! (`..`, guessed inodes, hard links, renames, snapshots, admin paths),
//! read-only, root and all squash, the largest goal, admin calls.

mod common;

use alces_master::server::start;
use alces_master::server::Running;
use alces_proto::auth::ClientAuth;
use alces_proto::net::{channel, AuthChannel};
use alces_proto::pb::{self, admin_client::AdminClient, master_client::MasterClient, FileType};
use common::*;
use tonic::Code;

/// The namespace of every test: /outside/secret, /vols/a/in, /vols/b.
struct Tree {
    outside: u64,
    secret: u64,
    vols: u64,
    a: u64,
    inside: u64,
}

async fn tree(m: &Running) -> Tree {
    let mut c = master(m);
    let sid = session(&mut c).await;
    let outside = mkdir(&mut c, sid, 1, "outside").await.inode;
    let secret = file(&mut c, sid, outside, "secret").await.inode;
    let vols = mkdir(&mut c, sid, 1, "vols").await.inode;
    let a = mkdir(&mut c, sid, vols, "a").await.inode;
    mkdir(&mut c, sid, vols, "b").await;
    let inside = file(&mut c, sid, a, "in").await.inode;
    Tree {
        outside,
        secret,
        vols,
        a,
        inside,
    }
}

fn rule(path: &str) -> pb::CredentialRule {
    pb::CredentialRule {
        path: path.into(),
        ..Default::default()
    }
}

/// Issues a credential with the cluster secret; returns (id, token).
async fn issue(m: &Running, r: pb::CredentialRule) -> (u64, String) {
    let rep = admin(m)
        .issue_credential(pb::IssueCredentialRequest { rule: Some(r) })
        .await
        .unwrap()
        .into_inner();
    (rep.info.unwrap().id, rep.token)
}

fn chan_with(m: &Running, token: &str) -> AuthChannel {
    channel(&m.grpc_addr.to_string(), &ClientAuth::new(token).unwrap()).unwrap()
}

fn master_with(m: &Running, token: &str) -> MasterClient<AuthChannel> {
    MasterClient::new(chan_with(m, token))
}

fn admin_with(m: &Running, token: &str) -> AdminClient<AuthChannel> {
    AdminClient::new(chan_with(m, token))
}

async fn register(c: &mut MasterClient<AuthChannel>) -> pb::RegisterSessionReply {
    c.register_session(pb::RegisterSessionRequest {
        client_name: "t".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn getattr(sid: u64, inode: u64) -> pb::InodeRequest {
    pb::InodeRequest {
        session_id: sid,
        inode,
        caller: caller(),
    }
}

fn entry(sid: u64, parent: u64, name: &str) -> pb::EntryRequest {
    pb::EntryRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        caller: caller(),
        tag: None,
        negative_reply: false,
    }
}

fn rename(sid: u64, parent: u64, name: &str, new_parent: u64, new_name: &str) -> pb::RenameRequest {
    pb::RenameRequest {
        tag: None,
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        new_parent,
        new_name: new_name.as_bytes().to_vec(),
        flags: 0,
        caller: caller(),
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, errno: i32, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(alces_proto::errno::of(&s), errno, "{what}: {s:?}");
}

/// A session opened with a credential is rooted at its directory; `..` at
/// the root stays there; inodes from outside (guessed numbers, the
/// filesystem root, a parent) are refused, for reads and writes alike.
#[tokio::test]
async fn sessions_are_rooted_and_confined() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (_, token) = issue(&m, rule("/vols/a")).await;
    let mut c = master_with(&m, &token);
    let s = register(&mut c).await;
    assert_eq!(s.root_inode, t.a);
    let sid = s.session_id;
    // `..` of the root is the root; a child is reachable.
    let up = c.lookup(entry(sid, t.a, "..")).await.unwrap().into_inner();
    assert_eq!(up.attr.unwrap().inode, t.a);
    let d = c
        .readdir(pb::ReaddirRequest {
            session_id: sid,
            inode: t.a,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.parent, t.a);
    let inside = c.lookup(entry(sid, t.a, "in")).await.unwrap().into_inner();
    assert_eq!(inside.attr.unwrap().inode, t.inside);
    // Guessed inode numbers from outside.
    for ino in [1, t.outside, t.secret, t.vols] {
        let e = c.get_attr(getattr(sid, ino)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{ino}: {e:?}");
        assert!(e.message().contains("outside"), "{e:?}");
        refused(
            c.lookup(entry(sid, ino, "secret")).await,
            libc::EACCES,
            "lookup",
        );
        refused(
            c.open(pb::OpenRequest {
                session_id: sid,
                inode: ino,
                ..Default::default()
            })
            .await,
            libc::EACCES,
            "open",
        );
        refused(
            c.read_chunk(pb::ChunkRequest {
                session_id: sid,
                inode: ino,
                chunk_index: 0,
                caller: None,
            })
            .await,
            libc::EACCES,
            "read_chunk",
        );
        refused(
            c.write_chunk(pb::ChunkRequest {
                session_id: sid,
                inode: ino,
                chunk_index: 0,
                caller: None,
            })
            .await,
            libc::EACCES,
            "write_chunk",
        );
        refused(
            c.set_xattr(pb::SetXattrRequest {
                session_id: sid,
                inode: ino,
                name: b"user.x".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            })
            .await,
            libc::EACCES,
            "setxattr",
        );
        refused(
            c.unlink(entry(sid, ino, "secret")).await,
            libc::EACCES,
            "unlink",
        );
    }
    // A subdirectory asked for at registration stays below the credential's
    // directory, whatever `..` it holds.
    let mut c2 = master_with(&m, &token);
    let s2 = c2
        .register_session(pb::RegisterSessionRequest {
            subdir: "/../../..".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s2.root_inode, t.a);
    // A session of the cluster secret cannot be used with the credential.
    let mut admin_c = master(&m);
    let other = session(&mut admin_c).await;
    let e = c.get_attr(getattr(other, t.a)).await.unwrap_err();
    assert!(e.message().contains("not opened with credential"), "{e:?}");
    m.stop().await.unwrap();
}

/// Hard links and renames across the subtree's boundary are refused both
/// ways; a file linked from outside by an administrator stays reachable
/// through its inside link.
#[tokio::test]
async fn links_and_renames_cannot_cross_the_boundary() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (_, token) = issue(&m, rule("/vols/a")).await;
    let mut c = master_with(&m, &token);
    let sid = register(&mut c).await.session_id;
    let link = |inode: u64, new_parent: u64, name: &str| pb::LinkRequest {
        tag: None,
        session_id: sid,
        inode,
        new_parent,
        new_name: name.as_bytes().to_vec(),
        caller: caller(),
    };
    refused(
        c.link(link(t.secret, t.a, "stolen")).await,
        libc::EACCES,
        "link in",
    );
    refused(
        c.link(link(t.inside, t.outside, "leak")).await,
        libc::EACCES,
        "link out",
    );
    c.link(link(t.inside, t.a, "again")).await.unwrap();
    refused(
        c.rename(rename(sid, t.a, "in", t.outside, "x")).await,
        libc::EACCES,
        "rename out",
    );
    refused(
        c.rename(rename(sid, t.outside, "secret", t.a, "x")).await,
        libc::EACCES,
        "rename in",
    );
    let sub = mkdir(&mut c, sid, t.a, "sub").await.inode;
    refused(
        c.rename(rename(sid, t.a, "sub", t.vols, "sub")).await,
        libc::EACCES,
        "rename a directory out",
    );
    c.rename(rename(sid, t.a, "again", sub, "moved"))
        .await
        .unwrap();
    // An administrator links the inside file into /outside: its latest
    // parent is now outside, and it is still reached through /vols/a/in.
    let mut ac = master(&m);
    let asid = session(&mut ac).await;
    ac.link(pb::LinkRequest {
        tag: None,
        session_id: asid,
        inode: t.inside,
        new_parent: t.outside,
        new_name: b"shared".to_vec(),
        caller: caller(),
    })
    .await
    .unwrap();
    c.get_attr(getattr(sid, t.inside)).await.unwrap();
    m.stop().await.unwrap();
}

/// Read-only credentials refuse every mutation with EROFS.
#[tokio::test]
async fn read_only_credentials_refuse_mutations() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (_, token) = issue(
        &m,
        pb::CredentialRule {
            read_only: true,
            ..rule("/vols/a")
        },
    )
    .await;
    let mut c = master_with(&m, &token);
    let s = register(&mut c).await;
    assert!(s.read_only);
    let sid = s.session_id;
    c.get_attr(getattr(sid, t.inside)).await.unwrap();
    let mk = c
        .mkdir(pb::MkdirRequest {
            session_id: sid,
            parent: t.a,
            name: b"d".to_vec(),
            mode: 0o755,
            caller: caller(),
            ..Default::default()
        })
        .await;
    refused(mk, libc::EROFS, "mkdir");
    refused(c.unlink(entry(sid, t.a, "in")).await, libc::EROFS, "unlink");
    refused(
        c.rename(rename(sid, t.a, "in", t.a, "x")).await,
        libc::EROFS,
        "rename",
    );
    refused(
        c.set_attr(pb::SetAttrRequest {
            session_id: sid,
            inode: t.inside,
            valid: pb::SetAttrField::SetAttrMode as u32,
            mode: 0o600,
            ..Default::default()
        })
        .await,
        libc::EROFS,
        "chmod",
    );
    refused(
        c.write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: t.inside,
            chunk_index: 0,
            caller: None,
        })
        .await,
        libc::EROFS,
        "write",
    );
    m.stop().await.unwrap();
}

fn caller_uid(uid: u32) -> Option<pb::Caller> {
    Some(pb::Caller {
        uid,
        gid: uid,
        groups: vec![],
        pid: 1,
    })
}

async fn create_as(
    c: &mut MasterClient<AuthChannel>,
    sid: u64,
    parent: u64,
    name: &str,
    uid: u32,
) -> pb::Attr {
    c.mknod(pb::MknodRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        kind: FileType::Regular as i32,
        mode: 0o644,
        caller: caller_uid(uid),
        exclusive: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .attr
    .unwrap()
}

/// Root squash maps uid 0 to the anonymous ids (others keep theirs); all
/// squash maps everybody; a squashed root cannot chmod or chown files of
/// others.
#[tokio::test]
async fn root_and_all_squash() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let squash = |s: pb::Squash| pb::CredentialRule {
        squash: s as i32,
        anon_uid: 4242,
        anon_gid: 4343,
        ..rule("/vols/a")
    };
    // Squashed callers create in /vols/a: make it writable by all.
    let mut ac = master(&m);
    let asid = session(&mut ac).await;
    ac.set_attr(pb::SetAttrRequest {
        session_id: asid,
        inode: t.a,
        valid: pb::SetAttrField::SetAttrMode as u32,
        mode: 0o777,
        caller: caller(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, root_token) = issue(&m, squash(pb::Squash::Root)).await;
    let mut c = master_with(&m, &root_token);
    let sid = register(&mut c).await.session_id;
    let by_root = create_as(&mut c, sid, t.a, "by-root", 0).await;
    assert_eq!((by_root.uid, by_root.gid), (4242, 4343));
    let by_user = create_as(&mut c, sid, t.a, "by-user", 1000).await;
    assert_eq!((by_user.uid, by_user.gid), (1000, 1000));
    // `in` belongs to uid 1000: root (squashed) may not chmod or chown it.
    let chmod = |uid: u32, valid: pb::SetAttrField| pb::SetAttrRequest {
        session_id: sid,
        inode: t.inside,
        valid: valid as u32,
        mode: 0o777,
        uid: 0,
        caller: caller_uid(uid),
        ..Default::default()
    };
    refused(
        c.set_attr(chmod(0, pb::SetAttrField::SetAttrMode)).await,
        libc::EPERM,
        "chmod by squashed root",
    );
    refused(
        c.set_attr(chmod(0, pb::SetAttrField::SetAttrUid)).await,
        libc::EPERM,
        "chown by squashed root",
    );
    c.set_attr(chmod(1000, pb::SetAttrField::SetAttrMode))
        .await
        .unwrap();

    let (_, all_token) = issue(&m, squash(pb::Squash::All)).await;
    let mut c = master_with(&m, &all_token);
    let sid = register(&mut c).await.session_id;
    let by_user = create_as(&mut c, sid, t.a, "by-user-all", 1000).await;
    assert_eq!((by_user.uid, by_user.gid), (4242, 4343));
    m.stop().await.unwrap();
}

/// Admin calls: refused without `admin`; with it, only on paths inside the
/// credential's directory (resolved to inodes, `..` included), cluster-wide
/// calls refused, and goals above the largest refused. Credentials are
/// managed with the cluster secret alone.
#[tokio::test]
async fn admin_calls_stay_inside_and_under_the_largest_goal() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    let (_, plain) = issue(&m, rule("/vols/a")).await;
    let e = admin_with(&m, &plain)
        .snapshot(pb::SnapshotRequest {
            source: "/vols/a/in".into(),
            destination: "/vols/a/copy".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("without --admin"), "{e:?}");
    let (_, token) = issue(
        &m,
        pb::CredentialRule {
            admin: true,
            max_goal: 2,
            ..rule("/vols/a")
        },
    )
    .await;
    let mut ad = admin_with(&m, &token);
    ad.snapshot(pb::SnapshotRequest {
        source: "/vols/a/in".into(),
        destination: "/vols/a/copy".into(),
    })
    .await
    .unwrap();
    for (src, dst) in [
        ("/outside/secret", "/vols/a/stolen"),
        ("/vols/a/../../outside/secret", "/vols/a/stolen"),
        ("/vols/a/in", "/outside/leak"),
        ("/vols/a/in", "/vols/b/leak"),
    ] {
        let e = ad
            .snapshot(pb::SnapshotRequest {
                source: src.into(),
                destination: dst.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            alces_proto::errno::of(&e),
            libc::EACCES,
            "{src} -> {dst}: {e:?}"
        );
    }
    let goal = |path: &str, goal: u32| pb::SetGoalRequest {
        path: path.into(),
        goal,
        recursive: false,
    };
    ad.set_goal(goal("/vols/a/in", 2)).await.unwrap();
    let e = ad.set_goal(goal("/vols/a/in", 3)).await.unwrap_err();
    assert!(
        e.message().contains("largest this credential may set"),
        "{e:?}"
    );
    refused(
        ad.set_goal(goal("/outside/secret", 1)).await,
        libc::EACCES,
        "goal outside",
    );
    ad.set_quota(pb::SetQuotaRequest {
        path: "/vols/a".into(),
        hard_bytes: 1 << 30,
        ..Default::default()
    })
    .await
    .unwrap();
    refused(
        ad.set_quota(pb::SetQuotaRequest {
            path: "/vols".into(),
            hard_bytes: 1,
            ..Default::default()
        })
        .await,
        libc::EACCES,
        "quota above",
    );
    refused(ad.status(pb::Empty {}).await, libc::EPERM, "status");
    refused(ad.list_trash(pb::Empty {}).await, libc::EPERM, "trash");
    refused(
        ad.issue_credential(pb::IssueCredentialRequest {
            rule: Some(rule("/")),
        })
        .await,
        libc::EPERM,
        "issue",
    );
    refused(ad.list_credentials(pb::Empty {}).await, libc::EPERM, "list");
    // Peers' services take the cluster secret only.
    let e = alces_proto::pb::chunk_master_client::ChunkMasterClient::new(chan_with(&m, &token))
        .chunkserver_heartbeat(pb::ChunkserverHeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let _ = t;
    m.stop().await.unwrap();
}

/// Bad rules are refused naming what is wrong.
#[tokio::test]
async fn bad_rules_are_refused() {
    let (_tmp, m) = started().await;
    tree(&m).await;
    let mut ad = admin(&m);
    let bad = [
        (rule("/vols/a/in"), "not a directory"),
        (rule("/nope"), "'nope' does not exist"),
        (rule("vols"), "not absolute"),
        (
            pb::CredentialRule {
                max_goal: 10,
                ..rule("/vols/a")
            },
            "max goal 10",
        ),
        (
            pb::CredentialRule {
                squash: 7,
                ..rule("/vols/a")
            },
            "unknown squash",
        ),
    ];
    for (r, msg) in bad {
        let e = ad
            .issue_credential(pb::IssueCredentialRequest { rule: Some(r) })
            .await
            .unwrap_err();
        assert!(e.message().contains(msg), "{msg}: {e:?}");
    }
    let e = ad
        .revoke_credential(pb::RevokeCredentialRequest { id: 99 })
        .await
        .unwrap_err();
    assert!(e.message().contains("no credential 99"), "{e:?}");
    // Wrong tokens.
    let (id, token) = issue(&m, rule("/vols/a")).await;
    let forged = format!("alces-credential-{id}-{}", "0".repeat(64));
    let e = master_with(&m, &forged)
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("wrong token"), "{e:?}");
    let unknown = token.replacen(&format!("-{id}-"), "-77-", 1);
    let e = master_with(&m, &unknown)
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap_err();
    assert!(e.message().contains("unknown credential 77"), "{e:?}");
    m.stop().await.unwrap();
}

/// Revoking ends the credential's sessions at once (their next call is
/// refused naming the revocation); credentials and revocations survive a
/// restart through the changelog and through a snapshot.
#[tokio::test]
async fn revocation_is_immediate_and_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    let t = tree(&m).await;
    let (gone, gone_token) = issue(&m, rule("/vols/a")).await;
    let (_, kept_token) = issue(&m, rule("/vols/a")).await;
    let mut c = master_with(&m, &gone_token);
    let sid = register(&mut c).await.session_id;
    c.get_attr(getattr(sid, t.inside)).await.unwrap();
    let info = admin(&m)
        .revoke_credential(pb::RevokeCredentialRequest { id: gone })
        .await
        .unwrap()
        .into_inner();
    assert!(info.revoked);
    // Revoking again is fine.
    admin(&m)
        .revoke_credential(pb::RevokeCredentialRequest { id: gone })
        .await
        .unwrap();
    let e = c.get_attr(getattr(sid, t.inside)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(&format!("credential {gone} revoked")),
        "{e:?}"
    );
    assert!(!m.core.inner.lock().sessions.map.contains_key(&sid));
    let list = admin(&m)
        .list_credentials(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.credentials.len(), 2);
    assert!(list.credentials[0].revoked && !list.credentials[1].revoked);

    let check = |m: &Running| {
        let (g, k) = (gone_token.clone(), kept_token.clone());
        let addr = m.grpc_addr;
        async move {
            let ch = |t: &str| channel(&addr.to_string(), &ClientAuth::new(t).unwrap()).unwrap();
            let e = MasterClient::new(ch(&g))
                .register_session(pb::RegisterSessionRequest::default())
                .await
                .unwrap_err();
            assert!(e.message().contains("revoked"), "{e:?}");
            let s = MasterClient::new(ch(&k))
                .register_session(pb::RegisterSessionRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(s.root_inode, t.a);
        }
    };
    // Replayed from the changelog.
    let live = m.core.inner.lock().state.clone();
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    assert_eq!(m.core.inner.lock().state.credentials, live.credentials);
    check(&m).await;
    // Read from a snapshot.
    m.stop().await.unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    assert_eq!(m.core.inner.lock().state.credentials, live.credentials);
    check(&m).await;
    m.stop().await.unwrap();
}

/// The subtree's quota holds for a credential's session (and statfs shows
/// it), and its deletes go to the trash like anyone's.
#[tokio::test]
async fn quota_and_trash_of_the_subtree() {
    let (_tmp, m) = started().await;
    let t = tree(&m).await;
    admin(&m)
        .set_quota(pb::SetQuotaRequest {
            path: "/vols/a".into(),
            hard_inodes: 3,
            hard_bytes: 1 << 30,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, token) = issue(&m, rule("/vols/a")).await;
    let mut c = master_with(&m, &token);
    let sid = register(&mut c).await.session_id;
    let st = c.statfs(getattr(sid, t.a)).await.unwrap().into_inner();
    assert_eq!(st.total_inodes, 3, "{st:?}");
    assert_eq!(st.total_bytes, 1 << 30, "{st:?}");
    // /vols/a holds `in`: two more fit, the third does not.
    create_as(&mut c, sid, t.a, "q1", 1000).await;
    create_as(&mut c, sid, t.a, "q2", 1000).await;
    let over = c
        .mknod(pb::MknodRequest {
            session_id: sid,
            parent: t.a,
            name: b"q3".to_vec(),
            kind: FileType::Regular as i32,
            mode: 0o644,
            caller: caller(),
            exclusive: true,
            ..Default::default()
        })
        .await;
    refused(over, libc::EDQUOT, "create past the quota");
    c.unlink(entry(sid, t.a, "q1")).await.unwrap();
    let trash = admin(&m)
        .list_trash(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        trash.entries.iter().any(|e| e.path == "/vols/a/q1"),
        "{trash:?}"
    );
    m.stop().await.unwrap();
}
