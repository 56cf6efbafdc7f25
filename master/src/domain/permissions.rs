//! POSIX permission checks for the calls of credential sessions.
//!
//! A mount with the cluster secret lets the kernel check permissions
//! (`default_permissions`). A credential's client is not trusted to: it may
//! talk to the master directly. So every Master call of a credential session
//! is checked here, after [`super::credentials::admit`] and the squash, with
//! the ids the call carries (the client sends the process's uid, gid and
//! supplementary groups; a call without them is checked as the credential's
//! anonymous ids). The rules are Linux's for a local filesystem:
//!
//! - search (`x`) on every directory from the session's root down to the
//!   inode a call names, following the inode's latest link (a hostile client
//!   naming an inode number deep below a directory it may not search gets
//!   EACCES, as a path walk would);
//! - `w` and `x` on the directory an entry is created in, removed from or
//!   renamed out of and into; in a sticky directory only the owner of the
//!   entry or of the directory removes or replaces it; a directory moved to
//!   another parent needs `w` on itself (its `..` changes);
//! - `r` and/or `w` as the open flags ask (`O_TRUNC` needs `w`); the session
//!   is then granted those accesses to the file's chunks, and a chunk call on
//!   a file the session did not open so (a truncate by path, a resumed open)
//!   needs the permission itself. A *reopen* (`OpenRequest.reopen`: a daemon
//!   that took the session over reopens a dead daemon's handle or replays its
//!   write journal, as root, which the squash may map to the anonymous ids)
//!   passes without a check only when the session holds the file open with
//!   every access asked already granted here; the grants are recorded only
//!   after opens this module allowed, never from a client's list of opens;
//! - locks (`lock_in`): the session must hold the file open (else EBADF), a
//!   read lock needs the read access granted, a write lock the write access
//!   (EBADF, as `fcntl` on a descriptor not opened so), a whole-file lock
//!   (a flock) any open; unlocks are never refused;
//! - `r` to list a directory, read a `user.` extended attribute; `w` to set
//!   or remove one; `trusted.` attributes and device nodes are for root;
//! - chmod and explicit times by the owner only (`utimes(NULL)` also by a
//!   writer), chown by root only, chgrp by the owner to a group they belong
//!   to; chmod by a non-member of the file's group clears setgid, and a
//!   chown or chgrp by anyone but root clears setuid and setgid.
//!
//! `GetAttr`, `Readlink` and `Statfs` are admitted on the subtree alone:
//! like MooseFS's master, Alces answers an inode's attributes and a link's
//! target to a session naming the inode, as they are not file data, and the
//! client's internal attribute fetches carry no caller.
//!
//! Uid 0 after the squash (a `squash none` credential's root) passes every
//! check but executing a file without any `x` bit, as root does locally.
//! POSIX ACLs are not supported by Alces (neither the kernel nor the master
//! evaluates `system.posix_acl_*`, which are stored as plain attributes), so
//! there is nothing more to check.

use alces_proto::pb::{self, SetAttrField as F};
use tonic::Status;

use crate::core::{Core, Inner};
use crate::domain::credentials::Export;
use crate::state::error::{FsError, FsResult};
use crate::state::inode::Inode;
use crate::state::namespace::State;

/// Read permission.
pub const R: u32 = 4;
/// Write permission.
pub const W: u32 = 2;
/// Search / execute permission.
pub const X: u32 = 1;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Levels walked from an inode up to the session's root, at most (as
/// [`State::in_subtree`]).
const MAX_DEPTH: usize = 4096;

/// Who a call is checked as: the (squashed) ids it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// User id.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Who {
    /// The ids of `caller`, or the export's anonymous ids when the call
    /// carries none.
    pub fn of(e: &Export, caller: Option<&pb::Caller>) -> Self {
        match caller {
            Some(c) => Self {
                uid: c.uid,
                gid: c.gid,
                groups: c.groups.clone(),
            },
            None => Self {
                uid: e.rule.anon_uid,
                gid: e.rule.anon_gid,
                groups: Vec::new(),
            },
        }
    }

    fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether this caller has every permission of `mask` (R|W|X) on `i`.
    pub fn may(&self, i: &Inode, mask: u32) -> bool {
        let mode = u32::from(i.mode);
        if self.is_root() {
            // Root reads and writes anything; it executes a file only when
            // some x bit is set, and searches any directory.
            return mask & X == 0 || i.is_dir() || mode & 0o111 != 0;
        }
        let bits = if self.uid == i.uid {
            mode >> 6
        } else if self.in_group(i.gid) {
            mode >> 3
        } else {
            mode
        } & 7;
        bits & mask == mask
    }

    fn owns(&self, i: &Inode) -> bool {
        self.is_root() || self.uid == i.uid
    }
}

