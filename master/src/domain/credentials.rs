//! Credentials (exports): issuing, listing and revoking them (Admin calls the
//! cluster secret alone may make), checking a presented token, and what a
//! call made with one may reach: its session's subtree (checked on inodes,
//! see [`crate::state::namespace::State::in_subtree`]), with its uid/gid squashed,
//! and the Admin calls of an admin credential on paths inside its subtree.

use alces_proto::auth::Identity;
use alces_proto::pb::{self, changelog_record::Op};
use tonic::Status;

use crate::core::{now_ns, Core, Inner};
use crate::state::credentials::check_rule;
use crate::state::error::{FsError, FsResult};
use crate::state::namespace::ROOT_INODE;

/// Bytes of randomness in a token's secret part.
const TOKEN_BYTES: usize = 32;

/// SHA-256 of a token's secret part: all the master keeps of it.
fn hash(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Constant-time comparison of two byte strings.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The status of a call presenting revoked credential `id`.
pub fn revoked(id: u64) -> Status {
    alces_proto::errno::credential_revoked(id)
}

/// The credential id of `token`, or why it is refused: unknown (wrong
/// cluster, or a token never issued), wrong secret, revoked.
pub fn authenticate(core: &Core, token: &str) -> Result<u64, Status> {
    let Some((id, secret)) = alces_proto::auth::parse_credential(token) else {
        return Err(Status::unauthenticated(
            "malformed credential token: give the token `alces credential issue` printed",
        ));
    };
    let h = hash(secret);
    let g = core.inner.lock();
    match g.state.credentials.get(id) {
        None => Err(Status::unauthenticated(format!(
            "unknown credential {id}: this cluster never issued it"
        ))),
        Some(c) if !ct_eq(&c.token_hash, &h) => Err(Status::unauthenticated(format!(
            "wrong token for credential {id}"
        ))),
        Some(c) if c.revoked => Err(revoked(id)),
        Some(_) => Ok(id),
    }
}

/// Checks credential tokens against a master's state (the interceptor's hook).
pub struct Checker(pub std::sync::Arc<Core>);

impl alces_proto::auth::CredentialCheck for Checker {
    fn check(&self, token: &str) -> Result<u64, Status> {
        authenticate(&self.0, token)
    }
}

/// Refuses `who` unless it is the cluster secret.
pub fn cluster_only(who: Identity, what: &str) -> Result<(), Status> {
    match who {
        Identity::Cluster => Ok(()),
        Identity::Credential(id) => Err(alces_proto::errno::status(
            libc::EPERM,
            format!("{what} needs the cluster secret; credential {id} may not do it"),
        )),
    }
}

fn info(c: &pb::IssueCredentialOp) -> pb::CredentialInfo {
    pb::CredentialInfo {
        id: c.id,
        rule: c.rule.clone(),
        root_inode: c.root_inode,
        revoked: c.revoked,
        issued_ns: c.issued_ns,
        revoked_ns: c.revoked_ns,
    }
}

/// `IssueCredential`: a new credential rooted at `rule.path` (a directory).
pub async fn issue(
    core: &Core,
    r: pb::IssueCredentialRequest,
) -> Result<pb::IssueCredentialReply, Status> {
    let rule = r
        .rule
        .ok_or_else(|| Status::invalid_argument("IssueCredential without a rule"))?;
    check_rule(&rule)?;
    core.mutate(|core, inner| {
        let root = inner.state.resolve_absolute(&rule.path)?;
        if !inner.state.get(root)?.is_dir() {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!(
                    "'{}' is not a directory: a credential is rooted at a directory",
                    rule.path
                ),
            ));
        }
        let id = inner.state.credentials.next_id();
        let secret: String = (0..TOKEN_BYTES)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let op = pb::IssueCredentialOp {
            id,
            token_hash: hash(&secret),
            root_inode: root,
            rule: Some(rule.clone()),
            issued_ns: now_ns(),
            revoked: false,
            revoked_ns: 0,
        };
        let v = core.commit(inner, Op::IssueCredential(op.clone()))?;
        tracing::info!(credential = id, path = %rule.path, read_only = rule.read_only, admin = rule.admin, "credential issued");
        Ok((
            Some(v),
            pb::IssueCredentialReply {
                info: Some(info(&op)),
                token: format!("{}{id}-{secret}", alces_proto::auth::CREDENTIAL_PREFIX),
            },
        ))
    })
    .await
}

