//! Entry points for the fuzz targets in `fuzz/` (built only with the
//! `fuzzing` feature): the master's parsers of bytes that come from outside,
//! driven the way the master and the metaloggers drive them, with the
//! invariants they rely on checked as assertions (a failed assertion is a
//! crash the fuzzer reports).

use alces_proto::pb::{self, ChangelogRecord};
use prost::Message;

use crate::disk::{frame, snapshot};
use crate::state::namespace::{self, State};
use crate::state::ops;

/// The state records are applied to: a new filesystem, as `alces-master`
/// formats it.
fn fresh() -> State {
    State::format("fuzz".into(), 1 << 20, 2, 1)
}

/// A changelog file (or a replication batch) read at start-up or by a
/// metalogger: frames are split and decoded as `changelog::read_file` does,
/// then each record is applied to a new filesystem twice: as it is (a record
/// out of sequence must be refused) and renumbered to follow the state (so
/// the operations themselves are exercised). A refused record must leave the
/// state unchanged, the state reached must pass the consistency check
/// `alces fsck` runs, and survive a snapshot round trip.
pub fn changelog(data: &[u8]) {
    let (frames, _bad, _) = frame::split_preallocated(data);
    let recs: Vec<ChangelogRecord> = frames
        .into_iter()
        .map_while(|f| ChangelogRecord::decode(f).ok())
        .collect();
    let mut as_is = fresh();
    for r in &recs {
        if ops::apply(&mut as_is, r).is_err() {
            break;
        }
    }
    let mut st = fresh();
    for r in recs {
        let mut r = r;
        r.version = st.version + 1;
        let before = snapshot::encode(&st, 0);
        if ops::apply(&mut st, &r).is_err() {
            assert!(
                snapshot::encode(&st, 0) == before,
                "a refused changelog record changed the state: {r:?}"
            );
        }
    }
    // What `alces fsck` checks: the incremental usage and chunk reference
    // counts match the ones recomputed from the namespace.
    let problems = crate::state::volumes::check(&st);
    assert!(
        problems.is_empty(),
        "the applied records left an inconsistent state: {problems:?}"
    );
    round_trip(&st);
}

/// A snapshot file: decoded as start-up and a metalogger's download do; a
/// snapshot that decodes must encode and decode again to the same state.
pub fn snapshot(data: &[u8]) {
    if let Ok(st) = snapshot::decode(data) {
        round_trip(&st);
    }
}

/// Names and paths from requests, through the checks every namespace call
/// and every admin call by path makes before it touches the namespace.
pub fn names(data: &[u8]) {
    let st = fresh();
    if namespace::check_name(data).is_ok() {
        assert!(!data.is_empty() && !data.contains(&b'/') && !data.contains(&0));
        let _ = st.lookup(namespace::ROOT_INODE, data);
    }
    let _ = namespace::show(data);
    if let Ok(path) = std::str::from_utf8(data) {
        if namespace::check_absolute(path).is_ok() {
            let _ = st.resolve_absolute(path);
        }
    }
}

/// Requests of the Master and Admin services that carry names, paths, goals
/// or limits (the first byte picks the type), through the checks their
/// handlers make before any lock is taken, then resolved against a new
/// filesystem as the handlers do.
pub fn requests(data: &[u8]) {
    let Some((&pick, b)) = data.split_first() else {
        return;
    };
    let st = fresh();
    let entry = |parent: u64, name: &[u8]| {
        if namespace::check_name(name).is_ok() {
            let _ = st.lookup(parent, name);
        }
    };
    let path = |p: &str| {
        if namespace::check_absolute(p).is_ok() {
            let _ = st.resolve_absolute(p);
        }
    };
    match pick % 13 {
        0 => {
            if let Ok(r) = pb::EntryRequest::decode(b) {
                entry(r.parent, &r.name);
            }
        }
        1 => {
            if let Ok(r) = pb::MknodRequest::decode(b) {
                entry(r.parent, &r.name);
            }
        }
        2 => {
            if let Ok(r) = pb::SymlinkRequest::decode(b) {
                entry(r.parent, &r.name);
            }
        }
        3 => {
            if let Ok(r) = pb::LinkRequest::decode(b) {
                entry(r.new_parent, &r.new_name);
            }
        }
        4 => {
            if let Ok(r) = pb::RenameRequest::decode(b) {
                entry(r.parent, &r.name);
                entry(r.new_parent, &r.new_name);
            }
        }
        5 => {
            if let Ok(r) = pb::XattrRequest::decode(b) {
                let _ = ops::check_xattr_name(&r.name);
            }
        }
        6 => {
            if let Ok(r) = pb::SetXattrRequest::decode(b) {
                let _ = ops::check_xattr_name(&r.name);
            }
        }
        7 => {
            if let Ok(r) = pb::SetGoalRequest::decode(b) {
                if ops::check_goal(r.goal).is_ok() {
                    assert!((1..=alces_proto::geometry::MAX_GOAL).contains(&r.goal));
                }
                path(&r.path);
            }
        }
        8 => {
            if let Ok(r) = pb::SetQuotaRequest::decode(b) {
                path(&r.path);
                let _ = crate::state::volumes::check_limits(&pb::SetQuotaOp {
                    inode: namespace::ROOT_INODE,
                    soft_bytes: r.soft_bytes,
                    hard_bytes: r.hard_bytes,
                    soft_inodes: r.soft_inodes,
                    hard_inodes: r.hard_inodes,
                    grace_secs: r.grace_secs,
                });
            }
        }
        9 => {
            if let Ok(r) = pb::SnapshotRequest::decode(b) {
                path(&r.source);
                path(&r.destination);
            }
        }
        10 => {
            if let Ok(r) = pb::SetTrashTimeRequest::decode(b) {
                path(&r.path);
            }
        }
        11 => {
            // An export rule, as IssueCredential checks it.
            if let Ok(r) = pb::IssueCredentialRequest::decode(b) {
                if let Some(rule) = r.rule {
                    if crate::state::credentials::check_rule(&rule).is_ok() {
                        assert!(rule.max_goal <= alces_proto::geometry::MAX_GOAL);
                    }
                    path(&rule.path);
                }
            }
        }
        _ => {
            // A chunk access and a credential token from a client: never
            // admitted unless the master signed it.
            if let Ok(a) = pb::ChunkAccess::decode(b) {
                let asked = alces_proto::access::Asked {
                    chunk_id: a.chunk_id,
                    version: a.version,
                    write: a.write,
                    copy_from_chunk_id: a.copy_from_chunk_id,
                    chain: &[],
                };
                let who = alces_proto::auth::Identity::Credential(a.credential);
                assert!(
                    alces_proto::access::check("fuzz", who, Some(&a), asked, 0).is_err()
                        || alces_proto::access::sign("fuzz", a.clone()).mac == a.mac
                );
            }
            if let Ok(s) = std::str::from_utf8(b) {
                let _ = alces_proto::auth::parse_credential(s);
            }
        }
    }
}

fn round_trip(st: &State) {
    let bytes = snapshot::encode(st, 0);
    let again = snapshot::decode(&bytes)
        .unwrap_or_else(|e| panic!("a snapshot this master encoded does not decode: {e}"));
    assert!(
        snapshot::encode(&again, 0) == bytes,
        "a snapshot does not decode to the state it was encoded from"
    );
}