/// What a call does, for its permission check.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// Looks `name` up in `parent` (also Readlink/GetAttr-like reads of what it finds).
    Lookup { parent: u64 },
    /// Uses an inode without reading or changing its contents (lists its
    /// attribute names): only the search walk to it.
    Reach { inode: u64 },
    /// Lists a directory.
    Readdir { inode: u64 },
    /// Creates an entry in `parent`; `device` for a character or block device;
    /// `open` when the call also opens an existing regular file of that name.
    Create {
        parent: u64,
        name: &'a [u8],
        device: bool,
        open: bool,
    },
    /// Links `inode` into `new_parent`.
    Link { inode: u64, new_parent: u64 },
    /// Removes `name` from `parent`.
    Remove { parent: u64, name: &'a [u8] },
    /// Renames `parent/name` to `new_parent/new_name`.
    Rename {
        parent: u64,
        name: &'a [u8],
        new_parent: u64,
        new_name: &'a [u8],
    },
    /// Opens `inode` with open(2) `flags`; `reopen` when the session asks to
    /// reopen a file it holds open (see [`reopen_granted`]).
    Open {
        inode: u64,
        flags: u32,
        reopen: bool,
    },
    /// Reads (`write` false) or writes a chunk of `inode`.
    Chunk { inode: u64, write: bool },
    /// Reads (`set` false) or sets/removes an extended attribute.
    Xattr {
        inode: u64,
        name: &'a [u8],
        set: bool,
    },
}

/// EACCES naming what was refused and why.
fn denied(what: String) -> FsError {
    FsError::new(libc::EACCES, what)
}

fn eperm(what: String) -> FsError {
    FsError::new(libc::EPERM, what)
}

/// Checks that `who` may search every directory from `root` down to `ino`
/// (`ino` itself included when it is a directory and `include_self`).
fn reach(st: &State, root: u64, ino: u64, include_self: bool, who: &Who) -> FsResult<()> {
    let i = st.get(ino)?;
    let mut cur = if i.is_dir() && include_self {
        ino
    } else if ino == root {
        return Ok(());
    } else {
        i.parent
    };
    for _ in 0..MAX_DEPTH {
        let d = st.get(cur)?;
        if !who.may(d, X) {
            return Err(denied(format!(
                "uid {} may not search directory inode {cur} (mode {:o}, owner {}:{}) on the way to inode {ino}",
                who.uid, d.mode, d.uid, d.gid
            )));
        }
        if cur == root || cur == d.parent {
            return Ok(());
        }
        cur = d.parent;
    }
    Ok(())
}

/// Checks `mask` on `ino` for `who`, naming `what` in the refusal.
fn need(st: &State, ino: u64, mask: u32, who: &Who, what: &str) -> FsResult<()> {
    let i = st.get(ino)?;
    if who.may(i, mask) {
        return Ok(());
    }
    Err(denied(format!(
        "uid {} may not {what} inode {ino} (mode {:o}, owner {}:{})",
        who.uid, i.mode, i.uid, i.gid
    )))
}

/// The sticky-directory rule: in a sticky `dir`, only the owner of `child`
/// or of the directory (or root) removes, renames or replaces it.
fn sticky(st: &State, dir: u64, child: u64, who: &Who) -> FsResult<()> {
    let d = st.get(dir)?;
    if u32::from(d.mode) & S_ISVTX == 0 || who.owns(d) {
        return Ok(());
    }
    let c = st.get(child)?;
    if who.owns(c) {
        return Ok(());
    }
    Err(eperm(format!(
        "directory inode {dir} is sticky: only the owner of inode {child} (uid {}) or of the directory (uid {}) may remove or replace it, not uid {}",
        c.uid, d.uid, who.uid
    )))
}

