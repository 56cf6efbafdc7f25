//! Credentials the master issued (exports): each an export rule (a directory
//! inode, read-only, squashing, the largest goal, admin or not) and the hash
//! of its token, kept in the replicated state so that a credential and its
//! revocation survive restarts and metalogger promotions. The subtree test
//! every request of a credential's session passes is
//! `namespace::State::in_subtree`.

use std::collections::BTreeMap;

use alces_proto::pb;

use crate::state::error::{err, FsError, FsResult};

/// Longest credential name (bytes).
pub const MAX_NAME: usize = 253;

/// The credentials by id (revoked ones included: their callers are told why
/// they are refused).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    /// Every credential by id, as its issuing record holds it.
    pub map: BTreeMap<u64, pb::IssueCredentialOp>,
}

// The records hold no floating-point field, so equality is total.
impl Eq for Credentials {}

impl Credentials {
    /// The id the next credential gets.
    pub fn next_id(&self) -> u64 {
        self.map.keys().next_back().map_or(1, |k| k + 1)
    }

    /// Credential `id`.
    pub fn get(&self, id: u64) -> Option<&pb::IssueCredentialOp> {
        self.map.get(&id)
    }

    /// Applies an `IssueCredentialOp`: a new id, a 32-byte hash, a rule, and
    /// (`root_is_dir`, for a credential not yet revoked) a directory.
    pub fn issue(&mut self, o: &pb::IssueCredentialOp, root_is_dir: bool) -> FsResult<()> {
        if o.id == 0 || self.map.contains_key(&o.id) {
            return err(libc::EEXIST, format!("credential {} already exists", o.id));
        }
        if o.token_hash.len() != 32 {
            return err(libc::EINVAL, "a credential's token hash must be 32 bytes");
        }
        let rule = o
            .rule
            .as_ref()
            .ok_or_else(|| FsError::new(libc::EINVAL, "a credential without an export rule"))?;
        check_rule(rule)?;
        if !o.revoked && !root_is_dir {
            return err(
                libc::ENOTDIR,
                format!("credential root inode {} is not a directory", o.root_inode),
            );
        }
        self.map.insert(o.id, o.clone());
        Ok(())
    }

    /// Applies a `RevokeCredentialOp` (a revoked credential stays revoked).
    pub fn revoke(&mut self, o: &pb::RevokeCredentialOp) -> FsResult<()> {
        let c = self
            .map
            .get_mut(&o.id)
            .ok_or_else(|| FsError::new(libc::ENOENT, format!("no credential {}", o.id)))?;
        if !c.revoked {
            c.revoked = true;
            c.revoked_ns = o.revoked_ns;
        }
        Ok(())
    }
}

/// Checks an export rule an administrator gives (the path is resolved by the
/// caller): EINVAL naming the field otherwise.
pub fn check_rule(r: &pb::CredentialRule) -> FsResult<()> {
    if pb::Squash::try_from(r.squash).is_err() {
        return err(
            libc::EINVAL,
            format!("unknown squash value {}: use none, root or all", r.squash),
        );
    }
    if r.max_goal > alces_proto::geometry::MAX_GOAL {
        return err(
            libc::EINVAL,
            format!(
                "max goal {} is above the largest goal {}: give 1 to {} (or 0 for no limit)",
                r.max_goal,
                alces_proto::geometry::MAX_GOAL,
                alces_proto::geometry::MAX_GOAL
            ),
        );
    }
    if r.name.len() > MAX_NAME || r.name.chars().any(char::is_control) {
        return err(
            libc::EINVAL,
            format!("a credential name is at most {MAX_NAME} bytes without control characters"),
        );
    }
    Ok(())
}
