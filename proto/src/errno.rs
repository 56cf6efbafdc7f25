//! Carrying a Linux errno inside a gRPC status.
//!
//! The master answers namespace errors with a status whose metadata holds the
//! errno under [`ERRNO_KEY`]; clients turn it back into the errno the kernel
//! expects. A status without it (a transport error, say) maps to `EIO`.

use tonic::{Code, Status};

/// Metadata key of the errno in an error status.
pub const ERRNO_KEY: &str = "x-alces-errno";

/// Builds an error status carrying `errno`, with a message that says what was wrong.
pub fn status(errno: i32, message: impl Into<String>) -> Status {
    let code = match errno {
        libc::ENOENT => Code::NotFound,
        libc::EEXIST => Code::AlreadyExists,
        libc::EACCES | libc::EPERM => Code::PermissionDenied,
        libc::EINVAL | libc::ENAMETOOLONG | libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY => {
            Code::InvalidArgument
        }
        libc::ENOSPC | libc::EDQUOT => Code::ResourceExhausted,
        libc::EROFS => Code::FailedPrecondition,
        libc::EAGAIN => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut s = Status::new(code, message);
    if let Ok(v) = errno.to_string().parse() {
        s.metadata_mut().insert(ERRNO_KEY, v);
    }
    s
}

/// Metadata key marking a status as "this master does not know your session".
pub const SESSION_UNKNOWN_KEY: &str = "x-alces-session-unknown";

/// The status a master returns for a call naming a session it does not know (it
/// restarted, or the lease expired): the client re-registers with the same id and
/// its open inodes, then retries.
pub fn session_unknown(session_id: u64) -> Status {
    let mut s = status(
        libc::ESTALE,
        format!(
            "session {session_id} is unknown to this master (it restarted or the lease expired): register again with this session id and the open inodes"
        ),
    );
    s.metadata_mut().insert(
        SESSION_UNKNOWN_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// True when `status` says the master does not know the caller's session.
pub fn is_session_unknown(status: &Status) -> bool {
    status.metadata().get(SESSION_UNKNOWN_KEY).is_some()
}

/// Metadata key marking a refused resume: the session ended (closed, or its
/// lease expired) or its secret does not match; the client registers a new
/// session instead and opens its files again.
pub const SESSION_ENDED_KEY: &str = "x-alces-session-ended";

/// The status of a resume the master refuses because session `session_id`
/// ended: `why` says how (closed, expired, unknown for longer than a lease).
pub fn session_ended(session_id: u64, why: &str) -> Status {
    let mut s = Status::failed_precondition(format!(
        "session {session_id} cannot be resumed: {why}; register a new session (session id 0) and open the files again"
    ));
    s.metadata_mut().insert(
        SESSION_ENDED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// The status of a resume whose secret does not match the session's: the
/// caller is not the process that holds the session.
pub fn session_secret_mismatch(session_id: u64) -> Status {
    let mut s = Status::permission_denied(format!(
        "session {session_id} is live and the resume does not carry its secret: only the process holding the session (or the one continuing its connection, with the secret from its state file) may resume it; register a new session instead"
    ));
    s.metadata_mut().insert(
        SESSION_ENDED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// True when `status` refuses a resume (the session ended, or the secret
/// does not match): the caller registers a new session.
pub fn is_session_ended(status: &Status) -> bool {
    status.metadata().get(SESSION_ENDED_KEY).is_some()
}

/// Metadata key marking a call refused because its credential was revoked.
pub const CREDENTIAL_REVOKED_KEY: &str = "x-alces-credential-revoked";

/// The status of a call presenting credential `id`, which was revoked
/// (PERMISSION_DENIED, EACCES).
pub fn credential_revoked(id: u64) -> Status {
    let mut s = status(
        libc::EACCES,
        format!("credential {id} revoked: ask the cluster's administrator for a new one"),
    );
    s.metadata_mut().insert(
        CREDENTIAL_REVOKED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// True when `status` says the caller's credential was revoked.
pub fn is_credential_revoked(status: &Status) -> bool {
    status.metadata().get(CREDENTIAL_REVOKED_KEY).is_some()
}

/// The errno carried by `status`, or the closest errno for its gRPC code.
pub fn of(status: &Status) -> i32 {
    if let Some(v) = status.metadata().get(ERRNO_KEY) {
        if let Some(n) = v.to_str().ok().and_then(|s| s.parse::<i32>().ok()) {
            return n;
        }
    }
    match status.code() {
        Code::NotFound => libc::ENOENT,
        Code::AlreadyExists => libc::EEXIST,
        Code::PermissionDenied | Code::Unauthenticated => libc::EACCES,
        Code::InvalidArgument | Code::OutOfRange => libc::EINVAL,
        Code::ResourceExhausted => libc::ENOSPC,
        Code::Unimplemented => libc::ENOSYS,
        Code::DeadlineExceeded => libc::ETIMEDOUT,
        _ => libc::EIO,
    }
}

/// True when the status means the peer could not be reached or is not serving
/// (worth retrying after a reconnect) rather than a definite answer. An answer
/// that is not gRPC at all ([`is_not_grpc`]) is one: the address reached
/// something other than an Alces server.
pub fn is_transient(status: &Status) -> bool {
    status.metadata().get(ERRNO_KEY).is_none()
        && (is_not_grpc(status)
            || matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Aborted
            ))
}

/// True when the answer did not come from a gRPC server: an HTTP response
/// without a `grpc-status` (another service behind the address, such as an
/// HTTP/2 server answering 404, whose status the gRPC library maps to a code).
/// The connection reaches the wrong peer and stays up, so only a new
/// connection (the address resolved again) can reach the right one.
pub fn is_not_grpc(status: &Status) -> bool {
    status.metadata().get(ERRNO_KEY).is_none()
        && (status.message().starts_with("grpc-status header missing")
            || status
                .message()
                .starts_with("protocol error: missing grpc-status"))
}

/// True when the peer clearly refused the request (bad credentials, a
/// request it will not take, a state that forbids it): a gRPC answer, so the
/// connection reaches a real server and retrying on it is right. Anything
/// else (unreachable, timed out, not a gRPC answer) calls for a new
/// connection.
pub fn is_refusal(status: &Status) -> bool {
    !is_not_grpc(status)
        && matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unauthenticated
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trip() {
        for e in [
            libc::ENOENT,
            libc::EEXIST,
            libc::ENOTEMPTY,
            libc::EXDEV,
            libc::EDQUOT,
        ] {
            assert_eq!(of(&status(e, "x")), e);
        }
        assert_eq!(of(&Status::unavailable("down")), libc::EIO);
        assert!(is_transient(&Status::unavailable("down")));
        assert!(!is_transient(&status(libc::EAGAIN, "busy")));
    }

    #[test]
    fn answers_that_are_not_grpc() {
        // What the gRPC library makes of an HTTP 404, 401 and a bare 200.
        let not_found = Status::new(
            Code::Unimplemented,
            "grpc-status header missing, mapped from HTTP status code 404",
        );
        let unauthorized = Status::new(
            Code::Unauthenticated,
            "grpc-status header missing, mapped from HTTP status code 401",
        );
        let bare = Status::unknown("protocol error: missing grpc-status trailer, stream was terminated without a final status");
        for s in [&not_found, &unauthorized, &bare] {
            assert!(is_not_grpc(s), "{s:?}");
            assert!(is_transient(s), "{s:?}");
            assert!(!is_refusal(s), "{s:?}");
        }
        // Real answers from an Alces server.
        assert!(!is_not_grpc(&Status::unimplemented("no such method")));
        assert!(!is_transient(&Status::unimplemented("no such method")));
        assert!(is_refusal(&Status::failed_precondition("stale epoch")));
        assert!(is_refusal(&Status::unauthenticated("bad token")));
        assert!(is_refusal(&status(libc::ENOENT, "no such file")));
        assert!(!is_refusal(&Status::unavailable("down")));
        assert!(!is_refusal(&Status::internal("h2 protocol error")));
        let lost = session_unknown(7);
        assert!(is_session_unknown(&lost));
        assert!(!is_session_unknown(&status(
            libc::ENOENT,
            "no entry 'session.txt'"
        )));
    }
}