/// Whether session `sid` was granted `mask` on `inode` by an open it holds.
fn granted(inner: &Inner, sid: u64, inode: u64, mask: u32) -> bool {
    inner
        .sessions
        .map
        .get(&sid)
        .and_then(|s| s.granted.get(&inode))
        .is_some_and(|g| u32::from(*g) & mask == mask)
}

/// Whether a reopen by session `sid` of `inode` with `mask` needs no check:
/// the session holds the inode open and this master granted it every access
/// of `mask` at an open it checked. Holding the file open is not enough by
/// itself: another process of the same squashed mount (root mapped to the
/// anonymous ids) must not read a user's 0600 file because that user has it
/// open.
pub fn reopen_granted(inner: &Inner, sid: u64, inode: u64, mask: u32) -> bool {
    inner
        .sessions
        .map
        .get(&sid)
        .is_some_and(|s| s.open.contains_key(&inode))
        && granted(inner, sid, inode, mask)
}

/// The whole file, as a flock locks it (fuser passes no `FUSE_LK_FLOCK`).
fn whole_file(start: u64, end: u64) -> bool {
    start == 0 && end == u64::MAX
}

/// Which lock call [`lock_in`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockCall {
    /// `SetLock`.
    Set,
    /// `GetLock`: a test needs the open only (as `F_GETLK`, which Linux
    /// allows on a descriptor of any access mode).
    Test,
    /// `ReassertLocks`: as `Set`, except for an open this master recorded
    /// no access of (the session was adopted after a master restart, from
    /// the client's own list of opens), where the open alone is required.
    Reassert,
}

/// Checks a lock call of session `sid` on `inode` when the session is a
/// credential's (the cluster secret's are left to the kernel): `kind` is
/// `Some(write)` for a read or write lock (or a test of one), None for an
/// unlock, which is never refused. The session must hold the inode open
/// (EBADF otherwise, as a lock call on a closed descriptor); a read lock
/// needs the read access granted at an open, a write lock the write access
/// (EBADF, as `fcntl(F_SETLK)` on a descriptor not opened so), a whole-file
/// lock (flock's shape) any open.
pub fn lock_in(
    inner: &Inner,
    sid: u64,
    inode: u64,
    kind: Option<bool>,
    (start, end): (u64, u64),
    call: LockCall,
) -> FsResult<()> {
    let Some(write) = kind else { return Ok(()) };
    let Some(s) = inner.sessions.map.get(&sid) else {
        return Ok(());
    };
    if s.credential.is_none() {
        return Ok(());
    }
    if !s.open.contains_key(&inode) {
        return Err(FsError::new(
            libc::EBADF,
            format!("session {sid} does not hold inode {inode} open, so may not lock it"),
        ));
    }
    let unrecorded = call == LockCall::Reassert && !s.granted.contains_key(&inode);
    if call == LockCall::Test || whole_file(start, end) || unrecorded {
        return Ok(());
    }
    let (mask, what) = if write { (W, "write") } else { (R, "read") };
    if granted(inner, sid, inode, mask) {
        return Ok(());
    }
    Err(FsError::new(
        libc::EBADF,
        format!(
            "session {sid} did not open inode {inode} for {what}ing, so may not {what}-lock bytes {start}..={end} of it"
        ),
    ))
}

/// Whether `parent` holds an entry `name` (before a create that may open it).
pub fn exists(core: &Core, parent: u64, name: &[u8]) -> bool {
    let g = core.inner.lock();
    g.state.dir(parent).is_ok_and(|d| d.get(name).is_some())
}

/// The accesses (R, W) open(2) `flags` ask for.
pub fn open_mask(flags: u32) -> u32 {
    let acc = flags & libc::O_ACCMODE as u32;
    let mut m = 0;
    if acc != libc::O_WRONLY as u32 {
        m |= R;
    }
    if acc != libc::O_RDONLY as u32 || flags & libc::O_TRUNC as u32 != 0 {
        m |= W;
    }
    m
}

