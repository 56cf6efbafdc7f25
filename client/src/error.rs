//! The error type of every client call: a Linux errno plus a message saying what
//! was wrong.

use std::fmt;

/// A failed client operation: the errno the kernel (or a CLI) should see and a
/// human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: String,
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error carrying `errno` and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }

    /// An `EIO` error with `message`.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(libc::EIO, message)
    }

    /// The Linux errno of this error (always positive).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Converts a gRPC status from the master or a chunkserver, keeping its errno.
    pub fn from_status(status: &tonic::Status) -> Self {
        if alces_proto::errno::is_credential_revoked(status) {
            // Said once at error level: every later call fails the same way.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(
                    message = status.message(),
                    "the master refuses this client's credential: every call fails with EACCES until it is given a valid credential"
                );
            }
        }
        Self::new(
            alces_proto::errno::of(status),
            format!(
                "{}: {}",
                status.code(),
                alces_proto::net::status_text(status)
            ),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{} ({name})", self.message)
    }
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Self::from_status(&s)
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(
            std::io::Error::from_raw_os_error(e.errno).kind(),
            e.to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_errno() {
        let e = Error::from(alces_proto::errno::status(libc::ENOTEMPTY, "dir not empty"));
        assert_eq!(e.errno(), libc::ENOTEMPTY);
        assert!(e.message().contains("dir not empty"));
        let e = Error::from(tonic::Status::unavailable("down"));
        assert_eq!(e.errno(), libc::EIO);
    }
}