/// `ListCredentials`.
pub fn list(core: &Core) -> Result<pb::CredentialList, Status> {
    core.read(|i| {
        Ok(pb::CredentialList {
            credentials: i.state.credentials.map.values().map(info).collect(),
        })
    })
}

/// `RevokeCredential`: logged, then every session opened with it is closed
/// (its open files released, its locks dropped). Revoking twice is OK.
pub async fn revoke(core: &Core, id: u64) -> Result<pb::CredentialInfo, Status> {
    core.mutate(|core, inner| {
        let c = inner
            .state
            .credentials
            .get(id)
            .ok_or_else(|| {
                FsError::new(
                    libc::ENOENT,
                    format!("no credential {id}: see `alces credential list`"),
                )
            })?
            .clone();
        if c.revoked {
            return Ok((None, info(&c)));
        }
        let v = core.commit(
            inner,
            Op::RevokeCredential(pb::RevokeCredentialOp {
                id,
                revoked_ns: now_ns(),
            }),
        )?;
        let sessions: Vec<u64> = inner
            .sessions
            .map
            .iter()
            .filter(|(_, s)| s.credential == Some(id))
            .map(|(sid, _)| *sid)
            .collect();
        let mut last = Some(v);
        for sid in &sessions {
            let freed = inner.sessions.close(*sid);
            inner.sessions.mark_ended(*sid);
            inner.tails.session_gone(&inner.state, *sid);
            inner.locks.release_session(*sid);
            if let Some(p) = core.purge_unused(inner, &freed) {
                last = Some(p);
            }
        }
        tracing::info!(
            credential = id,
            sessions = sessions.len(),
            "credential revoked"
        );
        let c = inner
            .state
            .credentials
            .get(id)
            .map(info)
            .unwrap_or_default();
        Ok((last, c))
    })
    .await
}

/// How long after its revocation a credential is still pushed to
/// chunkservers: past the longest chunk access the master signs (a write
/// session's), with as much again for clocks that disagree.
const REVOKED_PUSHED_NS: i64 = 2 * alces_proto::access::WRITE_SECS * 1_000_000_000;

/// The credentials revoked within [`REVOKED_PUSHED_NS`] of `now_ns`, which
/// chunkservers refuse (sent with every heartbeat reply, so a revocation
/// reaches them within a heartbeat, and a chunkserver that was down or a
/// new master after a failover sends the list again).
pub fn recently_revoked(inner: &Inner, now_ns: i64) -> Vec<u64> {
    inner
        .state
        .credentials
        .map
        .values()
        .filter(|c| c.revoked && now_ns.saturating_sub(c.revoked_ns) < REVOKED_PUSHED_NS)
        .map(|c| c.id)
        .collect()
}

/// What a credential's session may do, for the checks of each call.
#[derive(Debug, Clone)]
pub struct Export {
    /// The session's root directory inode.
    pub root: u64,
    /// The credential's rule.
    pub rule: pb::CredentialRule,
}

/// Admits a Master call of session `sid` by `who` touching `inodes`: a
/// credential's call must name a session opened with that credential, and
/// every inode must lie in the session's subtree. Returns the export the
/// call runs under (None for the cluster secret's sessions).
pub fn admit(
    core: &Core,
    who: Identity,
    sid: u64,
    inodes: &[u64],
) -> Result<Option<Export>, Status> {
    let Identity::Credential(id) = who else {
        return Ok(None);
    };
    let g = core.inner.lock();
    let s = g
        .sessions
        .map
        .get(&sid)
        .ok_or_else(|| alces_proto::errno::session_unknown(sid))?;
    if s.credential != Some(id) {
        return Err(alces_proto::errno::status(
            libc::EACCES,
            format!("session {sid} was not opened with credential {id}"),
        ));
    }
    let c = g.state.credentials.get(id).ok_or_else(|| revoked(id))?;
    if c.revoked {
        return Err(revoked(id));
    }
    for &ino in inodes {
        if !g.state.in_subtree(s.root, ino) {
            return Err(outside(ino));
        }
    }
    Ok(Some(Export {
        root: s.root,
        rule: c.rule.clone().unwrap_or_default(),
    }))
}

fn outside(ino: u64) -> Status {
    alces_proto::errno::status(
        libc::EACCES,
        format!("inode {ino} is outside the directory this credential exports"),
    )
}