/// Checks `call` of session `sid` by `who` against the state. Pure: the
/// caller holds the lock.
pub fn check_in(inner: &Inner, sid: u64, root: u64, who: &Who, call: Call<'_>) -> FsResult<()> {
    let st = &inner.state;
    match call {
        Call::Lookup { parent } => reach(st, root, parent, true, who),
        Call::Reach { inode } => reach(st, root, inode, false, who),
        Call::Readdir { inode } => {
            reach(st, root, inode, false, who)?;
            need(st, inode, R, who, "list")
        }
        Call::Create {
            parent,
            name,
            device,
            open,
        } => {
            if device && !who.is_root() {
                return Err(eperm(format!(
                    "only root may create a device node, not uid {}",
                    who.uid
                )));
            }
            reach(st, root, parent, true, who)?;
            match st.dir(parent)?.get(name).copied() {
                // O_CREAT of an existing file is an open of it; the grant
                // follows from what the caller may do to it.
                Some(ino) if open => reach(st, root, ino, false, who),
                _ => need(st, parent, W | X, who, "create entries in"),
            }
        }
        Call::Link { inode, new_parent } => {
            reach(st, root, inode, false, who)?;
            reach(st, root, new_parent, true, who)?;
            need(st, new_parent, W | X, who, "create entries in")
        }
        Call::Remove { parent, name } => {
            reach(st, root, parent, true, who)?;
            need(st, parent, W | X, who, "remove entries from")?;
            match st.dir(parent)?.get(name).copied() {
                Some(child) => sticky(st, parent, child, who),
                None => Ok(()),
            }
        }
        Call::Rename {
            parent,
            name,
            new_parent,
            new_name,
        } => {
            reach(st, root, parent, true, who)?;
            reach(st, root, new_parent, true, who)?;
            need(st, parent, W | X, who, "remove entries from")?;
            need(st, new_parent, W | X, who, "create entries in")?;
            let Some(child) = st.dir(parent)?.get(name).copied() else {
                return Ok(());
            };
            sticky(st, parent, child, who)?;
            if let Some(target) = st.dir(new_parent)?.get(new_name).copied() {
                sticky(st, new_parent, target, who)?;
            }
            if parent != new_parent && st.get(child)?.is_dir() {
                need(st, child, W, who, "move (its '..' changes)")?;
            }
            Ok(())
        }
        Call::Open {
            inode,
            flags,
            reopen,
        } => {
            let mask = open_mask(flags);
            if reopen && reopen_granted(inner, sid, inode, mask) {
                return Ok(());
            }
            reach(st, root, inode, false, who)?;
            let what = match mask {
                R => "open for reading",
                W => "open for writing",
                _ => "open for reading and writing",
            };
            need(st, inode, mask, who, what)
        }
        Call::Chunk { inode, write } => {
            let mask = if write { W } else { R };
            if granted(inner, sid, inode, mask) {
                return Ok(());
            }
            reach(st, root, inode, false, who)?;
            need(
                st,
                inode,
                mask,
                who,
                if write { "write to" } else { "read from" },
            )
        }
        Call::Xattr { inode, name, set } => {
            reach(st, root, inode, false, who)?;
            if name.starts_with(b"trusted.") && !who.is_root() {
                return Err(eperm(format!(
                    "only root may read or change trusted.* attributes, not uid {}",
                    who.uid
                )));
            }
            if name.starts_with(b"user.") {
                let (mask, what) = if set {
                    (W, "change the attributes of")
                } else {
                    (R, "read the attributes of")
                };
                return need(st, inode, mask, who, what);
            }
            if set && !who.owns(st.get(inode)?) {
                return Err(eperm(format!(
                    "only the owner of inode {inode} or root may change its {} attribute",
                    String::from_utf8_lossy(name)
                )));
            }
            Ok(())
        }
    }
}

/// Checks a call of a credential session (`e` set); the cluster secret's
/// calls are not checked (`e` None). `caller` is the call's squashed ids.
pub fn check(
    core: &Core,
    sid: u64,
    e: &Option<Export>,
    caller: Option<&pb::Caller>,
    call: Call<'_>,
) -> Result<(), Status> {
    let Some(e) = e else { return Ok(()) };
    let who = Who::of(e, caller);
    let g = core.inner.lock();
    check_in(&g, sid, e.root, &who, call).map_err(Status::from)
}

/// Checks a `SetAttr` of a credential session and rewrites its mode as the
/// kernel would (setgid cleared by a chmod from outside the file's group;
/// setuid and setgid cleared by a chown or chgrp from anyone but root).
pub fn check_set_attr(
    core: &Core,
    e: &Option<Export>,
    r: &mut pb::SetAttrRequest,
) -> Result<(), Status> {
    let Some(e) = e else { return Ok(()) };
    let who = Who::of(e, r.caller.as_ref());
    let g = core.inner.lock();
    set_attr_in(&g, e.root, &who, r).map_err(Status::from)
}

