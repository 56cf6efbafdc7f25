//! Chunk access for credentials: chunkservers cannot check a credential's
//! token (only the master knows credentials), so the master hands a
//! credential's session a [`pb::ChunkAccess`] with each chunk location or
//! write chain, signed with a key derived from the cluster secret, and a
//! chunkserver serves a call presenting a credential only when it carries a
//! valid one for that chunk, version, kind of call and chain. Calls made with
//! the cluster secret (clients holding it, chunkservers forwarding a write)
//! carry none.

use prost::Message;
use ring::hmac;
use tonic::Status;

use crate::auth::Identity;
use crate::pb;

/// Seconds a read access lasts (clients refresh locations far more often).
pub const READ_SECS: i64 = 120;
/// Seconds a write access lasts (one write session).
pub const WRITE_SECS: i64 = 3600;

fn key(secret: &str) -> hmac::Key {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("alces chunk access v1\0{secret}").as_bytes(),
    );
    hmac::Key::new(hmac::HMAC_SHA256, d.as_ref())
}

fn payload(a: &pb::ChunkAccess) -> Vec<u8> {
    pb::ChunkAccess {
        mac: Vec::new(),
        ..a.clone()
    }
    .encode_to_vec()
}

/// Signs `a` (sets its `mac`) with the key of cluster secret `secret`.
pub fn sign(secret: &str, mut a: pb::ChunkAccess) -> pb::ChunkAccess {
    a.mac = hmac::sign(&key(secret), &payload(&a)).as_ref().to_vec();
    a
}

/// What a chunkserver call asks for, to check against its access.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The chunk.
    pub chunk_id: u64,
    /// The version the call names.
    pub version: u64,
    /// A write, truncate or sync.
    pub write: bool,
    /// The chunk a write copies from (0 = none).
    pub copy_from_chunk_id: u64,
    /// The servers the call is to be forwarded to.
    pub chain: &'a [pb::ChunkLocation],
}

/// Admits a chunkserver call by `who`: the cluster secret always; a
/// credential only with an access the master signed for this very call,
/// not expired at `now_unix`. PERMISSION_DENIED names what does not match.
pub fn check(
    secret: &str,
    who: Identity,
    access: Option<&pb::ChunkAccess>,
    asked: Asked<'_>,
    now_unix: i64,
) -> Result<(), Status> {
    let Identity::Credential(id) = who else {
        return Ok(());
    };
    let deny = |why: &str| {
        Err(crate::errno::status(
            libc::EACCES,
            format!(
                "credential {id} may not use chunk {:016x} here: {why}",
                asked.chunk_id
            ),
        ))
    };
    let Some(a) = access else {
        return deny("the call carries no chunk access from the master");
    };
    if hmac::verify(&key(secret), &payload(a), &a.mac).is_err() {
        return deny("its chunk access is not signed by this cluster's master");
    }
    if a.credential != id {
        return deny("its chunk access was given to another credential");
    }
    if a.chunk_id != asked.chunk_id || a.version != asked.version {
        return deny("its chunk access is for another chunk or version");
    }
    if asked.write && !a.write {
        return deny("its chunk access is for reading only");
    }
    if asked.copy_from_chunk_id != 0 && asked.copy_from_chunk_id != a.copy_from_chunk_id {
        return deny("the chunk to copy from is not the one the master chose");
    }
    if let Some(l) = asked.chain.iter().find(|l| !a.chain.contains(&l.address)) {
        return deny(&format!(
            "{} is not in the chain the master chose",
            l.address
        ));
    }
    if now_unix > a.expires_unix {
        return deny("its chunk access expired; ask the master for the chunk again");
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(a: &str) -> pb::ChunkLocation {
        pb::ChunkLocation {
            address: a.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_what_the_master_signed_passes() {
        let a = sign(
            "s",
            pb::ChunkAccess {
                credential: 3,
                chunk_id: 9,
                version: 2,
                write: true,
                copy_from_chunk_id: 5,
                expires_unix: 100,
                chain: vec!["b:1".into()],
                mac: vec![],
            },
        );
        let chain = [loc("b:1")];
        let ok = Asked {
            chunk_id: 9,
            version: 2,
            write: true,
            copy_from_chunk_id: 5,
            chain: &chain,
        };
        let who = Identity::Credential(3);
        assert!(check("s", who, Some(&a), ok, 50).is_ok());
        assert!(check("s", Identity::Cluster, None, ok, 50).is_ok());
        let bad_chain = [loc("evil:1")];
        let cases: Vec<(Asked, &str)> = vec![
            (Asked { chunk_id: 8, ..ok }, "another chunk"),
            (Asked { version: 3, ..ok }, "another chunk or version"),
            (
                Asked {
                    copy_from_chunk_id: 6,
                    ..ok
                },
                "copy from",
            ),
            (
                Asked {
                    chain: &bad_chain,
                    ..ok
                },
                "evil:1 is not in the chain",
            ),
        ];
        for (asked, why) in cases {
            let e = check("s", who, Some(&a), asked, 50).unwrap_err();
            assert!(e.message().contains(why), "{why}: {e:?}");
        }
        let e = check("s", who, Some(&a), ok, 101).unwrap_err();
        assert!(e.message().contains("expired"), "{e:?}");
        let e = check("other", who, Some(&a), ok, 50).unwrap_err();
        assert!(e.message().contains("not signed"), "{e:?}");
        let e = check("s", Identity::Credential(4), Some(&a), ok, 50).unwrap_err();
        assert!(e.message().contains("another credential"), "{e:?}");
        let e = check("s", who, None, ok, 50).unwrap_err();
        assert!(e.message().contains("no chunk access"), "{e:?}");
        let mut forged = a.clone();
        forged.write = false;
        forged.chunk_id = 1;
        assert!(check(
            "s",
            who,
            Some(&forged),
            Asked {
                chunk_id: 1,
                write: false,
                ..ok
            },
            50
        )
        .is_err());
        let ro = sign(
            "s",
            pb::ChunkAccess {
                write: false,
                mac: vec![],
                ..a.clone()
            },
        );
        let e = check("s", who, Some(&ro), ok, 50).unwrap_err();
        assert!(e.message().contains("reading only"), "{e:?}");
    }
}
