//! The credentials the master says are revoked. Chunk accesses are signed
//! by the master and checked here without asking it, so a revoked
//! credential's accesses would stay good until they expire (2 minutes for
//! reads, an hour for a write session). The master lists every credential
//! revoked within the life of an access in each registration and heartbeat
//! reply ([`crate::master_link`]); the list replaces the last one, and the
//! service refuses every access of a listed credential. A revocation thus
//! reaches every live chunkserver within a heartbeat (1 s), a chunkserver
//! that was down gets the list when it registers again, and a new master
//! after a failover sends the list it replicated.

use std::collections::HashSet;

use parking_lot::RwLock;
use tonic::Status;

/// The revoked credentials last heard from the master.
#[derive(Debug, Default)]
pub struct Revoked {
    /// None until the first registration reply.
    ids: RwLock<Option<HashSet<u64>>>,
}

impl Revoked {
    /// Nothing heard yet: every credential call is refused until the first
    /// registration (the master hands out this server's address only after).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the list with the master's latest.
    pub fn replace(&self, ids: &[u64]) {
        let new: HashSet<u64> = ids.iter().copied().collect();
        let mut g = self.ids.write();
        if let Some(old) = g.as_ref() {
            for id in new.difference(old) {
                tracing::info!(
                    credential = id,
                    "credential revoked: its chunk accesses are refused"
                );
            }
        }
        *g = Some(new);
    }

    /// Refuses a call of `credential` when it is revoked, or when no list
    /// was heard yet.
    pub fn check(&self, credential: u64) -> Result<(), Status> {
        match self.ids.read().as_ref() {
            None => Err(Status::unavailable(
                "this chunkserver has not registered with the master yet, so it cannot tell revoked credentials: retry",
            )),
            Some(s) if s.contains(&credential) => Err(alces_proto::errno::credential_revoked(credential)),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_before_the_first_list_and_listed_credentials_after() {
        let r = Revoked::new();
        assert_eq!(r.check(1).unwrap_err().code(), tonic::Code::Unavailable);
        r.replace(&[2, 3]);
        r.check(1).unwrap();
        let e = r.check(2).unwrap_err();
        assert!(e.message().contains("credential 2 revoked"), "{e:?}");
        // The list replaces the last one.
        r.replace(&[]);
        r.check(2).unwrap();
    }
}
