//! Turning client-library errors into the gRPC statuses the CSI specification
//! asks for, with messages that say what was wrong.

use tonic::Status;

/// A status for a failed Alces call made while doing `what`.
///
/// Namespace errors keep their meaning (`ENOENT` → NOT_FOUND, `EEXIST` →
/// ALREADY_EXISTS, `EDQUOT`/`ENOSPC` → RESOURCE_EXHAUSTED); a master that
/// cannot be reached (`EIO` after the client's retries, `EAGAIN`, `EBUSY`) is
/// UNAVAILABLE, which a CO retries; a refused secret is UNAUTHENTICATED.
pub fn status(what: &str, e: &alces_client::Error) -> Status {
    let msg = format!("{what}: {e}");
    match e.errno() {
        libc::ENOENT => Status::not_found(msg),
        libc::EEXIST => Status::already_exists(msg),
        libc::EDQUOT | libc::ENOSPC => Status::resource_exhausted(msg),
        libc::EINVAL | libc::ENAMETOOLONG | libc::ENOTDIR => Status::invalid_argument(msg),
        libc::EACCES | libc::EPERM => {
            if e.message().contains("Unauthenticated") || e.message().contains("secret") {
                Status::unauthenticated(format!(
                    "{msg}; check the cluster secret (StorageClass secret key 'secret', or --secret-file)"
                ))
            } else {
                Status::permission_denied(msg)
            }
        }
        libc::EROFS => Status::failed_precondition(msg),
        libc::EIO | libc::EAGAIN | libc::EBUSY | libc::ETIMEDOUT | libc::ECONNREFUSED => {
            Status::unavailable(msg)
        }
        _ => Status::internal(msg),
    }
}

/// INVALID_ARGUMENT for a malformed field.
pub fn invalid(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let e = |n| alces_client::Error::new(n, "x");
        assert_eq!(status("a", &e(libc::ENOENT)).code(), Code::NotFound);
        assert_eq!(
            status("a", &e(libc::EDQUOT)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(status("a", &e(libc::EIO)).code(), Code::Unavailable);
        assert_eq!(status("a", &e(libc::EXDEV)).code(), Code::Internal);
        assert!(status("creating", &e(libc::EEXIST))
            .message()
            .starts_with("creating: x"));
    }
}