fn set_attr_in(inner: &Inner, root: u64, who: &Who, r: &mut pb::SetAttrRequest) -> FsResult<()> {
    let st = &inner.state;
    let ino = r.inode;
    reach(st, root, ino, false, who)?;
    let i = st.get(ino)?;
    let valid = r.valid;
    let has = |f: F| valid & f as u32 != 0;
    let not_owner = |what: &str| {
        eperm(format!(
            "only the owner of inode {ino} (uid {}) or root may {what}, not uid {}",
            i.uid, who.uid
        ))
    };
    if has(F::SetAttrUid) && r.uid != i.uid && !who.is_root() {
        return Err(eperm(format!(
            "only root may change the owner of inode {ino}, not uid {}",
            who.uid
        )));
    }
    if has(F::SetAttrGid) && r.gid != i.gid && !who.is_root() {
        if who.uid != i.uid {
            return Err(not_owner("change its group"));
        }
        if !who.in_group(r.gid) {
            return Err(eperm(format!(
                "uid {} is not a member of group {} and may not give inode {ino} to it",
                who.uid, r.gid
            )));
        }
    }
    if has(F::SetAttrMode) {
        if !who.owns(i) {
            return Err(not_owner("change its mode"));
        }
        let group = if has(F::SetAttrGid) { r.gid } else { i.gid };
        if !who.is_root() && !who.in_group(group) && !i.is_dir() {
            r.mode &= !S_ISGID;
        }
    }
    let chown = (has(F::SetAttrUid) && r.uid != i.uid) || (has(F::SetAttrGid) && r.gid != i.gid);
    if chown && !who.is_root() && !i.is_dir() {
        let m = if has(F::SetAttrMode) {
            r.mode
        } else {
            u32::from(i.mode)
        };
        if m & (S_ISUID | S_ISGID) != 0 {
            r.mode = m & !(S_ISUID | S_ISGID);
            r.valid |= F::SetAttrMode as u32;
        }
    }
    let explicit_times = has(F::SetAttrAtime) || has(F::SetAttrMtime) || has(F::SetAttrCtime);
    if explicit_times && !who.owns(i) {
        return Err(not_owner("set its times"));
    }
    let now_times = has(F::SetAttrAtimeNow) || has(F::SetAttrMtimeNow);
    if now_times && !who.owns(i) && !who.may(i, W) {
        return Err(denied(format!(
            "uid {} neither owns nor may write inode {ino}, so may not touch its times",
            who.uid
        )));
    }
    if has(F::SetAttrSize) {
        // ftruncate(2) of a file the session opened for writing needs no
        // write permission any more (it may have changed since the open).
        if !granted(inner, r.session_id, ino, W) && !who.may(i, W) {
            return Err(denied(format!(
                "uid {} may not truncate inode {ino} (mode {:o}, owner {}:{})",
                who.uid, i.mode, i.uid, i.gid
            )));
        }
    }
    Ok(())
}

/// Grants session `sid` the accesses it was allowed at an open (or a create
/// that opens): `mask` of R and W, for its chunk calls on `inode` while it
/// holds the file open. Only credential sessions (`e` set) keep grants.
pub fn grant(core: &Core, e: &Option<Export>, sid: u64, inode: u64, mask: u32) {
    if e.is_none() {
        return;
    }
    let mut g = core.inner.lock();
    g.sessions.grant(sid, inode, mask as u8);
}

/// After a create-and-open of a credential session: a new file is the
/// caller's to read and write; an existing one grants what the caller may
/// do to it.
pub fn grant_created(
    core: &Core,
    e: &Option<Export>,
    sid: u64,
    caller: Option<&pb::Caller>,
    inode: u64,
    created: bool,
) {
    let Some(ex) = e else { return };
    let who = Who::of(ex, caller);
    let mut g = core.inner.lock();
    let mask = if created {
        R | W
    } else {
        match g.state.get(inode) {
            Ok(i) => [R, W].into_iter().filter(|m| who.may(i, *m)).sum(),
            Err(_) => 0,
        }
    };
    g.sessions.grant(sid, inode, mask as u8);
}