/// Maps the caller's ids as the export squashes them.
pub fn squash(e: &Option<Export>, caller: &mut Option<pb::Caller>) {
    let Some(e) = e else { return };
    let anon = |c: &mut pb::Caller| {
        c.uid = e.rule.anon_uid;
        c.gid = e.rule.anon_gid;
        c.groups.clear();
    };
    match pb::Squash::try_from(e.rule.squash) {
        Ok(pb::Squash::All) => anon(caller.get_or_insert_with(Default::default)),
        Ok(pb::Squash::Root) => match caller {
            Some(c) if c.uid != 0 => {}
            c => anon(c.get_or_insert_with(Default::default)),
        },
        _ => {}
    }
}

/// Whether `who` may make an Admin call, and where: None for the cluster
/// secret, else the credential's export (paths must resolve inside its
/// directory, goals stay within its largest).
/// `cluster_wide` calls (status, drains, the trash, the consistency check)
/// reach beyond any directory and need the whole filesystem.
pub fn admin_scope(
    core: &Core,
    who: Identity,
    what: &str,
    cluster_wide: bool,
) -> Result<Option<Export>, Status> {
    let Identity::Credential(id) = who else {
        return Ok(None);
    };
    let g = core.inner.lock();
    let c = g.state.credentials.get(id).ok_or_else(|| revoked(id))?;
    let rule = c.rule.clone().unwrap_or_default();
    if !rule.admin {
        return Err(alces_proto::errno::status(
            libc::EPERM,
            format!("{what} is an admin call and credential {id} was issued without --admin"),
        ));
    }
    if cluster_wide && c.root_inode != ROOT_INODE {
        return Err(alces_proto::errno::status(
            libc::EPERM,
            format!(
                "{what} reaches the whole cluster; credential {id} is limited to {}",
                rule.path
            ),
        ));
    }
    Ok(Some(Export {
        root: c.root_inode,
        rule,
    }))
}

/// Checks that `path` (or, with `parent`, the directory that would hold it)
/// resolves inside the export's directory.
pub fn check_admin_path(
    core: &Core,
    e: &Option<Export>,
    path: &str,
    parent: bool,
) -> Result<(), Status> {
    let Some(e) = e else { return Ok(()) };
    let g = core.inner.lock();
    check_path_in(&g, e, path, parent).map_err(Status::from)
}

fn check_path_in(g: &Inner, e: &Export, path: &str, parent: bool) -> FsResult<()> {
    let target = if parent {
        let trimmed = path.trim_end_matches('/');
        match trimmed.rfind('/') {
            Some(0) => "/",
            Some(n) => &trimmed[..n],
            None => trimmed,
        }
    } else {
        path
    };
    let ino = g.state.resolve_absolute(target)?;
    if !g.state.in_subtree(e.root, ino) {
        return Err(FsError::new(
            libc::EACCES,
            format!(
                "'{path}' is outside {}, the directory this credential may administer",
                e.rule.path
            ),
        ));
    }
    Ok(())
}

/// Refuses a goal above the export's largest one.
pub fn check_goal(e: &Option<Export>, goal: u32) -> Result<(), Status> {
    match e {
        Some(e) if e.rule.max_goal != 0 && goal > e.rule.max_goal => {
            Err(alces_proto::errno::status(
                libc::EPERM,
                format!(
                    "goal {goal} is above {}, the largest this credential may set",
                    e.rule.max_goal
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The chunk access a credential's session gets with a chunk's locations
/// (`write` false) or a write chain (see `alces_proto::access`).
pub fn chunk_access(
    core: &Core,
    who: Identity,
    chunk_id: u64,
    version: u64,
    write: bool,
    copy_from_chunk_id: u64,
    chain: &[pb::ChunkLocation],
) -> Option<pb::ChunkAccess> {
    let Identity::Credential(id) = who else {
        return None;
    };
    let secs = if write {
        alces_proto::access::WRITE_SECS
    } else {
        alces_proto::access::READ_SECS
    };
    Some(alces_proto::access::sign(
        &core.settings.access_secret.0,
        pb::ChunkAccess {
            credential: id,
            chunk_id,
            version,
            write,
            copy_from_chunk_id,
            expires_unix: alces_proto::access::now_unix() + secs,
            chain: chain.iter().map(|l| l.address.clone()).collect(),
            mac: Vec::new(),
        },
    ))
}
